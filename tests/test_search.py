"""The GP search on a tiny random LLaMA: deterministic for a seed, resumable, validated spaces."""
import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_with_stats
from prunerzero.errors import UserError
from prunerzero.prune.masks import Pattern
from prunerzero.search.engine import Search, read_evaluations
from prunerzero.search.fitness import FitnessEvaluator, mask_fingerprint
from prunerzero.search.space import load_space, validate
from prunerzero.search.table import cache_counts, equations, format_table
from prunerzero.search.workers import InProcess

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "search_spaces" / "tiny.yaml"


@pytest.fixture(scope="module")
def evaluator_factory():
    model, stats, evalw = tiny_with_stats(layers=2)

    def make():
        return InProcess(FitnessEvaluator(model, stats, Pattern(0.5, "row"), evalw))
    return make


def run(tmp, factory, resume=False, **gp):
    space = load_space(SPACE)
    space.raw["gp"].update(gp)
    ev = factory()
    Search(space, tmp, ev, progress=False, on_resume=ev.preload).run(resume=resume)
    return [(r["generation"], r["formula"], r["ppl"]) for r in read_evaluations(tmp)]


def test_search_is_deterministic_for_a_seed(tmp_path, evaluator_factory):
    a = run(tmp_path / "a", evaluator_factory)
    b = run(tmp_path / "b", evaluator_factory)
    assert a == b and len(a) > 8
    c = run(tmp_path / "c", evaluator_factory, seed=1)
    assert a != c
    # seeds of the space are in generation 0; the table is sorted and distinct by key
    assert {"abs(W)", "mul(abs(W), sqrt(X))"} <= {f for g, f, _ in a if g == 0}
    df = equations(tmp_path / "a")
    assert list(df.ppl) == sorted(df.ppl) and df.key.is_unique
    counts = cache_counts(tmp_path / "a")
    assert counts["eval"] + counts["mask"] + counts["key"] + counts["text"] + counts["error"] == len(a)
    assert "answered by caches" in format_table(tmp_path / "a")


class Killed(Exception):
    pass


def dies_after(inner, n: int):
    """An evaluate_many that is killed after ``n`` results (a SIGKILL in the middle of a generation)."""
    calls = {"n": 0}

    def dying(formulas):
        for res in inner(formulas):
            calls["n"] += 1
            if calls["n"] > n:
                raise Killed()
            yield res
    return dying


def test_resume_after_interruption_gives_the_same_result(tmp_path, evaluator_factory):
    full = run(tmp_path / "full", evaluator_factory, generations=4)
    dispatched = sum(r["hit"] in ("eval", "mask", "error") for r in read_evaluations(tmp_path / "full"))
    last_gen0 = max(i for i, r in enumerate(read_evaluations(tmp_path / "full")) if r["generation"] == 0)
    assert dispatched > 4
    # a run that dies in the middle of generation 3
    space = load_space(SPACE)
    space.raw["gp"]["generations"] = 4
    dying = dies_after(evaluator_factory(), dispatched - 2)

    with pytest.raises(Killed):
        Search(space, tmp_path / "cut", dying, progress=False).run()
    ckpt = json.loads((tmp_path / "cut" / "checkpoint.json").read_text())
    assert 0 <= ckpt["generation"] < 4 and last_gen0 >= 0
    resumed = run(tmp_path / "cut", evaluator_factory, resume=True, generations=4)
    assert resumed == full
    summary_full = json.loads((tmp_path / "full" / "summary.json").read_text())
    summary_cut = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary_full["best"]["formula"] == summary_cut["best"]["formula"]
    assert summary_full["best"]["ppl"] == summary_cut["best"]["ppl"]


