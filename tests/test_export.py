"""Sparse export to the compressed-tensors storage format: layout, 2:4 detection, CLI checks and an exact round
trip (GGUF export is tested in test_gguf*.py)."""
import json
import sys

import numpy as np
import pytest
import torch

from prunerzero.cli import main
from prunerzero.errors import UserError
from prunerzero.export import (BITMASK, SPARSE24, compress_weight, decompress_weight, export_compressed, is_24,
                               pack_bits)

ct = pytest.importorskip("compressed_tensors")


def _bits(t):
    return t.contiguous().view({2: torch.int16, 4: torch.int32}[t.element_size()])


def test_bitmask_layout():
    w = torch.zeros(2, 10)
    w[0, 0], w[0, 9], w[1, 3], w[1, 4] = 1.0, 2.0, 3.0, -0.0
    parts = compress_weight(w, BITMASK)
    assert parts["shape"].tolist() == [2, 10]
    assert parts["bitmask"].dtype == torch.uint8 and parts["bitmask"].tolist() == [[1, 2], [24, 0]]
    assert parts["compressed"].tolist() == [1.0, 2.0, 3.0, -0.0]
    assert parts["row_offsets"].tolist() == [0, 2]
    back = decompress_weight(parts)
    assert torch.equal(_bits(back), _bits(w))  # -0.0 keeps its sign bit
    from compressed_tensors.utils import pack_bitmasks, unpack_bitmasks
    assert torch.equal(pack_bitmasks(w != 0), pack_bits(w != 0))
    assert torch.equal(unpack_bitmasks(parts["bitmask"], [2, 10]), _bits(w) != 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", [BITMASK, SPARSE24])
def test_half_precision_round_trip(dtype, fmt):
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(1)).to(dtype)
    w.view(16, 8, 4)[..., ::2] = 0
    parts = compress_weight(w, fmt)
    assert parts["compressed"].dtype == dtype and parts["compressed"].numel() == w.numel() // 2
    assert torch.equal(_bits(decompress_weight(parts)), _bits(w))


def test_24_layout_and_detection():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=g)
    w.view(8, 4, 4)[..., 1:3] = 0          # 2 zeros per group
    w[0, 4:8] = torch.tensor([0.0, 0.0, 0.0, 5.0])  # 3 zeros: one zero is stored as a value
    w[1, 0:4] = 0                         # 4 zeros
    assert is_24(w)
    parts = compress_weight(w, SPARSE24)
    assert parts["shape"].tolist() == [[8], [16]]
    assert parts["compressed"].shape == (8, 8)
    assert parts["bitmask"].shape == (8, 2)
    mask = torch.from_numpy(np.unpackbits(parts["bitmask"].numpy(), axis=-1, bitorder="little").astype(bool))
    mask = mask.view(8, 4, 4)
    assert (mask.sum(-1) == 2).all()
    assert parts["compressed"][0, 2:4].tolist() == [0.0, 5.0]  # nonzero kept, lowest-index zero fills the pair
    assert torch.equal(decompress_weight(parts), w)
    w[2, 0:4] = torch.tensor([1.0, 2.0, 0.0, 3.0])
    assert not is_24(w)
    with pytest.raises(UserError, match="not 2:4"):
        compress_weight(w, SPARSE24)


