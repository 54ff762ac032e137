"""The public Python API (``prunerzero.api``, re-exported lazily by ``prunerzero``) gives what the CLI gives."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import prunerzero as pz
from prunerzero.cli import main
from prunerzero.errors import UserError

REPO = Path(__file__).resolve().parent.parent
SMALL = {"nsamples": 2, "seqlen": 64}


def test_import_is_lazy_and_the_api_is_not_shadowed_by_modules():
    code = ("import sys, prunerzero as pz; assert 'torch' not in sys.modules, 'import prunerzero loaded torch'; "
            "f = pz.prune_model; import prunerzero.prune.masks, prunerzero.search.space, prunerzero.export, "
            "prunerzero.evaluate; assert pz.prune_model is f and callable(pz.export_model); print(pz.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    version = out.stdout.strip()
    assert f'version = "{version}"' in (REPO / "pyproject.toml").read_text()
    import prunerzero.api

    assert set(prunerzero.api.__all__) == set(pz.__all__) - {"__version__"} <= set(dir(pz))


def test_prune_save_evaluate_equal_the_cli(tiny_model_dir, tmp_path):
    """The API's pruned weights are the CLI's, bit for bit, for the same settings."""
    cache = tmp_path / "cache"
    assert main(["prune", "--model", str(tiny_model_dir), "--metric", "|W| * X^0.5", "--pattern", "2:4",
                 "--sequential", "--nsamples", "2", "--seqlen", "64", "--eval-windows", "2", "--skip-dense",
                 "--save", str(tmp_path / "cli"), "--json", str(tmp_path / "cli.json"), "--quiet",
                 "--cache-dir", str(cache)]) == 0
    lm = pz.load_model(str(tiny_model_dir), device="cpu", seqlen=64, cache_dir=cache)
    res = pz.prune_model(lm, "mul(abs(W), sqrt(X))", pattern="2:4", nsamples=2, cache_dir=cache)
    assert res.sparsity == 0.5
    ppl = pz.evaluate_model(lm, windows=2)
    assert ppl["wikitext2"]["ppl"] == pytest.approx(json.loads((tmp_path / "cli.json").read_text())
                                                     ["pruned"]["wikitext2"]["ppl"], rel=1e-6)
    pz.save_model(lm, tmp_path / "api")
    from safetensors.torch import load_file

    api, cli = load_file(tmp_path / "api" / "model.safetensors"), load_file(tmp_path / "cli" / "model.safetensors")
    assert api.keys() == cli.keys() and all(torch.equal(api[k], cli[k]) for k in api)
    with pytest.raises(UserError, match="not empty"):
        pz.save_model(lm, tmp_path / "api")
    report = pz.export_model(tmp_path / "api", tmp_path / "ct", format="compressed-tensors")
    assert report and (tmp_path / "ct" / "config.json").is_file()
    pz.export_model(tmp_path / "ct", tmp_path / "dense", format="dense")
    back = load_file(tmp_path / "dense" / "model.safetensors")
    assert all(torch.equal(back[k], api[k]) for k in api)


def test_bad_arguments_are_refused_before_any_model_loads(tmp_path):
    with pytest.raises(UserError, match="sparsity 0.3 does not apply to the N:M pattern 2:4"):
        pz.prune_model(None, "wanda", sparsity=0.3, pattern="2:4")
    with pytest.raises(UserError, match=r"permute \(input-channel permutation\) applies to N:M patterns only"):
        pz.prune_model(None, "wanda", permute=True)
    with pytest.raises(UserError, match="unknown metric"):
        pz.prune_model(None, "frobnicate")
    with pytest.raises(UserError, match="not found"):
        pz.search_formulas("no-such-space", out=tmp_path / "r")
    with pytest.raises(UserError, match="unknown fitness key"):
        pz.search_formulas("tiny", out=tmp_path / "r", fitness={"windows": 2})
    assert not (tmp_path / "r").exists()


def test_search_and_best_equal_the_cli_run(tiny_model_dir, tmp_path):
    args = {"seqlen": 64, "nsamples": 4, "eval_windows": 2}
    cache = tmp_path / "cache"
    assert main(["search", "--space", "tiny", "--model", str(tiny_model_dir), "--seqlen", "64", "--nsamples", "4",
                 "--eval-windows", "2", "--generations", "1", "--population", "3", "--device", "cpu",
                 "--out", str(tmp_path / "cli"), "--quiet", "--cache-dir", str(cache)]) == 0
    run = pz.search_formulas("tiny", out=tmp_path / "api", model=str(tiny_model_dir), generations=1, population=3,
                             device="cpu", fitness=args, cache_dir=cache)
    assert run == tmp_path / "api"
    api, cli = pz.best_formulas(run), pz.best_formulas(tmp_path / "cli")
    assert list(api.formula) == list(cli.formula) and list(api.ppl) == list(cli.ppl)


def test_prune_structure_slices_and_saves_a_stock_folder(tiny_model_dir, tmp_path):
    """Uniform widths: the saved folder is a stock config that plain transformers loads with the sliced shapes."""
    from transformers import AutoModelForCausalLM

    cache = tmp_path / "cache"
    lm = pz.load_model(str(tiny_model_dir), device="cpu", seqlen=64, cache_dir=cache)
    res = pz.prune_structure(lm, preset=None, sparsity=0.25, metric="wanda", steps=2, samples=2, batch_size=1,
                             calib_seqlen=32, init_nsamples=2, init_seqlen=32, uniform=True, cache_dir=cache)
    assert 0.2 < res["removed_fraction"] < 0.3
    folder = pz.save_model(lm, tmp_path / "sliced")
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    assert sum(p.numel() for p in reloaded.parameters()) == res["params_after"]["total"]
    ids = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, lm.model(ids.to(lm.model.device)).logits, atol=1e-5)
