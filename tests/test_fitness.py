"""Fitness over settings x models, relative to a reference metric, with successive-halving fidelities."""
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import REPO, make_tiny, tiny_config
from prunerzero.calibration import activation_stats, gradient_stats
from prunerzero.cli import main
from prunerzero.errors import UserError
from prunerzero.prune.masks import Pattern
from prunerzero.search.engine import FIDELITY_GAP, Search, combine_scores, read_evaluations
from prunerzero.search.fitness import FitnessEvaluator
from prunerzero.search.space import load_space, validate
from prunerzero.search.table import equations, format_table
from prunerzero.search.toolbox import to_individual
from prunerzero.search.workers import InProcess

WANDA = "mul(abs(W), sqrt(X))"
REPO = Path(__file__).resolve().parents[1]


def tiny_space(**fitness):
    raw = load_space("tiny").raw
    raw["fitness"].update(settings=None, models=None)
    raw["fitness"].update(fitness)
    for k in ("sparsity", "pattern", "group"):
        if raw["fitness"].get("settings"):
            raw["fitness"].pop(k)
    return validate(raw)


def h(text: str) -> float:
    return int(hashlib.sha1(text.encode()).hexdigest()[:6], 16) / 0xFFFFFF


class Fake:
    """evaluate_many without tensors: a perplexity per part from a table or a hash of (formula, part, windows)."""

    def __init__(self, labels, table=None, drift=False):
        self.labels, self.table, self.drift = labels, table or {}, drift
        self.calls = []

    def __call__(self, formulas, windows=None):
        for f in formulas:
            self.calls.append((f, windows))
            if f in self.table:
                ppls = dict(self.table[f])
            else:
                ppls = {lb: 20 + 10 * h(f"{f}|{lb}") + (0 if windows is None else 3 * h(f"{f}{windows}"))
                        for lb in self.labels}
            if self.drift and f == WANDA:   # a reference measured twice would not give the same numbers
                ppls = {lb: p + len(self.calls) for lb, p in ppls.items()}
            parts = {lb: hashlib.sha1(f"{f}|{lb}".encode()).hexdigest() for lb in self.labels}
            yield {"ppl": math.exp(sum(map(math.log, ppls.values())) / len(ppls)), "seconds": 0.0, "hit": "eval",
                   "fingerprint": "+".join(parts.values()), "ppls": ppls, "parts": parts, "windows": windows}


# ------------------------------------------------------------------------------------------ combination
def test_combination_over_models_does_not_rank_a_one_model_winner_first(tmp_path):
    """A formula best on one model and worst on the other loses to a formula slightly worse than the reference
    on both, under mean and under worst."""
    a, b = "m1|u0.5-row", "m2|u0.5-row"
    table = {WANDA: {a: 10.0, b: 10.0},
             "abs(W)": {a: 5.0, b: 30.0},             # best on m1, worst on m2
             "sqrt(abs(W))": {a: 11.0, b: 11.0},      # 10% worse than the reference on both
             "mul(abs(W), X)": {a: 12.0, b: 25.0}}
    assert combine_scores(table["abs(W)"], table[WANDA]) == pytest.approx((math.log(.5) + math.log(3)) / 2)
    assert combine_scores(table["abs(W)"], table[WANDA], "worst") == pytest.approx(math.log(3))
    assert combine_scores(table[WANDA], table[WANDA]) == 0.0
    for how in ("mean", "worst"):
        space = tiny_space(models=["m1", "m2"], combine=how)
        search = Search(space, tmp_path / how, Fake([a, b], table), progress=False)
        search.files.root.mkdir()
        search._references(reuse=False)
        inds = [to_individual(t, search.pset) for t in ("abs(W)", "sqrt(abs(W))", "mul(abs(W), X)")]
        search.evaluate(inds, 0)
        assert search.best(1)[0]["formula"] == "sqrt(abs(W))"
        recs = {r["formula"]: r for r in read_evaluations(tmp_path / how)}
        assert recs["sqrt(abs(W))"]["score"] == pytest.approx(math.log(1.1))
        assert recs["abs(W)"]["ppls"] == table["abs(W)"]
        assert json.loads((tmp_path / how / "references.json").read_text())["levels"]["0"]["ppls"] == table[WANDA]


