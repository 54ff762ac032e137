"""Activation statistics: X (Wanda's ``scaler_row``) and the layer Hessian (SparseGPT) from forward hooks, and the
one-shot X (and Hessian terminal Hd) of every prunable layer of a dense model."""
from __future__ import annotations

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..models import decoder_layers, prunable_linears
from .blocks import BlockRunner
from .hessian import hinv_factor, obs_diag
from .experts import MIN_TOKENS, BlockInputs
from .cache import Stats


class InputStats:
    """Forward hook on a Linear: X (Wanda's scaler_row) and optionally the Hessian 2/n X X^T (SparseGPT)."""

    def __init__(self, linear: nn.Linear, hessian: bool = False):
        cols = linear.in_features
        dev = linear.weight.device
        self.sumsq = torch.zeros(cols, dtype=torch.float64, device=dev)
        self.H = torch.zeros(cols, cols, dtype=torch.float32, device=dev) if hessian else None
        self.nsamples = 0
        self.handle = linear.register_forward_hook(self._hook)

    def _hook(self, _module, inputs, _output):
        x = inputs[0].detach()
        if x.dim() == 2:
            x = x.unsqueeze(0)
        n = x.shape[0]
        x = x.reshape(-1, x.shape[-1]).float()
        self.sumsq += (x.double() ** 2).sum(dim=0)
        if self.H is not None:
            self.H *= self.nsamples / (self.nsamples + n)
            self.H += (2.0 / (self.nsamples + n)) * (x.t() @ x)
        self.nsamples += n

    @property
    def X(self) -> torch.Tensor:
        return (self.sumsq / max(1, self.nsamples)).float()

    def remove(self) -> None:
        self.handle.remove()


def activation_stats(model: nn.Module, windows: torch.Tensor, batch_size: int = 1, progress: bool = True,
                     hessian: bool = False, percdamp: float = 0.01, factor: bool = False,
                     keep_hessian: bool = False, routing: str = "routed", min_tokens: int = MIN_TOKENS) -> Stats:
    """One-shot X for every prunable layer from the dense model, block by block (bounded memory).

    ``hessian=True`` also gives the Hessian-aware terminal Hd = 1 / diag(H_damped^-1), stored as [1, in]
    (``hessian.obs_diag``); the Hessian itself is freed as soon as each layer is done.
    ``factor=True`` (implies ``hessian``) also keeps what an OBS update after any mask needs, the upper Cholesky
    factor U of the damped H^-1 and the dead-input flags (``hessian.hinv_factor``), as the reserved terms
    ``_U`` [in, in] and ``_dead`` [in] (``Stats.factor``; formulas never see them): a search that reconstructs
    after every candidate's mask factorises each layer once, not once per candidate.
    ``keep_hessian=True`` (implies ``hessian``) keeps each layer's Hessian itself as the reserved term ``_H``
    [in, in] (``Stats.hessian``), for a fitness whose setting solves the kept weights exactly (``lsq``) or prunes
    by ADMM (``admm``), both from the layer Hessian (``prune.admm``).
    Experts of a mixture of experts get their statistics from their routed tokens (``routing``, ``min_tokens``:
    ``calibration.experts``); the meta records, per experts module, which experts took the all-token fallback.
    """
    hessian = hessian or factor or keep_hessian

    runner = BlockRunner(model, windows, batch_size)
    out: dict[str, dict[str, torch.Tensor]] = {}
    routed: dict = {}
    for i, block in enumerate(tqdm(decoder_layers(model), desc="activation stats", disable=not progress)):
        inputs = BlockInputs(prunable_linears(block), hessian=hessian, routing=routing, min_tokens=min_tokens)
        outs = runner.run(block)
        for name, r in inputs.finish(int(windows.shape[0])).items():
            routed[f"layers.{i}.{name}"] = r
        for n, h in inputs.stats.items():
            out[f"layers.{i}.{n}"] = {"X": h.X.cpu()}
            if hessian:
                out[f"layers.{i}.{n}"]["Hd"] = obs_diag(h.H, percdamp).cpu()
                if factor:
                    U, dead = hinv_factor(h.H, percdamp)
                    out[f"layers.{i}.{n}"].update(_U=U.cpu(), _dead=dead.to(torch.uint8).cpu())
                if keep_hessian:
                    out[f"layers.{i}.{n}"]["_H"] = h.H.cpu()
                h.H = None
        runner.advance(outs)
    meta = {"nsamples": int(windows.shape[0]), "seqlen": int(windows.shape[1])}
    if routed:
        meta.update(routing=routing, min_tokens=min_tokens,
                    expert_fallback={k: r.fallback for k, r in routed.items() if r.fallback})
    return Stats(out, {**meta, "percdamp": percdamp} if hessian else meta)
