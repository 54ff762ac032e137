"""Search throughput: candidates per minute and the share each cache layer answered.

    python benchmarks/search.py --run results/search-cpu           # summarise a finished (or running) run
    python benchmarks/search.py --generations 3 --population 12    # a fresh short run on SmolLM2 (temp dir)
    python benchmarks/search.py --device cuda --seqlen 2048 --eval-windows 8 --nsamples 128

The fresh run uses search_spaces/prunerzero.yaml with the fitness settings given here.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from prunerzero.report import cache_table
from prunerzero.search.engine import Search, read_evaluations
from prunerzero.search.space import load_space, validate
from prunerzero.search.workers import InProcess, build_evaluator


def summarise(run_dir: Path, wall: float | None = None, device: str = "") -> pd.DataFrame:
    recs = read_evaluations(run_dir)
    if wall is None:
        ck = json.loads((run_dir / "checkpoint.json").read_text())
        wall = ck.get("wall_seconds") or sum(r["seconds"] for r in recs)
    n = len(recs)
    df = cache_table(run_dir)
    eval_secs = [r["seconds"] for r in recs if r["hit"] == "eval"]
    print(f"run {run_dir} on {device or 'recorded device'}: {n} candidates in {wall:.0f}s "
          f"-> {60 * n / max(wall, 1e-9):.1f} candidates/min, {60 * len(eval_secs) / max(wall, 1e-9):.1f} "
          f"perplexity evaluations/min; mean evaluation {sum(eval_secs) / max(1, len(eval_secs)):.2f}s")
    return df


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="summarise this run directory instead of running")
    ap.add_argument("--space", default="search_spaces/prunerzero.yaml")
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--population", type=int, default=12)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=2)
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    if args.run:
        print(summarise(Path(args.run)).to_string(index=False, float_format=lambda v: f"{v:.1%}"))
        return
    space = load_space(args.space)
    raw = space.raw
    raw["gp"].update(generations=args.generations, population=args.population)
    raw["fitness"].update(device=args.device, seqlen=args.seqlen, eval_windows=args.eval_windows,
                          nsamples=args.nsamples)
    space = validate(raw, space.path)
    ev = InProcess(build_evaluator(space.fitness, raw["terminals"], args.data_dir))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        Search(space, tmp, ev, progress=False).run()
        wall = time.time() - t0
        df = summarise(Path(tmp), wall, args.device)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.1%}"))


if __name__ == "__main__":
    main()