def test_time_budget_stops_at_a_generation_boundary_and_resume_finishes_identically(tmp_path, evaluator_factory):
    full = run(tmp_path / "full", evaluator_factory, generations=3)
    space = load_space(SPACE)
    space.raw["gp"]["generations"] = 3
    ev = evaluator_factory()
    Search(space, tmp_path / "budget", ev, progress=False).run(max_seconds=0.0)  # spent after generation 0
    summary = json.loads((tmp_path / "budget" / "summary.json").read_text())
    assert summary["generations_done"] == 0 and summary["complete"] is False
    assert {r["generation"] for r in read_evaluations(tmp_path / "budget")} == {0}
    resumed = run(tmp_path / "budget", evaluator_factory, resume=True, generations=3)
    assert resumed == full
    assert json.loads((tmp_path / "budget" / "summary.json").read_text())["complete"] is True


def test_time_budget_is_a_ceiling_no_generation_starts_that_would_end_past_it(tmp_path, evaluator_factory,
                                                                               monkeypatch):
    """On a clock that advances 10 s per evaluated formula: with a budget of generation 0's end plus half its
    length, the old rule (stop once past the budget) would start generation 1 and end past the budget; the
    ceiling stops after generation 0. With exactly room for one more generation 0, generation 1 runs (and the
    run still ends within the budget)."""
    import prunerzero.search.engine as engine

    clock = {"t": 0.0}
    monkeypatch.setattr(engine.time, "time", lambda: clock["t"])
    inner = evaluator_factory()

    def ticking(formulas):
        for res in inner(formulas):
            clock["t"] += 10.0
            yield res

    space = load_space(SPACE)
    space.raw["gp"]["generations"] = 3
    ends = []
    checkpoint = Search._checkpoint
    monkeypatch.setattr(Search, "_checkpoint", lambda self, g, p: (ends.append(clock["t"]), checkpoint(self, g, p)))
    Search(space, tmp_path / "probe", ticking, progress=False).run()
    g0 = sum(r["hit"] in ("eval", "mask", "error") for r in read_evaluations(tmp_path / "probe")
             if r["generation"] == 0) * 10.0
    assert ends[1] - ends[0] <= g0 < ends[0] + g0 * 0.5   # generation 1 is no longer than 0 here
    for budget, at_least in ((ends[0] + 0.5 * g0, 0), (ends[0] + g0, 1)):
        clock["t"], ends[:] = 0.0, []
        Search(space, tmp_path / str(budget), ticking, progress=False).run(max_seconds=budget)
        summary = json.loads((tmp_path / str(budget) / "summary.json").read_text())
        assert (summary["generations_done"] == 0) == (at_least == 0) and clock["t"] <= budget


def test_new_search_refuses_a_used_directory(tmp_path, evaluator_factory):
    run(tmp_path / "r", evaluator_factory, generations=0)
    with pytest.raises(UserError, match="already holds a search"):
        run(tmp_path / "r", evaluator_factory, generations=0)


def test_errors_get_a_penalty_and_a_reason(evaluator_factory):
    ev = evaluator_factory()
    res = next(ev(["mul(mul(W, 1e30), 1e30)"]))
    assert res["hit"] == "error" and res["ppl"] == 1e5 and "NaN/Inf" in res["error"]


def test_mask_fingerprint_detects_equal_and_different_masks():
    m = {"a": torch.rand(7, 70) > 0.5, "b": torch.rand(3, 64) > 0.5}
    same = {k: v.clone() for k, v in m.items()}
    assert mask_fingerprint(m) == mask_fingerprint(same)
    same["a"][3, 69] = ~same["a"][3, 69]
    assert mask_fingerprint(m) != mask_fingerprint(same)


@pytest.mark.parametrize("raw,msg", [
    ({"unary": ["frob"]}, "unknown operation 'frob'"),
    ({"binary": ["abs"]}, "is not binary"),
    ({"terminals": ["Q"]}, "unknown terminal 'Q'"),
    ({"gp": {"population": 0}}, "gp.population must be >= 1"),
    ({"gp": {"popsize": 3}}, "unknown key 'gp.popsize'"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"fitness": {"eval_split": "test"}}, "use validation"),
    ({"init": {"min_depth": 5, "max_depth": 3}}, "min_depth"),
    ({"unary": ["abs"], "seed_population": ["wanda"]}, "outside this space"),
])
def test_space_validation(raw, msg):
    with pytest.raises(UserError, match=msg):
        validate(raw)


