"""The results code: grids run, resume and render from rows; selections and claims behave; committed rows are
consistent with the configurations that ran them. That the committed tables, pages and findings are the ones the
rows give is tests/test_generated.py's check (no test here reads prose)."""
import dataclasses
import json
import math
import re
import sys

import pytest
from conftest import REPO

from prunerzero import provenance
from prunerzero.metric.simplify import simplify
from prunerzero.provenance import cpu_model
from prunerzero.results.docs import all_results
from prunerzero.results.grid import STRUCTURAL_LATER_FIELDS
from prunerzero.search import select as select_formula
from prunerzero.search.engine import read_evaluations

sys.path.insert(0, str(REPO / "benchmarks"))   # the benchmark scripts some tests run
RESULTS = REPO / "results"
COMMITTED = {r.name: r for r in all_results(REPO)}


def folder(name):
    """A committed result's folder, in results/ or in its study."""
    return COMMITTED[name].folder


def grid_rows(name):
    from prunerzero.results import load_grid, read_rows

    grid = load_grid(COMMITTED[name].grid_path)
    rows = read_rows(folder(name) / "rows.jsonl")
    return grid, {(r["method"], r["mode"], r["pattern"], r["seed"]): r for r in rows}, rows


def test_cpu_model_names_the_isa_torch_uses():
    import torch

    assert torch.backends.cpu.get_cpu_capability() in cpu_model()


def _committed_repo(root, files: dict[str, str]):
    """A git repository at ``root`` holding ``files`` in one commit; returns a ``git(*args)`` runner for it."""
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                       capture_output=True)

    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    return git


def test_git_state_is_dirty_for_code_but_not_for_results(tmp_path, monkeypatch):
    """A runner's rows under results/ do not make the next row 'dirty'; an edit to code or a grid does."""
    _committed_repo(tmp_path, {"results/rows.jsonl": "{}\n", "grid.yaml": "name: g\n"})
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    provenance.git_state.cache_clear()
    try:
        assert provenance.git_state()["dirty"] is False
        (tmp_path / "results" / "rows.jsonl").write_text("{}\n{}\n")
        provenance.git_state.cache_clear()
        state = provenance.git_state()
        assert state["dirty"] is False and len(state["commit"]) == 40
        (tmp_path / "grid.yaml").write_text("name: h\n")
        provenance.git_state.cache_clear()
        assert provenance.git_state()["dirty"] is True
    finally:
        provenance.git_state.cache_clear()


def test_rows_name_the_commit_a_command_started_from(tmp_path, monkeypatch):
    """A long `prunerzero bench` writes rows long after it loaded its code: their commit is the one at its start,
    not whatever HEAD is when a row is written."""
    import subprocess

    from prunerzero.cli import main

    git = _committed_repo(tmp_path, {"a.py": "x = 1\n"})
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    provenance.git_state.cache_clear()
    try:
        first = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True,
                               text=True).stdout.strip()
        assert main(["bench", str(tmp_path / "missing.yaml")]) == 2      # any command: the state is taken first
        git("commit", "-q", "--allow-empty", "-m", "second")             # a commit while the command runs
        assert provenance.git_state()["commit"] == first
    finally:
        provenance.git_state.cache_clear()


def test_full_protocol_baselines_match_the_official_wanda_reference():
    """Issue 3: dense and Wanda 50% sequential within 1% of the official code (numbers in results/reference.json)."""
    ref = json.loads((RESULTS / "reference.json").read_text())
    _, b, _ = grid_rows("baselines")
    dense, wanda = b[("dense", None, "-", 0)], b[("wanda", "sequential", "0.5", 0)]
    assert dense["windows"]["wikitext2"] == 148 and wanda["windows"]["wikitext2"] == 148
    assert abs(dense["ppl"]["wikitext2"] / ref["dense_wikitext2"] - 1) < ref["tolerance"]
    assert abs(wanda["ppl"]["wikitext2"] / ref["wanda_u_sequential_wikitext2"] - 1) < ref["tolerance"]


def test_confirmed_formula_is_the_selected_one_and_beats_wanda_on_test():
    sel = json.loads((RESULTS / "selection-gpu.json").read_text())
    _, c, _ = grid_rows("confirm-gpu")
    assert sel["beats_reference"]
    for pat in ("0.5", "2:4", "4:8"):
        found, wanda = c[("found", "sequential", pat, 0)], c[("wanda", "sequential", pat, 0)]
        assert found["formula"] == sel["chosen"]["formula"]
        assert found["windows"]["wikitext2"] == 148
        assert found["ppl"]["wikitext2"] < wanda["ppl"]["wikitext2"] and found["ppl"]["c4"] < wanda["ppl"]["c4"]
    for pat, tag in (("0.5", "u"), ("2:4", "2of4")):  # the prunerzero prune CLI gave the same numbers
        cli = json.loads((RESULTS / "confirm-gpu" / f"prune-found-{tag}.json").read_text())
        assert cli["pruned"]["wikitext2"]["ppl"] == pytest.approx(c[("found", "sequential", pat, 0)]["ppl"]["wikitext2"],
                                                                  rel=1e-6)


