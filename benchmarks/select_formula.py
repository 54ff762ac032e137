"""Deprecated: the validation re-scoring is ``prunerzero select RUN`` (``prunerzero.search.select``).

This wrapper keeps the old options for scripts written against it; it is removed once the CLI command lands.
"""
from __future__ import annotations

import argparse
import sys

from prunerzero.checks import BOS_MODES, int_list
from prunerzero.errors import UserError
from prunerzero.search.select import SelectOptions, select


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", default=[], help="search run directory (repeatable)")
    ap.add_argument("--top", type=int, default=6, help="distinct formulas taken from each run")
    ap.add_argument("--reference", default="wanda", help="metric the candidates are compared with")
    ap.add_argument("--also", default="", help="comma-separated known metrics shown for comparison")
    ap.add_argument("--patterns", default="u,2:4", help="comma-separated: u (50%% unstructured), 2:4, 4:8")
    ap.add_argument("--seeds", default="0", help="comma-separated calibration seeds (3 or more for spreads)")
    ap.add_argument("--out", required=True, help="writes <out>/grid.yaml, <out>/rows.jsonl, <out>.json, <out>.md")
    ap.add_argument("--render-only", action="store_true", help="re-render from <out>/grid.yaml and its rows")
    ap.add_argument("--mode", default="sequential", choices=["sequential", "oneshot"],
                    help="statistics the re-scoring prunes with: sequential (as final runs) or oneshot (as the search)")
    ap.add_argument("--model", default="smollm2", help="model re-scored")
    ap.add_argument("--device", default=None, help="cpu, cuda, ...")
    ap.add_argument("--dtype", default="auto", help="weights' precision")
    ap.add_argument("--seqlen", type=int, default=2048, help="tokens per window")
    ap.add_argument("--nsamples", type=int, default=128, help="calibration windows")
    ap.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    ap.add_argument("--eval-windows", type=int, default=None, help="validation windows (default: all)")
    ap.add_argument("--bos", default=None, choices=BOS_MODES,
                    help="BOS mode of the re-scoring (default: the one the runs scored --model with)")
    ap.add_argument("--combine", default=None, choices=["mean", "worst"],
                    help="how the choice combines the patterns' ratios (default: as the runs' fitness.combine)")
    ap.add_argument("--data-dir", default=None, help="folder holding wikitext-2-raw/ and c4/")
    ap.add_argument("--cache-dir", default=None, help="model and statistics cache")
    args = ap.parse_args()
    try:
        opts = SelectOptions(
            runs=tuple(args.run), out=args.out, top=args.top, reference=args.reference,
            also=tuple(a.strip() for a in args.also.split(",") if a.strip()),
            patterns=tuple(p.strip() for p in args.patterns.split(",") if p.strip()),
            seeds=tuple(int_list(args.seeds, "--seeds", 0)), mode=args.mode, model=args.model, device=args.device,
            dtype=args.dtype, seqlen=args.seqlen, nsamples=args.nsamples, batch_size=args.batch_size,
            eval_windows=args.eval_windows, bos=args.bos, combine=args.combine, data_dir=args.data_dir,
            cache_dir=args.cache_dir, render_only=args.render_only)
        chosen = select(opts)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"chosen: {chosen['formula'] if chosen else ''}")


if __name__ == "__main__":
    sys.exit(main())
