"""``prunerzero select RUN``: pick the discovered formula to confirm, without looking at the test split.

The search ranks formulas by one-shot pruning at one pattern on WikiText-2 *validation* windows. Final runs prune
sequentially (Wanda's scheme) and are reported at several patterns, so the top distinct formulas of one or more
runs are re-scored here exactly as final runs prune them (sequential calibration, 50% unstructured per row and
each N:M pattern), still on the validation split, next to a reference metric (Wanda), over one or more calibration
seeds. This is a grid for the experiment runner: the grid is written to ``<out>/grid.yaml``, its rows to
``<out>/rows.jsonl`` (a rerun skips cells already there, so an interrupted selection resumes), and the choice to
``<out>.json`` / ``<out>.md``. By default ``<out>`` is ``RUN/selection``: the pick lands in the run folder as
``RUN/selection.json``, and ``prunerzero prune --metric RUN`` prunes with it.

``mode="oneshot"`` re-scores with the dense model's statistics instead (what the search used; no calibration pass
per cell, so several seeds fit a CPU), and the table says so.

The chosen formula beats the reference at every pattern and has the lowest mean log-perplexity ratio to it. With
three or more seeds "beats" means by more than both spreads (mean ± std intervals apart); with fewer it is a plain
comparison of means and the table says so. If none beats it everywhere, the lowest ratio is chosen and the table
says that too. Only then is it evaluated on test (``prunerzero bench grids/confirm-*.yaml --formula found=...``).
The ratio is combined over patterns as the runs' fitness combined its settings (``combine``, default: the runs'
``fitness.combine``): the mean, or the worst pattern's ratio for runs scored by the worse setting (``worst``,
``margin``), so a 2:4 gain cannot buy back a 50% loss in the choice either.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..checks import BOS_DEFAULT
from ..errors import UserError
from ..results import Grid, Method, better, load_grid, mean_std, read_rows, render, run_grid
from ..results.grid import later_default
from ..fsutil import atomic_write_text
from ..metric.known import KNOWN_METRICS, resolve_metric
from ..metric.simplify import ranking_class
from ..protocol import Protocol
from .table import equations

PATTERNS = {"u": "0.5", "2:4": "2:4", "4:8": "4:8"}
PENALTY = 1e5  # fitness given to formulas that failed (search spaces: fitness.penalty)


def candidates(runs: list[str], top: int, reference: str, also: list[str]) -> list[dict]:
    """The reference and known metrics, then each run's best ``top`` distinct formulas (by canonical key) that are
    not a known metric (magnitude, Wanda, RIA, ... rediscovered)."""
    out = [{"name": name, "formula": str(resolve_metric(name)[1]),  # refuses an unknown name before any work
            "simplified": "", "search_ppl": None, "run": None} for name in [reference] + also]
    # met again (the same ranking in exact arithmetic): a rediscovery, not a candidate
    keys = {ranking_class(m.formula) for m in KNOWN_METRICS.values()}
    for run in runs:
        taken = 0
        for rank, row in equations(run, None).iterrows():
            if taken >= top or not row["ppl"] < PENALTY:
                break
            if ranking_class(row["formula"]) not in keys:
                keys.add(ranking_class(row["formula"]))
                taken += 1
                out.append({"name": f"{Path(run).name}#{rank}", "formula": row["formula"],
                            "simplified": row["simplified"], "search_ppl": float(row["ppl"]), "run": run})
    return out


def _values(v) -> list[float]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def choose(rows: list[dict], patterns: list[str], reference: str, combine: str = "mean"
           ) -> tuple[dict | None, bool]:
    """``rows[i]["ppl"][pattern]`` is a value or a list of values over seeds. The best candidate beats the
    reference at every pattern (by more than both spreads with >= 3 seeds each) with the lowest log ratio of its
    means: the mean over patterns, or with ``combine="worst"`` the largest (``worst_ratio``)."""
    ref = next(r for r in rows if r["name"] == reference)
    rank = "worst_ratio" if combine == "worst" else "log_ratio"
    best, best_beats = None, False
    if any(p not in ref["ppl"] for p in patterns):
        return best, best_beats
    for r in rows:
        if r["run"] is None or any(p not in r["ppl"] for p in patterns):
            continue
        mine = {p: _values(r["ppl"][p]) for p in patterns}
        theirs = {p: _values(ref["ppl"][p]) for p in patterns}
        ratios = [math.log(mean_std(mine[p])[0] / mean_std(theirs[p])[0]) for p in patterns]
        r["log_ratio"] = sum(ratios) / len(patterns)
        if combine == "worst":
            r["worst_ratio"] = max(ratios)
        seeded = all(len(mine[p]) >= 3 and len(theirs[p]) >= 3 for p in patterns)
        r["beats_reference"] = all(better(mine[p], theirs[p]) if seeded else
                                   mean_std(mine[p])[0] < mean_std(theirs[p])[0] for p in patterns)
        key = (not r["beats_reference"], r[rank])
        if best is None or key < (not best_beats, best[rank]):
            best, best_beats = r, r["beats_reference"]
    return best, best_beats


COMBINE = {"mean": "mean", "worst": "worst", "margin": "worst"}   # a run's fitness.combine -> the choice's


def runs_combine(runs: list[str]) -> str:
    """How the runs' fitness combined settings, as the choice combines patterns (``COMBINE``); runs that
    disagree are refused."""
    from .engine import load_run_space

    modes = {COMBINE[load_run_space(run)[0].fitness.get("combine", "mean")] for run in runs}
    if len(modes) > 1:
        raise UserError("the runs combined their settings differently (mean and worst): pass --combine mean or "
                        "--combine worst")
    return modes.pop()


def runs_bos(runs: list[str], model: str) -> str:
    """The BOS mode the runs scored ``model`` with (their ``fitness.bos``; 'stream' where a run did not score it),
    so candidates are re-scored in the regime they were found in; runs that disagree are refused."""
    from .engine import load_run_space
    from .workers import fitness_bos, fitness_models

    modes = set()
    for run in runs:
        fit = load_run_space(run)[0].fitness
        modes.add(fitness_bos(fit, model) if model in fitness_models(fit) else BOS_DEFAULT)
    if len(modes) > 1:
        raise UserError(f"the runs scored {model} with different BOS modes ({', '.join(sorted(modes))}): "
                        "pass --bos stream or --bos window")
    return modes.pop() if modes else BOS_DEFAULT


def build_grid(name: str, cands: list[dict], patterns: list[str], seeds: list[int], args: "SelectOptions") -> Grid:
    proto = Protocol(model=args.model, dtype=args.dtype, device=args.device, seqlen=args.seqlen,
                     nsamples=args.nsamples, seed=seeds[0], eval_datasets=("wikitext2",), eval_split="validation",
                     eval_windows=args.eval_windows, batch_size=args.batch_size,
                     bos=args.bos or runs_bos(list(args.runs), args.model))
    methods = tuple(Method(c["name"], None if c["run"] is None else c["formula"], args.mode) for c in cands)
    how = ("as final runs prune (sequential)" if args.mode == "sequential" else
           "with one-shot statistics of the dense model, as the search scores (cheaper; final runs prune sequentially)")
    return Grid(name, f"Candidates re-scored on WikiText-2 validation {how}.", proto,
                (args.model,), methods, tuple(PATTERNS[p] for p in patterns), tuple(seeds))


def _grid_yaml(grid: Grid) -> str:
    protocol = {k: v for k, v in grid.protocol.as_dict().items() if not later_default(k, v)}  # as earlier files
    raw = {"name": grid.name, "description": grid.description, "protocol": protocol,
           "models": list(grid.models), "seeds": list(grid.seeds),
           "patterns": [float(p) if ":" not in p else p for p in grid.patterns],
           "methods": [{"name": m.name, **({"formula": m.formula} if m.formula else {}), "mode": m.mode}
                       for m in grid.methods]}
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


def collect(grid: Grid, rows: list[dict], cands: list[dict]) -> list[dict]:
    """Per candidate: its perplexities per pattern, a list over the seeds run so far."""
    by_id = {r["id"]: r for r in rows}
    out = []
    for c, m in zip(cands, grid.methods):
        ppl = {}
        for p_key, p in zip(grid.patterns, grid.patterns):
            vals = [by_id[cell.id]["ppl"]["wikitext2"] for cell in (grid.cell(grid.models[0], m, p, s)
                                                                     for s in grid.seeds) if cell.id in by_id]
            if len(vals) == len(grid.seeds):
                ppl[_pattern_name(p_key)] = vals
        out.append({**c, "ppl": ppl})
    return out


def _pattern_name(p: str) -> str:
    return next(k for k, v in PATTERNS.items() if v == p)


def render_selection(grid: Grid, rows: list[dict], cands: list[dict], patterns: list[str], reference: str,
                     chosen: dict | None, beats: bool, combine: str = "mean") -> str:
    seeds = len(grid.seeds)
    worst = combine == "worst"
    head = " | ".join(f"val ppl {p}" for p in patterns)
    lines = [render(grid, rows).rstrip(), "", f"## Selection against {reference}", "",
             f"| name | formula | search fitness | {head} | mean log ratio to {reference} |"
             + (" worst pattern's log ratio |" if worst else ""),
             "| --- | --- | ---: | " + " | ".join("---:" for _ in patterns) + " | ---: |" + (" ---: |" if worst else "")]
    for r in cands:
        vals = []
        for p in patterns:
            if p not in r["ppl"]:
                vals.append("-")
                continue
            m, s = mean_std(r["ppl"][p])
            vals.append(f"{m:.3f}" if s is None else f"{m:.3f} ± {s:.3f}")
        fit = f"{r['search_ppl']:.3f}" if r["search_ppl"] is not None else "-"
        ratio = f"{r['log_ratio']:+.4f}" if "log_ratio" in r else "-"
        if worst:
            ratio += f" | {r['worst_ratio']:+.4f}" if "worst_ratio" in r else " | -"
        lines.append(f"| {r['name']} | `{r['formula']}` | {fit} | {' | '.join(vals)} | {ratio} |")
    rule = ("by more than both spreads (mean ± std over the seeds)" if seeds >= 3 else
            f"by its mean ({seeds} seed{'s' if seeds > 1 else ''}: too few for a spread)")
    if chosen is not None:
        lines += ["", f"Chosen: `{chosen['formula']}` ({chosen['name']}); "
                  + (f"it beats {reference} at every pattern on validation, {rule}." if beats else
                     f"NO candidate beats {reference} at every pattern on validation ({rule}); this one has the "
                     + ("lowest worst-pattern ratio (the runs' fitness took the worse setting)." if worst else
                        "lowest mean ratio."))]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SelectOptions:
    """What ``prunerzero select`` re-scores, and how (the CLI's options; ``None`` = the documented default)."""

    runs: tuple[str, ...]              # search run folders; the pick is written into the first one by default
    out: str | None = None             # selection folder (default: RUNS[0]/selection)
    top: int = 6                       # distinct formulas taken from each run
    reference: str = "wanda"           # the metric every candidate is compared with
    also: tuple[str, ...] = ()         # known metrics shown for comparison (not candidates)
    patterns: tuple[str, ...] = ("u", "2:4")
    seeds: tuple[int, ...] = (0,)      # calibration seeds (3 or more for spreads)
    mode: str = "sequential"           # sequential (as final runs prune) or oneshot (as the search scored)
    model: str | None = None           # default: the model the runs scored
    device: str | None = None
    dtype: str = "auto"
    seqlen: int = 2048
    nsamples: int = 128
    batch_size: int = 1
    eval_windows: int | None = None    # validation windows (default: all)
    bos: str | None = None             # default: the BOS mode the runs scored the model with
    combine: str | None = None         # mean or worst (default: as the runs' fitness.combine)
    data_dir: str | None = None
    cache_dir: str | None = None
    render_only: bool = False
    progress: bool = True
    command: str = ""


def default_out(runs) -> Path:
    """Where a selection goes unless told: ``RUN/selection`` of the first run (``RUN/selection.json`` is the pick)."""
    return Path(runs[0]) / "selection"


def grid_name(out: Path) -> str:
    """The selection grid's name: its folder's, or ``<run>-selection`` for a run's own ``selection`` folder."""
    return f"{out.parent.name}-selection" if out.name == "selection" else out.name


def runs_model(runs: list[str]) -> str:
    """The model the runs scored (their fitness models, first of each); runs that disagree need --model."""
    from .engine import load_run_space
    from .workers import fitness_models

    models = {fitness_models(load_run_space(run)[0].fitness)[0] for run in runs}
    if len(models) > 1:
        raise UserError(f"the runs scored different models ({', '.join(sorted(map(str, models)))}): pass --model")
    return models.pop()


def check_options(opts: SelectOptions) -> list[str]:
    """The patterns, refused early (before any model loads) where they or the folders are wrong."""
    patterns = list(opts.patterns)
    bad = [p for p in patterns if p not in PATTERNS]
    if bad or not patterns:
        raise UserError(f"unknown pattern '{bad[0] if bad else ''}': use u, 2:4 or 4:8 (comma-separated)")
    if not opts.runs and not (opts.render_only and opts.out):
        raise UserError("name at least one search run folder")
    if opts.mode not in ("sequential", "oneshot"):
        raise UserError(f"--mode {opts.mode}: use sequential or oneshot")
    if opts.combine not in (None, "mean", "worst"):
        raise UserError(f"--combine {opts.combine}: use mean or worst")
    return patterns


def select(args: SelectOptions) -> dict | None:
    """Re-score, choose, and write ``<out>/grid.yaml``, ``rows.jsonl``, ``<out>.json`` and ``<out>.md``; the choice
    (a candidate record with its formula) or None when no candidate was scored at every pattern."""
    patterns = check_options(args)
    out = Path(args.out) if args.out else default_out(args.runs)
    grid_file = out / "grid.yaml"
    if args.render_only:
        if not out.with_suffix(".json").is_file() or not grid_file.is_file():
            raise UserError(f"{out} holds no selection to re-render: run the selection first (without --render-only)")
        saved = json.loads(out.with_suffix(".json").read_text())
        grid, cands = load_grid(grid_file), saved["candidates"]
        patterns, reference = saved["meta"]["patterns"], saved["meta"]["reference"]
        combine = saved["meta"].get("combine", "mean")   # selections made before --combine chose by the mean
    else:
        runs = list(args.runs)
        seeds, also = list(args.seeds), list(args.also)
        reference = args.reference
        combine = args.combine or runs_combine(runs)
        if args.model is None:
            from dataclasses import replace

            args = replace(args, model=runs_model(runs))
        cands = candidates(runs, args.top, reference, also)
        grid = build_grid(grid_name(out), cands, patterns, seeds, args)
        if grid_file.is_file() and grid_file.read_text() != _grid_yaml(grid):
            raise UserError(f"{grid_file} holds another selection: choose a new --out")
        atomic_write_text(grid_file, _grid_yaml(grid))
        grid = load_grid(grid_file)
        run_grid(grid, out, args.data_dir, args.cache_dir, args.command or _command_line(), progress=args.progress)
    rows = read_rows(out / "rows.jsonl")
    scored = collect(grid, rows, [{k: c[k] for k in ("name", "formula", "simplified", "search_ppl", "run")}
                                  for c in cands])
    chosen, beats = choose(scored, patterns, reference, combine)
    meta = {"reference": reference, "patterns": patterns, "seeds": list(grid.seeds), "grid": str(grid_file),
            "rows": str(out / "rows.jsonl"), **({"combine": combine} if combine != "mean" else {})}
    atomic_write_text(out.with_suffix(".json"), json.dumps(
        {"meta": meta, "candidates": scored, "chosen": chosen, "beats_reference": beats}, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), render_selection(grid, rows, scored, patterns, reference, chosen,
                                                               beats, combine))
    return chosen


def _command_line() -> str:
    from ..provenance import command_line

    return command_line()
