"""Fitness of a formula: perplexity after pruning with it, per part (one model at one setting), on the first
``windows`` fitness windows (a fidelity) or all of them. The only search module that touches tensors; the engine
sees formulas in, records out, and turns the parts' perplexities into a score (``scoring.combine_scores``).

Cache layers, cheapest first (the engine answers the first two before a formula reaches a worker):
  text  - the same formula text was evaluated before;
  key   - a formula with the same canonical key was (``metric.simplify``: the same float computation, so the
          same masks for sure; a seeded sample of key hits is still sent here and its fingerprint compared);
  mask  - the masks this formula gives on the real layers equal those of an evaluated formula (fingerprint),
          per part and fidelity: a part already measured is not measured again;
  eval  - a real evaluation: prune, perplexity on the fitness windows, restore.

Masks come from ``batched_masks`` (one selection per batch of same-shape layers; exactly the per-layer masks) and
their fingerprint is reduced on the device and read back once.
"""
from __future__ import annotations

import math
import time
from dataclasses import InitVar, asdict, dataclass

import torch

from ..calibration import Stats
from ..errors import UserError
from ..evaluate import perplexity
from ..metric.expr import FormulaError, evaluate, parse
from ..models import all_prunable
from ..prune.masks import MetricError, Pattern, WeightSnapshot, apply_mask, check_scores, mask_from_scores
from ..prune.run import metric_masks as per_layer_masks
from ..prune.rules import UPDATES
from ..prune.run import metric_score
from .genes import allocation_dict, split_candidate

_K1, _K2 = 0x9E3779B97F4A7C15 - (1 << 64), 0x632BE59BD9B4E019


@torch.no_grad()
def mask_fingerprint(masks: dict[str, torch.Tensor]) -> str:
    """An on-device hash of every layer's mask (bits packed into int64 words, two weighted sums mod 2^64).

    The sums stay on the device and come back to the host in one transfer per device (not two per layer)."""
    import hashlib

    keys = sorted(masks)
    sums: dict = {}
    for key in keys:
        bits = masks[key].reshape(-1)
        pad = (-bits.numel()) % 64
        if pad:
            bits = torch.cat([bits, bits.new_zeros(pad)])
        shifts = torch.arange(64, device=bits.device, dtype=torch.int64)
        words = (bits.view(-1, 64).to(torch.int64) << shifts).sum(1)
        idx = torch.arange(words.numel(), device=bits.device, dtype=torch.int64)
        sums.setdefault(bits.device, []).append(torch.stack([(words * (idx * _K1 + _K2 | 1)).sum(),
                                                             ((words ^ _K2) * (idx * _K2 + _K1 | 1)).sum()]))
    host = {dev: iter(torch.stack(v).tolist()) for dev, v in sums.items()}
    h = hashlib.sha1()
    for key in keys:
        h1, h2 = next(host[masks[key].device])
        h.update(f"{key}:{tuple(masks[key].shape)}:{h1}:{h2};".encode())
    return h.hexdigest()


BATCH_ELEMENTS = 1 << 27   # scores selected in one call: at most this many (512 MB of fp32)


