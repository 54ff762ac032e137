"""The block runner: calibration windows fed through the decoder one block at a time, each block with exactly the
inputs the model's own forward gives it (Wanda's ``prepare_calibration_input``, per block)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import UserError
from ..models import block_device, decoder_layers


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


@dataclass
class ForwardCheck:
    """Each block's outputs from ``BlockRunner`` (``ours``) and from the model's own forward (``real``), and the
    model's logits (``logits``) against its own tail (final norm, LM head, soft-capping) run on our last block's
    outputs (``replayed``)."""
    real: list[torch.Tensor]
    ours: list[torch.Tensor]
    logits: torch.Tensor
    replayed: torch.Tensor

    def summary(self) -> dict:
        """Largest absolute differences, each also relative to the largest magnitude it is measured against."""
        gaps = [(o.float() - r.float().to(o.device)).abs().max().item() for o, r in zip(self.ours, self.real)]
        scales = [r.float().abs().max().item() for r in self.real]
        worst = max(range(len(gaps)), key=lambda i: gaps[i] / max(scales[i], 1e-30))
        logit_gap = (self.replayed.float() - self.logits.float().to(self.replayed.device)).abs().max().item()
        return {"blocks": len(gaps), "worst_block": worst if gaps[worst] > 0 else None,  # None: all identical
                "hidden_max_abs_diff": gaps[worst], "hidden_max_abs": max(scales),
                "hidden_rel_diff": gaps[worst] / max(scales[worst], 1e-30),
                "logits_max_abs_diff": logit_gap, "logits_max_abs": self.logits.float().abs().max().item(),
                "argmax_agreement": (self.replayed.argmax(-1) == self.logits.argmax(-1)).float().mean().item()}


def _hidden(out):
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def forward_check(model: nn.Module, windows: torch.Tensor, batch_size: int = 1) -> ForwardCheck:
    """Block by block == whole model: the proof that calibration sees what the model's own forward computes.

    The model runs once on all ``windows`` in one batch with a hook on every decoder block; ``BlockRunner`` then
    runs the blocks one by one in batches of ``batch_size``; finally the model runs again with its last block's
    output replaced by ours, so the logits also cover the tail after the blocks. Every block's outputs are kept
    twice and the logits twice (windows x tokens x vocabulary each): a check for a few short windows, not for a
    whole evaluation."""
    layers = decoder_layers(model)
    dev = model.get_input_embeddings().weight.device
    windows = windows.to(dev)
    real: dict[int, torch.Tensor] = {}
    hooks = [b.register_forward_hook(lambda _m, _a, out, i=i: real.__setitem__(i, _hidden(out).detach()))
             for i, b in enumerate(layers)]
    try:
        logits = model(windows, use_cache=False).logits
    finally:
        for h in hooks:
            h.remove()
    runner = BlockRunner(model, windows, batch_size=batch_size)
    ours = []
    for block in layers:
        outs = runner.run(block)
        ours.append(torch.cat([o.to(real[len(ours)].device) for o in outs]))
        runner.advance(outs)
    last = ours[-1]
    hook = layers[-1].register_forward_hook(
        lambda _m, _a, out: (last.to(_hidden(out).device), *out[1:]) if isinstance(out, tuple)
        else last.to(out.device))
    try:
        replayed = model(windows, use_cache=False).logits
    finally:
        hook.remove()
    return ForwardCheck([real[i] for i in range(len(layers))], ours, logits, replayed)
