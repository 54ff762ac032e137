"""Write a (pruned) causal LM as a GGUF file that llama.cpp, Ollama and LM Studio run, with the ``gguf`` package.

What is written, and why:

* **Architecture.** A LLaMA-structured model (``llama``, ``mistral``, prunerzero's per-layer ``pruned_llama``) whose
  layers all have the same widths keeps the arch ``llama``; a Qwen2 one keeps ``qwen2``. Layers of different widths
  (what the policy-gradient structural stage finds) are written as arch ``deci``, the one llama.cpp runs
  Llama-3.1-Nemotron-NAS models with: it reads ``deci.attention.head_count``, ``deci.attention.head_count_kv`` and
  ``deci.feed_forward_length`` as per-layer arrays (llama.cpp rejects those arrays under arch ``llama``). ``deci``
  has optional q/k/v biases, so a Qwen2 with per-layer widths is written as ``deci`` too.
* **Zero-width layers.** ``deci`` allows a layer with no attention (head count 0: its attention tensors are left
  out and the residual passes through), except the first: llama.cpp sizes every head from layer 0's head count, so a
  first layer without heads gets one all-zero head (its zero o_proj adds nothing). It skips the residual add of a layer with no feed-forward channels and so
  would drop that layer's attention output too: such a layer gets one all-zero channel instead (gate/up rows and
  down column zero, so it adds exactly nothing). A uniform-width model with zero heads is written as ``deci``.
* **q/k rows.** llama.cpp's LLaMA graph applies RoPE to interleaved pairs; transformers rotates halves. The q and k
  rows of each head are permuted as llama.cpp's converter does, per layer with that layer's head counts (``qwen2``
  uses llama.cpp's NeoX RoPE, which rotates halves, so it is written unpermuted).
* **Output types.** f32, f16, bf16 or q8_0 for the 2-D weights (the ``gguf`` package quantizes); norms and biases
  stay f32. Any other tensor whose rows are not a multiple of 32 cannot be q8_0 and falls back to f16 (as
  llama.cpp's converter does); the summary counts it.
* **FFN widths aligned.** Each layer's FFN width is padded up to a multiple of ``ffn_multiple`` (32) with all-zero
  channels (exact: a zero gate/up row and a zero down column add nothing). q8_0 needs it (blocks of 32 along a row:
  a width of 87 cannot be q8_0), and so does speed at every type: llama.cpp's CPU prefill kernels (llamafile's
  tinyBLAS) take a matrix product only when its inner dimension is a multiple of 8, 16 or 32 (by type and
  instruction set) and otherwise fall back to a generic path (``results/llamacpp-cpu.md`` times both). The file's
  ``prunerzero.layer_shapes`` keeps the true widths, and prunerzero drops the padding when it reads the file back.
* **Sparsity.** Unstructured and N:M zeros are stored as zeros: GGUF has no sparse layout and llama.cpp no sparse
  kernel, so a 50%-sparse model has the dense model's size and speed (quantization keeps most zeros: q8_0 of an
  all-zero block is zero).
* **Tokenizer.** Byte-level BPE tokenizers (``tokenizer.ggml.model`` gpt2): tokens, token types, merges, special
  ids and the chat template (``gguf.SpecialVocab`` reads them from the saved tokenizer files). The pre-tokenizer
  name llama.cpp needs is recognised from ``tokenizer.json``'s pre-tokenizer (see ``PRETOKENIZERS``); an unknown one
  is written as ``default`` with a warning (llama.cpp then splits text with GPT-2's rule).

The file carries ``prunerzero.layer_shapes`` (JSON) so prunerzero reads its per-layer widths back
(``gguf_read``).
"""
from __future__ import annotations

import json
import math
import re
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import PrunerzeroWarning, UserError

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
LLAMA_LIKE = ("llama", "mistral", "pruned_llama")
FAMILY_ARCH = {**{t: "llama" for t in LLAMA_LIKE}, "qwen2": "qwen2"}
Q8_BLOCK = 32
FFN_MULTIPLE = 32   # FFN widths padded to this (q8_0 blocks; llama.cpp's fast CPU kernels), see the module doc
MARK = "prunerzero.layer_shapes"     # JSON list of per-layer widths, also the marker of a prunerzero-written file
MARK_VERSION = "prunerzero.gguf_version"
MODEL_TYPE = "prunerzero.model_type"   # the transformers family a uniform-width file is read back as
ROPE = "prunerzero.rope_parameters"   # transformers' RoPE settings, so prunerzero rebuilds the same rotation

