"""Multi-fidelity fitness: do few windows rank candidates as all windows do, and how much does it save?

Runs a short search on SmolLM2 with ``fitness.fidelity.audit: 1`` (every new candidate is scored at every
fidelity, for the record; selection uses only the promotions) and reports, over the candidates with a valid
score at every fidelity, the Spearman rank correlation of the scores at each fidelity with the full-fidelity
score, and the window-evaluations the promotion rule spends against scoring every candidate on all windows.

    python benchmarks/fidelity.py --out /tmp/fid                 # SmolLM2 on the CPU, small setting (defaults)
    python benchmarks/fidelity.py --run results/search-x         # a run that was made with fidelity.audit > 0
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from prunerzero.search.engine import Search, read_evaluations
from prunerzero.search.space import load_space, validate
from prunerzero.search.workers import InProcess, build_evaluator


def report(run_dir: Path) -> str:
    cfg = json.loads((run_dir / "config.json").read_text())["space"]["fitness"]
    fid = cfg["fidelity"]
    full_windows = cfg["eval_windows"]
    levels = [w if w is not None else full_windows for w in fid["windows"]]
    recs = [r for r in read_evaluations(run_dir) if r.get("stages") and "audit" not in r]
    complete = [r for r in recs if len(r["stages"]) == len(levels)
                and all(st["hit"] != "error" and st.get("score") is not None for st in r["stages"])]
    df = pd.DataFrame([[st["score"] for st in r["stages"]] for r in complete],
                      columns=[f"{w} windows" for w in levels])
    lines = [f"run {run_dir}: {len(recs)} evaluated candidates, {len(complete)} scored at every fidelity "
             f"(fidelity windows {fid['windows']} of eval_windows {full_windows}, keep {fid['keep']})", ""]
    lines.append("| fidelity | Spearman vs full | candidates |")
    lines.append("|---|---|---|")
    for col in df.columns:
        rho = df[col].corr(df[df.columns[-1]], method="spearman") if len(df) > 2 else float("nan")
        lines.append(f"| {col} | {rho:.3f} | {len(df)} |")
    # what the promotion rule spends (windows x parts) vs every candidate on all windows
    parts = max((len(r["stages"][0].get("ppls") or {}) for r in recs), default=1)
    spent = sum(sum(levels[i] for i in range(r["level"] + 1)) for r in recs) * parts
    flat = len(recs) * levels[-1] * parts
    top_full = df.nsmallest(max(1, len(df) // 4), df.columns[-1]).index
    kept = df.index[df[df.columns[0]].rank(method="first") <= max(1, round(fid["keep"] * len(df)))]
    lines += ["", f"window-evaluations: {spent} with promotions vs {flat} all at full fidelity "
              f"({100 * (1 - spent / max(flat, 1)):.0f}% saved; audit extras not counted)",
              f"of the best quarter at full fidelity ({len(top_full)}), {len(set(top_full) & set(kept))} are "
              f"in the best keep={fid['keep']} fraction at {df.columns[0]} (would be promoted from the first rung)"]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="report on this run (made with fidelity.audit > 0)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/prunerzero-fidelity"), help="new run folder")
    ap.add_argument("--space", default="cpu", help="space whose terminals, operations and settings are used")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--windows", type=int, nargs="+", default=[2, 4], help="low fidelities (then all)")
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--population", type=int, default=12)
    ap.add_argument("--generations", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--md", type=Path, default=None, help="also write the report here")
    args = ap.parse_args()
    run_dir = args.run
    if run_dir is None:
        raw = load_space(args.space).raw
        raw["fitness"].update(models=[args.model], seqlen=args.seqlen, nsamples=args.nsamples,
                              eval_windows=args.eval_windows, device=args.device, batch_size=1,
                              fidelity={"windows": args.windows + [None], "keep": args.keep, "audit": 1.0})
        raw["gp"].update(population=args.population, generations=args.generations)
        space = validate(raw)
        t0 = time.time()
        ev = InProcess(build_evaluator(space.fitness, space.raw["terminals"], progress=True))
        Search(space, args.out, ev, {"command": "benchmarks/fidelity.py"}, progress=True).run()
        print(f"search: {time.time() - t0:.0f}s")
        run_dir = args.out
    text = report(run_dir)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