def test_calibration_seeds_are_repeats_averaged_before_the_combination():
    """Parts that differ only in the calibration seed are averaged (each against the reference at its own seed)
    before mean / worst combine the settings: worst is the worse setting's seed mean, not the worst single part."""
    u0, u1, n0, n1 = "m|seed0|u0.5-row", "m|seed1|u0.5-row", "m|seed0|2of4", "m|seed1|2of4"
    ref = {u0: 10.0, u1: 20.0, n0: 100.0, n1: 100.0}
    cand = {u0: 9.0, u1: 22.0, n0: 80.0, n1: 90.0}
    u, n = (math.log(.9) + math.log(1.1)) / 2, (math.log(.8) + math.log(.9)) / 2
    assert combine_scores(cand, ref, "worst") == pytest.approx(max(u, n))
    assert max(u, n) < math.log(1.1)
    assert combine_scores(cand, ref) == pytest.approx((u + n) / 2)
    # two models, one seed each (no "|seed" in their labels): not averaged together
    two = {"m1|u0.5-row": 9.0, "m2|u0.5-row": 22.0}
    assert combine_scores(two, {"m1|u0.5-row": 10.0, "m2|u0.5-row": 20.0}, "worst") == pytest.approx(math.log(1.1))


def test_margin_is_the_tables_verdict_in_log_units(tmp_path):
    """``combine: margin``: per setting, seed mean of the log ratio plus both seed spreads of log ppl, worst over
    settings. A formula with the lower mean but a wide spread loses to a steady one, as the results tables'
    verdict ('better only by more than both spreads') would have it; a steady win everywhere scores below 0."""
    labels = [f"m|seed{s}|{st}" for st in ("u0.5-row", "2of4") for s in (0, 1, 2)]

    def ppls(u, n):
        return dict(zip(labels, list(u) + list(n)))

    ref = ppls([10.0, 10.2, 9.9], [100.0, 104.0, 98.0])
    noisy = ppls([8.8, 10.4, 9.0], [72.0, 104.0, 84.0])     # lower means, wide spreads
    steady = ppls([9.6, 9.8, 9.5], [88.0, 91.0, 87.0])      # smaller gains, every seed
    import statistics as st

    def margin(c, r):
        lc, lr = [math.log(v) for v in c], [math.log(v) for v in r]
        return st.mean(lc) - st.mean(lr) + st.stdev(lc) + st.stdev(lr)

    want = max(margin([noisy[lb] for lb in labels[:3]], [ref[lb] for lb in labels[:3]]),
               margin([noisy[lb] for lb in labels[3:]], [ref[lb] for lb in labels[3:]]))
    assert combine_scores(noisy, ref, "margin") == pytest.approx(want)
    assert combine_scores(noisy, ref) < combine_scores(steady, ref)             # the mean prefers the noisy one
    assert combine_scores(steady, ref, "margin") < 0 < combine_scores(noisy, ref, "margin")
    assert combine_scores(ref, ref, "margin") > 0                               # twice the reference's own spread
    space = tiny_space(calib_seed=[0, 1, 2], combine="margin")
    search = Search(space, tmp_path / "run", Fake(labels, {WANDA: ref, "abs(W)": noisy, "sqrt(abs(W))": steady}),
                    progress=False)
    search.files.root.mkdir()
    search._references(reuse=False)
    search.evaluate([to_individual(t, search.pset) for t in ("abs(W)", "sqrt(abs(W))")], 0)
    assert search.best(1)[0]["formula"] == "sqrt(abs(W))"
    with pytest.raises(UserError, match="calib_seed"):
        tiny_space(combine="margin")


