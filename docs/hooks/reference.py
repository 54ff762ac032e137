"""Reference pages generated from the code at build time (an MkDocs hook), so nothing is copied by hand.

- ``reference/cli.md``: every command and option, read from the argparse parsers ``prunerzero --help`` uses.
- ``reference/operations.md``: the terminals and operations of a formula, read from ``prunerzero.metric.ops``.
- ``reference/spaces.md``: the packaged search spaces (their own descriptions) and every search-space key, found by
  asking the space validator which keys it accepts (an unknown key is refused with the list of allowed ones).
- ``reference/grids.md``: every experiment-grid key, found the same way from the grid validator.
- ``changelog.md``: ``CHANGELOG.md`` at the repository root.

``tests/test_docs.py`` imports these functions and checks that every option and every operation appears.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("reference/cli.md", "reference/operations.md", "reference/spaces.md", "reference/grids.md",
             "changelog.md")
_NOTE = "<!-- generated from the code by docs/hooks/reference.py at build time: edit the code, not this page -->\n\n"


def _cell(text: str) -> str:
    """One markdown table cell: pipes escaped, line breaks and runs of spaces folded."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"``{text}``"


# --------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    from prunerzero.cli import build_parser

    return build_parser()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's commands, in the order ``--help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _option_row(formatter: argparse.HelpFormatter, action: argparse.Action) -> str:
    names = ", ".join(_code(s) for s in action.option_strings) or _code(action.dest)
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        value = " \\| ".join(_code(str(c)) for c in action.choices)
    elif action.nargs == 0:
        value = "flag"
    else:
        value = _code(action.metavar or action.dest.upper()) if action.option_strings else "required"
    helptext = formatter._expand_help(action) if action.help else ""
    return f"| {names} | {value} | {_cell(helptext)} |"


