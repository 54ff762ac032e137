"""Where fitness is computed: in this process (default) or on N GPUs through a Ray actor pool.

Either way the engine calls ``evaluate_many(formulas)`` and gets result dicts back in order (DEAP's
``toolbox.map`` contract), so the search loop is the same code. Each Ray worker loads the model and the cached
statistics once; the statistics are computed (and cached on disk) before the workers start, by a one-off Ray task
whose process exits afterwards, so the driver never holds the model (nor GPU memory).

The mask cache is shared through the driver: results come back in order, a mask already answered elsewhere is
logged as a ``mask`` hit with the first answer (exactly what one process would have logged), and every worker
learns the new masks before the next batch. Masks are cached per part (one model at one setting) and per
fidelity (number of windows). The evaluations log is then the same for any number of workers.

A candidate with several parts (models x calibration seeds x settings) is scored part by part, one task each, so
that a single candidate promoted to the full fidelity keeps every worker busy instead of one; its parts are joined
into the result one process gives (``fitness.merge_results``).
"""
from __future__ import annotations

from dataclasses import asdict

from ..calibration import needs_of
from ..checks import BOS_DEFAULT
from ..data import eval_tokens, eval_windows
from ..errors import UserError
from ..models import load_model
from ..calibration.oneshot import CalibConfig, one_shot_stats
from ..prune.masks import parse_pattern
from .fitness import FitnessEvaluator, geometric_mean, merge_results, part_records


def fitness_models(fitness: dict) -> list[str]:
    """The models fitness prunes: ``fitness.models``, else ``[fitness.model]``."""
    return list(fitness.get("models") or [fitness["model"]])


def fitness_bos(fitness: dict, model: str) -> str:
    """A fitness model's BOS mode: ``fitness.bos`` itself, or its entry for that model (default stream)."""
    bos = fitness.get("bos", BOS_DEFAULT)
    return bos.get(model, BOS_DEFAULT) if isinstance(bos, dict) else bos


def fitness_patterns(fitness: dict) -> list:
    """The settings' patterns (``space.settings_of`` has validated and normalised them)."""
    from .space import settings_of

    return [parse_pattern(s["sparsity"], s["pattern"], s["group"]) for s in settings_of(fitness)]


def fitness_updates(fitness: dict) -> list[str]:
    """Per setting, what happens to the kept weights: ``none``, ``obs`` (OBS reconstruction after the mask), ``lsq``
    (their exact least-squares values) or ``admm`` (ADMM with the formula re-selecting the mask, then lsq)."""
    from .space import settings_of

    return [s.get("update", "none") for s in settings_of(fitness)]


def fitness_seeds(fitness: dict) -> list[int]:
    """The calibration seeds fitness scores with: ``fitness.calib_seed``, one seed or a list."""
    seeds = fitness["calib_seed"]
    return list(seeds) if isinstance(seeds, list) else [seeds]


def target_name(model: str, seed: int, seeds: list[int]) -> str:
    """A fitness target: the model, or ``<model>|seed<n>`` when fitness scores with several calibration seeds (its
    parts are then ``<model>|seed<n>|<setting>``, which ``scoring.combine_scores`` averages over the seeds)."""
    return model if len(seeds) == 1 else f"{model}|seed{seed}"


def _stats_for(lm, fitness: dict, terminals: list[str], data_dir, cache, progress: bool, seed: int):
    """One model's one-shot statistics for the space with one calibration seed: X/G as the terminals need, Hd
    when a terminal, the OBS factor when a setting reconstructs by OBS, the layer Hessians when one solves (lsq)
    or runs ADMM (all cached on disk)."""
    calib = CalibConfig(fitness["nsamples"], seed, fitness["batch_size"], data_dir, cache,
                        grad_storage=fitness.get("grad_storage", "fp32"))
    need_x, need_g = needs_of(set(terminals))
    updates = set(fitness_updates(fitness))
    return one_shot_stats(lm, calib, need_x=need_x, need_g=need_g, progress=progress,
                          need_h="Hd" in terminals, need_factor="obs" in updates,
                          need_hessian=bool(updates & {"lsq", "admm"}))


