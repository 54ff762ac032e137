"""Fitness of a formula = perplexity after pruning with it (lower is better). The only search module that
touches tensors; the engine sees formulas in, records out.

Cache layers, cheapest first (the engine answers the first two before a formula reaches a worker):
  text  - the same formula text was evaluated before;
  key   - a formula with the same canonical key was (``metric.simplify``: the same float computation, so the
          same masks for sure; a seeded sample of key hits is still sent here and its fingerprint compared);
  mask  - the masks this formula gives on the real layers equal those of an evaluated formula (fingerprint);
  eval  - a real evaluation: prune, perplexity on the fitness windows, restore.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..calibration import Stats
from ..errors import UserError
from ..evaluate import perplexity
from ..metric.expr import FormulaError, parse
from ..models import all_prunable
from ..prune.masks import MetricError, Pattern, WeightSnapshot, apply_mask
from ..prune.run import metric_masks

_K1, _K2 = 0x9E3779B97F4A7C15 - (1 << 64), 0x632BE59BD9B4E019


@torch.no_grad()
def mask_fingerprint(masks: dict[str, torch.Tensor]) -> str:
    """An on-device hash of every layer's mask (bits packed into int64 words, two weighted sums mod 2^64)."""
    import hashlib

    h = hashlib.sha1()
    for key in sorted(masks):
        bits = masks[key].reshape(-1)
        pad = (-bits.numel()) % 64
        if pad:
            bits = torch.cat([bits, bits.new_zeros(pad)])
        shifts = torch.arange(64, device=bits.device, dtype=torch.int64)
        words = (bits.view(-1, 64).to(torch.int64) << shifts).sum(1)
        idx = torch.arange(words.numel(), device=bits.device, dtype=torch.int64)
        h1 = int((words * (idx * _K1 + _K2 | 1)).sum())
        h2 = int(((words ^ _K2) * (idx * _K2 + _K1 | 1)).sum())
        h.update(f"{key}:{tuple(masks[key].shape)}:{h1}:{h2};".encode())
    return h.hexdigest()


@dataclass
class FitnessResult:
    formula: str
    ppl: float
    hit: str            # eval | mask | key | text | error
    seconds: float
    fingerprint: str | None = None
    error: str | None = None
    retryable: bool = False   # a transient failure (out of memory): not a property of the formula, never cached


class FitnessEvaluator:
    """Prunes the model with a formula, measures perplexity on the fitness windows, restores the weights."""

    def __init__(self, model, stats: Stats, pattern: Pattern, windows: torch.Tensor, batch_size: int = 1,
                 penalty: float = 1e5):
        self.model = model
        self.stats = stats
        self.pattern = pattern
        self.windows = windows
        self.batch_size = batch_size
        self.penalty = penalty
        self.linears = all_prunable(model)
        self.snapshot = WeightSnapshot(self.linears)
        self.by_mask: dict[str, float] = {}

    def __call__(self, formula: str) -> FitnessResult:
        t0 = time.time()
        try:
            node = parse(formula)
            masks = metric_masks(node, self.linears, self.stats, self.pattern)
        except (MetricError, FormulaError, UserError) as exc:
            return FitnessResult(formula, self.penalty, "error", time.time() - t0, error=str(exc))
        except torch.OutOfMemoryError:
            return self._out_of_memory(formula, t0, None)
        fp = mask_fingerprint(masks)
        if fp in self.by_mask:
            return FitnessResult(formula, self.by_mask[fp], "mask", time.time() - t0, fp)
        try:
            for key, mask in masks.items():
                apply_mask(self.linears[key], mask)
            del masks
            ppl = perplexity(self.model, self.windows, self.batch_size)
        except torch.OutOfMemoryError:
            return self._out_of_memory(formula, t0, fp)
        finally:
            self.snapshot.restore()
        error = None
        if not math.isfinite(ppl):
            ppl, error = self.penalty, "perplexity is not finite"
        ppl = min(ppl, self.penalty)
        self.by_mask[fp] = ppl
        return FitnessResult(formula, ppl, "eval" if error is None else "error", time.time() - t0, fp, error)

    def _out_of_memory(self, formula: str, t0: float, fp: str | None) -> FitnessResult:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return FitnessResult(formula, self.penalty, "error", time.time() - t0, fp, "out of memory", retryable=True)
