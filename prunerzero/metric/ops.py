"""The one registry of operations a metric formula may use.

Each operation has its torch implementation (protected as Pruner-Zero defines them), its sympy counterpart (for
display: exact in real arithmetic, not in float32), and descriptive facts: its inverse (opposing operation) and
whether it is increasing, both in *exact* arithmetic, and whether its float output is always non-negative. The
ranking key (``simplify.rank_key``) uses none of the exact-arithmetic facts: in float32 an "increasing" map can
merge neighbouring scores into ties, and an inverse pair rounds (see ``simplify``'s docstring).

Shapes: ``W`` and ``G`` are [out, in]; ``X`` is [1, in] (one value per input feature, broadcast over rows).
Whole-tensor operations (``mms``, ``zsn``, the norm in ``div``) reduce over the tensor they are given, after
broadcasting for ``div`` (as Pruner-Zero's ``torch.broadcast_tensors`` does): ``div(x, y)`` divides by
sqrt(size(broadcast(x, y)) / size(y)) * ||y||_F, so ``div(G, X)`` divides by sqrt(out) * ||X|| but ``div(X, X)`` by
||X||. The sympy side writes that factor with the positive symbols ``N_OUT`` and ``N_IN`` (``simplify.to_sympy``
works out the shapes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import sympy as sp
import torch

LOG_EPS = 1e-3          # log(x) = log(|x| + 1e-3)
EXP_CLAMP = 80.0        # exp clamps its input at 80 (exp(80) ~ 5.5e34 is finite in fp32; Pruner-Zero's 100 is not)
TINY = 1e-12            # guards the denominators of mms / zsn / div against exact zeros

N_OUT = sp.Symbol("n_out", positive=True, integer=True)   # rows of W and G (output features)
N_IN = sp.Symbol("n_in", positive=True, integer=True)     # columns of W and G, entries of X (input features)


# --------------------------------------------------------------------------------------------- torch kernels
def _mms(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo).clamp_min(TINY)


def _zsn(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std().clamp_min(TINY) if x.numel() > 1 else torch.zeros_like(x)


def _div(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # x / ||broadcast(y)||_F without materialising the broadcast
    shape = torch.broadcast_shapes(x.shape, y.shape)
    factor = math.sqrt(math.prod(shape) / max(1, y.numel()))
    return x / (torch.linalg.vector_norm(y) * factor).clamp_min(TINY)


def _rown(x: torch.Tensor) -> torch.Tensor:
    return x / x.abs().sum(dim=-1, keepdim=True).clamp_min(TINY)


def _coln(x: torch.Tensor) -> torch.Tensor:
    return x / x.abs().sum(dim=0, keepdim=True).clamp_min(TINY)


# --------------------------------------------------------------------------------------------- sympy side
class plog(sp.Function):
    """Protected log: log(|x| + 1e-3). Even in x, so plog(|x|) = plog(-x) = plog(x)."""

    @classmethod
    def eval(cls, x):
        if isinstance(x, sp.Abs):
            return cls(x.args[0])
        if x.could_extract_minus_sign():
            return cls(-x)
        return None


class _WholeTensor(sp.Function):
    """Affine-invariant whole-tensor normalisations: f(a*x + b) = f(x) for constants a > 0, b."""

    @classmethod
    def eval(cls, x):
        if isinstance(x, (mms, zsn)):
            return cls(x.args[0])
        coeff, rest = x.as_independent(*x.free_symbols, as_Add=True) if x.free_symbols else (0, x)
        if coeff != 0 and rest != 0 and _is_constant(coeff):
            return cls(rest)
        c, r = x.as_independent(*x.free_symbols, as_Add=False) if x.free_symbols else (1, x)
        if c != 1 and _is_constant(c) and c.is_positive:
            return cls(r)
        return None


class mms(_WholeTensor):
    """Min-max scaling over the whole tensor, in [0, 1]."""

    def _eval_is_nonnegative(self):
        return True


class zsn(_WholeTensor):
    """z-score over the whole tensor."""


class fnorm(sp.Function):
    """Frobenius norm of a whole tensor (a positive number)."""

    is_positive = True

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return abs(x)
        c, r = x.as_independent(*x.free_symbols, as_Add=False) if x.free_symbols else (x, 1)
        if c != 1 and _is_constant(c) and r != 1:
            return sp.Abs(c) * cls(r)
        if isinstance(x, sp.Abs) or x.could_extract_minus_sign():
            return cls(sp.Abs(x).args[0] if isinstance(x, sp.Abs) else -x)
        return None


class sigmoid(sp.Function):
    def _eval_is_positive(self):
        return True


class rown(sp.Function):
    """x divided by the sum of |x| over its row (the output dimension's slice)."""


class coln(sp.Function):
    """x divided by the sum of |x| over its column (the input dimension's slice)."""


def _is_constant(e) -> bool:
    """A number, or a product of numbers and whole-tensor norms (a positive scalar per tensor)."""
    return all(isinstance(a, (sp.Number, fnorm)) or (isinstance(a, sp.Pow) and isinstance(a.base, fnorm))
               for a in sp.Mul.make_args(e)) and e.is_positive is not False


# --------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Op:
    name: str
    arity: int
    torch: Callable
    sympy: Callable
    inverse: str | None = None     # op that undoes this one where both are defined (the opposing operation)
    increasing: str = "no"         # in exact arithmetic: "yes" strictly increasing; "nonneg" on x >= 0; "no"
    nonneg: bool = False           # float output always >= 0 (or NaN)
    doc: str = ""


OPS: dict[str, Op] = {o.name: o for o in [
    Op("add", 2, torch.add, lambda a, b: a + b, doc="x + y"),
    Op("sub", 2, torch.sub, lambda a, b: a - b, doc="x - y"),
    Op("mul", 2, torch.mul, lambda a, b: a * b, doc="x * y"),
    Op("div", 2, _div, lambda a, b, factor=1: a / (factor * fnorm(b)),
       doc="x / ||broadcast(y)||_F (protected division)"),
    Op("abs", 1, torch.abs, sp.Abs, increasing="nonneg", nonneg=True, doc="|x|"),
    Op("neg", 1, torch.neg, lambda a: -a, inverse="neg", doc="-x"),
    Op("sqr", 1, torch.square, lambda a: a ** 2, inverse="sqrt", increasing="nonneg", nonneg=True, doc="x^2"),
    Op("sqrt", 1, lambda x: torch.sqrt(torch.abs(x)), lambda a: sp.sqrt(sp.Abs(a)), inverse="sqr",
       increasing="nonneg", nonneg=True, doc="sqrt(|x|)"),
    Op("log", 1, lambda x: torch.log(torch.abs(x) + LOG_EPS), plog, inverse="exp", increasing="nonneg",
       doc="log(|x| + 1e-3)"),
    Op("exp", 1, lambda x: torch.exp(x.clamp(max=EXP_CLAMP)), sp.exp, inverse="log", increasing="yes",
       nonneg=True, doc="exp(min(x, 80))"),
    Op("tanh", 1, torch.tanh, sp.tanh, increasing="yes", doc="tanh(x)"),
    Op("sigmoid", 1, torch.sigmoid, sigmoid, increasing="yes", nonneg=True, doc="1 / (1 + exp(-x))"),
    Op("mms", 1, _mms, mms, increasing="yes", nonneg=True, doc="min-max scaling over the whole tensor"),
    Op("zsn", 1, _zsn, zsn, increasing="yes", doc="z-score over the whole tensor"),
    Op("identity", 1, lambda x: x, lambda a: a, increasing="yes", doc="x"),
    Op("rown", 1, _rown, rown, doc="x / sum_row |x| (per output row)"),
    Op("coln", 1, _coln, coln, doc="x / sum_col |x| (per input column)"),
]}

# Names other tools print for the same operation.
ALIASES = {"skp": "identity", "pow": "sqr", "id": "identity"}

TERMINALS = {
    "W": "the weight",
    "X": "input-activation statistic: squared L2 norm of each input feature over the calibration set "
         "(Wanda's scaler_row)",
    "G": "gradient statistic (l2): sqrt(sum over calibration samples of (100 dL/dW)^2)",
    "G1": "gradient statistic (l1): sum over calibration samples of |100 dL/dW|",
    "G2": "gradient statistic (l2), the same as G",
    "Hd": "Hessian-aware input statistic: 1 / diag(H^-1) of the damped layer Hessian H = 2/n X X^T (percdamp "
          "0.01), one value per input feature like X; OBS saliency = mul(sqr(W), Hd)",
}
NONNEG_TERMINALS = {"X", "G", "G1", "G2", "Hd"}

# Expert-level terminals: one value per routed expert of a mixture-of-experts layer, from routed calibration
# (``calibration.experts``); the formulas of ``prunerzero experts --score`` (``prune.experts``) read these only.
EXPERT_TERMINALS = {
    "freq": "routing frequency: the fraction of the layer's calibration tokens whose top-k holds the expert",
    "gate": "mean gate weight over the tokens routed to the expert",
    "onorm": "mean L2 norm of the expert's output over the tokens routed to it",
    "reap": "REAP: mean of gate weight x output norm over the tokens routed to the expert",
    "wnorm": "Frobenius norm of the expert's weights (all its fused matrices)",
}
NONNEG_TERMINALS |= set(EXPERT_TERMINALS)
# what a search space's formulas may read: one kind or the other (``search.space`` refuses a mix)
ANY_TERMINALS = {**TERMINALS, **EXPERT_TERMINALS}

# The gradient terminals and their one alias, spelled out here only: G is the l2 statistic G2.
GRADIENT_TERMINALS = frozenset({"G", "G1", "G2"})
TERMINAL_ALIASES = {"G2": "G"}


def canonical_terminal(name: str) -> str:
    return TERMINAL_ALIASES.get(name, name)


def needs_of(terms) -> tuple[bool, bool]:
    """(needs activation statistics X, needs gradient statistics) for a set of terminal names."""
    return "X" in terms, bool(set(terms) & GRADIENT_TERMINALS)


def canonical_op(name: str) -> str:
    return ALIASES.get(name, name)


def symbol(name: str) -> sp.Symbol:
    """The sympy symbol of a terminal: W is real, the statistics are non-negative."""
    if name in NONNEG_TERMINALS:
        return sp.Symbol(name, nonnegative=True)
    return sp.Symbol(name, real=True)
