"""Every subcommand with bad values: exit status 2, one line on stderr that names what was wrong, no traceback,
and no model loaded (each case is refused before ``load_model`` or ``from_pretrained`` could run)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunerzero.cli import main
from prunerzero.search.engine import RunFiles, read_evaluations

REPO = Path(__file__).resolve().parents[1]


class ModelLoaded(AssertionError):
    pass


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    """Any attempt to load a model fails the test: bad input must be refused before that."""
    import transformers

    import prunerzero.models as models
    import prunerzero.search.workers as workers  # imported here, so its own load_model binding is the real one

    def refuse(*_a, **_k):
        raise ModelLoaded("a model was loaded before the bad input was refused")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(workers, "load_model", refuse)
    monkeypatch.setattr(models, "resolve_model_source", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def refused(argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"exit {code} for {argv}: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"{argv}: stderr has {len(lines)} lines: {err!r}"
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


MODEL_COMMANDS = ["prune", "eval", "structural"]

COMMON_CASES = [
    (["--seqlen", "-5"], "--seqlen"),
    (["--seqlen", "0"], "--seqlen"),
    (["--seqlen", "abc"], "--seqlen"),
    (["--batch-size", "0"], "--batch-size"),
    (["--eval-windows", "0"], "--eval-windows"),
    (["--eval-windows", "-1"], "--eval-windows"),
    (["--eval", ""], "--eval"),
    (["--eval", ","], "--eval"),
    (["--eval", "wikitext3"], "--eval"),
    (["--eval", "c4,c4"], "--eval"),
    (["--tasks", ""], "--tasks"),
    (["--dtype", "fp8"], "--dtype"),
    (["--bos", "first"], "--bos"),
    (["--device", "cuda"], "--device"),
    (["--device", "cuda:7"], "--device"),
    (["--device", "gpu0"], "--device"),
    (["--device-map", "auto"], "--device-map"),
    (["--device-map", "everywhere"], "--device-map"),
    (["--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
    (["--json", "/tmp"], "--json"),
    (["--cache-dir", "/etc/hostname"], "--cache-dir"),
    (["--data-dir", "/etc/hostname"], "is a file"),
]


@pytest.mark.parametrize("command", MODEL_COMMANDS)
@pytest.mark.parametrize("extra,names", COMMON_CASES, ids=[" ".join(c[0]) or "empty" for c in COMMON_CASES])
def test_common_options(command, extra, names, capsys):
    line = refused([command, *extra, "--quiet"], capsys)
    assert names in line


@pytest.mark.parametrize("argv,names", [
    (["prune", "--sparsity", "1.5"], "--sparsity"),
    (["prune", "--sparsity", "0"], "--sparsity"),
    (["prune", "--sparsity", "nan"], "--sparsity"),
    (["prune", "--pattern", "2:4", "--sparsity", "0.9"], "--sparsity"),
    (["prune", "--pattern", "2:4", "--group", "layer"], "--group"),
    (["prune", "--metric", "sparsegpt", "--group", "layer"], "--group"),
    (["prune", "--pattern", "4:2"], "1 <= N < M"),
    (["prune", "--pattern", "2-4"], "not N:M"),
    (["prune", "--group", "column"], "--group"),
    (["prune", "--group", "row", "--metric", "mul(W"], "unbalanced parentheses"),
    (["prune", "--group", "row", "--metric", "frobnicate"], "unknown metric 'frobnicate'"),
    (["prune", "--metric", "mul(W, \u0663)"], "\\u0663"),
    (["prune", "--metric", "mul(W, 1e-400)"], "underflows float32"),
    (["prune", "--metric", "mul(W, 1e39)"], "overflows float32"),
    (["prune", "--metric", "mul(W,\x00X)"], "\\x00"),
    (["prune", "--nsamples", "0"], "--nsamples"),
    (["prune", "--metric", "sparsegpt", "--update", "obs"], "--update"),
    (["prune", "--metric", "sparsegpt", "--allocation", "owl", "--pattern", "2:4"], "--allocation"),
    (["prune", "--pattern", "2:4", "--allocation", "owl"], "--allocation"),
    (["prune", "--permute"], "--permute"),
    (["prune", "--owl-m", "3"], "--owl-m 3: owl_lambda/owl_m set the OWL allocation: add allocation owl"),
    (["prune", "--percdamp", "0.1"], "--percdamp 0.1: percdamp damps the Hessian of sparsegpt or of an update"),
    (["prune", "--metric", "sparsegpt", "--percdamp", "0"], "--percdamp"),
    (["prune", "--allocation", "owl", "--owl-lambda", "0.7"], "--owl-lambda"),
    (["prune", "--update", "lbfgs"], "--update"),
    (["prune", "--seed", "-1"], "--seed"),
    (["prune", "--save", "/etc/hostname"], "is a file"),
    (["structural", "--sparsity", "1.5"], "--sparsity"),
    (["structural", "--init", "magic"], "--init"),
    (["structural", "--metric", "mul(W", "--init", "metric"], "unbalanced parentheses"),
    (["structural", "--steps", "0"], "--steps"),
    (["structural", "--curve-every", "-1"], "--curve-every"),
    (["structural", "--init", "oneshot", "--curve-every", "5"], "needs the policy gradient"),
    (["structural", "--samples", "1"], "--samples"),
    (["structural", "--lr", "0"], "--lr"),
    (["structural", "--lr", "inf"], "--lr"),
    (["structural", "--pg-batch-size", "0"], "--pg-batch-size"),
    (["structural", "--calib-seqlen", "1"], "--calib-seqlen"),
    (["structural", "--eval-seqlens", "128,abc"], "--eval-seqlens"),
    (["structural", "--eval-seqlens", ""], "--eval-seqlens"),
    (["structural", "--attn-score", "heads"], "--attn-score"),
    (["structural", "--latency-seqlen", "0"], "--latency-seqlen"),
    (["search", "--max-minutes", "0"], "--max-minutes"),
    (["search", "--max-minutes", "nan"], "--max-minutes"),
    (["search", "--workers", "0"], "--workers"),
    (["search", "--generations", "0"], "--generations"),
    (["search", "--population", "1"], "--population"),
    (["search", "--top", "0"], "--top"),
    (["search", "--space", "no-such-space"], "no-such-space"),
    (["search", "--space", "tiny", "--device", "cuda"], "device"),
    (["search", "--space", "tiny", "--dtype", "fp8"], "--dtype"),
    (["search", "--space", "tiny", "--bos", "first"], "--bos"),
    (["search", "--space", "tiny", "--seqlen", "0"], "--seqlen"),
    (["search", "--space", "tiny", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
    (["show", "/nonexistent/run"], "/nonexistent/run"),
    (["search", "--space", "tiny", "--out", "/etc/hostname"], "--out"),
    (["search", "--space", "tiny", "--cache-dir", "/etc/hostname"], "--cache-dir"),
    (["prunerzero"], "invalid choice"),
    (["prune", "stray"], "unrecognized arguments"),
    (["show", "/tmp", "--top", "0"], "--top"),
    (["show", "/tmp", "--top", "-3"], "--top"),
    (["frobnicate"], "frobnicate"),
])
def test_command_options(argv, names, capsys):
    assert names in refused(argv + (["--quiet"] if argv[0] not in ("show", "frobnicate") else []), capsys)


def test_tasks_need_lm_eval(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    assert "lm_eval" in refused(["eval", "--tasks", "hellaswag", "--quiet"], capsys)


def test_no_data_offline_fails_fast(monkeypatch, capsys):
    monkeypatch.delenv("PRUNERZERO_DATA", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert "--data-dir" in refused(["prune", "--quiet"], capsys)


def test_data_dir_missing_files(tmp_path, capsys):
    (tmp_path / "wikitext-2-raw").mkdir()
    assert "wiki.test.raw" in refused(["eval", "--data-dir", str(tmp_path), "--quiet"], capsys)
    (tmp_path / "wikitext-2-raw" / "wiki.test.raw").write_text(" = Title = \n")
    assert "c4" in refused(["prune", "--data-dir", str(tmp_path), "--quiet"], capsys)


# ------------------------------------------------------------------------------------------ search spaces
def write_space(tmp_path, **fitness) -> str:
    import yaml

    raw = yaml.safe_load((REPO / "search_spaces" / "tiny.yaml").read_text())
    raw["fitness"].update(fitness)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("fitness,names", [
    ({"eval_split": "Test"}, "fitness.eval_split"),
    ({"eval_split": "test"}, "fitness.eval_split"),
    ({"eval_dataset": "ptb"}, "fitness.eval_dataset"),
    ({"sparsity": 1.5}, "fitness.sparsity"),
    ({"sparsity": "half"}, "fitness.sparsity"),
    ({"pattern": "2:4", "sparsity": 0.7}, "fitness.sparsity"),
    ({"pattern": "3-4"}, "not N:M"),
    ({"group": "col"}, "comparison group"),
    ({"eval_windows": 0}, "fitness.eval_windows"),
    ({"seqlen": 0}, "fitness.seqlen"),
    ({"nsamples": -2}, "fitness.nsamples"),
    ({"calib_seed": []}, "fitness.calib_seed"),
    ({"calib_seed": [0, 0]}, "fitness.calib_seed"),
    ({"calib_seed": [0, "one"]}, "fitness.calib_seed[]"),
    ({"calib_seed": -1}, "fitness.calib_seed"),
    ({"batch_size": True}, "fitness.batch_size"),
    ({"dtype": "fp8"}, "fitness.dtype"),
    ({"bos": "first"}, "fitness.bos"),
    ({"bos": {"no-such-model": "window"}}, "fitness.bos names 'no-such-model'"),
    ({"penalty": -1}, "fitness.penalty"),
    ({"colour": "red"}, "fitness.colour"),
])
def test_bad_space_refused_before_loading(tmp_path, fitness, names, capsys):
    line = refused(["search", "--space", write_space(tmp_path, **fitness), "--out", str(tmp_path / "run"),
                    "--quiet"], capsys)
    assert names in line
    assert not (tmp_path / "run").exists()


def test_bad_space_yaml_types(tmp_path, capsys):
    import yaml

    for raw, names in (({"terminals": "W"}, "terminals"), ({"gp": {"cxpb": "high"}}, "gp.cxpb"),
                       ({"init": {"min_depth": "two"}}, "init.min_depth"), ({"gp": {"seed": -1}}, "gp.seed")):
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(raw))
        assert names in refused(["search", "--space", str(path), "--out", str(tmp_path / "r"), "--quiet"], capsys)


# ------------------------------------------------------------------------------------------ resume conflicts
def fake_run(tmp_path, checkpoint: bool = True) -> Path:
    """A run folder as the engine writes it (settings, a log line, optionally a checkpoint)."""
    from prunerzero.search.space import load_space

    run = tmp_path / "run"
    run.mkdir(parents=True)
    space = load_space("tiny")
    files = RunFiles(run)
    files.config.write_text(json.dumps({"space": space.raw, "meta": {}}))
    rec = {"generation": 0, "formula": "abs(W)", "simplified": "abs(W)", "latex": "", "key": "k", "size": 2,
           "depth": 2, "ppl": 10.0, "seconds": 0.1, "hit": "eval"}
    files.evaluations.write_text(json.dumps(rec) + "\n")
    if checkpoint:
        files.checkpoint.write_text(json.dumps({"generation": 2}))
    return run


@pytest.mark.parametrize("extra,names", [
    (["--seed", "5"], "--seed"),
    (["--population", "50"], "--population"),
    (["--nsamples", "64"], "--nsamples"),
    (["--model", "other"], "--model"),
    (["--space", "quick"], "--space"),
    (["--out", "/tmp/elsewhere"], "--out"),
    (["--generations", "1"], "--generations"),
])
def test_resume_refuses_conflicting_options(tmp_path, extra, names, capsys):
    run = fake_run(tmp_path)
    assert names in refused(["search", "--resume", str(run), *extra, "--quiet"], capsys)


def test_new_run_into_existing_run_says_resume(tmp_path, capsys):
    for checkpoint in (True, False):
        run = fake_run(tmp_path / str(checkpoint), checkpoint)
        line = refused(["search", "--space", "tiny", "--out", str(run), "--quiet"], capsys)
        assert f"--resume {run}" in line


def test_resume_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert "config.json" in refused(["search", "--resume", str(tmp_path), "--quiet"], capsys)
    (tmp_path / "config.json").write_text("{torn")
    assert "settings file" in refused(["search", "--resume", str(tmp_path), "--quiet"], capsys)
    run = fake_run(tmp_path / "r")
    RunFiles(run).checkpoint.write_text("{torn")
    assert "checkpoint.json" in refused(["search", "--resume", str(run), "--generations", "3", "--quiet"], capsys)


# ------------------------------------------------------------------------------------------ torn logs
def test_torn_last_line_is_dropped_with_a_note(tmp_path, capsys):
    run = fake_run(tmp_path)
    with RunFiles(run).evaluations.open("a") as f:
        f.write('{"generation": 1, "formula": "mul(W')
    recs = read_evaluations(run)
    assert len(recs) == 1
    assert "torn last line 2" in capsys.readouterr().err


def test_corrupt_middle_line_is_refused_with_its_number(tmp_path, capsys):
    run = fake_run(tmp_path)
    log = RunFiles(run).evaluations
    good = log.read_text()
    log.write_text(good + "{not json\n" + good)
    assert "line 2" in refused(["show", str(run)], capsys)
    log.write_text(good + '{"generation": 1}\n' + good)  # valid JSON, not a record
    assert "line 2" in refused(["show", str(run)], capsys)
    log.write_text(good + good.replace('"ppl": 10.0', '"ppl": "low"'))  # a bad value on the last line is torn
    assert len(read_evaluations(run, quiet=True)) == 1


# ------------------------------------------------------------------------------------------ help
def test_every_option_has_help_and_its_default():
    import argparse

    from prunerzero.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subs.choices) >= {"prune", "search", "show", "structural", "eval"}
    for name, sub in subs.choices.items():
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and len(action.help) > 10, f"{name} {action.option_strings}: no sentence"
            if action.default not in (None, False) and action.option_strings:
                shown = str(action.default)
                assert f"(default: {shown})" in " ".join(text.split()), f"{name} {action.option_strings[0]}"


def test_default_space_works_from_any_directory(tmp_path, monkeypatch):
    from prunerzero.cli.search import DEFAULT_SPACE
    from prunerzero.search.space import load_space

    monkeypatch.chdir(tmp_path)
    for name in (DEFAULT_SPACE, "quick", "search_spaces/cpu.yaml"):
        assert load_space(name).name


def test_console_script_prints_no_traceback(tmp_path):
    """The installed entry point, in a fresh process: one line, exit 2 (covers argparse and UserError paths)."""
    for argv in (["eval", "--seqlen", "-5"], ["prune", "--metric", "mul(W, \u0663)"]):
        res = subprocess.run([sys.executable, "-m", "prunerzero.cli", *argv], capture_output=True, text=True,
                             cwd=tmp_path, timeout=120)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "Traceback" not in res.stderr


# ------------------------------------------------------------------------------------------ experiment grids
@pytest.mark.parametrize("grid,names", [
    ({"methods": []}, "no methods"),
    ({"methods": ["frobnicate"]}, "unknown metric 'frobnicate'"),
    ({"methods": [{"name": "f", "formula": "mul(W"}]}, "unbalanced parentheses"),
    ({"methods": [{"name": "wanda", "mode": "twice"}]}, "methods[0].mode"),
    ({"methods": ["wanda", "wanda"]}, "repeat"),
    ({"methods": ["wanda"], "patterns": [1.5]}, "patterns[0]"),
    ({"methods": ["wanda"], "patterns": ["4:2"]}, "1 <= N < M"),
    ({"methods": ["wanda"], "seeds": [0, 0]}, "repeat"),
    ({"methods": ["wanda"], "protocol": {"seqlen": 0}}, "protocol.seqlen"),
    ({"methods": ["wanda"], "protocol": {"eval_split": "Test"}}, "protocol.eval_split"),
    ({"methods": ["wanda"], "protocol": {"eval_datasets": ["ptb"]}}, "protocol.eval_datasets"),
    ({"methods": ["wanda"], "protocol": {"nsamples": "many"}}, "protocol.nsamples"),
    ({"methods": ["wanda"], "protocol": {"colour": 1}}, "protocol.colour"),
    ({"methods": ["wanda"], "colour": 1}, "colour"),
    ({"methods": [{"name": "w", "formula": "wanda", "update": "sgd"}]}, "methods[0].update 'sgd' is unknown"),
    ({"methods": [{"name": "w", "formula": "wanda", "allocation": "owls"}]}, "methods[0].allocation 'owls'"),
    ({"methods": [{"name": "w", "formula": "wanda", "owl_m": 3}]}, "add allocation owl"),
    ({"methods": [{"name": "w", "formula": "wanda", "allocation": "owl", "owl_lambda": 0.9}]},
     "methods[0].owl_lambda"),
    ({"methods": [{"name": "w", "formula": "wanda", "permute": "yes"}]}, "methods[0].permute must be true or false"),
    ({"methods": [{"name": "sparsegpt", "update": "obs"}]}, "sparsegpt already reconstructs"),
    ({"methods": [{"name": "dense", "update": "obs"}]}, "dense is not pruned"),
    ({"methods": [{"name": "wanda", "percdamp": 0.1}]}, "methods[0] (wanda) at pattern 0.5: percdamp damps the Hessian "
                                                        "of sparsegpt or of an update: add update obs"),
    ({"methods": [{"name": "w", "formula": "wanda", "update": "admm", "permute": True}], "patterns": ["2:4"]},
     "methods[0] (w) at pattern 2:4: permute does not go with update admm"),
    ({"methods": [{"name": "sparsegpt", "percdamp": 0}]}, "methods[0].percdamp"),
    ({"methods": [{"name": "wanda", "models": "smollm2"}]}, "methods[0].models must list the grid's models"),
    ({"methods": [{"name": "wanda", "models": []}]}, "methods[0].models must list the grid's models"),
    ({"models": ["smollm2"], "methods": [{"name": "wanda", "models": ["gemma3-270m"]}]},
     "methods[0].models names 'gemma3-270m', which is not one of the grid's models (smollm2)"),
    ({"models": ["smollm2"], "methods": [{"name": "wanda", "models": ["smollm2", "smollm2"]}]}, "each once"),
    ({"models": ["smollm2", "gemma3-270m"], "reference": "wanda",
      "methods": [{"name": "wanda", "models": ["smollm2"]}, "ria"]}, "reference 'wanda' must run on every model"),
    ({"models": "smollm2", "methods": ["wanda"]}, "models must be a list of model names"),
    ({"models": ["smollm2", "smollm2"], "methods": ["wanda"]}, "models repeat a model"),
])
def test_bad_grid_refused_before_loading(tmp_path, grid, names, capsys):
    import yaml

    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    assert names in refused(["bench", str(path), "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert not (tmp_path / "out").exists()


def test_bench_formula_override_names_a_method(capsys):
    line = refused(["bench", str(REPO / "grids" / "confirm-gpu.yaml"), "--formula", "nope=abs(W)", "--quiet"], capsys)
    assert "no method 'nope'" in line
    assert "NAME=FORMULA" in refused(["bench", str(REPO / "grids" / "confirm-gpu.yaml"), "--formula", "x"], capsys)


def test_shared_cache_folder_keeps_the_copy_another_runner_finished_first(tmp_path):
    """Two runners dequantise the same GGUF into one cache entry: the one that finishes second keeps the first's copy
    (it used to fail with 'Directory not empty'); an ordinary output folder still refuses to be overwritten."""
    from prunerzero.errors import UserError
    from prunerzero.fsutil import atomic_folder

    target = tmp_path / "models" / "entry"
    with atomic_folder(target, shared_cache=True) as tmp:
        (tmp / "config.json").write_text("mine")
        target.mkdir(parents=True)                       # the other runner completes the entry meanwhile
        (target / "config.json").write_text("theirs")
    assert (target / "config.json").read_text() == "theirs"
    assert [p.name for p in target.parent.iterdir()] == ["entry"]   # no temporary folder left behind
    fresh = tmp_path / "models" / "fresh"
    with atomic_folder(fresh, shared_cache=True) as tmp:
        (tmp / "config.json").write_text("mine")
    assert (fresh / "config.json").read_text() == "mine"
    with pytest.raises(UserError, match="not empty"):
        with atomic_folder(target):
            pass
