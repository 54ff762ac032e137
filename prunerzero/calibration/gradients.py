"""Gradient statistics G1/G2 (Pruner-Zero / GBLM-Pruner), streamed weight by weight, in the precision decided once."""
from __future__ import annotations

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..errors import UserError
from ..models import all_prunable
from ..checks import GRAD_STORAGES, grad_storage
from .cache import SCALE, Stats, half_scaled

GRAD_SCALE = 100.0


def gradient_stats(model: nn.Module, windows: torch.Tensor, scale: float = GRAD_SCALE,
                   stats_device: str | torch.device | None = None, progress: bool = True,
                   upcast: bool | None = None, storage: str = "fp32") -> Stats:
    """G1 and G2 for every prunable layer (one forward/backward per calibration sequence, streamed).

    fp16 gradients of a single weight are often below fp16's normal range (they underflow to subnormals or 0), so
    a half-precision model on one device is cast to fp32 for the backward passes and cast back afterwards (exact:
    every fp16/bf16 value is an fp32 value), when the fp32 copy fits the GPU's free memory. ``upcast=False`` keeps
    the model's dtype (models spread with ``device_map`` are never cast: they are the ones that do not fit twice).
    ``storage``: how the accumulated statistics are kept (``GRAD_STORAGES``; the accumulation is fp32 either way).
    """
    grad_storage(storage, "gradient statistics storage")
    half = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
    upcast, stats_device = gradient_plan(model, stats_device, upcast)
    if half and upcast:
        tensors = [(mod, kind, name, t.dtype) for mod in model.modules()
                   for kind in ("_parameters", "_buffers") for name, t in getattr(mod, kind).items() if t is not None]
        stats_device = stats_device or next(model.parameters()).device   # decided: the cast model keeps it
        model.float()
        try:
            return gradient_stats(model, windows, scale, stats_device, progress, upcast=False, storage=storage)
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
    out = {k: store({"G1": g1.pop(k).cpu(), "G2": g2.pop(k).sqrt_().cpu()}, storage) for k in linears}
    meta = {"nsamples": int(windows.shape[0]), "seqlen": int(windows.shape[1]), "grad_scale": scale}
    return Stats(out, meta if storage == "fp32" else {**meta, "grad_storage": storage})


def store(terms: dict[str, torch.Tensor], storage: str) -> dict[str, torch.Tensor]:
    """One layer's fp32 gradient statistics kept as ``storage`` says (fp16: with each tensor's scale)."""
    if storage == "fp32":
        return terms
    out = {}
    for term, t in terms.items():
        out[term], out[SCALE + term] = half_scaled(t)
    return out


def gradient_upcast(model: nn.Module, stats_device=None) -> bool:
    """Whether ``gradient_stats(upcast=None)`` would compute this model's gradients in fp32 instead of its own
    half precision (decide once and pass ``upcast=`` to make the cache key and the computation agree)."""
    return gradient_plan(model, stats_device, say=False)[0]


def gradient_dtype(model: nn.Module, upcast: bool) -> torch.dtype:
    """The dtype ``gradient_stats(model, ..., upcast=upcast)`` computes the gradients in."""
    dtype = next(model.parameters()).dtype
    return torch.float32 if upcast and dtype in (torch.float16, torch.bfloat16) else dtype


def gradient_plan(model: nn.Module, stats_device=None, upcast: bool | None = None, say: bool = True):
    """(upcast, accumulator device) of the gradient pass: fp32 gradients for a half model whenever its fp32 copy
    fits the GPU, with the G1/G2 accumulators next to it when they fit too and in CPU memory otherwise (the same
    fp32 values, one gradient copied out per weight and window), before giving up fp32 (``plan``). A model spread
    with ``device_map`` is never cast (it is the one that does not fit twice); a model on the CPU is cast and
    accumulates where it is. ``upcast`` given: only the accumulators' place is decided."""
    half = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
    dev = next(model.parameters()).device
    if getattr(model, "hf_device_map", None):
        return False if upcast is None else upcast, stats_device
    if dev.type != "cuda":
        return (half if upcast is None else upcast), stats_device
    params = sum(p.numel() for p in model.parameters())
    prunable = sum(lin.weight.numel() for lin in all_prunable(model).values())
    free, _ = torch.cuda.mem_get_info(dev)
    up, on_cpu = plan(params, prunable, half, free, stats_device is not None, upcast)
    if half and not up and say:
        tqdm.write(f"gradient statistics in {next(model.parameters()).dtype} (an fp32 copy needs "
                   f"{2 * params / 2**30:.1f} GiB more, {free / 2**30:.1f} GiB free)")
    if on_cpu and stats_device is None:
        if say:
            tqdm.write(f"gradient statistics accumulated in CPU memory ({8 * prunable / 2**30:.1f} GiB; "
                       f"{free / 2**30:.1f} GiB free on {dev})")
        stats_device = "cpu"
    return up, stats_device


def plan(params: int, prunable: int, half: bool, free: int, elsewhere: bool = False,
         upcast: bool | None = None) -> tuple[bool, bool]:
    """(upcast, accumulators in CPU memory) for a model on one GPU with ``free`` bytes: the first of fp32 with the
    accumulators on the GPU, fp32 with them in CPU memory, the model's dtype with them on the GPU, and the model's
    dtype with them in CPU memory whose memory (x 1.2 headroom) fits. ``elsewhere``: the accumulators already have
    a device of their own; ``upcast`` given: that choice is kept."""
    extra = 2 * params if half else 0          # fp16 -> fp32 adds 2 bytes a parameter
    acc = 0 if elsewhere else 8 * prunable     # G1 and G2, fp32
    ups = [True, False] if upcast is None else [upcast]
    for up in ups:
        for cpu in (False, True):
            if ((extra if up else 0) + (0 if cpu else acc)) * 1.2 < free:
                return up and half, cpu and not elsewhere
    return False if upcast is None else upcast and half, not elsewhere
