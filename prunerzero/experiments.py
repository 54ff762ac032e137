"""The experiment runner: a grid of models x methods x patterns x seeds -> one JSONL row per cell -> tables.

A grid is a YAML file (see ``grids/``)::

    name: baselines
    description: dense, magnitude, Wanda, Pruner-Zero, SparseGPT at 50%, 4:8 and 2:4
    protocol: {seqlen: 2048, nsamples: 128, eval_datasets: [wikitext2, c4], batch_size: 8}
    models: [smollm2]                 # default: [protocol.model]
    seeds: [0]                        # calibration seeds (default: [protocol.seed])
    patterns: [0.5, "4:8", "2:4"]     # unstructured sparsity, or N:M
    methods:
      - dense
      - {name: wanda, mode: sequential}
      - {name: found, formula: "mul(sqrt(sub(X, G)), abs(W))", mode: sequential}
      - {name: sparsegpt, mode: sequential}

Every cell is one row in ``<out>/rows.jsonl`` with one schema: the protocol, the method, its formula and ranking
key, the pattern, the measured sparsity, perplexity per dataset, seconds, and provenance (git commit and whether
the tree was dirty, library versions, device, the exact command). Rows already present are skipped, so a stopped
run resumes by running the same command. Tables are rendered *from rows* (mean ± std over seeds), never typed.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from . import checks
from .errors import UserError
from .fsutil import atomic_write_text
from .protocol import Protocol

MODES = ("sequential", "oneshot")
DATASET_TITLES = {"wikitext2": "WikiText-2", "c4": "C4"}


@dataclass(frozen=True)
class Method:
    name: str                       # a known metric, 'sparsegpt', 'dense', or a label of ``formula``
    formula: str | None = None      # the formula text behind a label (None for known names)
    mode: str = "sequential"        # sequential: Wanda's layer-by-layer statistics; oneshot: dense statistics

    @property
    def spec(self) -> str:
        return self.formula or self.name

    @property
    def label(self) -> str:
        return self.name if self.name == "dense" else f"{self.name} ({self.mode})"


@dataclass(frozen=True)
class Cell:
    model: str
    method: Method
    pattern: str                    # "0.5" (unstructured) or "2:4"; "-" for dense
    seed: int
    protocol_key: str = ""          # ``protocol_key(grid.protocol)``: a row of another protocol is another cell

    @property
    def id(self) -> str:
        return (f"{self.model}|{self.method.name}|{self.method.mode}|{self.pattern}|seed={self.seed}"
                f"|protocol={self.protocol_key}")


# what makes two numbers comparable; model and seed are in the cell, device and batch size are the environment
PROTOCOL_IDENTITY = ("dtype", "seqlen", "calibration", "nsamples", "grad_precision", "eval_datasets", "eval_split",
                     "eval_windows")


def protocol_key(protocol: Protocol) -> str:
    import hashlib

    ident = {k: v for k, v in protocol.as_dict().items() if k in PROTOCOL_IDENTITY}
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Grid:
    name: str
    description: str
    protocol: Protocol
    models: tuple[str, ...]
    methods: tuple[Method, ...]
    patterns: tuple[str, ...]
    seeds: tuple[int, ...]
    path: str | None = None

    def cell(self, model: str, method: Method, pattern: str, seed: int) -> Cell:
        return Cell(model, method, pattern, seed, protocol_key(self.protocol))

    def cells(self) -> list[Cell]:
        out = []
        for model in self.models:
            for seed in self.seeds:
                for method in self.methods:
                    if method.name == "dense":
                        if seed == self.seeds[0]:
                            out.append(self.cell(model, method, "-", seed))
                        continue
                    out += [self.cell(model, method, p, seed) for p in self.patterns]
        return out

    def with_protocol(self, **changes) -> "Grid":
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, protocol=self.protocol.with_(**changes)) if changes else self

    def with_seeds(self, seeds: list[int]) -> "Grid":
        return replace(self, seeds=tuple(seeds))

    def with_formulas(self, formulas: dict[str, str]) -> "Grid":
        """Set the formula behind method labels (``found=mul(...)``), e.g. the one a selection chose."""
        names = {m.name for m in self.methods}
        for name in formulas:
            if name not in names:
                raise UserError(f"--formula {name}=...: the grid has no method '{name}' (it has {', '.join(names)})")
        methods = tuple(_method({"name": m.name, "formula": formulas[m.name], "mode": m.mode}, m.name)
                        if m.name in formulas else m for m in self.methods)
        return replace(self, methods=methods)


def _pattern_text(value, where: str) -> str:
    from .prune.masks import parse_pattern

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        checks.fraction(value, where)
        return f"{float(value):g}"
    if isinstance(value, str) and ":" in value:
        pat = parse_pattern(0.5, value)
        return f"{pat.n}:{pat.m}"
    raise UserError(f"{where} '{value}' is not a pattern: use a sparsity such as 0.5 or N:M such as 2:4")


def _method(raw, where: str) -> Method:
    from .metric.known import resolve_metric
    from .prune.run import SPARSEGPT

    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        raise UserError(f"{where} must be a name or a mapping with 'name' (and 'formula', 'mode')")
    unknown = sorted(set(raw) - {"name", "formula", "mode"})
    if unknown:
        raise UserError(f"unknown key '{where}.{unknown[0]}': allowed are name, formula, mode")
    method = Method(str(raw["name"]), raw.get("formula"), raw.get("mode", "sequential"))
    if method.mode not in MODES:
        raise UserError(f"{where}.mode '{method.mode}' is unknown: use sequential or oneshot")
    if method.name != "dense" and method.spec != SPARSEGPT:
        resolve_metric(method.spec)  # a bad name or formula is refused here, before any model is loaded
    return method


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid YAML (every key checked before anything slow happens)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"grid {path} not found: pass a grid YAML (see grids/)")
    raw = checks.yaml_mapping(path, "grid settings (name, protocol, methods, patterns, ...)")
    allowed = {"name", "description", "protocol", "models", "methods", "patterns", "seeds"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise UserError(f"unknown key '{unknown[0]}' in grid {path}: allowed are {', '.join(sorted(allowed))}")
    protocol = Protocol.from_dict(raw.get("protocol"))
    models = tuple(raw.get("models") or [protocol.model])
    seeds = tuple(checks.integer(s, "seeds[]", 0) for s in (raw.get("seeds") or [protocol.seed]))
    if len(set(seeds)) != len(seeds):
        raise UserError("grid seeds repeat a seed: list each once")
    methods = tuple(_method(m, f"methods[{i}]") for i, m in enumerate(raw.get("methods") or []))
    if not methods:
        raise UserError(f"grid {path} lists no methods: add e.g. 'methods: [dense, wanda]'")
    names = [(m.name, m.mode) for m in methods]
    if len(set(names)) != len(names):
        raise UserError("grid methods repeat a (name, mode): give each its own name")
    patterns = tuple(_pattern_text(p, f"patterns[{i}]") for i, p in enumerate(raw.get("patterns") or [0.5]))
    return Grid(str(raw.get("name") or path.stem), str(raw.get("description") or ""), protocol, models, methods,
                patterns, seeds, str(path))


# ------------------------------------------------------------------------------------------------ rows
def read_rows(path: str | Path) -> list[dict]:
    """Rows of a ``rows.jsonl``; a torn last line (killed mid-write) is dropped with a note."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "id" not in row:
                raise ValueError
        except ValueError:
            if i == len(lines):
                print(f"note: dropped the torn last line {i} of {path}", file=sys.stderr)
                break
            raise UserError(f"{path} line {i} is not a row: restore the file or remove that line") from None
        rows.append(row)
    return rows


