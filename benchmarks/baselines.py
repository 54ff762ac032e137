"""Baseline table: dense, magnitude, Wanda, SparseGPT, Pruner-Zero metric at 50% unstructured, 4:8 and 2:4.

Protocol (Wanda/SparseGPT): seqlen 2048, 128 C4 calibration windows (seed 0), WikiText-2 raw test, all windows.
Each finished row is written at once to ``<out>/rows/<row>.json`` (a rerun skips rows already there), and the
markdown table ``<out>.md`` is re-rendered after every row, so a partial run still leaves a correct partial table.

    python benchmarks/baselines.py --out results/baselines            # full protocol (hours on 2 CPU cores)
    python benchmarks/baselines.py --rows wanda:u:seq --eval-windows 8 # a quick subset
    python benchmarks/baselines.py --formula found="mul(sqr(W), X)" --rows dense,found:u:seq,wanda:u:seq \
        --eval wikitext2,c4 --out results/confirm                      # confirm a discovered formula

A row is METHOD:PATTERN:MODE with METHOD a known metric, sparsegpt or a name given with --formula, PATTERN one of
u (50% unstructured), 2:4, 4:8, and MODE seq (Wanda's sequential calibration) or oneshot.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from prunerzero.evaluate import ppl_on
from prunerzero.fsutil import atomic_write_text
from prunerzero.models import all_prunable, load_model
from prunerzero.pipeline import CalibConfig, default_group, prune
from prunerzero.prune.masks import WeightSnapshot, parse_pattern

PATTERNS = {"u": None, "4:8": "4:8", "2:4": "2:4"}
DEFAULT_ROWS = [
    "wanda:u:seq", "dense", "magnitude:u:oneshot", "pruner-zero:u:oneshot", "sparsegpt:u:seq",
    "wanda:2:4:seq", "wanda:4:8:seq", "magnitude:2:4:oneshot", "magnitude:4:8:oneshot",
    "pruner-zero:2:4:oneshot", "pruner-zero:4:8:oneshot", "sparsegpt:2:4:seq", "sparsegpt:4:8:seq",
]


FORMULAS: dict[str, str] = {}


def parse_row(row: str):
    method, rest = row.split(":", 1)
    pat, mode = rest.rsplit(":", 1)
    if pat not in PATTERNS or mode not in ("seq", "oneshot"):
        raise SystemExit(f"error: bad row '{row}': write METHOD:(u|2:4|4:8):(seq|oneshot)")
    return method, PATTERNS[pat], mode == "seq"


def render(out: Path, meta: dict) -> None:
    rows = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("*.json"))]
    dense = next((r for r in rows if r["method"] == "dense"), None)
    lines = [f"# Baselines on {meta['model']}", "",
             f"Command: `{meta['command']}`", "",
             f"Protocol: seqlen {meta['seqlen']}, {meta['nsamples']} C4 calibration windows (seed {meta['seed']}), "
             f"WikiText-2 raw test, {meta['eval_windows'] or 'all'} windows"
             + (f"; C4 validation (the first 1100 documents of c4-validation.subset2000.json joined with a space), "
                f"{meta['eval_windows'] or 'up to 256'} windows" if any("c4_ppl" in r for r in rows) else "")
             + f". Hardware: {meta['hardware']}. "
             "Sequential = Wanda's layer-by-layer calibration; one-shot = no calibration forward needed "
             "(magnitude) or statistics from the dense model (Pruner-Zero's gradients).", "",
             "| method | pattern | mode | WikiText-2 ppl | C4 ppl | sparsity | prune s | eval windows |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]

    def c4(r):
        return f"{r['c4_ppl']:.2f}" if "c4_ppl" in r else "-"
    if dense:
        lines.append(f"| dense | - | - | {dense['ppl']:.2f} | {c4(dense)} | 0 | - | {dense['windows']} |")
    order = {r: i for i, r in enumerate(meta["rows"])}
    for r in sorted((r for r in rows if r["method"] != "dense"), key=lambda r: order.get(r["row"], 99)):
        lines.append(f"| {r['method']} | {r['pattern']} | {'sequential' if r['sequential'] else 'one-shot'} | "
                     f"{r['ppl']:.2f} | {c4(r)} | {r['sparsity']:.4f} | {r['prune_seconds']:.0f} | {r['windows']} |")
    if meta.get("formulas"):
        lines += [""] + [f"`{name}` = `{text}`" for name, text in meta["formulas"].items()]
    missing = [r for r in meta["rows"] if not (out / "rows" / f"{r.replace(':', '_')}.json").exists()]
    if missing:
        lines += ["", f"Not yet run: {', '.join(missing)} (rerun the command to fill them in)."]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--out", default="results/baselines")
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS))
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--eval-windows", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--eval", default="wikitext2", help="comma-separated: wikitext2,c4")
    ap.add_argument("--formula", action="append", default=[], help="NAME=FORMULA, usable as a row METHOD")
    ap.add_argument("--render-only", action="store_true", help="re-render <out>.md from the finished rows, run nothing")
    args = ap.parse_args()
    for item in args.formula:
        name, _, text = item.partition("=")
        if not name or not text:
            raise SystemExit(f"error: --formula '{item}' is not NAME=FORMULA")
        FORMULAS[name] = text
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in rows:
        if r != "dense":
            parse_row(r)
    out = Path(args.out)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    if args.render_only:
        hw = f"{platform.machine()}, {args.threads or torch.get_num_threads()} threads"
        render(out, {"model": args.model, "command": "python " + shlex.join(sys.argv).replace(" --render-only", ""),
                     "seqlen": args.seqlen, "nsamples": args.nsamples, "seed": args.seed,
                     "eval_windows": args.eval_windows, "hardware": hw, "rows": rows, "formulas": FORMULAS})
        return
    lm = load_model(args.model, device=args.device, dtype=args.dtype, seqlen=args.seqlen)
    hw = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available() and lm.device.type == "cuda":
        hw = torch.cuda.get_device_name(lm.device)
    meta = {"model": args.model, "command": "python " + shlex.join(sys.argv), "seqlen": lm.seqlen,
            "nsamples": args.nsamples, "seed": args.seed, "eval_windows": args.eval_windows, "hardware": hw,
            "rows": rows, "formulas": FORMULAS}
    cfg = CalibConfig(args.nsamples, args.seed, args.batch_size, args.data_dir)
    snapshot = WeightSnapshot(all_prunable(lm.model), device="cpu")

    datasets = [d.strip() for d in args.eval.split(",") if d.strip()]

    def evaluate():
        res = {ds: ppl_on(lm, ds, "test", args.eval_windows, args.batch_size, args.data_dir, progress=True)
               for ds in datasets}
        out = dict(res["wikitext2"])
        for ds, r in res.items():
            if ds != "wikitext2":
                out[f"{ds}_ppl"], out[f"{ds}_windows"] = r["ppl"], r["windows"]
        return out

    for row in rows:
        path = out / "rows" / f"{row.replace(':', '_')}.json"
        if path.exists():
            continue
        if row == "dense":
            atomic_write_text(path, json.dumps({"method": "dense", "row": "dense", **evaluate()}, indent=2))
            render(out, meta)
            continue
        method, pat, seq = parse_row(row)
        spec = FORMULAS.get(method, method)
        pattern = parse_pattern(0.5, pat, default_group(spec))
        t0 = time.time()
        pr = prune(lm, spec, pattern, cfg, sequential=seq)
        res = evaluate()
        atomic_write_text(path, json.dumps({"row": row, "method": method, "formula": spec, "pattern": str(pattern),
                                            "sequential": seq, "sparsity": pr.sparsity, "prune_seconds": pr.seconds,
                                            "total_seconds": time.time() - t0, **res}, indent=2))
        snapshot.restore()
        render(out, meta)
        print(f"{row}: ppl {res['ppl']:.3f}", flush=True)
    render(out, meta)


if __name__ == "__main__":
    main()
