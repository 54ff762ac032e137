"""``prunerzero eval --tasks`` through lm-eval-harness on a local multiple-choice task (no download).

The task (tests/fixtures/lm_eval/prunerzero_facts.yaml) reads a JSONL next to it; the dense run happens in a fresh
process with HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1. Skipped where lm-eval is not installed
(``pip install 'prunerzero[eval]'``; scripts/setup.sh installs it).
"""
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO
from prunerzero.cli import main

pytest.importorskip("lm_eval")

TASKS_DIR = REPO / "tests" / "fixtures" / "lm_eval"
TASK = "prunerzero_facts"


def _eval_args(model, out_json):
    return ["eval", "--model", str(model), "--seqlen", "64", "--eval-windows", "1", "--tasks", TASK,
            "--tasks-dir", str(TASKS_DIR), "--batch-size", "16", "--json", str(out_json), "--quiet"]


def _acc(path):
    res = json.loads(path.read_text())["eval"]["zero_shot"][TASK]
    assert res["sample_len"] == 24
    return res["acc,none"], res["acc_norm,none"]


def test_zero_shot_local_task_offline_and_changes_when_pruned(tiny_model_dir, tmp_path):
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets")}  # nothing cached before: the JSONL is really read
    proc = subprocess.run([sys.executable, "-m", "prunerzero.cli", *_eval_args(tiny_model_dir, tmp_path / "d.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dense = _acc(tmp_path / "d.json")
    assert all(0.0 <= a <= 1.0 and math.isfinite(a) for a in dense)

    pruned = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_model_dir), "--metric", "magnitude", "--sparsity", "0.95",
                 "--seqlen", "64", "--eval-windows", "1", "--skip-dense", "--save", str(pruned), "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert main(_eval_args(pruned, tmp_path / "p.json")) == 0
    assert _acc(tmp_path / "p.json") != dense


@pytest.mark.parametrize("extra,msg", [
    (["--tasks", TASK, "--tasks-dir", "/nonexistent/tasks"], "is not a folder"),
    (["--tasks-dir", str(TASKS_DIR)], "--tasks-dir needs --tasks"),
    (["--tasks", TASK, "--tasks-dir", str(REPO / "benchmarks")], "holds no .yaml task files"),
])
def test_zero_shot_bad_input_before_model_load(extra, msg, capsys, monkeypatch):
    import prunerzero.models as models

    def no_load(*args, **kwargs):
        raise AssertionError("model loaded before the arguments were checked")

    monkeypatch.setattr(models, "load_model", no_load)
    assert main(["eval", "--model", "smollm2", "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and msg in err
