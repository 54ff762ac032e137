"""Export: a model to GGUF for llama.cpp (``--format gguf``, see ``gguf_write``), and the compressed-tensors sparse
storage format (a pruned ``save_pretrained`` folder -> bitmask layouts, and back).

What engines read: a ``prune --save`` folder (dense safetensors, zeros stored) loads in transformers and vLLM; a
GGUF runs in llama.cpp, Ollama and LM Studio. The compressed-tensors layouts below are a storage format only:
in 2026 nothing but prunerzero reads them (vLLM 0.19.1 removed its Sparse24 support, compressed-tensors 0.15 its
sparse compressors), so ``--format dense`` is how such a folder becomes loadable again.

prunerzero saves pruned models dense (zeros stored). ``export_compressed`` rewrites the sparse Linear weights in
compressed-tensors' bitmask layouts and records them in ``config.json`` as compressed-tensors (and llm-compressor)
write them (``quantization_config = {quant_method: compressed-tensors, version, sparsity_config, ...}``):

* ``sparse-bitmask`` (any unstructured mask): per weight ``<module>.shape`` [rows, cols] (int64),
  ``<module>.compressed`` (the kept values, row-major, 1-D), ``<module>.bitmask`` ([rows, ceil(cols/8)] uint8,
  little-endian bit order per row) and ``<module>.row_offsets`` (int64, index of each row's first value);
* ``sparse-24-bitmask`` (every group of 4 consecutive input weights has >= 2 zeros): ``<module>.shape``
  ([[rows], [cols]] int64), ``<module>.compressed`` ([rows, cols/2], exactly two values per group) and
  ``<module>.bitmask`` as above.

Recent compressed-tensors releases (0.15+) keep these formats' configuration classes (``BitmaskConfig``,
``Sparse24BitMaskConfig``, used here to write ``sparsity_config``) but no longer ship their compressors, and
vLLM >= 0.19.1 no longer runs Sparse24 checkpoints; so the (de)compression itself is implemented here, bit for
bit the layout those compressors wrote. ``decompress_folder`` turns an export back into a plain dense folder.

A weight is stored exactly: the bitmask marks every entry whose bits are not all zero (a ``-0.0`` is kept as a
value), so decompression gives back the same bits.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .errors import UserError
from .models.loading import read_config as _read_config, sparsity_config_of
from .fsutil import atomic_folder, require_empty

FORMATS = ("gguf", "compressed-tensors", "dense")
BITMASK = "sparse-bitmask"
SPARSE24 = "sparse-24-bitmask"
COMPRESSORS = ("auto", BITMASK, SPARSE24)
_SUFFIXES = {BITMASK: ("shape", "compressed", "bitmask", "row_offsets"), SPARSE24: ("shape", "compressed", "bitmask")}


def _compressed_tensors():
    try:
        import compressed_tensors
        from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig
    except ImportError:
        raise UserError("the compressed-tensors format needs the package: pip install 'prunerzero[deploy]'") from None
    return compressed_tensors, {BITMASK: BitmaskConfig, SPARSE24: Sparse24BitMaskConfig}


# ---------------------------------------------------------------- tensors

def _nonzero_bits(w: torch.Tensor) -> torch.Tensor:
    """True where the stored bits are not all zero (so -0.0 counts as a value to keep)."""
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[w.element_size()]
    return w.contiguous().view(ints) != 0


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """[rows, cols] bool -> [rows, ceil(cols/8)] uint8, bit j of byte k is column 8k+j (numpy little bit order)."""
    return torch.from_numpy(np.packbits(mask.cpu().numpy(), axis=-1, bitorder="little"))


def unpack_bits(packed: torch.Tensor, shape: list[int]) -> torch.Tensor:
    bits = np.unpackbits(packed.cpu().numpy(), axis=-1, count=shape[-1], bitorder="little")
    return torch.from_numpy(bits.reshape(shape).astype(bool))


def is_24(w: torch.Tensor) -> bool:
    """Every group of 4 consecutive weights along the input dimension has at least 2 zeros."""
    if w.dim() != 2 or w.shape[1] % 4:
        return False
    return bool(((w == 0).view(w.shape[0], -1, 4).sum(-1) >= 2).all())


def mask_24(w: torch.Tensor) -> torch.Tensor:
    """Exactly 2 stored positions per group of 4: the nonzero values, then the lowest-index zeros (stable)."""
    rows, cols = w.shape
    groups = (w != 0).to(torch.int8) * 2 + _nonzero_bits(w).to(torch.int8)  # value > -0.0 > +0.0
    order = torch.argsort(groups.view(rows, cols // 4, 4), dim=-1, descending=True, stable=True)[..., :2]
    mask = torch.zeros(rows, cols // 4, 4, dtype=torch.bool)
    mask.scatter_(-1, order, True)
    return mask.view(rows, cols)


def compress_weight(w: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    """The stored tensors of one weight (keys are the suffixes after ``<module>.``)."""
    w = w.detach().cpu().contiguous()
    rows, cols = w.shape
    if fmt == SPARSE24:
        if not is_24(w):
            raise UserError("a weight is not 2:4 sparse: export it with --compressor sparse-bitmask")
        mask = mask_24(w)
        return {"shape": torch.tensor([rows, cols]).reshape(-1, 1), "compressed": w[mask].reshape(rows, cols // 2),
                "bitmask": pack_bits(mask)}
    mask = _nonzero_bits(w)
    counts = mask.sum(dim=1)
    return {"shape": torch.tensor([rows, cols]), "compressed": w[mask], "bitmask": pack_bits(mask),
            "row_offsets": torch.cumsum(counts, 0) - counts}


def decompress_weight(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    shape = [int(s) for s in parts["shape"].flatten().tolist()]
    values = parts["compressed"].flatten()
    out = torch.zeros(shape, dtype=values.dtype)
    out[unpack_bits(parts["bitmask"], shape)] = values
    return out


def compressed_nbytes(w: torch.Tensor, fmt: str) -> int:
    rows, cols = w.shape
    mask_bytes = rows * ((cols + 7) // 8)
    if fmt == SPARSE24:
        return rows * cols // 2 * w.element_size() + mask_bytes + 16
    return int(_nonzero_bits(w).sum()) * w.element_size() + mask_bytes + rows * 8 + 16


# ---------------------------------------------------------------- folders

def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder} has no .safetensors weights: pass a folder written by prunerzero prune --save")
    return files


def folder_nbytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def _linear_names(folder: Path) -> list[str]:
    """Names of the model's nn.Linear modules (built on the meta device from its config, no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer, generation config, ... : every file but the weights, their index and config.json."""
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name not in (
                "config.json", "model.safetensors.index.json"):
            shutil.copy2(f, dst / f.name)


