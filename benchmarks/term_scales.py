"""How large the gradient statistic G is next to the activation statistic X, per module type.

Reads (or computes and caches) the one-shot statistics a search uses and prints, per module type, the share of
weights with G > X, the medians of X, G and G/X, and the share of inputs where |log X| > sqrt(X). Explains formulas such as |W|·sqrt|X - G|: where G << X it is
Wanda's |W|·sqrt(X) lowered by about |W|·G / (2·sqrt(X)); and such as |W|·(|log X| + sqrt(X)), which
keeps weights of near-silent inputs where |log X| is the larger term.

    python benchmarks/term_scales.py --nsamples 32 --seqlen 1024      # the CPU search's statistics
    python benchmarks/term_scales.py --device cuda                    # the full protocol (128 x 2048)
"""
from __future__ import annotations

import argparse

import pandas as pd

from prunerzero.models import load_model
from prunerzero.pipeline import CalibConfig, one_shot_stats
from prunerzero.report import term_scales


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
    table = term_scales(stats)
    print(f"{args.model}: {args.nsamples} C4 windows of {lm.seqlen} (medians per layer, averaged over layers)")
    with pd.option_context("display.float_format", lambda v: f"{v:.4g}"):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
