"""Fitness of an expert-score formula for the search engine: perplexity after dropping, in every MoE layer, the
fraction ``drop`` of routed experts that the formula scores lowest.

A search space with ``target: experts`` evolves formulas over the expert terminals (``ops.EXPERT_TERMINALS``)
with the same engine, caches and fidelities as the weight metrics (``search/engine.py``); this evaluator is its
``FitnessEvaluator``. The expert statistics come from one routed-calibration pass of the dense model
(``scores.expert_terms``) and are shared by every candidate. The "mask" of a candidate is the set of experts it
keeps: two formulas that keep the same experts have the same perplexity, so the mask cache answers the second
(its fingerprint is the sha1 of the kept ids). Each evaluation drops the experts in place, measures perplexity and
puts the very same tensors back (``remove.dropped``).
"""
from __future__ import annotations

import hashlib
import json
import math
import time

import torch
import torch.nn as nn

from ..errors import UserError
from ..evaluate import perplexity
from ..metric.expr import FormulaError
from ..prune.experts.remove import choose, dropped
from ..prune.experts.scores import LayerTerms, expert_score, score_layer


def keep_fingerprint(keep: dict[int, list[int]]) -> str:
    return hashlib.sha1(json.dumps(sorted(keep.items())).encode()).hexdigest()


class ExpertFitness:
    """``evaluator(formula, windows, seeds, only)`` -> ``search.fitness.FitnessResult``: one part per drop
    fraction (label ``<name>|drop<fraction>``), perplexity on the first ``windows`` fitness windows (None: all)."""

    def __init__(self, model: nn.Module, terms: dict[int, LayerTerms], drops: list[float], windows: torch.Tensor,
                 batch_size: int = 1, penalty: float = 1e5, name: str = "model", scope: str = "layer"):
        self.model, self.terms, self.drops, self.windows = model, terms, list(drops), windows
        self.batch_size, self.penalty, self.name, self.scope = batch_size, penalty, name, scope
        self.by_mask: dict[tuple, float] = {}

    def labels(self) -> list[str]:
        return [f"{self.name}|drop{d:g}" for d in self.drops]

    def __call__(self, formula: str, windows: int | None = None, seeds: int | None = None,
                 only: list[str] | None = None):
        from .fitness import FitnessResult, combined_fingerprint, geometric_mean

        t0 = time.time()
        try:  # a formula that does not parse or is not finite, a drop that leaves fewer experts than the top-k
            _, node = expert_score(formula)
            scores = {i: score_layer(node, t) for i, t in self.terms.items()}
            keeps = [choose(self.model, scores, drop, self.scope) for drop in self.drops]
        except (FormulaError, UserError) as exc:
            return FitnessResult(formula, self.penalty, "error", time.time() - t0, error=str(exc), windows=windows,
                                 seeds=seeds)
        ppls, parts, measured, error = {}, {}, False, None
        for keep, label in zip(keeps, self.labels()):
            if only is not None and label not in only:
                continue
            fp = parts[label] = keep_fingerprint(keep)
            cached = self.by_mask.get((label, fp, windows))
            if cached is None:
                w = self.windows if windows is None else self.windows[:windows]
                with dropped(self.model, keep):
                    cached = perplexity(self.model, w, self.batch_size)
                if not math.isfinite(cached):
                    cached, error = self.penalty, "perplexity is not finite"
                cached = min(cached, self.penalty)
                self.by_mask[(label, fp, windows)] = cached
                measured = True
            ppls[label] = cached
        fp = next(iter(parts.values())) if len(parts) == 1 else combined_fingerprint(parts)
        return FitnessResult(formula, geometric_mean(ppls.values()), "error" if error else
                             ("eval" if measured else "mask"), time.time() - t0, fp, error, ppls=ppls, parts=parts,
                             windows=windows, seeds=seeds)

    def learn(self, records) -> None:
        for label, fp, windows, ppl in records:
            self.by_mask.setdefault((label, fp, windows), ppl)


def build_expert_evaluator(fitness: dict, data_dir=None, cache=None, progress: bool = True) -> ExpertFitness:
    """The model, its expert statistics (one routed pass over ``fitness.nsamples`` C4 windows of the calibration
    seed) and the fitness windows of a ``fitness.target: experts`` space."""
    from ..data import eval_tokens, eval_windows
    from ..models import load_model
    from ..calibration.oneshot import CalibConfig, calibration_windows
    from .workers import fitness_bos, fitness_models, fitness_seeds
    from ..prune.experts.scores import expert_terms

    (model,) = fitness_models(fitness)
    lm = load_model(model, device=fitness.get("device"), dtype=fitness.get("dtype"), cache=cache,
                    seqlen=fitness["seqlen"], bos=fitness_bos(fitness, model))
    tokens = eval_tokens(lm.tokenizer, fitness["eval_dataset"], fitness["eval_split"], data_dir, lm.seqlen)
    windows = eval_windows(tokens, lm.seqlen, fitness["eval_windows"], lm.window_bos)
    calib = calibration_windows(lm, CalibConfig(fitness["nsamples"], fitness_seeds(fitness)[0],
                                                fitness["batch_size"], data_dir, cache))
    terms = expert_terms(lm.model, calib, fitness["batch_size"], progress)
    return ExpertFitness(lm.model, terms, fitness["drop"], windows, fitness["batch_size"], fitness["penalty"],
                         name=model)
