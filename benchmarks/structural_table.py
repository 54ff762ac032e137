"""Structural pruning table: one-shot by a metric's structure scores vs policy gradient from `const` vs policy
gradient from the metric, at several sparsities; WikiText-2 ppl at seqlen 128 and 2048, parameters, latency.

    python benchmarks/structural_table.py --metric wanda --sparsities 0.2,0.3 --steps 200 --out results/structural

Each row is written to ``<out>/rows/*.json`` when done (a rerun skips finished rows) and ``<out>.md`` is
re-rendered after every row.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path

import torch

from prunerzero.fsutil import atomic_write_text
from prunerzero.models import load_model
from prunerzero.pipeline import CalibConfig, StructuralConfig, eval_at, structural
from prunerzero.prune.structural import forward_latency


def render(out: Path, meta: dict) -> None:
    rows = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("*.json"))]
    dense = next((r for r in rows if r["init"] == "dense"), None)
    lens = meta["seqlens"]
    head = " | ".join(f"ppl @{L}" for L in lens)
    lines = [f"# Structural pruning of {meta['model']}", "", f"Command: `{meta['command']}`", "",
             f"Protocol: {meta['nsamples']} C4 calibration windows of {meta['calib_seqlen']} tokens (seed 0) for the "
             f"metric statistics and the policy gradient; {meta['steps']} steps, K={meta['samples']}, "
             f"lr {meta['lr']} (cosine), {meta['pg_batch']} windows per step; WikiText-2 test, "
             + ("all tokens" if meta["eval_tokens"] == "all" else f"the first {meta['eval_tokens']} tokens")
             + " cut into windows of each length. Sparsity = fraction of the prunable "
             f"parameters (q/k/v/o/gate/up/down) removed. Latency: median of {meta.get('latency_repeats', 3)} "
             f"forwards of 1 x {meta['latency_seqlen']} tokens after a warm-up, once per row: a rough figure, not a "
             "speed result (see structural-speed.md). "
             f"Hardware: {meta['hardware']}. Metric: `{meta['metric']}` ({meta.get('scores', '')}).", "",
             f"| sparsity | method | {head} | params | removed | latency ms | optimisation s |",
             "| --- | --- | " + " | ".join("---:" for _ in lens) + " | ---: | ---: | ---: | ---: |"]
    if dense:
        ppl = " | ".join(f"{dense['ppl'][str(L)]:.2f}" for L in lens)
        lines.append(f"| 0 | dense | {ppl} | {dense['params']:,} | 0 | {dense['latency_ms']:.0f} | - |")
    names = {"oneshot": "one-shot (metric scores)", "const": "policy gradient from const",
             "metric": "policy gradient from metric", "random": "policy gradient from random"}
    for r in sorted((r for r in rows if r["init"] != "dense"), key=lambda r: (r["sparsity"], r["order"])):
        ppl = " | ".join(f"{r['ppl'][str(L)]:.2f}" for L in lens)
        lines.append(f"| {r['sparsity']:.0%} | {names[r['init']]} | {ppl} | {r['params']:,} | "
                     f"{r['removed']:.1%} | {r['latency_ms']:.0f} | {r['seconds']:.0f} |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--metric", default="wanda")
    ap.add_argument("--sparsities", default="0.2,0.3")
    ap.add_argument("--inits", default="oneshot,const,metric")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--pg-batch-size", type=int, default=4)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--calib-seqlen", type=int, default=128)
    ap.add_argument("--seqlens", default="128,2048")
    ap.add_argument("--attn-score", default="kv")
    ap.add_argument("--mlp-score", default="out")
    ap.add_argument("--eval-tokens", type=int, default=None, help="evaluate on the first N test tokens (default all)")
    ap.add_argument("--latency-seqlen", type=int, default=2048)
    ap.add_argument("--latency-repeats", type=int, default=3,
                    help="timed forwards after 2 warm-ups, median reported (benchmarks/structural_speed.py measures "
                         "speed properly; this column is a rough figure)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-size", type=int, default=1, help="windows per forward in the perplexity evaluation")
    ap.add_argument("--out", default="results/structural")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--render-only", action="store_true", help="re-render <out>.md from the finished rows, run nothing")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    seqlens = [int(s) for s in args.seqlens.split(",")]
    total = args.eval_tokens or 10**9
    cuda = torch.cuda.is_available() and (args.device or "cuda").startswith("cuda")
    threads = args.threads or torch.get_num_threads()
    hw = torch.cuda.get_device_name() if cuda else f"{platform.machine()}, {threads} threads"
    meta = {"model": args.model, "command": "python " + shlex.join(sys.argv), "nsamples": args.nsamples,
            "calib_seqlen": args.calib_seqlen, "steps": args.steps, "samples": args.samples, "lr": args.lr,
            "pg_batch": args.pg_batch_size, "seqlens": seqlens, "eval_tokens": args.eval_tokens or "all",
            "latency_seqlen": args.latency_seqlen, "latency_repeats": args.latency_repeats, "hardware": hw,
            "metric": args.metric,
            "scores": f"KV groups from {args.attn_score}, MLP channels from {args.mlp_score}"}

    if args.render_only:
        meta["command"] = meta["command"].replace(" --render-only", "")
        render(out, meta)
        return

    def measure(lm):
        return {str(L): eval_at(lm, L, ["wikitext2"], total // L if args.eval_tokens else None, args.batch_size,
                                progress=False)["wikitext2"]["ppl"] for L in seqlens}

    def fresh():
        return load_model(args.model, device=args.device)

    dense_path = out / "rows" / "dense.json"
    if not dense_path.exists():
        lm = fresh()
        atomic_write_text(dense_path, json.dumps({"init": "dense", "ppl": measure(lm),
                                                  "params": sum(p.numel() for p in lm.model.parameters()),
                                                  "latency_ms": 1000 * forward_latency(lm.model, args.latency_seqlen,
                                                                                       repeats=args.latency_repeats)}))
        render(out, meta)
    inits = args.inits.split(",")
    for sp in (float(s) for s in args.sparsities.split(",")):
        for order, init in enumerate(inits):
            path = out / "rows" / f"s{sp:g}_{init}.json"
            if path.exists():
                continue
            lm = fresh()
            cfg = StructuralConfig(sparsity=sp, metric=args.metric, init=init, steps=args.steps,
                                   samples=args.samples, lr=args.lr, batch_size=args.pg_batch_size,
                                   calib_seqlen=args.calib_seqlen, attn_score=args.attn_score,
                                   mlp_score=args.mlp_score, nsamples=args.nsamples)
            res = structural(lm, cfg, CalibConfig(), progress=True)
            row = {"init": init, "order": order, "sparsity": sp, "ppl": measure(lm),
                   "params": res["params_after"]["total"], "removed": res["removed_fraction"],
                   "latency_ms": 1000 * forward_latency(lm.model, args.latency_seqlen, repeats=args.latency_repeats),
                   "seconds": res["seconds"],
                   "layer_shapes": res["layer_shapes"], "history": res["history"][-5:]}
            atomic_write_text(path, json.dumps(row, indent=1))
            render(out, meta)
            print(f"{sp:.0%} {init}: " + ", ".join(f"ppl@{k} {v:.2f}" for k, v in row["ppl"].items()), flush=True)
    render(out, meta)


if __name__ == "__main__":
    main()