# tokenizer.json pre-tokenizer split patterns -> llama.cpp's pre-tokenizer names (llama-vocab.cpp); the regex
# llama.cpp applies under each name is the one these tokenizers split with.
_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
PRETOKENIZERS = {
    # SmolLM / SmolLM2 (and StarCoder): single digits, then GPT-2's byte-level split
    ("digits", "bytelevel"): "smollm",
    ("bytelevel",): "gpt-2",
    # Qwen2 / Qwen2.5
    (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
     "bytelevel"): "qwen2",
    # LLaMA 3
    (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
     "bytelevel"): "llama-bpe",
}


@dataclass(frozen=True)
class LayerShape:
    heads: int
    kv_heads: int
    ffn: int

    def as_dict(self) -> dict:
        return {"num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
                "intermediate_size": self.ffn}


def check_outtype(outtype: str) -> None:
    if outtype not in OUTTYPES:
        raise UserError(f"unknown --outtype '{outtype}': use one of {', '.join(OUTTYPES)}")


def check_family(config) -> str:
    """The GGUF arch of a uniform-width model of this family (a one-line UserError for families not written)."""
    kind = getattr(config, "model_type", None)
    if kind not in FAMILY_ARCH:
        raise UserError(f"GGUF export writes LLaMA-structured models ({', '.join(FAMILY_ARCH)}); model_type "
                        f"'{kind}' is not one of them: export it with prune --save (safetensors) instead")
    scaling = getattr(config, "rope_scaling", None) or {}
    rope = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else "default"
    if rope not in ("default", "llama3", "linear"):
        raise UserError(f"GGUF export: rope scaling '{rope}' of this model is not written (default, llama3 and "
                        "linear are)")
    return FAMILY_ARCH[kind]


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def layer_shapes(model: nn.Module) -> list[LayerShape]:
    """Each decoder layer's heads, KV heads and FFN width, read from its Linear shapes (dense or sliced)."""
    hd = head_dim_of(model.config)
    return [LayerShape(layer.self_attn.q_proj.out_features // hd, layer.self_attn.k_proj.out_features // hd,
                       layer.mlp.gate_proj.out_features) for layer in model.model.layers]


def _padded_ffn(shape: LayerShape, multiple: int = FFN_MULTIPLE) -> int:
    """The FFN width written: zero channels added where llama.cpp or q8_0 need them (see the module doc)."""
    width = shape.ffn
    if width == 0 and shape.heads == 0:
        return 0               # a layer that does nothing: deci skips it
    return math.ceil(max(width, 1) / multiple) * multiple


def written_shapes(shapes: list[LayerShape], outtype: str, ffn_multiple: int = FFN_MULTIPLE) -> list[LayerShape]:
    """The widths the file declares: FFN padding (``_padded_ffn``; q8_0 always to whole blocks of 32), and one
    all-zero attention head in a first layer without heads (llama.cpp takes the head size from layer 0's head count:
    zero there makes every layer's heads zero-sized; an all-zero head with a zero o_proj adds exactly nothing)."""
    multiple = math.lcm(ffn_multiple, Q8_BLOCK) if outtype == "q8_0" else ffn_multiple
    out = [LayerShape(s.heads, s.kv_heads, _padded_ffn(s, multiple)) for s in shapes]
    if out and out[0].heads == 0:
        out[0] = LayerShape(1, 1, _padded_ffn(LayerShape(1, 1, shapes[0].ffn), multiple))
    return out


def choose_arch(config, shapes: list[LayerShape]) -> str:
    base = check_family(config)
    uniform = all(s == shapes[0] for s in shapes) and shapes[0].heads > 0
    return base if uniform else "deci"


# ---------------------------------------------------------------- tensors

