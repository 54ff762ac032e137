"""Published metrics written as formulas, with the comparison group their papers use for unstructured sparsity."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .expr import Node, parse, shown
from .ops import TERMINALS


@dataclass(frozen=True)
class KnownMetric:
    name: str
    formula: str
    group: str          # comparison group for unstructured sparsity: "row" (per output row) or "layer"
    needs: frozenset    # statistics the formula reads besides W
    source: str


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


def resolve_metric(name_or_formula: str) -> tuple[str, Node, str]:
    """(display name, formula tree, default group) for a known metric name or a formula text."""
    if name_or_formula in KNOWN_METRICS:
        m = KNOWN_METRICS[name_or_formula]
        return m.name, parse(m.formula), m.group
    if "(" not in name_or_formula and name_or_formula not in TERMINALS:
        raise UserError(f"unknown metric '{shown(name_or_formula, 40)}': use one of {', '.join(KNOWN_METRICS)}, "
                        "sparsegpt, or a formula such as mul(abs(W), sqrt(X))")
    node = parse(name_or_formula)
    return str(node), node, "row"
