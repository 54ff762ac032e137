"""Render the README's figures from committed result rows (no model needed).

    python benchmarks/figures.py --rows results/confirm-gpu/rows.jsonl --out results/headline.png
    python benchmarks/figures.py --curves results/structural-curve-cpu/rows.jsonl --key wikitext2@128 \
        --target 129.96 --out results/structural-curve-cpu.png
"""
from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prunerzero.results import read_rows  # noqa: E402
from prunerzero.report import compare_bar, plot_curves  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="results/confirm-gpu/rows.jsonl", help="rows written by prunerzero bench")
    ap.add_argument("--out", default="results/headline.png")
    ap.add_argument("--title", default=None)
    ap.add_argument("--curves", default=None,
                    help="structural rows with learning curves (curve_every): plot perplexity against step instead")
    ap.add_argument("--key", default="wikitext2@128", help="with --curves: the perplexity plotted")
    ap.add_argument("--target", type=float, default=None, help="with --curves: a perplexity to mark")
    args = ap.parse_args()
    if args.curves:
        rows = read_rows(args.curves)
        curved = [r for r in rows if r.get("curve")]
        if not curved:
            raise SystemExit(f"error: no row of {args.curves} has a learning curve: run a grid with curve_every")
        dense = next((r["ppl"].get(args.key) for r in rows if r["method"] == "dense"), None)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        plot_curves(curved, args.key, ax, args.target, dense)
        ax.set_title(args.title or "Structural policy gradient: learning curves")
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"wrote {args.out}")
        return
    rows = read_rows(args.rows)
    dense = next((r for r in rows if r["method"] == "dense"), None)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, ds in zip(axes, ("wikitext2", "c4")):
        results: dict[str, dict[str, float]] = {}
        for r in rows:
            if r["method"] == "dense" or ds not in r["ppl"]:
                continue
            pattern = r["pattern"] if ":" in r["pattern"] else f"{float(r['pattern']):.0%} unstructured"
            results.setdefault(pattern, {})[r["method"]] = r["ppl"][ds]
        compare_bar(results, ax, dense=dense["ppl"].get(ds) if dense else None)
        ax.set_title(f"{'WikiText-2 test' if ds == 'wikitext2' else 'C4 validation'} perplexity")
    fig.suptitle(args.title or "SmolLM2-135M pruned to 50%: discovered formula vs baselines")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
