"""N:M mask selection: stable sort of every group of M against pairwise ranks (prune/masks.py), one run.

Scores on the real SmolLM2 layers (all 210 Linears): |W| (magnitude; the Q4_1 weights tie in most groups, so the
tie order is exercised) and |W|·√X (Wanda; X the activation norms of the cached one-shot statistics of the search's
protocol: 32 C4 windows of 1024 tokens, seed 0; computed once if absent, ~1 minute on 2 cores). Each path selects
the masks of every layer after one warm-up pass; times are the minimum of the repeats, and the masks of both paths
must be identical. ``tied groups`` counts the groups of M whose scores hold a tie. mask_from_scores takes the
pairwise path up to M = PAIRWISE_MAX_M.

    OMP_NUM_THREADS=1 python benchmarks/nm_masks.py --out results/nm-masks-cpu
    python benchmarks/nm_masks.py --out results/nm-masks-cpu --render-only

Rows go to ``<out>/rows.jsonl`` with provenance; ``<out>.md`` is rendered from them and ``<out>/meta.json``.
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from prunerzero import results as pzr
from prunerzero.models import all_prunable, load_model
from prunerzero.pipeline import CalibConfig, one_shot_stats
from prunerzero.prune.masks import PAIRWISE_MAX_M, lowest_n_of_m, sorted_n_of_m
from prunerzero.timing import sync

COLUMNS = [["device", "device", "s"], ["scores", "scores", "s"], ["pattern", "pattern", "s"],
           ["Linears", "layers", "d"],
           ["stable sort s", "sort s", ".3f"], ["pairwise ranks s", "pairwise s", ".3f"],
           ["speed-up", "speed-up", ".1f"], ["groups with a tie", "tied groups", "d"], ["groups", "groups", "d"],
           ["same masks", "same", "s"], ["path taken", "path", "s"]]
DEFAULT_META = {"renderer": "nm_masks", "blocks": [
    {"text": "# N:M masks: stable sort against pairwise ranks\n\nScores |W| and |W|·√X on every Linear of "
             "SmolLM2-135M (real Q4_1 weights, X of the cached one-shot statistics: 32 C4 windows of 1024 tokens, "
             "seed 0); minimum of the repeats after a warm-up (benchmarks/nm_masks.py). `path taken`: what "
             "prune/masks.py uses at that M."},
    {"commands": {"bench": "nm_masks"}},
    {"table": {"where": {"bench": "nm_masks"}, "columns": COLUMNS}}]}


def render(rows: list[dict], meta: dict) -> str:
    return pzr.render_document(rows, meta if meta.get("blocks") else DEFAULT_META)


def timed(fn, scores, n, m, device, repeats):
    best, out = float("inf"), [fn(s, n, m) for s in scores]   # warm-up
    for _ in range(repeats):
        sync(device); t = time.perf_counter()
        out = [fn(s, n, m) for s in scores]
        sync(device); best = min(best, time.perf_counter() - t)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--patterns", default="2:4,4:8,8:16")
    ap.add_argument("--repeats", type=int, default=3)
    pzr.measurement_args(ap, None)
    args = ap.parse_args()
    if pzr.rendered_only(ap, args, render):
        return
    out = pzr.measurement_out(args.out, DEFAULT_META)
    loaded = load_model("smollm2", device=args.device, dtype=torch.float32)
    stats = one_shot_stats(loaded, CalibConfig(32, 0, 1), need_g=False, seqlen=1024, progress=False)
    linears = all_prunable(loaded.model)
    kinds = {"|W|": [lin.weight.detach().abs() for lin in linears.values()]}
    kinds["|W|·√X"] = [w * stats.env(k, lin.weight)["X"].sqrt()
                       for w, (k, lin) in zip(kinds["|W|"], linears.items())]
    rows = []
    for kind, scores in kinds.items():
        for pattern in args.patterns.split(","):
            n, m = (int(v) for v in pattern.split(":"))
            t_sort, a = timed(sorted_n_of_m, scores, n, m, args.device, args.repeats)
            t_pair, b = timed(lowest_n_of_m, scores, n, m, args.device, args.repeats)
            groups = [s.reshape(s.shape[0], -1, m).sort(-1).values for s in scores]
            row = {"bench": "nm_masks", "device": args.device, "scores": kind, "pattern": pattern,
                   "layers": len(scores), "sort s": t_sort, "pairwise s": t_pair, "speed-up": t_sort / t_pair,
                   "tied groups": sum(int((g[..., 1:] == g[..., :-1]).any(-1).sum()) for g in groups),
                   "groups": sum(g.shape[0] * g.shape[1] for g in groups),
                   "same": "yes" if all(torch.equal(x, y) for x, y in zip(a, b)) else "NO",
                   "path": "pairwise" if m <= PAIRWISE_MAX_M else "sort"}
            rows.append(row)
            if out is not None:
                pzr.record(out, pzr.measurement(f"nm_masks|{args.device}|{kind}|{pattern}", row, args.device))
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if out is not None:
        print(f"rows in {out / 'rows.jsonl'}; table {pzr.write_measurements(out, render)}")
    if any(r["same"] != "yes" for r in rows):
        raise SystemExit("the two selections gave different masks")


if __name__ == "__main__":
    main()