def _command_section(name: str, sub: argparse.ArgumentParser) -> list[str]:
    formatter = sub._get_formatter()
    lines = [f"## `prunerzero {name}`", "", _cell(sub.description or ""), "",
             "```text", sub.format_usage().strip(), "```", ""]
    for group in sub._action_groups:
        actions = [a for a in group._group_actions if a.help is not argparse.SUPPRESS
                   and not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = "arguments" if group.title in ("positional arguments", "options", "optional arguments") \
            else group.title
        lines += [f"**{title}**" if title == "arguments" and len(sub._action_groups) <= 2 else f"### {title}", ""]
        if group.description:
            lines += [_cell(group.description), ""]
        lines += ["| option | value | what it does |", "| --- | --- | --- |"]
        lines += [_option_row(formatter, a) for a in actions]
        lines.append("")
    if sub.epilog:
        lines += [_cell(sub.epilog), ""]
    return lines


def cli_reference() -> str:
    parser = _parser()
    formatter = parser._get_formatter()
    lines = ["# Command-line reference", "", _NOTE.strip(), "",
             _cell(parser.description or ""), "", "```text", parser.format_usage().strip(), "```", ""]
    top = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    if top:
        lines += ["| option | value | what it does |", "| --- | --- | --- |"]
        lines += [_option_row(formatter, a) for a in top]
        lines.append("")
    subs = subcommands(parser)
    lines += ["| command | what it does |", "| --- | --- |"]
    lines += [f"| [`{n}`](#prunerzero-{n}) | {_cell(s.description or '')} |" for n, s in subs.items()]
    lines.append("")
    for name, sub in subs.items():
        lines += _command_section(name, sub)
    return "\n".join(lines) + "\n"


def cli_options() -> dict[str, list[str]]:
    """Every command's option strings and positional names (what the reference must mention)."""
    out = {"": [s for a in _parser()._actions for s in a.option_strings]}
    for name, sub in subcommands(_parser()).items():
        out[name] = [s for a in sub._actions for s in (a.option_strings or [a.dest])]
    return out


# --------------------------------------------------------------------------------------------- operations
def operations_reference() -> str:
    from prunerzero.metric import ops

    lines = ["# Terminals and operations", "", _NOTE.strip(), "",
             "A formula is a tree of the operations below over the terminals, written in prefix form as DEAP "
             "prints it (`mul(abs(W), sqrt(X))`). prunerzero reads it with its own parser, never `eval`. "
             "Operations are *protected* as in Pruner-Zero: each is defined for every float input.", "",
             "## Terminals", "", "| terminal | what it is |", "| --- | --- |"]
    lines += [f"| `{t}` | {_cell(doc)} |" for t, doc in ops.TERMINALS.items()]
    lines += ["", f"Constants: `LOG_EPS` = {ops.LOG_EPS:g}, `EXP_CLAMP` = {ops.EXP_CLAMP:g}, "
                  f"`TINY` = {ops.TINY:g} (the guard of the whole-tensor denominators).", "",
              "## Operations", "",
              "*increasing*: strictly increasing in exact arithmetic (`yes`), or on x ≥ 0 (`nonneg`); *inverse*: "
              "the opposing operation that undoes it where both are defined (the simplifier's opposing-operation "
              "rule); *≥ 0*: its float output is never negative.", "",
              "| operation | arity | computes | increasing | inverse | ≥ 0 |",
              "| --- | ---: | --- | --- | --- | --- |"]
    for op in ops.OPS.values():
        lines.append(f"| `{op.name}` | {op.arity} | {_cell(op.doc)} | {op.increasing} | "
                     f"{_code(op.inverse) if op.inverse else ''} | {'yes' if op.nonneg else ''} |")
    lines += ["", "## Aliases", "", "Names other tools print for the same operation or terminal.", "",
              "| alias | means |", "| --- | --- |"]
    lines += [f"| `{a}` | `{o}` |" for a, o in {**ops.ALIASES, **ops.TERMINAL_ALIASES}.items()]
    from prunerzero.metric import known

    named = getattr(known, "NAMED_METRICS", known.KNOWN_METRICS)
    lines += ["", "## Named metrics", "", "Names `--metric` accepts besides a formula (`prunerzero prune --help`): the "
              "published metrics and the found formulas this repository stands behind, with their provenance.", "",
              "| name | formula | source |", "| --- | --- | --- |"]
    for name, metric in named.items():
        shown = _code(str(metric.formula)) if metric.formula else ""
        source = "; ".join(f"{attr} {getattr(metric, attr)}" if attr != "source" else metric.source
                           for attr in ("source", "run", "selection", "confirmed") if getattr(metric, attr, ""))
        lines.append(f"| `{name}` | {shown} | {_cell(source)} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- spaces, grids
_PROBE = "zz_not_a_key"
_REFUSED = re.compile(r"unknown key '[^']*" + _PROBE + r"'.*allowed are (.+)$")


def probe_keys(validate, nest, deep: bool = True) -> dict[str, list[str]]:
    """Ask a validator which keys it accepts at each level of a configuration: ``validate(raw)`` refuses an unknown
    key with "unknown key '...' ...: allowed are a, b, c"; ``nest(path, raw)`` puts ``raw`` at the dotted ``path``.
    A level whose probe is refused for another reason (a list, a number) is not a mapping and is skipped; without
    ``deep`` only the top level is asked."""
    from prunerzero.errors import UserError

    levels, todo = {}, [""]
    while todo:
        path = todo.pop(0)
        try:
            validate(nest(path, {_PROBE: 1}))
        except UserError as exc:
            found = _REFUSED.search(" ".join(str(exc).split()))
            if found is None:
                continue
            keys = [k.strip() for k in found.group(1).split(",")]
            levels[path] = keys
            todo += [f"{path}.{k}" if path else k for k in keys] if deep else []
    return levels


def _nest(path: str, raw: dict) -> dict:
    for part in reversed(path.split(".") if path else []):
        raw = {part: raw}
    return raw


def space_levels() -> dict[str, list[str]]:
    from prunerzero.search.space import validate

    levels = probe_keys(validate, _nest)
    setting = probe_keys(validate, lambda path, raw: {"fitness": {"settings": [raw]}}, deep=False)
    if "" in setting:
        levels["fitness.settings[]"] = setting[""]
    return levels


_MISSING = object()


def _flow(value) -> str:
    """A value as one line of YAML (``[W, X, G]``, ``null``)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-3].strip() if text.endswith("...") else text


def _lookup(cfg, path: str):
    for part in path.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return _MISSING
        cfg = cfg[part]
    return cfg


def spaces_reference() -> str:
    import yaml
    from prunerzero.search.space import PACKAGED, packaged_spaces, validate

    lines = ["# Search spaces", "", _NOTE.strip(), "",
             "`prunerzero search --space NAME` takes a packaged space by name or any YAML file with the keys "
             "below (unknown keys are refused before anything loads).", "", "## Packaged spaces", "",
             "| space | description |", "| --- | --- |"]
    for name in packaged_spaces():
        raw = yaml.safe_load((PACKAGED / f"{name}.yaml").read_text()) or {}
        lines.append(f"| `{name}` | {_cell(raw.get('description', ''))} |")
    defaults = validate({}).raw
    lines += ["", "## Keys", "", "Every key the space validator accepts, with the value a space gets when it leaves "
              "it out.", ""]
    for path, keys in space_levels().items():
        where = "top level" if not path else ("each entry of `fitness.settings`" if path.endswith("[]")
                                              else f"`{path}`")
        lines += [f"### {where}", "", "| key | default |", "| --- | --- |"]
        for k in keys:
            full = f"{path}.{k}" if path else k
            value = _MISSING if path.endswith("[]") else _lookup(defaults, full)
            shown = "" if value is _MISSING or isinstance(value, dict) else _code(_flow(value))
            lines.append(f"| `{full}` | {_cell(shown)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _grid_validator():
    for module in ("prunerzero.results.grid", "prunerzero.results", "prunerzero.experiments"):
        try:
            mod = __import__(module, fromlist=["load_grid"])
        except ImportError:
            continue
        if hasattr(mod, "load_grid"):
            return mod.load_grid
    raise RuntimeError("no load_grid found: point docs/hooks/reference.py at the grid validator's new home")


def grid_levels() -> dict[str, list[str]]:
    import yaml

    load_grid = _grid_validator()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.yaml"

        def validate(raw):
            path.write_text(yaml.safe_dump({"methods": ["wanda"], **raw}))
            return load_grid(path)

        levels = probe_keys(validate, _nest)
        for where, method in (("methods[]", {"name": "m"}), ("methods[] with kind: structural",
                                                             {"name": "m", "kind": "structural"})):
            found = probe_keys(validate, lambda p, raw, m=method: {"methods": [{**m, **raw}]}, deep=False)
            if "" in found:
                levels[where] = found[""]
    return levels


def grids_reference() -> str:
    names = {"": "top level", "protocol": "`protocol`: the one Protocol (model, data, calibration, evaluation)",
             "structural": "`structural`: evaluation of structural methods",
             "methods[]": "each entry of `methods` (a pruning method)",
             "methods[] with kind: structural": "each entry of `methods` with `kind: structural`"}
    lines = ["# Experiment grids", "", _NOTE.strip(), "",
             "`prunerzero bench GRID` runs every cell of a grid (models × methods × patterns × seeds) into one "
             "JSONL row per cell and renders its tables from the rows. The keys below are the ones the grid validator "
             "accepts; unknown keys are refused before anything runs.", ""]
    for path, keys in grid_levels().items():
        lines += [f"## {names.get(path, f'`{path}`')}", "", ", ".join(_code(k) for k in keys), ""]
    return "\n".join(lines) + "\n"


def changelog() -> str:
    return (ROOT / "CHANGELOG.md").read_text()


PAGES = {"reference/cli.md": cli_reference, "reference/operations.md": operations_reference,
         "reference/spaces.md": spaces_reference, "reference/grids.md": grids_reference, "changelog.md": changelog}


# --------------------------------------------------------------------------------------------- MkDocs hook
def on_files(files, config):
    """Add the generated pages as files of the site (they exist only in the build, never in docs/)."""
    from mkdocs.structure.files import File

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    for uri, render in PAGES.items():
        files.append(File.generated(config, uri, content=render()))
    return files
