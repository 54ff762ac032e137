"""Tables rendered from rows, never typed: a grid's markdown (mean ± std over seeds, ratios to a reference,
structural tables and learning curves), the verdicts that compare seed spreads, and measurement documents (a
benchmark's ``meta.json`` blocks filled from its rows)."""
from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

from ..errors import UserError
from ..fsutil import atomic_write_text
from .grid import Grid, Method, later_default
from .rows import read_meta, read_rows, write_meta

DATASET_TITLES = {"wikitext2": "WikiText-2", "c4": "C4"}


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


def verdict(mine: list[float], theirs: list[float]) -> str:
    """How ``mine`` compares with a reference's perplexities: better / worse only beyond both spreads (``better``)."""
    return ("better" if better(mine, theirs) else "worse" if better(theirs, mine)
            else "within spread" if min(len(mine), len(theirs)) >= 3 else "n<3")


def _header(grid: Grid, rows: list[dict]) -> list[str]:
    """Title, description, protocol, and where the rows came from (commands, devices, commits)."""
    lines = [f"# {grid.name}", "", grid.description, ""] if grid.description else [f"# {grid.name}", ""]
    proto = grid.protocol
    evaluation = ""
    if grid.structural:
        ev = grid.structural
        evaluation = (f"; structural evaluation: window lengths {', '.join(map(str, ev.seqlens))}, "
                      + (f"the first {ev.tokens} test tokens cut into windows of each length" if ev.tokens else
                         f"the first {proto.eval_windows} windows of each length" if proto.eval_windows
                         else "every window of each length")
                      + (f"; latency: median of {ev.latency_repeats} forwards of 1 x "
                         f"{ev.latency_seqlen or proto.seqlen} tokens after 2 warm-ups" if ev.latency_repeats else ""))
    # the device is the environment (the rows' devices are listed below); a structural grid's methods set nsamples
    shown = {k: v for k, v in proto.as_dict().items()
             if k != "device" and not (grid.structural and k == "nsamples") and not later_default(k, v)}
    if list(grid.models) != [proto.model]:   # the grid's models list replaces protocol.model
        shown = {("models" if k == "model" else k): (", ".join(grid.models) if k == "model" else v)
                 for k, v in shown.items()}
    lines += [f"Protocol: {', '.join(f'{k}={v}' for k, v in shown.items())}{evaluation}; "
              f"seeds {', '.join(map(str, grid.seeds))}; "
              f"{'mean ± std over seeds' if len(grid.seeds) > 1 else 'one seed'}.", ""]
    return lines + provenance_lines(rows, f"{grid.name}/rows.jsonl")


def distinct(rows: list[dict], field: str) -> list[str]:
    """Each distinct ``provenance[field]`` (``command``, ``device``, ...) of the rows that record one, in first-seen
    order: what a measurement page names under its title."""
    return list(dict.fromkeys(r["provenance"][field] for r in rows if r.get("provenance", {}).get(field)))


def _commands(commands: list[str]) -> str:
    return "Command" + ("s" if len(commands) > 1 else "") + ": " + "; ".join(f"`{c}`" for c in commands)


def commands_line(rows: list[dict]) -> str:
    """``Command(s): `a`; `b``` of the rows' provenance, in the order they ran."""
    return _commands(distinct(rows, "command"))


def provenance_lines(rows: list[dict], rows_name: str) -> list[str]:
    """Where rows came from: their commands, devices and commits, and the rows file (markdown lines)."""
    lines = []
    commands, devices = sorted(distinct(rows, "command")), sorted(distinct(rows, "device"))
    commits = sorted({(r["provenance"].get("commit") or "unknown")[:10] + ("+dirty" if r["provenance"].get("dirty")
                                                                          else "")
                      for r in rows if r.get("provenance")})
    if commands:
        lines += [_commands(commands), ""]
    if devices or commits:
        lines += [f"Device: {', '.join(devices) or 'unknown'}. Commit: {', '.join(commits) or 'unknown'}. "
                  f"Rows: `{rows_name}` ({len(rows)}).", ""]
    return lines