def test_shipped_spaces_load():
    from prunerzero.search.space import PACKAGED, packaged_spaces

    names = packaged_spaces()
    assert {"prunerzero", "cpu", "quick", "tiny", "extended"} <= set(names)
    assert sorted(p.stem for p in (REPO / "search_spaces").glob("*.yaml")) == names  # the checkout's link
    for name in names:
        assert load_space(name).path == str(PACKAGED / f"{name}.yaml")


def test_resume_before_the_first_checkpoint_restarts_and_matches(tmp_path, evaluator_factory, capsys):
    """Killed inside generation 0 (no checkpoint yet): --resume restarts it from its recorded settings, says so,
    and ends exactly as an uninterrupted run."""
    from prunerzero.search.engine import load_run_space, run_state

    full = run(tmp_path / "full", evaluator_factory, generations=2)
    space = load_space(SPACE)
    space.raw["gp"]["generations"] = 2
    dying = dies_after(evaluator_factory(), 2)

    with pytest.raises(Killed):
        Search(space, tmp_path / "cut", dying, progress=False).run()
    assert run_state(tmp_path / "cut") == "unstarted" and read_evaluations(tmp_path / "cut")
    recorded, meta = load_run_space(tmp_path / "cut")
    ev = evaluator_factory()
    Search(recorded, tmp_path / "cut", ev, meta, progress=False, on_resume=ev.preload).run(resume=True)
    assert "restarting it from generation 0" in capsys.readouterr().err
    assert [(r["generation"], r["formula"], r["ppl"]) for r in read_evaluations(tmp_path / "cut")] == full


def test_resume_after_a_torn_last_line_matches(tmp_path, evaluator_factory, capsys):
    full = run(tmp_path / "full", evaluator_factory, generations=2)
    run(tmp_path / "cut", evaluator_factory, generations=1)
    log = tmp_path / "cut" / "evaluations.jsonl"
    with log.open("a") as f:
        f.write('{"generation": 2, "formula": "mul(W, ')  # killed mid-write in generation 2
    resumed = run(tmp_path / "cut", evaluator_factory, resume=True, generations=2)
    assert resumed == full
    assert "torn last line" in capsys.readouterr().err


def test_insert_mutation_wraps_a_subtree_and_zero_weight_keeps_old_runs():
    """gp.mutation.insert puts a new primitive above a subtree (the subtree stays whole), and its default weight 0
    leaves the random draws of spaces that do not name it unchanged (old runs rerun and resume identically)."""
    import random

    from prunerzero.search.toolbox import build_pset, build_toolbox, to_individual

    space = validate({"terminals": ["W", "X"], "gp": {"mutation": {"uniform": 0, "node": 0, "shrink": 0,
                                                                  "insert": 1}}})
    pset = build_pset(space)
    tb = build_toolbox(space, pset)
    random.seed(3)
    grown = 0
    for _ in range(30):
        parent = [node.name for node in to_individual("mul(abs(W), X)", pset)]
        child = [node.name for node in tb.mutate(to_individual("mul(abs(W), X)", pset))[0]]
        rest = iter(child)   # the parent's nodes, in prefix order, are a subsequence of the child's: only added
        assert len(child) > len(parent) and all(name in rest for name in parent), child
        grown += len(child) - len(parent)
    assert grown >= 30
    from prunerzero.search.toolbox import _mutate

    default = validate({"terminals": ["W", "X"]})
    assert default.gp["mutation"] == {"uniform": 0.5, "node": 0.3, "shrink": 0.2, "insert": 0.0, "term": 0.0}
    pset = build_pset(default)
    tb = build_toolbox(default, pset)
    draws = []
    for weights in (default.gp["mutation"], {"uniform": 0.5, "node": 0.3, "shrink": 0.2}):  # the weights before
        random.seed(5)
        draws.append([str(_mutate(to_individual("mul(abs(W), sqrt(X))", pset), tb, pset, weights)[0])
                      for _ in range(40)])
    assert draws[0] == draws[1] and len(set(draws[0])) > 5


