"""`prunerzero select RUN`: re-score a search run's best formulas as final runs prune, on validation, over seeds,
and write the pick into the run folder (``RUN/selection.json``), where ``prunerzero prune --metric RUN`` finds it."""
from __future__ import annotations

from .. import checks
from ..errors import UserError
from ..specs import probe_folder
from ._common import P, at_least, command, groups, shell_command

HELP = "pick the formula to confirm from search runs: re-score their best on validation as final runs prune"


def cmd_select(args) -> None:
    from pathlib import Path

    from ..search.select import PATTERNS, SelectOptions, default_out, select

    for run in args.runs:
        if not (Path(run) / "config.json").is_file():
            raise UserError(f"{run} is not a search run (no config.json): pass the folder `prunerzero search` wrote")
    opts = SelectOptions(
        runs=tuple(args.runs), out=args.out, top=args.top, reference=args.reference,
        also=tuple(checks.name_list(args.also, "--also")) if args.also else (),
        patterns=tuple(checks.name_list(args.patterns, "--patterns", tuple(PATTERNS))),
        seeds=tuple(checks.int_list(args.seeds, "--seeds", 0)), mode=args.mode, model=args.model,
        device=checks.device(args.device), dtype=args.dtype, seqlen=args.seqlen, nsamples=args.nsamples,
        batch_size=args.batch_size, eval_windows=args.eval_windows, bos=args.bos, combine=args.combine,
        data_dir=args.data_dir, cache_dir=args.cache_dir, render_only=args.render_only, progress=not args.quiet,
        command=shell_command())
    out = Path(args.out) if args.out else default_out(opts.runs)
    probe_folder(out, "--out")
    probe_folder(args.cache_dir, "--cache-dir")
    if not args.render_only:
        from ..data import require_data

        require_data(args.data_dir, ("wikitext2",), ("validation",), calibration=True)
    chosen = select(opts)
    print(out.with_suffix(".md").read_text())
    if chosen is None:
        print(f"chosen: none (no candidate was scored at every pattern); {out.with_suffix('.json')} records the rows")
        return
    print(f"chosen: {chosen['formula']} ({chosen['name']}); written to {out.with_suffix('.json')}")
    target = args.runs[0] if out == default_out(opts.runs) else str(out)
    print(f"prune with it: prunerzero prune --metric {target}")


def add_parser(sub) -> None:
    p = command(sub, "select", HELP)
    p.description = (HELP + ". The candidates are each run's best distinct formulas that are not a published metric "
                     "met again; the pick beats the reference at every pattern (by more than both seed spreads with "
                     "3 or more seeds) with the lowest log-perplexity ratio to it, else the lowest ratio (the table "
                     "says which). Only the validation split is read.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="search run folder(s) written by `prunerzero search`")
    g = groups(p)
    m, what, how, out = g["model and data"], g["what to prune"], g["how"], g["output"]
    what.add_argument("--top", type=at_least(1), default=6, help="distinct formulas taken from each run")
    what.add_argument("--reference", default="wanda", help="the metric every candidate is compared with")
    what.add_argument("--also", default=None,
                      help="comma-separated named metrics shown in the table for comparison (default: none)")
    what.add_argument("--patterns", default="u,2:4",
                      help="comma-separated patterns to re-score at: u (50%% unstructured per row), 2:4, 4:8")
    how.add_argument("--seeds", default="0",
                     help="comma-separated calibration seeds (3 or more for a verdict beyond the seed spread)")
    how.add_argument("--mode", default="sequential", choices=["sequential", "oneshot"],
                     help="statistics the re-scoring prunes with: sequential (as final runs prune) or oneshot (the "
                          "dense model's, as the search scored; no calibration pass per cell, cheaper on a CPU)")
    how.add_argument("--combine", default=None, choices=["mean", "worst"],
                     help="how the pick combines the patterns' ratios (default: as the runs' fitness.combine; "
                          "margin and worst runs take the worst pattern's)")
    how.add_argument("--nsamples", type=at_least(1), default=P.nsamples, help="calibration windows from C4 train")
    m.add_argument("--model", default=None, help="model re-scored (default: the model the runs scored)")
    m.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if this torch sees one, else cpu)")
    m.add_argument("--dtype", default=P.dtype, choices=checks.DTYPES,
                   help="weights' precision; auto = fp32 on CPU, fp16 on GPU")
    m.add_argument("--seqlen", type=at_least(2), default=P.seqlen, help="tokens per window")
    m.add_argument("--batch-size", type=at_least(1), default=P.batch_size, help="windows per forward pass")
    m.add_argument("--bos", default=None, choices=checks.BOS_MODES,
                   help="BOS mode of the re-scoring (default: the one the runs scored the model with)")
    m.add_argument("--data-dir", default=None,
                   help="folder holding wikitext-2-raw/ and c4/ (default: $PRUNERZERO_DATA, else the hub)")
    m.add_argument("--cache-dir", default=None,
                   help="model and statistics cache (default: $PRUNERZERO_CACHE, else ~/.cache/prunerzero)")
    g["evaluation"].add_argument("--eval-windows", type=at_least(1), default=None,
                                 help="WikiText-2 validation windows per cell (default: all)")
    out.add_argument("--out", default=None,
                     help="selection folder: OUT/grid.yaml and OUT/rows.jsonl (a rerun resumes), the pick in "
                          "OUT.json and the table in OUT.md (default: RUN/selection of the first run, so the pick is "
                          "RUN/selection.json)")
    out.add_argument("--render-only", action="store_true", help="re-render OUT.md from OUT's rows, run nothing")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_select)
