"""GGUF files: the header read in well under a second, and the dequantise-once cache of a GGUF model."""
from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import torch

from ..errors import UserError

def _load_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=dtype,
        quantization_config=GgufConfig(gguf_file=name, dequantize=True))
    # After dequantisation these are plain nn.Linear layers; drop the quantizer so save_pretrained works.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token == "<|im_start|>":
        tokenizer.add_bos_token = False  # transformers 4.x GGUF conversion quirk (see shared/MODEL.md)
    return model, tokenizer


def _cached_gguf_dir(path: Path, cache: Path, cache_name: str) -> Path:
    """Dequantise a GGUF once into a save_pretrained folder under the cache (atomic: tmp dir, then rename)."""
    stat = path.stat()
    tag = hashlib.sha1(f"{path.name}:{stat.st_size}".encode()).hexdigest()[:10]
    target = cache / "models" / f"{cache_name}-{tag}"
    if (target / "config.json").is_file():
        return target
    from ..fsutil import atomic_folder

    gguf_architecture(path)  # refuse from the header, before minutes of dequantisation
    model, tokenizer = _load_gguf(path, torch.float32)
    with atomic_folder(target, shared_cache=True) as tmp:  # another runner may finish the same entry first
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    if not (target / "config.json").is_file():
        raise UserError(f"{target} holds files but no config.json: delete that folder and run again")
    return target


def gguf_architecture(path: str | os.PathLike) -> str:
    """``general.architecture`` from a GGUF header, refusing what cannot be loaded (no tensor is read)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    name = Path(path).name
    try:
        meta = read_gguf_metadata(path)
        arch = str(meta["general.architecture"])
    except (KeyError, ValueError, OSError, struct.error) as exc:
        raise UserError(f"{name} is not a readable GGUF file ({type(exc).__name__}: {exc}): check the file") from None
    experts = meta.get(f"{arch}.expert_count")
    if isinstance(experts, int) and experts > 0:
        raise UserError(f"{name} is a mixture-of-experts {arch} ({experts} experts): fused experts are not "
                        "supported; use a dense model")
    known = {a.replace("_", "") for a in GGUF_SUPPORTED_ARCHITECTURES} - {"general", "tokenizer", "t5", "umt5"}
    if arch.replace("_", "") not in known:
        raise UserError(f"{name} holds GGUF architecture '{arch}', which transformers cannot load as a causal LM: "
                        f"use one of {', '.join(sorted(known))}")
    return arch


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_metadata(path: str | os.PathLike) -> dict:
    """The scalar and string key/values of a GGUF header (arrays skipped), read in well under a second.

    ``gguf.GGUFReader`` maps every tensor and decodes every array element (a 262k-token vocabulary takes it ~30 s);
    this reads the header's key/value section only and seeks past arrays.
    """
    out = {}
    with open(path, "rb", buffering=1 << 20) as f:
        def take(fmt):
            size = struct.calcsize(fmt)
            data = f.read(size)
            if len(data) != size:
                raise ValueError("truncated header")
            return struct.unpack(fmt, data)[0]

        def string():
            n = take("<Q")
            if n > 1 << 24:
                raise ValueError("string longer than 16 MiB")
            return f.read(n).decode("utf-8", errors="replace")

        def skip(kind):
            if kind in _GGUF_SCALARS:
                f.seek(struct.calcsize(_GGUF_SCALARS[kind]), 1)
            elif kind == _GGUF_STRING:
                f.seek(take("<Q"), 1)
            elif kind == _GGUF_ARRAY:
                inner, count = take("<I"), take("<Q")
                if inner in _GGUF_SCALARS:
                    f.seek(count * struct.calcsize(_GGUF_SCALARS[inner]), 1)
                else:
                    for _ in range(count):
                        skip(inner)
            else:
                raise ValueError(f"unknown value type {kind}")

        if f.read(4) != b"GGUF":
            raise ValueError("no GGUF magic")
        version = take("<I")
        if not 1 <= version <= 3:
            raise ValueError(f"GGUF version {version} (big-endian or unknown)")
        take("<Q")  # tensor count
        for _ in range(take("<Q")):
            key, kind = string(), take("<I")
            if kind in _GGUF_SCALARS:
                out[key] = take(_GGUF_SCALARS[kind])
            elif kind == _GGUF_STRING:
                out[key] = string()
            else:
                skip(kind)
    return out