@torch.no_grad()
def batched_masks(formula, linears: dict, stats: Stats, pattern: Pattern, batch: bool | None = None
                  ) -> dict[str, torch.Tensor]:
    """``metric_masks`` with the selection batched: the scores of layers of one shape are concatenated row-wise
    and selected in one call (per-row and N:M selection is row-local, so the masks are exactly those of one call
    per layer, ties included), and one finiteness check per batch instead of one per layer. A per-layer pattern
    (``group: layer``) falls back to ``metric_masks``. ``batch=None`` batches on accelerators only: there it
    saves host-device synchronisations (two per layer become two per batch); on the CPU, which has none to save,
    the concatenation is an extra copy (benchmarks/prune_eval.py measures both)."""
    if batch is None:
        batch = next(iter(linears.values())).weight.device.type != "cpu" if linears else False
    if not batch or (not pattern.is_nm and pattern.group != "row"):
        return per_layer_masks(formula, linears, stats, pattern)
    groups: dict[tuple, list] = {}
    for key, lin in linears.items():
        groups.setdefault((tuple(lin.weight.shape), lin.weight.device), []).append(key)
    out = {}
    for (shape, _), keys in groups.items():
        per = max(1, BATCH_ELEMENTS // max(1, shape[0] * shape[1]))
        for i in range(0, len(keys), per):
            chunk = keys[i:i + per]
            scores = []
            for key in chunk:
                w = linears[key].weight
                score = evaluate(formula, stats.env(key, w) if stats is not None else {"W": w.detach().float()})
                if score.shape != w.shape:
                    check_scores(score, w, f" in {key}")   # the shape message
                scores.append(score)
            cat = torch.cat(scores) if len(scores) > 1 else scores[0]
            if not bool(torch.isfinite(cat).all()):
                for key, score in zip(chunk, scores):
                    check_scores(score, linears[key].weight, f" in {key}")
            mask = mask_from_scores(cat, pattern)
            for key, m in zip(chunk, mask.split(shape[0])):
                out[key] = m
    return {key: out[key] for key in linears}


@dataclass
class FitnessResult:
    formula: str
    ppl: float          # geometric mean of ``ppls`` (the single perplexity when there is one part)
    hit: str            # eval | mask | key | text | error
    seconds: float
    fingerprint: str | None = None
    error: str | None = None
    retryable: bool = False   # a transient failure (out of memory): not a property of the formula, never cached
    ppls: dict | None = None     # part label ("<model>|<pattern slug>") -> perplexity
    parts: dict | None = None    # part label -> that part's mask fingerprint
    windows: int | None = None   # the fidelity: fitness windows used (None: all of them)
    seeds: int | None = None     # the fidelity: calibration seeds scored (the first n of each model's; None: all)


@dataclass
class Target:
    """One model's material for fitness: the model, its one-shot statistics (of one calibration seed) and its
    (full) fitness windows. Targets of one model (several seeds) share its layers and their dense snapshot;
    ``rank`` is the seed's position in ``fitness.calib_seed`` (a fidelity of n seeds scores ranks below n)."""
    name: str
    model: object
    stats: Stats
    windows: torch.Tensor
    share: InitVar["Target | None"] = None
    rank: int = 0

    def __post_init__(self, share):
        if share is not None:
            self.linears, self.snapshot = share.linears, share.snapshot
        else:
            self.linears = all_prunable(self.model)
            self.snapshot = WeightSnapshot(self.linears)


def part_label(model: str, pattern: Pattern, update: str = "none") -> str:
    """``<model>|<pattern slug>``, with ``+obs`` / ``+lsq`` / ``+admm`` when the kept weights are updated."""
    return f"{model}|{pattern.slug}" + ("" if update == "none" else f"+{update}")


@torch.no_grad()
def reconstruct(linears: dict, masks: dict[str, torch.Tensor], stats: Stats) -> None:
    """Prune ``masks`` and update the kept weights of each layer by OBS against the dense model's layer Hessian
    (``prune_model(..., sequential=False, update="obs")`` with the factor precomputed in ``stats``)."""
    from ..prune.sparsegpt import obs_sweep

    for key, mask in masks.items():
        factor = stats.factor(key) if stats is not None else None
        if factor is None:
            raise UserError(f"statistics lack the OBS factor of {key}: compute them with the reconstructing "
                            "setting (delete the statistics cache and rerun)")
        lin = linears[key]
        U, dead = (t.to(lin.weight.device) for t in factor)
        lin.weight.copy_(obs_sweep(lin.weight, U, dead, mask=mask)[0].to(lin.weight.dtype))


def geometric_mean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(max(v, 1e-30)) for v in values) / len(values))


