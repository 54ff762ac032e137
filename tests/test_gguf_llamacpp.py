"""llama.cpp as the reference reader of prunerzero's GGUF files: it loads the dense, 2:4-pruned, per-layer
structurally pruned and zero-width tiny models (and SmolLM2) and gives the logits prunerzero's model gives.

Tolerance: f32 files, max |difference| at most 1e-3 of the largest |logit| over all positions (llama.cpp sums in
another order and uses its own RoPE / softmax); q8_0 files, 3e-2 (llama.cpp also quantizes the activations to 8
bits in its q8_0 matrix products), against prunerzero's model of the same dequantized weights.

Skipped when llama-cpp-python is not importable (``pip install 'prunerzero[llamacpp]'``; scripts/setup.sh builds it
CPU-only, so CI runs these).
"""
import numpy as np
import pytest
import torch

from prunerzero.models.gguf_read import read_model
from prunerzero.models.gguf_write import write_gguf
from prunerzero.prune.masks import apply_mask, mask_from_scores, parse_pattern
from prunerzero.prune.structural import slice_model

from test_gguf import _masks, _tiny_with_tokenizer, zero_width_model

llama_cpp = pytest.importorskip("llama_cpp")

F32_TOL, Q8_TOL = 1e-3, 3e-2


def llama_cpp_logits(path, ids: list[int]) -> np.ndarray:
    """[len(ids), vocab] logits of every position, from llama.cpp on one thread."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=max(32, len(ids)), n_batch=len(ids), n_threads=1,
                          logits_all=True, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def _compare(model, path, tol, n=24):
    ids = torch.randint(3, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits[0].numpy()
    got = llama_cpp_logits(path, ids[0].tolist())
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert err < tol, f"llama.cpp logits differ by {err:.2e} of the largest logit"
    return err


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return _tiny_with_tokenizer(tiny_model_dir, layers=3)


def test_dense_and_24_pruned(tiny, tmp_path):
    model, tok = tiny
    _compare(model, _written(model, tok, tmp_path / "dense.gguf", "f32", "llama"), F32_TOL)
    pattern = parse_pattern(pattern="2:4")
    with torch.no_grad():
        for layer in model.model.layers:
            for lin in (*[getattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")],
                        layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                apply_mask(lin, mask_from_scores(lin.weight.abs(), pattern))
    assert float((model.model.layers[0].mlp.up_proj.weight == 0).float().mean()) == 0.5
    _compare(model, _written(model, tok, tmp_path / "24.gguf", "f32", "llama"), F32_TOL)


def _written(model, tok, path, outtype, arch):
    assert write_gguf(model, tok, path, outtype)["arch"] == arch
    return path


def test_per_layer_widths_f32_and_q8_0(tiny_model_dir, tmp_path):
    model, tok = _tiny_with_tokenizer(tiny_model_dir, layers=3)
    slice_model(model, _masks([[True, False], [True, True], [False, True]], [87, 91, 96]))
    _compare(model, _written(model, tok, tmp_path / "pl.gguf", "f32", "deci"), F32_TOL)
    q8 = _written(model, tok, tmp_path / "pl-q8.gguf", "q8_0", "deci")
    _compare(read_model(q8), q8, Q8_TOL)   # the same dequantized weights in prunerzero


def test_zero_width_layers_run_as_the_model_without_them(tiny_model_dir, tmp_path):
    """Layers 0 and 1 without attention, layer 2 without FFN channels: llama.cpp must compute what the model
    computes with those parts contributing nothing (the same weights with o_proj / down_proj zeroed)."""
    model, tok = _tiny_with_tokenizer(tiny_model_dir, layers=3)
    with torch.no_grad():
        for i in (0, 1):
            model.model.layers[i].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
        for layer in model.model.layers[:2]:   # the FFN widths of ZERO_SHAPES
            layer.mlp.gate_proj.weight[64:] = 0
            layer.mlp.up_proj.weight[64:] = 0
    path = _written(zero_width_model(model), tok, tmp_path / "zero.gguf", "f32", "deci")
    _compare(model, path, F32_TOL)


@pytest.mark.real
def test_smollm2_f16(smollm2, tmp_path):
    """The real SmolLM2-135M through an f16 GGUF: llama.cpp against prunerzero reading the same file."""
    path = _written(smollm2.model, smollm2.tokenizer, tmp_path / "smollm2.gguf", "f16", "llama")
    back = read_model(path)
    ids = smollm2.tokenizer("The capital of France is Paris, and the capital of Italy is",
                            return_tensors="pt").input_ids
    with torch.no_grad():
        ref = back(ids).logits[0].numpy()
    got = llama_cpp_logits(path, ids[0].tolist())
    assert float(np.abs(got - ref).max() / np.abs(ref).max()) < 5e-3
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("kind,arch", [("uniform", "qwen2"), ("per-layer", "deci")])
def test_qwen2_with_qkv_biases(tiny_model_dir, tmp_path, kind, arch):
    """Qwen2 (q/k/v biases): uniform widths as arch qwen2 (NeoX RoPE, rows unpermuted), per-layer widths as deci
    (biases permuted with their rows); llama.cpp and prunerzero's reread both give the model's logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)   # zero-initialised: a permutation error would not show
    if kind == "per-layer":
        slice_model(model, _masks([[True, False], [True, True], [False, True]], [87, 91, 96]))
    path = _written(model, tok, tmp_path / "q.gguf", "f32", arch)
    _compare(model, path, F32_TOL)
    ids = torch.randint(3, len(tok), (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(read_model(path)(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
