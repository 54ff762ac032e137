"""`prunerzero prune`: prune a model with a metric (name or formula) or SparseGPT, and report perplexity."""
from __future__ import annotations

import time

from ..errors import UserError
from ..fsutil import require_empty
from ..models import save_model
from ._common import (FRACTION, P, at_least, check_model_args, command, common_model_args, evaluate, load, ppl_line,
                      provenance, shell_command, write_json, number)

HELP = "prune a model with a metric (name or formula) or SparseGPT; report perplexity"


def _prune_pattern(args):
    """The pattern a prune asks for; options that the pattern would ignore are refused, not dropped."""
    from ..pipeline import default_group
    from ..prune.masks import parse_pattern
    from ..prune.run import SPARSEGPT

    group = default_group(args.metric)  # also validates the metric name or formula
    if args.metric == SPARSEGPT and (args.update != "none" or args.permute):
        raise UserError("sparsegpt already reconstructs (OBS) and has no metric to permute by: drop --update/--permute")
    if args.percdamp is not None and args.metric != SPARSEGPT and args.update == "none":
        raise UserError("--percdamp damps the Hessian of sparsegpt or of an --update: add --update obs (or lsq, "
                        "admm), or drop it")
    if (args.owl_lambda is not None or args.owl_m is not None) and args.allocation != "owl":
        raise UserError("--owl-lambda/--owl-m set the OWL allocation: add --allocation owl, or drop them")
    if args.pattern not in (None, "", "unstructured"):
        pattern = parse_pattern(0.5, args.pattern)
        if args.sparsity is not None and args.sparsity != pattern.sparsity:
            raise UserError(f"--sparsity {args.sparsity:g} does not apply with --pattern {args.pattern} (N:M prunes "
                            f"{pattern.n} of every {pattern.m}): drop one of the two")
        if args.group is not None:
            raise UserError(f"--group applies to unstructured sparsity only: drop it with --pattern {args.pattern}")
        if args.allocation != "uniform":
            raise UserError(f"--allocation {args.allocation} applies to unstructured sparsity only: drop it with "
                            f"--pattern {args.pattern}")
        return pattern
    if args.group is not None and args.metric == SPARSEGPT:
        raise UserError("--group does not apply to sparsegpt (it selects within blocks of 128 columns of the "
                        "whole layer): drop --group")
    if args.permute:
        raise UserError("--permute applies to N:M patterns only: add e.g. --pattern 2:4, or drop --permute")
    return parse_pattern(0.5 if args.sparsity is None else args.sparsity, None, args.group or group)


def cmd_prune(args) -> None:
    from ..pipeline import CalibConfig, prune
    from ..prune.run import SPARSEGPT
    from ..prune.sparsegpt import PERCDAMP

    pattern = _prune_pattern(args)
    if args.expert_routing != "routed" or args.expert_min_tokens is not None:
        from ..models.moe import config_of, expert_count_of

        cfg = config_of(args.model, args.cache_dir)
        if cfg is None or expert_count_of(cfg) is None:
            raise UserError(f"--expert-routing/--expert-min-tokens calibrate the experts of a mixture of experts; "
                            f"{args.model} has none: drop them")
    if args.save:
        require_empty(args.save, "--save folder")
    check_model_args(args, calibration=True)
    lm = load(args)
    cfg = CalibConfig(args.nsamples, args.seed, args.batch_size, args.data_dir, args.cache_dir,
                      routing=args.expert_routing, min_tokens=args.expert_min_tokens or CalibConfig.min_tokens)
    payload = {"command": shell_command(), "provenance": provenance(lm), "model": args.model, "metric": args.metric,
               "pattern": str(pattern), "sequential": args.sequential, "nsamples": args.nsamples, "seed": args.seed,
               "seqlen": lm.seqlen, "bos": args.bos}
    if not args.skip_dense:
        payload["dense"] = evaluate(lm, args)
        print(f"dense   {ppl_line(payload['dense'])}", flush=True)
    payload.update(update=args.update, allocation=args.allocation, permute=args.permute)
    owl_lambda = 0.08 if args.owl_lambda is None else args.owl_lambda
    owl_m = 5.0 if args.owl_m is None else args.owl_m
    if args.allocation == "owl":
        payload.update(owl_lambda=owl_lambda, owl_m=owl_m)
    percdamp = PERCDAMP if args.percdamp is None else args.percdamp
    if args.metric == SPARSEGPT or args.update != "none":
        payload["percdamp"] = percdamp
    res = prune(lm, args.metric, pattern, cfg, sequential=args.sequential, progress=not args.quiet,
                update=args.update, allocation=args.allocation, owl_lambda=owl_lambda, owl_m=owl_m,
                permute=args.permute, percdamp=percdamp)
    payload.update(sparsity=res.sparsity, prune_seconds=res.seconds)
    t0 = time.time()
    payload["pruned"] = evaluate(lm, args)
    from ..results import procedure_suffix

    procedure = procedure_suffix(args.update, args.allocation, owl_lambda, owl_m, args.permute, percdamp)
    print(f"pruned  {ppl_line(payload['pruned'])}  [{res.method}, {pattern}, "
          f"{'sequential' if args.sequential else 'one-shot'}{procedure}]")
    print(f"sparsity {res.sparsity:.4f} of prunable weights; prune {res.seconds:.1f}s, eval {time.time() - t0:.1f}s")
    if res.moe is not None:
        print(res.moe.line())
        payload["moe"] = res.moe.as_dict()
    if args.save:
        save_model(lm, args.save)
        print(f"saved to {args.save}")
    write_json(args.json, payload)


