"""A run as a table of equations (after PySR): the best distinct formulas with size and fitness.

A scored run (records with ``score``: the combined log ratio to the reference metric over models x settings)
is ranked by score, on full-fidelity records only (a multi-fidelity run's candidates that were not promoted to
all fitness windows are left out), with one perplexity column per part (``ppl[<model>|<setting>]``), and an
``allocation`` column when the run evolves a layer-wise allocation gene with the formula. A log written before
scores existed is ranked by its perplexity, as it always was.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path, PurePath

import pandas as pd

from .engine import RunFiles, fitness_value, read_evaluations

COLUMNS = ["formula", "simplified", "size", "ppl", "generation"]


def _short(label: str, labels: list[str]) -> str:
    """``ppl[2of4]`` for a one-model run, ``ppl[<model folder name>|2of4]`` otherwise."""
    model, _, setting = label.rpartition("|")
    if len({lb.rpartition("|")[0] for lb in labels}) == 1:
        return f"ppl[{setting}]"
    return f"ppl[{PurePath(model).name or model}|{setting}]"


def _records(run_dir, records: list[dict] | None) -> list[dict]:
    """A run's log records: ``records`` when the caller already read them (one read for a whole table)."""
    return read_evaluations(run_dir) if records is None else records


def equations(run_dir, top: int | None = 10, records: list[dict] | None = None) -> pd.DataFrame:
    """Best distinct formulas (one row per canonical ranking key), best fitness first."""
    recs = [r for r in _records(run_dir, records) if r["hit"] != "error"]
    scored = any(r.get("score") is not None for r in recs)
    if scored:   # only full-fidelity scores rank
        recs = [r for r in recs if r.get("score") is not None and r.get("fidelity") is None]
    if not recs:
        return pd.DataFrame(columns=COLUMNS)
    local = any(r.get("origin") for r in recs)   # a run with a local search (gp.local) says where rows came from
    rows = []
    for r in recs:
        row = dict(r, rank=r["score"] if scored else fitness_value(r))
        if local:
            row["found_by"] = "local" if r.get("origin") else "gp"
        labels = list(r.get("ppls") or {})
        for label in labels:
            row[_short(label, labels)] = r["ppls"][label]
        rows.append(row)
    df = pd.DataFrame(rows)
    df = df.sort_values(["rank", "size", "generation", "formula"], kind="stable").drop_duplicates("key")
    df = df.reset_index(drop=True)
    df.index += 1
    cols = shown_columns(df)
    extra = [c for c in ("ppl", "key", "latex", "depth", "score", "ppls", "fidelity") if c in df.columns and c not in cols]
    df = df[cols + extra]
    return df.head(top) if top else df


def shown_columns(df: pd.DataFrame) -> list[str]:
    parts = [c for c in df.columns if c.startswith("ppl[")]
    found = ["found_by"] if "found_by" in df.columns else []     # a search with a local search
    if "score" not in df.columns:
        return COLUMNS + found
    gene = ["allocation"] if "allocation" in df.columns else []   # a search that evolves the allocation too
    return ["formula", "simplified"] + gene + ["size", "score"] + parts + ["generation"] + found


def cache_counts(run_dir, records: list[dict] | None = None) -> dict[str, int]:
    counts = Counter(r["hit"] for r in _records(run_dir, records))
    return {k: counts.get(k, 0) for k in ("eval", "mask", "key", "text", "error")}


def local_counts(run_dir, records: list[dict] | None = None) -> dict[str, int]:
    """The local search's share of a run (records with ``origin``): formulas expanded, candidates, evaluated."""
    recs = [r for r in _records(run_dir, records) if r.get("origin")]
    return {"expanded": len({r["origin"] for r in recs}), "candidates": len(recs),
            "evaluated": sum(r["hit"] == "eval" for r in recs)}


SCORE_LINES = {
    "mean": "score = mean over models x settings of log(ppl / reference ppl) (over calibration seeds: their mean); "
            "0 = the reference",
    "worst": "score = worst over models x settings of log(ppl / reference ppl) (over calibration seeds: their "
             "mean); 0 = the reference",
    "margin": "score = worst over models x settings of the seed mean of log(ppl / reference ppl) plus both seed "
              "spreads of log ppl; below 0 = better than the reference by more than both spreads everywhere",
}


def _combine(run_dir) -> str:
    """How the run combined its parts (its config.json; ``mean`` for runs without one)."""
    path = RunFiles(Path(run_dir)).config
    space = json.loads(path.read_text()).get("space", {}) if path.exists() else {}
    return space.get("fitness", {}).get("combine", "mean")


WIDTH = 120   # columns of ``prunerzero show`` unless --wide


def known_name(formula: str) -> str:
    """The named metric (published or found) that ranks weights as ``formula`` does in exact arithmetic, or ''."""
    from ..metric.known import NAMED_METRICS
    from ..metric.simplify import ranking_class

    try:
        mine = ranking_class(formula)
    except Exception:   # noqa: BLE001 -- a formula sympy cannot take is simply not marked
        return ""
    return next((m.name for m in NAMED_METRICS.values() if _class_of(m.formula) == mine), "")