class FitnessEvaluator:
    """Prunes each model at each setting with a formula, measures perplexity on the fitness windows (the first
    ``windows`` of them for a low fidelity), restores the weights.

    A part is one (model, setting). Its masks are fingerprinted; ``by_mask[(label, fingerprint, windows)]`` holds
    its perplexity, so a part whose masks were measured before is not measured again. The candidate is a ``mask``
    hit when every part is. ``FitnessEvaluator(model, stats, pattern, windows)`` is the one-model, one-setting
    case; ``patterns`` and ``add_model`` make more parts. ``updates`` (one per pattern, default ``none``): ``obs``
    reconstructs the kept weights after the mask (``reconstruct``), from the OBS factor in each model's stats;
    ``lsq`` gives them their exact least-squares values and ``admm`` prunes by ADMM with the formula re-selecting
    the mask on the updated weights (``prune.admm``), both from the layer Hessians in the stats, normalised once
    per layer and run. An ``admm`` part's masks are only known after its update, so its fingerprint (and the mask
    cache) is of the final masks, whose kept weights are their least-squares solution."""

    def __init__(self, model, stats: Stats, pattern: Pattern | list[Pattern], windows: torch.Tensor,
                 batch_size: int = 1, penalty: float = 1e5, name: str = "model", updates: list[str] | None = None):
        self.patterns = list(pattern) if isinstance(pattern, (list, tuple)) else [pattern]
        self.updates = list(updates) if updates is not None else ["none"] * len(self.patterns)
        if len(self.updates) != len(self.patterns) or not set(self.updates) <= set(UPDATES):
            raise ValueError(f"updates must be one of {'/'.join(UPDATES)}, one per pattern, got {updates}")
        self._norms: dict[tuple, object] = {}   # (model, layer) -> prune.admm.Normalised of its Hessian
        self.targets = [Target(name, model, stats, windows)]
        self.batch_size = batch_size
        self.penalty = penalty
        self.by_mask: dict[tuple, float] = {}
        self.counts: dict[tuple, dict] = {}   # (model, allocation slug, pattern slug) -> per-layer prune counts

    # the one-model attributes older callers use
    @property
    def model(self):
        return self.targets[0].model

    @property
    def linears(self):
        return self.targets[0].linears

    @property
    def stats(self):
        return self.targets[0].stats

    @property
    def pattern(self):
        return self.patterns[0]

    def add_model(self, name: str, model, stats: Stats, windows: torch.Tensor) -> None:
        """Another target: a model, or another calibration seed of one already added (its layers and snapshot
        then shared; its ``rank`` among that model's seeds is the order added)."""
        if any(t.name == name for t in self.targets):
            raise UserError(f"fitness.models names {name} twice: list each model once")
        same = [t for t in self.targets if t.model is model]
        self.targets.append(Target(name, model, stats, windows, share=same[0] if same else None, rank=len(same)))

    @property
    def labels(self) -> list[str]:
        return self.part_labels()

    def part_labels(self, seeds: int | None = None) -> list[str]:
        """The labels of the parts a call with ``seeds`` scores, in the order it scores them."""
        return [part_label(t.name, p, u) for t in self.targets if seeds is None or t.rank < seeds
                for p, u in zip(self.patterns, self.updates)]

    def __call__(self, formula: str, windows: int | None = None, seeds: int | None = None,
                 only: list[str] | None = None) -> FitnessResult:
        """The formula's perplexity per part on the first ``windows`` fitness windows (None: all), with the
        statistics of each model's first ``seeds`` calibration seeds (None: all of them); ``only``: just the parts
        with these labels (``merge_results`` joins such calls into the whole call's result)."""
        t0 = time.time()
        try:
            text, slug = split_candidate(formula)
            node = parse(text)
        except (FormulaError, UserError) as exc:
            return FitnessResult(formula, self.penalty, "error", time.time() - t0, error=str(exc), windows=windows,
                                 seeds=seeds)
        ppls, parts, measured, error = {}, {}, False, None
        for target in self.targets:
            if seeds is not None and target.rank >= seeds:
                continue
            for pattern, update in zip(self.patterns, self.updates):
                label = part_label(target.name, pattern, update)
                if only is not None and label not in only:
                    continue
                try:
                    # N:M fixes every group: the allocation gene does not apply
                    counts = None if slug == "uniform" or pattern.is_nm else self._counts(target, pattern, slug)
                    if update == "admm":   # the weights change here, and the masks with them
                        masks = self._admm(node, target, pattern, counts)
                    elif counts is None:
                        masks = batched_masks(node, target.linears, target.stats, pattern)
                    else:
                        masks = self._allocated_masks(node, target, pattern, counts)
                except (MetricError, FormulaError, UserError) as exc:
                    if update == "admm":
                        target.snapshot.restore()
                    return FitnessResult(formula, self.penalty, "error", time.time() - t0, error=str(exc),
                                         windows=windows, seeds=seeds)
                except torch.OutOfMemoryError:
                    if update == "admm":
                        target.snapshot.restore()
                    return self._out_of_memory(formula, t0, None, windows, seeds)
                fp = mask_fingerprint(masks)
                parts[label] = fp
                cached = self.by_mask.get((label, fp, windows))
                if cached is not None:
                    if update == "admm":
                        target.snapshot.restore()
                    ppls[label] = cached
                    continue
                try:
                    if update == "obs":
                        reconstruct(target.linears, masks, target.stats)
                    elif update == "lsq":
                        self._lsq(target, masks)
                    elif update == "none":
                        for key, mask in masks.items():
                            apply_mask(target.linears[key], mask)
                    del masks
                    w = target.windows if windows is None else target.windows[:windows]
                    ppl = perplexity(target.model, w, self.batch_size)
                except torch.OutOfMemoryError:
                    return self._out_of_memory(formula, t0, None, windows, seeds)
                finally:
                    target.snapshot.restore()
                if not math.isfinite(ppl):
                    ppl, error = self.penalty, "perplexity is not finite"
                ppl = min(ppl, self.penalty)
                self.by_mask[(label, fp, windows)] = ppl
                ppls[label] = ppl
                measured = True
        fp = next(iter(parts.values())) if len(parts) == 1 else combined_fingerprint(parts)
        hit = "error" if error else ("eval" if measured else "mask")
        return FitnessResult(formula, geometric_mean(ppls.values()), hit, time.time() - t0, fp, error,
                             ppls=ppls, parts=parts, windows=windows, seeds=seeds)

    def _counts(self, target: Target, pattern: Pattern, slug: str) -> dict[str, int]:
        """Per-layer prune counts of a layer-wise allocation gene (``allocation.allocate``: OWL from the dense
        one-shot X of the statistics, or a per-depth schedule; the total exact), computed once per gene."""
        from ..prune.allocation import Allocation, allocate

        key = (target.name, slug, pattern.slug)
        if key not in self.counts:
            alloc = Allocation.from_dict(allocation_dict(slug))
            stats = target.stats

            def x_of(b, n):
                x = stats.tensors.get(f"layers.{b}.{n}", {}).get("X") if stats is not None else None
                if x is None:
                    raise UserError("OWL allocation reads X: the statistics lack it (add X to the terminals, or "
                                    "delete the statistics cache and rerun)")
                return x

            self.counts[key] = allocate(target.model, alloc, pattern, x_of)
        return self.counts[key]

    def _allocated_masks(self, node, target: Target, pattern: Pattern, counts: dict) -> dict[str, torch.Tensor]:
        """Masks with a layer-wise allocation: the formula's lowest scores per row (or per layer) up to each
        layer's count."""
        from ..prune.allocation import mask_with_count

        out = {}
        for name, lin in target.linears.items():
            out[name] = mask_with_count(metric_score(node, self._env(target, name, lin), name), pattern,
                                        counts[name])
        return out

    @staticmethod
    def _env(target: Target, name: str, lin) -> dict[str, torch.Tensor]:
        return target.stats.env(name, lin.weight) if target.stats is not None else {"W": lin.weight.detach().float()}

    def _normalised(self, target: Target, name: str):
        """The layer's Hessian in the basis ``prune.admm`` works in (with ADMM's inverse when a setting runs
        ADMM), from the statistics, once per layer and run."""
        from ..prune.admm import ADMM_RHO, normalise

        key = (target.name, name)
        if key not in self._norms:
            H = target.stats.hessian(name) if target.stats is not None else None
            if H is None:
                raise UserError(f"statistics lack the layer Hessian of {name}: compute them with the lsq/admm "
                                "setting (delete the statistics cache and rerun)")
            percdamp = float(target.stats.meta.get("percdamp", 0.01))
            rho = ADMM_RHO if "admm" in self.updates else None
            self._norms[key] = normalise(H.to(target.linears[name].weight.device), percdamp, rho)
        return self._norms[key]

    @torch.no_grad()
    def _lsq(self, target: Target, masks: dict[str, torch.Tensor]) -> None:
        """Prune ``masks`` and give the kept weights their least-squares values (``prune --update lsq``)."""
        from ..prune.admm import lsq_update

        for name, mask in masks.items():
            lin = target.linears[name]
            lin.weight.copy_(lsq_update(lin.weight, None, mask, norm=self._normalised(target, name))
                             .to(lin.weight.dtype))

    @torch.no_grad()
    def _admm(self, node, target: Target, pattern: Pattern, counts: dict | None) -> dict[str, torch.Tensor]:
        """ADMM per layer with the formula re-selecting the mask on the current weights (``prune --update admm``,
        one-shot statistics); the weights are updated in place; returns the final masks."""
        from ..prune.admm import admm_prune

        masks = {}
        for name, lin in target.linears.items():
            env = self._env(target, name, lin)

            def score_of(w: torch.Tensor, env=env, name=name) -> torch.Tensor:
                return metric_score(node, {**env, "W": w}, name)

            new, masks[name] = admm_prune(lin.weight, None, pattern, score_of,
                                          count=None if counts is None else counts[name],
                                          norm=self._normalised(target, name))
            lin.weight.copy_(new.to(lin.weight.dtype))
        return masks

    def learn(self, records) -> None:
        """Parts measured elsewhere (another worker, or the run before a resume) answer from the cache."""
        for label, fp, windows, ppl in records:
            self.by_mask.setdefault((label, fp, windows), ppl)

    def _out_of_memory(self, formula: str, t0: float, fp: str | None, windows=None, seeds=None) -> FitnessResult:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return FitnessResult(formula, self.penalty, "error", time.time() - t0, fp, "out of memory", retryable=True,
                             windows=windows, seeds=seeds)


