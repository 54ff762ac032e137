"""`prunerzero prune`: prune a model with a metric (a name, a formula, or a search run's selected formula) or
SparseGPT, and report perplexity."""
from __future__ import annotations

import time

from ..errors import UserError
from ..models import save_model
from ..checks import GRAD_STORAGES
from ..specs import ALLOCATIONS, GROUPS, UPDATES, ProcedureError, PruneSpec, probe_folder
from ._common import (FRACTION, P, at_least, check_model_args, command, common_model_args, evaluate, load, ppl_line,
                      provenance, shell_command, write_json, number)

HELP = "prune a model with a metric (name, formula or a search run's pick) or SparseGPT; report perplexity"


def prune_spec(args) -> PruneSpec:
    """The one validated specification of this prune, from the flags (rules: ``prunerzero/specs.py``)."""
    try:
        return PruneSpec.build(args.metric, sparsity=args.sparsity, pattern=args.pattern, group=args.group,
                               update=args.update, allocation=args.allocation, owl_lambda=args.owl_lambda,
                               owl_m=args.owl_m, permute=args.permute, percdamp=args.percdamp,
                               sequential=not args.one_shot)
    except ProcedureError as e:   # the rule's one message, after the options as the user gave them
        given = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v:g}" if isinstance(v, float) else f" {v}")
                 for k, v in (("metric", args.metric if args.metric == "sparsegpt" else None),
                              ("pattern", args.pattern), ("sparsity", args.sparsity), ("group", args.group),
                              ("update", None if args.update == "none" else args.update),
                              ("allocation", None if args.allocation == "uniform" else args.allocation),
                              ("owl_lambda", args.owl_lambda), ("owl_m", args.owl_m),
                              ("permute", args.permute or None), ("percdamp", args.percdamp)) if v is not None]
        raise UserError(f"{' '.join(given)}: {e}") from None


