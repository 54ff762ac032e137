"""`prunerzero experts`: drop whole routed experts of a mixture of experts by a score; save a stock checkpoint."""
from __future__ import annotations

import time

from ..errors import UserError
from ..fsutil import require_empty
from ..models import save_model
from ._common import (FRACTION, P, at_least, check_model_args, command, common_model_args, evaluate, load, ppl_line,
                      provenance, shell_command, write_json)

HELP = ("drop a fraction of the routed experts of a mixture of experts by a score (routing frequency, REAP or a "
        "formula); save a checkpoint with fewer experts")
SCORE_HELP = ("frequency | reap | gate | onorm | wnorm | a formula over freq, gate, onorm, reap, wnorm such as "
              "mul(freq, reap) (the experts with the lowest scores are dropped; default: reap)")


def check_args(args) -> None:
    """Everything checked before a model loads: the score parses, the options fit, the drop fits the config."""
    from ..models.moe import config_of, expert_count_of, moe_family
    from ..prune.experts import drop_count, expert_score

    expert_score(args.score)
    if args.scope == "global" and args.save:
        raise UserError("--scope global leaves layers with different expert counts, which a stock config cannot "
                        "hold: use --scope layer to save, or drop --save")
    if args.floor is not None and args.scope != "global":
        raise UserError("--floor applies to --scope global: add it, or drop --floor")
    if args.save:
        require_empty(args.save, "--save folder")
    cfg = config_of(args.model, args.cache_dir)
    n = expert_count_of(cfg) if cfg is not None else None
    if n is None:
        raise UserError(f"{args.model} is not a mixture of experts: expert pruning needs routed experts "
                        "(Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V3, GLM-4.5, gpt-oss)")
    fam = moe_family(cfg)
    if args.scope == "layer":
        groups = int(getattr(cfg, "n_group", 1) or 1) if fam.grouped else 1
        drop_count(n, args.drop, int(cfg.num_experts_per_tok), groups)


def cmd_experts(args) -> None:
    from ..pipeline import CalibConfig, calibration_windows
    from ..prune.experts import prune_experts

    check_args(args)
    check_model_args(args, calibration=True)
    lm = load(args)
    payload = {"command": shell_command(), "provenance": provenance(lm), "model": args.model, "score": args.score,
               "drop": args.drop, "scope": args.scope, "nsamples": args.nsamples, "seed": args.seed,
               "seqlen": lm.seqlen, "bos": args.bos}
    if not args.skip_dense:
        payload["dense"] = evaluate(lm, args)
        print(f"dense   {ppl_line(payload['dense'])}", flush=True)
    windows = calibration_windows(lm, CalibConfig(args.nsamples, args.seed, args.batch_size, args.data_dir,
                                                  args.cache_dir))
    res = prune_experts(lm.model, windows, args.score, args.drop, args.scope, args.floor, args.batch_size,
                        progress=not args.quiet)
    payload["experts"] = res.as_dict()
    t0 = time.time()
    payload["pruned"] = evaluate(lm, args)
    print(f"pruned  {ppl_line(payload['pruned'])}  [experts by {res.score}, drop {args.drop:g}, {args.scope}]")
    print(f"{res.line()}; scoring and slicing {res.seconds:.1f}s, eval {time.time() - t0:.1f}s")
    if args.save:
        save_model(lm, args.save)
        print(f"saved to {args.save}")
    write_json(args.json, payload)


def add_parser(sub) -> None:
    p = command(sub, "experts", HELP)
    common_model_args(p)
    p.add_argument("--drop", type=FRACTION, default=0.25,
                   help="fraction of the routed experts to remove (default: 0.25)")
    p.add_argument("--score", default="reap", help=SCORE_HELP)
    p.add_argument("--scope", default="layer", choices=["layer", "global"],
                   help="layer: every MoE layer drops the same number (a stock checkpoint); global: the lowest "
                        "scores over all layers, at least --floor per layer (evaluated in memory, not saved)")
    p.add_argument("--floor", type=at_least(1), default=None,
                   help="--scope global: experts every layer keeps at least (default: the top-k per token)")
    p.add_argument("--nsamples", type=at_least(1), default=P.nsamples, help="calibration windows from C4 train")
    p.add_argument("--seed", type=at_least(0), default=P.seed, help="seed of the calibration sampler")
    p.add_argument("--skip-dense", action="store_true", help="do not evaluate the model before dropping experts")
    p.add_argument("--save", default=None,
                   help="write the model with fewer experts to this new folder (plain transformers loads it; "
                        "default: not saved)")
    p.set_defaults(func=cmd_experts)