def _missing(grid: Grid, by_id: dict) -> list[str]:
    missing = [c.id for c in grid.cells() if c.id not in by_id]
    return [f"Not yet run: {len(missing)} cells (rerun the command to fill them in).", ""] if missing else []


def render(grid: Grid, rows: list[dict]) -> str:
    """The grid's markdown: one table per evaluation dataset, methods x patterns, mean ± std over seeds."""
    if grid.structural:
        return render_structural(grid, rows)
    by_id = {r["id"]: r for r in rows}
    lines = _header(grid, rows)
    proto = grid.protocol
    for model in grid.models:
        for ds in proto.eval_datasets:
            title = DATASET_TITLES.get(ds, ds)
            split = "validation" if ds == "c4" else proto.eval_split  # C4's evaluation text is its validation split
            lines += [f"**{model}, {title} {split} perplexity**", "",
                      "| method | " + " | ".join(_pattern_header(p) for p in grid.patterns) + " |",
                      "| --- |" + " ---: |" * len(grid.patterns)]
            for method in grid.methods:
                if not method.runs_on(model):
                    continue
                if method.name == "dense":
                    r = by_id.get(grid.cell(model, method, "-", grid.dense_seed).id)
                    value = f"{r['ppl'][ds]:.2f}" if r and ds in r["ppl"] else "-"
                    lines.append(f"| dense | {value} |" + " |" * (len(grid.patterns) - 1))
                    continue
                def mean_std(p, method=method, ds=ds):
                    vals = _seed_values(grid, by_id, model, method, p, ds)
                    return fmt(vals) + ("" if len(vals) in (0, len(grid.seeds)) else f" (n={len(vals)})")

                cells = _pattern_cells(grid, method, mean_std)
                lines.append(f"| {method.label} | " + " | ".join(cells) + " |")
            lines.append("")
        for ref in grid.reference:
            for ds in proto.eval_datasets:
                lines += _ratio_table(grid, model, by_id, ref, ds)
    formulas = [m for m in grid.methods if m.formula]
    if formulas:
        lines += [", ".join(f"`{m.name}` = `{m.formula}`" for m in formulas), ""]
    lines += _missing(grid, by_id)
    return "\n".join(lines).rstrip() + "\n"


def _pattern_cells(grid: Grid, method, text_of) -> list[str]:
    """One table cell per pattern of the grid: ``text_of(pattern)``, or n/a where the method does not apply."""
    return [text_of(p) if method.applies_to(p) else "n/a" for p in grid.patterns]


def _seed_values(grid: Grid, by_id: dict, model: str, method, pattern, ds: str) -> list[float]:
    """The perplexities on ``ds`` of the cells (model, method, pattern) that have run, one per seed."""
    cells = (grid.cell(model, method, pattern, s) for s in grid.seeds)
    return [by_id[c.id]["ppl"][ds] for c in cells if c.id in by_id and ds in by_id[c.id]["ppl"]]


def _ratio_table(grid: Grid, model: str, by_id: dict, reference: str, ds: str) -> list[str]:
    """Per method and pattern: mean ppl / the reference's mean ppl on ``model`` and dataset ``ds``, marked 'better' or
    'worse' only where one mean wins by more than both spreads (>= 3 seeds each), and whether the method's formula
    was searched on this model. Where the grid has the reference in several statistics modes, each method is
    compared with the reference of its own mode (one-shot with one-shot, sequential with sequential)."""
    refs = [m for m in grid.methods if m.name == reference]
    searched = dict(grid.searched_on)

    lines = [f"**{model}: ratio to {reference} ({DATASET_TITLES.get(ds, ds)}; below 1 = lower perplexity)**",
             "", "| method | " + " | ".join(_pattern_header(p) for p in grid.patterns)
             + (" | this model in its search |" if searched else " |"),
             "| --- |" + " ---: |" * len(grid.patterns) + (" --- |" if searched else "")]
    for method in grid.methods:
        if method.name in ("dense", reference) or not method.runs_on(model):
            continue
        ref = next((m for m in refs if m.mode == method.mode), refs[0])

        def ratio(p, method=method, ref=ref):
            mine = _seed_values(grid, by_id, model, method, p, ds)
            theirs = _seed_values(grid, by_id, model, ref, p, ds)
            if not mine or not theirs:
                return "-"
            return f"{statistics.fmean(mine) / statistics.fmean(theirs):.3f} ({verdict(mine, theirs)})"

        cells = _pattern_cells(grid, method, ratio)
        mark = ""
        if searched:
            mark = (" | yes" if model in searched.get(method.name, ()) else " | no" if method.name in searched
                    else " | -")
        lines.append(f"| {method.label} | " + " | ".join(cells) + mark + " |")
    return lines + [""]


