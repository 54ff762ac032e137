"""Gradient statistics G1/G2 (Pruner-Zero / GBLM-Pruner), streamed weight by weight, in the precision decided once."""
from __future__ import annotations

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..errors import UserError
from ..models import all_prunable
from .cache import Stats

GRAD_SCALE = 100.0


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
    from ..models.moe import expert_slice

    linears = all_prunable(model)
    params = {k: lin.weight for k, lin in linears.items()}
    dev_of = {k: torch.device(stats_device) if stats_device else p.device for k, p in params.items()}
    g1 = {k: torch.zeros(p.shape, dtype=torch.float32, device=dev_of[k]) for k, p in params.items()}
    g2 = {k: torch.zeros(p.shape, dtype=torch.float32, device=dev_of[k]) for k, p in params.items()}
    # an expert's view is never used by the forward: its gradient is its slice of the fused parameter's gradient
    fused: dict[int, tuple[torch.nn.Parameter, list]] = {}
    for k, lin in linears.items():
        sl = expert_slice(lin)
        if sl is not None:
            fused.setdefault(id(sl.fused), (sl.fused, []))[1].append((k, sl))
            del params[k]
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

    def make_fused_hook(slices):
        def hook(p):
            g = p.grad.detach().float() * scale
            for key, sl in slices:
                ge = sl.of(g)
                g1[key] += ge.abs().to(dev_of[key])
                g2[key] += ge.square().to(dev_of[key])
            p.grad = None
        return hook

    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for k, p in params.items():
            p.requires_grad_(True)
            handles.append(p.register_post_accumulate_grad_hook(make_hook(k)))
        for p, slices in fused.values():
            p.requires_grad_(True)
            handles.append(p.register_post_accumulate_grad_hook(make_fused_hook(slices)))
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
    out = {k: {"G1": g1[k].cpu(), "G2": g2[k].sqrt_().cpu()} for k in linears}
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
