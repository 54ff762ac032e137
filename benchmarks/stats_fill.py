"""A multi-seed space's statistics filled by Ray: one task against two at once.

Before its first generation a search computes the one-shot statistics of every (model, calibration seed) of its
space; with ``--workers 2`` two one-off Ray tasks compute them at once, each a consecutive half of those parts
(``ray_fill_stats``). Here the space's statistics (``--nsamples`` calibration windows per seed, fewer than the
space's to keep it short) are filled into two fresh statistics caches, by one task and by two, on a local 2-CPU Ray
cluster; the converted model is shared, so only the statistics are timed. The cached tensors of both must be
identical.

    OMP_NUM_THREADS=1 python benchmarks/stats_fill.py --space cpu --nsamples 8 --out results/stats-fill-cpu
    python benchmarks/stats_fill.py --out results/stats-fill-cpu --render-only

Rows go to ``<out>/rows.jsonl`` with provenance; ``<out>.md`` is rendered from them and ``<out>/meta.json``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from prunerzero import results as pzr
from prunerzero.models import cache_dir
from prunerzero.search.space import load_space, validate
from prunerzero.search.workers import ray_fill_stats, stats_parts

COLUMNS = [["device", "device", "s"], ["space", "space", "s"], ["(model, seed) parts", "parts", "d"],
           ["calibration windows", "nsamples", "d"], ["one task s", "one s", ".1f"],
           ["two tasks at once s", "two s", ".1f"], ["speed-up", "speed-up", ".2f"], ["same tensors", "same", "s"]]
DEFAULT_META = {"renderer": "stats_fill", "blocks": [
    {"text": "# Statistics filled by Ray: one task against two at once\n\nWall time to compute a space's "
             "one-shot statistics (every model x calibration seed) into a fresh cache on a local 2-CPU Ray "
             "cluster, by one task and by two at once (each a consecutive half of the parts); the converted "
             "model is shared, the tensors of both caches compared (benchmarks/stats_fill.py)."},
    {"commands": {"bench": "stats_fill"}},
    {"table": {"where": {"bench": "stats_fill"}, "columns": COLUMNS}}]}


def render(rows: list[dict], meta: dict) -> str:
    return pzr.render_document(rows, meta if meta.get("blocks") else DEFAULT_META)


def filled(space, workers: int, data_dir, root: Path) -> float:
    """Seconds to fill ``root``'s statistics cache with at most ``workers`` Ray tasks (the models linked in)."""
    root.mkdir()
    (root / "models").symlink_to(cache_dir() / "models", target_is_directory=True)
    start = time.perf_counter()
    ray_fill_stats(space.fitness, space.stat_terminals, workers, data_dir, root)
    return time.perf_counter() - start


def cached(root: Path) -> dict[str, dict]:
    """A cache's statistics by what produced them (each file's metadata; the file names also hash the model's path,
    which differs between the two caches), each with its tensors."""
    out = {}
    for path in (root / "stats").glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            out[f.metadata()["prunerzero"]] = load_file(str(path))
    return out


def same_stats(a: Path, b: Path) -> bool:
    x, y = cached(a), cached(b)
    return bool(x) and x.keys() == y.keys() and all(
        x[m].keys() == y[m].keys() and all(torch.equal(x[m][k], y[m][k]) for k in x[m]) for m in x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="cpu")
    ap.add_argument("--nsamples", type=int, default=8, help="calibration windows per seed (default: 8)")
    ap.add_argument("--data-dir", default=None)
    pzr.measurement_args(ap, None)
    args = ap.parse_args()
    if pzr.rendered_only(ap, args, render):
        return
    space = load_space(args.space)
    space.raw["fitness"].update(device="cpu", nsamples=args.nsamples)
    space = validate(space.raw, space.path)
    out = pzr.measurement_out(args.out, DEFAULT_META)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            one = filled(space, 1, args.data_dir, Path(tmp) / "one")
            two = filled(space, 2, args.data_dir, Path(tmp) / "two")
            same = same_stats(Path(tmp) / "one", Path(tmp) / "two")
    finally:
        ray.shutdown()
    row = {"bench": "stats_fill", "device": "cpu", "space": space.name, "parts": len(stats_parts(space.fitness)),
           "nsamples": args.nsamples, "one s": one, "two s": two, "speed-up": one / two,
           "same": "yes" if same else "NO"}
    if out is not None:
        pzr.record(out, pzr.measurement(f"stats_fill|cpu|{space.name}|{args.nsamples}", row, "cpu"))
    print(pd.DataFrame([row]).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if out is not None:
        print(f"rows in {out / 'rows.jsonl'}; table {pzr.write_measurements(out, render)}")
    if not same:
        raise SystemExit("the two fills cached different statistics")


if __name__ == "__main__":
    main()