def cmd_prune(args) -> None:
    from ..pipeline import CalibConfig, prune
    from ..results import procedure_suffix

    if args.list_metrics:
        from ..metric.known import list_metrics

        print(list_metrics())
        return
    spec = prune_spec(args)
    if args.expert_routing != "routed" or args.expert_min_tokens is not None:
        from ..models.moe import config_of, expert_count_of

        cfg = config_of(args.model, args.cache_dir)
        if cfg is None or expert_count_of(cfg) is None:
            raise UserError(f"--expert-routing/--expert-min-tokens calibrate the experts of a mixture of experts; "
                            f"{args.model} has none: drop them")
    probe_folder(args.save, "--save", must_be_empty=True)
    check_model_args(args, calibration=True)
    if spec.metric_source:
        print(f"metric  {spec.metric} (the selection of {spec.metric_source})", flush=True)
    lm = load(args)
    cfg = CalibConfig(args.nsamples, args.seed, args.batch_size, args.data_dir, args.cache_dir,
                      grad_storage=args.grad_storage, routing=args.expert_routing, min_tokens=args.expert_min_tokens or CalibConfig.min_tokens)
    pattern = spec.pattern
    payload = {"command": shell_command(), "provenance": provenance(lm), "model": args.model, "metric": spec.metric,
               **({"metric_source": spec.metric_source} if spec.metric_source else {}),
               "pattern": str(pattern), "sequential": spec.sequential, "nsamples": args.nsamples, "seed": args.seed,
               "seqlen": lm.seqlen, "bos": args.bos}
    if not args.skip_dense:
        payload["dense"] = evaluate(lm, args)
        print(f"dense   {ppl_line(payload['dense'])}", flush=True)
    payload.update(update=spec.update, allocation=spec.allocation, permute=spec.permute)
    if spec.allocation == "owl":
        payload.update(owl_lambda=spec.owl_lambda, owl_m=spec.owl_m)
    if spec.uses_hessian:
        payload["percdamp"] = spec.percdamp
    res = prune(lm, spec.metric, pattern, cfg, sequential=spec.sequential, progress=not args.quiet,
                update=spec.update, allocation=spec.allocation, owl_lambda=spec.owl_lambda, owl_m=spec.owl_m,
                permute=spec.permute, percdamp=spec.percdamp)
    payload.update(sparsity=res.sparsity, prune_seconds=res.seconds)
    t0 = time.time()
    payload["pruned"] = evaluate(lm, args)
    procedure = procedure_suffix(spec.update, spec.allocation, spec.owl_lambda, spec.owl_m, spec.permute,
                                 spec.percdamp)
    print(f"pruned  {ppl_line(payload['pruned'])}  [{res.method}, {pattern}, "
          f"{'sequential' if spec.sequential else 'one-shot'}{procedure}]")
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
    g = common_model_args(p)
    what, how, out = g["what to prune"], g["how"], g["output"]
    what.add_argument("--metric", default="wanda",
                      help="a named metric (magnitude, wanda, pruner-zero, gblm, ria, found-smollm2-cpu, ...: "
                           "--list-metrics), sparsegpt, a formula in prefix or infix form (mul(abs(W), sqrt(X)) or "
                           "'|W| * sqrt(X)'), or a search run folder after `prunerzero select RUN` (its pick)")
    what.add_argument("--list-metrics", action="store_true",
                      help="list the named metrics with their formulas and provenance, and exit")
    what.add_argument("--sparsity", type=FRACTION, default=None,
                      help="fraction of each group's weights to prune, unstructured (default: 0.5; not with "
                           "--pattern)")
    what.add_argument("--pattern", default=None,
                      help="N:M such as 2:4 or 4:8: prune N of every M consecutive inputs (default: unstructured)")
    what.add_argument("--group", default=None, choices=GROUPS,
                      help="unstructured comparison group (default: the metric's paper: layer for magnitude, "
                           "else row)")
    how.add_argument("--one-shot", action="store_true",
                     help="statistics of the dense model for every layer at once (cheaper; what the search "
                          "scores with); default: sequential, Wanda's layer-by-layer calibration through the "
                          "already pruned blocks, as every table of this repository")
    how.add_argument("--sequential", action="store_true",
                     help="accepted for older scripts and grids: sequential is the default")
    how.add_argument("--update", default="none", choices=UPDATES,
                     help="obs: after the metric's mask, reconstruct the kept weights (SparseGPT's OBS update); "
                          "lsq: their exact least-squares values; admm: the metric re-selects its mask on the "
                          "weights as ADMM updates them, then lsq")
    how.add_argument("--allocation", default="uniform", choices=ALLOCATIONS,
                     help="layer-wise sparsity: uniform, or OWL (outlier-weighted; unstructured only)")
    how.add_argument("--owl-lambda", type=number(0.0, 0.5), default=None,
                     help="OWL: block sparsities spread over 2*lambda (default: 0.08)")
    how.add_argument("--owl-m", type=number(0.0), default=None,
                     help="OWL: an outlier is a Wanda score above M x the block mean (default: 5)")
    how.add_argument("--permute", action="store_true",
                     help="N:M only: permute o_proj/down_proj input channels (and their producers) to keep more "
                          "score")
    how.add_argument("--percdamp", type=number(0.0), default=None,
                     help="Hessian damping of sparsegpt and of --update, a fraction of the mean of diag(H) added to "
                          "the diagonal (default: 0.01, SparseGPT's)")
    how.add_argument("--nsamples", type=at_least(1), default=P.nsamples, help="calibration windows from C4 train")
    how.add_argument("--seed", type=at_least(0), default=P.seed, help="seed of the calibration sampler")
    how.add_argument("--grad-storage", default="fp32", choices=GRAD_STORAGES,
                     help="how gradient statistics (G, G1) are cached and held: fp32, or fp16 with a power-of-two "
                          "scale per tensor (half the disk and memory; only near-ties rank differently: "
                          "results/grad-storage-cpu.md)")
    how.add_argument("--expert-routing", default="routed", choices=["routed", "all"],
                     help="mixtures of experts: calibrate each expert on the tokens its router sends it (routed) "
                          "or on every token (all)")
    how.add_argument("--expert-min-tokens", type=at_least(1), default=None,
                     help="mixtures of experts: an expert routed fewer calibration tokens is calibrated on every "
                          "token instead, and counted (default: 16)")
    g["evaluation"].add_argument("--skip-dense", action="store_true", help="do not evaluate the dense model first")
    out.add_argument("--save", default=None,
                     help="write the pruned model to this new folder (plain transformers loads it; default: not "
                          "saved)")
    p.set_defaults(func=cmd_prune)
