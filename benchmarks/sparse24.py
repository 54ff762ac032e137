"""2:4 sparsity speed on a GPU: prefill and decode tokens/s, dense vs semi-structured sparse Linear weights.

Every prunable Linear (q/k/v/o, gate/up/down of each block; not lm_head) is pruned 2:4 by magnitude, then the
same masked weights are timed twice: as ordinary dense tensors (the dense baseline: a dense kernel does not
care about zeros) and converted to PyTorch's semi-structured sparse tensors (``torchao.sparsity.sparsify_`` with
``semi_sparse_weight()`` when torchao is installed, else ``torch.sparse.to_sparse_semi_structured``, the tensor
subclass torchao's config produces; cuSPARSELt or CUTLASS kernels, fp16/bf16, CUDA only).

Models: SmolLM2-135M (``prunerzero.models.load_model('smollm2')``, real weights) and a random-weight
LLaMA-2-7B-shaped model (hidden 4096, MLP 11008, 32 heads, vocab 32000) with ``--llama-layers`` blocks (default
32 on a GPU, the full depth; 1 on a CPU), which the table states.

* prefill: one forward of ``--prefill`` tokens (batch 1, no cache), tokens/s = prefill / median seconds;
* decode: after a 128-token prompt, ``--decode`` single-token steps with the KV cache (batch ``--decode-batch``),
  tokens/s = batch * steps / median seconds of the step loop;
* timing: ``--warmup`` untimed runs, then the median of ``--runs`` (>= 20 on a GPU) timed runs, each bracketed by
  ``torch.cuda.synchronize()``;
* correctness: logits of the 2:4 model against the dense masked model on the same tokens (max |difference|
  relative to the largest logit, and the share of positions with the same argmax).

On a CPU the semi-structured path does not exist (PyTorch: "Only CUDA tensors are currently supported"): the
script then checks the harness and the 2:4 masks on the CPU, prints why the sparse path is skipped, and prints
the table with "not yet measured on a GPU".

    python benchmarks/sparse24.py                                  # CPU: correctness of the harness only
    python benchmarks/sparse24.py --device cuda --dtype fp16 --out results/sparse24-gpu
    python benchmarks/sparse24.py --out results/sparse24-gpu --render-only

With ``--out``, each model's measurement is a row of ``<out>/rows.jsonl`` (its settings, the numbers, provenance) and
``<out>.md`` is rendered from the rows (a rerun into the same folder measures only the models not there yet).
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn

from prunerzero import results as pzr
from prunerzero.export import is_24
from prunerzero.models import all_prunable, load_model
from prunerzero.prune.masks import apply_mask, mask_from_scores, parse_pattern
from prunerzero.timing import timed

NOT_MEASURED = "not yet measured on a GPU"
PROMPT = 128


def llama7b_shaped(layers: int, dtype, device) -> nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def prune_24(model: nn.Module) -> int:
    """Magnitude 2:4 on every prunable Linear, in place; returns the number of layers."""
    pattern = parse_pattern(0.5, "2:4")
    linears = all_prunable(model)
    with torch.no_grad():
        for lin in linears.values():
            apply_mask(lin, mask_from_scores(lin.weight.detach().abs().float(), pattern))
            assert is_24(lin.weight)
    return len(linears)


def backend_name() -> str:
    try:
        import torchao
        from torchao.sparsity import semi_sparse_weight, sparsify_  # noqa: F401
        return f"torchao {torchao.__version__} sparsify_(semi_sparse_weight())"
    except ImportError:
        return "torch.sparse.to_sparse_semi_structured"


def to_semi_structured(model: nn.Module) -> tuple[int, dict[str, int]]:
    """Replace the prunable Linear weights by semi-structured sparse tensors.

    Returns the number converted and the reasons the others stay dense (message -> number of layers)."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    linears = all_prunable(model)
    targets = {id(lin) for lin in linears.values()}
    failed: dict[str, int] = {}
    try:
        from torchao.sparsity import semi_sparse_weight, sparsify_
    except ImportError:
        sparsify_ = None
    if sparsify_ is not None:
        try:
            sparsify_(model, semi_sparse_weight(), lambda m, fqn: id(m) in targets)
        except (RuntimeError, ValueError):  # some shape or device unsupported: convert layer by layer below
            pass
    done = 0
    for lin in linears.values():
        if not isinstance(lin.weight.data, SparseSemiStructuredTensor):
            try:
                lin.weight = nn.Parameter(to_sparse_semi_structured(lin.weight.detach()), requires_grad=False)
            except (RuntimeError, ValueError) as exc:
                msg = str(exc).strip().splitlines()[0]
                failed[msg] = failed.get(msg, 0) + 1
                continue
        done += 1
    return done, failed


