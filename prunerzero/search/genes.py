"""The allocation gene: how much of each decoder block to prune, evolved jointly with the formula (issue 14).

A search space with an ``allocation`` section gives every individual, besides its formula tree, one gene from a
small discrete family (``prune.allocation``'s kinds)::

    allocation:
      kinds: [uniform, owl, linear]      # which families the gene may take
      lam: [0.04, 0.08, 0.12, 0.16, 0.2] # OWL's lambda (the spread of block sparsities is 2 lambda)
      m: [3, 5, 7, 10]                   # OWL's M (a score is an outlier above M x its block's mean)
      slope: [-0.2, -0.1, 0.1, 0.2]      # linear: last block's sparsity minus the first block's
      mutpb: 0.3                         # share of mutations that change the gene instead of the tree
      init: random                       # random individuals start with a random gene (or: uniform)

A gene is written as a slug: ``uniform``, ``owl(lam=0.08,m=5)``, ``linear(slope=-0.1)``. A candidate is the
formula text alone when its gene is uniform (so it shares every cache with the formula-only search) and
``<formula> @ <slug>`` otherwise; ``seed_population`` entries may carry a slug the same way. The total sparsity
stays exact whatever the gene (``allocation.layer_counts``); N:M settings ignore the gene (N:M fixes every
group). Values are picked from the lists, never drawn from a continuum, so equal genes are equal text and the
caches work.

Pure Python on ``random`` (DEAP's generator, seeded and checkpointed by the engine): no tensors here.
"""
from __future__ import annotations

import math
import random
import re

from .. import checks
from ..errors import UserError

KINDS = ("uniform", "owl", "linear")
PARAMS = {"owl": ("lam", "m"), "linear": ("slope",), "uniform": ()}
SEP = " @ "
DEFAULTS = {"kinds": ["uniform", "owl", "linear"], "lam": [0.04, 0.08, 0.12, 0.16, 0.2], "m": [3, 5, 7, 10],
            "slope": [-0.2, -0.1, 0.1, 0.2], "mutpb": 0.3, "init": "random"}
_SLUG = re.compile(r"^(uniform|owl|linear)(?:\((.*)\))?$")
_NUM = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _fmt(v: float) -> str:
    return f"{float(v):g}"


def slug_of(gene: dict) -> str:
    """The canonical text of a gene ({kind, lam, m, slope}); a gene that prunes uniformly is ``uniform``."""
    kind = gene.get("kind", "uniform")
    if kind == "owl" and float(gene.get("lam", 0.0)) != 0.0:
        return f"owl(lam={_fmt(gene['lam'])},m={_fmt(gene['m'])})"
    if kind == "linear" and float(gene.get("slope", 0.0)) != 0.0:
        return f"linear(slope={_fmt(gene['slope'])})"
    return "uniform"


def parse_slug(text: str) -> dict:
    """{kind, lam?, m?, slope?} of a slug; anything else is refused with the accepted forms."""
    form = "uniform, owl(lam=0.08,m=5) or linear(slope=-0.1)"
    match = _SLUG.match(text.strip().replace(" ", ""))
    if not match:
        raise UserError(f"allocation '{text}' is not a gene: write {form}")
    kind, args = match.group(1), match.group(2)
    values = {}
    for part in (args.split(",") if args else []):
        name, eq, value = part.partition("=")
        if not eq or name not in PARAMS[kind] or name in values or not _NUM.match(value):
            raise UserError(f"allocation '{text}' is not a gene: write {form}")
        values[name] = float(value)
    if set(values) != set(PARAMS[kind]):
        raise UserError(f"allocation '{text}' needs {', '.join(PARAMS[kind]) or 'no parameters'}: write {form}")
    return {"kind": kind, **values}


def has_gene(text: str) -> bool:
    """Whether a candidate text carries an allocation gene (``@``, which no formula contains)."""
    return SEP.strip() in text


def split_candidate(text: str) -> tuple[str, str]:
    """(formula, canonical slug) of a candidate text (``formula @ slug``, spaces around ``@`` optional); a
    candidate without a gene is uniform."""
    formula, sep, slug = text.partition(SEP.strip())
    return formula.strip(), slug_of(parse_slug(slug)) if sep else "uniform"


