"""Calibration statistics per prunable layer: activation norms X and gradient norms G, cached as safetensors.

X (Wanda's ``scaler_row``): for each input feature j of a Linear, sum over all calibration tokens of x_j^2,
divided by the number of calibration *sequences*. That is what Wanda's ``WrappedGPT.add_batch`` computes (its
``nsamples`` counts sequences, not tokens), and what Pruner-Zero and GBLM reuse; it is the per-token mean times
``seqlen``. We keep the reference code's normalisation so that formulas mixing X with other terms mean the same
thing as in those papers.

G (Pruner-Zero / GBLM-Pruner ``gradient_computation.py``): one forward/backward per calibration sequence with the
language-model loss on the whole sequence; with g = 100 * dL/dW (scale 100), G1 = sum over sequences of |g| and
G = G2 = sqrt(sum over sequences of g^2). Pruner-Zero's script draws these sequences from WikiText-2 train; that
split is not available offline and would leak the evaluation domain, so we use the same C4 calibration windows
as X (as GBLM-Pruner does). Gradients are streamed: each weight's gradient is folded into the accumulators by a
post-accumulate hook and freed at once, so at most one weight's gradient exists at a time besides the
accumulators, which can live on another device (``stats_device``, e.g. CPU for 7B+ models).

Two modes: *one-shot* (``collect_stats``: every statistic from the dense model; what the search uses) and
*sequential* (``prune.run.prune_model(..., sequential=True)``: Wanda's layer-by-layer scheme, the block inputs
come from the already pruned previous blocks).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .errors import UserError
from .fsutil import current_umask
from .models import all_prunable, block_device, decoder_layers, prunable_linears

GRAD_SCALE = 100.0


def _to(obj, device, memo: dict | None = None):
    """``obj`` with every tensor on ``device``; ``memo`` (id -> moved tensor) moves a tensor shared by many blocks
    once (the caller keeps the originals alive, so their ids stay valid)."""
    if torch.is_tensor(obj):
        if memo is None:
            return obj.to(device)
        if id(obj) not in memo:
            memo[id(obj)] = obj.to(device)
        return memo[id(obj)]
    if isinstance(obj, tuple):
        return tuple(_to(o, device, memo) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device, memo) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device, memo) for k, v in obj.items()}
    return obj


class _StopForward(Exception):
    pass


_NOT_INPUTS = ("hidden_states", "past_key_values", "past_key_value", "use_cache")


class BlockRunner:
    """Feeds calibration windows through the decoder one block at a time (Wanda's ``prepare_calibration_input``).

    Every block gets exactly the inputs the model's own forward gives it. Models that alternate attention types
    (Gemma 2/3: sliding and global layers) pass each block its own attention mask and rotary embeddings, so the
    extra arguments are captured per block: once per batch size, one forward runs with every block replaced by
    the identity that records its arguments (block 0 runs for real once, to learn whether blocks return tuples),
    stopping after the last block. Arguments shared by many blocks are stored once (references, not copies) and
    moved to each device once. The hidden states entering block 0 are captured for every batch; then
    ``run(block)`` computes that block's outputs for every batch on the block's own device (``device_map='auto'``
    spreads blocks over GPUs). Arguments are assumed equal across batches of one size (no padding in calibration
    windows: masks and positions depend on the shape only).
    """

    def __init__(self, model: nn.Module, windows: torch.Tensor, batch_size: int = 1):
        self.model = model
        self.layers = decoder_layers(model)
        self.index = {id(b): i for i, b in enumerate(self.layers)}
        self.hidden: list[torch.Tensor] = []
        self.inputs: dict[int, list[tuple[tuple, dict]]] = {}  # batch size -> per block (extra args, kwargs)
        self._moved: dict[str, dict] = {}
        dev = model.get_input_embeddings().weight.device
        with torch.no_grad():
            for i in range(0, windows.shape[0], batch_size):
                batch = windows[i:i + batch_size].to(dev)
                if batch.shape[0] not in self.inputs:
                    first, self.inputs[batch.shape[0]] = self._capture_all(batch)
                else:
                    first = self._capture_first(batch)
                self.hidden.append(first)

    @staticmethod
    def _split(args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        return hidden, tuple(args[1:]), {k: v for k, v in kwargs.items() if k not in _NOT_INPUTS}

    def _capture_all(self, batch: torch.Tensor) -> tuple[torch.Tensor, list[tuple[tuple, dict]]]:
        layers, seen = self.layers, []
        tuple_out: list[bool] = []

        def make(i, real):
            def forward(*args, **kwargs):
                hidden, rest, kw = self._split(args, kwargs)
                seen.append((hidden.detach(), rest, kw))
                if i == len(layers) - 1:
                    raise _StopForward
                if not tuple_out:
                    tuple_out.append(isinstance(real(*args, **kwargs), tuple))
                return (hidden,) if tuple_out[0] else hidden
            return forward

        saved = [b.__dict__.get("forward") for b in layers]  # accelerate keeps its hooked forward there
        try:
            for i, b in enumerate(layers):
                b.forward = make(i, b.forward)
            try:
                self.model(batch, use_cache=False)
            except _StopForward:
                pass
        finally:
            for b, old in zip(layers, saved):
                if old is None:
                    del b.forward
                else:
                    b.forward = old
        if len(seen) != len(layers):
            raise UserError(f"the model called {len(seen)} of its {len(layers)} decoder blocks: this architecture "
                            "is not supported")
        return seen[0][0], [(rest, kw) for _, rest, kw in seen]

    def _capture_first(self, batch: torch.Tensor) -> torch.Tensor:
        got = []

        def catch(_module, args, kwargs):
            got.append(self._split(args, kwargs)[0].detach())
            raise _StopForward

        handle = self.layers[0].register_forward_pre_hook(catch, with_kwargs=True)
        try:
            self.model(batch, use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return got[0]

    @torch.no_grad()
    def run(self, block: nn.Module) -> list[torch.Tensor]:
        i = self.index[id(block)]
        dev = block_device(block)
        memo = self._moved.setdefault(str(dev), {})
        outs = []
        for h in self.hidden:
            rest, kw = self.inputs[h.shape[0]][i]
            out = block(h.to(dev), *_to(rest, dev, memo), **_to(kw, dev, memo))
            outs.append((out[0] if isinstance(out, tuple) else out).detach())
        return outs

    def advance(self, outs: list[torch.Tensor]) -> None:
        self.hidden = outs


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


class Stats:
    """Per-layer statistics: ``stats[key][term]`` with key ``layers.{i}.{module}`` and term X, G1 or G2."""

    def __init__(self, tensors: dict[str, dict[str, torch.Tensor]] | None = None, meta: dict | None = None):
        self.tensors = tensors or {}
        self.meta = meta or {}

    def terms(self) -> set[str]:
        return {t for d in self.tensors.values() for t in d}

    def env(self, key: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """The terminal values a formula sees for one layer, in fp32 on the weight's device."""
        w = weight.detach().float()
        env = {"W": w}
        for term, t in self.tensors.get(key, {}).items():
            t = t.to(w.device, torch.float32)
            if term == "X":
                env["X"] = t.view(1, -1)
            else:
                env[term] = t
        if "G2" in env:
            env["G"] = env["G2"]
        return env

    def merged(self, other: "Stats") -> "Stats":
        out = {k: dict(v) for k, v in self.tensors.items()}
        for k, v in other.tensors.items():
            out.setdefault(k, {}).update(v)
        return Stats(out, {**self.meta, **other.meta})

    def to(self, device) -> "Stats":
        return Stats({k: {t: x.to(device) for t, x in v.items()} for k, v in self.tensors.items()}, self.meta)

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        flat = {f"{k}/{t}": x.contiguous().cpu() for k, v in self.tensors.items() for t, x in v.items()}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
        os.close(fd)
        try:
            save_file(flat, tmp, metadata={"prunerzero": json.dumps(self.meta, sort_keys=True)})
            os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; use the user's umask like open() does
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

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


def activation_stats(model: nn.Module, windows: torch.Tensor, batch_size: int = 1, progress: bool = True,
                     hessian: bool = False, percdamp: float = 0.01) -> Stats:
    """One-shot X for every prunable layer from the dense model, block by block (bounded memory).

    ``hessian=True`` also gives the Hessian-aware terminal Hd = 1 / diag(H_damped^-1), stored as [1, in]
    (``prune.sparsegpt.obs_diag``); the Hessian itself is freed as soon as each layer is done.
    """
    from .prune.sparsegpt import obs_diag

    runner = BlockRunner(model, windows, batch_size)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for i, block in enumerate(tqdm(decoder_layers(model), desc="activation stats", disable=not progress)):
        hooks = {n: InputStats(lin, hessian=hessian) for n, lin in prunable_linears(block).items()}
        outs = runner.run(block)
        for n, h in hooks.items():
            h.remove()
            out[f"layers.{i}.{n}"] = {"X": h.X.cpu()}
            if hessian:
                out[f"layers.{i}.{n}"]["Hd"] = obs_diag(h.H, percdamp).cpu()
                h.H = None
        runner.advance(outs)
    meta = {"nsamples": int(windows.shape[0]), "seqlen": int(windows.shape[1])}
    return Stats(out, {**meta, "percdamp": percdamp} if hessian else meta)


def gradient_stats(model: nn.Module, windows: torch.Tensor, scale: float = GRAD_SCALE,
                   stats_device: str | torch.device | None = None, progress: bool = True,
                   upcast: bool | None = None) -> Stats:
    """G1 and G2 for every prunable layer (one forward/backward per calibration sequence, streamed).

    fp16 gradients of a single weight are often below fp16's normal range (they underflow to subnormals or 0), so
    a half-precision model on one device is cast to fp32 for the backward passes and cast back afterwards (exact:
    every fp16/bf16 value is an fp32 value), when the fp32 copy fits the GPU's free memory. ``upcast=False`` keeps
    the model's dtype (models spread with ``device_map`` are never cast: they are the ones that do not fit twice).
    """
    half = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
    if upcast is None:
        upcast = gradient_upcast(model, stats_device)
    if half and upcast:
        tensors = [(mod, kind, name, t.dtype) for mod in model.modules()
                   for kind in ("_parameters", "_buffers") for name, t in getattr(mod, kind).items() if t is not None]
        model.float()
        try:
            return gradient_stats(model, windows, scale, stats_device, progress, upcast=False)
        finally:  # back to each tensor's own dtype (rotary inv_freq buffers stay fp32 in an fp16 model)
            for mod, kind, name, dtype in tensors:
                t = getattr(mod, kind)[name]
                if t.dtype != dtype:
                    t.data = t.data.to(dtype)
    linears = all_prunable(model)
    params = {k: lin.weight for k, lin in linears.items()}
    dev_of = {k: torch.device(stats_device) if stats_device else p.device for k, p in params.items()}
    g1 = {k: torch.zeros(p.shape, dtype=torch.float32, device=dev_of[k]) for k, p in params.items()}
    g2 = {k: torch.zeros(p.shape, dtype=torch.float32, device=dev_of[k]) for k, p in params.items()}
    saved_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    handles = []

    def make_hook(key):
        def hook(p):
            g = p.grad.detach().float() * scale
            g1[key] += g.abs().to(dev_of[key])
            g2[key] += g.square().to(dev_of[key])
            p.grad = None
        return hook

    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for k, p in params.items():
            p.requires_grad_(True)
            handles.append(p.register_post_accumulate_grad_hook(make_hook(k)))
        model.train()  # as the reference script; LLaMA-style models have no dropout, so this changes nothing else
        dev = model.get_input_embeddings().weight.device
        for i in tqdm(range(windows.shape[0]), desc="gradient stats", disable=not progress):
            ids = windows[i:i + 1].to(dev)
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            if not torch.isfinite(loss):
                raise UserError(f"calibration loss is {loss.item()} on sequence {i}: use fp32 or bf16 "
                                "for gradient statistics")
            loss.backward()
    finally:
        for h in handles:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(saved_flags[n])
            p.grad = None
        model.train(was_training)
    out = {k: {"G1": g1[k].cpu(), "G2": g2[k].sqrt_().cpu()} for k in params}
    return Stats(out, {"nsamples": int(windows.shape[0]), "seqlen": int(windows.shape[1]), "grad_scale": scale})


def gradient_upcast(model: nn.Module, stats_device=None) -> bool:
    """Whether ``gradient_stats(upcast=None)`` would compute this model's gradients in fp32 instead of its own
    half precision (decide once and pass ``upcast=`` to make the cache key and the computation agree)."""
    half = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
    return bool(half and not getattr(model, "hf_device_map", None) and _fp32_fits(model, stats_device))


def gradient_dtype(model: nn.Module, upcast: bool) -> torch.dtype:
    """The dtype ``gradient_stats(model, ..., upcast=upcast)`` computes the gradients in."""
    dtype = next(model.parameters()).dtype
    return torch.float32 if upcast and dtype in (torch.float16, torch.bfloat16) else dtype


def _fp32_fits(model: nn.Module, stats_device) -> bool:
    """Whether casting a half-precision model on one GPU to fp32 (plus the G1/G2 accumulators) fits its memory."""
    dev = next(model.parameters()).device
    if dev.type != "cuda":
        return True
    params = sum(p.numel() for p in model.parameters())
    prunable = sum(lin.weight.numel() for lin in all_prunable(model).values())
    need = 2 * params + (0 if stats_device else 8 * prunable)  # fp16 -> fp32 adds 2 bytes; two fp32 accumulators
    free, _ = torch.cuda.mem_get_info(dev)
    if need * 1.2 < free:
        return True
    tqdm.write(f"gradient statistics in {next(model.parameters()).dtype} (an fp32 copy needs {need / 2**30:.1f} GiB, "
               f"{free / 2**30:.1f} GiB free)")
    return False


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


def needs_of(terms: set[str]) -> tuple[bool, bool]:
    """(needs X, needs gradients) for a set of terminal names."""
    return "X" in terms, bool(terms & {"G", "G1", "G2"})


def check_stats(stats: Stats, keys) -> None:
    missing = [k for k in keys if k not in stats.tensors]
    if missing:
        raise UserError(f"statistics lack {len(missing)} layers (e.g. {missing[0]}): delete the cache and rerun")


__all__ = ["BlockRunner", "InputStats", "Stats", "activation_stats", "gradient_stats", "stats_key",
           "cached_stats", "needs_of", "GRAD_SCALE", "gradient_upcast", "gradient_dtype"]
