"""The GP loop: DEAP variation, simplification of every offspring, cached fitness, elitism, hall of fame,
a JSONL line per evaluation, a JSON checkpoint per generation, and resume.

This module knows nothing about tensors: fitness comes from ``evaluate_many(formulas) -> iterator of dicts``
(in-process or a Ray actor pool, see ``search.workers``), in the order given; with ``fitness.fidelity``,
``evaluate_many(formulas, windows=N)`` (and ``seeds=K`` when ``fitness.fidelity.seeds`` is set).

A record of a scored run (evaluator results with per-part ``ppls``) holds, besides the candidate's formula fields:
``ppls`` (part label "<model>|<setting slug>" -> perplexity at the fidelity reached), ``ppl`` (their geometric
mean), ``score`` (``combine_scores`` against the reference), ``fitness`` (what selection minimises: the score plus
``FIDELITY_GAP`` per fidelity level not reached), ``fidelity`` (windows the score is on; null = all), ``level``
(index into ``fitness.fidelity.windows``), ``stages`` (multi-fidelity: one entry per fidelity scored, with its
windows, ppls, per-part mask fingerprints ``parts``, score, hit, seconds) or ``parts`` (one fidelity), and
``origin`` (``local:<key>``) when the local search (``gp.local``) proposed it as a neighbour of that key. Records
of older runs (``ppl`` only) still read and show; such runs cannot be resumed by this version.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator

from deap import algorithms, tools
from tqdm.auto import tqdm

from ..errors import UserError
from ..fsutil import atomic_write_text
from ..metric.simplify import simplify
from .genes import join_candidate, split_candidate
from .runs import RECORD_KEYS, RunFiles, candidate_of, load_run_space, read_evaluations, run_state
from .scoring import (ANSWER_KEYS, FIDELITY_GAP, RETRY_FITNESS, audit_selected, combine_scores, fidelity_selected,
                      fitness_value)
from .space import SearchSpace, reference_formula
from .toolbox import build_pset, build_toolbox, first_of_each_fitness, neighbours, text_of, to_individual

HOF_SIZE = 30
KEY_AUDIT_EVERY = 10  # about one key hit in this many is also evaluated and its mask fingerprint compared

EvaluateMany = Callable[[list[str]], Iterator[dict]]

# the run folder's and the scoring's names, importable from here as before the split into runs.py / scoring.py
__all__ = ["Search", "EvaluateMany", "HOF_SIZE", "KEY_AUDIT_EVERY", "RECORD_KEYS", "RunFiles", "candidate_of",
           "load_run_space", "read_evaluations", "run_state", "ANSWER_KEYS", "FIDELITY_GAP", "RETRY_FITNESS",
           "audit_selected", "combine_scores", "fidelity_selected", "fitness_value"]


def _signature(rec: dict) -> str | None:
    """What identifies a real evaluation's masks: the mask fingerprint, or the error that stopped it."""
    if rec["hit"] not in ("eval", "mask", "error") or rec.get("retryable"):
        return None
    return rec.get("fingerprint") or f"error:{rec.get('error')}"


