"""Layer-wise allocation searched jointly with the formula (issue 14, item 3): the gene, its variation, the
fitness masks it gives (equal to the prune path's, total sparsity exact), and a deterministic, resumable search."""
import copy
import json
import random
from pathlib import Path

import pytest
import torch

from conftest import tiny_with_stats
from prunerzero.errors import UserError
from prunerzero.metric.expr import parse
from prunerzero.models import all_prunable
from prunerzero.prune.allocation import Allocation, allocate
from prunerzero.prune.masks import Pattern, parse_pattern
from prunerzero.prune.run import prune_model
from prunerzero.search import genes
from prunerzero.search.engine import Search, read_evaluations
from prunerzero.search.fitness import FitnessEvaluator, batched_masks, mask_fingerprint
from prunerzero.search.space import load_space, validate
from prunerzero.search.table import equations, format_table
from prunerzero.search.toolbox import build_pset, build_toolbox, text_of, to_individual
from prunerzero.search.workers import InProcess

REPO = Path(__file__).resolve().parents[1]
WANDA = "mul(abs(W), sqrt(X))"


# ---------------------------------------------------------------------------------------------- the gene
def test_gene_slugs_round_trip_and_bad_ones_are_refused():
    for slug in ("uniform", "owl(lam=0.08,m=5)", "linear(slope=-0.1)"):
        assert genes.slug_of(genes.parse_slug(slug)) == slug
    assert genes.slug_of(genes.parse_slug("owl(lam=0, m=5)")) == "uniform"     # lambda 0 prunes uniformly
    assert genes.split_candidate(f"{WANDA} @ owl(lam=0.08, m=5.0)") == (WANDA, "owl(lam=0.08,m=5)")
    assert genes.split_candidate(WANDA) == (WANDA, "uniform")
    assert genes.join_candidate(WANDA, "uniform") == WANDA
    assert genes.allocation_dict("linear(slope=0.1)") == {"kind": "linear", "slope": 0.1}
    for bad in ("owl", "owl(lam=0.1)", "owl(lam=0.1,m=5,slope=1)", "linear(slope=__import__)", "random",
                "owl(lam=0.1,lam=0.2)", "uniform(x=1)"):
        with pytest.raises(UserError, match="allocation"):
            genes.parse_slug(bad)


def test_gene_variation_stays_in_the_space_and_is_seeded():
    pool = genes.Genes(genes.validate_section({"kinds": ["uniform", "owl", "linear"]}))

    def walk(seed):
        random.seed(seed)
        slug, seen = "uniform", []
        for _ in range(200):
            slug = pool.mutate(slug) if random.random() < 0.8 else pool.cross(slug, pool.draw())[0]
            seen.append(slug)
        return seen

    a = walk(0)
    assert a == walk(0) and a != walk(1)
    assert all(pool.allows(s) for s in a)
    assert {genes.parse_slug(s)["kind"] for s in a} == {"uniform", "owl", "linear"}
    lams = {genes.parse_slug(s)["lam"] for s in a if s.startswith("owl")}
    assert len(lams) >= 3 and lams <= set(genes.DEFAULTS["lam"])          # walks the list, never off it


@pytest.mark.parametrize("section, msg", [
    ({"kinds": ["uniform"]}, "searches nothing"),
    ({"kinds": ["owl", "owls"]}, "allocation.kinds"),
    ({"lam": [0.0, 0.1]}, "allocation.lam"),
    ({"lam": [0.1, 0.1]}, "repeats"),
    ({"slope": [0.0]}, "uniform allocation"),
    ({"slope": [1.5]}, "allocation.slope"),
    ({"m": ["five"]}, "allocation.m"),
    ({"mutpb": 2}, "allocation.mutpb"),
    ({"init": "owl"}, "allocation.init"),
    ({"lambda": [0.1]}, "unknown key 'allocation.lambda'"),
    ("owl", "must be a mapping"),
])
def test_allocation_section_is_validated(section, msg):
    with pytest.raises(UserError, match=msg):
        validate({"allocation": section})


