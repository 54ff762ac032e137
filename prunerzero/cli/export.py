"""`prunerzero export`: write a pruned folder in another format."""
from __future__ import annotations

from ._common import command

HELP = "write a pruned folder in the compressed-tensors sparse format (or back to dense)"


def cmd_export(args) -> None:
    from ..export import check_export_args, decompress_folder, export_compressed

    check_export_args(args.pruned_dir, args.out, args.format, args.compressor)
    if args.format == "dense":
        res = decompress_folder(args.pruned_dir, args.out)
        print(f"wrote {args.out}: dense, {res['bytes'] / 1e6:.1f} MB "
              f"(compressed {res['compressed_bytes'] / 1e6:.1f} MB, {res['from']})")
        return
    res = export_compressed(args.pruned_dir, args.out, args.compressor)
    print(f"wrote {args.out}: compressed-tensors {res['format']}, {res['layers']} of {res['linears']} Linear layers "
          f"compressed, global sparsity {res['global_sparsity']:.4f}")
    print(f"size on disk {res['bytes'] / 1e6:.1f} MB vs dense save {res['dense_bytes'] / 1e6:.1f} MB "
          f"({res['bytes'] / res['dense_bytes']:.1%})")


def add_parser(sub) -> None:
    p = command(sub, "export", HELP)
    p.add_argument("pruned_dir", help="folder written by prunerzero prune --save (or an export, with --format dense)")
    p.add_argument("--format", default="compressed-tensors",
                   help="compressed-tensors, or dense to decompress an export")
    p.add_argument("--out", required=True, help="new folder to write")
    p.add_argument("--compressor", default="auto",
                   help="auto (sparse-24-bitmask if every sparse Linear is 2:4, else sparse-bitmask), sparse-bitmask "
                        "or sparse-24-bitmask")
    p.set_defaults(func=cmd_export)
