"""Load a causal LM (hub id, local folder, GGUF file, built-in name) and refuse what prunerzero cannot prune.

Any decoder-only ``*ForCausalLM`` whose blocks keep their weights in ``nn.Linear`` is accepted. The check reads the
config (or a GGUF header) first, so a refusal takes seconds, not a dequantisation.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..checks import BOS_DEFAULT
from ..errors import PrunerzeroWarning, UserError
from .blocks import check_architecture
from .builtins import BUILTIN_MODELS, cache_dir, find_builtin_gguf
from .families import family
from .gguf import _cached_gguf_dir
from .moe import check_moe_config

DEFAULT_SEQLEN = 2048


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """fp32 on CPU, fp16 on GPU unless asked otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if str(device).startswith("cpu") else torch.float16
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise UserError(f"unknown dtype '{dtype}': use one of fp32, fp16, bf16")
    return table[dtype]


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    name: str
    seqlen: int
    window_bos: int | None = None   # protocol bos 'window': the token that opens every window; None: 'stream'

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_model_source(name: str, cache: str | os.PathLike | None = None) -> str:
    """Turn a user's model name into something ``from_pretrained`` takes (built-ins and GGUFs become cached dirs)."""
    if name in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[name]
        return str(_cached_gguf_dir(find_builtin_gguf(name, cache), cache_dir(cache), spec["cache_name"]))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file {path} not found: check the path")
        from .gguf_read import cached_folder, is_prunerzero_gguf

        if is_prunerzero_gguf(path):  # per-layer widths (arch deci) transformers cannot read; all: in a second
            return str(cached_folder(path, cache_dir(cache)))
        return str(_cached_gguf_dir(path, cache_dir(cache), path.stem))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} has no config.json: pass a folder written by save_pretrained")
        if sparsity_config_of(path) is not None:  # transformers would load it with random Linear weights
            raise UserError(f"{path} is a compressed-tensors sparse export: decompress it first "
                            f"(prunerzero export {path} --format dense --out DENSE_DIR)")
        return str(path)
    if name.count("/") == 1 and not path.exists():
        return name  # a Hugging Face hub id
    raise UserError(f"unknown model '{name}': use a built-in name ({', '.join(BUILTIN_MODELS)}), a .gguf file, "
                    "a save_pretrained folder or a hub id")


def load_model(name: str, device: str | None = None, dtype: str | torch.dtype | None = None,
               cache: str | os.PathLike | None = None, device_map: str | None = None,
               seqlen: int | None = None, bos: str = BOS_DEFAULT) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    ``bos`` is the protocol's BOS mode (``checks.BOS_MODES``): 'window' makes every calibration and evaluation
    window open with the tokenizer's BOS token (``LoadedModel.window_bos``); 'stream' on a family that needs BOS
    (``Family.needs_bos``) warns once.

    ``device_map="auto"`` spreads a model over all visible GPUs (accelerate), as Wanda does for 30B-70B models;
    the layer-by-layer code follows each block to its own device.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .. import checks
    from .gguf_read import register

    checks.bos(bos, "bos")
    register()  # per-layer-width LLaMA folders (structural --save, deci GGUFs) load with prunerzero's own class
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    source = resolve_model_source(name, cache)
    kwargs = {"dtype": torch_dtype}
    if device_map:
        kwargs["device_map"] = device_map
    try:
        config = AutoConfig.from_pretrained(source)
        check_config(config)  # seconds, before any weight is read
        tokenizer = AutoTokenizer.from_pretrained(source)
        token = window_bos(name, config, tokenizer, bos)  # refused or warned before the weights load too
        model, info = _quiet_load(AutoModelForCausalLM, source, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model '{name}' ({first}): check the name, or download it while online") from None
    check_loaded(name, model, info)   # before anything is pruned or scored
    if not device_map:
        model.to(device)
    model.eval()
    model.config.use_cache = False
    check_architecture(model)
    ctx = getattr(model.config, "max_position_embeddings", None) or DEFAULT_SEQLEN
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, seqlen=min(seqlen or DEFAULT_SEQLEN, ctx),
                       window_bos=token)


