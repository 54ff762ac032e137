"""The same checks for every decoder family, on tiny random configs built offline (fp32, 3 layers, windows of 32
tokens, sliding windows of 8): blocks run one by one reproduce the model's own forward; pruning is exact on every
discovered Linear; evaluation and save/reload work; structural pruning runs or refuses in one line. Mixtures of
experts have their own tests (test_moe.py); here they are refused by structural pruning, and as GGUF files."""
import math

import pytest
import torch
import torch.nn as nn

from conftest import make_tiny
from prunerzero.calibration import BlockRunner, activation_stats, forward_check
from prunerzero.errors import UserError
from prunerzero.evaluate import perplexity
from prunerzero.metric import parse
from prunerzero.models import all_prunable, check_config, decoder_layers, gguf_architecture, resolve_model_source
from prunerzero.prune.masks import parse_pattern
from prunerzero.prune.run import SPARSEGPT, prune_model
from prunerzero.prune.structural import (ATTN, MLP, Layout, PolicyConfig, StructureMasks, count_params,
                                         init_probs, optimise, slice_model, structure_scores)

DENSE = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "olmo2"]
MOE = ["mixtral", "qwen3_moe"]
STRUCTURAL = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"}
LINEARS_PER_BLOCK = {"phi3": 4}  # qkv_proj, o_proj, gate_up_proj, down_proj; the others 7
LAYERS = 3  # sliding, global, sliding for Gemma 2/3
WANDA = parse("mul(abs(W), sqrt(X))")
TOL = dict(rtol=1e-4, atol=1e-5)  # fp32, block by block in batches of 2 vs one batch of 6


@pytest.fixture
def windows():
    return torch.randint(0, 256, (6, 32), generator=torch.Generator().manual_seed(1))


def tiny(arch):
    return make_tiny(arch, layers=LAYERS)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("arch", DENSE)
def test_blocks_one_by_one_reproduce_the_forward(arch, windows):
    model = tiny(arch)
    check = forward_check(model, windows, batch_size=2)
    assert len(check.ours) == len(check.real) == LAYERS
    for i in range(LAYERS):
        torch.testing.assert_close(check.ours[i], check.real[i], **TOL, msg=f"block {i}")
    # our last hidden states through the model's own tail (final norm, lm_head, logit soft-capping)
    torch.testing.assert_close(check.replayed, check.logits, **TOL)
    summary = check.summary()
    assert summary["blocks"] == LAYERS and summary["argmax_agreement"] == 1.0
    assert summary["hidden_rel_diff"] < 1e-4 and summary["logits_max_abs_diff"] < 1e-3
    assert summary["worst_block"] is None or summary["hidden_max_abs_diff"] > 0


def test_forward_check_sees_a_wrong_block_input(windows):
    """The check can fail: a block runner that feeds block 1 block 0's inputs again is caught at block 1."""
    model = tiny("llama")
    advance = BlockRunner.advance
    try:
        BlockRunner.advance = lambda self, outs: None  # never move on: every block sees the embeddings
        summary = forward_check(model, windows, batch_size=2).summary()
    finally:
        BlockRunner.advance = advance
    assert summary["worst_block"] >= 1 and summary["hidden_rel_diff"] > 1e-2
    assert summary["logits_max_abs_diff"] > 1e-2  # the replayed tail really runs on our last block's outputs


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_alternating_layers_get_their_own_inputs(arch, windows):
    """Block 1 (global) fed block 0's (sliding) arguments gives other outputs: block-0 arguments for every block
    (the old BlockRunner) is wrong here. Blocks of one type share their arguments by reference, not by copy."""
    model = tiny(arch)
    assert model.config.layer_types[:3] == ["sliding_attention", "full_attention", "sliding_attention"]
    runner = BlockRunner(model, windows, batch_size=2)
    (rest0, kw0), (rest1, kw1), (rest2, kw2) = runner.inputs[2][:3]
    for name, value in kw0.items():
        if torch.is_tensor(value) or isinstance(value, tuple):
            assert kw2[name] is value, name  # same layer type: the very same objects
    layers = decoder_layers(model)
    with torch.no_grad():
        h1 = _first(layers[0](runner.hidden[0], *rest0, **kw0))
        right = _first(layers[1](h1, *rest1, **kw1))
        wrong = _first(layers[1](h1, *rest0, **kw0))
    assert (right - wrong).abs().max() > 1e-3