def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """transformers' rotate-half q/k rows -> llama.cpp's interleaved pairs, per head (weights and biases)."""
    if n_head == 0:
        return w
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of ``permute_qk``."""
    if n_head == 0:
        return w
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _pad_rows(w: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([w, w.new_zeros(rows - w.shape[0], *w.shape[1:])]) if rows > w.shape[0] else w


def _pad_cols(w: torch.Tensor, cols: int) -> torch.Tensor:
    return torch.cat([w, w.new_zeros(w.shape[0], cols - w.shape[1])], dim=1) if cols > w.shape[1] else w


def _hf_tensors(model: nn.Module, arch: str, shapes: list[LayerShape], written: list[LayerShape]):
    """(transformers name, tensor) in the order llama.cpp's converter writes them, permuted and padded for GGUF."""
    permute = arch != "qwen2"
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    yield "model.embed_tokens.weight", state["model.embed_tokens.weight"]
    hd, hidden = head_dim_of(model.config), model.config.hidden_size
    for i, (shape, out) in enumerate(zip(shapes, written)):
        pre = f"model.layers.{i}."
        if out.heads > 0:                # an attention-free deci layer has no attention norm either
            yield pre + "input_layernorm.weight", state[pre + "input_layernorm.weight"]
        if out.heads > shape.heads:     # the all-zero head of ``written_shapes``
            zero = torch.zeros(hd, hidden)
            yield from ((f"{pre}self_attn.{p}_proj.weight", zero) for p in "qkv")
            yield pre + "self_attn.o_proj.weight", zero.T.contiguous()
        elif shape.heads > 0:
            for proj, n in (("q_proj", shape.heads), ("k_proj", shape.kv_heads), ("v_proj", None)):
                for kind in ("weight", "bias"):
                    key = f"{pre}self_attn.{proj}.{kind}"
                    if key in state:
                        t = state[key]
                        yield key, permute_qk(t, n) if (permute and n is not None) else t
            yield pre + "self_attn.o_proj.weight", state[pre + "self_attn.o_proj.weight"]
            if pre + "self_attn.o_proj.bias" in state:
                yield pre + "self_attn.o_proj.bias", state[pre + "self_attn.o_proj.bias"]
        width = out.ffn
        if width > 0:
            yield pre + "post_attention_layernorm.weight", state[pre + "post_attention_layernorm.weight"]
            yield pre + "mlp.gate_proj.weight", _pad_rows(state[pre + "mlp.gate_proj.weight"], width)
            yield pre + "mlp.up_proj.weight", _pad_rows(state[pre + "mlp.up_proj.weight"], width)
            yield pre + "mlp.down_proj.weight", _pad_cols(state[pre + "mlp.down_proj.weight"], width)
    yield "model.norm.weight", state["model.norm.weight"]
    if not getattr(model.config, "tie_word_embeddings", False) and "lm_head.weight" in state:
        yield "lm_head.weight", state["lm_head.weight"]


def _encode(gguf, arr: np.ndarray, outtype: str) -> tuple[np.ndarray, object, bool]:
    """(data, raw dtype or None, fell back to f16): 1-D tensors stay f32, 2-D ones take the output type."""
    qt = gguf.GGMLQuantizationType
    if arr.ndim == 1 or outtype == "f32":
        return arr.astype(np.float32), None, False
    if outtype == "f16":
        return arr.astype(np.float16), None, False
    if outtype == "bf16":
        return gguf.quants.quantize(arr, qt.BF16), qt.BF16, False
    if arr.shape[-1] % Q8_BLOCK:
        return arr.astype(np.float16), None, True
    return gguf.quants.quantize(arr, qt.Q8_0), qt.Q8_0, False


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


# ---------------------------------------------------------------- tokenizer

