"""How a search scores candidates: a part's log ratio to the reference, their combination (mean, worst, margin),
the fitness selection minimises, and the hash-based choices (key audits, fidelity audits) that keep resume exact."""
from __future__ import annotations

import hashlib
import math
import re


def audit_selected(text: str, seed: int, every: int) -> bool:
    """Whether a key hit is audited: a hash of the run seed and the formula text (no RNG state, so resume is
    exact and DEAP's global ``random`` is untouched)."""
    if every <= 0:
        return False
    digest = hashlib.sha1(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % every == 0


ANSWER_KEYS = ("ppl", "score", "fitness", "ppls", "fidelity", "level")   # what a cache hit copies of its answer
FIDELITY_GAP = 1000.0   # per fidelity level a candidate was not promoted to (scores are log ratios, far below it)
RETRY_FITNESS = 1e5     # a transient failure's (or an unscorable error's) fitness for this generation


def fitness_value(rec: dict) -> float:
    """What selection minimises: ``fitness`` (score plus the fidelity gap) in a scored run, else ``ppl``."""
    return rec.get("fitness", rec["ppl"])


_SEED = re.compile(r"\|seed\d+(?=\||$)")


def _sd(values: list[float]) -> float:
    """Sample standard deviation (n - 1), 0 for one value."""
    if len(values) < 2:
        return 0.0
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def combine_scores(ppls: dict, refs: dict | None, how: str = "mean") -> float:
    """log(ppl / reference ppl) of every part (model x setting), combined by their mean or their max (``worst``);
    without references (``fitness.reference: null``) log(ppl) itself. Lower is better; the reference scores 0.

    Parts that differ only in the calibration seed (``<model>|seed<n>|<setting>``) are repeats, not settings:
    their log ratios (each against the reference at the same seed) are averaged before the combination.
    ``margin`` is the verdict the results tables apply ("better only by more than both spreads"), in log units:
    per (model, setting), the seed mean of log(ppl / reference ppl) plus the seed standard deviations of the
    candidate's and of the reference's log ppl, then the worst of those. Below 0: better than the reference by
    more than both spreads at every setting, on the fitness windows."""
    groups: dict[str, tuple[list[float], list[float]]] = {}
    for label, p in ppls.items():
        mine, ref = groups.setdefault(_SEED.sub("", label), ([], []))
        mine.append(math.log(max(p, 1e-30)))
        ref.append(math.log(refs[label]) if refs else 0.0)
    if how == "margin":
        return max(sum(m) / len(m) - sum(r) / len(r) + _sd(m) + _sd(r) for m, r in groups.values())
    logs = [sum(a - b for a, b in zip(m, r)) / len(m) for m, r in groups.values()]
    return max(logs) if how == "worst" else sum(logs) / len(logs)


def fidelity_selected(text: str, seed: int, fraction: float) -> bool:
    """Whether a candidate is scored at every fidelity whatever its promotions (the fidelity audit): a hash of the
    run seed and the text, as ``audit_selected``."""
    if fraction <= 0:
        return False
    digest = hashlib.sha1(f"fidelity:{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 1_000_000 < round(fraction * 1_000_000)