def _structural_settings(methods: list[Method]) -> list[str]:
    """A table of what each structural method does (its StructuralConfig, presets and defaults applied)."""
    configs = [(m, m.structural_config(0.5, 0)) for m in methods]
    rec = any(cfg.reconstruct for _, cfg in configs)
    curve = any(cfg.curve_every for _, cfg in configs)
    lines = ["| method | init | scores of | preset | steps | lr | K | windows per step | policy windows | "
             "KV / MLP scores | statistics windows | widths |" + (" kept o/down columns |" if rec else "")
             + (" curve every |" if curve else ""),
             "| --- |" + " --- |" * (11 + rec + curve)]
    for m, cfg in configs:
        pg = cfg.init != "oneshot"
        scored = cfg.init in ("metric", "oneshot")
        pool = (cfg.nsamples or "steps x batch, each once") if pg or scored else "-"
        stats = (f"{cfg.init_nsamples or 'policy'} x {cfg.init_seqlen or cfg.calib_seqlen}"
                 if scored and (cfg.init_nsamples or cfg.init_seqlen) else "the policy's" if scored else "-")
        lines.append(" | ".join([
            f"| {m.name}", cfg.init, f"`{cfg.metric}`" if scored else "-", dict(m.settings).get("preset") or "-",
            str(cfg.steps) if pg else "-", f"{cfg.lr:g}" if pg else "-", str(cfg.samples) if pg else "-",
            f"{cfg.batch_size} x {cfg.calib_seqlen}" if pg else "-", str(pool),
            f"{cfg.attn_score} / {cfg.mlp_score}" if scored else "-", stats,
            "uniform" if cfg.uniform else "per layer"]
            + ([f"least squares on {cfg.init_nsamples or 32} x {cfg.init_seqlen or 1024}" if cfg.reconstruct
                else "as trained"] if rec else [])
            + ([f"{cfg.curve_every} steps" if cfg.curve_every else "-"] if curve else [])) + " |")
    return lines


def render_structural(grid: Grid, rows: list[dict]) -> str:
    """A structural grid's markdown: per model, dense then every method at every removed fraction, perplexity at
    each window length (mean ± std over seeds), parameters, removed fraction, latency, final PG loss, seconds."""
    by_id = {r["id"]: r for r in rows}
    lines = _header(grid, rows)
    proto, ev = grid.protocol, grid.structural
    keys = [(ds, L) for ds in proto.eval_datasets for L in ev.seqlens]
    ppl_head = " | ".join(f"{DATASET_TITLES.get(ds, ds)} ppl @{L}" for ds, L in keys)
    timed = ev.latency_repeats > 0
    head = (f"| removed (target) | method | init | {ppl_head} | params | removed | "
            + ("latency ms | " if timed else "") + "final PG loss | optimisation s |")

    def cells_of(found: list[dict], dense: bool) -> str:
        ppl = []
        for ds, L in keys:
            vals = [r["ppl"][f"{ds}@{L}"] for r in found if f"{ds}@{L}" in r["ppl"]]
            ppl.append(fmt(vals))
        n = "" if len(found) in (1, len(grid.seeds)) or dense else f" (n={len(found)})"
        ppl = [c + n if c != "-" else c for c in ppl]
        first = found[0]
        out = [*ppl, "-" if first["params"] is None else f"{first['params']:,}", f"{first['removed']:.3%}"]
        if timed:
            lat = [r["latency_ms"] for r in found if r.get("latency_ms") is not None]
            out.append(f"{statistics.fmean(lat):.0f}" if lat else "-")
        losses = [r["final_loss"] for r in found if r.get("final_loss") is not None]
        out.append(f"{statistics.fmean(losses):.3f}" if losses and not dense else "-")
        out.append("-" if dense else f"{statistics.fmean(r['prune_seconds'] for r in found):.0f}")
        return " | ".join(out) + " |"

    for model in grid.models:
        lines += [f"**{model}, structural pruning, {proto.eval_split} split**", "", head,
                  "| --- | --- | --- |" + " ---: |" * (len(keys) + 4 + timed)]
        for method in grid.methods:
            if method.name == "dense":
                r = by_id.get(grid.cell(model, method, "-", grid.dense_seed).id)
                if r:
                    lines.append(f"| 0 | dense | - | {cells_of([r], True)}")
        for p in grid.patterns:
            for method in (m for m in grid.methods if m.kind == "structural"):
                found = [by_id[c.id] for c in (grid.cell(model, method, p, s) for s in grid.seeds) if c.id in by_id]
                if found:
                    lines.append(f"| {float(p):.0%} | {method.label} | {method.mode} | {cells_of(found, False)}")
        lines.append("")
    lines += _curves(grid, by_id, keys)
    lines += ["Methods (policy gradient: lr cosine-decayed, moving-average baseline; one-shot: top structures by the "
              "scores, no policy gradient):", "",
              *_structural_settings([m for m in grid.methods if m.kind == "structural"]), ""]
    lines += _missing(grid, by_id)
    return "\n".join(lines).rstrip() + "\n"


