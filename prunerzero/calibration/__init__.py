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

from ..metric.ops import needs_of
from .activations import InputStats, activation_stats
from .blocks import BlockRunner, ForwardCheck, forward_check
from .cache import Stats, cached_stats, check_stats, stats_key
from .gradients import GRAD_SCALE, GRAD_STORAGES, gradient_dtype, gradient_stats, gradient_upcast

__all__ = ["BlockRunner", "ForwardCheck", "forward_check", "InputStats", "Stats", "activation_stats", "gradient_stats", "stats_key",
           "cached_stats", "check_stats", "needs_of", "GRAD_SCALE", "GRAD_STORAGES", "gradient_upcast", "gradient_dtype"]
