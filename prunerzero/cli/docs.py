"""`prunerzero docs`: render every generated page (result tables and pages, indexes, study cards, findings, the
README's headline table) from the committed rows; ``--check`` compares instead of writing."""
from __future__ import annotations

from ._common import command

HELP = "render the generated docs from committed rows (--check: exit 1 naming a stale file, write nothing)"


def cmd_docs(args) -> int:
    from ..results.docs import main

    return main(["--check"] if args.check else [])


def add_parser(sub) -> None:
    p = command(sub, "docs", HELP)
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 with one line naming the first generated file that differs from a "
                        "fresh render")
    p.set_defaults(func=cmd_docs)
