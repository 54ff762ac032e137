"""Metric formulas: operation registry, parser, torch/sympy conversion, simplification, known metrics."""
from .expr import FormulaError, Node, evaluate, infix, parse
from .known import KNOWN_METRICS, resolve_metric
from .ops import OPS, TERMINALS
from .simplify import rank_key, simplify

__all__ = ["FormulaError", "Node", "evaluate", "infix", "parse", "KNOWN_METRICS", "resolve_metric", "OPS", "TERMINALS",
           "rank_key", "simplify"]