def stats_parts(fitness: dict) -> list[tuple[str, int]]:
    """The (model, calibration seed) pairs whose one-shot statistics a space needs, one cache entry each."""
    return [(name, seed) for name in fitness_models(fitness) for seed in fitness_seeds(fitness)]


def fill_stats_cache(fitness: dict, terminals: list[str], data_dir=None, cache=None, progress: bool = False,
                     parts: list[tuple[str, int]] | None = None) -> None:
    """Compute the one-shot statistics a space needs (every fitness model's, or only ``parts``: (model, seed)
    pairs) into the on-disk cache, then drop the models."""
    todo = stats_parts(fitness) if parts is None else parts
    for name in dict.fromkeys(name for name, _ in todo):
        lm = load_model(name, device=fitness.get("device"), dtype=fitness.get("dtype"), cache=cache,
                        seqlen=fitness["seqlen"], bos=fitness_bos(fitness, name))
        for seed in (seed for model, seed in todo if model == name):
            _stats_for(lm, fitness, terminals, data_dir, cache, progress, seed)
        del lm


def build_evaluator(fitness: dict, terminals: list[str], data_dir=None, cache=None,
                    progress: bool = True, device_map: str | None = None) -> FitnessEvaluator:
    """Models, one-shot statistics (cached, one set per model and calibration seed) and fitness windows for a
    space's ``fitness`` settings: one evaluator whose parts are every (model, seed, setting); the seeds of one
    model share its weights."""
    if fitness.get("target") == "experts":
        from .experts_fitness import build_expert_evaluator

        return build_expert_evaluator(fitness, data_dir, cache, progress)
    evaluator = None
    seeds = fitness_seeds(fitness)
    for model in fitness_models(fitness):
        lm = load_model(model, device=fitness.get("device"), dtype=fitness.get("dtype"), cache=cache,
                        seqlen=fitness["seqlen"], bos=fitness_bos(fitness, model), device_map=device_map)
        tokens = eval_tokens(lm.tokenizer, fitness["eval_dataset"], fitness["eval_split"], data_dir, lm.seqlen)
        windows = eval_windows(tokens, lm.seqlen, fitness["eval_windows"], lm.window_bos)
        for seed in seeds:
            stats = _stats_for(lm, fitness, terminals, data_dir, cache, progress, seed).only(terminals).to(lm.device)
            name = target_name(model, seed, seeds)
            if evaluator is None:
                evaluator = FitnessEvaluator(lm.model, stats, fitness_patterns(fitness), windows,
                                             fitness["batch_size"], fitness["penalty"], name=name,
                                             updates=fitness_updates(fitness))
            else:
                evaluator.add_model(name, lm.model, stats, windows)
    return evaluator


class InProcess:
    def __init__(self, evaluator: FitnessEvaluator):
        self.evaluator = evaluator

    def __call__(self, formulas: list[str], windows: int | None = None, seeds: int | None = None, only=None):
        for f in formulas:
            yield asdict(self.evaluator(f, windows, seeds, only))

    def preload(self, records: list[dict]) -> None:
        """Resume: parts already measured (log records, references) answer from the cache again."""
        for r in records:
            self.evaluator.learn(part_records(r))


def ray_gpus(fitness: dict) -> int:
    """GPUs per Ray task or actor: one, unless the space runs on the CPU."""
    return 0 if fitness.get("device") == "cpu" else 1