def _linears_besides_head(model):
    head = model.get_output_embeddings()
    return {id(m) for m in model.modules() if isinstance(m, nn.Linear) and m is not head}


@pytest.mark.parametrize("arch", DENSE)
@pytest.mark.parametrize("method,sequential,pattern", [
    ("wanda", False, "0.5"), ("wanda", True, "2:4"), (SPARSEGPT, True, "0.5")])
def test_prune_is_exact_on_every_linear(arch, method, sequential, pattern, windows):
    model = tiny(arch)
    pat = parse_pattern(0.5) if pattern == "0.5" else parse_pattern(pattern=pattern)
    how = WANDA if method == "wanda" else SPARSEGPT
    linears = all_prunable(model)
    assert len(linears) == LAYERS * LINEARS_PER_BLOCK.get(arch, 7)
    assert {id(m) for m in linears.values()} == _linears_besides_head(model)
    assert all(k.startswith(("layers.0.self_attn.", "layers.0.mlp.")) for k in list(linears)[:4])
    prune_model(model, how, pat, windows, sequential=sequential, progress=False)
    for key, lin in linears.items():
        assert int((lin.weight == 0).sum()) == lin.weight.numel() // 2, key


@pytest.mark.parametrize("arch", DENSE)
def test_evaluate_and_save_reload(arch, windows, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = tiny(arch)
    prune_model(model, WANDA, parse_pattern(0.5), windows, sequential=True, progress=False)
    ppl = perplexity(model, windows, batch_size=2)
    assert math.isfinite(ppl) and 1.0 < ppl < 10 * 256
    model.save_pretrained(tmp_path)
    check_config(AutoConfig.from_pretrained(tmp_path))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(windows).logits, model(windows).logits, rtol=1e-6, atol=1e-6)
    assert perplexity(loaded, windows, batch_size=2) == pytest.approx(ppl, rel=1e-6)


@pytest.mark.parametrize("arch", DENSE + MOE)
def test_structural_runs_or_refuses(arch, windows):
    model = tiny(arch)
    if arch not in STRUCTURAL:
        with pytest.raises(UserError, match=f"structural pruning does not support {type(model).__name__}: it "):
            Layout.of(model)
        return
    lay = Layout.of(model)
    stats = activation_stats(model, windows, progress=False)
    scores = structure_scores(model, WANDA, stats)
    assert scores[ATTN].shape == (LAYERS, lay.kv_heads) and scores[MLP].shape == (LAYERS, lay.intermediate)
    probs = init_probs("metric", 0.75, lay, scores)
    policy = optimise(model, probs, PolicyConfig(keep=0.75, steps=2), windows, batch_size=2, progress=False)
    masks = policy.hard_masks()
    hooks = StructureMasks(model)
    hooks.set(masks[ATTN][None].float(), masks[MLP][None].float())
    with torch.no_grad():
        masked = model(windows).logits
    hooks.remove()
    before = count_params(model)
    slice_model(model, masks)
    with torch.no_grad():
        sliced = model(windows).logits
    torch.testing.assert_close(sliced, masked, **TOL)
    assert count_params(model)["prunable"] < before["prunable"]


def _gguf(path, arch, **ints):
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    for key, value in ints.items():
        w.add_uint32(f"{arch}.{key}", value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_header_is_checked_before_dequantising(tmp_path, monkeypatch):
    import prunerzero.models.gguf as models

    monkeypatch.setattr(models, "_load_gguf", lambda *a: pytest.fail("dequantised a refused GGUF"))
    assert gguf_architecture(_gguf(tmp_path / "ok.gguf", "gemma3")) == "gemma3"
    with pytest.raises(UserError, match="mixture-of-experts qwen2moe"):
        resolve_model_source(str(_gguf(tmp_path / "moe.gguf", "qwen2moe", expert_count=8)), cache=tmp_path)
    with pytest.raises(UserError, match="GGUF architecture 't5'"):
        resolve_model_source(str(_gguf(tmp_path / "t5.gguf", "t5")), cache=tmp_path)


def test_config_check_refuses_encoder_decoders():
    from transformers import T5Config

    with pytest.raises(UserError, match="encoder-decoder"):
        check_config(T5Config())
