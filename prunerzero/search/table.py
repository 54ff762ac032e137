"""A run as a table of equations (after PySR): the best distinct formulas with size and perplexity."""
from __future__ import annotations

from collections import Counter

import pandas as pd

from .engine import read_evaluations

COLUMNS = ["formula", "simplified", "size", "ppl", "generation"]


def equations(run_dir, top: int | None = 10) -> pd.DataFrame:
    """Best distinct formulas (one row per canonical ranking key), lowest perplexity first."""
    recs = [r for r in read_evaluations(run_dir) if r["hit"] != "error"]
    if not recs:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.DataFrame(recs)
    df = df.sort_values(["ppl", "size", "generation", "formula"], kind="stable").drop_duplicates("key")
    df = df.reset_index(drop=True)
    df.index += 1
    return df[COLUMNS + ["key", "latex", "depth"]].head(top) if top else df[COLUMNS + ["key", "latex", "depth"]]


def cache_counts(run_dir) -> dict[str, int]:
    counts = Counter(r["hit"] for r in read_evaluations(run_dir))
    return {k: counts.get(k, 0) for k in ("eval", "mask", "key", "text", "error")}


def format_table(run_dir, top: int = 10) -> str:
    df = equations(run_dir, top)
    with pd.option_context("display.max_colwidth", 70, "display.width", 200):
        body = df[COLUMNS].to_string(float_format=lambda v: f"{v:.3f}")
    counts = cache_counts(run_dir)
    total = sum(counts.values())
    saved = total - counts["eval"] - counts["error"]
    tail = (f"{total} candidates: {counts['eval']} evaluated, {saved} answered by caches "
            f"(text {counts['text']}, canonical key {counts['key']}, mask fingerprint {counts['mask']}), "
            f"{counts['error']} refused")
    return body + "\n" + tail
