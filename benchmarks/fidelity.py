"""Multi-fidelity fitness: do few windows rank candidates as all windows do, and how much does it save?

Runs a short search on SmolLM2 with ``fitness.fidelity.audit: 1`` (every new candidate is scored at every
fidelity, for the record; selection uses only the promotions) and reports, over the candidates with a valid
score at every fidelity, the Spearman rank correlation of the scores at each fidelity with the full-fidelity
score, and the window-evaluations the promotion rule spends against scoring every candidate on all windows.

    python benchmarks/fidelity.py --run-dir /tmp/fid                 # SmolLM2 on the CPU, small setting (defaults)
    python benchmarks/fidelity.py --run results/search-x             # a run that was made with fidelity.audit > 0
    python benchmarks/fidelity.py --run /tmp/fid --out results/fidelity-x  # the report as rows and a table
    python benchmarks/fidelity.py --out studies/cpu-early/results/fidelity-cpu --render-only

With ``--out``, the report's numbers (one row per fidelity and one summary row, with provenance) are appended to
``<out>/rows.jsonl`` and ``<out>.md`` is rendered from them and ``<out>/meta.json`` (the prose; a default is written
on the first run).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from prunerzero import results as pzr
from prunerzero.search.engine import Search, read_evaluations
from prunerzero.search.space import load_space, validate
from prunerzero.search.workers import InProcess, build_evaluator


def report_rows(run_dir: Path) -> list[dict]:
    """The report's numbers: one row per fidelity (Spearman against the full fidelity) and a summary row."""
    cfg = json.loads((run_dir / "config.json").read_text())["space"]["fitness"]
    fid = cfg["fidelity"]
    full_windows = cfg["eval_windows"]
    levels = [w if w is not None else full_windows for w in fid["windows"]]
    seeds = fid.get("seeds")   # calibration seeds per level (null: all), when the low levels score fewer
    recs = [r for r in read_evaluations(run_dir) if r.get("stages") and "audit" not in r]
    complete = [r for r in recs if len(r["stages"]) == len(levels)
                and all(st["hit"] != "error" and st.get("score") is not None for st in r["stages"])]
    names = [f"{w} windows" + ("" if not seeds else f" x {seeds[i] or 'all'} seed(s)") for i, w in enumerate(levels)]
    df = pd.DataFrame([[st["score"] for st in r["stages"]] for r in complete], columns=names)
    run = str(run_dir)
    rows = [{"bench": "fidelity", "part": "level", "run": run, "fidelity": col, "candidates": len(df),
             "spearman": float(df[col].corr(df[df.columns[-1]], method="spearman")) if len(df) > 2
             else float("nan")} for col in df.columns]
    # what the promotion rule spends (windows x parts of each stage scored) vs every candidate on all windows and
    # parts; a level's parts (fewer at a level of fewer seeds) from the candidates' stages there
    parts = [max((len(r["stages"][i].get("ppls") or {}) for r in recs if len(r["stages"]) > i), default=1)
             for i in range(len(levels))]
    spent = sum(sum(levels[i] * parts[i] for i in range(r["level"] + 1)) for r in recs)
    flat = len(recs) * levels[-1] * parts[-1]
    top_full = df.nsmallest(max(1, len(df) // 4), df.columns[-1]).index
    kept = df.index[df[df.columns[0]].rank(method="first") <= max(1, round(fid["keep"] * len(df)))]
    rows.append({"bench": "fidelity", "part": "summary", "run": run, "evaluated": len(recs),
                 "complete": len(complete), "windows": str(fid["windows"]) + ("" if not seeds else f", seeds {seeds}"),
                 "eval_windows": full_windows,
                 "keep": fid["keep"], "spent": spent, "flat": flat, "saved": 1 - spent / max(flat, 1),
                 "top_quarter": len(top_full), "top_kept": len(set(top_full) & set(kept)), "first": df.columns[0]})
    return rows


SUMMARY = {"part": "summary"}
REPORT_BLOCKS = [
    {"line": {"where": SUMMARY, "text": "run {run}: {evaluated} evaluated candidates, {complete} scored at every "
                                        "fidelity (fidelity windows {windows} of eval_windows {eval_windows}, keep "
                                        "{keep})"}},
    {"line": {"where": {"part": "level"}, "head": "| fidelity | Spearman vs full | candidates |\n|---|---|---|",
              "text": "| {fidelity} | {spearman:.3f} | {candidates} |"}},
    {"line": {"where": SUMMARY, "text": "window-evaluations: {spent} with promotions vs {flat} all at full fidelity "
                                        "({saved:.0%} saved; audit extras not counted)\nof the best quarter at full "
                                        "fidelity ({top_quarter}), {top_kept} are in the best keep={keep} fraction "
                                        "at {first} (would be promoted from the first rung)"}}]
DEFAULT_META = {"renderer": "fidelity", "blocks": [{"text": "# Multi-fidelity fitness"}, {"commands": {"bench": "fidelity"}}, *REPORT_BLOCKS]}


def render(rows: list[dict], meta: dict) -> str:
    return pzr.render_document(rows, meta if meta.get("blocks") else DEFAULT_META)


def report(run_dir: Path) -> str:
    return pzr.render_document(report_rows(run_dir), {"blocks": REPORT_BLOCKS})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="report on this run (made with fidelity.audit > 0)")
    ap.add_argument("--run-dir", type=Path, default=Path("/tmp/prunerzero-fidelity"), help="new run folder")
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
    pzr.measurement_args(ap, None)
    args = ap.parse_args()
    if pzr.rendered_only(ap, args, render):
        return
    out = Path(args.out) if args.out else None
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
        Search(space, args.run_dir, ev, {"command": "benchmarks/fidelity.py"}, progress=True).run()
        print(f"search: {time.time() - t0:.0f}s")
        run_dir = args.run_dir
    rows = report_rows(run_dir)
    print(pzr.render_document(rows, {"blocks": REPORT_BLOCKS}))
    if out is not None:
        if not pzr.read_meta(out):
            pzr.write_meta(out, DEFAULT_META)
        for r in rows:
            pzr.record(out, pzr.measurement(f"fidelity|{run_dir}|{r['part']}|{r.get('fidelity', '')}", r, args.device))
        print(f"rows in {out / 'rows.jsonl'}; table {pzr.write_measurements(out, render)}")


if __name__ == "__main__":
    main()
