"""`prunerzero structural`: remove KV-head groups and MLP channels (forward-only policy gradient)."""
from __future__ import annotations

import argparse
import dataclasses

from .. import checks
from ..specs import probe_folder
from ..prune.structural.policy import STRUCTURAL_INITS
from ._common import (FRACTION, at_least, check_model_args, command, common_model_args, load, ppl_line,
                      provenance, shell_command, write_json, number)

HELP = "remove KV-head groups and MLP channels (policy gradient, forward passes only)"


# structural options that map one-to-one onto StructuralConfig fields (CLI name -> field)
STRUCTURAL_FIELDS = {"sparsity": "sparsity", "metric": "metric", "init": "init", "steps": "steps",
                     "samples": "samples", "lr": "lr", "pg_batch_size": "batch_size", "calib_seqlen": "calib_seqlen",
                     "nsamples": "nsamples", "init_nsamples": "init_nsamples", "init_seqlen": "init_seqlen",
                     "seed": "seed", "attn_score": "attn_score", "mlp_score": "mlp_score",
                     "eval_seqlens": "eval_seqlens", "eval_windows": "eval_windows", "reconstruct": "reconstruct",
                     "curve_every": "curve_every"}


def cmd_structural(args) -> None:
    from ..pipeline import CalibConfig, check_structural, eval_at, structural, structural_config
    from ..prune.structural import forward_latency, save_structural
    from ..prune.structural.slicing import check_save

    explicit = {field: getattr(args, name) for name, field in STRUCTURAL_FIELDS.items()}
    cfg = structural_config(None if args.preset == "none" else args.preset, uniform=args.uniform or None, **explicit)
    check_structural(cfg)
    if cfg.init in ("metric", "oneshot"):
        from ..metric.known import resolve_metric
        resolve_metric(cfg.metric)
    seqlens = checks.int_list(cfg.eval_seqlens, "--eval-seqlens", 2)
    probe_folder(args.save, "--save", must_be_empty=True)
    check_model_args(args, calibration=True)
    lm = load(args)
    if args.save:   # a per-layer save of a family without a per-layer class: refused before minutes of pruning
        check_save(lm.model.config, cfg.uniform)
    datasets = args.eval_sets
    payload = {"command": shell_command(), "provenance": provenance(lm), "model": args.model, "preset": args.preset,
               "bos": args.bos, "config": dataclasses.asdict(cfg), "sparsity": cfg.sparsity, "init": cfg.init,
               "metric": cfg.metric, "steps": cfg.steps, "samples": cfg.samples, "lr": cfg.lr, "nsamples": cfg.nsamples,
               "calib_seqlen": cfg.calib_seqlen, "eval_windows": cfg.eval_windows,
               "evaluation": f"WikiText-style perplexity on the first {cfg.eval_windows or 'all'} non-overlapping "
                             f"windows of each length of the test split"}
    lat_len, reps = args.latency_seqlen, args.latency_repeats

    def evaluate_at(progress: bool = not args.quiet):
        return {str(L): eval_at(lm, L, datasets, cfg.eval_windows, args.batch_size, args.data_dir, progress)
                for L in seqlens}

    if not args.skip_dense:
        payload["dense"] = evaluate_at()
        if reps:
            payload["latency_before_s"] = forward_latency(lm.model, lat_len, repeats=reps)
        for L, res in payload["dense"].items():
            print(f"dense   seqlen {L}: {ppl_line(res)}", flush=True)
    def curve_eval():  # the final evaluation, quietly, keyed dataset@length
        return {f"{ds}@{L}": r["ppl"] for L, res in evaluate_at(False).items() for ds, r in res.items()}

    res = structural(lm, cfg, CalibConfig(seed=cfg.seed, data_dir=args.data_dir, cache=args.cache_dir),
                     progress=not args.quiet, curve_eval=curve_eval)
    payload.update({k: v for k, v in res.items() if k not in ("masks", "probs")})
    payload["pruned"] = evaluate_at()
    if reps:
        payload["latency_after_s"] = forward_latency(lm.model, lat_len, repeats=reps)
    b, a = res["params_before"], res["params_after"]
    label = f"{cfg.init}, {cfg.metric if cfg.init != 'const' else '-'}{', uniform' if cfg.uniform else ''}"
    for L, r in payload["pruned"].items():
        print(f"pruned  seqlen {L}: {ppl_line(r)}  [{label}]")
    print(f"parameters {b['total']:,} -> {a['total']:,} (prunable {b['prunable']:,} -> {a['prunable']:,}, "
          f"{res['removed_fraction']:.3%} removed); optimisation {res['seconds']:.0f}s")
    if res.get("compensation"):
        c = res["compensation"]
        print(f"least-squares compensation of o_proj / down_proj on {c['windows'][0]} x {c['windows'][1]} tokens: "
              f"{c['seconds']:.0f}s, mean relative squared output error left {c['mean_relative_sq_error']:.4f}")
    if "latency_before_s" in payload:
        print(f"forward latency at seqlen {lat_len} (median of {reps}): {payload['latency_before_s'] * 1000:.0f} ms "
              f"-> {payload['latency_after_s'] * 1000:.0f} ms")
    if args.save:
        remote = save_structural(lm.model, lm.tokenizer, args.save)
        print(f"saved to {args.save} " + ("(per-layer widths: load with trust_remote_code=True, or run it in "
                                          "llama.cpp: prunerzero export --format gguf)" if remote
                                          else "(uniform widths: a stock config of the family, no remote code)"))
    write_json(args.json, payload)


