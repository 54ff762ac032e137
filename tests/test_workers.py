"""The Ray worker pool gives the same search as in-process evaluation (skipped when Ray is not installed)."""
import pytest

from conftest import REPO

ray = pytest.importorskip("ray")


def test_ray_pool_matches_in_process(tiny_model_dir, tmp_path):
    from prunerzero.search.engine import Search, read_evaluations
    from prunerzero.search.space import load_space, validate
    from prunerzero.search.workers import InProcess, RayPool, build_evaluator

    space = load_space(REPO / "search_spaces/tiny.yaml")
    space.raw["gp"].update(generations=1, population=6)
    space.raw["fitness"].update(model=str(tiny_model_dir), seqlen=64, nsamples=4, eval_windows=2, device="cpu")
    space = validate(space.raw)
    cache = tmp_path / "cache"
    local = InProcess(build_evaluator(space.fitness, space.raw["terminals"], cache=cache, progress=False))
    Search(space, tmp_path / "a", local, progress=False).run()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pool = RayPool(space.fitness, space.raw["terminals"], workers=2, cache=cache)
        Search(space, tmp_path / "b", pool, progress=False).run()
    finally:
        ray.shutdown()
    a = [(r["formula"], round(r["ppl"], 6)) for r in read_evaluations(tmp_path / "a")]
    b = [(r["formula"], round(r["ppl"], 6)) for r in read_evaluations(tmp_path / "b")]
    assert a == b