def test_bench_runs_a_grid_resumes_and_records_provenance(tiny_model_dir, tmp_path, capsys):
    """A real grid on a tiny model: rows with protocol and provenance, a rerun computes nothing, the table is
    rendered from the rows, exact sparsity."""
    import yaml

    from prunerzero.cli import main
    from prunerzero.results import read_rows

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "tiny", "protocol": {"model": str(tiny_model_dir), "seqlen": 64, "nsamples": 2, "eval_windows": 2},
        "seeds": [0, 1], "patterns": [0.5, "2:4"],
        "methods": ["dense", {"name": "wanda", "mode": "sequential"}, {"name": "f", "formula": "mul(abs(W), X)",
                                                                         "mode": "oneshot"}]}))
    out = tmp_path / "res"
    argv = ["bench", str(grid), "--out", str(out), "--quiet", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    rows = read_rows(out / "rows.jsonl")
    assert len(rows) == 1 + 2 * 2 * 2
    for r in rows:
        assert r["provenance"]["commit"] and r["provenance"]["versions"]["torch"] and r["provenance"]["command"]
        # the CPU's model and the vector ISA torch's kernels use: float sums differ between ISAs
        assert r["provenance"]["device"].startswith(cpu_model()) and r["provenance"]["device"].endswith(" threads")
        assert r["protocol"]["seqlen"] == 64 and r["protocol"]["nsamples"] == 2
        if r["method"] != "dense":
            assert r["sparsity"] == 0.5
    assert {r["seed"] for r in rows if r["method"] == "wanda"} == {0, 1}
    md = (tmp_path / "res.md").read_text()
    assert " ± " in md and "Not yet run" not in md
    before = (out / "rows.jsonl").read_text()
    assert main(argv) == 0
    assert (out / "rows.jsonl").read_text() == before


def test_bench_runs_procedures_as_prune_does(tiny_model_dir, tmp_path):
    """Grid methods with a procedure (OBS update, OWL allocation, N:M permutation): each cell equals ``pipeline.prune``
    with the same settings, OWL runs only at unstructured patterns and permutation only at N:M (the table says n/a),
    and a plain method keeps the cell id it had before procedures existed."""
    import yaml

    from prunerzero.cli import main
    from prunerzero.results import load_grid, read_rows
    from prunerzero.models import load_model
    from prunerzero.pipeline import CalibConfig, evaluate_all, prune
    from prunerzero.prune.masks import parse_pattern

    grid = tmp_path / "p.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "tiny-procedures", "protocol": {"model": str(tiny_model_dir), "seqlen": 64, "nsamples": 2,
                                                "eval_windows": 2},
        "seeds": [0], "patterns": [0.5, "2:4"],
        "methods": [{"name": "wanda"}, {"name": "wanda-obs", "formula": "wanda", "update": "obs"},
                    {"name": "owl", "formula": "wanda", "allocation": "owl", "owl_lambda": 0.1, "owl_m": 3},
                    {"name": "ria-perm", "formula": "ria", "permute": True},
                    {"name": "sparsegpt"}, {"name": "sgpt-d", "formula": "sparsegpt", "percdamp": 0.5}]}))
    g = load_grid(grid)
    assert g.cells()[0].id == f"{tiny_model_dir}|wanda|sequential|0.5|seed=0|protocol={g.cells()[0].protocol_key}"
    assert [(c.method.name, c.pattern) for c in g.cells()] == [
        ("wanda", "0.5"), ("wanda", "2:4"), ("wanda-obs", "0.5"), ("wanda-obs", "2:4"), ("owl", "0.5"),
        ("ria-perm", "2:4"), ("sparsegpt", "0.5"), ("sparsegpt", "2:4"), ("sgpt-d", "0.5"), ("sgpt-d", "2:4")]
    assert g.cells()[-1].id.endswith("|percdamp=0.5") and "percdamp" not in g.cells()[-3].id
    out = tmp_path / "res"
    assert main(["bench", str(grid), "--out", str(out), "--quiet", "--cache-dir", str(tmp_path / "cache")]) == 0
    rows = {(r["method"], r["pattern"]): r for r in read_rows(out / "rows.jsonl")}
    assert len(rows) == 10 and "procedure" not in rows[("wanda", "0.5")]
    assert rows[("sgpt-d", "2:4")]["procedure"]["percdamp"] == 0.5
    assert rows[("owl", "0.5")]["procedure"] == {"update": "none", "allocation": "owl", "permute": False,
                                                 "owl_lambda": 0.1, "owl_m": 3.0}
    md = (tmp_path / "res.md").read_text()
    assert "| sgpt-d (sequential, damp 0.5) | " in md
    assert "| owl (sequential, OWL λ 0.1 M 3) | " in md and "| n/a |" in md and "| ria-perm (sequential, permuted) | n/a |" in md
    for (name, pat), kw in {("wanda-obs", "2:4"): {"update": "obs"},
                            ("owl", "0.5"): {"allocation": "owl", "owl_lambda": 0.1, "owl_m": 3.0},
                            ("ria-perm", "2:4"): {"permute": True}, ("sgpt-d", "2:4"): {"percdamp": 0.5}}.items():
        lm = load_model(str(tiny_model_dir), seqlen=64, cache=tmp_path / "cache")
        metric = {"wanda-obs": "wanda", "owl": "wanda", "ria-perm": "ria", "sgpt-d": "sparsegpt"}[name]
        pattern = parse_pattern(0.5, pat) if ":" in pat else parse_pattern(0.5, None, "row")
        prune(lm, metric, pattern, CalibConfig(2, 0, 1, None, tmp_path / "cache"), progress=False, **kw)
        ppl = evaluate_all(lm, ["wikitext2"], 2, 1, None, False, split="test")["wikitext2"]["ppl"]
        assert ppl == pytest.approx(rows[(name, pat)]["ppl"]["wikitext2"], rel=1e-6), name
    assert rows[("wanda-obs", "2:4")]["ppl"]["wikitext2"] != rows[("wanda", "2:4")]["ppl"]["wikitext2"]
    assert rows[("sgpt-d", "2:4")]["ppl"]["wikitext2"] != rows[("sparsegpt", "2:4")]["ppl"]["wikitext2"]


def test_runners_sharing_a_grid_skip_claimed_cells_and_take_over_dead_claims(tiny_model_dir, tmp_path):
    """Two ``prunerzero bench`` processes on one grid: a cell claimed by a live runner is left to it, a claim left
    by a runner that died is taken over, and a second runner with the seeds reversed adds nothing new."""
    import hashlib
    import os
    import socket
    import subprocess
    import sys

    import yaml

    from prunerzero.cli import main
    from prunerzero.results import load_grid, read_rows

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "tiny", "protocol": {"model": str(tiny_model_dir), "seqlen": 64, "nsamples": 2, "eval_windows": 1},
        "seeds": [0, 1], "patterns": [0.5], "methods": ["dense", {"name": "magnitude", "mode": "oneshot"}]}))
    cells = {c.seed: c for c in load_grid(grid).cells() if c.method.name == "magnitude"}
    claims = tmp_path / "res" / ".claims"
    claims.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    (claims / hashlib.sha1(cells[0].id.encode()).hexdigest()).write_text(f"{host} {os.getpid()}")   # live
    (claims / hashlib.sha1(cells[1].id.encode()).hexdigest()).write_text(f"{host} {dead.pid}")      # dead
    argv = ["bench", str(grid), "--out", str(tmp_path / "res"), "--quiet", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    ids = [r["id"] for r in read_rows(tmp_path / "res" / "rows.jsonl")]
    assert cells[1].id in ids and cells[0].id not in ids and len(ids) == 2   # dense + the taken-over cell
    assert [p.name for p in claims.iterdir()] == [hashlib.sha1(cells[0].id.encode()).hexdigest()]
    (claims / hashlib.sha1(cells[0].id.encode()).hexdigest()).unlink()
    assert main(argv + ["--seeds", "1,0"]) == 0      # seeds reversed: the same dense cell (lowest seed), no repeats
    ids = [r["id"] for r in read_rows(tmp_path / "res" / "rows.jsonl")]
    assert len(ids) == len(set(ids)) == 3 and cells[0].id in ids and not list(claims.iterdir())


def test_a_runner_of_some_seeds_runs_no_second_dense_cell(tmp_path):
    """`--seeds 1` beside a runner of seed 0: the dense cell stays at the grid's lowest seed (run by that runner),
    not a second dense cell at seed 1 that the grid's table never shows."""
    import yaml

    from prunerzero.results import load_grid

    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "protocol": {"model": "smollm2"}, "seeds": [0, 1, 2],
                                    "patterns": [0.5], "methods": ["dense", {"name": "magnitude"}]}))
    grid = load_grid(path)
    every = {c.id for c in grid.cells()}
    dense = [c for c in grid.cells() if c.method.name == "dense"]
    assert len(dense) == 1 and dense[0].seed == 0
    for seeds in ([1], [2, 1], [2, 1, 0], [0]):
        sub = grid.with_seeds(seeds)
        ids = {c.id for c in sub.cells()}
        assert ids <= every, seeds                                          # nothing outside the grid's table
        assert (dense[0].id in ids) == (0 in seeds)
        assert {c.seed for c in sub.cells() if c.method.name == "magnitude"} == set(seeds)