def test_allocation_needs_an_unstructured_setting_and_seeds_in_its_lists():
    with pytest.raises(UserError, match="unstructured fitness setting"):
        validate({"allocation": {}, "fitness": {"settings": [{"pattern": "2:4"}]}})
    with pytest.raises(UserError, match="no allocation section"):
        validate({"seed_population": ["wanda @ owl(lam=0.08,m=5)"]})
    with pytest.raises(UserError, match="outside allocation"):
        validate({"allocation": {}, "seed_population": ["wanda @ owl(lam=0.3,m=5)"]})
    space = validate({"allocation": {}, "terminals": ["W", "G"], "fitness": {"reference": "magnitude"},
                      "seed_population": ["magnitude", "abs(W) @ owl(lam=0.08, m=5)"]})
    assert space.seeds == ["abs(W)", "abs(W) @ owl(lam=0.08,m=5)"]
    assert space.stat_terminals == ["W", "G", "X"]        # OWL reads X even where formulas do not
    assert validate({}).raw["allocation"] is None


def test_toolbox_carries_the_gene_through_variation():
    space = validate({"allocation": {"mutpb": 0.5}})
    pset = build_pset(space)
    tb = build_toolbox(space, pset)
    random.seed(0)
    pop = tb.population(n=30)
    assert {genes.parse_slug(i.alloc)["kind"] for i in pop} == {"uniform", "owl", "linear"}   # init: random
    ind = to_individual(f"{WANDA} @ linear(slope=0.1)", pset, genes=True)
    assert text_of(ind) == f"{WANDA} @ linear(slope=0.1)" and str(ind) == WANDA
    assert text_of(copy.deepcopy(ind)) == text_of(ind)
    changed = {text_of(tb.mutate(tb.clone(ind))[0]) for _ in range(40)}
    assert any(c.startswith(WANDA + " @ ") and c != text_of(ind) for c in changed)   # the gene alone moved
    assert any(not c.startswith(WANDA) for c in changed)                              # the tree moved
    with pytest.raises(ValueError, match="allocation gene"):
        to_individual(f"{WANDA} @ linear(slope=0.1)", pset)


# ---------------------------------------------------------------------------------------------- fitness
@pytest.fixture(scope="module")
def tiny4():
    return tiny_with_stats(layers=4)


@pytest.mark.parametrize("slug", ["owl(lam=0.1,m=2)", "linear(slope=-0.2)"])
def test_fitness_masks_with_a_gene_equal_the_prune_path_and_keep_the_total(tiny4, slug):
    model, stats, evalw = tiny4
    pattern = Pattern(0.5, "row")
    ev = FitnessEvaluator(model, stats, [pattern, parse_pattern(0.5, "2:4", "row")], evalw)
    masks = ev._allocated_masks(parse(WANDA), ev.targets[0], pattern, ev._counts(ev.targets[0], pattern, slug))
    # the same counts and masks as `prune --allocation` (one-shot statistics given)
    counts = allocate(model, Allocation.from_dict(genes.allocation_dict(slug)), pattern,
                      lambda b, n: stats.tensors[f"layers.{b}.{n}"]["X"])
    pruned_model = copy.deepcopy(model)
    prune_model(pruned_model, parse(WANDA), pattern, None, stats, sequential=False, progress=False, counts=counts)
    for key, lin in all_prunable(pruned_model).items():
        assert torch.equal(masks[key], lin.weight == 0), key
    linears = all_prunable(model)
    total = sum(lin.weight.numel() for lin in linears.values())
    kept_rows = min(lin.out_features for lin in linears.values())
    assert 0 <= int(total * 0.5) - sum(int(m.sum()) for m in masks.values()) < kept_rows   # the total is exact
    per_layer = [float(m.float().mean()) for m in masks.values()]
    assert max(per_layer) - min(per_layer) > 0.02                                      # and really not uniform
    # the candidate: its unstructured part differs from uniform, its N:M part is uniform's (the gene does not apply)
    res, plain = ev(f"{WANDA} @ {slug}"), ev(WANDA)
    labels = ev.labels
    assert res.parts[labels[0]] != plain.parts[labels[0]] and res.parts[labels[1]] == plain.parts[labels[1]]
    assert res.hit == "eval" and res.ppls[labels[1]] == plain.ppls[labels[1]]
    assert res.parts[labels[0]] == mask_fingerprint(masks)
    assert plain.parts[labels[0]] == mask_fingerprint(batched_masks(parse(WANDA), ev.linears, stats, pattern))


