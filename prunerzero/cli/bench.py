"""`prunerzero bench`: run an experiment grid into rows and render its tables."""
from __future__ import annotations

from pathlib import Path

from .. import checks
from ..errors import UserError
from ._common import at_least, command, shell_command

HELP = "run an experiment grid (models x methods x patterns x seeds) into rows; render its tables"


def default_out(grid_path: Path, name: str) -> Path:
    """Where a grid's rows go without --out: ``results/<name>`` beside the ``grids/`` folder holding the grid (the
    repository's, or a study's: ``studies/S/grids/X.yaml`` -> ``studies/S/results/X``), else ``results/<name>``."""
    if grid_path.parent.name == "grids":
        return grid_path.parent.parent / "results" / name
    return Path("results") / name


def cmd_bench(args) -> None:
    from ..results import load_grid, read_rows, run_grid, write_table

    grid = load_grid(args.grid)
    if grid.structural and args.nsamples is not None:
        raise UserError("--nsamples sets the pruning calibration; the structural methods of this grid set their own "
                        "'nsamples' in the grid")
    grid = grid.with_protocol(device=checks.device(args.device), seqlen=args.seqlen,
                                              nsamples=args.nsamples, eval_windows=args.eval_windows,
                                              batch_size=args.batch_size)
    formulas = {}
    for item in args.formula:
        name, _, text = item.partition("=")
        if not name or not text:
            raise UserError(f"--formula '{item}' is not NAME=FORMULA")
        formulas[name] = text
    grid = grid.with_formulas(formulas)
    if args.seeds is not None:
        grid = grid.with_seeds(checks.int_list(args.seeds, "--seeds", 0))
    out = Path(args.out) if args.out else default_out(Path(args.grid), grid.name)
    checks.folder(out, "--out")
    checks.folder(args.cache_dir, "--cache-dir")
    if not args.render_only:
        run_grid(grid, out, args.data_dir, args.cache_dir, shell_command(), progress=not args.quiet)
    md = write_table(grid, out)
    rows = read_rows(out / "rows.jsonl")
    print(md.read_text())
    print(f"{len(rows)} rows in {out / 'rows.jsonl'}; table {md}")


def add_parser(sub) -> None:
    p = command(sub, "bench", HELP)
    p.add_argument("grid", help="grid YAML (see grids/): protocol, models, methods, patterns, seeds")
    p.add_argument("--out", default=None,
                   help="results folder: rows in OUT/rows.jsonl, tables in OUT.md (default: results/<grid name> beside "
                        "the grids/ folder holding GRID, e.g. a study's)")
    p.add_argument("--render-only", action="store_true", help="re-render OUT.md from the rows, run nothing")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the grid's, else cuda if available)")
    p.add_argument("--formula", action="append", default=[],
                   help="NAME=FORMULA: the formula behind the grid's method NAME (repeatable; default: the grid's)")
    p.add_argument("--seeds", default=None, help="comma-separated calibration seeds (default: the grid's seeds)")
    p.add_argument("--seqlen", type=at_least(2), default=None, help="override protocol.seqlen (a reduced protocol)")
    p.add_argument("--nsamples", type=at_least(1), default=None, help="override protocol.nsamples")
    p.add_argument("--eval-windows", type=at_least(1), default=None, help="override protocol.eval_windows")
    p.add_argument("--batch-size", type=at_least(1), default=None, help="override protocol.batch_size")
    p.add_argument("--data-dir", default=None,
                   help="folder holding wikitext-2-raw/ and c4/ (default: $PRUNERZERO_DATA, else the hub)")
    p.add_argument("--cache-dir", default=None,
                   help="model and statistics cache (default: $PRUNERZERO_CACHE, else ~/.cache/prunerzero)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench)
