"""Command line: ``prunerzero search | show | prune | structural | eval``.

Every bad input ends in one line on stderr, ``error: <what is wrong and what to do>``, and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

from .errors import UserError
from .fsutil import atomic_folder, atomic_write_text, require_empty


def _common_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2", help="'smollm2', a .gguf file, a save_pretrained folder or a hub id")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="fp32 | fp16 | bf16 | auto (fp32 on CPU, fp16 on GPU)")
    p.add_argument("--device-map", default=None, help="'auto' spreads a large model over all GPUs (accelerate)")
    p.add_argument("--seqlen", type=int, default=2048, help="window length (capped at the model's context)")
    p.add_argument("--data-dir", default=None, help="folder with wikitext-2-raw/ and c4/ (default: $PRUNERZERO_DATA)")
    p.add_argument("--cache-dir", default=None, help="model and statistics cache (default: ~/.cache/prunerzero)")
    p.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    p.add_argument("--eval-windows", type=int, default=None, help="evaluate the first N windows only (default: all)")
    p.add_argument("--eval", default="wikitext2", help="comma-separated: wikitext2,c4")
    p.add_argument("--tasks", default=None, help="comma-separated lm-eval zero-shot tasks (needs prunerzero[eval])")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _load(args):
    from .data import resolve_data_dir
    from .models import load_model

    resolve_data_dir(args.data_dir)  # fail before the (slow) model load
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    return load_model(args.model, device=args.device, dtype=args.dtype, cache=args.cache_dir,
                      device_map=args.device_map, seqlen=args.seqlen)


def _evaluate(lm, args) -> dict:
    from .evaluate import zero_shot
    from .pipeline import evaluate_all

    datasets = [d.strip() for d in args.eval.split(",") if d.strip()]
    out = evaluate_all(lm, datasets, args.eval_windows, args.batch_size, args.data_dir, not args.quiet)
    if args.tasks:
        out["zero_shot"] = zero_shot(lm, [t.strip() for t in args.tasks.split(",")], args.batch_size)
    return out


def _ppl_line(res: dict) -> str:
    return "  ".join(f"{ds} ppl {r['ppl']:.3f} ({r['windows']} windows)" for ds, r in res.items() if "ppl" in r)


def save_model(lm, target: str) -> None:
    """save_pretrained into a temporary folder next to ``target``, then rename (no half-written folder)."""
    with atomic_folder(target) as tmp:
        lm.model.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)


def _command() -> str:
    """The command line as it can be pasted back into a shell (formulas contain spaces and parentheses)."""
    return "prunerzero " + shlex.join(sys.argv[1:])


def _write_json(path: str | None, payload: dict) -> None:
    if path:
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def cmd_prune(args) -> None:
    from .pipeline import CalibConfig, default_group, prune
    from .prune.masks import parse_pattern

    pattern = parse_pattern(args.sparsity, args.pattern, args.group or default_group(args.metric))
    if args.save:
        require_empty(args.save, "--save folder")
    lm = _load(args)
    cfg = CalibConfig(args.nsamples, args.seed, args.batch_size, args.data_dir, args.cache_dir)
    payload = {"command": _command(), "model": args.model, "metric": args.metric,
               "pattern": str(pattern), "sequential": args.sequential, "nsamples": args.nsamples, "seed": args.seed,
               "seqlen": lm.seqlen}
    if not args.skip_dense:
        payload["dense"] = _evaluate(lm, args)
        print(f"dense   {_ppl_line(payload['dense'])}", flush=True)
    payload.update(update=args.update, allocation=args.allocation, permute=args.permute)
    if args.allocation == "owl":
        payload.update(owl_lambda=args.owl_lambda, owl_m=args.owl_m)
    res = prune(lm, args.metric, pattern, cfg, sequential=args.sequential, progress=not args.quiet,
                update=args.update, allocation=args.allocation, owl_lambda=args.owl_lambda, owl_m=args.owl_m,
                permute=args.permute)
    payload.update(sparsity=res.sparsity, prune_seconds=res.seconds)
    t0 = time.time()
    payload["pruned"] = _evaluate(lm, args)
    print(f"pruned  {_ppl_line(payload['pruned'])}  [{res.method}, {pattern}, "
          f"{'sequential' if args.sequential else 'one-shot'}]")
    print(f"sparsity {res.sparsity:.4f} of prunable weights; prune {res.seconds:.1f}s, eval {time.time() - t0:.1f}s")
    if args.save:
        save_model(lm, args.save)
        print(f"saved to {args.save}")
    _write_json(args.json, payload)


def cmd_eval(args) -> None:
    lm = _load(args)
    payload = {"command": _command(), "model": args.model, "seqlen": lm.seqlen,
               "eval": _evaluate(lm, args)}
    print(_ppl_line(payload["eval"]))
    if "zero_shot" in payload["eval"]:
        print(json.dumps(payload["eval"]["zero_shot"], indent=2))
    _write_json(args.json, payload)


def cmd_search(args) -> None:
    from .data import resolve_data_dir
    from .search.engine import Search, load_run_space
    from .search.space import load_space, validate
    from .search.table import format_table
    from .search.workers import InProcess, RayPool, build_evaluator

    if args.max_minutes is not None and args.max_minutes <= 0:
        raise UserError("--max-minutes must be > 0 (or leave it out: no time limit)")
    resolve_data_dir(args.data_dir)
    if args.resume:
        space, meta = load_run_space(args.resume)
        out = args.resume
        if args.generations is not None:
            space.raw["gp"]["generations"] = args.generations
    else:
        space = load_space(args.space)
        raw = space.raw
        for key, value in (("generations", args.generations), ("population", args.population), ("seed", args.seed)):
            if value is not None:
                raw["gp"][key] = value
        for key, value in (("model", args.model), ("eval_windows", args.eval_windows), ("nsamples", args.nsamples),
                           ("seqlen", args.seqlen), ("device", args.device), ("dtype", args.dtype),
                           ("batch_size", args.batch_size)):
            if value is not None:
                raw["fitness"][key] = value
        space = validate(raw, space.path)
        meta = {"command": _command(), "space_file": args.space}
        out = args.out or f"results/search-{space.name}"
    terminals = space.raw["terminals"]
    if args.workers > 1:
        evaluate_many = RayPool(space.fitness, terminals, args.workers, args.data_dir, args.cache_dir)
    else:
        evaluate_many = InProcess(build_evaluator(space.fitness, terminals, args.data_dir, args.cache_dir,
                                                  not args.quiet))
    search = Search(space, out, evaluate_many, meta, progress=not args.quiet, on_resume=evaluate_many.preload)
    search.run(resume=bool(args.resume), max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    print(format_table(out, args.top))
    print(f"run directory: {out}")


def cmd_show(args) -> None:
    from .search.table import format_table

    print(format_table(args.run, args.top))


def cmd_structural(args) -> None:
    from .pipeline import CalibConfig, StructuralConfig, eval_at, structural
    from .prune.structural import forward_latency, save_structural

    if args.save:
        require_empty(args.save, "--save folder")
    cfg = StructuralConfig(sparsity=args.sparsity, metric=args.metric, init=args.init, steps=args.steps,
                           samples=args.samples, lr=args.lr, batch_size=args.pg_batch_size,
                           calib_seqlen=args.calib_seqlen, seed=args.seed, attn_score=args.attn_score,
                           mlp_score=args.mlp_score)
    if cfg.init not in ("metric", "const", "random", "oneshot"):
        raise UserError(f"unknown --init '{cfg.init}': use metric, const, random or oneshot")
    if cfg.init in ("metric", "oneshot"):
        from .metric.known import resolve_metric
        resolve_metric(cfg.metric)
    lm = _load(args)
    datasets = [d.strip() for d in args.eval.split(",") if d.strip()]
    seqlens = [int(s) for s in args.eval_seqlens.split(",")]
    payload = {"command": _command(), "model": args.model, "sparsity": args.sparsity,
               "init": args.init, "metric": args.metric, "steps": args.steps, "samples": args.samples,
               "lr": args.lr, "nsamples": args.nsamples, "calib_seqlen": args.calib_seqlen,
               "eval_windows": args.eval_windows}
    lat_len = args.latency_seqlen
    if not args.skip_dense:
        payload["dense"] = {str(L): eval_at(lm, L, datasets, args.eval_windows, args.batch_size, args.data_dir,
                                            not args.quiet) for L in seqlens}
        payload["latency_before_s"] = forward_latency(lm.model, lat_len)
        for L, res in payload["dense"].items():
            print(f"dense   seqlen {L}: {_ppl_line(res)}", flush=True)
    res = structural(lm, cfg, CalibConfig(args.nsamples, args.seed, 1, args.data_dir, args.cache_dir),
                     progress=not args.quiet)
    payload.update({k: v for k, v in res.items() if k != "masks"})
    payload["pruned"] = {str(L): eval_at(lm, L, datasets, args.eval_windows, args.batch_size, args.data_dir,
                                         not args.quiet) for L in seqlens}
    payload["latency_after_s"] = forward_latency(lm.model, lat_len)
    b, a = res["params_before"], res["params_after"]
    for L, r in payload["pruned"].items():
        print(f"pruned  seqlen {L}: {_ppl_line(r)}  [{args.init}, {args.metric if args.init != 'const' else '-'}]")
    print(f"parameters {b['total']:,} -> {a['total']:,} (prunable {b['prunable']:,} -> {a['prunable']:,}, "
          f"{res['removed_fraction']:.1%} removed); optimisation {res['seconds']:.0f}s")
    if "latency_before_s" in payload:
        print(f"forward latency at seqlen {lat_len}: {payload['latency_before_s'] * 1000:.0f} ms -> "
              f"{payload['latency_after_s'] * 1000:.0f} ms")
    if args.save:
        save_structural(lm.model, lm.tokenizer, args.save)
        print(f"saved to {args.save} (load with trust_remote_code=True)")
    _write_json(args.json, payload)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunerzero", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune a model with a metric (name or formula) or SparseGPT; report ppl")
    _common_model_args(p)
    p.add_argument("--metric", default="wanda",
                   help="magnitude | wanda | pruner-zero | gblm | ria | sparsegpt | a formula like mul(abs(W), sqrt(X))")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--pattern", default=None, help="N:M such as 2:4 or 4:8 (default: unstructured)")
    p.add_argument("--group", default=None, choices=["row", "layer"],
                   help="unstructured comparison group (default: the metric's paper: layer for magnitude, else row)")
    p.add_argument("--sequential", action="store_true", help="Wanda's layer-by-layer calibration (else one-shot)")
    p.add_argument("--update", default="none", choices=["none", "obs"],
                   help="obs: after the metric's mask, reconstruct the kept weights (SparseGPT's OBS update)")
    p.add_argument("--allocation", default="uniform", choices=["uniform", "owl"],
                   help="layer-wise sparsity: uniform, or OWL (outlier-weighted; unstructured only)")
    p.add_argument("--owl-lambda", type=float, default=0.08, help="OWL: block sparsities spread over 2*lambda")
    p.add_argument("--owl-m", type=float, default=5.0, help="OWL: outlier = Wanda score above M x block mean")
    p.add_argument("--permute", action="store_true",
                   help="N:M: permute o_proj/down_proj input channels (and their producers) to keep more score")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-dense", action="store_true", help="do not evaluate the dense model first")
    p.add_argument("--save", default=None, help="write the pruned model here (plain transformers loads it)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("search", help="discover a pruning metric by genetic programming")
    p.add_argument("--space", default="search_spaces/prunerzero.yaml", help="search space YAML")
    p.add_argument("--out", default=None, help="run directory (default results/search-<space name>)")
    p.add_argument("--resume", default=None, help="continue the run in this directory")
    p.add_argument("--generations", type=int, default=None)
    p.add_argument("--population", type=int, default=None)
    p.add_argument("--seed", type=int, default=None, help="GP seed")
    p.add_argument("--model", default=None)
    p.add_argument("--eval-windows", type=int, default=None, help="fitness windows (WikiText-2 validation)")
    p.add_argument("--nsamples", type=int, default=None, help="calibration windows for X and G")
    p.add_argument("--seqlen", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=1, help="evaluate on N GPUs through Ray (prunerzero[ray])")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop after the generation that ends past this wall time (resume later with --resume)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--top", type=int, default=10, help="rows of the final table")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("show", help="table of the best distinct formulas of a search run")
    p.add_argument("run", help="search run directory")
    p.add_argument("--top", type=int, default=10)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("structural", help="remove KV-head groups and MLP channels (policy gradient, forward only)")
    _common_model_args(p)
    p.add_argument("--sparsity", type=float, default=0.2, help="fraction of prunable parameters to remove")
    p.add_argument("--metric", default="wanda", help="metric (name or formula) for the initial probabilities")
    p.add_argument("--init", default="metric", help="metric | const | random | oneshot (metric scores, no PG)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--samples", type=int, default=2, help="masks sampled per step (K)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--pg-batch-size", type=int, default=4, help="calibration windows per step")
    p.add_argument("--calib-seqlen", type=int, default=128)
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows (C4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attn-score", default="kv", choices=["kv", "out", "qkv", "all"],
                   help="weights whose metric scores a KV group: k/v rows, o_proj columns, q/k/v rows, or all")
    p.add_argument("--mlp-score", default="out", choices=["out", "in", "all"],
                   help="weights whose metric scores an MLP channel: down column, gate/up rows, or all")
    p.add_argument("--eval-seqlens", default="128,2048", help="perplexity window lengths to report")
    p.add_argument("--latency-seqlen", type=int, default=2048)
    p.add_argument("--skip-dense", action="store_true")
    p.add_argument("--save", default=None, help="write the sliced model here")
    p.set_defaults(func=cmd_structural)

    p = sub.add_parser("eval", help="perplexity (and optional zero-shot) of a model")
    _common_model_args(p)
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
