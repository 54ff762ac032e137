"""GGUF export: metadata (per-layer arrays under arch deci, the family's own arch for uniform widths), q/k
permutation, zero-width layers, q8_0 padding, and the round trip back into prunerzero with the same logits."""
import json

import numpy as np
import pytest
import torch

from prunerzero.errors import UserError
from prunerzero.models.gguf_read import read_gguf, read_model, read_tokenizer
from prunerzero.models.gguf_write import (MARK, LayerShape, _padded_ffn, choose_arch, layer_shapes, permute_qk,
                                          unpermute_qk, write_gguf, written_shapes)
from prunerzero.prune.structural import ATTN, MLP, slice_model

from conftest import make_tiny


def _tiny_with_tokenizer(tiny_model_dir, layers=3):
    """The tiny LLaMA of ``tiny_model_dir`` (SmolLM2's tokenizer) with ``layers`` layers, and that tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    cfg.num_hidden_layers = layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.config.use_cache = False
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _masks(kv: list[list[bool]], ch: list[int], inter: int = 128):
    """Structure masks: KV groups kept per layer, and the first ``ch[i]`` MLP channels of layer i (shuffled)."""
    g = torch.Generator().manual_seed(3)
    mlp = torch.zeros(len(ch), inter, dtype=torch.bool)
    for i, n in enumerate(ch):
        mlp[i, torch.randperm(inter, generator=g)[:n]] = True
    return {ATTN: torch.tensor(kv), MLP: mlp}


@pytest.fixture(scope="module")
def per_layer(tiny_model_dir, tmp_path_factory):
    """A tiny LLaMA sliced to per-layer widths (heads 2/4/2, KV heads 1/2/1, FFN 87/91/96) and its f32 GGUF."""
    model, tok = _tiny_with_tokenizer(tiny_model_dir)
    slice_model(model, _masks([[True, False], [True, True], [False, True]], [87, 91, 96]))
    path = tmp_path_factory.mktemp("gguf") / "per-layer.gguf"
    res = write_gguf(model, tok, path, "f32")
    return model, tok, path, res


def _ids(vocab, n=24):
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(0))


def test_permute_is_llama_cpp_interleave_and_inverts():
    # two heads of head_dim 4: rows (h, half, i) -> (h, i, half), i.e. rotate-half pairs become adjacent rows
    w = torch.arange(8.0).reshape(8, 1)
    p = permute_qk(w, 2)
    assert p.flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert torch.equal(unpermute_qk(p, 2), w)
    b = torch.randn(12)
    assert torch.equal(unpermute_qk(permute_qk(b, 3), 3), b)


def test_per_layer_metadata(per_layer):
    model, _, path, res = per_layer
    meta, tensors = read_gguf(path)
    assert res["arch"] == "deci" and meta["general.architecture"] == "deci"
    assert meta["deci.attention.head_count"] == [2, 4, 2]
    assert meta["deci.attention.head_count_kv"] == [1, 2, 1]
    assert meta["deci.feed_forward_length"] == [96, 96, 96]   # padded to multiples of 32 (llama.cpp's kernels)
    assert meta["deci.attention.key_length"] == 16 and meta["deci.block_count"] == 3
    assert json.loads(meta[MARK])[0] == {"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 87}
    assert tensors["blk.0.attn_q.weight"][2] == (32, 64) and tensors["blk.1.attn_k.weight"][2] == (32, 64)
    assert tensors["blk.0.ffn_down.weight"][2] == (64, 96)
    down = tensors["blk.0.ffn_down.weight"][0].view(np.float32).reshape(64, 96)
    gate = tensors["blk.0.ffn_gate.weight"][0].view(np.float32).reshape(96, 64)
    assert not down[:, 87:].any() and not gate[87:].any() and down[:, :87].any()   # the added channels are zero
    assert "output.weight" not in tensors  # tied embeddings: llama.cpp reuses token_embd
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    assert "{% for message in messages %}" in meta["tokenizer.chat_template"] or "im_start" in meta[
        "tokenizer.chat_template"]
    q = tensors["blk.0.attn_q.weight"][0].view(np.float32).reshape(32, 64)
    assert np.array_equal(q, permute_qk(model.model.layers[0].self_attn.q_proj.weight.detach(), 2).numpy())


def test_round_trip_same_logits(per_layer):
    model, tok, path, _ = per_layer
    back = read_model(path)
    assert type(back).__name__ == "PrunedLlamaForCausalLM"
    assert [l.mlp.gate_proj.out_features for l in back.model.layers] == [87, 91, 96]
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)
    tok2 = read_tokenizer(path)
    text = "Pruned models, 2026: <|im_start|>user hi<|im_end|>"
    assert tok2(text).input_ids == tok(text).input_ids
    assert tok2.chat_template == tok.chat_template and tok2.eos_token == tok.eos_token


def test_q8_0_pads_ffn_and_stays_close(per_layer, tmp_path):
    model, tok, _, _ = per_layer
    res = write_gguf(model, tok, tmp_path / "q8.gguf", "q8_0")
    assert res["padded_ffn_layers"] == 2 and res["f16_fallback"] == []
    from gguf import GGMLQuantizationType as Q

    meta, tensors = read_gguf(tmp_path / "q8.gguf")
    assert meta["deci.feed_forward_length"] == [96, 96, 96]
    assert tensors["blk.0.ffn_down.weight"][1] == Q.Q8_0 and tensors["blk.0.attn_norm.weight"][1] == Q.F32
    back = read_model(tmp_path / "q8.gguf")
    assert [l.mlp.gate_proj.out_features for l in back.model.layers] == [87, 91, 96]  # the padding is dropped
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        a, b = model(ids).logits, back(ids).logits
    assert (a - b).abs().max() < 0.02 * a.abs().max()


def test_widths_as_found_on_request(per_layer, tmp_path):
    model, tok, _, _ = per_layer
    res = write_gguf(model, tok, tmp_path / "w.gguf", "f32", ffn_multiple=1)
    meta, _ = read_gguf(tmp_path / "w.gguf")
    assert meta["deci.feed_forward_length"] == [87, 91, 96] and res["padded_ffn_layers"] == 0
    with pytest.raises(UserError, match="ffn_multiple 0"):
        write_gguf(model, tok, tmp_path / "bad.gguf", "f32", ffn_multiple=0)
    assert not (tmp_path / "bad.gguf").exists()


@pytest.mark.parametrize("outtype,tol", [("f16", 2e-3), ("bf16", 2e-2)])
def test_half_types_round_trip(per_layer, tmp_path, outtype, tol):
    model, tok, _, _ = per_layer
    write_gguf(model, tok, tmp_path / "h.gguf", outtype)
    back = read_model(tmp_path / "h.gguf")
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        a, b = model(ids).logits, back(ids).logits
    assert (a - b).abs().max() < tol * a.abs().max() * 10


def test_uniform_widths_keep_llama_and_read_back_as_stock_llama(tiny_model_dir, tmp_path):
    model, tok = _tiny_with_tokenizer(tiny_model_dir, layers=2)
    slice_model(model, _masks([[True, False], [False, True]], [96, 96]))
    res = write_gguf(model, tok, tmp_path / "u.gguf", "f32")
    assert res["arch"] == "llama"
    meta, _ = read_gguf(tmp_path / "u.gguf")
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"],
            meta["llama.feed_forward_length"]) == (2, 1, 96)
    back = read_model(tmp_path / "u.gguf")
    assert type(back).__name__ == "LlamaForCausalLM" and back.config.num_key_value_heads == 1
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)


def test_zero_width_layers_are_explicit():
    """No heads: deci attention-free layer (the first layer: one all-zero head, llama.cpp sizes heads from it); no
    FFN channels but heads: one zero channel (deci would otherwise drop the layer's attention output); neither: a
    layer llama.cpp skips."""
    assert _padded_ffn(LayerShape(2, 1, 0), 1) == 1 and _padded_ffn(LayerShape(2, 1, 0)) == 32
    assert _padded_ffn(LayerShape(0, 0, 0)) == 0 and _padded_ffn(LayerShape(0, 0, 50)) == 64
    assert written_shapes([LayerShape(0, 0, 0), LayerShape(0, 0, 0)], "f16", 1) == [LayerShape(1, 1, 1),
                                                                                   LayerShape(0, 0, 0)]
    # q8_0 pads to whole blocks whatever multiple is asked; other types to the multiple asked (1: as found)
    assert written_shapes([LayerShape(2, 1, 87)], "q8_0", 1) == [LayerShape(2, 1, 96)]
    assert written_shapes([LayerShape(2, 1, 87)], "q8_0", 64) == [LayerShape(2, 1, 128)]
    assert written_shapes([LayerShape(2, 1, 87)], "f16", 8) == [LayerShape(2, 1, 88)]
    cfg = make_tiny().config
    assert choose_arch(cfg, [LayerShape(4, 2, 128)] * 2) == "llama"
    assert choose_arch(cfg, [LayerShape(0, 0, 128)] * 2) == "deci"   # uniform but attention-free
    assert choose_arch(cfg, [LayerShape(4, 2, 128), LayerShape(2, 1, 128)]) == "deci"


ZERO_SHAPES = [{"num_attention_heads": 0, "num_key_value_heads": 0, "intermediate_size": 64},
               {"num_attention_heads": 0, "num_key_value_heads": 0, "intermediate_size": 64},
               {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 0}]


def zero_width_model(model):
    """A PrunedLlama with ``ZERO_SHAPES`` holding ``model``'s weights (the leading rows / columns where it is
    narrower)."""
    from prunerzero.models.modeling_pruned_llama import PrunedLlamaConfig, PrunedLlamaForCausalLM

    kw = {k: v for k, v in model.config.to_dict().items()
          if k not in ("model_type", "architectures", "transformers_version", "layer_shapes")}
    zero = PrunedLlamaForCausalLM(PrunedLlamaConfig(layer_shapes=ZERO_SHAPES, **kw)).eval()
    mine = zero.state_dict()
    zero.load_state_dict({k: v[tuple(slice(0, n) for n in mine[k].shape)] for k, v in model.state_dict().items()
                          if k in mine}, strict=False)
    return zero


def test_zero_head_layer_written_attention_free_and_refused_on_read(tiny_model_dir, tmp_path):
    model, tok = _tiny_with_tokenizer(tiny_model_dir, layers=3)
    pruned = zero_width_model(model)
    assert [s.as_dict() for s in layer_shapes(pruned)] == ZERO_SHAPES
    res = write_gguf(pruned, tok, tmp_path / "z.gguf", "f16")
    meta, tensors = read_gguf(tmp_path / "z.gguf")
    assert res["arch"] == "deci" and meta["deci.attention.head_count"] == [1, 0, 4]
    assert meta["deci.feed_forward_length"] == [64, 64, 32]
    assert not tensors["blk.0.attn_output.weight"][0].view(np.float16).any()   # layer 0: one all-zero head
    assert "blk.1.attn_q.weight" not in tensors and "blk.1.attn_norm.weight" not in tensors
    assert tensors["blk.2.ffn_down.weight"][2] == (64, 32)
    assert not tensors["blk.2.ffn_down.weight"][0].view(np.float16).any()   # the added channel is all zero
    with pytest.raises(UserError, match="layer 0 has no attention heads"):
        read_model(tmp_path / "z.gguf")


def test_refuses_family_without_gguf_writer(tmp_path):
    model = make_tiny("gemma3")
    with pytest.raises(UserError, match="model_type 'gemma3_text' is not one of them"):
        write_gguf(model, None, tmp_path / "g.gguf", "f16")
    assert not list(tmp_path.iterdir())


def test_cli_structural_save_to_gguf_and_back(per_layer, tmp_path, capsys):
    """structural --save folder (per-layer widths) -> export --format gguf -> load_model / eval on the .gguf."""
    from prunerzero.cli import main
    from prunerzero.models import load_model
    from prunerzero.prune.structural import save_structural

    model, tok, _, _ = per_layer
    save_structural(model, tok, tmp_path / "pruned")
    out = tmp_path / "deploy" / "pruned.gguf"
    assert main(["export", str(tmp_path / "pruned"), "--out", str(out),    # .gguf: --format gguf
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    assert "GGUF arch deci (per-layer widths, 3 layers), f16" in printed and "tokenizer pre 'smollm'" in printed
    lm = load_model(str(out), device="cpu", dtype="fp32", cache=tmp_path / "cache")
    assert type(lm.model).__name__ == "PrunedLlamaForCausalLM"
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        a, b = model(ids).logits, lm.model(ids).logits
    assert (a - b).abs().max() < 5e-3 * a.abs().max()   # f16 weights
    assert main(["eval", "--model", str(out), "--seqlen", "64", "--eval-windows", "1", "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "ppl" in capsys.readouterr().out.lower()


def _refused(argv, capsys):
    from prunerzero.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_cli_gguf_bad_input_before_loading(tiny_model_dir, tmp_path, capsys):
    gemma = tmp_path / "gemma"
    make_tiny("gemma3").save_pretrained(gemma)
    capsys.readouterr()
    out = str(tmp_path / "o.gguf")
    assert "--outtype" in _refused(["export", str(tiny_model_dir), "--out", out, "--outtype", "q4_0"], capsys)
    assert "must name a .gguf file" in _refused(["export", str(tiny_model_dir), "--format", "gguf", "--out",
                                                 str(tmp_path / "o")], capsys)
    (tmp_path / "there.gguf").write_text("x")
    assert "already exists" in _refused(["export", str(tiny_model_dir), "--out", str(tmp_path / "there.gguf")],
                                        capsys)
    assert "model_type 'gemma3_text' is not one of them" in _refused(["export", str(gemma), "--out", out], capsys)
    assert "neither a folder" in _refused(["export", "/no/such/dir", "--out", out], capsys)
    assert "--compressor applies" in _refused(["export", str(tiny_model_dir), "--out", out, "--compressor",
                                               "sparse-bitmask"], capsys)
    assert not (tmp_path / "o.gguf").exists() and (tmp_path / "there.gguf").read_text() == "x"


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_uniform_structural_save_is_a_stock_config_of_the_family(arch, tmp_path):
    """Structural saves for every supported family: uniform widths as the family's own config (no remote code);
    per-layer widths of a family without a per-layer class are refused."""
    from transformers import AutoModelForCausalLM

    from prunerzero.prune.structural import init_probs, save_structural, uniform_keep, uniform_widths
    from prunerzero.prune.structural.groups import Layout

    model = make_tiny(arch, layers=2)
    lay = Layout.of(model)
    slice_model(model, uniform_keep(init_probs("random", 0.6, lay, seed=1), uniform_widths(lay, 0.6)))
    assert save_structural(model, None, tmp_path / "u") is False
    cfg = json.loads((tmp_path / "u" / "config.json").read_text())
    assert cfg["model_type"] == model.config.model_type and "auto_map" not in cfg
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "u").eval()
    assert type(loaded) is type(model)
    ids = _ids(model.config.vocab_size, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    per_layer = make_tiny(arch, layers=2)
    slice_model(per_layer, _masks([[True, False], [True, True]], [64, 96]))
    with pytest.raises(UserError, match="prune with --uniform"):
        save_structural(per_layer, None, tmp_path / "p")
    assert not (tmp_path / "p").exists()