def test_a_structural_table_with_missing_seeds_keeps_its_columns():
    """A method with fewer seeds than the grid says so inside its perplexity cell (``(n=2)``), not after the row."""
    from prunerzero.results import load_grid, read_rows, render

    grid = load_grid(REPO / "grids" / "structural-official-lr-cpu.yaml")
    rows = read_rows(RESULTS / "structural-official-lr-cpu" / "rows.jsonl")
    drop = next(r["id"] for r in rows if r["method"] == "official/lr0.02" and r["seed"] == 1)
    md = render(grid, [r for r in rows if r["id"] != drop])
    table = [ln for ln in md.splitlines() if ln.startswith("| 20% |") or ln.startswith("| 0 |")]
    assert len({ln.count("|") for ln in table}) == 1 and all(ln.endswith("|") for ln in table)
    line = next(ln for ln in table if "| official/lr0.02 |" in ln)
    assert line.split("|")[4].strip().endswith("(n=2)")


def fake_run(tmp_path, name, formulas):
    run = tmp_path / name
    run.mkdir()
    lines = []
    for i, (f, ppl) in enumerate(formulas):
        s = simplify(f)
        lines.append(json.dumps({"generation": 0, "formula": f, "simplified": s.text, "latex": s.latex, "key": s.key,
                                 "size": i + 3, "depth": 2, "ppl": ppl, "seconds": 1.0, "hit": "eval"}))
    (run / "evaluations.jsonl").write_text("\n".join(lines) + "\n")
    return str(run)


def test_selection_skips_known_metrics_and_failed_formulas(tmp_path):
    run = fake_run(tmp_path, "r", [("mul(X, sqr(W))", 10.0),            # Wanda rediscovered: not a candidate
                                   ("mul(sqrt(sub(X, G)), abs(W))", 11.0),
                                   ("mul(abs(W), sqrt(add(X, G)))", 12.0),
                                   ("mul(abs(W), sqrt(mul(X, G)))", 13.0),
                                   ("log(G)", 1e5)])                     # penalty: never a candidate
    cands = select_formula.candidates([run], 5, "wanda", ["ria"])
    assert [c["name"] for c in cands[:2]] == ["wanda", "ria"]
    found = [c["formula"] for c in cands[2:]]
    assert found == ["mul(sqrt(sub(X, G)), abs(W))", "mul(abs(W), sqrt(add(X, G)))", "mul(abs(W), sqrt(mul(X, G)))"]
    assert len(select_formula.candidates([run], 2, "wanda", [])) == 3


def test_selection_prefers_a_formula_that_beats_the_reference_at_every_pattern():
    ref = {"name": "wanda", "run": None, "ppl": {"u": 50.0, "2:4": 200.0}}
    a = {"name": "a", "run": "r", "ppl": {"u": 40.0, "2:4": 210.0}}     # best mean ratio, loses at 2:4
    b = {"name": "b", "run": "r", "ppl": {"u": 49.0, "2:4": 199.0}}     # beats everywhere
    chosen, beats = select_formula.choose([ref, a, b], ["u", "2:4"], "wanda")
    assert chosen is b and beats
    chosen, beats = select_formula.choose([ref, a], ["u", "2:4"], "wanda")
    assert chosen is a and not beats                                   # none beats it everywhere: best ratio
    assert select_formula.choose([{**ref, "ppl": {}}, b], ["u", "2:4"], "wanda") == (None, False)


def test_selection_fallback_follows_the_runs_combine():
    """Where none beats the reference everywhere, a worst-setting search's selection takes the lowest worst-pattern
    ratio (a 2:4 gain does not buy back a 50% loss); a mean search's, the lowest mean ratio. The default comes from
    the runs' fitness.combine (margin scores the worse setting too); runs that disagree are refused."""
    ref = {"name": "wanda", "run": None, "ppl": {"u": 50.0, "2:4": 200.0}}
    trade = {"name": "t", "run": "r", "ppl": {"u": 51.0, "2:4": 180.0}}    # mean ratio -0.043, worst +0.020
    even = {"name": "e", "run": "r", "ppl": {"u": 50.5, "2:4": 199.0}}     # mean ratio +0.002, worst +0.010
    assert select_formula.choose([ref, trade, even], ["u", "2:4"], "wanda") == (trade, False)
    assert select_formula.choose([ref, trade, even], ["u", "2:4"], "wanda", "worst") == (even, False)
    assert even["worst_ratio"] == pytest.approx(math.log(50.5 / 50.0))
    runs = {n: str(folder(f"search-cpu-{n}")) for n in ("wx5", "wx6", "margin-wx")}
    assert [select_formula.runs_combine([runs[n]]) for n in ("wx5", "wx6", "margin-wx")] == ["mean", "worst", "worst"]
    assert select_formula.runs_combine([runs["wx6"], runs["margin-wx"]]) == "worst"
    with pytest.raises(select_formula.UserError, match="--combine mean or --combine worst"):
        select_formula.runs_combine([runs["wx5"], runs["wx6"]])