def test_fitness_with_several_calibration_seeds(tiny_model_dir, tmp_path):
    """``fitness.calib_seed: [0, 1]``: one target per seed with that seed's statistics and the model's one set of
    weights; each seed's parts measure exactly what a one-seed evaluator of that seed measures, and the dense
    weights are restored after every part."""
    from prunerzero.search.workers import build_evaluator

    model = str(tiny_model_dir)
    raw = load_space("tiny").raw
    raw["fitness"].update(model=model, models=None, seqlen=64, nsamples=4, eval_windows=2, device="cpu", calib_seed=[0, 1],
                          settings=[{"sparsity": 0.5}, {"pattern": "2:4"}])
    for k in ("sparsity", "pattern", "group"):
        raw["fitness"].pop(k)
    space = validate(raw)
    cache = tmp_path / "cache"
    both = build_evaluator(space.fitness, space.raw["terminals"], cache=cache, progress=False)
    assert [t.name for t in both.targets] == [f"{model}|seed0", f"{model}|seed1"]
    assert both.targets[1].snapshot is both.targets[0].snapshot and both.targets[1].linears is both.linears
    key = next(iter(both.linears))
    assert not torch.equal(both.targets[0].stats.env(key, both.linears[key].weight)["G"],
                           both.targets[1].stats.env(key, both.linears[key].weight)["G"])
    dense = {k: lin.weight.clone() for k, lin in both.linears.items()}
    res = both(WANDA)
    assert set(res.ppls) == {f"{model}|seed{s}|{slug}" for s in (0, 1) for slug in ("u0.5-row", "2of4")}
    assert all(torch.equal(lin.weight, dense[k]) for k, lin in both.linears.items())
    one = build_evaluator({**space.fitness, "calib_seed": 1}, space.raw["terminals"], cache=cache, progress=False)
    alone = one(WANDA)
    assert {f"{model}|seed1|{lb.split('|')[-1]}": p for lb, p in alone.ppls.items()} == \
        {lb: p for lb, p in res.ppls.items() if "|seed1|" in lb}
    assert res.ppls[f"{model}|seed0|2of4"] != res.ppls[f"{model}|seed1|2of4"]
    # a fidelity of one seed: the first seed's parts only, exactly as measured with both
    first = both(WANDA, seeds=1)
    assert first.ppls == {lb: p for lb, p in res.ppls.items() if "|seed0|" in lb} and first.seeds == 1
    assert both("mul(abs(W), X)", 1, seeds=1).ppls.keys() == first.ppls.keys()


def test_fitness_with_a_bos_per_window(tiny_model_dir, tmp_path):
    """``fitness.bos: window``: the fitness windows and the calibration statistics both open every window with
    BOS (statistics of their own in the cache), and the same formula scores otherwise than with Wanda's windows."""
    from prunerzero.search.workers import build_evaluator

    raw = load_space("tiny").raw
    raw["fitness"].update(model=str(tiny_model_dir), models=None, seqlen=64, nsamples=2, eval_windows=2,
                          device="cpu", bos="window")
    space = validate(raw)
    cache = tmp_path / "cache"
    window = build_evaluator(space.fitness, space.raw["terminals"], cache=cache, progress=False)
    stream = build_evaluator({**space.fitness, "bos": "stream"}, space.raw["terminals"], cache=cache, progress=False)
    from transformers import AutoTokenizer

    bos = AutoTokenizer.from_pretrained(tiny_model_dir).bos_token_id
    assert (window.targets[0].windows[:, 0] == bos).all() and not (stream.targets[0].windows[:, 0] == bos).all()
    assert window.targets[0].stats.meta["windows_sha1"] != stream.targets[0].stats.meta["windows_sha1"]
    assert window(WANDA).ppls != stream(WANDA).ppls


def test_real_settings_score_the_reference_zero(tmp_path):
    """Two settings (50% per row and 2:4) on a tiny random model: per-setting perplexities in every record, and
    the reference formula itself scores exactly 0 (its masks are answered by the reference's)."""
    model = make_tiny(layers=1)
    g = torch.Generator().manual_seed(1)
    calib = torch.randint(0, 256, (4, 32), generator=g)
    stats = activation_stats(model, calib, progress=False).merged(gradient_stats(model, calib, progress=False))
    ev = InProcess(FitnessEvaluator(model, stats, [Pattern(0.5, "row"), Pattern(n=2, m=4)],
                                    torch.randint(0, 256, (2, 32), generator=g), name="tiny"))
    space = tiny_space(settings=[{"sparsity": 0.5}, {"pattern": "2:4"}])
    space.raw["gp"].update(generations=1, population=6)
    Search(space, tmp_path, ev, progress=False).run()
    recs = read_evaluations(tmp_path)
    assert all(set(r["ppls"]) == {"tiny|u0.5-row", "tiny|2of4"} for r in recs if r["hit"] != "error")
    wanda = [r for r in recs if r["formula"] == WANDA][0]
    assert wanda["score"] == 0.0 and wanda["hit"] == "mask"
    table = format_table(tmp_path)
    assert "ppl[u0.5-row]" in table and "ppl[2of4]" in table and "score" in table