def _append_row(path: Path, row: dict) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_grid(grid: Grid, out: str | Path, data_dir=None, cache=None, command: str | None = None,
             progress: bool = True, only_model: str | None = None) -> list[dict]:
    """Run every cell of ``grid`` that ``<out>/rows.jsonl`` does not hold yet; returns all rows."""
    from .data import require_data
    from .metric.simplify import rank_key
    from .models import all_prunable, load_model
    from .pipeline import CalibConfig, default_group, evaluate_all, prune
    from .provenance import provenance
    from .prune.masks import WeightSnapshot, parse_pattern
    from .prune.run import SPARSEGPT

    out = Path(out)
    rows_path = out / "rows.jsonl"
    done = {r["id"] for r in read_rows(rows_path)}
    proto = grid.protocol
    checks.device(proto.device, "protocol.device")
    require_data(data_dir, proto.eval_datasets, (proto.eval_split,), calibration=True)
    todo = [c for c in grid.cells() if c.id not in done and (only_model is None or c.model == only_model)]
    for model in dict.fromkeys(c.model for c in todo):
        lm = load_model(model, device=proto.device, dtype=proto.dtype, cache=cache, seqlen=proto.seqlen)
        snapshot = WeightSnapshot(all_prunable(lm.model), device="cpu")
        origin = provenance(lm.device, command)
        for cell in (c for c in todo if c.model == model):
            method = cell.method
            t0 = time.time()
            row = {"id": cell.id, "grid": grid.name, "model": model, "method": method.name,
                   "formula": None, "key": None, "mode": None if method.name == "dense" else method.mode,
                   "pattern": cell.pattern, "seed": cell.seed}
            if method.name != "dense":
                spec = method.spec
                if spec != SPARSEGPT:
                    from .metric.known import resolve_metric
                    _, node, _ = resolve_metric(spec)
                    row["formula"], row["key"] = str(node), rank_key(str(node))
                pattern = (parse_pattern(0.5, cell.pattern) if ":" in cell.pattern
                           else parse_pattern(float(cell.pattern), None, default_group(spec)))
                calib = CalibConfig(proto.nsamples, cell.seed, proto.batch_size, data_dir, cache)
                res = prune(lm, spec, pattern, calib, sequential=method.mode == "sequential", progress=progress)
                row.update(pattern_text=str(pattern), sparsity=res.sparsity, prune_seconds=round(res.seconds, 3))
            else:
                row.update(pattern_text="dense", sparsity=0.0, prune_seconds=0.0)
            t1 = time.time()
            ev = evaluate_all(lm, list(proto.eval_datasets), proto.eval_windows, proto.batch_size, data_dir,
                              progress, split=proto.eval_split)
            row["ppl"] = {ds: r["ppl"] for ds, r in ev.items()}
            row["windows"] = {ds: r["windows"] for ds, r in ev.items()}
            row["eval_seconds"] = round(time.time() - t1, 3)
            row["seconds"] = round(time.time() - t0, 3)
            row["protocol"] = {**proto.as_dict(), "model": model, "seed": cell.seed, "seqlen": lm.seqlen,
                               "dtype": str(lm.model.dtype).replace("torch.", ""), "device": str(lm.device)}
            row["provenance"] = origin
            _append_row(rows_path, row)
            snapshot.restore()
            if progress:
                shown = "  ".join(f"{ds} {v:.3f}" for ds, v in row["ppl"].items())
                print(f"{cell.id}: {shown}", flush=True)
        del lm, snapshot
    return read_rows(rows_path)


