"""One-time conversion of the row files that benchmarks/baselines.py wrote (``results/<name>/rows/*.json``, one JSON
per row, before the experiment runner existed) into the runner's schema (``results/<name>/rows.jsonl``).

Nothing is re-measured: each number is copied, and the row's provenance says where it came from — the command and
hardware recorded in the old table, the commit that added the old row file, and ``migrated_from``. Library versions
were not recorded then and stay null.

    python benchmarks/migrate_rows.py baselines confirm-gpu confirm-cpu selection-gpu
    prunerzero bench grids/baselines.yaml --out results/baselines --render-only
    python benchmarks/select_formula.py --out results/selection-gpu --render-only
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from prunerzero.experiments import Method, load_grid, read_rows
from prunerzero.fsutil import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
PATTERNS = {"0.5 unstructured per row": "0.5", "0.5 unstructured per layer": "0.5", "2:4": "2:4", "4:8": "4:8"}


def _added_in(path: Path) -> str | None:
    out = subprocess.run(["git", "-C", str(REPO), "log", "--diff-filter=A", "--format=%H", "--", str(path)],
                         capture_output=True, text=True)
    commits = out.stdout.split()
    return commits[-1] if commits else None


def migrate(name: str) -> Path:
    grid = load_grid(REPO / "grids" / f"{name}.yaml")
    old_md = (REPO / "results" / f"{name}.md").read_text()
    command = re.search(r"^Command: `(.*)`$", old_md, re.M).group(1)
    hardware = re.search(r"Hardware: (.*?)\. ", old_md).group(1)
    methods = {(m.name, m.mode): m for m in grid.methods}
    out = []
    for path in sorted((REPO / "results" / name / "rows").glob("*.json")):
        old = json.loads(path.read_text())
        if old["method"] == "dense":
            cell = grid.cell("smollm2", methods[("dense", "sequential")], "-", 0)
        else:
            mode = "sequential" if old["sequential"] else "oneshot"
            cell = grid.cell("smollm2", methods[(old["method"], mode)], PATTERNS[old["pattern"]], 0)
        method: Method = cell.method
        ppl = {"wikitext2": old["ppl"]}
        windows = {"wikitext2": old["windows"]}
        if "c4_ppl" in old:
            ppl["c4"], windows["c4"] = old["c4_ppl"], old["c4_windows"]
        row = {"id": cell.id, "grid": grid.name, "model": cell.model, "method": method.name,
               "formula": None, "key": None, "mode": None if method.name == "dense" else method.mode,
               "pattern": cell.pattern, "seed": 0, "pattern_text": old.get("pattern", "dense"),
               "sparsity": old.get("sparsity", 0.0), "prune_seconds": old.get("prune_seconds", 0.0),
               "ppl": ppl, "windows": windows, "eval_seconds": None, "seconds": old.get("total_seconds"),
               "protocol": {**grid.protocol.as_dict(), "seqlen": old["seqlen"],
                            **({"dtype": "float16", "device": "cuda"} if "NVIDIA" in hardware
                               else {"dtype": "float32", "device": "cpu"})},
               "provenance": {"commit": _added_in(path), "dirty": None, "versions": None, "device": hardware,
                              "command": command, "time": None,
                              "migrated_from": str(path.relative_to(REPO))}}
        if method.name not in ("dense", "sparsegpt"):
            from prunerzero.metric.known import resolve_metric
            from prunerzero.metric.simplify import rank_key

            _, node, _ = resolve_metric(method.spec)
            row["formula"], row["key"] = str(node), rank_key(str(node))
        out.append(row)
    target = REPO / "results" / name / "rows.jsonl"
    if read_rows(target):
        raise SystemExit(f"error: {target} already holds rows: nothing to migrate")
    atomic_write_text(target, "".join(json.dumps(r) + "\n" for r in out))
    return target




def migrate_selection(name: str = "selection-gpu") -> Path:
    """``results/<name>.json`` as the old select_formula.py wrote it -> ``<name>/grid.yaml`` + ``<name>/rows.jsonl``
    + the new ``<name>.json``; then ``select_formula.py --out results/<name> --render-only`` renders the table."""
    import argparse

    import select_formula as sf

    old = json.loads((REPO / "results" / f"{name}.json").read_text())
    if "candidates" in old:
        raise SystemExit(f"error: results/{name}.json is already in the new layout")
    meta = old["meta"]
    cands = [{k: r[k] for k in ("name", "formula", "simplified", "search_ppl", "run")} for r in old["rows"]]
    args = argparse.Namespace(model=meta["model"], dtype="auto", device=None, seqlen=meta["seqlen"],
                              nsamples=meta["nsamples"], eval_windows=meta["eval_windows"], batch_size=8)
    out = REPO / "results" / name
    grid = sf.build_grid(name, cands, meta["patterns"], [meta["seed"]], args)
    atomic_write_text(out / "grid.yaml", sf._grid_yaml(grid))
    grid = load_grid(out / "grid.yaml")
    command = meta["command"]
    commit = _added_in(REPO / "results" / f"{name}.json")
    rows = []
    for c, m, r in zip(cands, grid.methods, old["rows"]):
        for p in meta["patterns"]:
            cell = grid.cell(meta["model"], m, sf.PATTERNS[p], meta["seed"])
            rows.append({"id": cell.id, "grid": grid.name, "model": meta["model"], "method": m.name,
                         "formula": c["formula"], "key": None, "mode": m.mode, "pattern": cell.pattern,
                         "seed": meta["seed"], "pattern_text": None, "sparsity": None, "prune_seconds": None,
                         "ppl": {"wikitext2": r["ppl"][p]}, "windows": {"wikitext2": None}, "eval_seconds": None,
                         "seconds": None,
                         "protocol": {**grid.protocol.as_dict(), "dtype": "float16", "device": "cuda"},
                         "provenance": {"commit": commit, "dirty": None, "versions": None,
                                        "device": meta["hardware"], "command": command, "time": None,
                                        "migrated_from": f"results/{name}.json (rows[].ppl)"}})
    atomic_write_text(out / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(REPO / "results" / f"{name}.json", json.dumps(
        {"meta": {"reference": meta["reference"], "patterns": meta["patterns"]}, "candidates": cands},
        indent=2) + "\n")
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "benchmarks"))
    for name in sys.argv[1:]:
        print(migrate_selection(name) if name.startswith("selection") else migrate(name))