def combined_fingerprint(parts: dict) -> str:
    import hashlib

    return hashlib.sha1(";".join(f"{k}={parts[k]}" for k in sorted(parts)).encode()).hexdigest()


def merge_results(results: list[dict]) -> dict:
    """One candidate's result from results of its parts (``FitnessEvaluator(..., only=...)`` as dicts, in part
    order), equal to the one call that scores every part except for ``seconds`` (their sum): a call that stopped
    early (a formula error, out of memory: no perplexities) is the answer, the first in part order as the one call
    stops at its first; otherwise perplexities and fingerprints in part order, ``eval`` when any part was measured,
    and the first part's error (a perplexity that is not finite)."""
    seconds = sum(r["seconds"] for r in results)
    for r in results:
        if r["hit"] == "error" and not r.get("ppls"):
            return {**r, "seconds": seconds}
    ppls = {k: v for r in results for k, v in r["ppls"].items()}
    parts = {k: v for r in results for k, v in r["parts"].items()}
    errors = [r["error"] for r in results if r.get("error")]
    hit = "error" if errors else ("eval" if any(r["hit"] == "eval" for r in results) else "mask")
    fp = next(iter(parts.values())) if len(parts) == 1 else combined_fingerprint(parts)
    return asdict(FitnessResult(results[0]["formula"], geometric_mean(ppls.values()), hit, seconds, fp,
                                errors[0] if errors else None, ppls=ppls, parts=parts,
                                windows=results[0].get("windows"), seeds=results[0].get("seeds")))


def part_records(rec: dict):
    """(label, fingerprint, windows, ppl) of every part a log record (or a result) measured without error."""
    stages = rec.get("stages") or [rec]
    for st in stages:
        if st.get("retryable") or not st.get("parts") or not st.get("ppls"):
            continue
        for label, fp in st["parts"].items():
            yield label, fp, st.get("windows"), st["ppls"][label]
