"""The search's key audit, transient (retryable) failures, and the statistics cache key."""
import hashlib
import json

import torch

from conftest import make_tiny
from prunerzero.calibration import gradient_dtype
from prunerzero.metric import rank_key
from prunerzero.models import LoadedModel
from prunerzero.pipeline import CalibConfig, one_shot_stats, windows_sha1
from prunerzero.prune.masks import Pattern
from prunerzero.search import fitness as fitness_mod
from prunerzero.search.engine import Search, audit_selected, read_evaluations
from prunerzero.search.fitness import FitnessEvaluator
from prunerzero.search.space import load_space
from prunerzero.search.toolbox import to_individual

SPACE = "search_spaces/tiny.yaml"


class FakeEvaluate:
    """evaluate_many without tensors: ppl and fingerprint from a function of the formula."""

    def __init__(self, fingerprint, fail_once=()):
        self.fingerprint = fingerprint
        self.fail_once = set(fail_once)
        self.calls = []

    def __call__(self, formulas):
        for f in formulas:
            self.calls.append(f)
            if f in self.fail_once:
                self.fail_once.discard(f)
                yield {"ppl": 1e5, "seconds": 0.0, "hit": "error", "fingerprint": None, "error": "out of memory",
                       "retryable": True}
                continue
            fp = self.fingerprint(f)
            yield {"ppl": 10.0 + int(fp[:6], 16) / 1e7, "seconds": 0.0, "hit": "eval", "fingerprint": fp}


def _search(tmp_path, evaluate_many, every=1):
    search = Search(load_space(SPACE), tmp_path, evaluate_many, progress=False)
    search.key_audit_every = every
    tmp_path.mkdir(parents=True, exist_ok=True)
    return search


def _inds(search, texts):
    return [to_individual(t, search.pset) for t in texts]


def sha(text):
    return hashlib.sha1(text.encode()).hexdigest()


def test_audit_of_a_sound_key_matches(tmp_path):
    fake = FakeEvaluate(lambda f: sha(rank_key(f)))   # equal keys -> equal masks, as the key promises
    search = _search(tmp_path, fake)
    inds = _inds(search, ["mul(abs(W), X)", "mul(X, abs(W))", "add(W, X)"])
    search.evaluate(inds, 0)
    assert fake.calls == ["mul(abs(W), X)", "mul(X, abs(W))", "add(W, X)"]   # the key hit was sent too
    assert dict(search.audit) == {"checked": 1, "mismatch": 0}
    rec = [r for r in read_evaluations(tmp_path) if r["formula"] == "mul(X, abs(W))"][0]
    assert rec["hit"] == "key" and rec["audit"]["match"] is True
    assert inds[0].fitness.values == inds[1].fitness.values
    # a later generation: a key hit from the cache is audited against the stored fingerprint
    search.evaluate(_inds(search, ["mul(abs(W), add(X, X))", "mul(add(X, X), abs(W))"]), 1)
    assert dict(search.audit) == {"checked": 2, "mismatch": 0}


def test_audit_of_an_unsound_key_is_loud_and_counted(tmp_path, capsys, monkeypatch):
    from prunerzero.search import engine

    real = engine.simplify

    def unsound(text):  # a broken key: every formula shares one
        s = real(text)
        return type(s)(s.original, s.rules, s.sympy, s.text, "one key for all")

    monkeypatch.setattr(engine, "simplify", unsound)
    fake = FakeEvaluate(sha)   # masks differ for every formula text
    search = _search(tmp_path, fake)
    inds = _inds(search, ["abs(W)", "mul(abs(W), X)", "add(W, G)"])
    search.evaluate(inds, 0)
    assert dict(search.audit) == {"checked": 2, "mismatch": 2}
    out = capsys.readouterr()
    assert "KEY AUDIT MISMATCH" in out.out + out.err
    recs = read_evaluations(tmp_path)
    assert [r["hit"] for r in recs] == ["eval", "eval", "eval"]
    assert len({r["ppl"] for r in recs}) == 3   # each keeps its real fitness, not the key's
    assert len({i.fitness.values for i in inds}) == 3


