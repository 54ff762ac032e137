"""One-time conversion of the row files that benchmarks/baselines.py wrote (``results/<name>/rows/*.json``, one JSON
per row, before the experiment runner existed) into the runner's schema (``results/<name>/rows.jsonl``).

Nothing is re-measured: each number is copied, and the row's provenance says where it came from — the command and
hardware recorded in the old table, the commit that added the old row file, and ``migrated_from``. Library versions
were not recorded then and stay null.

    python benchmarks/migrate_rows.py baselines confirm-gpu confirm-cpu
    prunerzero bench grids/baselines.yaml --out results/baselines --render-only
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


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(migrate(name))