def _pre_tokenizer_name(tokenizer_json: dict) -> str | None:
    """llama.cpp's pre-tokenizer name for a byte-level BPE tokenizer.json (None: not recognised)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    key = []
    for step in steps:
        kind = step.get("type")
        if kind == "Digits" and step.get("individual_digits"):
            key.append("digits")
        elif kind == "ByteLevel":
            if not step.get("use_regex", True):
                continue   # the split before it did the work
            key.append("bytelevel")
        elif kind == "Split":
            key.append(step.get("pattern", {}).get("Regex") or step.get("pattern", {}).get("String"))
        else:
            return None
    return PRETOKENIZERS.get(tuple(key))


def add_tokenizer(writer, gguf, tokenizer, n_vocab: int) -> dict:
    """Vocabulary, merges, special tokens and chat template of a byte-level BPE tokenizer (``tokenizer.ggml.*``)."""
    with tempfile.TemporaryDirectory(prefix="prunerzero-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        path = Path(tmp) / "tokenizer.json"
        if not path.is_file():
            raise UserError("GGUF export needs a fast tokenizer (tokenizer.json); this model's tokenizer has none")
        tj = json.loads(path.read_text())
        model_kind = tj.get("model", {}).get("type")
        if model_kind != "BPE" or tj["model"].get("byte_fallback"):
            raise UserError(f"GGUF export writes byte-level BPE tokenizers; this one is {model_kind}"
                            f"{' with byte fallback (SentencePiece style)' if model_kind == 'BPE' else ''}")
        vocab = tokenizer.get_vocab()
        pre = _pre_tokenizer_name(tj)
        if pre == "gpt-2" and not any(len(t) > 1 and re.search("[0-9]", t) for t in vocab):
            # transformers' GGUF conversion drops SmolLM2's single-digit split; a vocabulary without a multi-character
            # token holding a digit tokenizes exactly the same with it, so llama.cpp gets its own name back
            pre = "smollm"
        if pre is None:
            warnings.warn("GGUF export: this tokenizer's pre-tokenizer is not one prunerzero recognises; written as "
                          "'default' (llama.cpp then splits text with GPT-2's rule, which may tokenize differently)",
                          PrunerzeroWarning, stacklevel=3)
            pre = "default"
        added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
        reverse = {i: t for t, i in vocab.items()}
        tokens, types = [], []
        for i in range(n_vocab):
            tok = reverse.get(i)
            if tok is None:
                tokens.append(f"[PAD{i}]")
                types.append(gguf.TokenType.UNUSED)
            elif tok in added:
                tokens.append(tok)
                types.append(gguf.TokenType.CONTROL if added[tok].special else gguf.TokenType.USER_DEFINED)
            else:
                tokens.append(tok)
                types.append(gguf.TokenType.NORMAL)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=n_vocab)
        special.add_to_gguf(writer, quiet=True)
        return {"pre": pre, "tokens": n_vocab, "merges": len(special.merges),
                "chat_template": bool(special.chat_template)}


# ---------------------------------------------------------------- the file

def _rope(writer, config) -> None:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    theta = theta if theta is not None else getattr(config, "rope_theta", None)
    if theta is not None:
        writer.add_rope_freq_base(float(theta))
    scaling = getattr(config, "rope_scaling", None) or {}
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))


def _llama3_rope_factors(config) -> np.ndarray | None:
    """Per-frequency factors of LLaMA 3.1's RoPE scaling (llama.cpp reads them as ``rope_freqs.weight``)."""
    scaling = getattr(config, "rope_scaling", None) or {}
    if not isinstance(scaling, dict) or scaling.get("rope_type", scaling.get("type")) != "llama3":
        return None
    base = float(scaling.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    dim = head_dim_of(config)
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old = scaling.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def write_gguf(model: nn.Module, tokenizer, path: str | os.PathLike, outtype: str = "f16",
               name: str | None = None, ffn_multiple: int = FFN_MULTIPLE) -> dict:
    """Write ``model`` (a LLaMA-structured causal LM, dense, sparse or sliced) to the GGUF file ``path``.

    ``path`` is written in full and then appears (a temporary name in the same folder until then). Returns a
    summary: arch, per-layer shapes, output type, tensors that fell back to f16, tokenizer facts and bytes.
    ``ffn_multiple``: FFN widths are padded with zero channels to a multiple of it (1: as they are; q8_0 always
    pads to whole blocks of 32); the default 32 suits llama.cpp's fast CPU kernels at every type.
    """
    import gguf

    from ..fsutil import atomic_path

    check_outtype(outtype)
    cfg = model.config
    shapes = layer_shapes(model)
    arch = choose_arch(cfg, shapes)
    if ffn_multiple < 1:
        raise UserError(f"GGUF export: ffn_multiple {ffn_multiple} must be 1 or more (1: FFN widths as they are)")
    written = written_shapes(shapes, outtype, ffn_multiple)
    hd = head_dim_of(cfg)
    if hd % 2:
        raise UserError(f"GGUF export: head_dim {hd} is odd; RoPE needs an even head dimension")
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], len(shapes))
    fallback = []
    with atomic_path(Path(path), suffix=".gguf") as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_name(name or getattr(cfg, "_name_or_path", None) or "model")
        writer.add_context_length(int(cfg.max_position_embeddings))
        writer.add_embedding_length(int(cfg.hidden_size))
        writer.add_block_count(len(shapes))
        if arch == "deci":
            writer.add_head_count([s.heads for s in written])
            writer.add_head_count_kv([s.kv_heads for s in written])
            writer.add_feed_forward_length([s.ffn for s in written])
        else:
            writer.add_head_count(written[0].heads)
            writer.add_head_count_kv(written[0].kv_heads)
            writer.add_feed_forward_length(written[0].ffn)
        writer.add_key_length(hd)
        writer.add_value_length(hd)
        writer.add_rope_dimension_count(hd)
        writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        writer.add_vocab_size(int(cfg.vocab_size))
        _rope(writer, cfg)
        writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[outtype]))
        if outtype == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_string(MARK, json.dumps([s.as_dict() for s in shapes]))
        writer.add_uint32(MARK_VERSION, 1)
        writer.add_string(MODEL_TYPE, "llama" if cfg.model_type == "pruned_llama" else cfg.model_type)
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None)
        if isinstance(rope, dict):
            writer.add_string(ROPE, json.dumps(rope))
        tok = add_tokenizer(writer, gguf, tokenizer, int(cfg.vocab_size))
        factors = _llama3_rope_factors(cfg)
        if factors is not None:
            writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors)
        for hf_name, t in _hf_tensors(model, arch, shapes, written):
            new = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if new is None:
                raise UserError(f"GGUF export: no GGUF name for tensor {hf_name} of arch {arch}")
            data, raw, fell = _encode(gguf, t.numpy(), outtype)
            if fell:
                fallback.append(new)
            writer.add_tensor(new, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        size = Path(tmp).stat().st_size
    padded = sum(w.ffn != s.ffn for w, s in zip(written, shapes))
    return {"arch": arch, "outtype": outtype, "layers": len(shapes), "shapes": [s.as_dict() for s in shapes],
            "padded_ffn_layers": padded, "f16_fallback": fallback, "tokenizer": tok, "bytes": size}
