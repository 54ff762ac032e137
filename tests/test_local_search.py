"""The local search (gp.local): a fixed neighbourhood around the best full-fidelity candidates, evaluated through
the engine's caches; deterministic, resumable, validated."""
import json

import pytest

from prunerzero.errors import UserError
from prunerzero.metric.expr import parse
from prunerzero.metric.known import KNOWN_METRICS
from prunerzero.metric.simplify import simplify
from prunerzero.search.engine import Search, read_evaluations
from prunerzero.search.space import validate
from prunerzero.search import table
from prunerzero.search.table import equations, format_table, local_counts
from prunerzero.search.toolbox import local_terms, neighbours

GBLM = "mul(add(G, sqrt(X)), abs(W))"               # GBLM as the GPU search's generation 0 wrote it
WINNER = "mul(add(abs(log(X)), sqrt(X)), abs(W))"   # the GPU search's find, one leaf away from GBLM
# the seed gblm (|W|·√X + |W|·|G|) as the search simplifies it, and the find one leaf away from that form
GBLM_SEED = "add(mul(G, abs(W)), mul(abs(W), sqrt(X)))"
FIND = "add(mul(abs(log(X)), abs(W)), mul(abs(W), sqrt(X)))"


def space(**gp):
    return validate({"terminals": ["W", "X", "G"], "unary": ["abs", "sqr", "sqrt", "log", "exp", "mms", "zsn"],
                     "binary": ["add", "mul", "div"], "limits": {"max_depth": 7, "max_size": 24},
                     "gp": {"population": 6, "generations": 2, "elites": 1, "seed": 0, **gp},
                     "seed_population": ["wanda", "gblm"]})


def one_leaf_apart(a, b) -> bool:
    """Whether ``b`` is ``a`` with at most one leaf replaced by some term (everything else the same)."""
    if not a.children:
        return True
    if a.op != b.op or len(a.children) != len(b.children):
        return False
    diff = [(x, y) for x, y in zip(a.children, b.children) if x != y]
    return len(diff) <= 1 and all(one_leaf_apart(x, y) for x, y in diff)


def test_leaf_neighbourhood_of_gblm_holds_the_gpu_find_and_only_legal_distinct_formulas():
    sp = space()
    hood = neighbours(GBLM, sp, 2, ["leaf"])
    assert WINNER in hood and GBLM not in hood
    assert len(hood) == len(set(hood)) == 207
    assert hood == neighbours(GBLM, sp, 2, ["leaf"])        # no RNG: the same list every time
    for text in hood:
        node = parse(text)
        assert sp.allows(node) and node.depth <= 7 and node.size <= 24
        assert one_leaf_apart(parse(GBLM), node)
    # depth 1: only terminals replace leaves (3 leaves x 2 other terminals)
    assert len(neighbours(GBLM, sp, 1, ["leaf"])) == 6


def test_local_terms_add_the_magnitude_of_terms_that_can_be_negative():
    terms = [str(t) for t in local_terms(space(), 2)]
    assert terms[:3] == ["W", "X", "G"]
    assert terms.index("abs(log(X))") == terms.index("log(X)") + 1
    assert "abs(sqrt(X))" not in terms and "abs(mms(W))" not in terms   # already non-negative
    no_abs = validate({"terminals": ["W", "X"], "unary": ["log"], "binary": ["mul"]})
    assert [str(t) for t in local_terms(no_abs, 2)] == ["W", "X", "log(W)", "log(X)", "mul(W, W)", "mul(W, X)",
                                                          "mul(X, W)", "mul(X, X)"]


def test_local_terms_without_binary_operations():
    sp = space()
    unary = [str(t) for t in local_terms(sp, 2, binary=False)]
    assert unary == [str(t) for t in local_terms(sp, 2) if t.op not in ("add", "mul", "div")
                     and not (t.op == "abs" and t.children[0].op in ("add", "mul", "div"))]
    assert "abs(log(X))" in unary and len(unary) == 3 + 21 + 6
    hood = neighbours(GBLM_SEED, sp, 2, ["leaf"], binary=False)
    assert FIND in hood and set(hood) < set(neighbours(GBLM_SEED, sp, 2, ["leaf"]))


def test_wrap_neighbourhood_and_limits():
    sp = space()
    wraps = neighbours("mul(log(X), abs(W))", sp, 2, ["wrap"])
    assert "mul(abs(log(X)), abs(W))" in wraps and "abs(mul(log(X), abs(W)))" in wraps
    assert "mul(log(X), abs(abs(W)))" in wraps
    tight = validate({**sp.raw, "init": {"min_depth": 2, "max_depth": 3}, "limits": {"max_depth": 3, "max_size": 24}})
    assert all(parse(t).depth <= 3 for t in neighbours(GBLM, tight, 2))
    assert len(neighbours(GBLM, tight, 2)) < len(neighbours(GBLM, sp, 2))


class Planted:
    """An evaluate_many whose optimum is the GPU find (ppl 1) and GBLM second (ppl 2); every other formula
    scores 10 plus its size. Masks are identified by the ranking key (equal keys, equal masks)."""

    def __init__(self):
        self.calls = []

    def __call__(self, formulas):
        for f in formulas:
            self.calls.append(f)
            key = simplify(f).key
            ppl = 1.0 if key == simplify(FIND).key else 2.0 if key == simplify(GBLM_SEED).key else 10.0 + parse(f).size
            yield {"ppl": ppl, "seconds": 0.0, "hit": "eval", "fingerprint": key}