_CLASSES: dict[str, str] = {}


def _class_of(formula: str) -> str:
    from ..metric.simplify import ranking_class

    if formula not in _CLASSES:
        _CLASSES[formula] = ranking_class(formula)
    return _CLASSES[formula]


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.3f}"
    return "" if v is None or (isinstance(v, float) and v != v) else str(v)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(1, width - 3)] + "..."


def _layout(columns: list[tuple[str, list[str], str]]) -> list[str]:
    """Rows of left/right aligned cells, two spaces apart."""
    widths = [max([len(h)] + [len(v) for v in vals]) for h, vals, _ in columns]
    def line(cells):
        return "  ".join(c.ljust(w) if a == "<" else c.rjust(w) for c, w, (_, _, a) in zip(cells, widths, columns))
    n = len(columns[0][1]) if columns else 0
    return [line([h for h, _, _ in columns]).rstrip()] + [line([c[1][i] for c in columns]).rstrip() for i in range(n)]


def format_table(run_dir, top: int = 10, wide: bool = False, width: int = WIDTH) -> str:
    """The run's best distinct formulas: infix and canonical prefix form (what ``--metric`` takes), size, fitness
    (``score`` or the search's validation ``ppl``), per-part perplexities, generation, and the named metric a row
    ranks like (``known``). Fits ``width`` columns unless ``wide``: per-part columns are left out first, then the
    formulas are shortened (``...``)."""
    import textwrap

    from ..metric.expr import infix

    records = read_evaluations(run_dir)   # read once for the table and both counts
    df = equations(run_dir, top, records)
    scored = "score" in df.columns
    formulas = list(df["formula"]) if len(df) else []
    cols: list[tuple[str, list[str], str]] = [("#", [str(i) for i in df.index], ">"),
                                              ("formula", [infix(f) for f in formulas], "<"),
                                              ("prefix", formulas, "<")]
    if wide:
        cols.append(("simplified", [_cell(v) for v in df.get("simplified", [])], "<"))
    if "allocation" in df.columns:
        cols.append(("allocation", [_cell(v) for v in df["allocation"]], "<"))
    cols.append(("size", [_cell(v) for v in df.get("size", [])], ">"))
    if scored:
        cols.append(("score", [_cell(v) for v in df["score"]], ">"))
    else:
        cols.append(("ppl (search)", [_cell(v) for v in df.get("ppl", [])], ">"))
    parts = [(c, [_cell(v) for v in df[c]], ">") for c in df.columns if c.startswith("ppl[")]
    tail_cols = [("gen", [_cell(v) for v in df.get("generation", [])], ">")]
    if "found_by" in df.columns:
        tail_cols.append(("found_by", [_cell(v) for v in df["found_by"]], "<"))
    tail_cols.append(("known", [known_name(f) for f in formulas], "<"))
    hidden = 0
    layout = cols + parts + tail_cols
    if not wide:
        while parts and len(_layout(layout)[0]) > width and max(len(r) for r in _layout(layout)) > width:
            parts.pop()
            hidden += 1
            layout = cols + parts + tail_cols
        for i in (2, 1):   # shorten the prefix form, then the infix one
            over = max(len(r) for r in _layout(layout)) - width
            if over > 0:
                h, vals, a = layout[i]
                room = max(len(h), max((len(v) for v in vals), default=0) - over, 18)
                layout[i] = (h, [_fit(v, room) for v in vals], a)
    body = "\n".join(_layout(layout))
    counts = cache_counts(run_dir, records)
    total = sum(counts.values())
    saved = total - counts["eval"] - counts["error"]
    notes = []
    if scored:
        notes.append(SCORE_LINES[_combine(run_dir)] + "; lower is better; full-fidelity scores only")
    else:
        notes.append("ppl (search) = the search's fitness: perplexity on its validation windows after pruning with "
                     "the formula; lower is better")
    if hidden:
        notes.append(f"{hidden} per-model/setting perplexity column(s) left out to fit {width} columns: --wide shows "
                     "them")
    notes.append("known = the named metric that ranks weights alike in exact arithmetic (prunerzero prune "
                 "--list-metrics)")
    notes.append(f"{total} candidates: {counts['eval']} evaluated, {saved} answered by caches "
                 f"(text {counts['text']}, canonical key {counts['key']}, mask fingerprint {counts['mask']}), "
                 f"{counts['error']} refused")
    local = local_counts(run_dir, records)
    if local["expanded"]:
        notes.append(f"local search: {local['candidates']} of the candidates were neighbours of {local['expanded']} "
                     f"expanded formula(s), {local['evaluated']} of them evaluated")
    if not wide:
        notes = [textwrap.fill(n, width, subsequent_indent="  ") for n in notes]
    return body + "\n" + "\n".join(notes)
