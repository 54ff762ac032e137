"""Masks from a metric, SparseGPT, and the single layer loop every method shares."""
from .masks import (
           MetricError,
           Pattern,
           WeightSnapshot,
           apply_mask,
           mask_from_scores,
           parse_pattern,
)
from .run import SPARSEGPT, metric_masks, prune_model

__all__ = ["MetricError", "Pattern", "WeightSnapshot", "apply_mask", "mask_from_scores", "parse_pattern",
           "SPARSEGPT", "metric_masks", "prune_model"]