def test_parts_scored_one_by_one_merge_into_the_whole_result():
    """What the Ray pool does with a candidate of several parts (two calibration seeds x 50% and 2:4): scoring each
    part alone (``only``) and merging gives the one call's result, field for field except seconds: perplexities,
    fingerprints in part order, the hit (eval, then mask on a second call), low fidelity with one seed, and a
    formula error (the first part's, as the one call stops there)."""
    from dataclasses import asdict

    from prunerzero.search.fitness import merge_results

    model = make_tiny(layers=1)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randint(0, 256, (4, 32), generator=g) for _ in range(2)]
    stats = [activation_stats(model, c, progress=False) for c in calib]
    windows = torch.randint(0, 256, (3, 32), generator=g)

    def evaluator():
        ev = FitnessEvaluator(model, stats[0], [Pattern(0.5, "row"), Pattern(n=2, m=4)], windows, name="m|seed0")
        ev.add_model("m|seed1", model, stats[1], windows)
        return ev

    whole, split = evaluator(), evaluator()
    assert split.part_labels() == ["m|seed0|u0.5-row", "m|seed0|2of4", "m|seed1|u0.5-row", "m|seed1|2of4"]
    assert split.part_labels(1) == ["m|seed0|u0.5-row", "m|seed0|2of4"]
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    hits = []
    for formula, win, seeds in [(WANDA, None, None), ("mul(sqr(W), X)", 1, 1), (WANDA, None, None),
                                ("mul(W, ", None, None)]:
        one = asdict(whole(formula, win, seeds))
        merged = merge_results([asdict(split(formula, win, seeds, [lb])) for lb in split.part_labels(seeds)])
        assert drop(merged) == drop(one) and list(merged["ppls"] or ()) == list(one["ppls"] or ())
        hits.append(merged["hit"])
    assert hits == ["eval", "eval", "mask", "error"]
    assert one["error"] and not merged["ppls"]


# ------------------------------------------------------------------------------------------ fidelity
FID = {"windows": [1, 2, None], "keep": 0.5}
LABELS = ["smollm2|u0.5-row"]


def fid_run(root, fake, generations=3, population=10, **fid):
    space = tiny_space(fidelity={**FID, **fid}, eval_windows=4)
    space.raw["gp"].update(generations=generations, population=population)
    space.raw["seed_population"], space.seeds = ["magnitude"], ["abs(W)"]
    Search(space, root, fake, progress=False).run()
    return read_evaluations(root)


def test_fidelity_promotion_is_deterministic_and_the_table_ranks_full_fidelity_only(tmp_path):
    a = fid_run(tmp_path / "a", Fake(LABELS))
    b = fid_run(tmp_path / "b", Fake(LABELS))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b]
    for gen in {r["generation"] for r in a}:
        new = [r for r in a if r["generation"] == gen and r["hit"] == "eval" and "audit" not in r]
        reached = [r["level"] for r in new]
        n1 = math.ceil(0.5 * len(new))
        assert reached.count(0) == len(new) - n1 and reached.count(2) == math.ceil(0.5 * n1)
        assert all(len(r["stages"]) == r["level"] + 1 for r in new)
        assert [r["fidelity"] for r in new if r["level"] == 2] == [None] * reached.count(2)
        # selection compares like with like: every promoted candidate ranks before every one not promoted
        top = max(r["fitness"] for r in new if r["level"] == 2)
        assert all(r["fitness"] > top for r in new if r["level"] < 2)
        assert all(r["fitness"] == r["score"] + FIDELITY_GAP * (2 - r["level"]) for r in new)
    df = equations(tmp_path / "a", None)
    full = {r["key"] for r in a if r.get("fidelity") is None and r["hit"] != "error"}
    assert set(df.key) == full and list(df.score) == sorted(df.score)
    # the fidelity audit scores a sample at every level without changing the search
    c = fid_run(tmp_path / "c", Fake(LABELS), audit=0.5)
    assert [(r["formula"], r["fitness"]) for r in c] == [(r["formula"], r["fitness"]) for r in a]
    assert any(len(r.get("stages", [])) == 3 and r["level"] < 2 for r in c)


