"""The GP loop: DEAP variation, simplification of every offspring, cached fitness, elitism, hall of fame,
a JSONL line per evaluation, a JSON checkpoint per generation, and resume.

This module knows nothing about tensors: fitness comes from ``evaluate_many(formulas) -> iterator of dicts``
(in-process or a Ray actor pool, see ``search.workers``), in the order given.
"""
from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from deap import algorithms, tools
from tqdm.auto import tqdm

from ..errors import UserError
from ..fsutil import atomic_write_text
from ..metric.simplify import simplify
from .space import SearchSpace, validate
from .toolbox import build_pset, build_toolbox, to_individual

HOF_SIZE = 30

EvaluateMany = Callable[[list[str]], Iterator[dict]]


@dataclass
class RunFiles:
    root: Path

    @property
    def evaluations(self) -> Path:
        return self.root / "evaluations.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.json"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"


RECORD_KEYS = ("generation", "formula", "simplified", "latex", "key", "size", "depth", "ppl", "hit")


def read_evaluations(root: str | Path, quiet: bool = False) -> list[dict]:
    """The run's log, one record per line. A torn *last* line (the run was killed mid-write) is dropped with a
    note; any other unreadable line is refused with its line number."""
    path = RunFiles(Path(root)).evaluations
    if not path.is_file():
        raise UserError(f"{root} holds no evaluations.jsonl: pass a search run directory")
    lines = path.read_text().split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or any(k not in rec for k in RECORD_KEYS) \
                    or not isinstance(rec["ppl"], (int, float)) or not isinstance(rec["generation"], int):
                raise ValueError("not an evaluation record")
        except ValueError:
            if i == len(lines):
                if not quiet:
                    tqdm.write(f"note: dropped the torn last line {i} of {path} (the run stopped mid-write)",
                               file=sys.stderr)
                break
            raise UserError(f"{path} line {i} is not an evaluation record: the log is corrupt; "
                            "restore it from a copy or start a new run") from None
        out.append(rec)
    return out


def run_state(root: str | Path) -> str:
    """'empty' (no run here), 'unstarted' (settings written, no checkpoint yet) or 'checkpointed'."""
    files = RunFiles(Path(root))
    if files.checkpoint.is_file():
        return "checkpointed"
    has_log = files.evaluations.is_file() and files.evaluations.stat().st_size > 0
    return "unstarted" if files.config.is_file() or has_log else "empty"