@torch.no_grad()
def prefill_tps(model, tokens: torch.Tensor, warmup: int, runs: int) -> float:
    device = tokens.device
    return tokens.shape[1] / timed(lambda: model(tokens, use_cache=False), device, runs, warmup)["median_s"]


@torch.no_grad()
def decode_tps(model, prompt: torch.Tensor, steps: int, warmup: int, runs: int) -> float:
    from transformers import DynamicCache

    device = prompt.device
    state = {}
    # transformers >= 5.x names the argument ``cache`` (``past_key_values`` is deprecated there)
    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def setup():
        cache = DynamicCache()
        out = model(prompt, use_cache=True, **{kw: cache})
        state["cache"], state["next"] = cache, out.logits[:, -1:].argmax(-1)

    def loop():
        cache, nxt = state["cache"], state["next"]
        for _ in range(steps):
            nxt = model(nxt, use_cache=True, **{kw: cache}).logits[:, -1:].argmax(-1)

    return prompt.shape[0] * steps / timed(loop, device, runs, warmup, setup=setup)["median_s"]


@torch.no_grad()
def compare_logits(reference: torch.Tensor, model, tokens: torch.Tensor) -> dict:
    got = model(tokens, use_cache=False).logits.float()
    ref = reference.float()
    return {"max_rel_diff": float((got - ref).abs().max() / ref.abs().max()),
            "argmax_agree": float((got.argmax(-1) == ref.argmax(-1)).float().mean())}


def bench_model(name: str, model: nn.Module, args, device, on_gpu: bool) -> dict:
    model.config.use_cache = True
    layers = prune_24(model)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prefill_len = args.prefill if on_gpu else min(args.prefill, 64)
    steps = args.decode if on_gpu else min(args.decode, 2)
    warmup, runs = (args.warmup, args.runs) if on_gpu else (0, 1)
    tokens = torch.randint(0, vocab, (1, prefill_len), generator=g).to(device)
    prompt = torch.randint(0, vocab, (args.decode_batch, PROMPT if on_gpu else 8), generator=g).to(device)
    check = tokens[:, :256]
    row = {"model": name, "blocks": model.config.num_hidden_layers, "layers_2to4": layers,
           "dtype": str(model.dtype).replace("torch.", ""), "prefill_tokens": prefill_len, "decode_steps": steps,
           "decode_batch": args.decode_batch, "warmup": warmup, "runs": runs, "backend": backend_name()}
    reference = model(check, use_cache=False).logits
    row["dense_prefill_tps"] = prefill_tps(model, tokens, warmup, runs)
    row["dense_decode_tps"] = decode_tps(model, prompt, steps, warmup, runs)
    converted, failed = to_semi_structured(model)
    row.update(converted=converted, conversion_failures=failed)
    if not converted:
        row["sparse_skipped"] = f"no layer converts to a semi-structured tensor here: {'; '.join(failed)}"
        return row
    try:
        row.update(compare_logits(reference, model, check))
        row["sparse_prefill_tps"] = prefill_tps(model, tokens, warmup, runs)
        row["sparse_decode_tps"] = decode_tps(model, prompt, steps, warmup, runs)
    except (RuntimeError, ValueError, NotImplementedError) as exc:  # a kernel refuses a shape: say which, go on
        row["sparse_skipped"] = f"the 2:4 forward failed: {str(exc).strip().splitlines()[0]}"
        return row
    row["prefill_speedup"] = row["sparse_prefill_tps"] / row["dense_prefill_tps"]
    row["decode_speedup"] = row["sparse_decode_tps"] / row["dense_decode_tps"]
    return row


def table(rows: list[dict], on_gpu: bool, device_name: str) -> str:
    lines = [f"2:4 semi-structured sparsity, {device_name}", ""]
    measured = [r for r in rows if on_gpu and "sparse_skipped" not in r]
    if measured:
        lines += ["| model | blocks | dtype | prefill tok/s dense | prefill tok/s 2:4 | speedup | decode tok/s dense | "
                  "decode tok/s 2:4 | speedup | logits max rel. diff | argmax agree |", "|" + " --- |" * 11]
        for r in measured:
            lines.append(f"| {r['model']} | {r['blocks']} | {r['dtype']} | {r['dense_prefill_tps']:,.0f} | "
                         f"{r['sparse_prefill_tps']:,.0f} | {r['prefill_speedup']:.2f}x | "
                         f"{r['dense_decode_tps']:,.1f} | "
                         f"{r['sparse_decode_tps']:,.1f} | {r['decode_speedup']:.2f}x | {r['max_rel_diff']:.2e} | "
                         f"{r['argmax_agree']:.1%} |")
        lines.append("")
    skipped = [r for r in rows if r not in measured]
    if skipped:
        lines += ["| model | blocks | dtype | prefill / decode tok/s, dense vs 2:4 |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['model']} | {r['blocks']} | {r['dtype']} | {NOT_MEASURED} |" for r in skipped]
        lines.append("")
    r = rows[0]
    lines.append(f"prefill {r['prefill_tokens']} tokens (batch 1); decode {r['decode_steps']} steps after a "
                 f"prompt (batch {r['decode_batch']}); median of {r['runs']} runs after {r['warmup']} warm-up "
                 f"runs; backend {r['backend']}.")
    for r in rows:
        if "sparse_skipped" in r:
            lines.append(f"{r['model']}: 2:4 path skipped, {r['sparse_skipped']}; the 2:4 masks, the dense forward "
                         "and the KV-cache decode ran.")
        elif r["conversion_failures"]:
            lines.append(f"{r['model']}: {r['converted']} of {r['layers_2to4']} layers converted; dense kept for: "
                         + "; ".join(f"{n} x {m}" for m, n in r["conversion_failures"].items()))
    lines.append("The LLaMA-7B-shaped model has random weights and the number of blocks shown (7B has 32).")
    return "\n".join(lines) + "\n"


