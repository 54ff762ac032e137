"""One-time conversion of the row files that benchmarks/baselines.py wrote (``results/<name>/rows/*.json``, one JSON
per row, before the experiment runner existed) into the runner's schema (``results/<name>/rows.jsonl``).

Nothing is re-measured: each number is copied, and the row's provenance says where it came from — the command and
hardware recorded in the old table, the commit that added the old row file, and ``migrated_from``. Library versions
were not recorded then and stay null.

    python benchmarks/migrate_rows.py baselines confirm-gpu confirm-cpu selection-gpu
    prunerzero bench grids/baselines.yaml --out results/baselines --render-only
    python benchmarks/select_formula.py --out results/selection-gpu --render-only

The structural tables (benchmarks/structural_table.py and structural_ablation.py wrote ``results/<name>/rows/*.json``)
become rows of the grids ``grids/structural-{gpu,cpu,ablation}.yaml`` the same way:

    python benchmarks/migrate_rows.py structural-gpu structural-cpu structural-ablation
    prunerzero bench grids/structural-gpu.yaml --render-only      # and the other two
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


# the old structural rows' window counts: WikiText-2 test (304,986 SmolLM2 tokens) or its first N tokens, cut into
# windows of each length; the ablation evaluated the first 80 windows of 128 tokens
WIKITEXT2_TEST_TOKENS = 304_986


def migrate_structural(name: str) -> Path:
    """``results/<name>/rows/*.json`` (structural_table.py / structural_ablation.py) -> ``results/<name>/rows.jsonl``
    in the runner's schema; each old row becomes the cell of ``grids/<name>.yaml`` that describes its run (an
    ablation row with a ``uniform`` part becomes two rows: the per-layer and the uniform-width mask of one run)."""
    import dataclasses

    from prunerzero.metric.known import resolve_metric
    from prunerzero.metric.simplify import rank_key

    grid = load_grid(REPO / "grids" / f"{name}.yaml")
    old_md = (REPO / "results" / f"{name}.md").read_text()
    command = re.search(r"^Command: `(.*)`$", old_md, re.M).group(1)
    hardware = re.search(r"Hardware: (.*?)\. ", old_md).group(1)
    gpu = "NVIDIA" in hardware
    ablation = name == "structural-ablation"
    if ablation:  # two processes wrote the rows; the note in the old table gives their exact commands
        commands = re.findall(r"`(nice -n 10 python benchmarks/structural_ablation\.py [^`]*)`", old_md)
        first, second = commands[0].replace("nice -n 10 ", ""), commands[1].replace("nice -n 10 ", "")
    ev, proto = grid.structural, grid.protocol
    methods = {(m.name, m.mode): m for m in grid.methods}

    def windows(L):
        return ev.windows(L, proto) or WIKITEXT2_TEST_TOKENS // L

    def row_for(method, pattern, old, part, origin, cmd, note=None):
        cell = grid.cell("smollm2", method, pattern, 0)
        ppl = part["ppl"] if isinstance(part["ppl"], dict) else {str(ev.seqlens[0]): part["ppl"]}
        row = {"id": cell.id, "grid": grid.name, "model": "smollm2", "method": method.name, "kind": "structural",
               "formula": None, "key": None, "mode": None, "pattern": pattern, "seed": 0}
        cfg = None
        if method.name == "dense":
            row.update(sparsity=0.0, removed=0.0, params=old.get("params"), prune_seconds=0.0, final_loss=None)
        else:
            cfg = method.structural_config(float(pattern), 0)
            if cfg.init in ("metric", "oneshot"):
                _, node, _ = resolve_metric(cfg.metric)
                row["formula"], row["key"] = str(node), rank_key(str(node))
            row.update(mode=cfg.init, sparsity=cfg.sparsity, removed=part["removed"], params=part["params"],
                       prune_seconds=old["seconds"],
                       final_loss=old.get("final_loss", old["history"][-1]["baseline"] if old["history"] else None))
        row.update(ppl={f"wikitext2@{L}": v for L, v in ppl.items()},
                   windows={f"wikitext2@{L}": windows(int(L)) for L in ppl}, eval_seconds=None,
                   latency_ms=old.get("latency_ms"), seconds=old.get("wall_s"),
                   protocol={**proto.as_dict(), "seqlen": proto.seqlen,
                             **({"dtype": "float16", "device": "cuda"} if gpu else {"dtype": "float32", "device": "cpu"}),
                             "evaluation": {**ev.identity(), "latency_seqlen": ev.latency_seqlen or proto.seqlen,
                                            "latency_repeats": ev.latency_repeats}},
                   structural=dataclasses.asdict(cfg) if cfg else None)
        if cfg:
            row["layer_shapes"] = [part["layer_shape"]] if "layer_shape" in part else old["layer_shapes"]
            row["history"] = old["history"][-5:]
        row["provenance"] = {"commit": _added_in(origin), "dirty": None, "versions": None, "device": hardware,
                             "command": cmd, "time": None, "migrated_from": str(origin.relative_to(REPO))
                             + (" (uniform)" if "layer_shape" in part else "")}
        if note:
            row["provenance"]["note"] = note
        return row

    out = []
    for path in sorted((REPO / "results" / name / "rows").glob("*.json")):
        old = json.loads(path.read_text())
        if old["init"] == "dense":
            out.append(row_for(methods[("dense", "sequential")], "-", old, old, path, first if ablation else command))
            continue
        pattern = f"{old.get('sparsity', 0.2):g}"
        if not ablation:
            out.append(row_for(methods[("found" if old["init"] != "const" else "const", old["init"])], pattern, old,
                               old, path, command))
            continue
        label = f"{old['init']}/lr{old['lr']:g}"
        cmd, note = (second, None) if old["init"] == "found" else (first, None)
        if old["init"] == "wanda":
            note = ("both processes listed the wanda cells; by the rows' wall times (wall_s), if the two started "
                    "together, the first finished both (at about 2,980 s plus its dense evaluation) before the "
                    "second reached them (at about 3,550 s, after its found cells) and skipped them")
        out.append(row_for(methods[(label, "metric")], pattern, old, old, path, cmd, note))
        if "uniform" in old:
            uni = {**old["uniform"]}
            out.append(row_for(methods[(label + "/uniform", "metric")], pattern, old, uni, path, cmd,
                               "the uniform-width mask (per-layer top-k) of the same run's learned probabilities"))
    order = {c.id: i for i, c in enumerate(grid.cells())}
    missing = set(order) - {r["id"] for r in out}
    if missing or len(out) != len(order):
        raise SystemExit(f"error: the old rows of {name} do not fill grids/{name}.yaml: {sorted(missing)}")
    target = REPO / "results" / name / "rows.jsonl"
    if read_rows(target):
        raise SystemExit(f"error: {target} already holds rows: nothing to migrate")
    atomic_write_text(target, "".join(json.dumps(r) + "\n" for r in sorted(out, key=lambda r: order[r["id"]])))
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
        print(migrate_selection(name) if name.startswith("selection") else
              migrate_structural(name) if name.startswith("structural") else migrate(name))
