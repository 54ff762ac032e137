"""What one search candidate costs: metric + masks for all layers, apply + restore, perplexity on N windows.

``masks s`` is ``search.fitness.batched_masks(batch=True)`` (one selection call and one finiteness check per batch
of same-shape layers: the search's path on accelerators); ``masks per layer s`` is ``prune.run.metric_masks`` (one
call per layer: the search's path on the CPU). ``overhead / ppl`` = (batched masks + fingerprint + apply/restore)
/ perplexity time; ``per-layer overhead / ppl`` the same with per-layer masks.

Models: SmolLM2-135M (real weights) and a random-weight LLaMA-2-7B-shaped model (hidden 4096, MLP 11008,
32 heads, vocab 32000; timing only). On CPU the 7B shape keeps only ``--cpu-7b-layers`` blocks (default 2; the
full model needs 27 GB in fp32), and the table says so; per-candidate costs scale with the number of blocks.
Statistics X and G are random tensors of the right shapes (timing does not depend on their values).

    python benchmarks/prune_eval.py                    # CPU (and GPU when one is visible)
    python benchmarks/prune_eval.py --devices cuda --windows 8 --out results/prune-eval-gpu
    python benchmarks/prune_eval.py --out results/benchmarks --render-only

With ``--out``, every measurement (device x model) is a row of ``<out>/rows.jsonl`` with provenance, and ``<out>.md``
is rendered from the rows and ``<out>/meta.json`` (the document's prose and table layout; a default one is written
on the first run).
"""
from __future__ import annotations

import argparse
import gc
import resource
import time

import pandas as pd
import torch

from prunerzero import results as pzr
from prunerzero.calibration import Stats
from prunerzero.evaluate import perplexity
from prunerzero.metric import parse
from prunerzero.models import all_prunable, load_model
from prunerzero.prune.masks import Pattern, WeightSnapshot, apply_mask
from prunerzero.prune.run import metric_masks
from prunerzero.search.fitness import batched_masks, mask_fingerprint
from prunerzero.timing import sync

FORMULA = "mul(abs(mul(W, W)), mms(G))"
TIMES = ("masks per layer s", "masks s", "fingerprint s", "apply+restore s", "ppl s")
COLUMNS = ([["model", "model", "s"], ["device", "device", "s"], ["layers", "layers", "d"], ["windows", "windows", "d"],
            ["seqlen", "seqlen", "d"]] + [[t, t, ".3f"] for t in TIMES]
           + [[k, k, ".3f"] for k in ("overhead / ppl", "per-layer overhead / ppl", "peak MB")])
DEFAULT_META = {"renderer": "prune_eval", "blocks": [{"text": f"# Per-candidate cost of one search evaluation\n\nMetric `{FORMULA}`, 50% per "
                                    "row; times are the minimum of the repeats (benchmarks/prune_eval.py)."},
                           {"commands": {"bench": "prune_eval"}},
                           {"table": {"where": {"bench": "prune_eval"}, "columns": COLUMNS}}]}


def render(rows: list[dict], meta: dict) -> str:
    return pzr.render_document(rows, meta if meta.get("blocks") else DEFAULT_META)


def llama7b_shaped(layers: int, dtype, device):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.eval()
    model.config.use_cache = False
    return model


def random_stats(model) -> Stats:
    out, gens = {}, {}
    for key, lin in all_prunable(model).items():
        dev = lin.weight.device
        g = gens.setdefault(dev, torch.Generator(device=dev).manual_seed(0))  # drawn where used: 7B on a GPU
        # G is kept in the weights' dtype (fp16 on a GPU): a 7B model's fp32 G alone would take 26 GB
        out[key] = {"X": torch.rand(lin.in_features, generator=g, device=dev),
                    "G2": torch.rand(lin.weight.shape, generator=g, device=dev).to(lin.weight.dtype)}
    return Stats(out)


def peak_mb(device) -> float:
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(name, model, device, windows, seqlen, batch_size, repeats=2):
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    linears = all_prunable(model)
    stats = random_stats(model)
    formula = parse(FORMULA)
    snap = WeightSnapshot(linears)
    tokens = torch.randint(0, model.config.vocab_size, (windows, seqlen))
    times = {"masks per layer": [], "masks": [], "fingerprint": [], "apply+restore": [], "ppl": []}
    for _ in range(repeats):
        sync(device); t = time.perf_counter()
        masks = metric_masks(formula, linears, stats, Pattern(0.5, "row"))
        sync(device); times["masks per layer"].append(time.perf_counter() - t)
        del masks
        sync(device); t = time.perf_counter()
        masks = batched_masks(formula, linears, stats, Pattern(0.5, "row"), batch=True)
        sync(device); times["masks"].append(time.perf_counter() - t)
        t = time.perf_counter()
        mask_fingerprint(masks)
        sync(device); times["fingerprint"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for k, m in masks.items():
            apply_mask(linears[k], m)
        snap.restore()
        sync(device); times["apply+restore"].append(time.perf_counter() - t)
        del masks
        t = time.perf_counter()
        perplexity(model, tokens, batch_size)
        sync(device); times["ppl"].append(time.perf_counter() - t)
    row = {"bench": "prune_eval", "model": name, "device": str(device), "layers": len(linears) // 7,
           "windows": windows, "seqlen": seqlen, "batch_size": batch_size, "formula": FORMULA}
    row.update({f"{k} s": min(v) for k, v in times.items()})
    overhead = row["masks s"] + row["fingerprint s"] + row["apply+restore s"]
    row["overhead / ppl"] = overhead / row["ppl s"]
    row["per-layer overhead / ppl"] = (overhead - row["masks s"] + row["masks per layer s"]) / row["ppl s"]
    row["peak MB"] = peak_mb(device)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--windows", type=int, default=2, help="perplexity windows per candidate")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--cpu-7b-layers", type=int, default=2)
    ap.add_argument("--models", default="smollm2,llama2-7b-shape")
    pzr.measurement_args(ap, None)
    args = ap.parse_args()
    if pzr.rendered_only(ap, args, render):
        return
    out = pzr.measurement_out(args.out, DEFAULT_META)
    done = {r["id"] for r in pzr.read_rows(out / "rows.jsonl")} if out is not None else set()
    rows = []
    for device in args.devices.split(","):
        dtype = torch.float32 if device == "cpu" else torch.float16
        for name in args.models.split(","):
            if name == "smollm2":
                model = load_model("smollm2", device=device, dtype=dtype).model
            else:
                layers = args.cpu_7b_layers if device == "cpu" else 32
                model = llama7b_shaped(layers, dtype, device)
            rid = f"prune_eval|{device}|{name}|layers={model.config.num_hidden_layers}|{args.windows}x{args.seqlen}"
            if rid in done:  # measured already (a rerun into the same --out measures only what is missing)
                print(f"{rid}: in {out / 'rows.jsonl'} already", flush=True)
                del model
                continue
            rows.append(bench(name, model, device, args.windows, args.seqlen, args.batch_size))
            if out is not None:
                pzr.record(out, pzr.measurement(rid, rows[-1], device))
                pzr.write_measurements(out, render)
            print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
            del model
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    if not rows:
        return
    print()
    print(f"Per-candidate cost of one search evaluation (metric {FORMULA}, 50% per row):")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if out is not None:
        print(f"rows in {out / 'rows.jsonl'}; table {pzr.write_measurements(out, render)}")


if __name__ == "__main__":
    main()
