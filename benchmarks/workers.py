"""Two Ray workers: a candidate's parts scored as one task each (the default) against the whole candidate in one task.

A fitness with several parts (cpu-wx6: 3 calibration seeds x 50% and 2:4 = 6 parts) promotes one to three
candidates per generation to its full fidelity. With the whole candidate as one task, a batch of one leaves a
worker idle and a batch of three takes two rounds; with one task per part both workers stay busy. Here batches of
1, 2 and 3 new candidates (distinct masks: no cache answers them) are scored at the space's ``--windows`` first
fitness windows, by a fresh pool per mode (cached one-shot statistics; the reference formula first, untimed, as a
warm-up), and the perplexities of both modes must be identical.

    OMP_NUM_THREADS=1 python benchmarks/workers.py --out results/workers-cpu
    python benchmarks/workers.py --out results/workers-cpu --render-only

Rows go to ``<out>/rows.jsonl`` with provenance; ``<out>.md`` is rendered from them and ``<out>/meta.json``.
"""
from __future__ import annotations

import argparse
import time

import pandas as pd

from prunerzero import results as pzr
from prunerzero.search.space import load_space, reference_formula, validate
from prunerzero.search.workers import RayPool

# distinct rankings of the W/X space (none is a rewrite of another's or of Wanda's masks)
FORMULAS = ["mul(abs(W), X)", "mul(sqr(W), sqrt(X))", "mul(abs(W), sqrt(sqrt(X)))", "add(abs(W), X)",
            "mul(abs(W), add(X, sqrt(X)))", "mul(abs(W), sqrt(add(X, abs(W))))"]
BATCHES = (1, 2, 3)
COLUMNS = [["device", "device", "s"], ["space", "space", "s"], ["parts", "parts", "d"],
           ["windows", "windows", "d"], ["candidates", "candidates", "d"],
           ["whole candidate per task s", "whole s", ".1f"], ["one part per task s", "parts s", ".1f"],
           ["speed-up", "speed-up", ".2f"], ["same perplexities", "same", "s"]]
DEFAULT_META = {"renderer": "workers", "blocks": [
    {"text": "# Two Ray workers: one task per part against one task per candidate\n\nWall time to score a batch of "
             "new candidates (distinct masks) with two Ray workers on the space's fitness parts (calibration seeds "
             "x settings) at its first `windows` fitness windows; a fresh pool per mode, cached statistics, the "
             "reference formula scored first as a warm-up (benchmarks/workers.py)."},
    {"commands": {"bench": "workers"}},
    {"table": {"where": {"bench": "workers"}, "columns": COLUMNS}}]}


def render(rows: list[dict], meta: dict) -> str:
    return pzr.render_document(rows, meta if meta.get("blocks") else DEFAULT_META)


def scored(space, windows: int, split: bool, data_dir) -> tuple[list[float], list[dict]]:
    """Seconds per batch and every candidate's result, with a fresh two-worker pool."""
    pool = RayPool(space.fitness, space.stat_terminals, 2, data_dir, split_parts=split)
    try:
        list(pool([reference_formula(space.fitness)], windows))
        seconds, results, start = [], [], 0
        for size in BATCHES:
            t = time.perf_counter()
            results += list(pool(FORMULAS[start:start + size], windows))
            seconds.append(time.perf_counter() - t)
            start += size
    finally:
        pool.close()
    return seconds, results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="cpu-wx6")
    ap.add_argument("--windows", type=int, default=2, help="fitness windows per part (a fidelity)")
    ap.add_argument("--data-dir", default=None)
    pzr.measurement_args(ap, None)
    args = ap.parse_args()
    if pzr.rendered_only(ap, args, render):
        return
    space = load_space(args.space)
    space.raw["fitness"]["device"] = "cpu"
    space = validate(space.raw, space.path)
    out = pzr.measurement_out(args.out, DEFAULT_META)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        whole_s, whole = scored(space, args.windows, False, args.data_dir)
        parts_s, parts = scored(space, args.windows, True, args.data_dir)
    finally:
        ray.shutdown()
    rows, start = [], 0
    for size, a, b in zip(BATCHES, whole_s, parts_s):
        same = all(x["ppls"] == y["ppls"] and x["error"] is None for x, y in
                   zip(whole[start:start + size], parts[start:start + size]))
        start += size
        row = {"bench": "workers", "device": "cpu", "space": space.name, "parts": len(whole[0]["ppls"]),
               "windows": args.windows, "candidates": size, "whole s": a, "parts s": b, "speed-up": a / b,
               "same": "yes" if same else "NO"}
        rows.append(row)
        if out is not None:
            pzr.record(out, pzr.measurement(f"workers|cpu|{space.name}|{args.windows}|{size}", row, "cpu"))
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if out is not None:
        print(f"rows in {out / 'rows.jsonl'}; table {pzr.write_measurements(out, render)}")
    if any(r["same"] != "yes" for r in rows):
        raise SystemExit("the two modes gave different perplexities")


if __name__ == "__main__":
    main()
