"""Numbers in prose, filled from rows: a markdown template whose placeholders name cells of committed results,
with optional expected verdicts that the generator checks (a placeholder whose verdict no longer holds stops the
render, so a claim cannot outlive its rows).

A placeholder is ``{{KIND NAME key=value ...}}``; NAME is a committed result (``results/NAME`` or a study's):

- ``ppl``: the cell's perplexities over seeds as a table prints them (``41.23 ± 0.35``; one seed: ``41.23``);
- ``mean``: their mean (``fmt=.2f``); ``n``: how many seeds ran;
- ``ratio``: mean / mean of the ``vs=`` method's cell (``fmt=.3f``);
- ``verdict``: ``better`` / ``worse`` (beyond both spreads), ``within spread`` or ``n<3``, against ``vs=``;
- ``spread``: the seed standard deviation of log ppl, in percent (``fmt=.1f``);
- ``run``: a field of a search run's ``summary.json`` by dotted path (``run search-cpu-wx counts.eval``);
  ``minutes``: its wall time in minutes.

Cell keys: ``model`` (default: the grid's first), ``method``, ``mode`` (default sequential; structural cells: their
init), ``pattern`` (``0.5``, ``2:4``), ``dataset`` (default ``wikitext2``; structural: ``wikitext2@128``),
``seeds`` (``0,1,2``: these seeds only). ``vs=METHOD`` (and ``vsmode=``) names the compared cell, ``fmt=`` a format
spec, ``expect=`` the text the placeholder must render to (a verdict, or a value: ``expect=better``,
``expect=within_spread`` with ``_`` for spaces), checked on every render.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

from ..errors import UserError
from .grid import Grid, load_grid
from .render import fmt, verdict
from .rows import read_rows

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s+([\w.@:-]+)((?:\s+[\w]+=[^\s{}]+)*)\s*\}\}")
KINDS = ("ppl", "mean", "n", "ratio", "verdict", "spread", "run", "minutes")
CELL_KEYS = {"model", "method", "mode", "pattern", "dataset", "seeds", "vs", "vsmode", "fmt", "expect"}


class _Results:
    """Committed results by name, read once per render (grid, rows by cell id, and run summaries)."""

    def __init__(self, repo: Path):
        self.repo = repo
        self._grids: dict[str, tuple[Grid, dict]] = {}

    def folder(self, name: str) -> tuple[Path, Path]:
        for root in [self.repo, *sorted(p for p in (self.repo / "studies").glob("*") if p.is_dir())]:
            if (root / "results" / name).is_dir():
                return root, root / "results" / name
        raise UserError(f"no committed result '{name}' (results/{name} or studies/*/results/{name})")

    def grid(self, name: str) -> tuple[Grid, dict]:
        if name not in self._grids:
            root, folder = self.folder(name)
            path = folder / "grid.yaml" if (folder / "grid.yaml").is_file() else root / "grids" / f"{name}.yaml"
            grid = load_grid(path)
            ids = {c.id for c in grid.cells()}
            self._grids[name] = (grid, {r["id"]: r for r in read_rows(folder / "rows.jsonl") if r["id"] in ids})
        return self._grids[name]

    def summary(self, name: str) -> dict:
        _, folder = self.folder(name)
        path = folder / "summary.json"
        if not path.is_file():
            raise UserError(f"{name} is not a search run with a summary.json")
        return json.loads(path.read_text())


def _values(results: _Results, name: str, keys: dict, method_key: str = "method", mode_key: str = "mode") -> list:
    """Perplexities, one per seed (in seed order), of the named grid's cell that ``keys`` pick."""
    grid, by_id = results.grid(name)
    wanted = keys.get(method_key)
    mode = keys.get(mode_key, keys.get("mode"))
    methods = [m for m in grid.methods if m.name == wanted and (mode is None or m.mode == mode)]
    if not methods:
        raise UserError(f"{name} has no method '{wanted}'" + (f" in mode {mode}" if mode else ""))
    if len(methods) > 1:
        raise UserError(f"{name}: method '{wanted}' runs in several modes: add mode=")
    model = keys.get("model", grid.models[0])
    seeds = [int(s) for s in keys["seeds"].split(",")] if "seeds" in keys else list(grid.seeds)
    pattern = "-" if wanted == "dense" else keys.get("pattern")
    if pattern is None:
        raise UserError(f"{name}: a placeholder for '{wanted}' needs pattern=")
    dataset = keys.get("dataset", "wikitext2")
    out = []
    for seed in seeds:
        row = by_id.get(grid.cell(model, methods[0], pattern, seed).id)
        if row is not None and dataset in row["ppl"]:
            out.append(row["ppl"][dataset])
    if not out:
        raise UserError(f"{name}: no rows for {model} {wanted} {pattern} on {dataset}")
    return out