def test_term_mutation_adds_a_term_of_at_least_one_operation_next_to_a_subtree():
    """gp.mutation.term turns a subtree s into b(s, t) or b(t, s) with t a new term holding an operation (DEAP's
    insert only adds bare terminals): the parent's nodes stay in order, at least three nodes are added, and in a
    few draws from Wanda it reaches |W|·(√X + t) and a term on the W side."""
    import random

    from prunerzero.metric.expr import parse
    from prunerzero.search.toolbox import build_pset, build_toolbox, to_individual

    space = validate({"terminals": ["W", "X"], "unary": ["abs", "sqrt", "log"], "binary": ["add", "mul"],
                      "gp": {"mutation": {"uniform": 0, "node": 0, "shrink": 0, "term": 1}}})
    pset = build_pset(space)
    tb = build_toolbox(space, pset)
    random.seed(1)
    wanda = "mul(abs(W), sqrt(X))"
    parent = [node.name for node in to_individual(wanda, pset)]
    children = set()
    for _ in range(200):
        child = tb.mutate(to_individual(wanda, pset))[0]
        names = [node.name for node in child]
        rest = iter(names)
        assert len(names) >= len(parent) + 3 and all(name in rest for name in parent), names
        assert names.count("add") + names.count("mul") >= 2
        children.add(str(parse(str(child))))
    assert any(c.startswith("mul(abs(W), add(sqrt(X), ") or
               c.startswith("mul(abs(W), add(") and c.endswith(", sqrt(X)))") for c in children)
    assert any(c.startswith("mul(add(abs(W), ") or c.startswith("mul(mul(abs(W), ") for c in children)


def test_distinct_tournament_is_deaps_without_duplicates_and_demotes_repeats():
    """gp.distinct_parents: with every fitness distinct the tournaments are DEAP's, draw for draw; with a population
    crowded by one phenotype (8 copies of the best), its repeats stop winning most tournaments."""
    import random

    from deap import tools

    from prunerzero.search.toolbox import distinct_tournament, first_of_each_fitness
    from prunerzero.search.toolbox import build_pset, to_individual

    pset = build_pset(validate({"terminals": ["W", "X"]}))

    def population(values):
        pop = []
        for v in values:
            ind = to_individual("mul(abs(W), X)", pset)
            ind.fitness.values = (v,)
            pop.append(ind)
        return pop

    distinct = population([0.3, 0.1, 0.7, 0.2, 0.9, 0.5])
    random.seed(1)
    ours = distinct_tournament(distinct, 50, 3)
    random.seed(1)
    assert [id(i) for i in ours] == [id(i) for i in tools.selTournament(distinct, 50, 3)]
    crowded = population([1.0] * 8 + [2.0, 3.0, 4.0, 5.0])
    assert [i.fitness.values[0] for i in first_of_each_fitness(crowded)] == [1.0, 2.0, 3.0, 4.0, 5.0]
    random.seed(2)
    plain = sum(i.fitness.values[0] == 1.0 for i in tools.selTournament(crowded, 1000, 3))
    random.seed(2)
    winners = distinct_tournament(crowded, 1000, 3)
    assert plain > 900 and sum(i.fitness.values[0] == 1.0 for i in winners) < 550


def test_distinct_parents_search_is_deterministic_and_resumes_identically(tmp_path, evaluator_factory):
    a = run(tmp_path / "a", evaluator_factory, generations=3, distinct_parents=True)
    assert a == run(tmp_path / "b", evaluator_factory, generations=3, distinct_parents=True)
    assert a != run(tmp_path / "plain", evaluator_factory, generations=3)
    space = load_space(SPACE)
    space.raw["gp"].update(generations=3, distinct_parents=True)
    Search(space, tmp_path / "cut", evaluator_factory(), progress=False).run(max_seconds=0.0)
    assert run(tmp_path / "cut", evaluator_factory, resume=True, generations=3, distinct_parents=True) == a


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_distinct_parents_must_be_a_boolean(value):
    with pytest.raises(UserError, match="gp.distinct_parents must be true or false"):
        validate({"gp": {"distinct_parents": value}})