def test_a_bad_gene_is_an_error_result_not_a_crash(tiny4):
    model, stats, evalw = tiny4
    ev = FitnessEvaluator(model, stats, Pattern(0.9, "row"), evalw)
    res = ev(f"{WANDA} @ linear(slope=0.5)")               # last blocks above 100%: refused, with the fix
    assert res.hit == "error" and "outside (0, 1)" in res.error
    assert ev(f"{WANDA} @ owl(lam=0.1)").hit == "error"


# ---------------------------------------------------------------------------------------------- search
def _space():
    space = load_space(REPO / "search_spaces" / "tiny.yaml")
    raw = copy.deepcopy(space.raw)
    raw.update(allocation={"kinds": ["uniform", "owl", "linear"], "lam": [0.05, 0.1, 0.2], "m": [2, 3],
                           "slope": [-0.2, 0.2], "mutpb": 0.4},
               seed_population=["magnitude", "wanda", "wanda @ owl(lam=0.1,m=3)"])
    raw["fitness"]["sparsity"] = 0.6
    raw["gp"].update(generations=4, population=10)
    return validate(raw)


def _run(tmp, tiny4, evaluate_many=None, resume=False):
    model, stats, evalw = tiny4
    ev = InProcess(FitnessEvaluator(model, stats, Pattern(0.6, "row"), evalw))
    Search(_space(), tmp, evaluate_many or ev, progress=False, on_resume=ev.preload).run(resume=resume)
    return [(r["generation"], r["formula"], r["allocation"], r["ppl"]) for r in read_evaluations(tmp)]


def test_joint_search_is_deterministic_resumable_and_reports_the_gene(tmp_path, tiny4):
    a = _run(tmp_path / "a", tiny4)
    assert a == _run(tmp_path / "b", tiny4)
    assert (0, WANDA, "owl(lam=0.1,m=3)") in {r[:3] for r in a}                    # the seeded gene
    assert len({r[2] for r in a}) >= 4                                           # genes really evolve
    recs = read_evaluations(tmp_path / "a")
    for r in recs:       # the key holds the gene; equal formulas with different genes are different candidates
        assert r["key"].endswith(f" @ {r['allocation']}") == (r["allocation"] != "uniform")
    df = equations(tmp_path / "a", top=None)
    assert "allocation" in df.columns and df.key.is_unique
    assert "allocation" in format_table(tmp_path / "a").splitlines()[0]
    best = json.loads((tmp_path / "a" / "summary.json").read_text())["best"]
    assert "allocation" in best
    # killed in the middle of generation 3, resumed: the same log
    dispatched = sum(r["hit"] in ("eval", "mask", "error") for r in recs)
    model, stats, evalw = tiny4
    inner = InProcess(FitnessEvaluator(model, stats, Pattern(0.6, "row"), evalw))
    calls = {"n": 0}

    def dying(formulas):
        for res in inner(formulas):
            calls["n"] += 1
            if calls["n"] > dispatched - 2:
                raise KeyboardInterrupt
            yield res

    with pytest.raises(KeyboardInterrupt):
        Search(_space(), tmp_path / "cut", dying, progress=False).run()
    assert _run(tmp_path / "cut", tiny4, resume=True) == a
