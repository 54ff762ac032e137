"""Tables and figures for notebooks: read a search run, summarise it, draw formulas and comparisons.

Everything here works from a run directory (``evaluations.jsonl``) except ``mask_overlaps``, which recomputes
masks on a model with its calibration statistics.
"""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pandas as pd

from .metric.expr import Node, parse
from .metric.ops import OPS, canonical_terminal
from .search.engine import read_evaluations
from .search.table import cache_counts, equations

HIT_LABELS = {"eval": "perplexity evaluated", "mask": "mask fingerprint", "key": "canonical key",
              "text": "same text", "error": "refused (penalty)"}


def load_run(run_dir) -> pd.DataFrame:
    """All evaluations of a run with derived columns: terminals used, outermost operation."""
    df = pd.DataFrame(read_evaluations(run_dir))
    nodes = [parse(f) for f in df["simplified"]]
    for t in ("W", "X", "G"):
        df[f"has_{t}"] = [t in {canonical_terminal(x) for x in n.terminals()} for n in nodes]
    df["outer"] = [n.op if n.children else "terminal" for n in nodes]
    df["ok"] = df["hit"] != "error"
    return df


def best_formulas(run_dir, top: int = 10) -> pd.DataFrame:
    """The equations table with the LaTeX of the simplified form (rendered by Jupyter as math)."""
    df = equations(run_dir, top).copy()
    df["latex"] = ["$" + s + "$" for s in df["latex"]]
    return df[["formula", "latex", "size", "ppl", "generation"]]


def per_generation(df: pd.DataFrame) -> pd.DataFrame:
    """Best and median perplexity of the valid candidates of each generation (and the best so far)."""
    ok = df[df["ok"]]
    g = ok.groupby("generation")["ppl"].agg(best="min", median="median", candidates="count")
    g["best so far"] = g["best"].cummin()
    return g


def cache_table(run_dir) -> pd.DataFrame:
    counts = cache_counts(run_dir)
    total = sum(counts.values())
    return pd.DataFrame({"answered by": [HIT_LABELS[k] for k in counts], "candidates": list(counts.values()),
                         "share": [v / max(1, total) for v in counts.values()]})


# ---------------------------------------------------------------------------------------------- figures
def plot_progress(df: pd.DataFrame, ax=None):
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    g = per_generation(df)
    ax.plot(g.index, g["best"], "o-", label="best of generation")
    ax.plot(g.index, g["median"], "s--", label="median of generation")
    ax.plot(g.index, g["best so far"], "k:", label="best so far")
    ax.set_yscale("log")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness perplexity (validation)")
    ax.legend()
    return ax


def _layout(node: Node, depth=0, pos=None, counter=None):
    pos = {} if pos is None else pos
    counter = counter if counter is not None else [0]
    xs = []
    for c in node.children:
        _layout(c, depth + 1, pos, counter)
        xs.append(pos[id(c)][0])
    if xs:
        x = sum(xs) / len(xs)
    else:
        x = counter[0]
        counter[0] += 1
    pos[id(node)] = (x, -depth)
    return pos


def draw_tree(formula: "str | Node", ax=None, title: str | None = None):
    """Draw a formula tree (operations as boxes, terminals as circles) with matplotlib alone."""
    import matplotlib.pyplot as plt

    node = parse(formula) if isinstance(formula, str) else formula
    ax = ax or plt.gca()
    pos = _layout(node)

    def edges(n):
        for c in n.children:
            (x0, y0), (x1, y1) = pos[id(n)], pos[id(c)]
            ax.plot([x0, x1], [y0, y1], "-", color="0.5", zorder=1)
            edges(c)

    edges(node)
    for n in node.walk():
        x, y = pos[id(n)]
        label = str(n) if n.is_const or n.is_terminal else n.op
        style = dict(boxstyle="circle", fc="#ffe9b3") if n.is_terminal or n.is_const else \
            dict(boxstyle="round", fc="#cfe2ff")
        ax.text(x, y, label, ha="center", va="center", zorder=2, bbox=style, fontsize=11)
    ax.set_axis_off()
    ax.margins(0.2)
    if title:
        ax.set_title(title)
    return ax