@pytest.mark.parametrize("name", ["structural-gpu", "structural-cpu", "structural-ablation"])
def test_structural_grids_hold_the_committed_runs(name):
    """Every structural row is the cell of its grid that ran it: the same config (formula, steps, lr, preset) and
    removed fraction; the one-shot and const rows need no metric, the others name theirs."""
    grid, _, rows = grid_rows(name)
    assert grid.structural and len(rows) == len(grid.cells())
    methods = {(m.name, m.mode): m for m in grid.methods}
    for r in rows:
        assert r["kind"] == "structural" and r["provenance"]["command"] and r["provenance"]["commit"]
        if r["method"] == "dense":
            assert r["removed"] == 0 and r["structural"] is None
            continue
        cfg = methods[(r["method"], r["mode"])].structural_config(float(r["pattern"]), r["seed"])
        assert {**STRUCTURAL_LATER_FIELDS, **r["structural"]} == dataclasses.asdict(cfg)  # older rows lack them
        assert abs(r["removed"] - cfg.sparsity) < 1e-3 and r["sparsity"] == cfg.sparsity
        assert (r["formula"] is None) == (cfg.init == "const")


SELECTIONS = sorted(name for name, r in COMMITTED.items() if r.kind == "selection")


def test_the_selections_are_found():
    assert {"selection-gpu", "selection-cpu", "selection-cpu-wxg4"} <= set(SELECTIONS)


@pytest.mark.parametrize("name", SELECTIONS)
def test_selection_table_re_renders_from_its_rows(name):
    """A committed selection's table (NAME.md, written by the selection) from its grid, rows and candidates, and the
    choice in NAME.json is the one the rows give."""
    from prunerzero.results import load_grid, read_rows

    out = folder(name)
    saved = json.loads(out.with_suffix(".json").read_text())
    grid, rows = load_grid(out / "grid.yaml"), read_rows(out / "rows.jsonl")
    cands = [{k: c[k] for k in ("name", "formula", "simplified", "search_ppl", "run")} for c in saved["candidates"]]
    scored = select_formula.collect(grid, rows, cands)
    combine = saved["meta"].get("combine", "mean")
    chosen, beats = select_formula.choose(scored, saved["meta"]["patterns"], saved["meta"]["reference"], combine)
    assert chosen["formula"] == saved["chosen"]["formula"] and beats == saved["beats_reference"]
    md = select_formula.render_selection(grid, rows, scored, saved["meta"]["patterns"], saved["meta"]["reference"],
                                         chosen, beats, combine)
    assert md == out.with_suffix(".md").read_text()


def test_measurement_documents_render_blocks_and_refuse_unknown_ones():
    from prunerzero.errors import UserError
    from prunerzero.results import render_document

    rows = [{"id": "a", "k": "x", "v": 1.23456, "n": 3, "provenance": {"command": "python b.py", "device": "cpu"}},
            {"id": "b", "k": "y", "v": None, "n": 4, "provenance": {"command": "python b.py", "device": "cpu"}}]
    meta = {"blocks": [{"text": "# T"}, {"commands": {"k": "x"}},
                       {"table": {"where": {}, "columns": [["k", "k", "s"], ["v", "v", ".2f"]]}},
                       {"line": {"where": {"k": "x"}, "text": "n={n:d} v={v:.1f} {__class__} {v.real}"}}]}
    assert render_document(rows, meta) == ("# T\n\n```\npython b.py\n```\n\nDevice: cpu.\n\n| k | v |\n| --- | ---: |\n"
                                           "| x | 1.23 |\n| y | - |\n\nn=3 v=1.2 - {v.real}\n")
    with pytest.raises(UserError, match="block 0 is none of"):
        render_document(rows, {"blocks": [{"chart": 1}]})


def test_selection_with_seeds_needs_more_than_the_spreads():
    ref = {"name": "wanda", "run": None, "ppl": {"u": [50.0, 50.5, 49.5]}}
    close = {"name": "a", "run": "r", "ppl": {"u": [49.6, 50.1, 49.1]}}    # lower mean, inside the spreads
    clear = {"name": "b", "run": "r", "ppl": {"u": [47.0, 47.2, 46.8]}}
    assert select_formula.choose([ref, close], ["u"], "wanda") == (close, False)
    assert select_formula.choose([ref, close, clear], ["u"], "wanda") == (clear, True)


