"""Pick the discovered formula to confirm, without looking at the test split.

The search ranks formulas by one-shot pruning at one pattern on WikiText-2 *validation* windows. Final runs prune
sequentially (Wanda's scheme) and are reported at several patterns, so the top distinct formulas of one or more
runs are re-scored here exactly as final runs prune them (sequential calibration, 50% unstructured per row and
each N:M pattern), still on the validation split, next to a reference metric (Wanda). The chosen formula beats the
reference at every pattern on validation and has the lowest mean log-perplexity ratio to it; if none beats it
everywhere, the lowest ratio is chosen and the table says so. Only then is it evaluated on test (baselines.py).

    python benchmarks/select_formula.py --run results/search-gpu --top 6 --out results/search-gpu/selection
    python benchmarks/select_formula.py --run A --run B --also ria --patterns u,2:4,4:8 --eval-windows 16

Each finished (formula, pattern) is written to ``<out>.json`` at once; a rerun skips what is there.
The last line printed is ``chosen: <formula>``.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

from prunerzero.evaluate import ppl_on
from prunerzero.fsutil import atomic_write_text
from prunerzero.metric.known import KNOWN_METRICS, resolve_metric
from prunerzero.metric.simplify import ranking_class
from prunerzero.models import all_prunable, load_model
from prunerzero.pipeline import CalibConfig, default_group, prune
from prunerzero.prune.masks import WeightSnapshot, parse_pattern
from prunerzero.search.table import equations

PATTERNS = {"u": None, "2:4": "2:4", "4:8": "4:8"}
PENALTY = 1e5  # fitness given to formulas that failed (search_spaces: fitness.penalty)


def candidates(runs: list[str], top: int, reference: str, also: list[str]) -> list[dict]:
    """The reference and known metrics, then each run's best ``top`` distinct formulas (by canonical key) that are
    not a known metric (magnitude, Wanda, RIA, ... rediscovered)."""
    out = [{"name": name, "formula": str(resolve_metric(name)[1]),  # refuses an unknown name before any work
            "simplified": "", "search_ppl": None, "run": None} for name in [reference] + also]
    # met again (the same ranking in exact arithmetic): a rediscovery, not a candidate
    keys = {ranking_class(m.formula) for m in KNOWN_METRICS.values()}
    for run in runs:
        taken = 0
        for rank, row in equations(run, None).iterrows():
            if taken >= top or not row["ppl"] < PENALTY:
                break
            if ranking_class(row["formula"]) not in keys:
                keys.add(ranking_class(row["formula"]))
                taken += 1
                out.append({"name": f"{Path(run).name}#{rank}", "formula": row["formula"],
                            "simplified": row["simplified"], "search_ppl": float(row["ppl"]), "run": run})
    return out


def choose(rows: list[dict], patterns: list[str], reference: str) -> tuple[dict | None, bool]:
    ref = next(r for r in rows if r["name"] == reference)
    best, best_beats = None, False
    if any(p not in ref["ppl"] for p in patterns):
        return best, best_beats
    for r in rows:
        if r["run"] is None or any(p not in r["ppl"] for p in patterns):
            continue
        r["log_ratio"] = sum(math.log(r["ppl"][p] / ref["ppl"][p]) for p in patterns) / len(patterns)
        r["beats_reference"] = all(r["ppl"][p] < ref["ppl"][p] for p in patterns)
        key = (not r["beats_reference"], r["log_ratio"])
        if best is None or key < (not best_beats, best["log_ratio"]):
            best, best_beats = r, r["beats_reference"]
    return best, best_beats


def render(rows: list[dict], patterns: list[str], meta: dict, chosen: dict | None, beats: bool) -> str:
    ref = meta["reference"]
    head = " | ".join(f"val ppl {p}" for p in patterns)
    lines = [f"# Formula selection on WikiText-2 validation ({meta['model']})", "",
             f"Command: `{meta['command']}`", "",
             f"Each formula pruned as final runs prune it: sequential calibration ({meta['nsamples']} C4 windows of "
             f"{meta['seqlen']}, seed {meta['seed']}), 50% sparsity; perplexity on the WikiText-2 validation split "
             f"({meta['eval_windows'] or 'all'} windows). The test split is not used here. Hardware: "
             f"{meta['hardware']}.", "",
             f"| name | formula | search fitness | {head} | mean log ratio to {ref} |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in patterns) + " | ---: |"]
    for r in rows:
        vals = " | ".join(f"{r['ppl'][p]:.3f}" if p in r["ppl"] else "-" for p in patterns)
        fit = f"{r['search_ppl']:.3f}" if r["search_ppl"] is not None else "-"
        ratio = f"{r['log_ratio']:+.4f}" if "log_ratio" in r else "-"
        lines.append(f"| {r['name']} | `{r['formula']}` | {fit} | {vals} | {ratio} |")
    if chosen is not None:
        lines += ["", f"Chosen: `{chosen['formula']}` ({chosen['name']}); "
                  + (f"it beats {ref} at every pattern on validation." if beats else
                     f"NO candidate beats {ref} at every pattern on validation; this one has the lowest mean ratio.")]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="search run directory (repeatable)")
    ap.add_argument("--top", type=int, default=6, help="distinct formulas taken from each run")
    ap.add_argument("--reference", default="wanda")
    ap.add_argument("--also", default="", help="comma-separated known metrics shown for comparison")
    ap.add_argument("--patterns", default="u,2:4")
    ap.add_argument("--out", required=True, help="writes <out>.json and <out>.md")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--eval-windows", type=int, default=None, help="validation windows (default: all)")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    patterns = [p.strip() for p in args.patterns.split(",") if p.strip()]
    bad = [p for p in patterns if p not in PATTERNS]
    if bad:
        raise SystemExit(f"error: unknown pattern '{bad[0]}': use u, 2:4 or 4:8")
    also = [a.strip() for a in args.also.split(",") if a.strip()]
    rows = candidates(args.run, args.top, args.reference, also)
    out = Path(args.out)
    done = json.loads(out.with_suffix(".json").read_text())["rows"] if out.with_suffix(".json").is_file() else []
    for r in rows:
        prev = next((d for d in done if d["formula"] == r["formula"]), None)
        r["ppl"] = dict(prev["ppl"]) if prev else {}

    lm = load_model(args.model, device=args.device, dtype=args.dtype, seqlen=args.seqlen)
    hw = torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    meta = {"model": args.model, "command": "python " + shlex.join(sys.argv), "reference": args.reference,
            "patterns": patterns, "nsamples": args.nsamples, "seqlen": lm.seqlen, "seed": args.seed,
            "eval_windows": args.eval_windows, "hardware": hw}
    cfg = CalibConfig(args.nsamples, args.seed, args.batch_size, args.data_dir)
    snapshot = WeightSnapshot(all_prunable(lm.model), device="cpu")
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        chosen, beats = choose(rows, patterns, args.reference)
        atomic_write_text(out.with_suffix(".json"), json.dumps(
            {"meta": meta, "rows": rows, "chosen": chosen, "beats_reference": beats}, indent=2) + "\n")
        atomic_write_text(out.with_suffix(".md"), render(rows, patterns, meta, chosen, beats))
        return chosen

    for r in rows:
        for p in patterns:
            if p in r["ppl"]:
                continue
            t0 = time.time()
            group = default_group(r["name"] if r["run"] is None else r["formula"])
            prune(lm, r["formula"], parse_pattern(0.5, PATTERNS[p], group), cfg, sequential=True, progress=False)
            r["ppl"][p] = ppl_on(lm, "wikitext2", "validation", args.eval_windows, args.batch_size,
                                 args.data_dir)["ppl"]
            snapshot.restore()
            print(f"{r['name']:>24} {p:>4}: val ppl {r['ppl'][p]:.3f} ({time.time() - t0:.0f}s)  {r['formula']}",
                  flush=True)
            save()
    chosen = save()
    print(out.with_suffix(".md").read_text())
    print(f"chosen: {chosen['formula'] if chosen else ''}")


if __name__ == "__main__":
    main()
