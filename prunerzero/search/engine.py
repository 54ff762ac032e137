"""The GP loop: DEAP variation, simplification of every offspring, cached fitness, elitism, hall of fame,
a JSONL line per evaluation, a JSON checkpoint per generation, and resume.

This module knows nothing about tensors: fitness comes from ``evaluate_many(formulas) -> iterator of dicts``
(in-process or a Ray actor pool, see ``search.workers``), in the order given.
"""
from __future__ import annotations

import hashlib
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
KEY_AUDIT_EVERY = 10  # about one key hit in this many is also evaluated and its mask fingerprint compared

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


def audit_selected(text: str, seed: int, every: int) -> bool:
    """Whether a key hit is audited: a hash of the run seed and the formula text (no RNG state, so resume is
    exact and DEAP's global ``random`` is untouched)."""
    if every <= 0:
        return False
    digest = hashlib.sha1(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % every == 0


def _signature(rec: dict) -> str | None:
    """What identifies a real evaluation's masks: the mask fingerprint, or the error that stopped it."""
    if rec["hit"] not in ("eval", "mask", "error") or rec.get("retryable"):
        return None
    return rec.get("fingerprint") or f"error:{rec.get('error')}"



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
        self.by_key_sig: dict[str, str] = {}   # key -> mask fingerprint (or error) of its first real evaluation
        self.audit: Counter = Counter()         # key hits re-evaluated: checked, mismatch
        self.key_audit_every = KEY_AUDIT_EVERY
        self.wall = 0.0

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
        self.by_text.setdefault(rec["formula"], rec["ppl"])
        self.by_key.setdefault(rec["key"], rec["ppl"])
        sig = _signature(rec)
        if sig is not None:
            self.by_key_sig.setdefault(rec["key"], sig)
        best = self.hof.get(rec["key"])
        if rec["hit"] != "error" and (best is None or rec["ppl"] < best["ppl"]):
            self.hof[rec["key"]] = {k: rec[k] for k in ("formula", "simplified", "latex", "size", "depth", "ppl",
                                                         "generation", "key")}

    def evaluate(self, individuals: list, generation: int) -> None:
        """Fitness for every individual without one: from the text or key caches, else from ``evaluate_many``.

        A deterministic sample of key hits (``audit_selected``) is evaluated too and its mask fingerprint
        compared with the one its key's first evaluation gave; a mismatch (an unsound key) is reported, counted,
        and the real result is kept. Transient failures (``retryable``) give this generation the penalty but are
        cached nowhere."""
        todo = [ind for ind in individuals if not ind.fitness.valid]
        pending: list[tuple[str, dict, bool]] = []   # (text, record base, is an audit of a key hit)
        waiting: dict[str, list] = {}
        queued: set[str] = set()
        seed = self.space.gp["seed"]
        for ind in todo:
            text = str(ind)
            simp = simplify(text)
            base = {"generation": generation, "formula": text, "simplified": simp.text, "latex": simp.latex,
                    "key": simp.key, "size": len(ind), "depth": ind.height + 1}
            known = simp.key in self.by_key or simp.key in waiting
            if text in self.by_text:
                self._log({**base, "ppl": self.by_text[text], "seconds": 0.0, "hit": "text"})
            elif known and text not in queued and audit_selected(text, seed, self.key_audit_every):
                queued.add(text)
                pending.append((text, base, True))
            elif simp.key in self.by_key:
                self._log({**base, "ppl": self.by_key[simp.key], "seconds": 0.0, "hit": "key"})
            elif simp.key in waiting:
                waiting[simp.key].append(base)
            else:
                waiting[simp.key] = []
                queued.add(text)
                pending.append((text, base, False))
        results = tqdm(self.evaluate_many([t for t, _, _ in pending]), total=len(pending), leave=False,
                       position=1, desc=f"generation {generation}: candidates", disable=not self.progress)
        this_gen: dict[str, float] = {}
        for (text, base, audit), res in zip(pending, results):
            rec = {**base, "ppl": float(res["ppl"]), "seconds": round(float(res["seconds"]), 3), "hit": res["hit"],
                   "fingerprint": res.get("fingerprint"), "error": res.get("error")}
            if res.get("retryable"):
                rec["retryable"] = True
            if audit:
                rec = self._audited(rec)
            self._log(rec)
            this_gen[text] = rec["ppl"]
            for other in [] if audit else waiting.get(base["key"], []):
                if rec.get("retryable"):  # not evaluated either: as transient as the failure it waited on
                    self._log({**other, "ppl": rec["ppl"], "seconds": 0.0, "hit": "error", "error": rec["error"],
                               "retryable": True})
                else:
                    hit = "text" if other["formula"] in self.by_text else "key"
                    self._log({**other, "ppl": rec["ppl"], "seconds": 0.0, "hit": hit})
                this_gen.setdefault(other["formula"], rec["ppl"])
        for ind in todo:
            ind.fitness.values = (self.by_text.get(str(ind), this_gen.get(str(ind))),)

    def _audited(self, rec: dict) -> dict:
        """An audited key hit: the key's answer if the masks agree, else the real result, reported loudly."""
        expected = self.by_key_sig.get(rec["key"])
        got = _signature(rec)
        if rec.get("retryable") and rec["key"] in self.by_key:  # the audit failed transiently: a plain key hit
            return {k: v for k, v in rec.items() if k not in ("retryable", "error", "fingerprint")} | \
                {"ppl": self.by_key[rec["key"]], "hit": "key", "seconds": 0.0}
        if expected is None or got is None:  # nothing to compare with: the record stands as a real evaluation
            return rec
        if got == expected:
            return {**rec, "ppl": self.by_key[rec["key"]], "hit": "key",
                    "audit": {"match": True, "checked_hit": rec["hit"], "seconds": rec["seconds"]}}
        tqdm.write(f"KEY AUDIT MISMATCH: {rec['formula']} shares key {rec['key']} but its masks differ "
                   f"({got} vs {expected}); keeping its real fitness {rec['ppl']:.4f}, not the key's "
                   f"{self.by_key[rec['key']]:.4f}")
        return {**rec, "audit": {"match": False, "expected": expected}}

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
                   "counts": {**self.counts, "key_audit": {"checked": self.audit["checked"],
                                                           "mismatch": self.audit["mismatch"]}},
                   "evaluations": sum(self.counts.values()),
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
