"""The DEAP toolbox in a page (after DEAP's examples/gp/symbreg.py): primitive set, initialisation, variation.

DEAP draws from Python's global ``random``; the engine seeds it and checkpoints its state.
"""
from __future__ import annotations

import operator
import random

from deap import base, creator, gp, tools

from ..metric.expr import Node, parse
from ..metric.ops import OPS
from .space import SearchSpace

if not hasattr(creator, "PZFitness"):
    creator.create("PZFitness", base.Fitness, weights=(-1.0,))          # lower perplexity is better
    creator.create("PZIndividual", gp.PrimitiveTree, fitness=creator.PZFitness)


def _symbolic_only(*_args):
    raise RuntimeError("prunerzero trees are evaluated by prunerzero.metric, not compiled by DEAP")


def build_pset(space: SearchSpace) -> gp.PrimitiveSet:
    pset = gp.PrimitiveSet("METRIC", 0)
    for name in space.raw["unary"] + space.raw["binary"]:
        pset.addPrimitive(_symbolic_only, OPS[name].arity, name=name)
    for t in space.raw["terminals"]:
        pset.addTerminal(t, name=t)
    return pset


def to_individual(formula: "str | Node", pset: gp.PrimitiveSet):
    """A formula tree as a DEAP individual (prefix list of the pset's primitives and terminals)."""
    node = parse(formula) if isinstance(formula, str) else formula
    seq = []
    for n in node.walk():
        if n.is_const or n.op not in pset.mapping:
            raise ValueError(f"{n.op} is not in the search space")
        seq.append(pset.mapping[n.op])
    return creator.PZIndividual(seq)


def text_of(ind) -> str:
    return str(ind)


def _mutate(ind, toolbox, pset, weights: dict):
    kinds = [k for k, w in weights.items() if w > 0]
    kind = random.choices(kinds, weights=[weights[k] for k in kinds])[0]
    if kind == "uniform":
        return gp.mutUniform(ind, expr=toolbox.expr_mut, pset=pset)
    if kind == "node":
        return gp.mutNodeReplacement(ind, pset=pset)
    return gp.mutShrink(ind)


def build_toolbox(space: SearchSpace, pset: gp.PrimitiveSet) -> base.Toolbox:
    ini, lim, cfg = space.raw["init"], space.raw["limits"], space.gp
    tb = base.Toolbox()
    # DEAP heights count edges (a lone terminal has height 0); our depths count nodes
    tb.register("expr", gp.genHalfAndHalf, pset=pset, min_=ini["min_depth"] - 1, max_=ini["max_depth"] - 1)
    tb.register("individual", tools.initIterate, creator.PZIndividual, tb.expr)
    tb.register("population", tools.initRepeat, list, tb.individual)
    tb.register("select", tools.selTournament, tournsize=cfg["tournament"])
    tb.register("mate", gp.cxOnePoint)
    tb.register("expr_mut", gp.genGrow, min_=0, max_=2, pset=pset)
    tb.register("mutate", _mutate, toolbox=tb, pset=pset, weights=cfg["mutation"])
    for op in ("mate", "mutate"):  # bloat control: children over the limits are replaced by their parents
        tb.decorate(op, gp.staticLimit(key=operator.attrgetter("height"), max_value=lim["max_depth"] - 1))
        tb.decorate(op, gp.staticLimit(key=len, max_value=lim["max_size"]))
    tb.register("map", map)
    return tb