class Search:
    def __init__(self, space: SearchSpace, out_dir: str | Path, evaluate_many: EvaluateMany,
                 meta: dict | None = None, progress: bool = True, on_resume: Callable[[list[dict]], None] | None = None):
        self.space = space
        self.files = RunFiles(Path(out_dir))
        self.evaluate_many = evaluate_many
        self.meta = meta or {}
        self.progress = progress
        self.on_resume = on_resume
        self.pset = build_pset(space)
        self.toolbox = build_toolbox(space, self.pset)
        self.by_text: dict[str, float] = {}
        self.by_key: dict[str, float] = {}
        self.hof: dict[str, dict] = {}
        self.counts: Counter = Counter()
        self.wall = 0.0

    # ------------------------------------------------------------------------------------------ evaluation
    def _log(self, rec: dict) -> None:
        with self.files.evaluations.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        self._absorb(rec)

    def _absorb(self, rec: dict) -> None:
        """Count a record and fold it into the caches and the hall of fame (distinct ranking keys)."""
        self.counts[rec["hit"]] += 1
        self.by_text.setdefault(rec["formula"], rec["ppl"])
        self.by_key.setdefault(rec["key"], rec["ppl"])
        best = self.hof.get(rec["key"])
        if rec["hit"] != "error" and (best is None or rec["ppl"] < best["ppl"]):
            self.hof[rec["key"]] = {k: rec[k] for k in ("formula", "simplified", "latex", "size", "depth", "ppl",
                                                         "generation", "key")}

    def evaluate(self, individuals: list, generation: int) -> None:
        todo = [ind for ind in individuals if not ind.fitness.valid]
        pending: list[tuple[str, object]] = []
        waiting: dict[str, list] = {}
        for ind in todo:
            text = str(ind)
            simp = simplify(text)
            base = {"generation": generation, "formula": text, "simplified": simp.text, "latex": simp.latex,
                    "key": simp.key, "size": len(ind), "depth": ind.height + 1}
            if text in self.by_text:
                self._log({**base, "ppl": self.by_text[text], "seconds": 0.0, "hit": "text"})
            elif simp.key in self.by_key:
                self._log({**base, "ppl": self.by_key[simp.key], "seconds": 0.0, "hit": "key"})
            elif simp.key in waiting:
                waiting[simp.key].append(base)
            else:
                waiting[simp.key] = []
                pending.append((text, base))
        results = tqdm(self.evaluate_many([t for t, _ in pending]), total=len(pending), leave=False, position=1,
                       desc=f"generation {generation}: candidates", disable=not self.progress)
        for (text, base), res in zip(pending, results):
            rec = {**base, "ppl": float(res["ppl"]), "seconds": round(float(res["seconds"]), 3), "hit": res["hit"],
                   "fingerprint": res.get("fingerprint"), "error": res.get("error")}
            self._log(rec)
            for other in waiting.get(base["key"], []):
                hit = "text" if other["formula"] in self.by_text else "key"
                self._log({**other, "ppl": rec["ppl"], "seconds": 0.0, "hit": hit})
        for ind in todo:
            ind.fitness.values = (self.by_text[str(ind)],)

    def _simplify_offspring(self, offspring: Iterable) -> None:
        """Replace an offspring by its simplified form when that is smaller and expressible in the space."""
        for ind in offspring:
            if ind.fitness.valid:
                continue
            simp = simplify(str(ind))
            if simp.text != str(ind) and self.space.allows(simp.text):
                new = to_individual(simp.text, self.pset)
                if len(new) < len(ind):
                    ind[0:len(ind)] = new

    # ------------------------------------------------------------------------------------------ state
    def _checkpoint(self, generation: int, population: list) -> None:
        state = {"generation": generation, "population": [str(i) for i in population],
                 "fitness": [i.fitness.values[0] for i in population],
                 "random_state": list(random.getstate()), "counts": dict(self.counts),
                 "hall_of_fame": self.best(HOF_SIZE), "wall_seconds": round(self.wall, 1)}
        atomic_write_text(self.files.checkpoint, json.dumps(state) + "\n")

    def _restore(self) -> tuple[int, list]:
        if not self.files.checkpoint.is_file():
            raise UserError(f"{self.files.root} has no checkpoint.json: start a new search instead of --resume")
        try:
            state = json.loads(self.files.checkpoint.read_text())
        except ValueError:
            raise UserError(f"{self.files.checkpoint} is not valid JSON: restore it or start a new run") from None
        gen = state["generation"]
        kept = [r for r in read_evaluations(self.files.root) if r["generation"] <= gen]
        atomic_write_text(self.files.evaluations, "".join(json.dumps(r) + "\n" for r in kept))
        for rec in kept:
            self._absorb(rec)
        if self.on_resume:
            self.on_resume(kept)
        pop = []
        for text, fit in zip(state["population"], state["fitness"]):
            ind = to_individual(text, self.pset)
            ind.fitness.values = (fit,)
            pop.append(ind)
        version, internal, gauss = state["random_state"]
        random.setstate((version, tuple(internal), gauss))
        self.wall = state.get("wall_seconds", 0.0)
        return gen, pop

    def best(self, n: int = 10) -> list[dict]:
        return sorted(self.hof.values(), key=lambda r: (r["ppl"], r["size"], r["formula"]))[:n]

    # ------------------------------------------------------------------------------------------ loop
    def run(self, resume: bool = False, max_seconds: float | None = None) -> list[dict]:
        """Evolve to ``gp.generations``; with ``max_seconds``, stop after the first generation that ends past that
        wall time (checkpointed: ``--resume`` continues it exactly as if it had never stopped).

        ``resume`` on a run that stopped before its first checkpoint restarts it from generation 0 with its
        recorded settings (the partial log is discarded; the result is that of an uninterrupted run)."""
        gp_cfg = self.space.gp
        started = time.time()
        last = gp_cfg["generations"]
        self.files.root.mkdir(parents=True, exist_ok=True)
        if resume and run_state(self.files.root) == "unstarted":
            tqdm.write(f"note: {self.files.root} stopped before its first checkpoint: restarting it from "
                       "generation 0 with its recorded settings", file=sys.stderr)
            self.files.evaluations.write_text("")
            resume = False
        if resume:
            start, pop = self._restore()
            start += 1
        else:
            if self.files.evaluations.exists() and self.files.evaluations.stat().st_size:
                raise UserError(f"{self.files.root} already holds a search: pass --resume or a new --out")
            atomic_write_text(self.files.config, json.dumps({"space": self.space.raw, "meta": self.meta}, indent=2))
            self.files.evaluations.write_text("")
            random.seed(gp_cfg["seed"])
            pop = [to_individual(s, self.pset) for s in self.space.seeds[: gp_cfg["population"]]]
            pop += self.toolbox.population(n=gp_cfg["population"] - len(pop))
            start = 0
        bar = tqdm(range(start, gp_cfg["generations"] + 1), desc="search", disable=not self.progress,
                   initial=start, total=gp_cfg["generations"] + 1)
        for gen in bar:
            t0 = time.time()
            if gen > 0:
                parents = self.toolbox.select(pop, len(pop))
                offspring = algorithms.varAnd(parents, self.toolbox, gp_cfg["cxpb"], gp_cfg["mutpb"])
                self._simplify_offspring(offspring)
                self.evaluate(offspring, gen)
                elites = tools.selBest(pop, gp_cfg["elites"])
                pop = [self.toolbox.clone(e) for e in elites] + offspring[: len(pop) - len(elites)]
            else:
                self._simplify_offspring(pop)
                self.evaluate(pop, gen)
            self.wall += time.time() - t0
            self._checkpoint(gen, pop)
            top = self.best(1)
            if top:
                bar.set_postfix_str(f"best ppl {top[0]['ppl']:.3f} {top[0]['simplified']}")
            last = gen
            if max_seconds is not None and time.time() - started > max_seconds and gen < gp_cfg["generations"]:
                tqdm.write(f"time budget spent after generation {gen}: continue with --resume {self.files.root}")
                break
        bar.close()
        summary = {"best": self.best(1)[0] if self.hof else None, "hall_of_fame": self.best(HOF_SIZE),
                   "counts": dict(self.counts), "evaluations": sum(self.counts.values()),
                   "generations_done": last, "complete": last >= gp_cfg["generations"],
                   "wall_seconds": round(self.wall, 1), "meta": self.meta}
        atomic_write_text(self.files.summary, json.dumps(summary, indent=2) + "\n")
        return self.best(HOF_SIZE)


def load_run_space(run_dir: str | Path) -> tuple[SearchSpace, dict]:
    files = RunFiles(Path(run_dir))
    if not files.config.is_file():
        raise UserError(f"{run_dir} has no config.json: pass a search run directory")
    try:
        cfg = json.loads(files.config.read_text())
        raw, meta = cfg["space"], cfg.get("meta", {})
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{files.config} is not a run's settings file: restore it, or start a new run") from None
    return validate(raw, str(files.config)), meta
