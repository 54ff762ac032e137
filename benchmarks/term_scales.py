"""How large the gradient statistic G is next to the activation statistic X, per module type.

Reads (or computes and caches) the one-shot statistics a search uses and prints, per module type, the share of
weights with G > X, the medians of X, G and G/X, and the share of inputs where |log X| > sqrt(X). Explains formulas
such as |W|·sqrt|X - G|: where G << X it is Wanda's |W|·sqrt(X) lowered by about |W|·G / (2·sqrt(X)); and such as
|W|·(|log X| + sqrt(X)), which keeps weights of near-silent inputs where |log X| is the larger term.

    python benchmarks/term_scales.py --nsamples 32 --seqlen 1024      # the CPU search's statistics
    python benchmarks/term_scales.py --device cuda                    # the full protocol (128 x 2048)
    python benchmarks/term_scales.py --nsamples 32 --seqlen 1024 --out results/term-scales-cpu   # rows + table
    python benchmarks/term_scales.py --out results/term-scales-cpu --render-only
    python benchmarks/term_scales.py --model gemma3-270m --nsamples 16 --seqlen 512 --bos window \
        --out results/term-scales-gemma-cpu                           # Gemma with BOS opening every window

With ``--out``, each (model, statistics setting, module type) is a row of ``<out>/rows.jsonl`` with provenance,
and ``<out>.md`` is rendered from the rows and ``<out>/meta.json``; a setting already there is not measured again.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from prunerzero import results as pzr
from prunerzero.checks import BOS_DEFAULT, BOS_MODES

COLUMNS = [["model", "model", "s"], ["statistics", "statistics", "s"], ["module", "module", "s"],
           ["median X", "median X", ".4g"], ["\\|log X\\| > √X", "|log X| > √X", ".4f"],
           ["median G", "median G", ".4g"], ["median G/X", "median G/X", ".4g"], ["G > X", "G > X", ".4f"]]
DEFAULT_META = {"renderer": "term_scales", "blocks": [
    {"text": "# Term scales: G next to X, per module type\n\nPer module type of the dense model, from the one-shot "
             "statistics a search uses (C4 calibration windows, Wanda's sampler): the median of X (input-activation "
             "norm per input channel), the share of input channels with |log X| > √X, and from the gradient "
             "statistic G (l2 over sequences) the median of G, the median of G/X and the share of weights with "
             "G > X. Medians are per layer, then averaged over the layers of that type (benchmarks/term_scales.py, "
             "`prunerzero.report.term_scales`)."},
    {"commands": {"bench": "term_scales"}},
    {"table": {"where": {"bench": "term_scales"}, "columns": COLUMNS}}]}


def render(rows: list[dict], meta: dict) -> str:
    return pzr.render_document(rows, meta if meta.get("blocks") else DEFAULT_META)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default=None)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--bos", default=BOS_DEFAULT, choices=BOS_MODES,
                    help="stream: Wanda's windows; window: BOS opens every calibration window (protocol bos)")
    pzr.measurement_args(ap, None)
    args = ap.parse_args()
    if pzr.rendered_only(ap, args, render):
        return
    out = Path(args.out) if args.out else None
    window = args.bos == "window"
    setting = f"{args.nsamples} x {args.seqlen} C4, seed {args.seed}" + (", BOS per window" if window else "")
    bos = "|bos=window" if window else ""   # before the sizes: no stream id is a prefix of it
    rid = f"term_scales|{args.model}{bos}|{args.nsamples}x{args.seqlen}|seed={args.seed}"
    if out is not None:
        if not pzr.read_meta(out):
            pzr.write_meta(out, DEFAULT_META)
        if any(r["id"].startswith(rid + "|") for r in pzr.read_rows(out / "rows.jsonl")):
            print(f"{rid}: in {out / 'rows.jsonl'} already (delete its rows to measure again)")
            return

    from prunerzero.models import load_model
    from prunerzero.pipeline import CalibConfig, one_shot_stats
    from prunerzero.report import term_scales

    lm = load_model(args.model, device=args.device, seqlen=args.seqlen, bos=args.bos)
    stats = one_shot_stats(lm, CalibConfig(args.nsamples, args.seed, 1, args.data_dir))
    table = term_scales(stats)
    print(f"{args.model}: {args.nsamples} C4 windows of {lm.seqlen} (medians per layer, averaged over layers)")
    with pd.option_context("display.float_format", lambda v: f"{v:.4g}"):
        print(table.to_string(index=False))
    if out is not None:
        for rec in table.to_dict("records"):
            fields = {"bench": "term_scales", "model": args.model, "statistics": setting, **rec}
            pzr.record(out, pzr.measurement(f"{rid}|{rec['module']}", fields, str(lm.device)))
        print(f"rows in {out / 'rows.jsonl'}; table {pzr.write_measurements(out, render)}")


if __name__ == "__main__":
    main()