def test_audit_choice_is_deterministic_and_about_one_in_ten():
    texts = [f"mul(W, {i})" for i in range(2000)]
    chosen = [t for t in texts if audit_selected(t, 0, 10)]
    assert 140 < len(chosen) < 260
    assert chosen == [t for t in texts if audit_selected(t, 0, 10)]
    assert chosen != [t for t in texts if audit_selected(t, 1, 10)]
    assert not any(audit_selected(t, 0, 0) for t in texts)


def test_tiny_search_summary_counts_the_audit(tmp_path):
    fake = FakeEvaluate(lambda f: sha(rank_key(f)))
    space = load_space(SPACE)
    space.raw["gp"].update(generations=8, population=16)
    search = Search(space, tmp_path / "run", fake, progress=False)
    search.key_audit_every = 1
    search.run()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    audit = summary["counts"]["key_audit"]
    assert audit["checked"] > 0 and audit["mismatch"] == 0
    assert audit["checked"] == sum("audit" in r for r in read_evaluations(tmp_path / "run"))


def test_transient_failures_are_not_cached_and_are_retried(tmp_path):
    fake = FakeEvaluate(lambda f: sha(rank_key(f)), fail_once={"add(W, X)"})
    search = _search(tmp_path, fake, every=0)
    first = _inds(search, ["add(W, X)", "add(X, W)"])
    search.evaluate(first, 0)
    assert [i.fitness.values[0] for i in first] == [1e5, 1e5]   # this generation: the penalty
    assert "add(W, X)" not in search.by_text and rank_key("add(W, X)") not in search.by_key
    recs = read_evaluations(tmp_path)
    assert all(r["hit"] == "error" and r["retryable"] for r in recs)
    again = _inds(search, ["add(W, X)"])
    search.evaluate(again, 1)
    assert fake.calls == ["add(W, X)", "add(W, X)"] and again[0].fitness.values[0] < 1e5
    # resume: the records rebuild the caches without the transient failure
    fresh = _search(tmp_path, fake, every=0)
    for r in read_evaluations(tmp_path):
        fresh._absorb(r)
    assert fresh.by_text["add(W, X)"] == again[0].fitness.values[0]
    assert "add(X, W)" not in fresh.by_text


def test_out_of_memory_in_fitness_is_retryable(monkeypatch):
    model = make_tiny(layers=1)
    ev = FitnessEvaluator(model, None, Pattern(0.5, "row"), torch.zeros(1, 8, dtype=torch.long))

    def oom(*_a, **_k):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(fitness_mod, "batched_masks", oom)
    res = ev("abs(W)")
    assert res.hit == "error" and res.retryable and res.error == "out of memory" and not ev.by_mask


def test_stats_cache_key_holds_window_content_and_gradient_dtype(tmp_path):
    model = make_tiny(layers=1)
    lm = LoadedModel(model, None, "tiny", 16)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (2, 16), generator=g)
    b = a.clone()
    b[1, 3] = (b[1, 3] + 1) % 256
    assert windows_sha1(a) == windows_sha1(a.clone()) != windows_sha1(b)
    cfg = CalibConfig(2, 0, 1, None, str(tmp_path))
    one_shot_stats(lm, cfg, need_x=True, need_g=False, windows=a, progress=False)
    one_shot_stats(lm, cfg, need_x=True, need_g=False, windows=a, progress=False)
    assert len(list((tmp_path / "stats").iterdir())) == 1
    sb = one_shot_stats(lm, cfg, need_x=True, need_g=False, windows=b, progress=False)
    assert len(list((tmp_path / "stats").iterdir())) == 2   # same names and sizes, other content: recomputed
    assert sb.meta["windows_sha1"] == windows_sha1(b)
    sg = one_shot_stats(lm, cfg, need_x=False, need_g=True, windows=a, progress=False)
    assert sg.meta["grad_dtype"] == "torch.float32"
    assert gradient_dtype(model.half(), upcast=True) == torch.float32
    assert gradient_dtype(model, upcast=False) == torch.float16
