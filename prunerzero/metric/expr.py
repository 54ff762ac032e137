"""Formula trees: one text form (prefix, as DEAP prints it), our own parser, and evaluation with torch.

    >>> f = parse("mul(abs(mul(W, W)), mms(G))")
    >>> str(f), f.size, f.depth
    ('mul(abs(mul(W, W)), mms(G))', 7, 4)

The parser is a small tokenizer plus recursive descent over a checked nesting depth; it never calls eval/exec or
sympify, and it refuses unknown names, wrong arity, unbalanced parentheses and oversized input with one line
that says what is wrong.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch

from ..errors import UserError
from .ops import OPS, TERMINALS, canonical_op

MAX_TEXT = 20_000
MAX_DEPTH = 64
MAX_NODES = 4_096

# ASCII only: Unicode digits such as '\u0663' must not read as numbers, nor Unicode spaces as blanks.
_TOKEN = re.compile(r"[ \t\r\n]*(?:(?P<num>[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][-+]?[0-9]+)?)"
                    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(),]))", re.ASCII)
F32_MAX = 3.4028234663852886e38      # largest finite float32
F32_TINY = 1.1754943508222875e-38    # smallest normal float32


def shown(text: str, limit: int = 20) -> str:
    """A piece of user text safe to print on one line: control and non-ASCII characters escaped."""
    text = text[:limit]
    return "".join(ch if " " <= ch <= "~" else ch.encode("unicode_escape").decode("ascii") for ch in text)


class FormulaError(UserError):
    """A malformed formula."""


@dataclass(frozen=True)
class Node:
    """One node of a formula: an operation with children, a terminal (W, X, G, ...) or a constant."""

    op: str
    children: tuple["Node", ...] = ()
    value: float | None = None
    _text: str = field(default="", compare=False, repr=False)

    @staticmethod
    def const(value: float) -> "Node":
        return Node("const", (), float(value))

    @property
    def is_terminal(self) -> bool:
        return self.op in TERMINALS

    @property
    def is_const(self) -> bool:
        return self.op == "const"

    def __str__(self) -> str:
        if self.is_const:
            v = self.value
            return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)
        if not self.children:
            return self.op
        return f"{self.op}({', '.join(str(c) for c in self.children)})"

    @property
    def size(self) -> int:
        return 1 + sum(c.size for c in self.children)

    @property
    def depth(self) -> int:
        return 1 + max((c.depth for c in self.children), default=0)

    def walk(self) -> Iterator["Node"]:
        yield self
        for c in self.children:
            yield from c.walk()

    def terminals(self) -> set[str]:
        return {n.op for n in self.walk() if n.is_terminal}


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    text = text.rstrip(" \t\r\n")
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            bad = shown(text[pos:].strip(" \t\r\n"))
            raise FormulaError(f"cannot read formula at character {pos + 1} ('{bad}'): "
                               "write operations as name(arg, ...) over W, X, G and numbers")
        kind = m.lastgroup
        out.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return out


def parse(text: str) -> Node:
    """Read a formula in prefix form (``mul(abs(W), sqrt(X))``); aliases such as ``skp``/``pow`` are accepted."""
    if not isinstance(text, str):
        raise FormulaError(f"a formula is a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise FormulaError(f"formula is {len(text)} characters long (limit {MAX_TEXT}): simplify it")
    depth = deepest = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            raise FormulaError("unbalanced parentheses: a ')' closes nothing")
        deepest = max(deepest, depth)
    if depth != 0:
        raise FormulaError(f"unbalanced parentheses: {depth} '(' left open")
    if deepest > MAX_DEPTH:
        raise FormulaError(f"formula nests {deepest} calls deep (limit {MAX_DEPTH}): simplify it")
    toks = _tokens(text)
    if not toks:
        raise FormulaError("empty formula: write one such as mul(abs(W), sqrt(X))")
    node, pos = _parse_at(toks, 0)
    if pos != len(toks):
        raise FormulaError(f"unexpected '{shown(toks[pos][1])}' after a complete formula: remove it")
    if node.size > MAX_NODES:
        raise FormulaError(f"formula has {node.size} nodes (limit {MAX_NODES}): simplify it")
    return node


def _constant(tok: str) -> float:
    """A numeric literal that float32 scores can hold exactly in range (no overflow, no flush to zero)."""
    value = float(tok)
    mantissa = re.split(r"[eE]", tok)[0]
    if not math.isfinite(value) or abs(value) > F32_MAX:
        raise FormulaError(f"constant {shown(tok)} overflows float32 (largest {F32_MAX:.4g}): use a smaller one")
    if value == 0.0 and re.search(r"[1-9]", mantissa) or 0.0 < abs(value) < F32_TINY:
        raise FormulaError(f"constant {shown(tok)} underflows float32 (smallest normal {F32_TINY:.4g}): "
                           "use 0 or a larger one")
    return value


def _parse_at(toks, pos) -> tuple[Node, int]:
    if pos >= len(toks):
        raise FormulaError("formula ends too early: an argument is missing")
    kind, tok, _ = toks[pos]
    if kind == "num":
        return Node.const(_constant(tok)), pos + 1
    if kind == "punct":
        raise FormulaError(f"expected a name or number, found '{tok}'")
    has_args = pos + 1 < len(toks) and toks[pos + 1][1] == "("
    if tok in TERMINALS:
        if has_args:
            raise FormulaError(f"'{tok}' is a terminal, not an operation: write it without parentheses")
        return Node(tok), pos + 1
    name = canonical_op(tok)
    if name not in OPS:
        raise FormulaError(f"unknown operation or terminal '{shown(tok)}': use one of "
                           f"{', '.join(sorted(OPS))} over {', '.join(TERMINALS)}")
    op = OPS[name]
    if not has_args:
        raise FormulaError(f"'{tok}' needs {op.arity} argument(s) in parentheses")
    pos += 2
    args = []
    while True:
        child, pos = _parse_at(toks, pos)
        args.append(child)
        if pos >= len(toks):
            raise FormulaError(f"'{tok}(' is not closed")
        if toks[pos][1] == ",":
            pos += 1
            continue
        if toks[pos][1] == ")":
            pos += 1
            break
        raise FormulaError(f"expected ',' or ')' in '{tok}(...)', found '{shown(toks[pos][1])}'")
    if len(args) != op.arity:
        raise FormulaError(f"'{tok}' takes {op.arity} argument(s), got {len(args)}")
    return Node(name, tuple(args)), pos


def as_node(formula: "str | Node") -> Node:
    return formula if isinstance(formula, Node) else parse(formula)


def evaluate(formula: "str | Node", env: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Score tensor of a formula; ``env`` maps terminal names to tensors (X is [1, in], W and G are [out, in]).

    Identical subtrees are computed once. The result always has the shape of ``env['W']``.
    """
    node = as_node(formula)
    memo: dict[Node, torch.Tensor] = {}
    like = env["W"]

    def run(n: Node) -> torch.Tensor:
        if n in memo:
            return memo[n]
        if n.is_const:
            out = torch.tensor(n.value, dtype=like.dtype, device=like.device)
        elif n.is_terminal:
            if n.op not in env:
                raise UserError(f"formula uses {n.op} but no {n.op} statistics were computed: "
                                f"calibrate with gradients (G) or activations (X)")
            out = env[n.op]
        else:
            out = OPS[n.op].torch(*(run(c) for c in n.children))
        memo[n] = out
        return out

    out = run(node)
    return out.expand_as(like) if out.shape != like.shape else out
