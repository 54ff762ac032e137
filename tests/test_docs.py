"""The docs site's generated reference covers the code, and every command the docs show is a valid command line.

The reference pages are generated at build time by ``docs/hooks/reference.py`` (``mkdocs build --strict`` runs in
CI); these tests call the same functions, so they need no MkDocs.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import posixpath
import re
import shlex
from pathlib import Path

import pytest

from prunerzero.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def _load_hook():
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "docs" / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_hook()


def _sections(page: str) -> dict[str, str]:
    """The CLI page split per command heading."""
    parts = re.split(r"^## `prunerzero (\S+)`$", page, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_cli_option_is_in_the_reference_under_its_command():
    from prunerzero.cli import build_parser

    page = ref.cli_reference()
    sections = _sections(page)
    commands = ref.subcommands(build_parser())
    assert set(sections) == set(commands) and len(commands) >= 7
    missing = []
    for name, sub in commands.items():
        rows = [ln for ln in sections[name].splitlines() if ln.startswith("| `")]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings or [action.dest]:
                if not any(f"`{option}`" in row.split(" | ")[0] for row in rows):
                    missing.append(f"{name} {option}")
    assert not missing, f"options missing from the CLI reference: {missing}"


def test_every_cli_option_has_help_and_its_help_is_in_the_reference():
    """PySR-style: an option without a sentence of help is undocumented."""
    from prunerzero.cli import build_parser

    sections = _sections(ref.cli_reference())
    for name, sub in ref.subcommands(build_parser()).items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and len(action.help.split()) >= 2, f"prunerzero {name} {action.dest}: no help"
            text = ref._cell(formatter._expand_help(action))
            assert text in sections[name], f"prunerzero {name} {action.dest}: help text not in the reference"


def test_every_operation_terminal_and_known_metric_is_in_the_operations_reference():
    from prunerzero.metric.known import KNOWN_METRICS, NAMED_METRICS
    from prunerzero.metric.ops import ALIASES, OPS, TERMINALS

    page = ref.operations_reference()
    rows = {ln.split(" | ")[0].strip("| ") for ln in page.splitlines() if ln.startswith("| `")}
    for name in [*OPS, *TERMINALS, *ALIASES, *KNOWN_METRICS, *NAMED_METRICS]:
        assert f"`{name}`" in rows, f"{name} missing from the operations reference"
    for op in OPS.values():
        assert ref._cell(op.doc) in page


def _paths(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= _paths(value, f"{prefix}{key}.")
    return out


def test_the_space_keys_probed_from_the_validator_are_the_space_defaults():
    """The probe finds every key the validator's defaults hold (and nothing it would refuse)."""
    from prunerzero.search.space import FIDELITY_KEYS, LOCAL_DEFAULTS, SETTING_KEYS, validate

    levels = ref.space_levels()
    found = {f"{path}.{k}" if path else k for path, keys in levels.items() for k in keys}
    expected = _paths(validate({}).raw)
    assert expected <= found
    assert {f"gp.local.{k}" for k in LOCAL_DEFAULTS} <= found
    assert {f"fitness.fidelity.{k}" for k in FIDELITY_KEYS} <= found
    assert levels["fitness.settings[]"] == list(SETTING_KEYS)
    page = ref.spaces_reference()
    for key in found:
        assert f"`{key}`" in page


def test_every_packaged_space_is_listed_with_its_description():
    import yaml

    from prunerzero.search.space import PACKAGED, packaged_spaces

    page = ref.spaces_reference()
    for name in packaged_spaces():
        description = (yaml.safe_load((PACKAGED / f"{name}.yaml").read_text()) or {}).get("description", "")
        assert f"| `{name}` | {ref._cell(description)} |" in page


