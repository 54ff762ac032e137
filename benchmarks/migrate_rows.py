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

The timing tables become ``results/<name>/rows.jsonl`` (one row per measurement) and ``results/<name>/meta.json``
(the prose): structural-speed*.json hold the measurements; benchmarks.md, overhead-cpu.md and fidelity-cpu.md held
their numbers only as printed text, so they are parsed here once (``migrated_from`` names the file, the commit is
the one that last changed it):

    python benchmarks/migrate_rows.py structural-speed structural-speed-batch8 benchmarks overhead-cpu fidelity-cpu
    python benchmarks/structural_speed.py --out results/structural-speed --render-only   # see results/README.md
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from prunerzero.results import Method, load_grid, read_rows
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


def _last_changed(path: Path) -> str | None:
    out = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%H", "--", str(path)],
                         capture_output=True, text=True)
    return out.stdout.strip() or None


def _origin(path: Path, device: str, command: str, commit: str | None = None) -> dict:
    return {"commit": commit or _last_changed(path), "dirty": None, "versions": None, "device": device,
            "command": command, "time": None, "migrated_from": str(path.relative_to(REPO))}


def _write_measurements(name: str, rows: list[dict], meta: dict) -> Path:
    from prunerzero.results import write_meta

    out = REPO / "results" / name
    if read_rows(out / "rows.jsonl"):
        raise SystemExit(f"error: {out / 'rows.jsonl'} already holds rows: nothing to migrate")
    atomic_write_text(out / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_meta(out, meta)
    return out


def migrate_speed(name: str) -> Path:
    """``results/<name>.json`` (structural_speed.py's meta + rows) -> rows with their settings and provenance."""
    import structural_speed

    path = REPO / "results" / f"{name}.json"
    old = json.loads(path.read_text())
    meta = old["meta"]
    md = (REPO / "results" / f"{name}.md").read_text()
    notes = [meta["note"]] if meta.get("note") else []
    tail = md.split(meta["note"], 2)[-1].strip() if meta.get("note") else ""   # paragraphs added under the note
    notes += [p for p in tail.split("\n\n") if p.strip() and not p.startswith("Command")]
    rows = []
    for r in old["rows"]:
        fields = {**r, "prefill_tokens": meta["prefill"], "repeats": meta["repeats"], "warmup": meta["warmup"],
                  "decode_tokens": meta["decode_tokens"]}
        rid = structural_speed.row_id(r["model"], r["sparsity"], r["batch"], meta["prefill"], meta["decode_tokens"])
        rows.append({"id": rid, **fields, "provenance": _origin(path, meta["hardware"], meta["command"],
                                                                _added_in(path))})
    out = _write_measurements(name, rows, {"renderer": "structural_speed", "model": meta["model"], "notes": notes})
    path.unlink()
    return out


def _split_block(block: str, columns: list[str], text_columns: int = 0) -> list[dict]:
    """Rows of a printed pandas table (its header line dropped): the first ``text_columns`` values may hold single
    spaces, the numbers after them do not."""
    rows = []
    for line in block.strip("\n").splitlines()[1:]:
        parts = line.strip().rsplit(None, len(columns) - max(text_columns, 1))
        values = [p.strip() for p in parts]
        if text_columns == 0:
            values = line.split()
        rows.append(dict(zip(columns, [_number(v) for v in values])))
    return rows


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.endswith("%"):
        return float(text[:-1]) / 100
    return text


def _blocks(md: str) -> list[str]:
    return re.findall(r"^```\n(.*?)^```", md, re.M | re.S)


PRUNE_EVAL_COLUMNS = ["model", "device", "layers", "windows", "seqlen", "masks s", "fingerprint s", "apply+restore s",
                      "ppl s", "overhead / ppl", "peak MB"]
H100 = "NVIDIA H100 80GB HBM3"


def _prune_eval_rows(block: str, columns: list[str], origin: dict, commands: dict, windows_batch: int) -> list[dict]:
    rows = []
    for r in _split_block(block, columns):
        r = {"bench": "prune_eval", **r, "batch_size": windows_batch, "formula": "mul(abs(mul(W, W)), mms(G))"}
        rows.append({"id": f"prune_eval|{r['device']}|{r['model']}|layers={r['layers']}|{r['windows']}x{r['seqlen']}",
                     **r, "provenance": {**origin, "command": commands.get(r["model"], origin["command"])}})
    return rows


def _search_rows(block: str, device: str, command: str, path: Path) -> list[dict]:
    head, *table = block.strip("\n").splitlines()
    m = re.match(r"run (\S+) on recorded device: (\d+) candidates in (\d+)s -> ([\d.]+) candidates/min, ([\d.]+) "
                 r"perplexity evaluations/min; mean evaluation ([\d.]+)s$", head)
    run = m.group(1)
    origin = _origin(path, device, command)
    rows = [{"id": f"search|{run}", "bench": "search", "run": run, "candidates": int(m.group(2)),
             "seconds": int(m.group(3)), "candidates_per_min": float(m.group(4)),
             "evaluations_per_min": float(m.group(5)), "mean_evaluation_s": float(m.group(6)), "provenance": origin}]
    for r in _split_block("\n".join(table), ["answered by", "candidates", "share"], text_columns=1):
        rows.append({"id": f"search-answers|{run}|{r['answered by']}", "bench": "search-answers", "run": run, **r,
                     "provenance": origin})
    return rows


SEARCH_LINE = ("run {run} on recorded device: {candidates} candidates in {seconds}s -> {candidates_per_min:.1f} "
               "candidates/min, {evaluations_per_min:.1f} perplexity evaluations/min; mean evaluation "
               "{mean_evaluation_s:.2f}s")
SEARCH_COLUMNS = [["answered by", "answered by", "s"], ["candidates", "candidates", "d"], ["share", "share", ".1%"]]


def migrate_benchmarks(name: str = "benchmarks") -> Path:
    """results/benchmarks.md: prune_eval on the H100 and the CPU, the policy-gradient step, search throughput."""
    path = REPO / "results" / f"{name}.md"
    md = path.read_text()
    b = _blocks(md)   # 0 gpu command, 1 gpu table, 2 gpu search, 3 cpu command, 4 cpu table, 5 pg command,
    #                   6 pg output, 7 cpu search command, 8 cpu search output
    gpu_cmd, cpu_cmd = b[0].strip(), b[3].strip()
    gpu = _origin(path, H100, gpu_cmd)
    rows = _prune_eval_rows(b[1], PRUNE_EVAL_COLUMNS, gpu, {"llama2-7b-shape": gpu_cmd + " --models llama2-7b-shape"},
                            8)
    gpu_search = re.search(r"\(`(python benchmarks/search\.py [^`]*)`\)", md).group(1)
    rows += _search_rows(b[2], H100, gpu_search, path)
    cpu_table = b[4].split("\n", 1)[1]      # its first line is the script's caption
    cpu = _origin(path, "x86_64 CPU, 1 torch thread (2 cores shared with other jobs)", cpu_cmd)
    rows += _prune_eval_rows(cpu_table, PRUNE_EVAL_COLUMNS, cpu, {}, 1)
    head, _, *table, overhead = b[6].strip("\n").splitlines()
    m = re.match(r"(\S+) on (\S+): K=(\d+), batch (\d+) x (\d+) tokens, (\d+) KV groups \+ (\d+) MLP channels", head)
    pg = _origin(path, "x86_64 CPU, 2 torch threads (2 cores shared with other jobs)", b[5].strip())
    o = re.match(r"overhead of a step over its forward passes: ([+-][\d.]+)%; peak memory (\d+) MB", overhead)
    rows.append({"id": "pg-step|summary", "bench": "pg-step-summary", "model": m.group(1), "device": m.group(2),
                 "K": int(m.group(3)), "batch": int(m.group(4)), "seqlen": int(m.group(5)),
                 "kv_groups": int(m.group(6)), "mlp_channels": int(m.group(7)), "overhead": float(o.group(1)) / 100,
                 "peak_mb": int(o.group(2)), "provenance": pg})
    for r in _split_block("\n".join(["header", *table]), ["what", "median s", "min s"], text_columns=1):
        rows.append({"id": f"pg-step|{r['what']}", "bench": "pg-step", **r, "provenance": pg})
    rows += _search_rows(b[8], "x86_64 CPU (2 cores shared with other jobs)", b[7].strip(), path)

    def text(start: str, end: str) -> dict:
        i = md.index(start)
        return {"text": md[i:md.index(end, i)].strip("\n")}

    gpu_cols = [c for c in PRUNE_EVAL_COLUMNS]
    fmt = {"model": "s", "device": "s", "layers": "d", "windows": "d", "seqlen": "d"}
    cols = [[c, c, fmt.get(c, ".3f")] for c in gpu_cols]
    pe = {"bench": "prune_eval"}
    meta = {"renderer": "prune_eval", "blocks": [
        text("# Benchmarks", "```"),
        {"commands": {**pe, "device": "cuda"}},
        {"table": {"where": {**pe, "device": "cuda"}, "columns": cols}},
        text("The 7B-shaped row", "```"),
        {"line": {"where": {"bench": "search", "run": "results/search-gpu-prunerzero"}, "text": SEARCH_LINE}},
        {"table": {"where": {"bench": "search-answers", "run": "results/search-gpu-prunerzero"},
                   "columns": SEARCH_COLUMNS}},
        text("## Development CPU", "```"),
        {"commands": {**pe, "device": "cpu"}},
        {"text": "Per-candidate cost of one search evaluation (metric mul(abs(mul(W, W)), mms(G)), 50% per row):"},
        {"table": {"where": {**pe, "device": "cpu"}, "columns": cols}},
        text("The LLaMA-2-7B-shaped model", "```"),
        {"commands": {"bench": "pg-step-summary"}},
        {"line": {"where": {"bench": "pg-step-summary"},
                  "text": "{model} on {device}: K={K}, batch {batch} x {seqlen} tokens, {kv_groups} KV groups + "
                          "{mlp_channels} MLP channels"}},
        {"table": {"where": {"bench": "pg-step"},
                   "columns": [["what", "what", "s"], ["median s", "median s", ".3f"], ["min s", "min s", ".3f"]]}},
        {"line": {"where": {"bench": "pg-step-summary"},
                  "text": "overhead of a step over its forward passes: {overhead:+.1%}; peak memory {peak_mb} MB"}},
        text("The overhead is the cross-entropy", "```"),
        {"commands": {"bench": "search", "run": "results/search-cpu"}},
        {"line": {"where": {"bench": "search", "run": "results/search-cpu"}, "text": SEARCH_LINE}},
        {"table": {"where": {"bench": "search-answers", "run": "results/search-cpu"}, "columns": SEARCH_COLUMNS}},
    ]}
    return _write_measurements(name, rows, meta)


def migrate_overhead(name: str = "overhead-cpu") -> Path:
    path = REPO / "results" / f"{name}.md"
    md = path.read_text()
    command = re.search(r"^    (python benchmarks/prune_eval\.py .*)$", md, re.M).group(1)
    columns = PRUNE_EVAL_COLUMNS[:5] + ["masks per layer s"] + PRUNE_EVAL_COLUMNS[5:-1] + \
        ["per-layer overhead / ppl", "peak MB"]
    origin = _origin(path, "x86_64 CPU (2 cores heavily shared with other jobs, nice 10)", command)
    rows = _prune_eval_rows(_blocks(md)[0], columns, origin, {}, 1)
    fmt = {"model": "s", "device": "s", "layers": "d", "windows": "d", "seqlen": "d"}
    i = md.index("Command")
    meta = {"renderer": "prune_eval", "blocks": [{"text": md[:i].strip("\n")},
                       {"text": md[i:md.index("\n", i)].rstrip(":") + ":"},
                       {"commands": {"bench": "prune_eval"}},
                       {"table": {"where": {"bench": "prune_eval"}, "columns": [[c, c, fmt.get(c, ".3f")]
                                                                                for c in columns]}},
                       {"text": md[md.index("(`masks s`"):].strip("\n")}]}
    return _write_measurements(name, rows, meta)


def migrate_fidelity(name: str = "fidelity-cpu") -> Path:
    import fidelity

    path = REPO / "results" / f"{name}.md"
    md = path.read_text()
    command = re.search(r"^    (python benchmarks/fidelity\.py .*)$", md, re.M).group(1)
    origin = _origin(path, "x86_64 CPU (2 cores shared with other jobs, nice 10)", command)
    m = re.search(r"^run (\S+): (\d+) evaluated candidates, (\d+) scored at every fidelity \(fidelity windows "
                  r"(\[.*?\]) of eval_windows (\d+), keep ([\d.]+)\)$", md, re.M)
    run = m.group(1)
    rows = []
    for lv in re.finditer(r"^\| (\d+ windows) \| ([\d.]+) \| (\d+) \|$", md, re.M):
        rows.append({"id": f"fidelity|{run}|level|{lv.group(1)}", "bench": "fidelity", "part": "level", "run": run,
                     "fidelity": lv.group(1), "candidates": int(lv.group(3)), "spearman": float(lv.group(2)),
                     "provenance": origin})
    w = re.search(r"^window-evaluations: (\d+) with promotions vs (\d+) all at full fidelity \((\d+)% saved; audit "
                  r"extras not counted\)\nof the best quarter at full fidelity \((\d+)\), (\d+) are in the best "
                  r"keep=([\d.]+) fraction at (.*?) \(would", md, re.M)
    rows.append({"id": f"fidelity|{run}|summary|", "bench": "fidelity", "part": "summary", "run": run,
                 "evaluated": int(m.group(2)), "complete": int(m.group(3)), "windows": m.group(4),
                 "eval_windows": int(m.group(5)), "keep": float(m.group(6)), "spent": int(w.group(1)),
                 "flat": int(w.group(2)), "saved": int(w.group(3)) / 100, "top_quarter": int(w.group(4)),
                 "top_kept": int(w.group(5)), "first": w.group(7), "provenance": origin})
    i, j = md.index("Command"), md.index("Setting:")
    meta = {"renderer": "fidelity", "blocks": [{"text": md[:i].strip("\n")}, {"text": md[i:md.index("\n", i)]},
                       {"commands": {"bench": "fidelity"}},
                       {"text": md[j:md.index("\n\nrun ", j)].strip("\n")}, *fidelity.REPORT_BLOCKS,
                       {"text": md[md.index("Caveat:"):].strip("\n")}]}
    return _write_measurements(name, rows, meta)


MEASUREMENTS = {"structural-speed": migrate_speed, "structural-speed-batch8": migrate_speed,
                "benchmarks": migrate_benchmarks, "overhead-cpu": migrate_overhead, "fidelity-cpu": migrate_fidelity}


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
              MEASUREMENTS[name](name) if name in MEASUREMENTS else
              migrate_structural(name) if name.startswith("structural") else migrate(name))