def add_parser(sub) -> None:
    from ..pipeline import DEFAULT_STRUCTURAL_PRESET, STRUCTURAL_PRESETS, structural_config

    p = command(sub, "structural", HELP)
    g = common_model_args(p)
    what, how, ev, out = g["what to prune"], g["how"], g["evaluation"], g["output"]
    # the defaults as they apply: the default preset's values (over StructuralConfig's plain ones)
    D = structural_config(DEFAULT_STRUCTURAL_PRESET)
    for action in p._actions:   # the preset evaluates a subset of windows
        if action.dest == "eval_windows":
            action.help = ("evaluate the first N windows of each length and dataset "
                           f"(default: {D.eval_windows or 'all of them'})")
    p.description = (f"{HELP}. Without --preset the {DEFAULT_STRUCTURAL_PRESET} preset applies; the defaults below "
                     "are its values (--preset none: StructuralConfig's plain defaults)")
    how.add_argument("--preset", default=DEFAULT_STRUCTURAL_PRESET, choices=[*sorted(STRUCTURAL_PRESETS), "none"],
                     help="named settings; official-pg: the official backprop-free PG code's (wanda-sp init from "
                          "32 x 1024 C4 tokens, K=2, 8 x 128-token windows per step, lr 2e-3, 320 x 128-token "
                          "evaluation windows); official-pg-ls: the same with lr 0.02, 300 steps and the "
                          "least-squares refit, the best measured at 20%% (results/structural-official-lr-cpu.md); "
                          "none: StructuralConfig's plain settings. Explicit options override the preset")
    what.add_argument("--sparsity", type=FRACTION, default=None,
                      help=f"fraction of prunable parameters to remove (default: {D.sparsity:g})")
    what.add_argument("--metric", default=None,
                      help=f"metric (name or formula) for the initial probabilities (default: {D.metric})")
    what.add_argument("--attn-score", default=None, choices=["kv", "out", "qkv", "all"],
                      help="weights whose metric scores a KV group: k/v rows, o_proj columns, q/k/v rows, or all "
                           f"(default: {D.attn_score})")
    what.add_argument("--mlp-score", default=None, choices=["out", "in", "all"],
                      help="weights whose metric scores an MLP channel: down column, gate/up rows, or all "
                           f"(default: {D.mlp_score})")
    what.add_argument("--uniform", action="store_true",
                      help="every layer keeps the same number of KV groups and MLP channels (per-layer top-k of "
                           "the policy), so --save writes a stock LlamaConfig that loads without trust_remote_code")
    how.add_argument("--init", default=None, choices=STRUCTURAL_INITS,
                     help="initial policy: metric scores, constant, random, or oneshot (top metric scores, no PG) "
                          f"(default: {D.init})")
    how.add_argument("--steps", type=at_least(1), default=None, help=f"policy-gradient steps (default: {D.steps})")
    how.add_argument("--samples", type=at_least(2), default=None,
                     help=f"masks sampled per step (K) (default: {D.samples})")
    how.add_argument("--lr", type=number(0.0), default=None,
                     help=f"policy learning rate, cosine-decayed (default: {D.lr:g})")
    how.add_argument("--pg-batch-size", type=at_least(1), default=None,
                     help=f"calibration windows per step (default: {D.batch_size})")
    how.add_argument("--calib-seqlen", type=at_least(2), default=None,
                     help=f"tokens per policy-gradient window (default: {D.calib_seqlen})")
    how.add_argument("--nsamples", type=at_least(0), default=None,
                     help="C4 windows the policy cycles through; 0 = steps x pg-batch-size, none seen twice "
                          f"(default: {D.nsamples})")
    how.add_argument("--init-nsamples", type=at_least(0), default=None,
                     help="C4 windows for the metric statistics of the initialisation (and of --reconstruct); 0 = "
                          "the policy's windows for the statistics and 32 for the refit "
                          f"(default: {D.init_nsamples})")
    how.add_argument("--init-seqlen", type=at_least(0), default=None,
                     help=f"tokens per statistics window; 0 = --calib-seqlen (default: {D.init_seqlen})")
    how.add_argument("--seed", type=at_least(0), default=None,
                     help=f"seed of the sampler and the policy (default: {D.seed})")
    how.add_argument("--reconstruct", action=argparse.BooleanOptionalAction, default=None,
                     help="before slicing, refit the kept o_proj / down_proj columns by least squares on "
                          "calibration windows (the statistics windows: --init-nsamples x --init-seqlen); "
                          f"--no-reconstruct turns it off (default: {'on' if D.reconstruct else 'off'})")
    ev.add_argument("--eval-seqlens", default=None,
                    help=f"comma-separated perplexity window lengths (default: {D.eval_seqlens})")
    ev.add_argument("--curve-every", type=at_least(0), default=None,
                    help="learning curve: evaluate the policy's hard masks (the final evaluation, before any refit) "
                         "at step 0, every N steps and at the last; printed and kept in --json as 'curve'; 0 = no "
                         f"curve (default: {D.curve_every})")
    ev.add_argument("--latency-seqlen", type=at_least(1), default=2048,
                    help="tokens of the timed forward pass (with --latency-repeats)")
    ev.add_argument("--latency-repeats", type=at_least(0), default=0,
                    help="time the forward pass this many times after 2 warm-ups and report the median; 0 = not "
                         "timed (benchmarks/structural_speed.py measures prefill and decoding)")
    ev.add_argument("--skip-dense", action="store_true", help="do not evaluate the dense model first")
    out.add_argument("--save", default=None, help="write the sliced model to this new folder (default: not saved)")
    p.set_defaults(func=cmd_structural)
