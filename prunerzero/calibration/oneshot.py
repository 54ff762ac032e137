"""One-shot statistics of a dense model, cached: the calibration windows, their content hash, the cache key, and
X / Hd / OBS factor / Hessian / G computed once per (model, data, windows, kind) and stored as safetensors.

What a search fitness (``search.workers``) and a one-shot prune both need; the pruning job itself is ``pipeline``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from .. import data
from ..models import LoadedModel, cache_dir, model_fingerprint
from ..protocol import Protocol
from .activations import activation_stats
from .cache import Stats, cached_stats, stats_key
from .experts import MIN_TOKENS
from .gradients import gradient_dtype, gradient_stats, gradient_upcast


@dataclass
class CalibConfig:
    nsamples: int = Protocol.nsamples    # defaults: the one Protocol
    seed: int = Protocol.seed
    batch_size: int = Protocol.batch_size
    data_dir: str | None = None
    cache: str | None = None
    routing: str = "routed"            # MoE experts: calibrated on their routed tokens, or on every token ("all")
    min_tokens: int = MIN_TOKENS       # MoE experts with fewer routed tokens take the all-token fallback
    grad_storage: str = "fp32"         # gradient statistics kept as fp32, or fp16 scaled (GRAD_STORAGES)


def calibration_windows(lm: LoadedModel, cfg: CalibConfig, seqlen: int | None = None) -> torch.Tensor:
    return data.calibration_windows(lm.tokenizer, cfg.nsamples, seqlen or lm.seqlen, cfg.seed, cfg.data_dir,
                                    bos=lm.window_bos)


def windows_sha1(windows: torch.Tensor) -> str:
    """Content hash of calibration token windows (dtype, shape and every token id)."""
    t = windows.detach().cpu().contiguous()
    h = hashlib.sha1(f"{t.dtype}:{tuple(t.shape)}:".encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def _key(lm: LoadedModel, cfg: CalibConfig, kind: str, seqlen: int, windows_digest: str,
         grad_dtype: torch.dtype | None = None) -> str:
    if not kind.startswith("G") and (cfg.routing, cfg.min_tokens) != ("routed", MIN_TOKENS):  # MoE routed calibration
        kind = f"{kind}:{cfg.routing}:{cfg.min_tokens}"  # (dense models' keys are unchanged by the defaults)
    return stats_key(model_fingerprint(lm.model), data.data_fingerprint(cfg.data_dir), cfg.nsamples, seqlen,
                     cfg.seed, f"{kind}:{lm.model.dtype}", windows_digest, str(grad_dtype or ""))


def one_shot_stats(lm: LoadedModel, cfg: CalibConfig, need_x: bool = True, need_g: bool = True,
                   windows: torch.Tensor | None = None, progress: bool = True, seqlen: int | None = None,
                   need_h: bool = False, need_factor: bool = False, need_hessian: bool = False) -> Stats:
    """X and/or G (and with ``need_h`` the Hessian terminal Hd, beside X; with ``need_factor`` also each layer's
    OBS factor, for a fitness that reconstructs after the mask; with ``need_hessian`` each layer's Hessian, for a
    fitness that solves the kept weights or prunes by ADMM) of the dense model, each cached as
    safetensors under the cache dir (calibration windows of ``seqlen`` tokens, default ``lm.seqlen``, unless
    ``windows`` are given).

    The cache key holds the sha1 of the calibration windows (tokenised once per process and remembered by
    ``data.calibration_windows``) and, for G, the dtype the gradients are computed in (fp32 for an upcast half
    model)."""
    stats = Stats()
    if windows is None:
        windows = calibration_windows(lm, cfg, seqlen)
    seqlen = int(windows.shape[1])  # the key names the windows really used
    digest = windows_sha1(windows)

    def provenance(s: Stats, **extra) -> Stats:
        return Stats(s.tensors, {**s.meta, "windows_sha1": digest, **extra})

    if need_h or need_factor or need_hessian:  # X and Hd (and the OBS factor, the Hessian) in one file (one
        # pass); percdamp 0.01 as SparseGPT
        kind = "X+Hd" + ("+U" if need_factor else "") + ("+H" if need_hessian else "") + ":0.01"
        stats = stats.merged(cached_stats(cache_dir(cfg.cache), _key(lm, cfg, kind, seqlen, digest),
                                          lambda: provenance(activation_stats(lm.model, windows, cfg.batch_size,
                                                                              progress, hessian=True,
                                                                              factor=need_factor,
                                                                              keep_hessian=need_hessian,
                                                                              routing=cfg.routing,
                                                                              min_tokens=cfg.min_tokens))))
        need_x = False
    if need_x:
        stats = stats.merged(cached_stats(cache_dir(cfg.cache), _key(lm, cfg, "X", seqlen, digest),
                                          lambda: provenance(activation_stats(lm.model, windows, cfg.batch_size,
                                                                              progress, routing=cfg.routing,
                                                                              min_tokens=cfg.min_tokens))))
    if need_g:
        upcast = gradient_upcast(lm.model)  # decided once, so that the key names the precision really used
        gdt = gradient_dtype(lm.model, upcast)
        kind = "G" if cfg.grad_storage == "fp32" else f"G:{cfg.grad_storage}"  # (fp32 files keep their keys)
        stats = stats.merged(cached_stats(cache_dir(cfg.cache), _key(lm, cfg, kind, seqlen, digest, gdt),
                                          lambda: provenance(gradient_stats(lm.model, windows, progress=progress,
                                                                            upcast=upcast, storage=cfg.grad_storage),
                                                             grad_dtype=str(gdt))))
    return stats