def _curves(grid: Grid, by_id: dict, keys: list[tuple[str, int]]) -> list[str]:
    """Learning-curve tables of the rows that carry a ``curve`` (``curve_every``): perplexity of the policy's hard
    masks at each recorded step (mean ± std over seeds), then the first step at which each seed reaches the grid's
    ``curve_target``."""
    target = grid.structural.curve_target
    lines = []
    for model in grid.models:
        for p in grid.patterns:
            runs = []
            for method in (m for m in grid.methods if m.kind == "structural"):
                found = [by_id[c.id] for c in (grid.cell(model, method, p, s) for s in grid.seeds)
                         if c.id in by_id and by_id[c.id].get("curve")]
                if found:
                    runs.append((method, found))
            if not runs:
                continue
            for ds, L in keys:
                name = f"{ds}@{L}"
                steps = sorted({pt["step"] for _, found in runs for r in found for pt in r["curve"]})
                lines += [f"**{model}, {float(p):.0%} removed: learning curve, {DATASET_TITLES.get(ds, ds)} ppl @{L}** "
                          "(the policy's hard masks applied at each step, before any least-squares refit; mean ± std "
                          "over seeds)", "",
                          "| step | " + " | ".join(f"{m.label} (n={len(f)})" for m, f in runs) + " |",
                          "| ---: |" + " ---: |" * len(runs)]
                for step in steps:
                    cells = [fmt([pt["ppl"][name] for r in found for pt in r["curve"]
                                  if pt["step"] == step and name in pt["ppl"]]) for _, found in runs]
                    lines.append(f"| {step} | " + " | ".join(cells) + " |")
                lines.append("")
                if target is None:
                    continue
                lines += [f"Steps to reach perplexity {target:g} (first recorded step at or below it; '> N': not within "
                          "the N steps run):", "", "| method | " + " | ".join(f"seed {s}" for s in grid.seeds) + " |",
                          "| --- |" + " ---: |" * len(grid.seeds)]
                for method, found in runs:
                    by_seed = {r["seed"]: r for r in found}
                    cells = []
                    for s in grid.seeds:
                        if s not in by_seed:
                            cells.append("-")
                            continue
                        pts = by_seed[s]["curve"]
                        hit = next((pt["step"] for pt in pts if pt["ppl"].get(name, math.inf) <= target), None)
                        cells.append(str(hit) if hit is not None else f"> {pts[-1]['step']}")
                    lines.append(f"| {method.label} | " + " | ".join(cells) + " |")
                lines.append("")
    return lines


def _pattern_header(p: str) -> str:
    return p if ":" in p else f"{float(p):.0%} unstructured"


