"""Where fitness is computed: in this process (default) or on N GPUs through a Ray actor pool.

Either way the engine calls ``evaluate_many(formulas)`` and gets result dicts back in order (DEAP's
``toolbox.map`` contract), so the search loop is the same code. Each Ray worker loads the model and the cached
statistics once; the statistics are computed (and cached on disk) before the workers start, by a one-off Ray task
whose process exits afterwards, so the driver never holds the model (nor GPU memory).

The mask cache is shared through the driver: results come back in order, a mask already answered elsewhere is
logged as a ``mask`` hit with the first answer (exactly what one process would have logged), and every worker
learns the new masks before the next batch. The evaluations log is then the same for any number of workers.
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


def fill_stats_cache(fitness: dict, terminals: list[str], data_dir=None, cache=None, progress: bool = False) -> None:
    """Compute the one-shot statistics a space needs into the on-disk cache, then drop the model."""
    lm = load_model(fitness["model"], device=fitness.get("device"), dtype=fitness.get("dtype"), cache=cache,
                    seqlen=fitness["seqlen"])
    calib = CalibConfig(fitness["nsamples"], fitness["calib_seed"], fitness["batch_size"], data_dir, cache)
    need_x, need_g = needs_of(set(terminals))
    one_shot_stats(lm, calib, need_x=need_x, need_g=need_g, progress=progress)


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
    """``workers`` Ray actors, one GPU each (none with ``device: cpu``); ``pip install 'prunerzero[ray]'``."""

    def __init__(self, fitness: dict, terminals: list[str], workers: int, data_dir=None, cache=None):
        try:
            import ray
            from ray.util import ActorPool
        except ImportError:
            raise UserError("--workers needs Ray: pip install 'prunerzero[ray]'") from None
        gpus = 1 if fitness.get("device") != "cpu" else 0
        if not ray.is_initialized():
            ray.init()
        # statistics into the disk cache in a process of its own that exits afterwards (max_calls=1): the driver
        # neither loads the model nor keeps GPU memory while the workers evaluate
        fill = ray.remote(num_gpus=gpus, max_calls=1)(fill_stats_cache)
        ray.get(fill.remote(fitness, terminals, data_dir, cache))

        @ray.remote(num_gpus=gpus)
        class Worker:
            def __init__(self):
                self.local = InProcess(build_evaluator(fitness, terminals, data_dir, cache, progress=False))

            def evaluate(self, formula):
                return next(self.local([formula]))

            def learn(self, by_mask):
                for fp, ppl in by_mask.items():
                    self.local.evaluator.by_mask.setdefault(fp, ppl)

        self.actors = [Worker.remote() for _ in range(workers)]
        self.pool = ActorPool(self.actors)
        self._ray = ray
        self.by_mask: dict[str, float] = {}   # every mask answered so far, by any worker
        self._unsent: dict[str, float] = {}

    def _sync(self) -> None:
        if self._unsent:
            self._ray.get([a.learn.remote(self._unsent) for a in self.actors])
            self._unsent = {}

    def _remember(self, fp: str, ppl: float) -> None:
        self.by_mask[fp] = ppl
        self._unsent[fp] = ppl

    def __call__(self, formulas: list[str]):
        self._sync()
        for res in self.pool.map(lambda actor, f: actor.evaluate.remote(f), formulas):
            fp = res.get("fingerprint")
            if fp and res.get("error") != "out of memory":   # what FitnessEvaluator caches
                if fp in self.by_mask:
                    if res["hit"] != "mask":   # answered by another worker first: what one process logs
                        res = {**res, "ppl": self.by_mask[fp], "hit": "mask", "error": None}
                else:
                    self._remember(fp, res["ppl"])
            yield res

    def preload(self, records: list[dict]) -> None:
        """Resume: masks already evaluated answer from the cache again (as ``InProcess.preload``)."""
        for r in records:
            if r.get("fingerprint") and r["hit"] == "eval" and r["fingerprint"] not in self.by_mask:
                self._remember(r["fingerprint"], r["ppl"])
        self._sync()