def render(rows: list[dict], meta: dict) -> str:
    """``table`` of measured rows (their own device and whether it was a GPU)."""
    on_gpu = rows[0]["on_gpu"]
    device = rows[0]["provenance"]["device"]
    head = ["# 2:4 speed: dense vs semi-structured sparse weights", ""]
    if not on_gpu:
        head += ["On a CPU this only checks the harness (2:4 masks on every prunable Linear, the dense forward, the "
                 "KV-cache decode, the conversion): PyTorch's semi-structured kernels are CUDA-only, so the prefill "
                 "length, decode steps and runs are cut to a smoke test and no speed-up is measured. On a GPU: "
                 "`python benchmarks/sparse24.py --device cuda --dtype fp16 --out results/sparse24-gpu`.", ""]
    return "\n".join(head + pzr.provenance_lines(rows, "rows.jsonl in the folder of this name")) + "\n" + table(
        rows, on_gpu, device if on_gpu else f"{device} ({NOT_MEASURED})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"], help="GPU dtype (the CPU check runs fp32)")
    p.add_argument("--models", default="smollm2,llama7b", help="comma-separated: smollm2, llama7b")
    p.add_argument("--llama-layers", type=int, default=None, help="blocks of the 7B-shaped model (GPU 32, CPU 1)")
    p.add_argument("--prefill", type=int, default=2048)
    p.add_argument("--decode", type=int, default=64, help="decode steps per timed run")
    p.add_argument("--decode-batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--cache-dir", default=None)
    pzr.measurement_args(p, None)
    args = p.parse_args(argv)
    if pzr.rendered_only(p, args, render):
        return 0
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        print("error: --device cuda but no GPU is visible", file=sys.stderr)
        return 2
    if on_gpu and args.runs < 20:
        print("error: --runs must be >= 20 on a GPU (median of at least 20 timed runs)", file=sys.stderr)
        return 2
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype] if on_gpu else torch.float32
    layers = args.llama_layers or (32 if on_gpu else 1)
    out = Path(args.out) if args.out else None
    done = {r["id"] for r in pzr.read_rows(out / "rows.jsonl")} if out is not None else set()
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        rid = (f"sparse24|{name}|{args.device}|{args.dtype if on_gpu else 'fp32'}|prefill={args.prefill}"
               + (f"|layers={layers}" if name == "llama7b" else ""))
        if rid in done:
            print(f"{rid}: in {out / 'rows.jsonl'} already", flush=True)
            continue
        if name == "smollm2":
            model = load_model("smollm2", device=args.device, dtype=dtype, cache=args.cache_dir).model
            label = "SmolLM2-135M"
        elif name == "llama7b":
            model = llama7b_shaped(layers, dtype, args.device)
            label = f"LLaMA-7B-shaped (random, {layers} of 32 blocks)"
        else:
            print(f"error: unknown model '{name}': use smollm2 or llama7b", file=sys.stderr)
            return 2
        rows.append({**bench_model(label, model, args, args.device, on_gpu), "on_gpu": on_gpu})
        print(json.dumps(rows[-1]), flush=True)
        if out is not None:
            pzr.record(out, pzr.measurement(rid, rows[-1], args.device))
        del model
        if on_gpu:
            torch.cuda.empty_cache()
    if out is not None:
        if not pzr.read_meta(out):
            pzr.write_meta(out, {"renderer": "sparse24"})
        print(pzr.write_measurements(out, render).read_text())
    elif rows:
        print(table(rows, on_gpu, torch.cuda.get_device_name(0) if on_gpu else f"CPU ({NOT_MEASURED})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
