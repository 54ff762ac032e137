"""Command line: ``prunerzero search | show | select | prune | structural | eval | bench | export | experts | docs``.

One thin module per command; each registers its parser with ``add_parser(sub)`` (one line in ``COMMANDS`` below).
Every bad input ends in one line on stderr, ``error: <what is wrong and what to do>``, and exit status 2.
"""
from __future__ import annotations

import importlib
import sys

import argparse

from .. import __version__
from ..errors import PrunerzeroWarning, UserError
from ._common import Parser

# the subcommands, in the order `prunerzero --help` lists them (the user's path first): one module of this package
# each, registered by its add_parser(sub)
COMMANDS = ("search", "show", "select", "prune", "structural", "eval", "bench", "export", "experts", "docs")

DESCRIPTION = """\
Discover pruning metrics for LLMs by genetic programming, and prune with them.

The path:
  prunerzero search                          find formulas (a new run folder under runs/)
  prunerzero show RUN                        list a run's best formulas
  prunerzero select RUN                      pick one on validation, as final runs prune
  prunerzero prune --metric RUN --save DIR   prune with the pick (or a named metric, or a formula)
  prunerzero eval --model DIR                evaluate the pruned model

Papers: the metric search follows Pruner-Zero (Dong et al., "Pruner-Zero: Evolving Symbolic Pruning Metric from
Scratch for Large Language Models", ICML 2024, arXiv:2406.02924); structural pruning follows the forward-only policy
gradient of Gao et al. ("Bypass Back-propagation: Optimization-based Structural Pruning for Large Language Models
via Policy Gradient", ACL 2025, arXiv:2406.10576)."""


def build_parser():
    parser = Parser(prog="prunerzero", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"prunerzero {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND",
                                title="commands")
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