def test_bench_runs_a_structural_grid_resumes_and_renders(tiny_model_dir, tmp_path):
    """A structural grid on a tiny model: dense, policy gradient from a formula and from const, one-shot, two seeds;
    rows with the config, removed fraction and provenance; a rerun computes nothing; the table comes from rows."""
    import yaml

    from prunerzero.cli import main
    from prunerzero.results import load_grid, read_rows, render
    from prunerzero.pipeline import StructuralConfig

    grid = tmp_path / "s.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "tiny-structural", "protocol": {"model": str(tiny_model_dir), "seqlen": 64, "eval_windows": 2},
        "structural": {"eval_seqlens": [16, 32], "latency_seqlen": 16, "latency_repeats": 1, "curve_target": 1e9},
        "seeds": [0, 1], "patterns": [0.3],
        "methods": ["dense",
                    {"name": "f", "kind": "structural", "init": "metric", "formula": "mul(abs(W), sqrt(X))",
                     "steps": 2, "nsamples": 2, "calib_seqlen": 16, "batch_size": 1, "lr": 0.5},
                    {"name": "c", "kind": "structural", "init": "const", "steps": 2, "nsamples": 2,
                     "calib_seqlen": 16, "batch_size": 1},
                    {"name": "f-curve", "kind": "structural", "init": "metric", "formula": "mul(abs(W), sqrt(X))",
                     "steps": 2, "nsamples": 2, "calib_seqlen": 16, "batch_size": 1, "lr": 0.5, "curve_every": 1},
                    {"name": "f", "kind": "structural", "init": "oneshot", "formula": "mul(abs(W), sqrt(X))",
                     "nsamples": 2, "calib_seqlen": 16},
                    {"name": "f-ls", "kind": "structural", "init": "oneshot", "formula": "mul(abs(W), sqrt(X))",
                     "nsamples": 2, "calib_seqlen": 16, "init_nsamples": 2, "init_seqlen": 16,
                     "reconstruct": True}]}))
    out = tmp_path / "res"
    argv = ["bench", str(grid), "--out", str(out), "--quiet", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    rows = read_rows(out / "rows.jsonl")
    assert len(rows) == 1 + 5 * 2
    dense = next(r for r in rows if r["method"] == "dense")
    for r in rows:
        assert set(r["ppl"]) == {"wikitext2@16", "wikitext2@32"} and r["windows"]["wikitext2@32"] == 2
        assert r["provenance"]["commit"] and r["provenance"]["command"] and r["provenance"]["versions"]["torch"]
        assert r["latency_ms"] > 0 and r["protocol"]["evaluation"]["seqlens"] == [16, 32]
        if r["method"] != "dense":
            assert 0.25 < r["removed"] < 0.35 and r["params"] < dense["params"] and r["sparsity"] == 0.3
            assert r["structural"]["samples"] == StructuralConfig.samples   # a default the grid left alone
            assert r["structural"]["nsamples"] == 2 and r["structural"]["seed"] == r["seed"]
            assert (r["formula"] is None) == (r["mode"] == "const")
    assert {r["mode"] for r in rows if r["method"] == "f"} == {"metric", "oneshot"}
    md = (tmp_path / "res.md").read_text()
    assert md == render(load_grid(grid), rows)
    assert " ± " in md and "Not yet run" not in md and "| 30% | f | oneshot |" in md
    ls = [r for r in rows if r["method"] == "f-ls"]
    assert all(r["compensation"]["windows"] == [2, 16] and r["structural"]["reconstruct"] for r in ls)
    assert all(r["compensation"] is None for r in rows if r["method"] in ("f", "c"))
    assert "least squares on 2 x 16" in md and "as trained" in md
    # learning curves: step 0, each step, the last; the last point is the sliced model's perplexity, and observing
    # changes nothing (the same cell without a curve gives the same model)
    for r in (r for r in rows if r["method"] == "f-curve"):
        plain = next(p for p in rows if p["method"] == "f" and p["mode"] == "metric" and p["seed"] == r["seed"])
        assert [pt["step"] for pt in r["curve"]] == [0, 1, 2] and r["structural"]["curve_every"] == 1
        assert r["ppl"] == plain["ppl"]
        assert r["curve"][-1]["ppl"] == pytest.approx(r["ppl"], rel=1e-5)
        assert r["curve"][0]["ppl"] != r["curve"][-1]["ppl"]
        assert 0 < r["curve_seconds"] < r["seconds"]   # the curve's evaluations, kept out of prune_seconds
    assert all("curve" not in r and "curve_seconds" not in r for r in rows if r["method"] != "f-curve")
    assert "learning curve, WikiText-2 ppl @16" in md and "| 2 | " in md and "| 1 steps |" in md
    assert "Steps to reach perplexity 1e+09" in md and "| f-curve | 0 | 0 |" in md
    before = (out / "rows.jsonl").read_text()
    assert main(argv) == 0
    assert (out / "rows.jsonl").read_text() == before


def test_curve_figure_plots_the_rows_curves_and_refuses_rows_without_one(tmp_path, monkeypatch, capsys):
    import figures

    rows = tmp_path / "rows.jsonl"
    curve = [{"step": s, "ppl": {"wikitext2@128": 200.0 - s}} for s in (0, 50, 100)]
    rows.write_text(json.dumps({"id": "d", "method": "dense", "pattern": "-", "seed": 0, "ppl": {"wikitext2@128": 56.1}}) + "\n"
                    + json.dumps({"id": "a", "method": "a", "pattern": "0.2", "seed": 0, "ppl": {}, "curve": curve}) + "\n")
    out = tmp_path / "c.png"
    monkeypatch.setattr(sys, "argv", ["figures.py", "--curves", str(rows), "--target", "129.96", "--out", str(out)])
    figures.main()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows.write_text(json.dumps({"id": "a", "method": "a", "pattern": "0.2", "seed": 0, "ppl": {}}) + "\n")
    with pytest.raises(SystemExit, match="no row .* has a learning curve"):
        figures.main()


@pytest.mark.parametrize("method, message", [
    ({"name": "x", "kind": "structural", "stepz": 3}, "unknown key 'methods[0].stepz'"),
    ({"name": "x", "kind": "structural", "metric": "wanda"}, "its 'formula'"),
    ({"name": "x", "kind": "structural", "steps": 0}, "methods[0].steps must be >= 1"),
    ({"name": "x", "kind": "structural", "lr": "fast"}, "methods[0].lr must be a number"),
    ({"name": "x", "kind": "structural", "init": "magic"}, "methods[0].init 'magic' is unknown"),
    ({"name": "x", "kind": "structural", "attn_score": "q"}, "methods[0].attn_score 'q' is unknown"),
    ({"name": "x", "kind": "structural", "uniform": 1}, "must be true or false"),
    ({"name": "x", "kind": "structural", "preset": "nope"}, "unknown structural preset 'nope'"),
    ({"name": "x", "kind": "structural", "formula": "mul(W, Q)"}, "Q"),
    ({"name": "x", "kind": "other"}, "methods[0].kind 'other' is unknown"),
    ({"name": "x", "kind": "structural", "curve_every": -1}, "methods[0].curve_every must be >= 0"),
    ({"name": "x", "kind": "structural", "init": "oneshot", "curve_every": 5}, "needs the policy gradient"),
])
def test_structural_grid_keys_are_checked_before_a_model_loads(tmp_path, method, message):
    import yaml

    from prunerzero.errors import UserError
    from prunerzero.results import load_grid

    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"protocol": {"model": "/nonexistent"}, "patterns": [0.2], "methods": [method]}))
    with pytest.raises(UserError, match=re.escape(message)):
        load_grid(path)


def test_ratio_tables_compare_with_the_reference_of_the_same_mode(tmp_path):
    """With the reference in two statistics modes, one-shot methods are compared with one-shot Wanda and sequential
    ones with sequential Wanda (grids/fitness-mode-cpu.yaml)."""
    import yaml

    from prunerzero.results import load_grid, render

    raw = {"name": "t", "protocol": {"model": "a"}, "seeds": [0, 1, 2], "patterns": [0.5], "reference": "wanda",
           "methods": [{"name": "wanda", "mode": "oneshot"}, {"name": "ria", "mode": "oneshot"},
                       {"name": "wanda", "mode": "sequential"}, {"name": "ria", "mode": "sequential"}]}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    grid = load_grid(path)
    ppl = {("wanda", "oneshot"): 100, ("ria", "oneshot"): 110, ("wanda", "sequential"): 50, ("ria", "sequential"): 40}
    rows = [{"id": c.id, "ppl": {"wikitext2": ppl[(c.method.name, c.method.mode)] + c.seed * 0.1}}
            for c in grid.cells()]
    md = render(grid, rows)
    assert "| ria (oneshot) | 1.100 (worse) |" in md and "| ria (sequential) | 0.800 (better) |" in md