def _rewrite_index(src: Path, dst: Path, weight_map: dict[str, str]) -> None:
    index = src / "model.safetensors.index.json"
    if index.is_file():
        meta = json.loads(index.read_text()).get("metadata", {})
        meta["total_size"] = folder_nbytes(dst)
        (dst / index.name).write_text(json.dumps({"metadata": meta, "weight_map": dict(sorted(weight_map.items()))},
                                                 indent=2) + "\n")


def check_export_args(src: str, out: str, fmt: str, compressor: str, outtype: str | None = None) -> None:
    """Every check that needs no weights (the CLI calls this before reading anything large)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown --format '{fmt}': use {', '.join(FORMATS)}")
    if fmt == "gguf":
        check_gguf_args(src, out, outtype or "f16", compressor)
        return
    if outtype is not None:
        raise UserError("--outtype applies to --format gguf only")
    if compressor not in COMPRESSORS:
        raise UserError(f"unknown --compressor '{compressor}': use {', '.join(COMPRESSORS)}")
    src_path = Path(src)
    if not src_path.is_dir():
        raise UserError(f"{src} is not a folder: pass the folder written by prunerzero prune --save")
    _read_config(src_path)
    _weight_files(src_path)
    if Path(out).resolve() == src_path.resolve():
        raise UserError("--out must be a new folder, not the input folder")
    require_empty(out, "--out folder")
    compressed = sparsity_config_of(src_path) is not None
    if fmt == "compressed-tensors":
        if compressed:
            raise UserError(f"{src} is already in the compressed-tensors format: use --format dense to decompress it")
        _compressed_tensors()
    elif not compressed:
        raise UserError(f"{src} is not a compressed-tensors export: --format dense only decompresses those")
    elif compressor != "auto":
        raise UserError("--compressor applies to --format compressed-tensors only")


def export_compressed(src: str | os.PathLike, out: str | os.PathLike, compressor: str = "auto") -> dict:
    """Write ``src`` (a dense save_pretrained folder) to ``out`` in the compressed-tensors sparse format.

    ``compressor='auto'`` picks ``sparse-24-bitmask`` when every sparse Linear weight is 2:4, else
    ``sparse-bitmask``. A Linear weight is stored compressed when that makes it smaller (``lm_head`` of an
    unpruned model stays dense and is listed under ``ignore``). Returns a summary (format, layers, sizes).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    check_export_args(str(src), str(out), "compressed-tensors", compressor)
    ct, configs = _compressed_tensors()
    src = Path(src)
    config = _read_config(src)
    linears = set(_linear_names(src))
    files = _weight_files(src)

    # first pass: which Linear weights are sparse, and are they all 2:4?
    sparse, all_24, zeros, total = [], True, 0, 0
    for f in files:
        with safe_open(f, framework="pt") as st:
            for key in st.keys():
                w = st.get_tensor(key)
                zeros += int((w == 0).sum())
                total += w.numel()
                module = key[:-len(".weight")] if key.endswith(".weight") else None
                if module in linears and w.dim() == 2 and \
                        compressed_nbytes(w, BITMASK) < w.numel() * w.element_size():
                    sparse.append(module)
                    all_24 = all_24 and is_24(w)
    if not sparse:
        raise UserError(f"{src} has no sparse Linear weights: prune it first (prunerzero prune --save)")
    if compressor == "auto":
        compressor = SPARSE24 if all_24 else BITMASK
    elif compressor == SPARSE24 and not all_24:
        raise UserError("the weights are not 2:4 sparse (some group of 4 has fewer than 2 zeros): "
                        "use --compressor sparse-bitmask")
    targets = set(sparse)

    with atomic_folder(out) as tmp:
        weight_map = {}
        for f in files:
            tensors = {}
            with safe_open(f, framework="pt") as st:
                metadata = st.metadata() or {}
                for key in st.keys():
                    w = st.get_tensor(key)
                    module = key[:-len(".weight")] if key.endswith(".weight") else None
                    if module in targets:
                        for suffix, t in compress_weight(w, compressor).items():
                            tensors[f"{module}.{suffix}"] = t.contiguous()
                    else:
                        tensors[key] = w.contiguous()
            save_file(tensors, str(tmp / f.name), metadata={**metadata, "format": "pt"})
            weight_map.update({k: f.name for k in tensors})
        _rewrite_index(src, tmp, weight_map)
        _copy_side_files(src, tmp)
        sparsity = configs[compressor](global_sparsity=zeros / max(1, total), targets=["Linear"],
                                       ignore=sorted(linears - targets))
        config["quantization_config"] = {"version": ct.__version__, "quant_method": "compressed-tensors",
                                         "sparsity_config": sparsity.model_dump(), "transform_config": {}}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        size = folder_nbytes(tmp)
    return {"format": compressor, "layers": len(targets), "linears": len(linears), "global_sparsity": zeros / total,
            "bytes": size, "dense_bytes": folder_nbytes(src)}


