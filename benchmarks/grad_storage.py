"""Gradient statistics stored as fp16 (``--grad-storage fp16``) against fp32, on a real model and real data: the
file size, how many weights a G metric's mask puts on the other side, and the pruned model's perplexity; next to
what another calibration seed changes (the noise every result already carries).

    python benchmarks/grad_storage.py --out results/grad-storage-cpu
    python benchmarks/grad_storage.py --out results/grad-storage-cpu --render-only

For each metric that reads G (``--metrics``) and each pattern (``--patterns``): prune one-shot with the statistics of
calibration seed 0 kept as fp32, the same statistics kept as fp16 (one power-of-two scale per tensor), and seed 1's
fp32 statistics; masks are compared weight by weight against seed 0 fp32 (the share of the prunable weights whose
mask differs), and each model's WikiText-2 test perplexity is measured on the first ``--windows`` windows of
``--seqlen`` tokens. Every (metric, pattern, storage, seed) is a row of ``<out>/rows.jsonl``, appended when measured
(a rerun measures only missing rows); ``<out>.md`` is rendered from the rows.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from prunerzero import results as pzr

CASES = (("fp32", 0), ("fp16", 0), ("fp32", 1))   # the reference, fp16 storage, and another calibration seed


def row_id(model, metric, pattern, storage, seed, nsamples, seqlen, windows) -> str:
    return f"{model}|{metric}|{pattern}|{storage}|seed={seed}|calib={nsamples}x{seqlen}|ppl={windows}x{seqlen}"


def _mean(rows: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def render(rows: list[dict], meta: dict) -> str:
    r0 = rows[0]
    lines = [f"# Gradient statistics as fp16 ({meta.get('model', 'smollm2')})", "", pzr.commands_line(rows), "",
             f"Device: {', '.join(pzr.distinct(rows, 'device'))}. {r0['model']}, one-shot pruning (the statistics of the dense model), "
             f"calibration on {r0['nsamples']} C4 windows of {r0['seqlen']} tokens (a reduced protocol for a 2-core "
             f"CPU; the full one is 128 x 2048); perplexity on the first {r0['windows']} windows of {r0['seqlen']} "
             "tokens of WikiText-2 test. `flipped`: the share of prunable weights whose mask differs from the one "
             "seed 0's fp32 statistics give. fp16 keeps each G1/G2 tensor as fp16 with one power-of-two scale "
             "(`prunerzero prune --grad-storage fp16`); seed 1 is another draw of the calibration windows, kept as "
             "fp32: what calibration noise alone changes.", "",
             "| metric | pattern | G1+G2 MB | statistics | flipped | ppl | ppl vs fp32 seed 0 |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: |"]
    ref = {(r["metric"], r["pattern"]): r for r in rows if r["storage"] == "fp32" and r["seed"] == 0}
    for r in rows:
        base = ref.get((r["metric"], r["pattern"]))
        label = f"{r['storage']}, seed {r['seed']}"
        lines.append(f"| {r['metric']} | {r['pattern']} | {r['g_bytes'] / 1e6:.0f} | {label} | "
                     f"{r['flipped']:.4%} | {r['ppl']:.3f} | "
                     + (f"{r['ppl'] / base['ppl'] - 1:+.3%} |" if base else "- |"))
    half = [r for r in rows if r["storage"] == "fp16"]
    full = [r for r in rows if r["storage"] == "fp32"]
    seed = [r for r in rows if r["seed"] != 0]
    if half and seed:
        lines += ["", "## Verdict", "",
                  f"- fp16 storage: G1 + G2 take {_mean(half, 'g_bytes') / _mean(full, 'g_bytes'):.2f}x the fp32 "
                  f"bytes, flip at most {max(r['flipped'] for r in half):.4%} of the weights and move perplexity by "
                  f"at most {max(abs(r['ppl'] / ref[(r['metric'], r['pattern'])]['ppl'] - 1) for r in half):.3%}.",
                  f"- Another calibration seed flips at least {min(r['flipped'] for r in seed):.4%} of the weights "
                  f"and moves perplexity by up to "
                  f"{max(abs(r['ppl'] / ref[(r['metric'], r['pattern'])]['ppl'] - 1) for r in seed):.3%}."]
    for note in meta.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--metrics", default="pruner-zero,gblm", help="metrics that read G (names or formulas)")
    ap.add_argument("--patterns", default="unstructured,2:4")
    ap.add_argument("--nsamples", type=int, default=32, help="C4 calibration windows")
    ap.add_argument("--seqlen", type=int, default=512, help="tokens per calibration and evaluation window")
    ap.add_argument("--windows", type=int, default=16, help="WikiText-2 test windows for perplexity")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--cache-dir", default=None)
    pzr.measurement_args(ap, "results/grad-storage-cpu")
    args = ap.parse_args()
    if pzr.rendered_only(ap, args, render):
        return
    from prunerzero.data import eval_tokens, eval_windows
    from prunerzero.evaluate import perplexity
    from prunerzero.models import all_prunable, load_model
    from prunerzero.pipeline import CalibConfig, one_shot_stats, prune
    from prunerzero.prune.masks import parse_pattern

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    meta = pzr.read_meta(out)
    meta.update(renderer="grad_storage", model=args.model)
    pzr.write_meta(out, meta)
    done = {r["id"] for r in pzr.read_rows(out / "rows.jsonl")}
    reference = {}   # (metric, pattern) -> seed 0 fp32 masks
    for metric in args.metrics.split(","):
        for pat in args.patterns.split(","):
            pattern = parse_pattern(0.5, None if pat == "unstructured" else pat)
            for storage, seed in CASES:
                rid = row_id(args.model, metric, pat, storage, seed, args.nsamples, args.seqlen, args.windows)
                if rid in done and (storage, seed) != ("fp32", 0):
                    continue
                lm = load_model(args.model, device="cpu", dtype="fp32", seqlen=args.seqlen)
                cfg = CalibConfig(args.nsamples, seed, 1, args.data_dir, args.cache_dir, grad_storage=storage)
                stats = one_shot_stats(lm, cfg, need_x=False, need_g=True, progress=True)   # cached for prune
                g_bytes = sum(t.numel() * t.element_size() for d in stats.tensors.values() for t in d.values())
                prune(lm, metric, pattern, cfg, sequential=False, progress=False)
                masks = {k: (lin.weight == 0).cpu() for k, lin in all_prunable(lm.model).items()}
                if (storage, seed) == ("fp32", 0):
                    reference[(metric, pat)] = masks
                    if rid in done:
                        continue
                ref = reference[(metric, pat)]
                total = sum(m.numel() for m in masks.values())
                flipped = sum(int((masks[k] != ref[k]).sum()) for k in masks) / total
                ev = eval_windows(eval_tokens(lm.tokenizer, "wikitext2", "test", args.data_dir, args.seqlen),
                                  args.seqlen, args.windows, lm.window_bos)
                ppl = perplexity(lm.model, ev)
                row = {"model": args.model, "metric": metric, "pattern": pat, "storage": storage, "seed": seed,
                       "nsamples": args.nsamples, "seqlen": args.seqlen, "windows": args.windows,
                       "g_bytes": g_bytes, "flipped": flipped, "ppl": ppl}
                print(f"{metric} {pat} {storage} seed {seed}: flipped {flipped:.4%}, ppl {ppl:.3f}", flush=True)
                pzr.record(out, pzr.measurement(rid, row, "cpu"))
                pzr.write_measurements(out, render)
    print(pzr.write_measurements(out, render).read_text())


if __name__ == "__main__":
    main()
