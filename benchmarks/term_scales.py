"""How large the gradient statistic G is next to the activation statistic X, per module type.

Reads (or computes and caches) the one-shot statistics a search uses and prints, per module type, the share of
weights with G > X and the medians of X, G and G/X. Explains formulas such as |W|·sqrt|X - G|: where G << X it is
Wanda's |W|·sqrt(X) lowered by about |W|·G / (2·sqrt(X)).

    python benchmarks/term_scales.py --nsamples 32 --seqlen 1024      # the CPU search's statistics
    python benchmarks/term_scales.py --device cuda                    # the full protocol (128 x 2048)
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import pandas as pd

from prunerzero.models import load_model
from prunerzero.pipeline import CalibConfig, one_shot_stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default=None)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    lm = load_model(args.model, device=args.device, seqlen=args.seqlen)
    stats = one_shot_stats(lm, CalibConfig(args.nsamples, args.seed, 1, args.data_dir))
    rows = defaultdict(lambda: defaultdict(list))
    for key, terms in stats.tensors.items():
        x, g = terms["X"].double().view(1, -1), terms["G2"].double()
        module = key.split(".", 2)[2]
        rows[module]["weights"].append(g.numel())
        rows[module]["G > X"].append(float((g > x).double().sum()))
        rows[module]["median X"].append(float(x.median()))
        rows[module]["median G"].append(float(g.median()))
        rows[module]["median G/X"].append(float((g / x.clamp_min(1e-30)).median()))
    table = pd.DataFrame([{"module": m, "share G > X": sum(v["G > X"]) / sum(v["weights"]),
                           **{k: sum(v[k]) / len(v[k]) for k in ("median X", "median G", "median G/X")}}
                          for m, v in rows.items()])
    print(f"{args.model}: {args.nsamples} C4 windows of {lm.seqlen} (medians per layer, averaged over layers)")
    with pd.option_context("display.float_format", lambda v: f"{v:.4g}"):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
