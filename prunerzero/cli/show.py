"""`prunerzero show`: the table of the best distinct formulas of a search run."""
from __future__ import annotations

from ._common import at_least, command

HELP = "table of the best distinct formulas of a search run"


def cmd_show(args) -> None:
    from ..search.table import format_table

    print(format_table(args.run, args.top))


def add_parser(sub) -> None:
    p = command(sub, "show", HELP)
    p.add_argument("run", help="search run directory")
    p.add_argument("--top", type=at_least(1), default=10, help="rows of the table")
    p.set_defaults(func=cmd_show)
