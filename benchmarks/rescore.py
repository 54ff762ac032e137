"""Score formulas with a finished search's own fitness: would the run have ranked them first?

A search can only rank what it generated. This takes a run directory, rebuilds its evaluator exactly as the run
did (its config.json: models, settings, calibration seeds, windows of the full fidelity; the statistics cache),
scores each ``--formula`` at the full fidelity, combines the parts against the run's own reference perplexities
(references.json; the reference is not measured again) as the run combined them, and says where each formula
would stand among the run's full-fidelity scores. A formula the run scored itself is scored again and must give
the logged perplexities (same threads, same statistics), which makes the comparison trustworthy.

    OMP_NUM_THREADS=1 python benchmarks/rescore.py --run studies/cpu-wx6/results/search-cpu-wx6 \\
        --formula "mul(add(abs(log(X)), sqrt(X)), abs(W))" --formula "mul(sqrt(W), mul(W, mul(W, X)))" \\
        --out results/rescore-cpu-wx6

Rows (one per formula, with provenance) go to ``<out>/rows.jsonl`` and the table to ``<out>.md``;
``python benchmarks/rescore.py --out studies/cpu-wx7/results/rescore-cpu-wx7 --render-only`` re-renders it.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path

from prunerzero import results as pzr
from prunerzero.errors import UserError
from prunerzero.metric.expr import parse
from prunerzero.search.engine import combine_scores, load_run_space, read_evaluations
from prunerzero.search.table import equations

BLOCKS = [
    {"line": {"where": {"bench": "rescore"}, "head": "| formula | score | rank among the run's full-fidelity scores "
                                                     "| scored by the run |\n|---|---:|---:|---|",
              "text": "| `{formula}` | {score:+.4f} | {rank} of {ranked} | {in_run} |"}}]
DEFAULT_META = {"renderer": "rescore", "blocks": [{"text": "# Formulas scored with a search run's fitness"},
                                                  {"commands": {"bench": "rescore"}}, *BLOCKS]}


def render(rows: list[dict], meta: dict) -> str:
    return pzr.render_document(rows, meta if meta.get("blocks") else DEFAULT_META)


def full_references(run: Path) -> dict:
    """The run's reference perplexities at its full fidelity (the last level of references.json)."""
    path = run / "references.json"
    if not path.is_file():
        raise UserError(f"{run} has no references.json: rescoring needs a run scored against a reference metric")
    try:
        levels = json.loads(path.read_text()).get("levels") or {}
        ppls = levels[max(levels, key=int)]["ppls"] if levels else None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{path} is unreadable: restore it from the run") from None
    if not ppls:
        raise UserError(f"{path} holds no measured level: let the run finish its references first")
    return ppls


def rescore(run: Path, formulas: list[str], evaluate, combine: str, refs: dict) -> list[dict]:
    """One row per formula: its parts' perplexities, its score as the run combined them, its rank among the run's
    full-fidelity scores, and, for a formula the run scored at full fidelity, whether the perplexities agree."""
    table = equations(run, None)
    scores = [float(s) for s in table["score"]] if "score" in table.columns else []
    logged = {r["formula"]: r for r in read_evaluations(run, quiet=True)
              if r.get("fidelity") is None and r.get("score") is not None and r["hit"] != "error"}
    rows = []
    for text in formulas:
        res = evaluate(text)
        if res["error"]:
            raise UserError(f"'{text}' failed on the run's model: {res['error']}")
        score = combine_scores(res["ppls"], refs, combine)
        row = {"bench": "rescore", "run": str(run), "formula": text, "ppls": res["ppls"], "score": score,
               "rank": 1 + sum(s < score for s in scores), "ranked": len(scores), "combine": combine}
        if text in logged:
            row["logged_score"] = logged[text]["score"]
            row["reproduced"] = all(math.isclose(res["ppls"][k], v, rel_tol=1e-9)
                                    for k, v in logged[text]["ppls"].items())
            row["in_run"] = "yes, " + ("the same perplexities" if row["reproduced"] else "DIFFERENT perplexities")
        else:
            row["in_run"] = "no"
        rows.append(row)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="a search run directory (config.json, references.json)")
    ap.add_argument("--formula", action="append", default=[], help="a formula to score (repeatable)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--cache-dir", default=None)
    pzr.measurement_args(ap, None)
    args = ap.parse_args(argv)
    if pzr.rendered_only(ap, args, render):
        return
    try:
        if args.run is None:
            raise UserError("--run names no search run: pass the run directory whose fitness scores the formulas")
        if not args.formula:
            raise UserError("--formula names nothing to score: pass at least one")
        nodes = [parse(text) for text in args.formula]   # a malformed formula stops here, before a model loads
        space, _ = load_run_space(args.run)
        for text, node in zip(args.formula, nodes):
            missing = sorted(node.terminals() - set(space.raw["terminals"]))
            if missing:
                raise UserError(f"'{text}' reads {', '.join(missing)}, which the run computed no statistics for "
                                f"(its terminals: {', '.join(space.raw['terminals'])}): rescore it on a run that has")
        refs = full_references(args.run)
        from prunerzero.search.workers import build_evaluator

        evaluator = build_evaluator(space.fitness, space.raw["terminals"], args.data_dir, args.cache_dir,
                                    progress=False)
        rows = rescore(args.run, args.formula, lambda f: asdict(evaluator(f)),
                       space.fitness.get("combine", "mean"), refs)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(pzr.render_document(rows, {"blocks": BLOCKS}))
    if args.out:
        if not pzr.read_meta(args.out):
            pzr.write_meta(args.out, DEFAULT_META)
        for r in rows:
            pzr.record(args.out, pzr.measurement(f"rescore|{args.run}|{r['formula']}", r, space.fitness.get("device")))
        print(f"rows in {Path(args.out) / 'rows.jsonl'}; table {pzr.write_measurements(args.out, render)}")


if __name__ == "__main__":
    main()
