"""Command line: ``prunerzero prune | search | show | structural | bench | export | eval | experts | docs``.

One thin module per command; each registers its parser with ``add_parser(sub)``. Every bad input ends in one line
on stderr, ``error: <what is wrong and what to do>``, and exit status 2.
"""
from __future__ import annotations

import importlib
import sys

from ..errors import PrunerzeroWarning, UserError
from ._common import Parser, _Help

# the subcommands, in the order `prunerzero --help` lists them: one module of this package each
COMMANDS = ("prune", "search", "show", "structural", "bench", "export", "eval", "experts", "docs")


def build_parser():
    parser = Parser(prog="prunerzero", description=__doc__.splitlines()[0], formatter_class=_Help)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv=None) -> int:
    import warnings

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (exit 2, one line) and --help (exit 0)
        return int(exc.code or 0)
    from ..provenance import git_state

    git_state()   # the commit of the code this process loaded, not of the tree when its first row is written
    try:
        with warnings.catch_warnings():
            shown = warnings.showwarning

            def one_line(message, category, filename, lineno, file=None, line=None):
                """prunerzero's own warnings as one line, like its errors; the libraries' as they come."""
                if issubclass(category, PrunerzeroWarning):
                    print(f"warning: {message}", file=sys.stderr)
                else:
                    shown(message, category, filename, lineno, file, line)
            warnings.showwarning = one_line
            status = args.func(args)   # a command may return its exit status (docs --check: 1 when stale)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
