"""The grid runner: every cell of a grid that its rows file does not hold yet, pruned, evaluated and appended as
one row (structural cells slice a freshly loaded model each)."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from .. import checks
from ..data import require_data
from ..metric.known import resolve_metric
from ..metric.simplify import rank_key
from ..models import all_prunable, load_model
from ..pipeline import CalibConfig, default_group, evaluate_all, prune, structural
from ..provenance import provenance
from ..prune.masks import WeightSnapshot, parse_pattern
from ..prune.run import SPARSEGPT
from ..prune.sparsegpt import PERCDAMP
from ..prune.structural import count_params, forward_latency
from .grid import Cell, Grid
from .rows import _append_row, claim, read_rows

def run_grid(grid: Grid, out: str | Path, data_dir=None, cache=None, command: str | None = None,
             progress: bool = True, only_model: str | None = None) -> list[dict]:
    """Run every cell of ``grid`` that ``<out>/rows.jsonl`` does not hold yet; returns all rows."""
    out = Path(out)
    rows_path = out / "rows.jsonl"
    done = {r["id"] for r in read_rows(rows_path)}
    proto = grid.protocol
    checks.device(proto.device, "protocol.device")
    require_data(data_dir, proto.eval_datasets, (proto.eval_split,), calibration=True)
    todo = [c for c in grid.cells() if c.id not in done and (only_model is None or c.model == only_model)]
    if grid.structural:
        _run_structural(grid, todo, rows_path, data_dir, cache, command, progress)
        return read_rows(rows_path)
    for model in dict.fromkeys(c.model for c in todo):
        lm = load_model(model, device=proto.device, dtype=proto.dtype, cache=cache, seqlen=proto.seqlen,
                        bos=proto.bos)
        snapshot = WeightSnapshot(all_prunable(lm.model), device="cpu")
        origin = provenance(lm.device, command)
        for cell in (c for c in todo if c.model == model):
            with claim(rows_path, cell.id) as mine:
                if not mine:
                    continue
                method = cell.method
                t0 = time.time()
                row = {"id": cell.id, "grid": grid.name, "model": model, "method": method.name,
                       "formula": None, "key": None, "mode": None if method.name == "dense" else method.mode,
                       "pattern": cell.pattern, "seed": cell.seed}
                if method.name != "dense":
                    spec = method.spec
                    if spec != SPARSEGPT:
                        _, node, _ = resolve_metric(spec)
                        row["formula"], row["key"] = str(node), rank_key(str(node))
                    pattern = (parse_pattern(0.5, cell.pattern) if ":" in cell.pattern
                               else parse_pattern(float(cell.pattern), None, default_group(spec)))
                    calib = CalibConfig(proto.nsamples, cell.seed, proto.batch_size, data_dir, cache)
                    res = prune(lm, spec, pattern, calib, sequential=method.mode == "sequential", progress=progress,
                                update=method.update, allocation=method.allocation, owl_lambda=method.owl_lambda,
                                owl_m=method.owl_m, permute=method.permute, percdamp=method.percdamp)
                    row.update(pattern_text=str(pattern), sparsity=res.sparsity, prune_seconds=round(res.seconds, 3))
                    if method.procedure:
                        row["procedure"] = {"update": method.update, "allocation": method.allocation,
                                            "permute": method.permute}
                        if method.allocation == "owl":
                            row["procedure"].update(owl_lambda=method.owl_lambda, owl_m=method.owl_m)
                        if method.percdamp != PERCDAMP:
                            row["procedure"]["percdamp"] = method.percdamp
                else:
                    row.update(pattern_text="dense", sparsity=0.0, prune_seconds=0.0)
                t1 = time.time()
                ev = evaluate_all(lm, list(proto.eval_datasets), proto.eval_windows, proto.batch_size, data_dir,
                                  progress, split=proto.eval_split)
                row["ppl"] = {ds: r["ppl"] for ds, r in ev.items()}
                row["windows"] = {ds: r["windows"] for ds, r in ev.items()}
                row["eval_seconds"] = round(time.time() - t1, 3)
                row["seconds"] = round(time.time() - t0, 3)
                row["protocol"] = {**proto.as_dict(), "model": model, "seed": cell.seed, "seqlen": lm.seqlen,
                                   "dtype": str(lm.model.dtype).replace("torch.", ""), "device": str(lm.device)}
                row["provenance"] = origin
                _append_row(rows_path, row)
                snapshot.restore()
                if progress:
                    shown = "  ".join(f"{ds} {v:.3f}" for ds, v in row["ppl"].items())
                    print(f"{cell.id}: {shown}", flush=True)
        del lm, snapshot
    return read_rows(rows_path)


def _run_structural(grid: Grid, todo: list[Cell], rows_path: Path, data_dir, cache, command, progress) -> None:
    """Structural cells: each slices a freshly loaded model (dense: measured as loaded)."""

    proto, ev = grid.protocol, grid.structural
    for cell in todo:
        with claim(rows_path, cell.id) as mine:
            if not mine:
                continue
            method = cell.method
            t0 = time.time()
            lm = load_model(cell.model, device=proto.device, dtype=proto.dtype, cache=cache, seqlen=proto.seqlen,
                            bos=proto.bos)
            row = {"id": cell.id, "grid": grid.name, "model": cell.model, "method": method.name, "kind": "structural",
                   "formula": None, "key": None, "mode": None, "pattern": cell.pattern, "seed": cell.seed}
            if method.name == "dense":
                row.update(sparsity=0.0, removed=0.0, params=count_params(lm.model)["total"], prune_seconds=0.0,
                           final_loss=None)
                cfg = None
            else:
                cfg = method.structural_config(float(cell.pattern), cell.seed)
                if cfg.init in ("metric", "oneshot"):
                    _, node, _ = resolve_metric(cfg.metric)
                    row["formula"], row["key"] = str(node), rank_key(str(node))

                def curve_eval():  # the row's own evaluation, at every curve point
                    return _structural_ppl(grid, lm, data_dir, False)

                res = structural(lm, cfg, CalibConfig(seed=cell.seed, data_dir=data_dir, cache=cache), progress,
                                 curve_eval=curve_eval)
                row.update(mode=cfg.init, sparsity=cfg.sparsity, removed=res["removed_fraction"],
                           params=res["params_after"]["total"], prune_seconds=round(res["seconds"], 3),
                           final_loss=res["history"][-1]["baseline"] if res["history"] else None)
            t1 = time.time()
            row["ppl"], row["windows"] = _structural_ppl(grid, lm, data_dir, progress, windows=True)
            row["eval_seconds"] = round(time.time() - t1, 3)
            row["latency_ms"] = (1000 * forward_latency(lm.model, ev.latency_seqlen or proto.seqlen,
                                                        repeats=ev.latency_repeats) if ev.latency_repeats else None)
            row["seconds"] = round(time.time() - t0, 3)
            row["protocol"] = {**proto.as_dict(), "model": cell.model, "seed": cell.seed, "seqlen": lm.seqlen,
                               "dtype": str(lm.model.dtype).replace("torch.", ""), "device": str(lm.device),
                               "evaluation": {**ev.identity(), "latency_seqlen": ev.latency_seqlen or proto.seqlen,
                                              "latency_repeats": ev.latency_repeats}}
            row["structural"] = dataclasses.asdict(cfg) if cfg else None
            if cfg:
                row["layer_shapes"], row["history"] = res["layer_shapes"], res["history"][-5:]
                row["compensation"] = res["compensation"]
                if res["curve"]:
                    row["curve"], row["curve_seconds"] = res["curve"], round(res["curve_seconds"], 3)
            row["provenance"] = provenance(lm.device, command)
            _append_row(rows_path, row)
            del lm
            if progress:
                shown = "  ".join(f"{k} {v:.3f}" for k, v in row["ppl"].items())
                print(f"{cell.id}: {shown}", flush=True)


def _structural_ppl(grid: Grid, lm, data_dir, progress: bool, windows: bool = False):
    """A structural cell's perplexities, keyed ``dataset@seqlen`` (and the window counts, with ``windows``)."""
    proto, ev = grid.protocol, grid.structural
    ppl, counts = {}, {}
    for L in ev.seqlens:
        for ds, r in evaluate_all(lm, list(proto.eval_datasets), ev.windows(L, proto), proto.batch_size,
                                  data_dir, progress, split=proto.eval_split, seqlen=L).items():
            ppl[f"{ds}@{L}"], counts[f"{ds}@{L}"] = r["ppl"], r["windows"]
    return (ppl, counts) if windows else ppl