class SeedFake(Fake):
    """A Fake over calibration seeds: ``seeds=k`` answers the parts of the first k seeds only."""

    def __call__(self, formulas, windows=None, seeds=None):
        for res in super().__call__(formulas, windows):
            keep = [lb for lb in self.labels if seeds is None or int(lb.split("|seed")[1][0]) < seeds]
            ppls = {lb: res["ppls"][lb] for lb in keep}
            yield {**res, "ppls": ppls, "parts": {lb: res["parts"][lb] for lb in keep},
                   "ppl": math.exp(sum(map(math.log, ppls.values())) / len(ppls)), "seeds": seeds}


def test_fidelity_over_seeds_scores_low_levels_on_the_first_seed_against_the_reference_there(tmp_path):
    """``fidelity.seeds: [1, null]``: the first level scores seed 0's parts against the reference's seed-0 parts,
    the full level every seed; promotion and ranking are as with windows alone."""
    labels = [f"m|seed{s}|{st}" for s in (0, 1, 2) for st in ("u0.5-row", "2of4")]
    fake = SeedFake(labels)
    space = tiny_space(fidelity={"windows": [1, None], "seeds": [1, None], "keep": 0.5}, eval_windows=4,
                       calib_seed=[0, 1, 2])
    space.raw["gp"].update(generations=2, population=8)
    Search(space, tmp_path, fake, progress=False).run()
    refs = json.loads((tmp_path / "references.json").read_text())["levels"]
    assert set(refs["0"]["ppls"]) == set(labels[:2]) and set(refs["1"]["ppls"]) == set(labels)
    recs = [r for r in read_evaluations(tmp_path) if r["hit"] == "eval" and "audit" not in r]
    assert {len(r["stages"]) for r in recs} == {1, 2}
    for r in recs:
        low = r["stages"][0]
        assert low["seeds"] == 1 and set(low["ppls"]) == set(labels[:2])
        assert low["score"] == pytest.approx(combine_scores(low["ppls"], refs["0"]["ppls"]))
        if r["level"] == 1:
            assert r["stages"][1]["seeds"] is None and set(r["ppls"]) == set(labels)
            assert r["score"] == pytest.approx(combine_scores(r["ppls"], refs["1"]["ppls"]))


    # the fidelity report charges each stage its own parts (2 at the one-seed level, 6 at the full one)
    import sys
    sys.path.insert(0, str(REPO / "benchmarks"))
    from fidelity import report_rows

    summary = report_rows(tmp_path)[-1]
    every = [r for r in read_evaluations(tmp_path) if r.get("stages") and "audit" not in r]
    assert summary["flat"] == len(every) * 4 * 6
    assert summary["spent"] == sum(1 * 2 + (4 * 6 if r["level"] == 1 else 0) for r in every)
    assert "seeds [1, None]" in summary["windows"]
    # references.json records the seeds per level; a resume against other seeds is refused
    path = tmp_path / "references.json"
    data = json.loads(path.read_text())
    assert [lv["seeds"] for lv in data["levels"].values()] == [1, None]
    data["levels"]["0"]["seeds"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="does not match this run's fitness settings"):
        Search(space, tmp_path, fake, progress=False).run(resume=True)


class Killed(Exception):
    pass


def test_resume_reuses_the_references_and_equals_an_uninterrupted_run(tmp_path):
    full = fid_run(tmp_path / "full", Fake(LABELS, drift=True))
    inner = Fake(LABELS, drift=True)

    def dying(formulas, windows=None):
        for res in inner(formulas, windows):
            if len(inner.calls) > 30:
                raise Killed()
            yield res

    with pytest.raises(Killed):
        fid_run(tmp_path / "cut", dying)
    refs = (tmp_path / "cut" / "references.json").read_text()
    space = load_space("tiny")   # replaced by the recorded one below
    from prunerzero.search.engine import load_run_space

    space, meta = load_run_space(tmp_path / "cut")
    again = Fake(LABELS, drift=True)
    Search(space, tmp_path / "cut", again, meta, progress=False).run(resume=True)
    assert (tmp_path / "cut" / "references.json").read_text() == refs
    assert WANDA not in [f for f, _ in again.calls]   # the reference was not measured again
    strip = lambda recs: [{k: v for k, v in r.items() if k != "seconds"} for r in recs]  # noqa: E731
    assert strip(read_evaluations(tmp_path / "cut")) == strip(full)


