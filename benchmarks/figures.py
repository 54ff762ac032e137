"""Render the README's headline figure from committed result rows (no model needed).

    python benchmarks/figures.py --rows results/confirm/rows --out results/headline.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prunerzero.report import compare_bar  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="results/confirm/rows")
    ap.add_argument("--out", default="results/headline.png")
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    rows = [json.loads(p.read_text()) for p in sorted(Path(args.rows).glob("*.json"))]
    dense = next((r for r in rows if r["method"] == "dense"), None)
    datasets = [("wikitext2", "ppl"), ("c4", "c4_ppl")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (ds, key) in zip(axes, datasets):
        results: dict[str, dict[str, float]] = {}
        for r in rows:
            if r["method"] == "dense" or key not in r:
                continue
            pattern = "2:4" if "2:4" in r["pattern"] else ("4:8" if "4:8" in r["pattern"] else "50% unstructured")
            results.setdefault(pattern, {})[r["method"]] = r[key]
        compare_bar(results, ax, dense=dense.get(key) if dense else None)
        ax.set_title(f"{'WikiText-2 test' if ds == 'wikitext2' else 'C4 validation'} perplexity")
    fig.suptitle(args.title or "SmolLM2-135M pruned to 50%: discovered formula vs baselines")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
