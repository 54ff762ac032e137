"""Which operations do the good formulas of earlier searches use? The evidence behind a trimmed search space.

Reads committed search runs (their evaluations logs), takes every distinct formula with a recorded fitness (its
last one), calls it *good* when that fitness is below ``--good`` (a log ratio to the reference metric: 0.02 is
"within 2% of Wanda"), and prints, per operation of the runs' spaces, the share of good formulas and of all
formulas that use it. An operation is kept when at least ``--keep`` of the good formulas use it; the last line
is the unary and binary lists to paste into a space.

    python benchmarks/op_usage.py --runs studies/cpu-wx/results/search-cpu-wx studies/cpu-wx2/results/search-cpu-wx2 ...   # a table and a verdict
    python benchmarks/op_usage.py --runs ... --out studies/cpu-wx/results/op-usage-cpu-wx                 # also rows + a table
    python benchmarks/op_usage.py --out studies/cpu-wx/results/op-usage-cpu-wx --render-only

Nothing here evaluates a formula: it only counts operations in logged ones, so it runs in a second.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from prunerzero import results as pzr
from prunerzero.errors import UserError
from prunerzero.metric.expr import parse
from prunerzero.search.engine import read_evaluations


def ops_of(node) -> set[str]:
    """The operations (not terminals or constants) in a formula tree."""
    return {n.op for n in node.walk() if n.children}


def usage(runs: list[Path], good: float) -> tuple[list[dict], dict]:
    """One row per operation of the runs' spaces: share of good and of all distinct formulas using it."""
    fitness: dict[str, float] = {}
    unary, binary = [], []
    for run in runs:
        space = json.loads((run / "config.json").read_text())["space"]
        unary += [u for u in space["unary"] if u not in unary]
        binary += [b for b in space["binary"] if b not in binary]
        for rec in read_evaluations(run, quiet=True):
            if rec.get("formula") and rec.get("fitness") is not None:
                fitness[rec["formula"]] = rec["fitness"]
    if not fitness:
        raise UserError("no scored formula in the given runs: pass search run directories with evaluations.jsonl")
    used = {f: ops_of(parse(f)) for f in fitness}
    good_f = [f for f, v in fitness.items() if v < good]
    rows = [{"op": op, "arity": 1 if op in unary else 2,
             "good_share": sum(op in used[f] for f in good_f) / max(len(good_f), 1),
             "all_share": sum(op in used[f] for f in fitness) / len(fitness)} for op in unary + binary]
    return rows, {"formulas": len(fitness), "good": len(good_f)}


BLOCKS = [
    {"line": {"where": {"bench": "op_usage", "op": "mul"},
              "text": "{good} good formulas (fitness < {good_below}) of {formulas} distinct ones in {n_runs} runs; an "
                      "operation is kept when at least {keep:.0%} of the good ones use it."}},
    {"line": {"where": {"bench": "op_usage"}, "head": "| op | good formulas using it | all formulas using it | kept "
                                                      "|\n| --- | ---: | ---: | --- |",
              "text": "| {op} | {good_share:.1%} | {all_share:.1%} | {kept} |"}}]
DEFAULT_META = {"renderer": "op_usage", "blocks": [{"text": "# Operations of the good formulas of earlier searches"},
                                                   {"commands": {"bench": "op_usage"}}, *BLOCKS]}


def render(rows: list[dict], meta: dict) -> str:
    return pzr.render_document(rows, meta if meta.get("blocks") else DEFAULT_META)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", default=[], help="search run directories (evaluations.jsonl, config.json)")
    ap.add_argument("--good", type=float, default=0.02, help="fitness below which a formula is good (default 0.02)")
    ap.add_argument("--keep", type=float, default=0.05, help="share of good formulas an op needs to be kept (0.05)")
    pzr.measurement_args(ap, None)
    args = ap.parse_args(argv)
    if pzr.rendered_only(ap, args, render):
        return
    runs = [Path(r) for r in args.runs]
    if not runs:
        raise SystemExit("error: --runs names no search run: pass the run directories to count")
    for r in runs:
        if not (r / "evaluations.jsonl").is_file() or not (r / "config.json").is_file():
            raise SystemExit(f"error: {r} is not a search run (no evaluations.jsonl / config.json): check the path")
    try:
        rows, counts = usage(runs, args.good)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    for r in rows:
        r.update(bench="op_usage", kept="yes" if r["good_share"] >= args.keep else "no", good_below=args.good,
                 keep=args.keep, n_runs=len(runs), runs=[str(x) for x in runs], **counts)
    print(pzr.render_document(rows, {"blocks": BLOCKS}))
    kept = [r for r in rows if r["kept"] == "yes"]
    print(f"unary: [{', '.join(r['op'] for r in kept if r['arity'] == 1)}]")
    print(f"binary: [{', '.join(r['op'] for r in kept if r['arity'] == 2)}]")
    if args.out:
        if not pzr.read_meta(args.out):
            pzr.write_meta(args.out, DEFAULT_META)
        for r in rows:
            pzr.record(args.out, pzr.measurement(f"op_usage|{r['op']}", r))
        print(f"rows in {Path(args.out) / 'rows.jsonl'}; table {pzr.write_measurements(args.out, render)}")


if __name__ == "__main__":
    main()
