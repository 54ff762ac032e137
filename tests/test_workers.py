"""``prunerzero search --workers 2`` on a local 2-CPU Ray cluster logs exactly what ``--workers 1`` logs.

Skipped where Ray is not installed (``pip install 'prunerzero[ray]'``; scripts/setup.sh installs it).
"""
import pytest
import torch

from conftest import REPO, untimed
from prunerzero.cli import main

ray = pytest.importorskip("ray")



# several parts per candidate (two calibration seeds x two settings, two fidelities): the pool scores them as
# separate tasks and merges them (fitness.merge_results)
PARTS = (REPO / "search_spaces/tiny.yaml").read_text().replace(
    "fitness: {model: smollm2, sparsity: 0.5, pattern: unstructured, group: row,",
    "fitness: {model: smollm2, settings: [{sparsity: 0.5}, {pattern: '2:4'}], "
    "fidelity: {windows: [1, null], seeds: [1, null], keep: 0.5},").replace("calib_seed: 0", "calib_seed: [0, 1]")


def _search(out, model_dir, cache, workers, space):
    assert main(["search", "--space", str(space), "--out", str(out),
                 "--model", str(model_dir), "--seqlen", "64", "--nsamples", "4", "--eval-windows", "2",
                 "--device", "cpu", "--generations", "2", "--population", "6", "--seed", "0",
                 "--workers", str(workers), "--cache-dir", str(cache), "--quiet"]) == 0


@pytest.mark.parametrize("parts", [1, 4])
def test_two_ray_workers_log_what_one_process_logs(tiny_model_dir, tmp_path, monkeypatch, parts):
    from prunerzero.search.engine import read_evaluations

    space = REPO / "search_spaces/tiny.yaml"
    if parts > 1:
        assert "settings" in PARTS and "[0, 1]" in PARTS
        space = tmp_path / "parts.yaml"
        space.write_text(PARTS)
    cache = tmp_path / "cache"
    # the Ray actors run with one thread each (Ray sets OMP_NUM_THREADS=1): the same here, so that the float
    # reductions, and therefore the perplexities, are bit for bit comparable
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _search(tmp_path / "one", tiny_model_dir, cache / "one", 1, space)
    finally:
        torch.set_num_threads(threads)
    import prunerzero.search.workers as workers

    def no_model_here(*args, **kwargs):
        raise AssertionError("the driver loaded the model")

    monkeypatch.setattr(workers, "load_model", no_model_here)  # the Ray processes import their own, unpatched
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        _search(tmp_path / "two", tiny_model_dir, cache / "two", 2, space)
    finally:
        ray.shutdown()
    one = [untimed(r) for r in read_evaluations(tmp_path / "one")]
    two = [untimed(r) for r in read_evaluations(tmp_path / "two")]
    assert len(one) > 6 and {r["generation"] for r in one} == {0, 1, 2}
    assert {r["hit"] for r in one} >= {"eval"}
    if parts > 1:
        full = [r for r in one if r.get("level") == 1 and r["hit"] == "eval"]
        assert full and all(len(r["ppls"]) == parts for r in full)
    assert one == two
    # the statistics, computed by one-off Ray tasks (at most one per worker, each a consecutive group of the
    # (model, seed) parts, in parallel): the same cache entries, with the same tensors, as the one process computed
    from safetensors.torch import load_file

    stats = {p.name: p for p in (cache / "one").rglob("*.safetensors") if p.parent.name == "stats"}
    assert stats
    for path in (cache / "two").rglob("*.safetensors"):
        if path.parent.name == "stats":
            mine, theirs = load_file(str(path)), load_file(str(stats.pop(path.name)))
            assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not stats
