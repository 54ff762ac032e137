"""Which operations do the good formulas of earlier searches use? The evidence behind a trimmed search space.

Reads committed search runs (their evaluations logs), takes every distinct formula with a recorded fitness (its
last one), calls it *good* when that fitness is below ``--good`` (a log ratio to the reference metric: 0.02 is
"within 2% of Wanda"), and prints, per operation of the runs' spaces, the share of good formulas and of all
formulas that use it. An operation is kept when at least ``--keep`` of the good formulas use it; the last line
is the unary and binary lists to paste into a space.

    python benchmarks/op_usage.py --runs results/search-cpu-wx results/search-cpu-wx2 ...   # a table and a verdict
    python benchmarks/op_usage.py --runs ... --out results/op-usage-cpu-wx                 # also rows + a table file

Nothing here evaluates a formula: it only counts operations in logged ones, so it runs in a second.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from prunerzero.errors import UserError
from prunerzero.metric.expr import parse
from prunerzero.provenance import command_line, provenance
from prunerzero.search.engine import read_evaluations


def ops_of(node) -> set[str]:
    """The operations (not terminals or constants) in a formula tree."""
    if not node.children:
        return set()
    return {node.op}.union(*(ops_of(c) for c in node.children))


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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="search run directories (evaluations.jsonl, config.json)")
    ap.add_argument("--good", type=float, default=0.02, help="fitness below which a formula is good (default 0.02)")
    ap.add_argument("--keep", type=float, default=0.05, help="share of good formulas an op needs to be kept (0.05)")
    ap.add_argument("--out", help="also write <out>/rows.jsonl (with provenance) and <out>.md")
    args = ap.parse_args(argv)
    runs = [Path(r) for r in args.runs]
    for r in runs:
        if not (r / "evaluations.jsonl").is_file() or not (r / "config.json").is_file():
            raise SystemExit(f"error: {r} is not a search run (no evaluations.jsonl / config.json): check the path")
    rows, counts = usage(runs, args.good)
    keep = [r for r in rows if r["good_share"] >= args.keep]
    lines = [f"{counts['good']} good (fitness < {args.good}) of {counts['formulas']} distinct formulas in "
             f"{len(runs)} runs", "", "| op | good formulas using it | all formulas using it | kept |",
             "| --- | ---: | ---: | --- |"]
    lines += [f"| {r['op']} | {r['good_share']:.1%} | {r['all_share']:.1%} | "
              f"{'yes' if r in keep else 'no'} |" for r in rows]
    lines += ["", f"unary: [{', '.join(r['op'] for r in keep if r['arity'] == 1)}]",
              f"binary: [{', '.join(r['op'] for r in keep if r['arity'] == 2)}]"]
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        command = command_line()
        meta = {"command": command, "provenance": provenance(command=command), "runs": [str(r) for r in runs],
                "good": args.good, "keep": args.keep, **counts}
        (out / "rows.jsonl").write_text("".join(json.dumps({**r, **meta}) + "\n" for r in rows))
        Path(f"{out}.md").write_text(f"# {out.name}\n\nCommand: `{command}`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
