"""`prunerzero export`: write a model as GGUF for llama.cpp, or a pruned folder in the compressed-tensors storage
format (and back)."""
from __future__ import annotations

from ._common import command

HELP = "write a (pruned) model as GGUF for llama.cpp / Ollama / LM Studio, or in compressed-tensors storage"


def cmd_export(args) -> None:
    from ..export import check_export_args, decompress_folder, export_compressed, export_gguf

    if args.format is None:   # a .gguf file is written as GGUF; a folder keeps the compressed-tensors default
        args.format = "gguf" if str(args.out).endswith(".gguf") or args.outtype else "compressed-tensors"
    check_export_args(args.source, args.out, args.format, args.compressor, args.outtype)
    if args.format == "gguf":
        res = export_gguf(args.source, args.out, args.outtype or "f16", args.cache_dir)
        widths = "per-layer widths" if res["arch"] == "deci" else "uniform widths"
        print(f"wrote {args.out}: GGUF arch {res['arch']} ({widths}, {res['layers']} layers), {res['outtype']}, "
              f"{res['bytes'] / 1e6:.1f} MB; tokenizer pre '{res['tokenizer']['pre']}', "
              f"chat template {'included' if res['tokenizer']['chat_template'] else 'none'}")
        if res["padded_ffn_layers"]:
            print(f"{res['padded_ffn_layers']} layers' FFN widths padded with all-zero channels to a multiple "
                  "of 32 (llama.cpp's fast kernels and q8_0 blocks need it): the same function")
        if res["f16_fallback"]:
            print(f"{len(res['f16_fallback'])} tensors kept f16 (rows not a multiple of 32): "
                  f"{', '.join(res['f16_fallback'][:4])}{' ...' if len(res['f16_fallback']) > 4 else ''}")
        if res["zeros"] > 0.05:
            print(f"{res['zeros']:.1%} of the block weights are zeros: stored as zeros (llama.cpp has no sparse "
                  "kernel, so they save neither space nor time; structural pruning does)")
        return
    if args.format == "dense":
        res = decompress_folder(args.source, args.out)
        print(f"wrote {args.out}: dense, {res['bytes'] / 1e6:.1f} MB "
              f"(compressed {res['compressed_bytes'] / 1e6:.1f} MB, {res['from']})")
        return
    res = export_compressed(args.source, args.out, args.compressor)
    print(f"wrote {args.out}: compressed-tensors {res['format']}, {res['layers']} of {res['linears']} Linear layers "
          f"compressed, global sparsity {res['global_sparsity']:.4f}")
    print(f"size on disk {res['bytes'] / 1e6:.1f} MB vs dense save {res['dense_bytes'] / 1e6:.1f} MB "
          f"({res['bytes'] / res['dense_bytes']:.1%}); only prunerzero reads this layout (--format dense undoes it)")


def add_parser(sub) -> None:
    p = command(sub, "export", HELP)
    p.add_argument("source",
                   help="what to export: a folder written by prune --save or structural --save (per-layer widths "
                        "too), a built-in name, a .gguf file or a hub id (gguf); a prune --save folder "
                        "(compressed-tensors) or a compressed-tensors export (dense)")
    p.add_argument("--format", default=None,
                   help="gguf: one file llama.cpp, Ollama and LM Studio run (arch deci for per-layer widths); "
                        "compressed-tensors: sparse bitmask storage only prunerzero reads; dense: decompress that "
                        "(default: gguf when --out ends in .gguf or --outtype is given, else compressed-tensors)")
    p.add_argument("--out", required=True, help="the new .gguf file (gguf), or a new folder")
    p.add_argument("--outtype", default=None, choices=["f32", "f16", "bf16", "q8_0"],
                   help="GGUF weight type of the 2-D tensors (norms stay f32); default f16")
    p.add_argument("--compressor", default="auto",
                   help="compressed-tensors only: auto (sparse-24-bitmask if every sparse Linear is 2:4, else "
                        "sparse-bitmask), sparse-bitmask or sparse-24-bitmask")
    p.add_argument("--cache-dir", default=None,
                   help="model cache for built-in names and GGUF sources (default: $PRUNERZERO_CACHE, else "
                        "~/.cache/prunerzero)")
    p.set_defaults(func=cmd_export)
