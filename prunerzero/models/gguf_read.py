"""Read back a GGUF that prunerzero wrote: per-layer widths (arch ``deci``) as a per-layer-width LLaMA, uniform
widths as the family's stock model.

transformers reads GGUF files of the ``llama`` and ``qwen2`` archs itself (slowly: its reader decodes every
vocabulary entry), but knows no ``deci``. A file prunerzero wrote carries ``prunerzero.layer_shapes`` (see
``gguf_write``): this module rebuilds the model from it (``PrunedLlamaForCausalLM`` of
``models/modeling_pruned_llama.py`` for per-layer widths): every tensor dequantized with the
``gguf`` package, the q/k rows un-permuted per layer, the zero FFN channels added for llama.cpp or q8_0 dropped,
and the tokenizer rebuilt by transformers from the file's ``tokenizer.ggml.*`` metadata. Layers with no attention
(which llama.cpp runs) are refused: transformers' attention cannot run zero heads.

``register()`` makes ``pruned_llama`` folders load through ``AutoConfig`` / ``AutoModelForCausalLM`` without
``trust_remote_code`` inside prunerzero (the class is prunerzero's own file, not code from the folder).
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .gguf_write import MARK, MODEL_TYPE, ROPE, unpermute_qk

PRUNED_LLAMA = "pruned_llama"


def register() -> None:
    """Let transformers' Auto classes build ``pruned_llama`` configs and models (idempotent)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .modeling_pruned_llama import PrunedLlamaConfig, PrunedLlamaForCausalLM

    try:
        AutoConfig.register(PRUNED_LLAMA, PrunedLlamaConfig)
    except ValueError:
        pass   # already registered
    try:
        AutoModelForCausalLM.register(PrunedLlamaConfig, PrunedLlamaForCausalLM)
    except ValueError:
        pass


def is_prunerzero_gguf(path: str | os.PathLike) -> bool:
    """Whether a GGUF file is one prunerzero wrote (header only, no tensor read): prunerzero reads those itself, in
    a second (transformers' GGUF reader decodes every vocabulary entry first, ~25 CPU-seconds for SmolLM2's)."""
    from .gguf import read_gguf_metadata

    try:
        meta = read_gguf_metadata(path)
    except (OSError, ValueError):
        return False
    return MARK in meta


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_gguf(path: str | os.PathLike) -> tuple[dict, dict[str, tuple[np.ndarray, int, tuple[int, ...]]]]:
    """(metadata, {tensor name: (raw bytes view, ggml type, torch-order shape)}): scalars, strings and numeric
    arrays (as lists); string arrays (tokens, merges) are skipped.

    ``gguf.GGUFReader`` decodes every element of every array (the 49k tokens and merges of SmolLM2 take it ~16 s
    on this CPU); this skips string arrays and maps the tensor data (read-only memmap), which takes milliseconds.
    """
    import gguf

    mm = np.memmap(path, dtype=np.uint8, mode="r")
    pos = 0

    def take(fmt):
        nonlocal pos
        out = struct.unpack_from(fmt, mm, pos)[0]
        pos += struct.calcsize(fmt)
        return out

    def string():
        nonlocal pos
        n = take("<Q")
        out = bytes(mm[pos:pos + n]).decode("utf-8", errors="replace")
        pos += n
        return out

    def skip(kind):
        nonlocal pos
        if kind in _SCALARS:
            pos += struct.calcsize(_SCALARS[kind])
        elif kind == _STRING:
            n = take("<Q")
            pos += n
        elif kind == _ARRAY:
            inner, count = take("<I"), take("<Q")
            if inner in _SCALARS:
                pos += count * struct.calcsize(_SCALARS[inner])
            else:
                for _ in range(count):
                    skip(inner)
        else:
            raise ValueError(f"unknown GGUF value type {kind}")

    try:
        pos = 4
        if bytes(mm[:4]) != b"GGUF" or take("<I") not in (2, 3):
            raise ValueError("not a little-endian GGUF v2/v3 file")
        n_tensors, n_kv = take("<Q"), take("<Q")
        meta = {}
        for _ in range(n_kv):
            key, kind = string(), take("<I")
            if kind in _SCALARS:
                meta[key] = take(_SCALARS[kind])
            elif kind == _STRING:
                meta[key] = string()
            elif kind == _ARRAY and struct.unpack_from("<I", mm, pos)[0] in _SCALARS:
                inner, count = take("<I"), take("<Q")   # numbers (per-layer widths): read; strings: skipped
                fmt = _SCALARS[inner]
                meta[key] = list(struct.unpack_from(f"<{count}{fmt[1]}", mm, pos))
                pos += count * struct.calcsize(fmt)
            else:
                skip(kind)
        infos = []
        for _ in range(n_tensors):
            name, dims = string(), take("<I")
            shape = tuple(reversed([take("<Q") for _ in range(dims)]))
            infos.append((name, shape, take("<I"), take("<Q")))
    except (struct.error, ValueError, UnicodeError) as exc:
        raise UserError(f"{Path(path).name} is not a readable GGUF file ({exc}): check the file") from None
    align = int(meta.get("general.alignment", 32))
    start = (pos + align - 1) // align * align
    tensors = {}
    for name, shape, kind, offset in infos:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
        row = shape[-1] // block * size
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        raw = mm[start + offset: start + offset + rows * row].reshape(*shape[:-1], row)
        tensors[name] = (raw, kind, shape)
    return meta, tensors