def _prune(model_dir, out, tmp_path, *extra):
    assert main(["prune", "--model", str(model_dir), "--sparsity", "0.5", *extra, "--nsamples", "2",
                 "--seqlen", "64", "--eval-windows", "1", "--skip-dense", "--save", str(out), "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0


@pytest.mark.parametrize("extra,fmt", [(["--metric", "magnitude", "--pattern", "2:4"], SPARSE24),
                                       (["--metric", "wanda"], BITMASK)])
def test_export_round_trip_is_exact(tiny_model_dir, tmp_path, capsys, extra, fmt):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from prunerzero.evaluate import perplexity

    pruned, packed, dense = tmp_path / "pruned", tmp_path / "ct", tmp_path / "dense"
    _prune(tiny_model_dir, pruned, tmp_path, *extra)
    capsys.readouterr()
    assert main(["export", str(pruned), "--format", "compressed-tensors", "--out", str(packed)]) == 0
    printed = capsys.readouterr().out
    assert f"compressed-tensors {fmt}, 14 of 15 Linear layers" in printed and "vs dense save" in printed
    assert "only prunerzero reads this layout" in printed
    qc = json.loads((packed / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["version"] == ct.__version__
    sc = qc["sparsity_config"]
    assert sc["format"] == fmt and sc["targets"] == ["Linear"] and sc["ignore"] == ["lm_head"]
    assert sc["sparsity_structure"] == ("2:4" if fmt == SPARSE24 else "unstructured")
    assert 0 < sc["global_sparsity"] < 0.5
    stored = load_file(packed / "model.safetensors")
    assert "model.layers.0.mlp.down_proj.bitmask" in stored and "model.layers.0.mlp.down_proj.weight" not in stored
    assert (packed / "tokenizer.json").is_file()
    assert sum(f.stat().st_size for f in packed.glob("*.safetensors")) < (pruned / "model.safetensors").stat().st_size

    assert main(["export", str(packed), "--format", "dense", "--out", str(dense)]) == 0
    a, b = load_file(pruned / "model.safetensors"), load_file(dense / "model.safetensors")
    assert sorted(a) == sorted(b)
    assert all(a[k].dtype == b[k].dtype and torch.equal(_bits(a[k]), _bits(b[k])) for k in a)

    m1, m2 = AutoModelForCausalLM.from_pretrained(pruned), AutoModelForCausalLM.from_pretrained(dense)
    ids = torch.randint(0, m1.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(m1(ids).logits, m2(ids).logits)
    assert perplexity(m1, ids) == perplexity(m2, ids)


def test_auto_refuses_24_on_unstructured(tiny_model_dir, tmp_path):
    pruned = tmp_path / "pruned"
    _prune(tiny_model_dir, pruned, tmp_path, "--metric", "magnitude")
    with pytest.raises(UserError, match="not 2:4 sparse"):
        export_compressed(pruned, tmp_path / "out", compressor=SPARSE24)
    assert not (tmp_path / "out").exists()


CT = ["--format", "compressed-tensors"]


@pytest.mark.parametrize("argv,msg", [
    (["export", "/nonexistent/dir", "--out", "{tmp}/o", *CT], "is not a folder"),
    (["export", "{model}", "--out", "{tmp}/o", "--format", "onnx"], "unknown --format 'onnx'"),
    (["export", "{model}", "--out", "{tmp}/o", *CT, "--compressor", "zip"], "unknown --compressor 'zip'"),
    (["export", "{model}", "--out", "{tmp}/o", *CT], "has no sparse Linear weights"),
    (["export", "{model}", "--out", "{tmp}/o"], "has no sparse Linear weights"),   # a folder: compressed-tensors
    (["export", "{model}", "--out", "{tmp}/o", "--format", "dense"], "not a compressed-tensors export"),
    (["export", "{model}", "--out", "{model}", *CT], "--out must be a new folder"),
    (["export", "{tmp}", "--out", "{tmp}/o", *CT], "has no config.json"),
    (["export", "{model}", "--out", "{tmp}/o", *CT, "--outtype", "f16"], "--outtype applies to --format gguf"),
])
def test_export_bad_input_one_line(tiny_model_dir, tmp_path, capsys, argv, msg):
    argv = [a.format(tmp=tmp_path, model=tiny_model_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and msg in err
    assert not (tmp_path / "o").exists()


def test_export_refuses_nonempty_out(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    assert main(["export", str(tiny_model_dir), "--out", str(tmp_path / "o"), *CT]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["keep.txt"]


def test_missing_package_is_one_line(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "compressed_tensors", None)  # import fails as if not installed
    assert main(["export", str(tiny_model_dir), "--out", str(tmp_path / "o"), *CT]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: the compressed-tensors format needs the package: pip install 'prunerzero[deploy]'"