def window_bos(name: str, model_or_config, tokenizer, bos: str) -> int | None:
    """The token id that opens every window under protocol ``bos`` (None for 'stream', after warning a family
    that needs BOS)."""
    if bos == BOS_DEFAULT:
        cfg = getattr(model_or_config, "config", model_or_config)
        if family(cfg).needs_bos:
            warnings.warn(f"{name} ({cfg.model_type}) expects BOS at the start of every sequence; the "
                          "protocol's bos 'stream' (Wanda's windows) puts it only before the first window, so its "
                          "perplexity is far above the model's own: use bos 'window' (--bos window)",
                          PrunerzeroWarning, stacklevel=3)
        return None
    token = getattr(tokenizer, "bos_token_id", None)
    if token is None:
        raise UserError(f"{name}'s tokenizer has no BOS token, so bos 'window' cannot open windows with one: "
                        "use bos 'stream'")
    return int(token)


def _arch_name(cfg) -> str:
    archs = getattr(cfg, "architectures", None)
    return archs[0] if archs else str(getattr(cfg, "model_type", "this model"))


def check_config(cfg) -> None:
    """Refuse, from the config alone (before any weight is read), what prunerzero cannot prune."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    name = _arch_name(cfg)
    if getattr(cfg, "is_encoder_decoder", False):
        raise UserError(f"architecture {name} is an encoder-decoder: prunerzero prunes decoder-only causal LMs")
    if getattr(cfg, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        # BERT and its kin: transformers offers an LM-head class for some of them, but its head would start from
        # random weights and the encoder attends both ways; a perplexity of it means nothing
        raise UserError(f"architecture {name} (model_type {cfg.model_type}) is an encoder (a masked LM), not a "
                        "decoder-only causal LM: prunerzero prunes decoder-only *ForCausalLM models")
    if getattr(cfg, "model_type", None) not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and \
            getattr(cfg, "model_type", None) != "pruned_llama":  # prunerzero's per-layer-width LLaMA
        raise UserError(f"architecture {name} (model_type {getattr(cfg, 'model_type', None)}) is not a causal LM "
                        "transformers knows: prunerzero prunes decoder-only *ForCausalLM models")
    check_moe_config(cfg)  # a mixture of experts of a family without an adapter is refused here


def _quiet_load(cls, source: str, **kwargs):
    """from_pretrained with its loading info; transformers' own load report is not logged (``check_loaded`` refuses
    what it would report, in one line)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return cls.from_pretrained(source, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(level)


def check_loaded(name: str, model: nn.Module, info: dict) -> None:
    """Refuse a load that left weights missing (newly initialised: random) or of another shape than the
    checkpoint's; tied weights (an LM head that is the embedding) are not missing."""
    tied = set()
    if getattr(model.config, "tie_word_embeddings", False):
        keys = getattr(model, "_tied_weights_keys", None) or []
        tied = set(keys if isinstance(keys, (list, tuple, set)) else dict(keys))
    missing = [k for k in info.get("missing_keys", []) if k not in tied]
    mismatched = [k[0] if isinstance(k, (list, tuple)) else k for k in info.get("mismatched_keys", [])]
    for what, keys in (("missing from the checkpoint (they would be random)", missing),
                       ("of another shape in the checkpoint", mismatched)):
        if keys:
            shown = ", ".join(sorted(keys)[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            raise UserError(f"cannot use model '{name}': weights {what}: {shown}; pass a complete checkpoint of "
                            "a decoder-only causal LM")


def save_model(lm: LoadedModel, target: str | os.PathLike) -> None:
    """save_pretrained (weights and tokenizer) into a temporary folder next to ``target``, then rename: no
    half-written folder is ever at ``target``."""
    from ..fsutil import atomic_folder

    with atomic_folder(target) as tmp:
        lm.model.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"{folder} has no config.json: pass a folder written by save_pretrained")
    return json.loads(path.read_text())


def sparsity_config_of(folder: str | os.PathLike) -> dict | None:
    """The ``sparsity_config`` of a compressed-tensors folder, or None for a dense one."""
    qc = read_config(Path(folder)).get("quantization_config") or {}
    if qc.get("quant_method") != "compressed-tensors":
        return None
    return qc.get("sparsity_config") or None
