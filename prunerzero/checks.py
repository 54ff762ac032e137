"""Checks of user-given values, shared by the CLI and the search-space loader, so every bad value is refused
with the same one line, before any model is loaded.

Each check returns the (normalised) value or raises ``UserError`` naming ``what`` (an option or a YAML key).
"""
from __future__ import annotations

import importlib.util
import math

from .errors import UserError

DTYPES = ("auto", "fp32", "fp16", "bf16", "float32", "float16", "bfloat16")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
# stream: windows cut from one token stream, BOS (where the tokenizer adds one) only at its start: Wanda's and
# SparseGPT's protocol. window: every calibration and evaluation window is BOS + seqlen - 1 stream tokens, for
# families that break down without BOS at the start of a sequence (Gemma; ``models.FAMILIES``).
BOS_MODES = ("stream", "window")
BOS_DEFAULT = "stream"   # the published protocol's
# how G1/G2 are kept (file and memory) once accumulated in fp32: fp32, or fp16 with a power-of-two scale per tensor
# (half the disk and memory; values to 2^-11 relative, so only near-ties rank differently:
# results/grad-storage-cpu.md measures it)
GRAD_STORAGES = ("fp32", "fp16")


def integer(value, what: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{what} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise UserError(f"{what} must be >= {minimum}, got {value}")
    return value


def optional_integer(value, what: str, minimum: int | None = None) -> int | None:
    return None if value is None else integer(value, what, minimum)


def real(value, what: str, low: float | None = None, high: float | None = None, open_low: bool = False,
         open_high: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{what} must be a number, got {value!r}")
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad |= value <= low if open_low else value < low
    if high is not None:
        bad |= value >= high if open_high else value > high
    if bad:
        lo = "" if low is None else f"{'(' if open_low else '['}{low:g}"
        hi = "" if high is None else f"{high:g}{')' if open_high else ']'}"
        where = f"in {lo}, {hi}" if low is not None and high is not None else (f">= {low:g}" if low is not None
                                                                                else f"<= {high:g}")
        if low is not None and high is None and open_low:
            where = f"> {low:g}"
        raise UserError(f"{what} must be a finite number {where}, got {value:g}")
    return value


def fraction(value, what: str) -> float:
    """A sparsity: strictly between 0 and 1."""
    return real(value, what, 0.0, 1.0, open_low=True, open_high=True)


def dtype(value, what: str = "--dtype") -> str:
    if value is None:
        return "auto"
    if value not in DTYPES:
        raise UserError(f"{what} '{value}' is not a dtype: use one of {', '.join(DTYPES[:4])}")
    return value


def bos(value, what: str = "--bos") -> str:
    if value not in BOS_MODES:
        raise UserError(f"{what} '{value}': use stream (Wanda's windows) or window (BOS opens every window)")
    return value


def grad_storage(value, what: str = "--grad-storage") -> str:
    if value not in GRAD_STORAGES:
        raise UserError(f"{what} '{value}' is unknown: use {' or '.join(GRAD_STORAGES)}")
    return value


def device(value, what: str = "--device") -> str | None:
    """A torch device string that this torch can use (``None`` = cuda if available, else cpu)."""
    if value is None:
        return None
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        raise UserError(f"{what} '{value}' is not a device: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{what} {value}: this torch build sees no CUDA GPU (torch {torch.__version__}): "
                            "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"{what} {value}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"{what} {value}: MPS is not available here: use --device cpu")
    elif dev.type != "cpu":
        raise UserError(f"{what} '{value}': prunerzero runs on cpu, cuda or mps")
    return value


def device_map(value, what: str = "--device-map") -> str | None:
    if value is None:
        return None
    if value not in DEVICE_MAPS:
        raise UserError(f"{what} '{value}' is not a device map: use {', '.join(DEVICE_MAPS)}")
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"{what} spreads a model over GPUs, and this torch sees none: drop --device-map")
    return value


def name_list(text, what: str, allowed=None) -> list[str]:
    """A comma-separated list with at least one name (each one of ``allowed`` where given)."""
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        hint = f": use e.g. {','.join(allowed)}" if allowed else ""
        raise UserError(f"{what} names nothing{hint}")
    if allowed is not None:
        for n in names:
            if n not in allowed:
                raise UserError(f"{what}: unknown name '{n}': use {', '.join(allowed)}")
    if len(set(names)) != len(names):
        raise UserError(f"{what} names '{next(n for n in names if names.count(n) > 1)}' twice")
    return names


def int_list(text, what: str, minimum: int = 1) -> list[int]:
    out = []
    for part in name_list(text, what):
        try:
            value = int(part)
        except ValueError:
            raise UserError(f"{what}: '{part}' is not an integer") from None
        out.append(integer(value, what, minimum))
    return out


def module_available(module: str, what: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{what} needs the '{module}' package: {install}")


def yaml_mapping(path, what: str) -> dict:
    """A YAML file that holds a mapping (safe_load: no tags that build objects), or a one-line error."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a mapping of {what}")
    return raw


def folder(value, what: str) -> None:
    """An output or cache folder: absent (it will be made) or a folder, never a file."""
    from pathlib import Path

    if value is not None and Path(value).expanduser().exists() and not Path(value).expanduser().is_dir():
        raise UserError(f"{what} {value} is a file, not a folder: name a folder")
