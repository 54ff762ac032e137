"""Metrics by name: the published ones written as formulas (with the comparison group their papers use for
unstructured sparsity), the found formulas this repository stands behind (with where they come from), and the pick
of a ``prunerzero select`` run (``--metric RUN``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .expr import FormulaError, Node, parse, shown
from .ops import TERMINALS


@dataclass(frozen=True)
class KnownMetric:
    name: str
    formula: str
    group: str          # comparison group for unstructured sparsity: "row" (per output row) or "layer"
    needs: frozenset    # statistics the formula reads besides W
    source: str


@dataclass(frozen=True)
class FoundMetric(KnownMetric):
    """A formula a search of this repository found, with the committed files that back it."""

    run: str = ""           # the search run it comes from
    selection: str = ""     # the validation re-scoring that picked it
    confirmed: str = ""     # the test-split rows that confirm it (and how far)


KNOWN_METRICS = {m.name: m for m in [
    KnownMetric("magnitude", "abs(W)", "layer", frozenset(), "Han et al. 2015; Wanda's repo prunes per layer"),
    KnownMetric("wanda", "mul(abs(W), sqrt(X))", "row", frozenset({"X"}), "Sun et al. 2024 (Wanda)"),
    KnownMetric("pruner-zero", "mul(abs(mul(W, W)), mms(G))", "row", frozenset({"G"}),
                "Dong et al. 2024 (Pruner-Zero), the published LLaMA metric"),
    KnownMetric("gblm", "add(mul(abs(W), sqrt(X)), mul(abs(W), abs(G)))", "row", frozenset({"X", "G"}),
                "Das et al. 2023 (GBLM-Pruner)"),
    KnownMetric("ria", "mul(add(rown(abs(W)), coln(abs(W))), sqrt(sqrt(X)))", "row", frozenset({"X"}),
                "Zhang et al. 2024 (RIA, without channel permutation); needs the extended space's rown/coln"),
]}

# Found formulas with confirmed results (test split, sequential pruning). Not in KNOWN_METRICS: a selection
# leaves out rediscoveries of the published metrics only, so re-running a committed selection still meets these.
FOUND_METRICS = {m.name: m for m in [
    FoundMetric("found-smollm2-cpu", "mul(add(abs(log(X)), sqrt(X)), abs(W))", "row", frozenset({"X"}),
                "the GPU search's candidate chosen by the 3-seed CPU selection; below Wanda by more than both "
                "seed spreads at 50% and 2:4 on SmolLM2-135M (reduced CPU protocol, 3 seeds)",
                run="results/search-gpu-prunerzero", selection="studies/cpu-early/results/selection-cpu.md",
                confirmed="studies/cpu-early/results/confirm-cpu-seeds.md (rows: "
                          "studies/cpu-early/results/confirm-cpu-seeds/rows.jsonl)"),
    FoundMetric("found-smollm2-gpu", "mul(sqrt(sub(X, G)), abs(W))", "row", frozenset({"X", "G"}),
                "the GPU search's pick on validation; below Wanda at 50%, 4:8 and 2:4 on WikiText-2 test and C4 "
                "with SmolLM2-135M, full protocol, one calibration seed (no spread)",
                run="results/search-gpu-prunerzero", selection="results/selection-gpu.md",
                confirmed="results/confirm-gpu.md (rows: results/confirm-gpu/rows.jsonl)"),
]}

NAMED_METRICS = {**KNOWN_METRICS, **FOUND_METRICS}
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def selection_file(path: str | Path) -> Path | None:
    """The selection record behind ``path``: ``RUN/selection.json`` of a run (what ``prunerzero select RUN``
    writes), ``OUT.json`` beside a selection folder ``OUT``, or the JSON file itself; None if there is none."""
    p = Path(path)
    for cand in (p / "selection.json", p.with_suffix(".json") if p.suffix != ".json" else p):
        if cand.is_file():
            return cand
    return None


def selected_formula(path: str | Path) -> str:
    """The formula a selection picked, for ``--metric RUN`` (a search run or selection folder)."""
    sel = selection_file(path)
    if sel is None:
        p = Path(path)
        if (p / "config.json").is_file() or (p / "evaluations.jsonl").is_file():
            raise UserError(f"{path} is a search run without a selection yet: run `prunerzero select {path}` first")
        raise UserError(f"{path} is neither a search run nor a selection: pass a metric name, a formula, or a run "
                        "folder after `prunerzero select RUN`")
    try:
        record = json.loads(sel.read_text())
        chosen = record["chosen"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{sel} is not a selection record (no 'chosen'): run `prunerzero select` again") from None
    if not chosen or not chosen.get("formula"):
        raise UserError(f"{sel} chose no formula (no candidate was scored at every pattern): finish the selection "
                        f"with `prunerzero select` (it resumes), or pass a formula")
    return chosen["formula"]


def _is_path(text: str) -> bool:
    return "/" in text or text.endswith(".json") or Path(text).is_dir()


def resolve_metric(name_or_formula: str) -> tuple[str, Node, str]:
    """(display name, formula tree, default group) for a metric name, a formula text (prefix or infix), or a
    search run / selection folder (its selected formula)."""
    if name_or_formula in NAMED_METRICS:
        m = NAMED_METRICS[name_or_formula]
        return m.name, parse(m.formula), m.group
    if _is_path(name_or_formula) and not any(ch in name_or_formula for ch in "()|*+^"):
        node = parse(selected_formula(name_or_formula))
        return str(node), node, "row"
    try:
        node = parse(name_or_formula)
    except FormulaError:
        if _NAME.fullmatch(name_or_formula) and name_or_formula not in TERMINALS:
            raise UserError(f"unknown metric '{shown(name_or_formula, 40)}': use one of "
                            f"{', '.join(NAMED_METRICS)}, sparsegpt, a formula such as |W| * sqrt(X) or "
                            "mul(abs(W), sqrt(X)), or a search run folder after `prunerzero select RUN` "
                            "(`prunerzero prune --list-metrics` lists them)") from None
        raise
    return str(node), node, "row"


def metric_text(name_or_formula: str) -> str:
    """The canonical formula text behind a metric argument (names and run folders resolved); 'sparsegpt' as is."""
    return name_or_formula if name_or_formula == "sparsegpt" else str(resolve_metric(name_or_formula)[1])


def list_metrics() -> str:
    """Every named metric with its formula (prefix and infix) and where it comes from, for ``--list-metrics``."""
    from .expr import infix

    lines = ["published metrics:"]
    for m in KNOWN_METRICS.values():
        lines.append(f"  {m.name:<18} {infix(m.formula):<36} {m.formula}")
        lines.append(f"  {'':<18} {m.source}; unstructured group: {m.group}")
    lines.append("  sparsegpt          (OBS reconstruction, no formula)  Frantar & Alistarh 2023 (SparseGPT)")
    lines.append("found by this repository's searches (formula, then provenance):")
    for m in FOUND_METRICS.values():
        lines.append(f"  {m.name:<18} {infix(m.formula):<36} {m.formula}")
        lines.append(f"  {'':<18} {m.source}")
        lines.append(f"  {'':<18} run {m.run}; selection {m.selection}; confirmed {m.confirmed}")
    lines.append("also: any formula (prefix mul(abs(W), sqrt(X)) or infix |W| * sqrt(X)), or a search run folder "
                 "after `prunerzero select RUN` (its pick)")
    return "\n".join(lines)