def ray_fill_stats(fitness: dict, terminals: list[str], workers: int, data_dir=None, cache=None) -> None:
    """The statistics a space needs into the disk cache with Ray: its (model, seed) parts in at most ``workers``
    consecutive groups, one task each, each in a process of its own that exits afterwards (max_calls=1), so that
    the driver neither loads a model nor keeps GPU memory while the workers evaluate, a space with several seeds or
    models fills them in parallel, and a warm cache costs at most ``workers`` model loads (one GPU per task unless
    ``device: cpu``)."""
    import ray

    fill = ray.remote(num_gpus=ray_gpus(fitness), max_calls=1)(fill_stats_cache)
    parts = stats_parts(fitness)
    size = -(-len(parts) // workers)
    ray.get([fill.remote(fitness, terminals, data_dir, cache, parts=parts[i:i + size])
             for i in range(0, len(parts), size)])


class RayPool:
    """``workers`` Ray actors, one GPU each (none with ``device: cpu``); ``pip install 'prunerzero[ray]'``."""

    def __init__(self, fitness: dict, terminals: list[str], workers: int, data_dir=None, cache=None,
                 split_parts: bool = True):
        try:
            import ray
            from ray.util import ActorPool
        except ImportError:
            raise UserError("--workers needs Ray: pip install 'prunerzero[ray]'") from None
        gpus = ray_gpus(fitness)
        if not ray.is_initialized():
            ray.init()
        ray_fill_stats(fitness, terminals, workers, data_dir, cache)

        @ray.remote(num_gpus=gpus)
        class Worker:
            def __init__(self):
                self.local = InProcess(build_evaluator(fitness, terminals, data_dir, cache, progress=False))

            def evaluate(self, formula, windows, seeds, only=None):
                return next(self.local([formula], windows, seeds, only))

            def part_labels(self, seeds):
                return self.local.evaluator.part_labels(seeds)

            def learn(self, parts):
                self.local.evaluator.learn(parts)

        self.actors = [Worker.remote() for _ in range(workers)]
        self.pool = ActorPool(self.actors)
        self._ray = ray
        self.by_mask: dict[tuple, float] = {}   # every part answered so far, by any worker
        self._unsent: list[tuple] = []
        self._labels: dict = {}   # seeds -> the labels of the parts scored with them
        self.split_parts = split_parts   # False: a candidate's parts in one task (benchmarks/workers.py compares)

    def _sync(self) -> None:
        if self._unsent:
            self._ray.get([a.learn.remote(self._unsent) for a in self.actors])
            self._unsent = []

    def _remember(self, label, fp, windows, ppl) -> None:
        if (label, fp, windows) not in self.by_mask:
            self.by_mask[(label, fp, windows)] = ppl
            self._unsent.append((label, fp, windows, ppl))

    def _results(self, formulas: list[str], windows, seeds):
        """Each formula's result, in order. Its parts (model x seed x setting) are scored as separate tasks, so
        that one candidate at a high fidelity keeps every worker busy; ``merge_results`` joins them into what one
        call scoring every part gives (each part's perplexity does not depend on the process that measures it)."""
        if seeds not in self._labels:
            self._labels[seeds] = self._ray.get(self.actors[0].part_labels.remote(seeds))
        labels = self._labels[seeds]
        if len(labels) < 2 or len(self.actors) < 2 or not self.split_parts:
            yield from self.pool.map(lambda actor, f: actor.evaluate.remote(f, windows, seeds), formulas)
            return
        tasks = [(f, label) for f in formulas for label in labels]
        done: list[dict] = []
        for res in self.pool.map(lambda actor, t: actor.evaluate.remote(t[0], windows, seeds, [t[1]]), tasks):
            done.append(res)
            if len(done) == len(labels):
                yield merge_results(done)
                done = []

    def __call__(self, formulas: list[str], windows: int | None = None, seeds: int | None = None):
        self._sync()
        for res in self._results(formulas, windows, seeds):
            parts = list(part_records(res))
            if parts:
                known = [(lb, fp, w) in self.by_mask for lb, fp, w, _ in parts]
                if all(known) and res["hit"] != "mask":   # answered by other workers first: what one process logs
                    ppls = {lb: self.by_mask[(lb, fp, w)] for lb, fp, w, _ in parts}
                    res = {**res, "ppls": ppls, "ppl": geometric_mean(ppls.values()), "hit": "mask", "error": None}
                elif any(known):
                    ppls = {lb: self.by_mask.get((lb, fp, w), p) for lb, fp, w, p in parts}
                    res = {**res, "ppls": ppls, "ppl": geometric_mean(ppls.values())}
                for part in parts:
                    self._remember(*part)
            yield res

    def preload(self, records: list[dict]) -> None:
        """Resume: parts already measured answer from the cache again (as ``InProcess.preload``)."""
        for r in records:
            for part in part_records(r):
                self._remember(*part)
        self._sync()

    def close(self) -> None:
        """Stop the workers (their models and memory go with them)."""
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
