"""Why is policy-gradient structural pruning at 20% worse than the official code? Initial scores x learning rate.

    nice -n 10 python benchmarks/structural_ablation.py --steps 10 --eval-windows 80 --out results/structural-ablation

Every cell starts from the ``official-pg`` preset (K=2, 8 x 128-token C4 windows per step, each seen once, init
statistics from 32 x 1024 C4 tokens) and changes only the initial scores and the learning rate:

- ``wanda-sp``: |W| sqrt(X) summed over a KV group's o_proj columns and a channel's down_proj column (official);
- ``wanda``: |W| sqrt(X) summed over a KV group's k/v rows and a channel's down_proj column (our default scores);
- ``found``: the searched formula (``--found``) with our default score reductions.

Each cell evaluates the per-layer-width mask (global top-k) and, with ``--uniform``, the uniform-width mask
(per-layer top-k, the same k in every layer) taken from the same learned probabilities, on the first
``--eval-windows`` non-overlapping 128-token windows of WikiText-2 test (320: the official-pg evaluation).
Rows go to ``<out>/rows/*.json`` (a rerun skips finished rows); ``<out>.md`` is re-rendered after every row.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from prunerzero.fsutil import atomic_write_text
from prunerzero.models import load_model
from prunerzero.pipeline import CalibConfig, eval_at, structural, structural_config
from prunerzero.prune import structural as st

FOUND = "mul(sqrt(sub(X, G)), abs(W))"
INITS = {"wanda-sp": ("wanda", "out", "out"), "wanda": ("wanda", "kv", "out"), "found": (None, "kv", "out")}


def render(out: Path, meta: dict) -> None:
    rows = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("*.json"))]
    dense = next((r for r in rows if r["init"] == "dense"), None)
    lines = [f"# Structural pruning ablation: initial scores x learning rate ({meta['model']})", "",
             f"Command: `{meta['command']}`", "",
             f"Protocol: the `official-pg` preset (K=2, 8 x 128-token C4 windows per step, each window seen once, "
             "cosine lr, init statistics from 32 x 1024 C4 tokens) with "
             f"{meta['steps']} steps (the official paper runs "
             "15,000; the issue's comparison 300), only the initial scores and lr changed; sparsity "
             f"{meta['sparsity']:.0%} of the prunable parameters. Perplexity: WikiText-2 test, the first "
             f"{meta['eval_windows']} non-overlapping 128-token windows (the official-pg evaluation uses 320). "
             "`uniform` = the same learned probabilities, per-layer top-k with "
             f"the same k in every layer (a stock LlamaConfig). Hardware: {meta['hardware']}. Found formula: "
             f"`{meta['found']}`.", ""]
    if dense:
        lines += [f"Dense: {dense['ppl']:.2f}.", ""]
    lines += ["| init scores | lr | seed | ppl per-layer widths | removed | ppl uniform widths | removed (uniform) | "
              "final PG loss | optimisation s |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def key(r):
        return list(INITS).index(r["init"]), r["lr"], r["seed"]

    for r in sorted((r for r in rows if r["init"] != "dense"), key=key):
        uni = (f"{r['uniform']['ppl']:.2f} | {r['uniform']['removed']:.3%}" if "uniform" in r else "- | -")
        lines.append(f"| {r['init']} | {r['lr']:g} | {r['seed']} | {r['ppl']:.2f} | {r['removed']:.3%} | {uni} | "
                     f"{r['final_loss']:.3f} | {r['seconds']:.0f} |")
    groups: dict = {}
    for r in rows:
        if r["init"] != "dense":
            groups.setdefault((list(INITS).index(r["init"]), r["init"], r["lr"]), []).append(r["ppl"])
    if any(len(v) > 1 for v in groups.values()):
        lines += ["", "| init scores | lr | seeds | mean ppl | min | max |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for (_, init, lr), v in sorted(groups.items()):
            lines.append(f"| {init} | {lr:g} | {len(v)} | {sum(v) / len(v):.2f} | {min(v):.2f} | {max(v):.2f} |")
    if meta.get("note"):
        lines += ["", meta["note"]]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="model to prune")
    ap.add_argument("--sparsity", type=float, default=0.2, help="fraction of prunable parameters removed")
    ap.add_argument("--inits", default="wanda-sp,wanda,found", help=f"comma-separated of {', '.join(INITS)}")
    ap.add_argument("--lrs", default="0.002,0.02", help="comma-separated learning rates")
    ap.add_argument("--seeds", default="0", help="comma-separated policy/sampler seeds")
    ap.add_argument("--steps", type=int, default=25, help="policy-gradient steps per cell")
    ap.add_argument("--found", default=FOUND, help="the searched formula of the 'found' init")
    ap.add_argument("--uniform", default="wanda-sp,wanda,found",
                    help="inits whose cells also evaluate the uniform-width mask (empty: none)")
    ap.add_argument("--eval-windows", type=int, default=320, help="first N 128-token WikiText-2 test windows")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default="results/structural-ablation", help="row folder; <out>.md is the table")
    ap.add_argument("--note", default="", help="a paragraph written under the table")
    ap.add_argument("--skip-dense", action="store_true", help="do not evaluate the dense model (another run does)")
    ap.add_argument("--render-only", action="store_true", help="re-render <out>.md from the finished rows")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    hw = (torch.cuda.get_device_name() if torch.cuda.is_available()
          else f"{platform.machine()}, {torch.get_num_threads()} threads (2 shared cores)")
    command = "python " + shlex.join(sys.argv).replace(" --render-only", "").replace(" --skip-dense", "")
    meta = {"model": args.model, "command": command,
            "steps": args.steps, "sparsity": args.sparsity, "hardware": hw, "found": args.found,
            "eval_windows": args.eval_windows, "note": args.note}
    if args.render_only:
        render(out, meta)
        return

    base = load_model(args.model)
    dense_model = copy.deepcopy(base.model)

    def ppl(lm):
        return eval_at(lm, 128, ["wikitext2"], args.eval_windows, 8, progress=False)["wikitext2"]["ppl"]

    def restore():
        base.model = copy.deepcopy(dense_model)
        return base

    path = out / "rows" / "dense.json"
    if not path.exists() and not args.skip_dense:
        atomic_write_text(path, json.dumps({"init": "dense", "ppl": ppl(restore())}))
        render(out, meta)
    uniform_for = set(filter(None, args.uniform.split(",")))
    for init in args.inits.split(","):
        order = list(INITS).index(init)
        metric, attn, mlp = INITS[init]
        for lr in (float(x) for x in args.lrs.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                path = out / "rows" / f"s{args.sparsity:g}_{init}_lr{lr:g}_seed{seed}.json"
                if path.exists():
                    continue
                cfg = structural_config("official-pg", sparsity=args.sparsity, steps=args.steps, lr=lr, seed=seed,
                                        metric=metric or args.found, attn_score=attn, mlp_score=mlp)
                t0 = time.time()
                res = structural(restore(), cfg, CalibConfig(seed=seed), progress=False)
                row = {"init": init, "order": order, "lr": lr, "seed": seed, "steps": args.steps,
                       "metric": cfg.metric, "attn_score": attn, "mlp_score": mlp, "ppl": ppl(base),
                       "removed": res["removed_fraction"], "params": res["params_after"]["total"],
                       "seconds": res["seconds"], "final_loss": res["history"][-1]["baseline"],
                       "layer_shapes": res["layer_shapes"], "history": res["history"]}
                if init in uniform_for:
                    lm = restore()
                    widths = st.uniform_widths(st.Layout.of(lm.model), 1 - args.sparsity)
                    before = st.count_params(lm.model)
                    shapes = st.slice_model(lm.model, st.uniform_keep(res["probs"], widths))
                    after = st.count_params(lm.model)
                    row["uniform"] = {"ppl": ppl(lm), "removed": 1 - after["prunable"] / before["prunable"],
                                      "params": after["total"], "layer_shape": shapes[0]}
                row["wall_s"] = time.time() - t0
                atomic_write_text(path, json.dumps(row, indent=1))
                render(out, meta)
                print(f"{init} lr {lr:g} seed {seed}: ppl {row['ppl']:.2f}"
                      + (f", uniform {row['uniform']['ppl']:.2f}" if "uniform" in row else "")
                      + f" ({row['wall_s']:.0f}s)", flush=True)
    render(out, meta)


if __name__ == "__main__":
    main()