# ------------------------------------------------------------------------------------------ bad YAML
@pytest.mark.parametrize("fitness,msg", [
    ({"settings": [{"sparsity": 0.5, "colour": 1}]}, r"unknown key 'fitness.settings\[0\].colour'"),
    ({"settings": []}, "must be a list of settings"),
    ({"settings": [{"pattern": "2:4", "sparsity": 0.7}]}, "does not apply to the N:M"),
    ({"settings": [{"sparsity": 0.5}, {"sparsity": 0.5}]}, "repeats the setting"),
    ({"settings": [{"sparsity": 0.5, "sequential": True}]}, "sequential: true is not implemented"),
    ({"settings": [{"sparsity": 1.5}]}, "sparsity"),
    ({"settings": [{"pattern": "2:4"}], "sparsity": 0.6}, "are both given"),
    ({"models": []}, "fitness.models must be a list"),
    ({"models": ["a", "a"]}, "names a model twice"),
    ({"combine": "median"}, "use mean, worst or margin"),
    ({"reference": "frobnicate(W"}, "neither a known metric"),
    ({"fidelity": {"windows": [2, 8]}}, "ending with null"),
    ({"fidelity": {"windows": [8, 2, None]}}, "must increase"),
    ({"fidelity": {"windows": [2, 8, None]}, "eval_windows": 4}, "must stay below fitness.eval_windows"),
    ({"fidelity": {"windows": [2, None], "keep": 0}}, "fitness.fidelity.keep"),
    ({"fidelity": {"windows": [2, None], "rungs": 3}}, "unknown key 'fitness.fidelity.rungs'"),
    ({"fidelity": [2, None]}, "must be a mapping"),
    ({"fidelity": {"windows": [2, None], "seeds": [1, None]}}, "needs several calibration seeds"),
    ({"fidelity": {"windows": [2, None], "seeds": [1]}, "calib_seed": [0, 1]}, "seed count per fidelity level"),
    ({"fidelity": {"windows": [2, None], "seeds": [2, None]}, "calib_seed": [0, 1]}, "must stay below the 2"),
    ({"fidelity": {"windows": [1, 2, None], "seeds": [2, 1, None]}, "calib_seed": [0, 1, 2]}, "must not decrease"),
    ({"fidelity": {"windows": [2, None], "seeds": [0, None]}, "calib_seed": [0, 1]}, "fidelity.seeds"),
])
def test_bad_fitness_keys_are_refused(fitness, msg):
    with pytest.raises(UserError, match=msg):
        validate({"fitness": fitness})


def test_reference_outside_the_terminals_is_refused():
    with pytest.raises(UserError, match="reads X"):
        validate({"terminals": ["W"], "unary": ["abs"], "binary": ["mul"], "seed_population": [],
                  "fitness": {"reference": "wanda"}})