@pytest.mark.parametrize("extra, message", [
    ({"patterns": ["2:4"]}, "is N:M"),
    ({"methods": [{"name": "s", "kind": "structural"}, "wanda"]}, "mixes structural methods"),
    ({"structural": {"eval_seqlen": [1]}}, "unknown key 'structural.eval_seqlen'"),
    ({"structural": {"curve_target": "low"}}, "structural.curve_target must be a number"),
    ({"structural": {"eval_tokens": 4096}, "protocol": {"eval_windows": 2}}, "keep one"),
    ({"structural": {"eval_tokens": 64}}, "structural.eval_tokens must be >= 2048"),
    ({"structural": {"latency_repeats": -1}}, "structural.latency_repeats must be >= 0"),
    ({"methods": ["wanda"], "structural": {}}, "no 'kind: structural' method"),
    ({"protocol": {"model": "/nonexistent", "nsamples": 8}}, "set it on the methods"),
])
def test_structural_grid_shape_is_checked(tmp_path, extra, message):
    import yaml

    from prunerzero.errors import UserError
    from prunerzero.results import load_grid

    raw = {"protocol": {"model": "/nonexistent"}, "patterns": [0.2], "methods": [{"name": "s", "kind": "structural"}]}
    raw.update(extra)
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=re.escape(message)):
        load_grid(path)


def test_transfer_table_ratio_to_the_reference_and_search_models(tmp_path):
    """A grid with ``reference`` and ``searched_on`` renders, per model, each method's ratio to the reference with
    a verdict only where the seeds support it, and marks the models its formula was searched on."""
    import yaml

    from prunerzero.errors import UserError
    from prunerzero.results import load_grid, render

    raw = {"name": "t", "protocol": {"model": "a"}, "models": ["a", "b"], "seeds": [0, 1, 2], "patterns": [0.5],
           "reference": "wanda", "searched_on": {"f": ["a"]},
           "methods": ["dense", "wanda", {"name": "f", "formula": "mul(abs(W), X)"}, "ria"]}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    grid = load_grid(path)
    ppl = {("a", "wanda"): [50, 51, 52], ("a", "f"): [40, 41, 42], ("a", "ria"): [49, 52, 55],
           ("b", "wanda"): [50, 51, 52], ("b", "f"): [60, 61, 62], ("b", "ria"): [50, 51, 52]}
    rows = [{"id": c.id, "ppl": {"wikitext2": 20.0 if c.method.name == "dense" else
                                 ppl[(c.model, c.method.name)][c.seed]}} for c in grid.cells()]
    md = render(grid, rows)
    assert "**a: ratio to wanda" in md and "**b: ratio to wanda" in md
    a, b = md.split("**b: ratio to wanda")
    assert "| f (sequential) | 0.804 (better) | yes |" in a
    assert "| ria (sequential) | 1.020 (within spread) | - |" in a
    assert "| f (sequential) | 1.196 (worse) | no |" in b
    path.write_text(yaml.safe_dump({**raw, "reference": ["wanda", "ria"]}))  # two references: a table for each
    md = render(load_grid(path), rows)
    assert md.count("ratio to wanda") == 2 and md.count("ratio to ria") == 2
    assert "| wanda (sequential) | 0.981 (within spread) | - |" in md.split("**a: ratio to ria")[1]
    for bad, msg in [({"reference": "nope"}, "reference 'nope' is not one of its methods"),
                     ({"searched_on": {"g": ["a"]}}, "searched_on names 'g'"),
                     ({"searched_on": {"f": "a"}}, "searched_on.f must be a list of models"),
                     ({"reference": None}, "searched_on needs a reference"),
                     ({"reference": ["wanda", "wanda"]}, "reference repeats a method"),
                     ({"reference": [{"x": 1}]}, "is not one of its methods")]:
        path.write_text(yaml.safe_dump({**raw, **bad}))
        with pytest.raises(UserError, match=msg):
            load_grid(path)


def test_notebook_transfer_table_agrees_with_the_rendered_report():
    """report.transfer_table (the metric_principles lesson) gives each method the ratio and verdict that the
    committed transfer report prints."""
    from prunerzero.results import load_grid, read_rows, render
    from prunerzero.report import transfer_table

    grid = load_grid(REPO / "grids" / "transfer-cpu.yaml")
    md = render(grid, read_rows(RESULTS / "transfer-cpu" / "rows.jsonl"))
    tt = transfer_table(RESULTS / "transfer-cpu" / "rows.jsonl")
    assert set(tt.model) == set(grid.models) and (tt.seeds == 3).all()
    for model in grid.models:
        section = md.split(f"**{model}: ratio to wanda")[1].split("**")[1]  # past the heading, to the next
        for method, sub in tt[(tt.model == model) & (tt.method != "wanda")].groupby("method"):
            label = next(m.label for m in grid.methods if m.name == method)
            line = next(line for line in section.splitlines() if line.startswith(f"| {label} |"))
            for p in grid.patterns:
                r = sub[sub.pattern == p].iloc[0]
                assert f"{r.ratio:.3f} ({r.verdict})" in line, (model, method, p)


def test_transfer_table_takes_a_model_measured_with_bos_in_that_regime_only():
    """Both transfer grids together: Gemma 3 comes from the BOS grid only (labelled so), the other families from
    Wanda's windows, each cell the ratio and verdict its own grid renders."""
    from prunerzero.results import load_grid, render, read_rows
    from prunerzero.report import transfer_table

    both = transfer_table([RESULTS / "transfer-cpu" / "rows.jsonl", RESULTS / "transfer-bos-cpu" / "rows.jsonl"])
    assert set(both.model) == {"smollm2", "qwen2.5-0.5b", "gemma3-270m (BOS)"} and (both.seeds == 3).all()
    alone = {g: transfer_table(RESULTS / g / "rows.jsonl") for g in ("transfer-cpu", "transfer-bos-cpu")}
    for (model, grid) in (("smollm2", "transfer-cpu"), ("gemma3-270m (BOS)", "transfer-bos-cpu")):
        mine = both[both.model == model].set_index(["method", "pattern"])[["ratio", "verdict"]].sort_index()
        theirs = alone[grid][alone[grid].model == model]   # one grid alone: the same label
        assert mine.equals(theirs.set_index(["method", "pattern"])[["ratio", "verdict"]].sort_index()), model
    md = render(load_grid(REPO / "grids" / "transfer-bos-cpu.yaml"),
                read_rows(RESULTS / "transfer-bos-cpu" / "rows.jsonl"))
    ria = both[(both.model == "gemma3-270m (BOS)") & (both.method == "ria") & (both.pattern == "0.5")].iloc[0]
    assert f"{ria.ratio:.3f} ({ria.verdict})" in md and ria.verdict == "better"


