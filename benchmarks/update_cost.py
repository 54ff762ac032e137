"""What a weight update (``prune --update obs|lsq|admm``) would cost per search candidate, next to its perplexity
evaluation.

SmolLM2-135M, real one-shot Hessians from C4 calibration windows (dense model, as the search's statistics).
Per layer the mask-independent part of the update is computed once per run ("factor, once"): for ``obs`` the upper
Cholesky factor U of the damped H^-1, for ``lsq`` the normalised Hessian, for ``admm`` also (A + rho I)^-1. Each
candidate then pays its masks and the update of every layer ("update / candidate": a fixed-mask OBS sweep, the
conjugate-gradient solve, or ADMM with Wanda's gradual mask), against the perplexity evaluation it pays anyway
("ppl / candidate").

    python benchmarks/update_cost.py                       # CPU, the cpu.yaml fitness shape (4 x 1024 tokens)
    python benchmarks/update_cost.py --update admm
    python benchmarks/update_cost.py --blocks 6 --nsamples 4
    python benchmarks/update_cost.py --out results/update-cost # one row per measurement, table in OUT.md
    python benchmarks/update_cost.py --out results/update-cost --render-only

With ``--out``, each measurement (device x blocks x calibration x evaluation) is a row of ``<out>/rows.jsonl`` with
provenance, and ``<out>.md`` is rendered from the rows and ``<out>/meta.json`` (a default one is written on the first
run); a rerun into the same ``--out`` measures only what is missing.
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from prunerzero import data
from prunerzero import results as pzr
from prunerzero.calibration import BlockRunner, InputStats
from prunerzero.evaluate import perplexity
from prunerzero.metric import parse
from prunerzero.models import decoder_layers, load_model, prunable_linears
from prunerzero.prune.admm import ADMM_RHO, admm_prune, lsq_update, normalise
from prunerzero.prune.masks import Pattern, WeightSnapshot
from prunerzero.prune.run import metric_mask
from prunerzero.prune.sparsegpt import hinv_factor, obs_sweep

WANDA = "mul(abs(W), sqrt(X))"
COLUMNS = [[k, k, f] for k, f in (
    ("update", "s"), ("device", "s"), ("threads", "d"), ("blocks updated", "d"), ("calib", "s"), ("eval", "s"),
    ("stats+H s (once)", ".1f"), ("factor s (once)", ".1f"), ("factor MB", ".0f"), ("masks s", ".2f"),
    ("update s", ".2f"), ("ppl s", ".2f"), ("update / ppl", ".2f"),
    ("update / ppl, all 30 blocks (linear in blocks)", ".2f"), ("ppl (Wanda + update)", ".2f"))]
DEFAULT_META = {"renderer": "update_cost", "blocks": [
    {"text": "# Cost of a weight update per search candidate\n\nSmolLM2-135M, Wanda masks (50% per row), "
             "then per layer a fixed-mask OBS sweep (`obs`), the exact least-squares weights (`lsq`) or ADMM with "
             "Wanda's gradual mask (`admm`), with their mask-independent parts computed once per run "
             "(`factor s (once)`: the Cholesky factors of the damped H^-1, or the normalised Hessians), against the candidate's perplexity evaluation on WikiText-2 validation windows "
             "(`ppl s`); times are the minimum of the repeats (benchmarks/update_cost.py). `update / ppl` is the "
             "per-candidate overhead the update adds, relative to the evaluation every candidate pays anyway."},
    {"commands": {"bench": "update_cost"}},
    {"table": {"where": {"bench": "update_cost"}, "columns": COLUMNS}}]}


def render(rows: list[dict], meta: dict) -> str:
    rows = [{"update": "obs", **r} for r in rows]  # the first rows measured OBS only and say so by their command
    return pzr.render_document(rows, meta if meta.get("blocks") else DEFAULT_META)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nsamples", type=int, default=8, help="calibration windows for the Hessians")
    ap.add_argument("--calib-seqlen", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=4, help="WikiText-2 validation windows per candidate")
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--blocks", type=int, default=None, help="update only the first N blocks (default: all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1, help="candidates timed (the minimum is reported)")
    ap.add_argument("--update", default="obs", choices=["obs", "lsq", "admm"], help="the update timed")
    pzr.measurement_args(ap, None)
    args = ap.parse_args()
    if pzr.rendered_only(ap, args, render):
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    out = pzr.measurement_out(args.out, DEFAULT_META)
    rid = (f"update_cost|{args.device}|threads={torch.get_num_threads()}|blocks={args.blocks or 'all'}|"
           f"{args.nsamples}x{args.calib_seqlen}|{args.windows}x{args.seqlen}"
           + ("" if args.update == "obs" else f"|update={args.update}"))
    if out is not None and rid in {r["id"] for r in pzr.read_rows(out / "rows.jsonl")}:
        print(f"{rid}: in {out / 'rows.jsonl'} already (delete the row to measure again)")
        return
    row = measure(args)
    print(f"Per-candidate cost of the {args.update} update (Wanda masks, 50% per row, cached factors):")
    print(pd.DataFrame([row]).T.to_string(header=False, float_format=lambda v: f"{v:.3f}"))
    if out is not None:
        pzr.record(out, pzr.measurement(rid, {"bench": "update_cost", **row}, args.device))
        print(f"rows in {out / 'rows.jsonl'}; table {pzr.write_measurements(out, render)}")


def measure(args) -> dict:
    """One timed measurement: statistics and factors once, then ``args.repeats`` candidates (masks, update, ppl)."""
    lm = load_model("smollm2", device=args.device, dtype="fp32", seqlen=args.seqlen)
    model = lm.model
    calib = data.calibration_windows(lm.tokenizer, args.nsamples, args.calib_seqlen, 0)
    tokens = data.eval_tokens(lm.tokenizer, "wikitext2", "validation", None, lm.seqlen)
    windows = data.eval_windows(tokens, lm.seqlen, args.windows)
    blocks = list(decoder_layers(model))[: args.blocks]
    formula, pattern = parse(WANDA), Pattern(0.5, "row")

    t = time.perf_counter()
    runner = BlockRunner(model, calib)
    layers = {}  # key -> (linear, X, factor): (U, dead) for obs, the normalised Hessian for lsq and admm
    t_factor = 0.0
    for i, block in enumerate(blocks):
        linears = prunable_linears(block)
        hooks = {n: InputStats(lin, hessian=True) for n, lin in linears.items()}
        outs = runner.run(block)
        for n, h in hooks.items():
            h.remove()
            t0 = time.perf_counter()
            factor = (hinv_factor(h.H) if args.update == "obs"
                      else normalise(h.H, rho=ADMM_RHO if args.update == "admm" else None))
            t_factor += time.perf_counter() - t0
            layers[f"layers.{i}.{n}"] = (linears[n], h.X.view(1, -1), factor)
            h.H = None
        runner.advance(outs)
    t_stats = time.perf_counter() - t - t_factor
    print(f"statistics + Hessians {t_stats:.1f}s, factors {t_factor:.1f}s ({len(layers)} layers)", flush=True)
    factor_mb = sum(t.numel() * t.element_size() for _, _, f in layers.values()
                    for t in ((f[0],) if args.update == "obs" else (f.A, f.inv) if f.inv is not None else (f.A,))
                    ) / 2**20

    snap = WeightSnapshot({k: v[0] for k, v in layers.items()})
    times = {"masks": [], "update": [], "ppl": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        masks = {k: metric_mask(formula, {"W": lin.weight.detach().float(), "X": x}, pattern, k)
                 for k, (lin, x, _) in layers.items()}
        times["masks"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            for k, (lin, x, f) in layers.items():
                if args.update == "obs":
                    new = obs_sweep(lin.weight, f[0], f[1], mask=masks[k])[0]
                elif args.update == "lsq":
                    new = lsq_update(lin.weight, None, masks[k], norm=f)
                else:
                    new = admm_prune(lin.weight, None, pattern, lambda w, x=x: w.abs() * x.sqrt(), norm=f)[0]
                lin.weight.copy_(new)
        times["update"].append(time.perf_counter() - t0)
        print(f"masks {times['masks'][-1]:.1f}s, update {times['update'][-1]:.1f}s", flush=True)
        t0 = time.perf_counter()
        ppl = perplexity(model, windows, 1)
        times["ppl"].append(time.perf_counter() - t0)
        print(f"ppl {ppl:.3f} in {times['ppl'][-1]:.1f}s", flush=True)
        snap.restore()
    row = {"update": args.update, "device": args.device, "threads": torch.get_num_threads(), "blocks updated": len(blocks),
           "calib": f"{args.nsamples}x{args.calib_seqlen}", "eval": f"{windows.shape[0]}x{lm.seqlen}",
           "stats+H s (once)": t_stats, "factor s (once)": t_factor, "factor MB": factor_mb,
           "masks s": min(times["masks"]), "update s": min(times["update"]), "ppl s": min(times["ppl"])}
    row["update / ppl"] = row["update s"] / row["ppl s"]
    row["update / ppl, all 30 blocks (linear in blocks)"] = row["update / ppl"] * 30 / len(blocks)
    row["ppl (Wanda + update)"] = ppl
    return row


if __name__ == "__main__":
    main()