def join_candidate(formula: str, slug: str | None) -> str:
    return formula if slug in (None, "uniform") else f"{formula}{SEP}{slug}"


def allocation_dict(slug: str) -> dict:
    """The gene as ``prune.allocation.Allocation.from_dict`` reads it."""
    gene = parse_slug(slug)
    return {"kind": gene["kind"], **{k: gene[k] for k in PARAMS[gene["kind"]]}}


def validate_section(raw) -> dict | None:
    """The space's ``allocation`` section with its defaults, every value checked (None: no allocation gene)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise UserError("allocation must be a mapping such as {kinds: [uniform, owl], lam: [0.04, 0.08]}, or null")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise UserError(f"unknown key 'allocation.{unknown[0]}' in search space: allowed are {', '.join(DEFAULTS)}")
    cfg = {**DEFAULTS, **raw}
    kinds = cfg["kinds"]
    if not isinstance(kinds, list) or not kinds or any(k not in KINDS for k in kinds) or len(set(kinds)) < len(kinds):
        raise UserError(f"allocation.kinds must list some of {', '.join(KINDS)}, each once")
    if kinds == ["uniform"]:
        raise UserError("allocation.kinds [uniform] searches nothing: add owl or linear, or remove allocation")
    limits = {"lam": (0.0, 0.5, False), "m": (0.0, None, False), "slope": (-1.0, 1.0, True)}
    for name, (low, high, open_high) in limits.items():
        values = cfg[name]
        if not isinstance(values, list) or not values:
            raise UserError(f"allocation.{name} must be a list of numbers, e.g. {DEFAULTS[name]}")
        for v in values:
            checks.real(v, f"allocation.{name}[]", low, high, open_low=True, open_high=open_high)
            if name in ("lam", "slope") and float(v) == 0.0:
                raise UserError(f"allocation.{name}[] 0 is the uniform allocation: remove it (list uniform in kinds)")
        if len({float(v) for v in values}) < len(values):
            raise UserError(f"allocation.{name} repeats a value: list each once")
        cfg[name] = sorted(float(v) for v in values)
    checks.real(cfg["mutpb"], "allocation.mutpb", 0.0, 1.0)
    if cfg["init"] not in ("random", "uniform"):
        raise UserError(f"allocation.init '{cfg['init']}' is unknown: use random or uniform")
    return cfg


class Genes:
    """Draws, mutates and crosses allocation genes of one space (its ``allocation`` section, validated)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.kinds = list(cfg["kinds"])

    def allows(self, slug: str) -> bool:
        gene = parse_slug(slug)
        if slug_of(gene) == "uniform":   # always allowed: the reference's (and a formula-only seed's) allocation
            return True
        return gene["kind"] in self.kinds and all(
            any(math.isclose(gene[p], v) for v in self.cfg[p]) for p in PARAMS[gene["kind"]])

    def draw(self, kind: str | None = None) -> str:
        kind = kind or random.choice(self.kinds)
        return slug_of({"kind": kind, **{p: random.choice(self.cfg[p]) for p in PARAMS[kind]}})

    def initial(self) -> str:
        return self.draw() if self.cfg["init"] == "random" else "uniform"

    def mutate(self, slug: str) -> str:
        """A neighbouring gene: another kind (with drawn parameters), or one parameter one step along its list."""
        gene = parse_slug(slug)
        kind = gene["kind"]
        others = [k for k in self.kinds if k != kind]
        if kind == "uniform" or not PARAMS[kind] or (others and random.random() < 1 / 3):
            return self.draw(random.choice(others)) if others else slug
        name = random.choice(PARAMS[kind])
        values = self.cfg[name]
        i = min(range(len(values)), key=lambda j: abs(values[j] - gene[name]))
        step = random.choice((-1, 1))
        if not 0 <= i + step < len(values):
            step = -step
        if 0 <= i + step < len(values):
            gene[name] = values[i + step]
        return slug_of(gene)

    @staticmethod
    def cross(a: str, b: str) -> tuple[str, str]:
        """Crossover of two genes: exchanged with probability 1/2."""
        return (b, a) if random.random() < 0.5 else (a, b)