def decompress_folder(src: str | os.PathLike, out: str | os.PathLike) -> dict:
    """A compressed-tensors sparse export back to a dense save_pretrained folder (the same bits as before)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    check_export_args(str(src), str(out), "dense", "auto")
    src = Path(src)
    config = _read_config(src)
    fmt = config["quantization_config"]["sparsity_config"].get("format")
    if fmt not in _SUFFIXES:
        raise UserError(f"{src}: sparsity format '{fmt}' is not one prunerzero reads (use {BITMASK} or {SPARSE24})")
    with atomic_folder(out) as tmp:
        weight_map = {}
        for f in _weight_files(src):
            with safe_open(f, framework="pt") as st:
                metadata = st.metadata() or {}
                keys = list(st.keys())
                modules = sorted({k[:-len(".bitmask")] for k in keys if k.endswith(".bitmask")})
                parts = {f"{m}.{s}" for m in modules for s in _SUFFIXES[fmt]}
                tensors = {k: st.get_tensor(k) for k in keys if k not in parts}
                for m in modules:
                    tensors[f"{m}.weight"] = decompress_weight({s: st.get_tensor(f"{m}.{s}") for s in _SUFFIXES[fmt]})
            save_file(tensors, str(tmp / f.name), metadata=metadata)
            weight_map.update({k: f.name for k in tensors})
        _rewrite_index(src, tmp, weight_map)
        _copy_side_files(src, tmp)
        del config["quantization_config"]
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        size = folder_nbytes(tmp)
    return {"format": "dense", "from": fmt, "bytes": size, "compressed_bytes": folder_nbytes(src)}


# ---------------------------------------------------------------- GGUF

def _probe_file_destination(out: Path) -> None:
    """Refuse, before any model loads, a GGUF destination that exists or cannot be written."""
    if out.suffix != ".gguf":
        raise UserError(f"--out {out} must name a .gguf file (e.g. {out.with_suffix('.gguf').name})")
    if out.exists():
        raise UserError(f"{out} already exists: choose a new file name")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=".probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise UserError(f"cannot write {out} ({exc.strerror or exc}): choose a folder you can write to") from None


def _gguf_source_config(src: str):
    """The config of an export source (a folder, a built-in name, a .gguf file or a hub id), weights unread."""
    from transformers import AutoConfig

    from .models.gguf_read import PRUNED_LLAMA, register
    from .models import BUILTIN_MODELS, gguf_architecture

    path = Path(src).expanduser()
    if src in BUILTIN_MODELS or path.suffix == ".gguf":
        if path.suffix == ".gguf":
            if not path.is_file():
                raise UserError(f"GGUF file {path} not found: check the path")
            gguf_architecture(path)
        return None    # read from its GGUF header when loaded (seconds); the family check then runs on its config
    if path.is_dir():
        config = _read_config(path)
        if sparsity_config_of(path) is not None:
            raise UserError(f"{src} is a compressed-tensors sparse export: decompress it first "
                            f"(prunerzero export {src} --format dense --out DENSE_DIR)")
        if config.get("model_type") == PRUNED_LLAMA:
            register()
        return AutoConfig.from_pretrained(path)
    if src.count("/") == 1 and not path.exists():
        return None    # a hub id: checked once transformers has its config
    raise UserError(f"{src} is neither a folder, a .gguf file, a built-in model name nor a hub id: pass the folder "
                    "written by prunerzero prune --save or structural --save")


def check_gguf_args(src: str, out: str, outtype: str, compressor: str = "auto") -> None:
    from .models.gguf_write import check_family, check_outtype

    check_outtype(outtype)
    if compressor != "auto":
        raise UserError("--compressor applies to --format compressed-tensors only")
    config = _gguf_source_config(src)
    if config is not None:
        check_family(config)
    _probe_file_destination(Path(out))


def load_for_export(src: str, cache: str | os.PathLike | None = None):
    """(model, tokenizer) in fp32 on the CPU: a per-layer-width ``pruned_llama`` folder through prunerzero's own
    class, anything else through ``resolve_model_source`` (built-ins, GGUF files, folders, hub ids)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .models.gguf_read import register
    from .models.gguf_write import check_family
    from .models import resolve_model_source

    register()
    source = resolve_model_source(src, cache)
    try:
        config = AutoConfig.from_pretrained(source)
        check_family(config)
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load '{src}' ({first}): check the name, or download it while online") from None
    return model.eval(), tokenizer


def export_gguf(src: str, out: str | os.PathLike, outtype: str = "f16",
                cache: str | os.PathLike | None = None) -> dict:
    """``src`` (see ``load_for_export``) -> the GGUF file ``out`` (see ``gguf_write.write_gguf``)."""
    from .models.gguf_write import write_gguf

    check_gguf_args(str(src), str(out), outtype)
    model, tokenizer = load_for_export(str(src), cache)
    res = write_gguf(model, tokenizer, out, outtype, name=Path(str(src)).name)
    res["zeros"] = _zero_fraction(model)
    return res


def _zero_fraction(model: nn.Module) -> float:
    """Fraction of exact zeros in the decoder blocks' Linear weights (what unstructured pruning left)."""
    from .models import all_prunable

    try:
        lins = all_prunable(model)
    except UserError:
        return 0.0
    total = sum(lin.weight.numel() for lin in lins.values())
    return sum(int((lin.weight == 0).sum()) for lin in lins.values()) / max(1, total)