class Search:
    """The GP loop. Fitness (``space.fitness``), as the engine scores it:

    * parts: every model of ``fitness.models`` at every setting of ``fitness.settings``; the evaluator returns a
      perplexity per part (``ppls``);
    * score: ``combine_scores``: mean (or ``worst``: max) over parts of log(ppl / the reference metric's ppl at
      the same part and fidelity). The reference (``fitness.reference``, default wanda) is measured once per run
      at every fidelity and kept in ``references.json``; a resume reuses it;
    * fidelity (``fitness.fidelity: {windows: [2, 8, null], keep: 0.5}``): each generation's new candidates are
      scored on the first 2 fitness windows; the best ``keep`` fraction of them (by that score, ties by order) on
      8; the best ``keep`` of those on all. Selection compares like with like: a candidate's ``fitness`` is its
      score at the highest level it reached plus ``FIDELITY_GAP`` per level it missed, so every candidate that
      reached a higher level ranks before every one that did not (it is ranked by its score within its level).
      ``fitness.fidelity.seeds: [1, null]`` (with several ``calib_seed``) also scores the low levels with the first
      seed(s) only, each against the reference at the same seeds; the full level is every window and every seed
      (the key audit, which compares first-level masks, then compares the first seed's);
      A ``fitness.fidelity.audit`` fraction is scored at every level for the record only (benchmarks/fidelity.py);
    * local search (``gp.local``): after each generation's evaluation, ``_local`` evaluates the neighbourhood of the
      best full-fidelity candidate(s) not expanded before (``toolbox.neighbours``) and lets the best neighbours
      replace the population's worst;
    * evaluators that return no ``ppls`` (one plain perplexity) are ranked by ``ppl`` as before.
    """

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
        self.genes = space.allocation is not None   # an allocation gene is evolved with the formula
        self.by_text: dict[str, float] = {}
        self.by_key: dict[str, float] = {}
        self.answers: dict[str, dict] = {}      # "text:"/"key:" + text/key -> the answer fields a cache hit copies
        self.hof: dict[str, dict] = {}
        self.counts: Counter = Counter()
        self.by_key_sig: dict[str, str] = {}   # key -> mask fingerprint (or error) of its first real evaluation
        self.audit: Counter = Counter()         # key hits re-evaluated: checked, mismatch
        self.key_audit_every = KEY_AUDIT_EVERY
        self.wall = 0.0
        fit = space.fitness
        self.fidelity = fit.get("fidelity")
        self.levels: list = list(self.fidelity["windows"]) if self.fidelity else [None]
        self.seed_levels: list | None = self.fidelity.get("seeds") if self.fidelity else None
        self.combine = fit.get("combine", "mean")
        self.references: dict[str, dict] | None = None   # str(level) -> {ppls, parts, windows}
        self.expanded: list[str] = []           # keys whose neighbourhood the local search has evaluated (gp.local)

    # ------------------------------------------------------------------------------------------ evaluation
    def _log(self, rec: dict) -> None:
        with self.files.evaluations.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        self._absorb(rec)

    def _absorb(self, rec: dict) -> None:
        """Count a record and fold it into the caches and the hall of fame (distinct ranking keys)."""
        self.counts[rec["hit"]] += 1
        if "audit" in rec:
            self.audit["checked"] += 1
            self.audit["mismatch"] += not rec["audit"]["match"]
        if rec.get("retryable"):  # a transient failure (out of memory) is not cached: the formula is tried again
            return
        value = fitness_value(rec)
        answer = {k: rec[k] for k in ANSWER_KEYS if k in rec}
        self.by_text.setdefault(candidate_of(rec), value)
        self.by_key.setdefault(rec["key"], value)
        self.answers.setdefault("text:" + candidate_of(rec), answer)
        self.answers.setdefault("key:" + rec["key"], answer)
        sig = _signature(rec)
        if sig is not None:
            self.by_key_sig.setdefault(rec["key"], sig)
        best = self.hof.get(rec["key"])
        if rec["hit"] != "error" and (best is None or value < fitness_value(best)):
            self.hof[rec["key"]] = {k: rec[k] for k in ("formula", "allocation", "simplified", "latex", "size",
                                                         "depth", "ppl", "generation", "key") + ANSWER_KEYS[1:]
                                    if k in rec}

    def _stage(self, texts: list[str], level: int):
        if self.fidelity is None:   # the evaluate_many(formulas) contract of a one-fidelity run
            return self.evaluate_many(texts)
        if self.seed_levels is None:
            return self.evaluate_many(texts, windows=self.levels[level])
        return self.evaluate_many(texts, windows=self.levels[level], seeds=self.seed_levels[level])

    def _scored(self, res: dict, level: int) -> dict:
        """One stage of a candidate: its result at one fidelity, with its score when the result has parts."""
        st = {"windows": self.levels[level], "ppl": float(res["ppl"]), "hit": res["hit"],
              "seconds": round(float(res["seconds"]), 3), "fingerprint": res.get("fingerprint"),
              "error": res.get("error")}
        if self.seed_levels is not None:
            st["seeds"] = self.seed_levels[level]
        if res.get("retryable"):
            st["retryable"] = True
        if res.get("ppls"):
            refs = None
            if self.references is not None:
                refs = self.references[str(level)]["ppls"]
            st.update(ppls=res["ppls"], parts=res.get("parts"), score=combine_scores(res["ppls"], refs, self.combine))
        return st

    def _record(self, base: dict, stages: list[dict], reached: int) -> dict:
        """The log record of a candidate from its stages (one per fidelity it was scored at)."""
        top = stages[reached]
        errors = [st for st in stages[: reached + 1] if st["hit"] == "error"]
        rec = {**base, "ppl": top["ppl"], "seconds": round(sum(st["seconds"] for st in stages), 3),
               "hit": "error" if errors else stages[0]["hit"], "fingerprint": stages[0]["fingerprint"],
               "error": errors[0]["error"] if errors else None}
        if any(st.get("retryable") for st in stages):
            rec["retryable"] = True
        if "score" in top:
            rec.update(score=top["score"], fitness=top["score"] + FIDELITY_GAP * (len(self.levels) - 1 - reached),
                       ppls=top["ppls"], fidelity=top["windows"], level=reached)
        elif "ppls" in stages[0] or self.references is not None or rec.get("retryable"):
            rec.update(score=None, fitness=RETRY_FITNESS, fidelity=top["windows"], level=reached)
        if len(self.levels) > 1:
            rec["stages"] = stages
        elif top.get("parts"):
            rec["parts"] = top["parts"]
        return rec

    def _promote(self, items: list[dict]) -> None:
        """Successive halving over this generation's new candidates: the best ``keep`` fraction at each fidelity
        (score, ties by position) is scored at the next; audited ones at every fidelity, for the record."""
        if len(self.levels) == 1:
            return
        keep = self.fidelity["keep"]
        frac = self.fidelity.get("audit", 0.0)
        seed = self.space.gp["seed"]

        def ok(it, level):
            st = it["stages"][level] if len(it["stages"]) > level else None
            return st is not None and st["hit"] != "error" and not st.get("retryable") and "score" in st

        pool = [it for it in items if not it["audit"] and ok(it, 0)]
        extra = [it for it in items if not it["audit"] and fidelity_selected(it["text"], seed, frac) and ok(it, 0)]
        for level in range(1, len(self.levels)):
            pool.sort(key=lambda it: (it["stages"][level - 1]["score"], it["index"]))
            promoted = pool[: max(1, math.ceil(keep * len(pool)))] if pool else []
            ids = {it["index"] for it in promoted}
            extra = [it for it in extra if it["index"] not in ids and ok(it, level - 1)]
            batch = sorted(promoted + extra, key=lambda it: it["index"])
            if not batch:
                break
            results = tqdm(self._stage([it["text"] for it in batch], level), total=len(batch), leave=False,
                           position=1, desc=f"fidelity {self.levels[level] or 'all'}", disable=not self.progress)
            for it, res in zip(batch, results):
                it["stages"].append(self._scored(res, level))
                if it["index"] in ids:
                    it["reached"] = level
            pool = [it for it in promoted if ok(it, level)]

    def evaluate(self, individuals: list, generation: int, origin: str | None = None) -> None:
        """Fitness for every individual without one: from the text or key caches, else from ``evaluate_many``
        (at every fidelity it is promoted to, see the class docstring).

        A deterministic sample of key hits (``audit_selected``) is evaluated too (at the first fidelity) and its
        mask fingerprint compared with the one its key's first evaluation gave; a mismatch (an unsound key) is
        reported, counted, and the real result is kept. Transient failures (``retryable``) give this generation
        the penalty but are cached nowhere. ``origin`` (the local search's ``local:<key>``) is written into each
        record."""
        todo = [ind for ind in individuals if not ind.fitness.valid]
        pending: list[dict] = []
        waiting: dict[str, list] = {}
        queued: set[str] = set()
        seed = self.space.gp["seed"]
        for ind in todo:
            text = text_of(ind)
            formula, slug = split_candidate(text)
            simp = simplify(formula)
            key = join_candidate(simp.key, slug)   # a gene other than uniform is part of what is evaluated
            base = {"generation": generation, "formula": formula, "simplified": simp.text, "latex": simp.latex,
                    "key": key, "size": len(ind), "depth": ind.height + 1}
            if self.genes:
                base["allocation"] = slug
            if origin is not None:
                base["origin"] = origin
            known = key in self.by_key or key in waiting
            if text in self.by_text:
                self._log({**base, **self.answers["text:" + text], "seconds": 0.0, "hit": "text"})
            elif known and text not in queued and audit_selected(text, seed, self.key_audit_every):
                queued.add(text)
                pending.append({"text": text, "base": base, "audit": True})
            elif key in self.by_key:
                self._log({**base, **self.answers["key:" + key], "seconds": 0.0, "hit": "key"})
            elif key in waiting:
                waiting[key].append(base)
            else:
                waiting[key] = []
                queued.add(text)
                pending.append({"text": text, "base": base, "audit": False})
        for i, it in enumerate(pending):
            it.update(index=i, stages=[], reached=0)
        results = tqdm(self._stage([it["text"] for it in pending], 0), total=len(pending), leave=False,
                       position=1, desc=f"generation {generation}: candidates", disable=not self.progress)
        this_gen: dict[str, float] = {}
        one_level = len(self.levels) == 1
        for it, res in zip(pending, results):
            it["stages"].append(self._scored(res, 0))
            if one_level:   # logged as it arrives
                self._finish(it, waiting, this_gen)
        if not one_level:
            self._promote(pending)
            for it in pending:
                self._finish(it, waiting, this_gen)
        for ind in todo:
            ind.fitness.values = (self.by_text.get(text_of(ind), this_gen.get(text_of(ind))),)

    def _finish(self, it: dict, waiting: dict, this_gen: dict) -> None:
        base, audit = it["base"], it["audit"]
        rec = self._record(base, it["stages"][:1] if audit else it["stages"], 0 if audit else it["reached"])
        if audit:
            rec = self._audited(rec)
        self._log(rec)
        this_gen[it["text"]] = fitness_value(rec)
        for other in [] if audit else waiting.get(base["key"], []):
            if rec.get("retryable"):  # not evaluated either: as transient as the failure it waited on
                self._log({**other, **{k: rec[k] for k in ANSWER_KEYS if k in rec}, "seconds": 0.0, "hit": "error",
                           "error": rec["error"], "retryable": True})
            else:
                hit = "text" if candidate_of(other) in self.by_text else "key"
                self._log({**other, **self.answers["key:" + base["key"]], "seconds": 0.0, "hit": hit})
            this_gen.setdefault(candidate_of(other), fitness_value(rec))

    def _audited(self, rec: dict) -> dict:
        """An audited key hit: the key's answer if the masks agree, else the real result, reported loudly."""
        expected = self.by_key_sig.get(rec["key"])
        got = _signature(rec)
        drop = ("retryable", "error", "fingerprint", "stages", "parts")
        if rec.get("retryable") and rec["key"] in self.by_key:  # the audit failed transiently: a plain key hit
            return {k: v for k, v in rec.items() if k not in drop} | self.answers["key:" + rec["key"]] | \
                {"hit": "key", "seconds": 0.0}
        if expected is None or got is None:  # nothing to compare with: the record stands as a real evaluation
            return rec
        if got == expected:
            return {k: v for k, v in rec.items() if k not in ("stages", "parts")} | self.answers["key:" + rec["key"]] \
                | {"hit": "key", "audit": {"match": True, "checked_hit": rec["hit"], "seconds": rec["seconds"]}}
        tqdm.write(f"KEY AUDIT MISMATCH: {rec['formula']} shares key {rec['key']} but its masks differ "
                   f"({got} vs {expected}); keeping its real fitness {fitness_value(rec):.4f}, not the key's "
                   f"{self.by_key[rec['key']]:.4f}")
        return {**rec, "audit": {"match": False, "expected": expected}}

    # ------------------------------------------------------------------------------------------ references
    def _references(self, reuse: bool) -> None:
        """The reference metric's perplexity per part at every fidelity: measured once per run (not logged as
        candidates) and kept in references.json; a resume reads it back and preloads its masks."""
        ref = reference_formula(self.space.fitness)
        path = self.files.references
        if ref is None:
            return
        if reuse and path.is_file():
            seeds = self.seed_levels or [None] * len(self.levels)
            try:
                data = json.loads(path.read_text())
                levels = data["levels"]
                # (files written before fitness.fidelity.seeds existed have no "seeds")
                recorded = [(lv["windows"], lv.get("seeds", k)) for lv, k in zip(levels.values(), seeds)]
            except (ValueError, KeyError, TypeError, AttributeError):
                raise UserError(f"{path} is unreadable: restore it, or start a new run") from None
            if data.get("formula") != ref or recorded != list(zip(self.levels, seeds)) or len(levels) != len(seeds):
                raise UserError(f"{path} does not match this run's fitness settings: restore it, or start a new run")
            self.references = levels
            if self.on_resume:
                self.on_resume(list(levels.values()))
            return
        out = {}
        for level in range(len(self.levels)):
            res = next(iter(self._stage([ref], level)))
            if not res.get("ppls"):   # an evaluator without parts: plain perplexity ranking, no references
                return
            if res["hit"] == "error":
                raise UserError(f"the reference metric {self.space.fitness['reference']} fails on this fitness "
                                f"({res.get('error')}): choose another fitness.reference")
            out[str(level)] = {"windows": self.levels[level], "ppls": res["ppls"], "parts": res.get("parts"),
                               "hit": "eval", "seconds": round(float(res["seconds"]), 3)}
            if self.seed_levels is not None:
                out[str(level)]["seeds"] = self.seed_levels[level]
        self.references = out
        atomic_write_text(path, json.dumps({"reference": self.space.fitness["reference"], "formula": ref,
                                            "combine": self.combine, "levels": out}, indent=2) + "\n")

    def _simplify_offspring(self, offspring: Iterable) -> None:
        """Replace an offspring by its simplified form when that is smaller and expressible in the space.

        ``simplify(...).text`` uses exact float32 rewrites only (its scores equal the original's elementwise), so
        the replaced individual is the formula that gets evaluated, with the fitness the original would get."""
        for ind in offspring:
            if ind.fitness.valid:
                continue
            simp = simplify(str(ind))
            if simp.text != str(ind) and self.space.allows(simp.text):
                new = to_individual(simp.text, self.pset)
                if len(new) < len(ind):
                    ind[0:len(ind)] = new

    # ------------------------------------------------------------------------------------------ local search
    def _local(self, pop: list, generation: int) -> list:
        """The local search (``gp.local``, a memetic step after each generation's evaluation): the best ``top``
        hall-of-fame candidates that reached the full fidelity and were not expanded before have their whole
        neighbourhood (``toolbox.neighbours``: leaf replacements and unary wraps) evaluated in this generation,
        through the same caches and fidelity funnel as offspring (records carry ``origin: local:<key>``); the
        neighbourhood is cut to ``max`` candidates by a seeded hash, not by position. The best ``elites``
        distinct neighbours then replace the population's worst individuals where they are better, so a good
        neighbour is a parent (and an elite) from the next generation on. No RNG is drawn: the GP's stream is that
        of a run without it, and resume is exact (``expanded`` is checkpointed)."""
        cfg = self.space.gp.get("local")
        if not cfg:
            return pop
        full = len(self.levels) - 1
        chosen = [r for r in self.best(len(self.hof)) if r["key"] not in self.expanded
                  and fitness_value(r) < RETRY_FITNESS and r.get("level", full) == full][: cfg["top"]]
        seed = self.space.gp["seed"]
        found: list = []
        for rec in chosen:
            self.expanded.append(rec["key"])
            slug = rec.get("allocation")
            texts = [join_candidate(t, slug) for t in neighbours(rec["formula"], self.space, cfg["depth"],
                                                                 cfg["moves"], cfg["binary"])]
            texts = [t for t in texts if t not in self.by_text]
            if len(texts) > cfg["max"]:
                keep = set(sorted(texts, key=lambda t: hashlib.sha1(f"local:{seed}:{t}".encode()).digest())
                           [: cfg["max"]])
                texts = [t for t in texts if t in keep]
            if not texts:
                continue
            inds = [to_individual(t, self.pset, self.genes) for t in texts]
            self.evaluate(inds, generation, origin=f"local:{rec['key']}")
            found += inds
        if not found:
            return pop
        best = tools.selBest(first_of_each_fitness(found), self.space.gp["elites"])
        order = sorted(range(len(pop)), key=lambda i: (-pop[i].fitness.values[0], -i))   # worst first
        pop = list(pop)
        for ind, i in zip(best, order):
            if ind.fitness.values[0] < pop[i].fitness.values[0]:
                pop[i] = ind
        return pop

    # ------------------------------------------------------------------------------------------ state
    def _checkpoint(self, generation: int, population: list) -> None:
        state = {"generation": generation, "population": [text_of(i) for i in population],
                 "fitness": [i.fitness.values[0] for i in population],
                 "random_state": list(random.getstate()), "counts": dict(self.counts),
                 "hall_of_fame": self.best(HOF_SIZE), "wall_seconds": round(self.wall, 1)}
        if self.space.gp.get("local"):
            state["expanded"] = list(self.expanded)
        atomic_write_text(self.files.checkpoint, json.dumps(state) + "\n")

    def _refuse_older_run(self) -> None:
        try:
            fit = json.loads(self.files.config.read_text())["space"]["fitness"]
        except (OSError, ValueError, KeyError, TypeError):
            return   # _restore says what is missing
        if "reference" not in fit:
            raise UserError(f"{self.files.root} was written by an older prunerzero (one-setting perplexity fitness): "
                            "prunerzero show reads it; start a new run to search with this version")

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
            ind = to_individual(text, self.pset, self.genes)
            ind.fitness.values = (fit,)
            pop.append(ind)
        version, internal, gauss = state["random_state"]
        random.setstate((version, tuple(internal), gauss))
        self.wall = state.get("wall_seconds", 0.0)
        self.expanded = list(state.get("expanded", []))
        return gen, pop

    def best(self, n: int = 10) -> list[dict]:
        return sorted(self.hof.values(), key=lambda r: (fitness_value(r), r["size"], r["formula"]))[:n]

    # ------------------------------------------------------------------------------------------ loop
    def run(self, resume: bool = False, max_seconds: float | None = None) -> list[dict]:
        """Evolve to ``gp.generations``; with ``max_seconds``, stop at the first generation boundary where the time
        spent plus the generation just finished (the next one's expected length) passes that wall time, so the
        run ends within it unless a generation is much longer than the one before (checkpointed: ``--resume``
        continues it exactly as if it had never stopped).

        ``resume`` on a run that stopped before its first checkpoint restarts it from generation 0 with its
        recorded settings (the partial log is discarded; the result is that of an uninterrupted run)."""
        gp_cfg = self.space.gp
        started = time.time()
        last = gp_cfg["generations"]
        self.files.root.mkdir(parents=True, exist_ok=True)
        asked = resume
        if resume and run_state(self.files.root) == "unstarted":
            tqdm.write(f"note: {self.files.root} stopped before its first checkpoint: restarting it from "
                       "generation 0 with its recorded settings", file=sys.stderr)
            self.files.evaluations.write_text("")
            resume = False
        if resume:
            self._refuse_older_run()
            self._references(reuse=True)
            start, pop = self._restore()
            start += 1
        else:
            if self.files.evaluations.exists() and self.files.evaluations.stat().st_size:
                raise UserError(f"{self.files.root} already holds a search: pass --resume or a new --out")
            self._references(reuse=asked)   # a restart of an unstarted run keeps its references
            atomic_write_text(self.files.config, json.dumps({"space": self.space.raw, "meta": self.meta}, indent=2))
            self.files.evaluations.write_text("")
            random.seed(gp_cfg["seed"])
            pop = [to_individual(s, self.pset, self.genes) for s in self.space.seeds[: gp_cfg["population"]]]
            pop += self.toolbox.population(n=gp_cfg["population"] - len(pop))
            start = 0
        bar = tqdm(range(start, gp_cfg["generations"] + 1), desc="search", disable=not self.progress,
                   initial=start, total=gp_cfg["generations"] + 1)
        for gen in bar:
            t0 = time.time()
            if gen > 0:
                parents = self.toolbox.select(pop, len(pop))
                elites = tools.selBest(first_of_each_fitness(pop) if gp_cfg["distinct_parents"] else pop,
                                       gp_cfg["elites"])
                offspring = algorithms.varAnd(parents, self.toolbox, gp_cfg["cxpb"], gp_cfg["mutpb"])
                self._simplify_offspring(offspring)
                self.evaluate(offspring, gen)
                pop = [self.toolbox.clone(e) for e in elites] + offspring[: len(pop) - len(elites)]
            else:
                self._simplify_offspring(pop)
                self.evaluate(pop, gen)
            pop = self._local(pop, gen)
            took = time.time() - t0
            self.wall += took
            self._checkpoint(gen, pop)
            top = self.best(1)
            if top:
                score = f"score {top[0]['score']:.4f}, " if top[0].get("score") is not None else ""
                bar.set_postfix_str(f"best {score}ppl {top[0]['ppl']:.3f} {top[0]['simplified']}")
            last = gen
            if max_seconds is not None and time.time() - started + took > max_seconds and gen < gp_cfg["generations"]:
                tqdm.write(f"time budget: another generation would end past it; stopped after generation {gen}: "
                           f"continue with --resume {self.files.root}")
                break
        bar.close()
        summary = {"best": self.best(1)[0] if self.hof else None, "hall_of_fame": self.best(HOF_SIZE),
                   "counts": {**self.counts, "key_audit": {"checked": self.audit["checked"],
                                                           "mismatch": self.audit["mismatch"]}},
                   "evaluations": sum(self.counts.values()),
                   "generations_done": last, "complete": last >= gp_cfg["generations"],
                   "wall_seconds": round(self.wall, 1), "meta": self.meta,
                   "references": None if self.references is None else
                   {lv: r["ppls"] for lv, r in self.references.items()}}
        atomic_write_text(self.files.summary, json.dumps(summary, indent=2) + "\n")
        return self.best(HOF_SIZE)