def test_local_search_finds_a_leaf_neighbour_of_a_seed_and_makes_it_the_elite(tmp_path):
    sp = space(generations=1, local={"moves": ["leaf"], "max": 1000})
    ev = Planted()
    Search(sp, tmp_path / "a", ev, progress=False).run()
    recs = read_evaluations(tmp_path / "a")
    local = [r for r in recs if r.get("origin")]
    assert simplify(KNOWN_METRICS["gblm"].formula).text == GBLM_SEED
    assert {r["origin"] for r in local if r["generation"] == 0} == {f"local:{simplify(GBLM_SEED).key}"}
    assert [r["generation"] for r in local if r["formula"] == FIND] == [0]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["best"]["formula"] == FIND and summary["best"]["ppl"] == 1.0
    ckpt = json.loads((tmp_path / "a" / "checkpoint.json").read_text())
    assert FIND in ckpt["population"]             # an elite from generation 1 on (the local step's best)
    assert len(ckpt["expanded"]) == 2             # one candidate expanded per generation
    # without the local step, the same GP never meets it
    plain = Planted()
    Search(space(generations=1), tmp_path / "plain", plain, progress=False).run()
    assert FIND not in plain.calls


def test_local_search_expands_the_best_first_and_is_capped_by_a_seeded_hash(tmp_path):
    ev = Planted()
    Search(space(local={"max": 20}), tmp_path / "a", ev, progress=False).run(max_seconds=0.0)   # generation 0
    recs = read_evaluations(tmp_path / "a")
    local = [r for r in recs if r.get("origin")]
    assert {r["origin"] for r in local} == {f"local:{simplify(GBLM_SEED).key}"}   # generation 0's best
    assert len(local) == 20
    ev2 = Planted()
    Search(space(local={"max": 20}), tmp_path / "b", ev2, progress=False).run(max_seconds=0.0)
    assert [r["formula"] for r in read_evaluations(tmp_path / "b")] == [r["formula"] for r in recs]
    other = Planted()
    Search(space(local={"max": 20}, seed=1), tmp_path / "c", other, progress=False).run(max_seconds=0.0)
    assert {r["formula"] for r in read_evaluations(tmp_path / "c") if r.get("origin")} != {r["formula"] for r in local}


def test_local_search_run_is_deterministic_and_resumes_identically(tmp_path):
    sp = space(generations=3, local={"max": 15})
    Search(sp, tmp_path / "full", Planted(), progress=False).run()
    full = [(r["generation"], r["formula"], r["ppl"]) for r in read_evaluations(tmp_path / "full")]
    Search(space(generations=3, local={"max": 15}), tmp_path / "cut", Planted(), progress=False).run(max_seconds=0.0)
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["generations_done"] == 0
    Search(space(generations=3, local={"max": 15}), tmp_path / "cut", Planted(), progress=False).run(resume=True)
    assert [(r["generation"], r["formula"], r["ppl"]) for r in read_evaluations(tmp_path / "cut")] == full
    assert json.loads((tmp_path / "cut" / "checkpoint.json").read_text())["expanded"] == \
        json.loads((tmp_path / "full" / "checkpoint.json").read_text())["expanded"]


@pytest.mark.parametrize("local, msg", [
    ("yes", "gp.local must be a mapping"),
    ({"radius": 2}, "unknown key 'gp.local.radius'"),
    ({"depth": 3}, "gp.local.depth must be 1"),
    ({"top": 0}, "gp.local.top"),
    ({"max": 0}, "gp.local.max"),
    ({"moves": ["leaf", "swap"]}, "gp.local.moves must list leaf and/or wrap"),
    ({"moves": []}, "gp.local.moves must list leaf and/or wrap"),
    ({"binary": "no"}, "gp.local.binary must be true or false"),
])
def test_gp_local_is_validated(local, msg):
    with pytest.raises(UserError, match=msg):
        validate({"gp": {"local": local}})


def test_gp_local_defaults():
    assert validate({"gp": {"local": {}}}).gp["local"] == {"top": 1, "depth": 2, "moves": ["leaf", "wrap"],
                                                          "max": 200, "binary": True}
    assert validate({}).gp["local"] is None


def test_table_says_which_rows_the_local_search_found(tmp_path, monkeypatch):
    Search(space(generations=1, local={"moves": ["leaf"], "max": 1000}), tmp_path, Planted(), progress=False).run()
    df = equations(tmp_path, top=None)
    assert df.iloc[0]["formula"] == FIND and df.iloc[0]["found_by"] == "local"
    assert set(df["found_by"]) == {"local", "gp"}
    counts = local_counts(tmp_path)
    assert counts["expanded"] == 2 and counts["evaluated"] <= counts["candidates"]
    assert counts["candidates"] == sum(1 for r in read_evaluations(tmp_path) if r.get("origin"))
    reads = []
    real = table.read_evaluations
    monkeypatch.setattr(table, "read_evaluations", lambda run: reads.append(run) or real(run))
    shown = format_table(tmp_path)   # the table and both counts from one read of the log
    assert f"local search: {counts['candidates']} of the candidates were neighbours of 2 expanded" in shown
    assert reads == [tmp_path]
    plain = tmp_path / "plain"
    Search(space(generations=1), plain, Planted(), progress=False).run()
    assert "found_by" not in equations(plain).columns and "local search" not in format_table(plain)