def test_bad_fitness_yaml_is_one_line_before_a_model_loads(tmp_path, capsys, monkeypatch):
    import prunerzero.search.workers as workers

    monkeypatch.setattr(workers, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nfitness: {fidelity: {windows: [2, 8], keep: 0.5}}\n")
    assert main(["search", "--space", str(bad), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "ending with null" in err[0]


def test_shipped_multi_setting_spaces():
    cpu, p70 = load_space("cpu").fitness, load_space(REPO / "studies" / "prunerzero70" / "space.yaml").fitness
    assert [s["pattern"] for s in cpu["settings"]] == ["unstructured", "2:4"]
    assert [s["sparsity"] for s in p70["settings"]] == [0.5, 0.5, 0.7]
    old = validate({"fitness": {"sparsity": 0.6, "group": "layer"}}).fitness   # the one-setting keys still load
    assert old["settings"] is None and old["models"] == ["smollm2"]


# ------------------------------------------------------------------------------------------ --model
@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prunerzero.models import resolve_model_source

    tok = AutoTokenizer.from_pretrained(resolve_model_source("smollm2"))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("qwen2", 2, len(tok)))
    out = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_search_model_runs_a_non_llama_family_end_to_end(qwen2_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "--space", "tiny", "--out", str(out), "--model", str(qwen2_dir), "--seqlen", "64",
                 "--nsamples", "4", "--eval-windows", "2", "--device", "cpu", "--generations", "1",
                 "--population", "4", "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    recs = read_evaluations(out)
    assert recs and all(list(r["ppls"]) == [f"{qwen2_dir}|u0.5-row"] for r in recs if r["hit"] != "error")
    cfg = json.loads((out / "config.json").read_text())["space"]["fitness"]
    assert cfg["models"] == [str(qwen2_dir)]
    assert "score" in capsys.readouterr().out
    # --max-minutes counts the model and statistics: a budget they spend is refused before any generation,
    # and nothing is written
    spent = tmp_path / "spent"
    assert main(["search", "--space", "tiny", "--out", str(spent), "--model", str(qwen2_dir), "--seqlen", "64",
                 "--nsamples", "4", "--eval-windows", "2", "--device", "cpu", "--max-minutes", "1e-7",
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) != 0
    assert "took the whole --max-minutes" in capsys.readouterr().err and not spent.exists()


# ------------------------------------------------------------------------------------------ batched masks
@pytest.mark.parametrize("pattern", [Pattern(0.5, "row"), Pattern(0.7, "row"), Pattern(n=2, m=4),
                                     Pattern(0.6, "layer")])
def test_batched_masks_equal_per_layer_masks_ties_included(pattern):
    from prunerzero.metric import parse
    from prunerzero.models import all_prunable
    from prunerzero.prune.run import metric_masks
    from prunerzero.search.fitness import batched_masks, mask_fingerprint

    model = make_tiny(layers=2)
    linears = all_prunable(model)
    with torch.no_grad():
        for lin in linears.values():   # coarse weights: many ties at the selection boundary
            lin.weight.copy_(torch.round(lin.weight * 20) / 20)
    calib = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    stats = activation_stats(model, calib, progress=False)
    for text in ("abs(W)", WANDA, "sqr(W)"):
        node = parse(text)
        a, b = metric_masks(node, linears, stats, pattern), batched_masks(node, linears, stats, pattern, batch=True)
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
        assert mask_fingerprint(a) == mask_fingerprint(b)


# ------------------------------------------------------------------------------------------ older logs
def test_a_log_of_plain_perplexities_still_shows_and_an_older_run_is_not_resumed(tmp_path):
    class Plain:   # an evaluator of the one-perplexity kind: no parts, no references
        def __call__(self, formulas):
            for f in formulas:
                yield {"ppl": 20 + 10 * h(f), "seconds": 0.0, "hit": "eval", "fingerprint": f}

    space = load_space("tiny")
    space.raw["gp"].update(generations=1, population=6)
    Search(space, tmp_path, Plain(), progress=False).run()
    recs = read_evaluations(tmp_path)
    assert all("score" not in r for r in recs) and not (tmp_path / "references.json").exists()
    df = equations(tmp_path)
    assert list(df.ppl) == sorted(df.ppl) and "ppl" in format_table(tmp_path).splitlines()[0]
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["space"]["fitness"]["reference"]   # as a run of the one-setting version recorded it
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="older prunerzero"):
        Search(space, tmp_path, Plain(), progress=False).run(resume=True)


def test_fitness_bos_per_model():
    """``fitness.bos`` as a mapping: the named models get their mode, the others Wanda's windows."""
    from prunerzero.search.workers import fitness_bos

    raw = load_space("tiny").raw
    raw["fitness"].update(models=["a", "b"], bos={"b": "window"})
    fit = validate(raw).fitness
    assert (fitness_bos(fit, "a"), fitness_bos(fit, "b")) == ("stream", "window")
    assert fitness_bos({**fit, "bos": "window"}, "a") == "window"
    raw["fitness"]["bos"] = {"b": "first"}
    with pytest.raises(UserError, match="fitness.bos.b 'first'"):
        validate(raw)