def test_the_grid_keys_probed_from_the_validator_include_every_protocol_field():
    from prunerzero.protocol import Protocol

    levels = ref.grid_levels()
    assert set(levels["protocol"]) == {f.name for f in dataclasses.fields(Protocol)}
    assert {"methods", "patterns", "seeds", "models", "protocol"} <= set(levels[""])
    assert {"name", "formula", "update", "allocation", "permute"} <= set(levels["methods[]"])
    page = ref.grids_reference()
    for keys in levels.values():
        for key in keys:
            assert f"`{key}`" in page


def test_the_probe_reports_exactly_what_a_validator_accepts():
    """Teeth for the mechanism: a validator with a nested level and a list level, probed from its refusals."""
    schema = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}

    def validate(raw, where="", level=schema):
        for key, value in raw.items():
            if key not in level:
                raise UserError(f"unknown key '{where}{key}': allowed are {', '.join(level)}")
            if isinstance(level[key], dict):
                if not isinstance(value, dict):
                    raise UserError(f"'{where}{key}' must be a mapping")
                validate(value, f"{where}{key}.", level[key])
            elif isinstance(level[key], list) and not isinstance(value, list):
                raise UserError(f"'{where}{key}' must be a list, got {value!r}")

    assert ref.probe_keys(validate, ref._nest) == {"": ["a", "b", "e"], "b": ["c", "d"]}
    assert ref.probe_keys(validate, ref._nest, deep=False) == {"": ["a", "b", "e"]}


def _documented_commands() -> list[tuple[str, list[str]]]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "examples").rglob("*.md"))]
    out = []
    for path in files:
        for block in re.findall(r"```(?:bash|console|sh)\n(.*?)```", path.read_text(), flags=re.S):
            for line in block.splitlines():
                line = line.split(" #")[0].strip().removeprefix("$ ")
                for part in line.split("&&"):
                    part = part.strip()
                    if part.startswith("prunerzero "):
                        out.append((path.relative_to(ROOT).as_posix(), shlex.split(part)[1:]))
    return out


def test_every_command_in_the_docs_and_examples_parses():
    from prunerzero.cli import build_parser

    commands = _documented_commands()
    assert len(commands) >= 30
    parser = build_parser()
    for where, argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: command does not parse: prunerzero {shlex.join(argv)}")


def test_every_docs_page_is_in_the_nav_or_generated():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)

    def pages(nav):
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from pages(value) if isinstance(value, list) else [value]

    nav = set(pages(config["nav"]))
    docs = ROOT / "docs"
    on_disk = {p.relative_to(docs).as_posix() for p in docs.rglob("*.md") if "hooks" not in p.parts}
    assert set(ref.PAGES) <= nav, "a generated page is missing from the nav"
    assert not (set(ref.PAGES) & on_disk), "a generated page is also committed: edit the generator instead"
    assert nav <= on_disk | set(ref.PAGES), f"nav names missing pages: {sorted(nav - on_disk - set(ref.PAGES))}"
    linked = {posixpath.normpath(posixpath.join(posixpath.dirname(page), target))
              for page in on_disk for target in re.findall(r"\]\(([^)#\s]+\.md)", (docs / page).read_text())}
    orphans = sorted(on_disk - nav - linked)
    assert not orphans, f"pages neither in the nav nor linked from another page: {orphans}"


def test_every_public_api_function_is_on_the_api_page_with_a_docstring():
    import prunerzero.api as api

    page = (ROOT / "docs" / "reference" / "api.md").read_text()
    members = re.findall(r"^\s+- (\w+)$", page, flags=re.M)
    assert members == list(api.__all__), "docs/reference/api.md lists other members than prunerzero.api.__all__"
    for name in api.__all__:
        doc = getattr(api, name).__doc__ or ""
        assert len(doc.split()) >= 8, f"prunerzero.api.{name} has no real docstring"


def test_the_readme_is_a_front_door():
    """At most 300 lines (the issue's bound), and every relative link in it points at a file of the repository."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    links = re.findall(r"\]\(((?!https?://|#)[^)\s]+)\)", text)
    assert links, "the README links into the docs"
    missing = [link for link in links if not (ROOT / link.split("#")[0]).exists()]
    assert not missing, f"README links to missing files: {missing}"