def test_a_method_can_be_limited_to_some_models(tmp_path):
    """``models:`` on a method: its cells exist only for those models, the other models' tables leave it out, and
    its cells keep the ids they have without the key (rows already run still count)."""
    import yaml

    from prunerzero.results import load_grid, render

    raw = {"name": "t", "models": ["a/b", "c/d"], "seeds": [0, 1, 2], "patterns": [0.5], "reference": "wanda",
           "searched_on": {"f": ["a/b"]},
           "methods": ["dense", "wanda", {"name": "f", "formula": "mul(abs(W), X)", "models": ["a/b"]}]}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(raw))
    grid = load_grid(path)
    assert {(c.model, c.method.name) for c in grid.cells()} == {
        ("a/b", "dense"), ("a/b", "wanda"), ("a/b", "f"), ("c/d", "dense"), ("c/d", "wanda")}
    raw["methods"][2].pop("models")
    path.write_text(yaml.safe_dump(raw))
    unlimited = {c.id for c in load_grid(path).cells()}
    assert {c.id for c in grid.cells()} == unlimited - {c.id for c in load_grid(path).cells() if
                                                        c.model == "c/d" and c.method.name == "f"}
    rows = [{"id": c.id, "method": c.method.name, "model": c.model, "pattern": c.pattern, "seed": c.seed,
             "ppl": {"wikitext2": 10.0 + c.seed + (c.method.name == "f")}, "provenance": {}} for c in grid.cells()]
    md = render(grid, rows)
    a, c = md.split("**c/d, ")[0], "**c/d, " + md.split("**c/d, ", 1)[1]
    assert "| f (sequential) | 12.00 ± 1.00 |" in a and "| f (sequential) | 1.091 (within spread) | yes |" in a
    assert "| f (" not in c and "| wanda (sequential) | 11.00 ± 1.00 |" in c
    assert "Not yet run" not in md


def test_block_check_proves_every_builtin_model():
    """results/block-check-cpu: for each built-in model (one per family: LLaMA, Gemma 3, Qwen2), blocks run one by
    one reproduce the model's own forward on real text, and the model's tail on our last block gives its logits."""
    from prunerzero.results import read_rows
    from prunerzero.models import BUILTIN_MODELS

    rows = {r["model"]: r for r in read_rows(RESULTS / "block-check-cpu" / "rows.jsonl")}
    assert set(rows) == set(BUILTIN_MODELS)
    assert {r["family"] for r in rows.values()} == {"llama", "gemma3_text", "qwen2"}
    for name, r in rows.items():
        assert r["blocks"] >= 18 and r["hidden_rel_diff"] < 1e-5, name
        assert r["logits_max_abs_diff"] < 1e-3 * r["logits_max_abs"] and r["argmax_agreement"] == 1.0, name


def test_a_grid_with_a_bos_per_window(tiny_model_dir, tmp_path):
    """protocol bos 'window' reaches calibration and evaluation, is another cell than Wanda's windows, and is
    written in the rows and the table's protocol line; the key of a 'stream' grid is the one rows had before."""
    import hashlib

    import yaml

    from prunerzero.cli import main
    from prunerzero.results import load_grid, protocol_key, read_rows
    from prunerzero.results.grid import PROTOCOL_IDENTITY
    from prunerzero.models import load_model
    from prunerzero.pipeline import CalibConfig, evaluate_all, prune
    from prunerzero.protocol import Protocol
    from prunerzero.prune.masks import parse_pattern

    old = {k: v for k, v in Protocol().as_dict().items() if k in PROTOCOL_IDENTITY and k != "bos"}
    assert protocol_key(Protocol()) == hashlib.sha1(json.dumps(old, sort_keys=True).encode()).hexdigest()[:8]
    assert protocol_key(Protocol(bos="window")) != protocol_key(Protocol())
    spec = {"name": "tiny-bos", "protocol": {"model": str(tiny_model_dir), "seqlen": 64, "nsamples": 2,
                                             "eval_windows": 2, "bos": "window"},
            "seeds": [0], "patterns": [0.5], "methods": [{"name": "wanda"}]}
    grid = tmp_path / "b.yaml"
    grid.write_text(yaml.safe_dump(spec))
    cell = load_grid(grid).cells()[0]
    same = Protocol(model=str(tiny_model_dir), seqlen=64, nsamples=2, eval_windows=2, bos="window")
    assert cell.protocol_key == protocol_key(same) != protocol_key(same.with_(bos="stream"))
    out = tmp_path / "res"
    assert main(["bench", str(grid), "--out", str(out), "--quiet", "--cache-dir", str(tmp_path / "cache")]) == 0
    row = read_rows(out / "rows.jsonl")[0]
    assert row["protocol"]["bos"] == "window" and "bos=window" in (tmp_path / "res.md").read_text()
    results = {}
    for bos in ("window", "stream"):
        lm = load_model(str(tiny_model_dir), device="cpu", seqlen=64, bos=bos)
        prune(lm, "wanda", parse_pattern("0.5"), CalibConfig(2, 0, 1, None, str(tmp_path / "cache")), sequential=True,
              progress=False)
        results[bos] = evaluate_all(lm, ["wikitext2"], 2, 1, None, False)["wikitext2"]["ppl"]
    assert row["ppl"]["wikitext2"] == results["window"] != results["stream"]


def test_selection_rescoring_keeps_the_runs_bos_and_earlier_grid_files(tmp_path):
    """select_formula re-scores a model in the BOS mode its runs scored it with (runs that disagree are refused),
    and writes a stream grid exactly as before the bos key existed, so a rerun into a committed selection folder
    reuses its rows instead of refusing it."""
    from prunerzero.errors import UserError
    from prunerzero.results import load_grid
    from prunerzero.search.space import load_space

    runs = {}
    for name, bos in (("plain", "stream"), ("gemma-bos", {"gemma3-270m": "window"})):
        raw = load_space(REPO / "studies" / "cpu2-rel" / "space.yaml").raw
        raw["fitness"]["bos"] = bos
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"space": raw, "meta": {}}))
        runs[name] = str(tmp_path / name)
    assert select_formula.runs_bos([runs["gemma-bos"]], "gemma3-270m") == "window"
    assert select_formula.runs_bos([runs["gemma-bos"]], "smollm2") == "stream"
    assert select_formula.runs_bos([runs["gemma-bos"]], "qwen2.5-0.5b") == "stream"   # a model it did not score
    assert select_formula.runs_bos([runs["plain"]], "gemma3-270m") == "stream"
    with pytest.raises(UserError, match="different BOS modes.*--bos"):
        select_formula.runs_bos([runs["plain"], runs["gemma-bos"]], "gemma3-270m")
    committed = [folder(name) / "grid.yaml" for name in SELECTIONS]
    assert committed
    for path in committed:
        assert select_formula._grid_yaml(load_grid(path)) == path.read_text(), path


