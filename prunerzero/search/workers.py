"""Where fitness is computed: in this process (default) or on N GPUs through a Ray actor pool.

Either way the engine calls ``evaluate_many(formulas)`` and gets result dicts back in order (DEAP's
``toolbox.map`` contract), so the search loop is the same code. Each Ray worker loads the model and the cached
statistics once; the statistics are computed (and cached on disk) by the driver before the workers start.
"""
from __future__ import annotations

from dataclasses import asdict

from ..calibration import needs_of
from ..data import eval_tokens, eval_windows
from ..errors import UserError
from ..models import load_model
from ..pipeline import CalibConfig, one_shot_stats
from ..prune.masks import parse_pattern
from .fitness import FitnessEvaluator


def build_evaluator(fitness: dict, terminals: list[str], data_dir=None, cache=None,
                    progress: bool = True) -> FitnessEvaluator:
    """Model, one-shot statistics (cached) and fitness windows for a space's ``fitness`` settings."""
    lm = load_model(fitness["model"], device=fitness.get("device"), dtype=fitness.get("dtype"), cache=cache,
                    seqlen=fitness["seqlen"])
    pattern = parse_pattern(fitness["sparsity"], fitness["pattern"], fitness["group"])
    calib = CalibConfig(fitness["nsamples"], fitness["calib_seed"], fitness["batch_size"], data_dir, cache)
    need_x, need_g = needs_of(set(terminals))
    stats = one_shot_stats(lm, calib, need_x=need_x, need_g=need_g, progress=progress, need_h="Hd" in terminals)
    tokens = eval_tokens(lm.tokenizer, fitness["eval_dataset"], fitness["eval_split"], data_dir, lm.seqlen)
    windows = eval_windows(tokens, lm.seqlen, fitness["eval_windows"])
    return FitnessEvaluator(lm.model, stats.to(lm.device), pattern, windows, fitness["batch_size"],
                            fitness["penalty"])


class InProcess:
    def __init__(self, evaluator: FitnessEvaluator):
        self.evaluator = evaluator

    def __call__(self, formulas: list[str]):
        for f in formulas:
            yield asdict(self.evaluator(f))

    def preload(self, records: list[dict]) -> None:
        """Resume: masks already evaluated answer from the cache again."""
        for r in records:
            if r.get("fingerprint") and r["hit"] == "eval":
                self.evaluator.by_mask.setdefault(r["fingerprint"], r["ppl"])


class RayPool:
    """``workers`` Ray actors, one GPU each (``pip install 'prunerzero[ray]'``)."""

    def __init__(self, fitness: dict, terminals: list[str], workers: int, data_dir=None, cache=None):
        try:
            import ray
            from ray.util import ActorPool
        except ImportError:
            raise UserError("--workers needs Ray: pip install 'prunerzero[ray]'") from None
        build_evaluator(fitness, terminals, data_dir, cache)  # fill the statistics cache once, here

        @ray.remote(num_gpus=1 if fitness.get("device") != "cpu" else 0)
        class Worker:
            def __init__(self):
                self.local = InProcess(build_evaluator(fitness, terminals, data_dir, cache, progress=False))

            def evaluate(self, formula):
                return next(self.local([formula]))

            def preload(self, records):
                self.local.preload(records)

        if not ray.is_initialized():
            ray.init()
        self.actors = [Worker.remote() for _ in range(workers)]
        self.pool = ActorPool(self.actors)
        self._ray = ray

    def __call__(self, formulas: list[str]):
        return self.pool.map(lambda actor, f: actor.evaluate.remote(f), formulas)

    def preload(self, records: list[dict]) -> None:
        self._ray.get([a.preload.remote(records) for a in self.actors])
