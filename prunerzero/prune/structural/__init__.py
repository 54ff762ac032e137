"""Structural pruning with a forward-only policy gradient (Gao et al., ACL 2025), seeded by a metric.

One job per module:

- ``groups``: the structures (every KV-head group and every MLP intermediate channel), their layout, the forward
  pre-hooks that mask them per sample during optimisation, and per-structure scores from a per-weight metric.
- ``policy``: the Bernoulli keep-probabilities, their initialisation, the REINFORCE estimator, the projection onto
  the budget, the optimisation loop, and the hard masks it ends with (per-layer widths or uniform widths).
- ``compensate``: least-squares refit of the kept o_proj / down_proj columns for the removed structures, before
  slicing (``--reconstruct``).
- ``slicing``: physically smaller Linear layers, parameter counts, saving (per-layer widths need the 40-line
  modeling file and ``trust_remote_code=True``; uniform widths save as a stock LlamaConfig), a timed forward.

The names below are re-exported so ``from prunerzero.prune import structural as st; st.Layout`` keeps working.
"""
from .compensate import compensate
from .groups import ATTN, ATTN_SCORES, MLP, MLP_SCORES, Layout, StructureMasks, layer_zscores, structure_scores
from .policy import (STRUCTURAL_INITS, BernoulliPolicy, PolicyConfig, PolicyState, cosine_lr, init_probs, masked_losses,
                     oneshot_masks, optimise, pg_gradient, project, topk_keep, uniform_keep, uniform_widths)
from .slicing import REMOTE_CODE, count_params, forward_latency, save_structural, slice_model, uniform_shape

__all__ = ["compensate", "ATTN", "ATTN_SCORES", "MLP", "MLP_SCORES", "Layout", "StructureMasks", "layer_zscores",
           "structure_scores", "BernoulliPolicy", "PolicyConfig", "PolicyState", "cosine_lr", "init_probs",
           "masked_losses", "oneshot_masks", "optimise", "pg_gradient", "project", "topk_keep", "uniform_keep",
           "uniform_widths", "REMOTE_CODE", "STRUCTURAL_INITS",
           "count_params", "forward_latency", "save_structural", "slice_model", "uniform_shape"]
