"""The DEAP toolbox in a page (after DEAP's examples/gp/symbreg.py): primitive set, initialisation, variation.

DEAP draws from Python's global ``random``; the engine seeds it and checkpoints its state.
"""
from __future__ import annotations

import operator
import random

from deap import base, creator, gp, tools

from ..metric.expr import Node, parse
from ..metric.ops import ANY_TERMINALS, OPS
from ..metric.simplify import is_nonneg
from .genes import Genes, join_candidate, split_candidate
from .space import LOCAL_MOVES, SearchSpace

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


def to_individual(formula: "str | Node", pset: gp.PrimitiveSet, genes: bool = False):
    """A formula tree as a DEAP individual (prefix list of the pset's primitives and terminals). ``genes``: the
    space evolves an allocation gene, carried as ``ind.alloc`` (a candidate text ``<formula> @ <slug>`` sets it,
    a formula alone is uniform)."""
    slug = None
    if isinstance(formula, str):
        formula, slug = split_candidate(formula)
        if slug != "uniform" and not genes:
            raise ValueError(f"{formula} carries an allocation gene the space does not search")
    node = parse(formula, ANY_TERMINALS) if isinstance(formula, str) else formula
    seq = []
    for n in node.walk():
        if n.is_const or n.op not in pset.mapping:
            raise ValueError(f"{n.op} is not in the search space")
        seq.append(pset.mapping[n.op])
    ind = creator.PZIndividual(seq)
    if genes:
        ind.alloc = slug or "uniform"
    return ind


def text_of(ind) -> str:
    """The candidate an individual stands for: its formula, with `` @ <allocation>`` when the gene is not uniform."""
    return join_candidate(str(ind), getattr(ind, "alloc", None))


def _mutate(ind, toolbox, pset, weights: dict):
    kinds = [k for k, w in weights.items() if w > 0]
    kind = random.choices(kinds, weights=[weights[k] for k in kinds])[0]
    if kind == "uniform":
        return gp.mutUniform(ind, expr=toolbox.expr_mut, pset=pset)
    if kind == "node":
        return gp.mutNodeReplacement(ind, pset=pset)
    if kind == "insert":   # a new primitive above a random subtree, which stays one of its arguments
        return gp.mutInsert(ind, pset=pset)
    if kind == "term":
        return add_term(ind, toolbox.expr_term, pset)
    return gp.mutShrink(ind)


def add_term(ind, expr, pset: gp.PrimitiveSet):
    """A random subtree ``s`` becomes ``b(s, t)`` or ``b(t, s)``: ``b`` a binary primitive of the space, ``t`` a new
    random term of at least one operation (``expr``). DEAP's mutInsert gives the new primitive bare terminals as its
    other arguments (``s + X``); this one can add ``|log X|`` next to ``√X`` in one step."""
    binaries = [p for p in pset.primitives[pset.ret] if p.arity == 2]
    if not binaries:
        return gp.mutInsert(ind, pset=pset)
    where = ind.searchSubtree(random.randrange(len(ind)))
    prim, term, first = random.choice(binaries), expr(), random.random() < 0.5
    sub = ind[where]
    ind[where] = [prim] + (sub + term if first else term + sub)
    return (ind,)


def first_of_each_fitness(pop: list) -> list:
    """The individuals whose fitness no earlier one in ``pop`` has: one per phenotype. Equal fitness means the same
    masks (clones, key and mask-cache hits copy their answer; distinct masks giving a bit-identical mean log ratio
    do not happen in practice), and all failures share the penalty, so they count as one."""
    seen: set[float] = set()
    out = []
    for ind in pop:
        value = ind.fitness.values[0]
        if value not in seen:
            seen.add(value)
            out.append(ind)
    return out


def distinct_tournament(pop: list, k: int, tournsize: int) -> list:
    """``k`` tournaments of ``tournsize`` drawn as DEAP's ``selTournament`` draws them, where a repeat of an earlier
    individual's fitness (``first_of_each_fitness``) ranks below every first occurrence: duplicates of the best
    (a population full of Wanda's rewrites) stop crowding out the other parents."""
    first = {id(ind) for ind in first_of_each_fitness(pop)}

    def rank(ind):
        return (id(ind) not in first, ind.fitness.values[0])

    return [min((random.choice(pop) for _ in range(tournsize)), key=rank) for _ in range(k)]