def _field(summary: dict, path: str):
    value = summary
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise UserError(f"summary.json has no field '{path}'")
        value = value[part]
    return value


def _one(kind: str, name: str, keys: dict, results: _Results) -> str:
    spec = keys.get("fmt")
    if kind == "run":
        field = keys.get("field")
        if field is None:
            raise UserError("a run placeholder names its field: {{run NAME field=counts.eval}}")
        value = _field(results.summary(name), field)
        return format(value, spec or "")
    if kind == "minutes":
        return format(results.summary(name)["wall_seconds"] / 60, spec or ".0f")
    mine = _values(results, name, keys)
    if kind == "ppl":
        return fmt(mine)
    if kind == "mean":
        return format(statistics.fmean(mine), spec or ".2f")
    if kind == "n":
        return str(len(mine))
    if kind == "spread":
        if len(mine) < 2:
            raise UserError(f"{name}: a spread needs at least two seeds")
        return format(100 * statistics.stdev(math.log(p) for p in mine), spec or ".1f")
    if "vs" not in keys:
        raise UserError(f"a {kind} placeholder names the method it compares with: vs=wanda")
    theirs = _values(results, name, {**keys, "method": keys["vs"], "mode": keys.get("vsmode", keys.get("mode"))})
    if kind == "ratio":
        return format(statistics.fmean(mine) / statistics.fmean(theirs), spec or ".3f")
    return verdict(mine, theirs)


def _keys(text: str, where: str) -> dict:
    keys = {}
    for item in text.split():
        key, _, value = item.partition("=")
        if key not in CELL_KEYS | {"field"}:
            raise UserError(f"{where}: unknown key '{key}': use {', '.join(sorted(CELL_KEYS | {'field'}))}")
        keys[key] = value
    return keys


def fill_template(template: str, repo: Path, where: str = "template") -> str:
    """``template`` with every placeholder filled from the committed results under ``repo``; an ``expect=`` that
    does not hold, an unknown kind, key or cell is refused naming the line."""
    results = _Results(repo)
    out = []
    for number, line in enumerate(template.split("\n"), 1):
        def one(m: re.Match) -> str:
            kind, name = m.group(1), m.group(2)
            at = f"{where}:{number}: {m.group(0)}"
            if kind not in KINDS:
                raise UserError(f"{at}: unknown kind '{kind}': use {', '.join(KINDS)}")
            keys = _keys(m.group(3), at)
            try:
                text = _one(kind, name, keys, results)
            except UserError as e:
                raise UserError(f"{at}: {e}") from None
            expected = keys.get("expect")
            if expected is not None and text != expected.replace("_", " "):
                raise UserError(f"{at} is '{text}', expected '{expected.replace('_', ' ')}': the rows no longer "
                                "support this sentence: reword it (and its expect=) or rerun the cells")
            return text

        if "{{" in line and not PLACEHOLDER.search(line):
            raise UserError(f"{where}:{number}: '{{{{' starts no placeholder: write {{{{KIND NAME key=value ...}}}}")
        out.append(PLACEHOLDER.sub(one, line))
    return "\n".join(out)
