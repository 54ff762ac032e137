"""`prunerzero show`: the table of the best distinct formulas of a search run."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ._common import at_least, command

HELP = "table of the best distinct formulas of a search run"


def cmd_show(args) -> None:
    from ..search.table import format_table

    if not Path(args.run).is_dir():
        raise UserError(f"{args.run} is not a folder: pass a search run folder (what `prunerzero search` wrote)")
    print(format_table(args.run, args.top, wide=args.wide))


def add_parser(sub) -> None:
    p = command(sub, "show", HELP)
    p.description = (HELP + ": each formula in infix form and in the canonical prefix form (both are accepted by "
                     "`prunerzero prune --metric`), its size, the search's fitness, and the named metric it ranks "
                     "weights like (known)")
    p.add_argument("run", help="search run directory")
    p.add_argument("--top", type=at_least(1), default=10, help="rows of the table")
    p.add_argument("--wide", action="store_true",
                   help="full width: every per-model/setting perplexity column, the simplified form, no shortened "
                        "formulas (default: fit 120 columns)")
    p.set_defaults(func=cmd_show)
