"""Per-layer statistics (``Stats``), their safetensors files and the cache keyed by what produced them."""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..fsutil import atomic_path
from ..metric.ops import TERMINAL_ALIASES


SCALE = "_scale:"   # reserved term ``_scale:T``: T is stored as fp16 times this power of two (``half_scaled``)


def half_scaled(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` (non-negative fp32) as fp16 and a power-of-two scale: ``half.float() * scale`` is every value to fp16's
    11 significant bits (relative error <= 2^-11), its largest at 2^15 whatever the magnitude (no overflow), and the
    dequantisation is exact in fp32 (a power of two), so the same file always gives the same values. Values below
    2^-39 of the largest become 0."""
    top = float(t.abs().max()) if t.numel() else 0.0
    exp = math.frexp(top)[1] - 16 if top > 0 else 0   # top / 2^exp in [2^15, 2^16): fp16's top binade is [2^15, 65504]
    scale = torch.tensor(2.0 ** exp, dtype=torch.float32)
    half = (t.float() / scale).clamp_max(65504.0).to(torch.float16)
    return half, scale


class Stats:
    """Per-layer statistics: ``stats[key][term]`` with key ``layers.{i}.{module}`` and term X, G1 or G2; a term may be
    stored as fp16 with a power-of-two scale (``half_scaled``, reserved term ``_scale:T``): ``value`` and ``env``
    give its fp32 values."""

    def __init__(self, tensors: dict[str, dict[str, torch.Tensor]] | None = None, meta: dict | None = None):
        self.tensors = tensors or {}
        self.meta = meta or {}

    def terms(self) -> set[str]:
        """The terminals the statistics hold (reserved ``_`` terms, such as the OBS factor, are not terminals)."""
        return {t for d in self.tensors.values() for t in d if not t.startswith("_")}

    def factor(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(U, dead) of one layer for an OBS update after a fixed mask (``activation_stats(factor=True)``), or
        None when the statistics were computed without it."""
        d = self.tensors.get(key, {})
        if "_U" not in d:
            return None
        return d["_U"], d["_dead"].to(torch.bool)

    def hessian(self, key: str) -> torch.Tensor | None:
        """One layer's Hessian 2/n X X^T (``activation_stats(keep_hessian=True)``), or None without it."""
        return self.tensors.get(key, {}).get("_H")

    def value(self, key: str, term: str, device=None) -> torch.Tensor:
        """One layer's statistic ``term`` in fp32 (on ``device``; default: where it is held), its scale applied."""
        d = self.tensors[key]
        t = d[term].to(device or d[term].device, torch.float32)
        if SCALE + term in d:
            t = t * d[SCALE + term].to(t.device)
        return t

    def env(self, key: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """The terminal values a formula sees for one layer, in fp32 on the weight's device."""
        w = weight.detach().float()
        env = {"W": w}
        for term in self.tensors.get(key, {}):
            if term.startswith("_"):
                continue
            t = self.value(key, term, w.device)
            if term == "X":
                env["X"] = t.view(1, -1)
            else:
                env[term] = t
        for alias, name in TERMINAL_ALIASES.items():  # G is G2
            if alias in env:
                env[name] = env[alias]
        return env

    def merged(self, other: "Stats") -> "Stats":
        out = {k: dict(v) for k, v in self.tensors.items()}
        for k, v in other.tensors.items():
            out.setdefault(k, {}).update(v)
        return Stats(out, {**self.meta, **other.meta})

    def only(self, terminals) -> "Stats":
        """The statistics the formulas over ``terminals`` read (G is stored as G2): a space over G leaves G1 out, so a
        7B model's gradient statistics take half the accelerator memory during a search (the cache file keeps
        both, computed in one pass). Reserved ``_`` terms (OBS factor, Hessians) are kept."""
        from ..metric.ops import canonical_terminal

        stored = {"G2" if canonical_terminal(t) == "G" else t for t in terminals}
        return Stats({k: {t: x for t, x in v.items() if t.startswith("_") or t in stored}
                      for k, v in self.tensors.items()}, self.meta)

    def to(self, device) -> "Stats":
        return Stats({k: {t: x.to(device) for t, x in v.items()} for k, v in self.tensors.items()}, self.meta)

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        flat = {f"{k}/{t}": x.contiguous().cpu() for k, v in self.tensors.items() for t, x in v.items()}
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(flat, str(tmp), metadata={"prunerzero": json.dumps(self.meta, sort_keys=True)})

    @staticmethod
    def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> "Stats":
        from safetensors import safe_open

        tensors: dict[str, dict[str, torch.Tensor]] = {}
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = json.loads((f.metadata() or {}).get("prunerzero", "{}"))
            for name in f.keys():
                key, term = name.rsplit("/", 1)
                tensors.setdefault(key, {})[term] = f.get_tensor(name)
        return Stats(tensors, meta)


def stats_key(model_id: str, data_id: str, nsamples: int, seqlen: int, seed: int, kind: str,
              windows_sha1: str = "", grad_dtype: str = "") -> str:
    """Cache key of a statistics file: the model, the data source, the calibration settings, the kind, the
    sha1 of the calibration token windows actually used (their content, not only file names and sizes) and,
    for gradients, the dtype they were computed in."""
    text = json.dumps([model_id, data_id, nsamples, seqlen, seed, kind, windows_sha1, grad_dtype])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def cached_stats(cache: Path, key: str, compute) -> Stats:
    """Load ``cache/stats/<key>.safetensors`` or compute, save and return it."""
    path = Path(cache) / "stats" / f"{key}.safetensors"
    if path.is_file():
        try:
            return Stats.load(path)
        except Exception as exc:  # noqa: BLE001 - a corrupt cache file is recomputed, never trusted
            tqdm.write(f"ignoring unreadable statistics cache {path} ({type(exc).__name__}); recomputing")
    stats = compute()
    stats.save(path)
    return stats


def check_stats(stats: Stats, keys) -> None:
    missing = [k for k in keys if k not in stats.tensors]
    if missing:
        raise UserError(f"statistics lack {len(missing)} layers (e.g. {missing[0]}): delete the cache and rerun")