def _need(meta: dict, key: str, path):
    if key not in meta:
        raise UserError(f"{Path(path).name} has no {key}: it is not a prunerzero-written GGUF")
    return meta[key]


def read_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """The model of a prunerzero-written GGUF (eval mode): the family's stock class for uniform widths (arch
    ``llama`` / ``qwen2``), ``PrunedLlamaForCausalLM`` for per-layer widths (arch ``deci``)."""
    import gguf
    from transformers import AutoConfig, AutoModelForCausalLM

    from .modeling_pruned_llama import PrunedLlamaConfig, PrunedLlamaForCausalLM

    meta, tensors = read_gguf(path)
    arch = _need(meta, "general.architecture", path)
    shapes = json.loads(_need(meta, MARK, path))
    for i, s in enumerate(shapes):
        if s["num_attention_heads"] == 0 or s["intermediate_size"] == 0:
            raise UserError(f"{Path(path).name}: layer {i} has no attention heads or no FFN channels; llama.cpp runs "
                            "such layers but prunerzero's LLaMA cannot")
    a = f"{arch}."
    kind = meta.get(MODEL_TYPE, "llama")
    bias = "blk.0.attn_q.bias" in tensors
    common = dict(
        vocab_size=int(_need(meta, a + "vocab_size", path)),
        hidden_size=int(_need(meta, a + "embedding_length", path)), num_hidden_layers=len(shapes),
        num_attention_heads=max(s["num_attention_heads"] for s in shapes),
        num_key_value_heads=max(s["num_key_value_heads"] for s in shapes),
        intermediate_size=max(s["intermediate_size"] for s in shapes),
        head_dim=int(_need(meta, a + "attention.key_length", path)),
        max_position_embeddings=int(_need(meta, a + "context_length", path)),
        rms_norm_eps=float(_need(meta, a + "attention.layer_norm_rms_epsilon", path)),
        rope_parameters=json.loads(meta[ROPE]) if ROPE in meta else
        {"rope_type": "default", "rope_theta": float(meta.get(a + "rope.freq_base", 10000.0))},
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"))
    if arch == "deci":
        # Qwen2's q/k/v biases: LLaMA's attention_bias also gives o_proj one, loaded as zeros below
        cfg = PrunedLlamaConfig(layer_shapes=shapes, attention_bias=bias, **common)
        cfg.architectures = ["PrunedLlamaForCausalLM"]
        model = PrunedLlamaForCausalLM(cfg)
    else:
        cfg = AutoConfig.for_model(kind, **common)
        cfg.head_dim = common["head_dim"]
        model = AutoModelForCausalLM.from_config(cfg)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], len(shapes))
    state = {}
    for name in model.state_dict():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if "rotary_emb" in name:
            continue
        gname = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if name.endswith("o_proj.bias") and gname not in tensors:
            state[name] = torch.zeros(cfg.hidden_size, dtype=dtype)   # see attention_bias above
            continue
        if gname is None or gname not in tensors:
            raise UserError(f"{Path(path).name} has no tensor for {name}: not a complete prunerzero GGUF")
        raw, kind, shape = tensors[gname]
        arr = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(kind))
        w = torch.from_numpy(np.array(arr, dtype=np.float32).reshape(shape))
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        if layer is not None and arch != "qwen2":   # qwen2: llama.cpp's NeoX RoPE, written unpermuted
            s = shapes[layer]
            if ".q_proj." in name:
                w = unpermute_qk(w, s["num_attention_heads"])
            elif ".k_proj." in name:
                w = unpermute_qk(w, s["num_key_value_heads"])
        if layer is not None:
            s = shapes[layer]
            if ".gate_proj." in name or ".up_proj." in name:
                w = w[: s["intermediate_size"]]          # drop the zero channels written for llama.cpp / q8_0
            elif ".down_proj." in name:
                w = w[:, : s["intermediate_size"]]
        state[name] = w.to(dtype).contiguous()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [n for n in missing if not (n == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise UserError(f"{Path(path).name}: tensors do not match its widths ({(missing + unexpected)[:3]})")
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model.to(dtype).eval()


def read_tokenizer(path: str | os.PathLike):
    """transformers' fast tokenizer from the file's ``tokenizer.ggml.*`` metadata."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path)   # not AutoTokenizer: it looks the arch up as a transformers model type, and 'deci' is none
    return PreTrainedTokenizerFast.from_pretrained(str(path.parent), gguf_file=path.name)


def cached_folder(path: str | os.PathLike, cache: Path) -> Path:
    """A prunerzero-written GGUF read once into a save_pretrained folder under the cache (loaded by ``load_model``
    like any folder; per-layer widths as ``pruned_llama``)."""
    import hashlib

    from ..fsutil import atomic_folder

    path = Path(path)
    stat = path.stat()
    tag = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    target = cache / "models" / f"{path.stem}-{tag}"
    if (target / "config.json").is_file():
        return target
    model = read_model(path)
    tokenizer = read_tokenizer(path)
    with atomic_folder(target, shared_cache=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target