def build_toolbox(space: SearchSpace, pset: gp.PrimitiveSet) -> base.Toolbox:
    ini, lim, cfg = space.raw["init"], space.raw["limits"], space.gp
    tb = base.Toolbox()
    # DEAP heights count edges (a lone terminal has height 0); our depths count nodes
    tb.register("expr", gp.genHalfAndHalf, pset=pset, min_=ini["min_depth"] - 1, max_=ini["max_depth"] - 1)
    tb.register("individual", tools.initIterate, creator.PZIndividual, tb.expr)
    tb.register("population", tools.initRepeat, list, tb.individual)
    tb.register("select", distinct_tournament if cfg["distinct_parents"] else tools.selTournament,
                tournsize=cfg["tournament"])
    tb.register("mate", gp.cxOnePoint)
    tb.register("expr_mut", gp.genGrow, min_=0, max_=2, pset=pset)
    tb.register("expr_term", gp.genGrow, min_=1, max_=2, pset=pset)
    tb.register("mutate", _mutate, toolbox=tb, pset=pset, weights=cfg["mutation"])
    for op in ("mate", "mutate"):  # bloat control: children over the limits are replaced by their parents
        tb.decorate(op, gp.staticLimit(key=operator.attrgetter("height"), max_value=lim["max_depth"] - 1))
        tb.decorate(op, gp.staticLimit(key=len, max_value=lim["max_size"]))
    if space.allocation is not None:
        _gene_variation(tb, Genes(space.allocation))
    tb.register("map", map)
    return tb


def _gene_variation(tb: base.Toolbox, pool: Genes) -> None:
    """Variation of the allocation gene around the tree operators: a mutation changes the gene instead of the
    tree with probability ``allocation.mutpb``; a crossover also exchanges the parents' genes half the time.
    New random individuals draw their gene (``allocation.init``)."""
    tree_mate, tree_mutate, tree_individual = tb.mate, tb.mutate, tb.individual

    def individual():
        ind = tree_individual()
        ind.alloc = pool.initial()
        return ind

    def mate(a, b):
        ga, gb = pool.cross(a.alloc, b.alloc)
        a, b = tree_mate(a, b)
        a.alloc, b.alloc = ga, gb
        return a, b

    def mutate(ind):
        if random.random() < pool.cfg["mutpb"]:
            ind.alloc = pool.mutate(ind.alloc)
            return (ind,)
        return tree_mutate(ind)

    tb.register("individual", individual)
    tb.register("population", tools.initRepeat, list, tb.individual)
    tb.register("mate", mate)
    tb.register("mutate", mutate)


def local_terms(space: SearchSpace, depth: int, binary: bool = True) -> list[Node]:
    """The terms a leaf may become in the local search, in a fixed order: the space's terminals (``depth`` 1);
    with ``depth`` 2 also each operation over terminals (unary, then, with ``binary``, binary operations, in the
    space's order), each followed by its magnitude |t| where it can be negative (``is_nonneg``) and ``abs`` is in
    the space: a score term acts as a magnitude, so log X (negative below 1) comes with |log X|."""
    leaves = [Node(t) for t in space.raw["terminals"]]
    out = list(leaves)
    if depth >= 2:
        ops = [Node(u, (t,)) for u in space.raw["unary"] for t in leaves]
        ops += [Node(b, (s, t)) for b in (space.raw["binary"] if binary else []) for s in leaves for t in leaves]
        for term in ops:
            out.append(term)
            if "abs" in space.raw["unary"] and not is_nonneg(term):
                out.append(Node("abs", (term,)))
    return out


def _replace_at(node: Node, index: int, new: Node) -> Node:
    """``node`` with its ``index``-th subtree (prefix order, as ``Node.walk``) replaced by ``new``."""
    if index == 0:
        return new
    index -= 1
    kids = []
    for c in node.children:
        size = c.size
        kids.append(_replace_at(c, index, new) if 0 <= index < size else c)
        index -= size
    return Node(node.op, tuple(kids))


def neighbours(formula: str, space: SearchSpace, depth: int = 2, moves=LOCAL_MOVES, binary: bool = True) -> list[str]:
    """The local-search neighbourhood of a formula (``gp.local``), in a fixed order (no RNG: a formula always
    has the same neighbourhood):

    * ``leaf``: one leaf (a terminal occurrence) replaced by one term of ``local_terms(space, depth, binary)``, so
      |W|·(G + √X) has |W|·(|log X| + √X) among its neighbours;
    * ``wrap``: one subtree wrapped in one unary operation of the space (|W|·(log X + √X) ->
      |W|·(|log X| + √X)).

    Only formulas within the space's operations and depth and size limits, the formula itself excluded; distinct
    texts, by move, then position (prefix order), then term or operation in the space's order."""
    root = parse(formula, ANY_TERMINALS)
    lim = space.raw["limits"]
    out, seen = [], {str(root)}
    terms = local_terms(space, depth, binary)
    kinds = {"leaf": lambda n: terms if not n.children else [],
             "wrap": lambda n: [Node(u, (n,)) for u in space.raw["unary"]]}
    for move in moves:
        for i, sub in enumerate(root.walk()):
            for new_sub in kinds[move](sub):
                new = _replace_at(root, i, new_sub)
                text = str(new)
                if text in seen or new.depth > lim["max_depth"] or new.size > lim["max_size"] \
                        or not space.allows(new):
                    continue
                seen.add(text)
                out.append(text)
    return out