# ------------------------------------------------------------------------------------------------ tables
def mean_std(values: list[float]) -> tuple[float, float | None]:
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    m, s = mean_std(values)
    return f"{m:.2f}" if s is None else f"{m:.2f} ± {s:.2f}"


def better(a: list[float], b: list[float]) -> bool:
    """``a`` beats ``b`` (lower perplexity) by more than both spreads: mean(b) - mean(a) > std(a) + std(b).
    With fewer than 3 values on either side there is no spread to compare with, so nothing is 'better'."""
    if len(a) < 3 or len(b) < 3:
        return False
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    return mb - ma > sa + sb


def render(grid: Grid, rows: list[dict]) -> str:
    """The grid's markdown: one table per evaluation dataset, methods x patterns, mean ± std over seeds."""
    by_id = {r["id"]: r for r in rows}
    lines = [f"# {grid.name}", "", grid.description, ""] if grid.description else [f"# {grid.name}", ""]
    proto = grid.protocol
    lines += [f"Protocol: {', '.join(f'{k}={v}' for k, v in proto.as_dict().items())}; "
              f"seeds {', '.join(map(str, grid.seeds))}; "
              f"{'mean ± std over seeds' if len(grid.seeds) > 1 else 'one seed'}.", ""]
    commands = sorted({r["provenance"]["command"] for r in rows if r.get("provenance", {}).get("command")})
    devices = sorted({r["provenance"]["device"] for r in rows if r.get("provenance", {}).get("device")})
    commits = sorted({(r["provenance"].get("commit") or "unknown")[:10] + ("+dirty" if r["provenance"].get("dirty")
                                                                          else "")
                      for r in rows if r.get("provenance")})
    if commands:
        lines += ["Command" + ("s" if len(commands) > 1 else "") + ": " + "; ".join(f"`{c}`" for c in commands), ""]
    if devices or commits:
        lines += [f"Device: {', '.join(devices) or 'unknown'}. Commit: {', '.join(commits) or 'unknown'}. "
                  f"Rows: `{grid.name}/rows.jsonl` ({len(rows)}).", ""]
    for model in grid.models:
        for ds in proto.eval_datasets:
            title = DATASET_TITLES.get(ds, ds)
            split = "validation" if ds == "c4" else proto.eval_split  # C4's evaluation text is its validation split
            lines += [f"**{model}, {title} {split} perplexity**", "",
                      "| method | " + " | ".join(_pattern_header(p) for p in grid.patterns) + " |",
                      "| --- |" + " ---: |" * len(grid.patterns)]
            for method in grid.methods:
                if method.name == "dense":
                    r = by_id.get(grid.cell(model, method, "-", grid.seeds[0]).id)
                    value = f"{r['ppl'][ds]:.2f}" if r and ds in r["ppl"] else "-"
                    lines.append(f"| dense | {value} |" + " |" * (len(grid.patterns) - 1))
                    continue
                cells = []
                for p in grid.patterns:
                    vals = [by_id[c.id]["ppl"][ds] for c in (grid.cell(model, method, p, s) for s in grid.seeds)
                            if c.id in by_id and ds in by_id[c.id]["ppl"]]
                    cells.append(fmt(vals) + ("" if len(vals) in (0, len(grid.seeds)) else f" (n={len(vals)})"))
                lines.append(f"| {method.label} | " + " | ".join(cells) + " |")
            lines.append("")
    formulas = [m for m in grid.methods if m.formula]
    if formulas:
        lines += [", ".join(f"`{m.name}` = `{m.formula}`" for m in formulas), ""]
    missing = [c.id for c in grid.cells() if c.id not in by_id]
    if missing:
        lines += [f"Not yet run: {len(missing)} cells (rerun the command to fill them in).", ""]
    return "\n".join(lines).rstrip() + "\n"


def _pattern_header(p: str) -> str:
    return p if ":" in p else f"{float(p):.0%} unstructured"


def write_table(grid: Grid, out: str | Path) -> Path:
    out = Path(out)
    md = out.with_suffix(".md") if out.suffix != ".md" else out
    atomic_write_text(md, render(grid, read_rows(Path(out) / "rows.jsonl")))
    return md