def test_cpu_wx7_operations_are_those_the_committed_op_usage_keeps(tmp_path, capsys):
    """Space cpu-wx7's operations are what benchmarks/op_usage.py keeps from the seven committed W/X CPU searches
    (rerun here from their logs, and equal to the committed table); a directory that is not a run is refused."""
    import yaml

    import op_usage

    runs = [folder(f"search-cpu-wx{n}") for n in ("", "2", "3", "4", "5", "6")] + [folder("search-cpu-margin-wx")]
    rows, counts = op_usage.usage(runs, 0.02)
    assert counts == {"formulas": 896, "good": 93}
    kept = {r["op"] for r in rows if r["good_share"] >= 0.05}
    space = yaml.safe_load((REPO / "studies" / "cpu-wx7" / "space.yaml").read_text())
    assert set(space["unary"]) | set(space["binary"]) == kept
    assert {"neg", "sub", "identity", "tanh", "sigmoid"}.isdisjoint(kept)
    committed = {r["op"]: r for r in (json.loads(line) for line in
                                      (folder("op-usage-cpu-wx") / "rows.jsonl").read_text().splitlines())}
    assert {op: r["good_share"] for op, r in committed.items()} == {r["op"]: r["good_share"] for r in rows}
    assert op_usage.ops_of(op_usage.parse("mul(abs(W), sqrt(add(X, X)))")) == {"mul", "abs", "sqrt", "add"}
    with pytest.raises(SystemExit, match="not a search run"):
        op_usage.main(["--runs", str(tmp_path)])
    assert not (tmp_path / "rows.jsonl").exists()


def test_rescore_gives_a_runs_own_best_its_logged_perplexities_and_ranks_a_new_formula(tiny_model_dir, tmp_path,
                                                                                      monkeypatch):
    """benchmarks/rescore.py rebuilds a run's evaluator from its config.json: the run's best, scored again, has
    the logged perplexities and rank 1; a formula the run never generated gets its score and rank there; a
    malformed formula, one reading a statistic the run lacks, or a missing run is refused before a model loads, and
    nothing is written."""
    import rescore

    from prunerzero.cli import main

    space = tmp_path / "space.yaml"
    space.write_text((REPO / "search_spaces/tiny.yaml").read_text().replace(
        "fitness: {model: smollm2, sparsity: 0.5, pattern: unstructured, group: row,",
        "fitness: {model: smollm2, settings: [{sparsity: 0.5}, {pattern: '2:4'}], combine: worst,"))
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert main(["search", "--space", str(space), "--out", str(run), "--model", str(tiny_model_dir), "--seqlen", "64",
                 "--nsamples", "4", "--eval-windows", "2", "--device", "cpu", "--generations", "1",
                 "--population", "6", "--seed", "0", "--cache-dir", str(cache), "--quiet"]) == 0
    best = json.loads((run / "summary.json").read_text())["best"]
    new = "mul(add(abs(log(X)), sqrt(X)), abs(W))"
    assert new not in {r["formula"] for r in read_evaluations(run)}
    out = tmp_path / "rescored"
    rescore.main(["--run", str(run), "--formula", best["formula"], "--formula", new, "--cache-dir", str(cache),
                  "--out", str(out)])
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert rows[0]["reproduced"] and rows[0]["rank"] == 1 and rows[0]["score"] == pytest.approx(best["score"])
    assert rows[1]["in_run"] == "no" and "reproduced" not in rows[1] and rows[1]["ranked"] == rows[0]["ranked"]
    assert rows[1]["combine"] == "worst" and set(rows[1]["ppls"]) == set(best["ppls"])
    assert f"`{new}`" in (tmp_path / "rescored.md").read_text()
    md = (tmp_path / "rescored.md").read_text()
    (tmp_path / "rescored.md").unlink()
    rescore.main(["--out", str(out), "--render-only"])
    assert (tmp_path / "rescored.md").read_text() == md
    with pytest.raises(SystemExit, match="error: "):
        rescore.main(["--run", str(run), "--formula", "mul(W,", "--out", str(tmp_path / "bad")])
    import prunerzero.search.workers as workers

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded for a formula the run cannot score")

    monkeypatch.setattr(workers, "load_model", no_model)
    with pytest.raises(SystemExit, match="reads Hd, which the run computed no statistics for"):
        rescore.main(["--run", str(run), "--formula", "mul(W, Hd)", "--out", str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match="has no config.json"):
        rescore.main(["--run", str(tmp_path / "nowhere"), "--formula", "abs(W)", "--out", str(tmp_path / "bad")])
    (run / "references.json").write_text('{"levels": {"0": {}}}')
    with pytest.raises(SystemExit, match="references.json is unreadable"):
        rescore.main(["--run", str(run), "--formula", "abs(W)", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_a_search_split_into_ray_parts_logs_what_the_serial_search_logged():
    """search-cpu-wx6-parts reran search-cpu-wx6 with one Ray task per (model, seed) part: the same log, timings
    aside (the determinism a resumed or parallel search promises, on a committed 47-minute run)."""
    from conftest import untimed

    assert [untimed(r) for r in read_evaluations(folder("search-cpu-wx6-parts"))] == \
        [untimed(r) for r in read_evaluations(folder("search-cpu-wx6"))]


def test_committed_searches_on_one_fitness_protocol_share_their_reference_bit_for_bit():
    """The worst-setting W/X and W/X/G CPU searches (cpu-wx6 ... cpu-wxg4) scored Wanda on the same protocol: their
    recorded reference perplexities are equal, so their scores compare across runs."""
    names = ["search-cpu-wx6", "search-cpu-wx7", "search-cpu-wxg", "search-cpu-wxg2", "search-cpu-wxg3",
             "search-cpu-wxg4"]
    refs = [json.loads((folder(n) / "summary.json").read_text())["references"]["2"] for n in names]
    assert refs[0] and all(r == refs[0] for r in refs)