def write_table(grid: Grid, out: str | Path) -> Path:
    out = Path(out)
    md = out.with_suffix(".md") if out.suffix != ".md" else out
    atomic_write_text(md, render(grid, read_rows(Path(out) / "rows.jsonl")))
    return md




def write_measurements(out: str | Path, render) -> Path:
    """``out.md`` = ``render(rows, meta)`` of ``out/rows.jsonl`` and ``out/meta.json``, written atomically."""
    out = Path(out)
    md = out.with_suffix(".md")
    atomic_write_text(md, render(read_rows(out / "rows.jsonl"), read_meta(out)))
    return md


def measurement_args(parser, default_out: str) -> None:
    """The ``--out`` and ``--render-only`` options every timing benchmark takes."""
    parser.add_argument("--out", default=default_out, type=lambda v: v[:-3] if v.endswith(".md") else v,
                        help="rows in OUT/rows.jsonl (prose in OUT/meta.json), table in OUT.md")
    parser.add_argument("--render-only", action="store_true",
                        help="re-render OUT.md from OUT/rows.jsonl and OUT/meta.json; measure nothing")


def measurement_out(out: str | None, default_meta: dict) -> Path | None:
    """The ``--out`` folder of a timing benchmark (None without one), its ``meta.json`` written on first use."""
    if not out:
        return None
    if not read_meta(out):
        write_meta(out, default_meta)
    return Path(out)


def rendered_only(parser, args, render) -> bool:
    """With ``--render-only``: re-render OUT.md from its rows (OUT required) and print it; says whether it did."""
    if not args.render_only:
        return False
    if not args.out:
        parser.error("--render-only needs --out")
    print(write_measurements(args.out, render).read_text())
    return True


def _matches(row: dict, where: dict) -> bool:
    return all(row.get(k) == v for k, v in where.items())


def _filled(template: str, row: dict) -> str:
    """``template`` with each ``{field}`` or ``{field:spec}`` replaced by ``format(row[field], spec)`` (nothing else
    of str.format: no attribute or index lookups)."""
    def one(m):
        value = row.get(m.group(1))
        return "-" if value is None else format(value, m.group(2) or "")

    return re.sub(r"\{(\w+)(?::([^{}]*))?\}", one, template)


def render_document(rows: list[dict], meta: dict) -> str:
    """A measurement document: ``meta["blocks"]`` in order, each ``{"text": markdown}``, ``{"commands": WHERE}``
    (the commands and devices of the rows that match WHERE, a mapping of field -> value),
    ``{"table": {"where": WHERE, "columns": [[header, field, format spec], ...]}}`` (one line per matching row,
    each value through ``format(value, spec)``; a missing value is '-') or ``{"line": {"where": WHERE, "text":
    "... {field:spec} ...", "head": optional first line}}`` (that sentence for each matching row)."""
    lines = []
    for i, block in enumerate(meta.get("blocks") or []):
        if "line" in block:
            spec = block["line"]
            lines += ([spec["head"]] if spec.get("head") else []) + [
                _filled(spec["text"], r) for r in rows if _matches(r, spec.get("where", {}))] + [""]
        elif "text" in block:
            lines += [block["text"].rstrip("\n"), ""]
        elif "commands" in block:
            found = [r for r in rows if _matches(r, block["commands"])]
            lines += ["```", *distinct(found, "command"), "```", "", f"Device: {', '.join(distinct(found, 'device'))}.",
                      ""]
        elif "table" in block:
            spec = block["table"]
            cols = spec["columns"]
            lines += ["| " + " | ".join(c[0] for c in cols) + " |",
                      "| " + " | ".join("---" if c[2] == "s" else "---:" for c in cols) + " |"]
            for r in (r for r in rows if _matches(r, spec.get("where", {}))):
                lines.append("| " + " | ".join("-" if r.get(c[1]) is None else
                                                format(r[c[1]], c[2]).replace("|", "\\|")   # |W| stays in its cell
                                                for c in cols) + " |")
            lines.append("")
        else:
            raise UserError(f"meta.json block {i} is none of text, commands, table")
    return "\n".join(lines).rstrip() + "\n"