def add_parser(sub) -> None:
    p = command(sub, "prune", HELP)
    common_model_args(p)
    p.add_argument("--metric", default="wanda",
                   help="magnitude | wanda | pruner-zero | gblm | ria | sparsegpt | a formula such as "
                        "mul(abs(W), sqrt(X))")
    p.add_argument("--sparsity", type=FRACTION, default=None,
                   help="fraction of each group's weights to prune, unstructured (default: 0.5; not with --pattern)")
    p.add_argument("--pattern", default=None,
                   help="N:M such as 2:4 or 4:8: prune N of every M consecutive inputs (default: unstructured)")
    p.add_argument("--group", default=None, choices=["row", "layer"],
                   help="unstructured comparison group (default: the metric's paper: layer for magnitude, else row)")
    p.add_argument("--sequential", action="store_true",
                   help="Wanda's layer-by-layer calibration through the already pruned blocks (else one-shot)")
    p.add_argument("--update", default="none", choices=["none", "obs", "lsq", "admm"],
                   help="obs: after the metric's mask, reconstruct the kept weights (SparseGPT's OBS update); "
                        "lsq: their exact least-squares values; admm: the metric re-selects its mask on the "
                        "weights as ADMM updates them, then lsq")
    p.add_argument("--allocation", default="uniform", choices=["uniform", "owl"],
                   help="layer-wise sparsity: uniform, or OWL (outlier-weighted; unstructured metrics only)")
    p.add_argument("--owl-lambda", type=number(0.0, 0.5), default=None,
                   help="OWL: block sparsities spread over 2*lambda (default: 0.08)")
    p.add_argument("--owl-m", type=number(0.0), default=None,
                   help="OWL: an outlier is a Wanda score above M x the block mean (default: 5)")
    p.add_argument("--permute", action="store_true",
                   help="N:M only: permute o_proj/down_proj input channels (and their producers) to keep more score")
    p.add_argument("--percdamp", type=number(0.0), default=None,
                   help="Hessian damping of sparsegpt and of --update, a fraction of the mean of diag(H) added to "
                        "the diagonal (default: 0.01, SparseGPT's)")
    p.add_argument("--nsamples", type=at_least(1), default=P.nsamples, help="calibration windows from C4 train")
    p.add_argument("--seed", type=at_least(0), default=P.seed, help="seed of the calibration sampler")
    p.add_argument("--expert-routing", default="routed", choices=["routed", "all"],
                   help="mixtures of experts: calibrate each expert on the tokens its router sends it (routed) or "
                        "on every token (all)")
    p.add_argument("--expert-min-tokens", type=at_least(1), default=None,
                   help="mixtures of experts: an expert routed fewer calibration tokens is calibrated on every "
                        "token instead, and counted (default: 16)")
    p.add_argument("--skip-dense", action="store_true", help="do not evaluate the dense model first")
    p.add_argument("--save", default=None,
                   help="write the pruned model to this new folder (plain transformers loads it; default: not saved)")
    p.set_defaults(func=cmd_prune)