def plot_ppl_against(df: pd.DataFrame, column: str, ax=None):
    """Box plot of (valid) candidate perplexity grouped by a column such as size, depth, outer or has_X."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    ok = df[df["ok"] & (df["hit"] == "eval")]
    groups = sorted(ok[column].unique(), key=lambda v: (str(type(v)), v))
    ax.boxplot([ok[ok[column] == g]["ppl"] for g in groups], showfliers=True)
    ax.set_xticks(range(1, len(groups) + 1), [str(g) for g in groups], rotation=45 if column == "outer" else 0)
    ax.set_yscale("log")
    ax.set_xlabel(column)
    ax.set_ylabel("perplexity")
    return ax


def plot_curves(rows: list[dict], key: str, ax=None, target: float | None = None, dense: float | None = None):
    """Learning curves of structural rows that carry one (``curve_every``): perplexity ``key`` (e.g.
    ``wikitext2@128``) against policy step, a line per row labelled method / removed / seed."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    for r in rows:
        pts = [(pt["step"], pt["ppl"][key]) for pt in r.get("curve") or [] if key in pt["ppl"]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{r['method']} ({float(r['pattern']):.0%}, seed {r['seed']})")
    if target is not None:
        ax.axhline(target, color="r", ls="--", label=f"target {target:g}")
    if dense is not None:
        ax.axhline(dense, color="k", ls=":", label=f"dense {dense:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("policy-gradient step")
    ax.set_ylabel(f"perplexity ({key})")
    ax.legend()
    return ax


def compare_bar(results: dict[str, dict[str, float]], ax=None, dense: float | None = None):
    """Grouped bars: results[pattern][method] = ppl."""
    import matplotlib.pyplot as plt
    import numpy as np

    ax = ax or plt.gca()
    patterns = list(results)
    methods = sorted({m for r in results.values() for m in r})
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        vals = [results[p].get(m, np.nan) for p in patterns]
        ax.bar(np.arange(len(patterns)) + i * width, vals, width, label=m)
    ax.set_xticks(np.arange(len(patterns)) + width * (len(methods) - 1) / 2, patterns)
    if dense is not None:
        ax.axhline(dense, color="k", ls=":", label="dense")
    ax.set_yscale("log")
    ax.set_ylabel("perplexity")
    ax.legend()
    return ax


def mask_overlaps(formulas: list[str], reference: str, model, stats, pattern) -> pd.Series:
    """Fraction of pruned weights each formula shares with the reference formula's masks (all layers)."""
    import torch

    from .models import all_prunable
    from .prune.masks import MetricError
    from .prune.run import metric_masks

    linears = all_prunable(model)
    ref = metric_masks(parse(reference), linears, stats, pattern)
    total = sum(int(m.sum()) for m in ref.values())
    out = {}
    for f in formulas:
        try:
            masks = metric_masks(parse(f), linears, stats, pattern)
        except MetricError:
            out[f] = float("nan")
            continue
        out[f] = sum(int((masks[k] & ref[k]).sum()) for k in ref) / max(1, total)
        del masks
    del ref
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return pd.Series(out, name=f"overlap with {reference}")


def op_counts(formula: str) -> dict[str, int]:
    node = parse(formula)
    return {op: sum(n.op == op for n in node.walk()) for op in OPS if any(n.op == op for n in node.walk())}


def run_exists(run_dir) -> bool:
    return (Path(run_dir) / "evaluations.jsonl").is_file()


def chosen_formula(selection_json) -> str | None:
    """The formula ``prunerzero select`` chose (validation split only), or None if it chose none."""
    chosen = json.loads(Path(selection_json).read_text()).get("chosen")
    return chosen["formula"] if chosen else None


def per_model_ratios(run_dir) -> pd.DataFrame:
    """For a search scored on several models: each evaluated formula's log(ppl / reference ppl) per model (mean
    over the run's settings) at full fidelity, beside its terminals; the reference's perplexities come from the
    run's ``references.json``. One row per distinct formula (its first evaluation)."""
    import math

    refs = json.loads((Path(run_dir) / "references.json").read_text())
    full = max(refs["levels"], key=lambda k: (refs["levels"][k]["windows"] is None, int(k)))
    ref_ppl = refs["levels"][full]["ppls"]
    df = load_run(run_dir)
    df = df[(df.hit == "eval") & df["ppls"].notna()]
    if "level" in df:
        df = df[df["level"].fillna(int(full)).astype(int) == int(full)]
    models = list(dict.fromkeys(k.split("|", 1)[0] for k in ref_ppl))  # the run's order
    rows = []
    for _, r in df.drop_duplicates("key").iterrows():
        out = {"formula": r["simplified"], "terms": "".join(t for t in "WXG" if r[f"has_{t}"])}
        for m in models:
            parts = [math.log(v / ref_ppl[k]) for k, v in r["ppls"].items() if k.split("|", 1)[0] == m]
            out[f"ratio[{m}]"] = sum(parts) / len(parts) if parts else float("nan")
        rows.append(out)
    return pd.DataFrame(rows)


def term_scales(stats) -> pd.DataFrame:
    """How large the statistics are, per module type (medians per layer, averaged over layers): X, the share of
    input channels where |log X| exceeds √X (there a formula's log term outweighs Wanda's), and, where the
    statistics hold the gradient, G, G/X and the share of weights with G > X."""
    from collections import defaultdict

    acc = defaultdict(lambda: defaultdict(list))
    for key, terms in stats.tensors.items():
        if "X" not in terms:
            continue
        x = terms["X"].double().view(1, -1)
        a = acc[key.split(".", 2)[2]]
        a["median X"].append(float(x.median()))
        a["|log X| > √X"].append(float((x.clamp_min(1e-30).log().abs() > x.sqrt()).double().mean()))
        if "G2" in terms:
            g = stats.value(key, "G2").double()
            a["median G"].append(float(g.median()))
            a["median G/X"].append(float((g / x.clamp_min(1e-30)).median()))
            a["G > X"].append(float((g > x).double().mean()))
    return pd.DataFrame([{"module": m, **{k: statistics.fmean(v) for k, v in cols.items()}}
                         for m, cols in sorted(acc.items())])   # one order, from the cache or freshly computed


def transfer_rows(rows_paths) -> list[dict]:
    """Rows of one or more grids (a path, or a list of paths) for ``transfer_table``: a model measured with BOS
    opening every window (protocol bos 'window') in any of them is taken in that regime only, labelled
    "<model> (BOS)"; the other models keep Wanda's windows."""
    from .results import read_rows

    paths = [rows_paths] if isinstance(rows_paths, (str, os.PathLike)) else list(rows_paths)
    rows = [(r, r.get("protocol", {}).get("bos") == "window") for p in paths for r in read_rows(p)]
    with_bos = {r["model"] for r, window in rows if window}
    return [{**r, "model": f"{r['model']} (BOS)"} if window else r for r, window in rows
            if window or r["model"] not in with_bos]


def transfer_table(rows_path, reference: str = "wanda", dataset: str = "wikitext2") -> pd.DataFrame:
    """From an experiment grid's rows (a transfer report; a path or a list of paths, see ``transfer_rows``): per
    method, model and pattern, the mean ± std perplexity over calibration seeds, the ratio of means to ``reference``
    and the grid's verdict (better / worse only by more than both spreads, >= 3 seeds), with what the method's
    formula reads (terminals and operations)."""
    import statistics

    from .results import verdict

    rows = [r for r in transfer_rows(rows_path) if r["method"] != "dense" and dataset in r.get("ppl", {})]
    groups: dict[tuple, list[float]] = {}
    formulas = {}
    for r in rows:
        groups.setdefault((r["method"], r["model"], r["pattern"]), []).append(r["ppl"][dataset])
        formulas[r["method"]] = r.get("formula")
    out = []
    for (method, model, pattern), vals in groups.items():
        ref = groups.get((reference, model, pattern), [])
        formula = formulas[method]
        ops = sorted(op_counts(formula)) if formula else []
        out.append({"method": method, "model": model, "pattern": pattern, "seeds": len(vals),
                    "ppl": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else float("nan"),
                    "ratio": statistics.fmean(vals) / statistics.fmean(ref) if ref else float("nan"),
                    "verdict": "reference" if method == reference else verdict(vals, ref), "formula": formula,
                    "reads": " ".join(t for t in "WXG" if formula and t in parse(formula).terminals()),
                    "ops": " ".join(ops)})
    return pd.DataFrame(out)
