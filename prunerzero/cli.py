"""Command line: ``prunerzero search | show | prune | structural | eval``.

Every bad input ends in one line on stderr, ``error: <what is wrong and what to do>``, and exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path

from . import checks
from .errors import PrunerzeroWarning, UserError
from .protocol import Protocol

_P = Protocol()  # the defaults of every protocol option live in prunerzero/protocol.py
from .fsutil import atomic_folder, atomic_write_text, require_empty


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (``error: argument --seqlen: ...``) and exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` where there is a default to show (not for flags, nor for None: there the
    sentence itself says what happens)."""

    def _get_help_string(self, action):
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def _number(low: float, high: float | None = None):
    """A finite float in (low, high) (open interval), or > low without ``high``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        ok = math.isfinite(value) and value > low and (high is None or value < high)
        if not ok:
            where = f"in ({low:g}, {high:g})" if high is not None else f"> {low:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {where}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


_FRACTION = _number(0.0, 1.0)


def _common_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=_P.model,
                   help="'smollm2' (built in, offline; also 'gemma3-270m' and 'qwen2.5-0.5b' once their PyPI "
                        "parts are installed), a .gguf file, a save_pretrained folder or a hub id: any dense "
                        "decoder-only causal LM with Linear layers (LLaMA, Mistral, Qwen2/3, Gemma 1-3, Phi-3, ...) "
                        "or a mixture of experts (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V3, GLM-4.5, gpt-oss)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if this torch sees one, "
                                                  "else cpu)")
    p.add_argument("--dtype", default=_P.dtype, choices=checks.DTYPES,
                   help="weights' precision; auto = fp32 on CPU, fp16 on GPU")
    p.add_argument("--device-map", default=None, choices=checks.DEVICE_MAPS,
                   help="spread a large model over all GPUs with accelerate (default: the whole model on --device)")
    p.add_argument("--seqlen", type=_at_least(2), default=_P.seqlen,
                   help="tokens per window, for calibration and evaluation (capped at the model's context)")
    p.add_argument("--bos", default=_P.bos, choices=checks.BOS_MODES,
                   help="stream: windows cut from one token stream, BOS only before the first (Wanda's protocol); "
                        "window: BOS opens every calibration and evaluation window (what Gemma needs)")
    p.add_argument("--data-dir", default=None,
                   help="folder holding wikitext-2-raw/ and c4/ (default: $PRUNERZERO_DATA, else the hub)")
    p.add_argument("--cache-dir", default=None,
                   help="model and statistics cache (default: $PRUNERZERO_CACHE, else ~/.cache/prunerzero)")
    p.add_argument("--batch-size", type=_at_least(1), default=_P.batch_size, help="windows per forward pass")
    p.add_argument("--eval-windows", type=_at_least(1), default=None,
                   help="evaluate the first N windows of each dataset only (default: all of them)")
    p.add_argument("--eval", default=",".join(_P.eval_datasets),
                   help="comma-separated evaluation datasets: wikitext2, c4")
    p.add_argument("--tasks", default=None,
                   help="comma-separated lm-eval zero-shot tasks (needs prunerzero[eval]; default: none)")
    p.add_argument("--tasks-dir", default=None,
                   help="folder of local lm-eval task YAMLs for --tasks, read offline (default: lm-eval's own tasks)")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file (default: no file)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _check_json(path: str | None) -> None:
    from pathlib import Path

    if path and Path(path).is_dir():
        raise UserError(f"--json {path} is a folder: name a file such as {path.rstrip('/')}/results.json")


def _check_model_args(args, calibration: bool) -> None:
    """Everything the model-loading commands share, checked in seconds before any model is loaded."""
    from .data import EVAL_DATASETS, require_data

    checks.device(args.device)
    checks.device_map(args.device_map)
    checks.folder(args.cache_dir, "--cache-dir")
    args.eval_sets = checks.name_list(args.eval, "--eval", EVAL_DATASETS)
    args.task_list = checks.name_list(args.tasks, "--tasks") if args.tasks is not None else []
    if args.tasks_dir and not args.task_list:
        raise UserError("--tasks-dir needs --tasks naming the tasks to run")
    if args.task_list:
        from .evaluate import check_zero_shot

        check_zero_shot(args.task_list, args.tasks_dir)
    _check_json(args.json)
    require_data(args.data_dir, tuple(args.eval_sets), ("test",), calibration)


def _load(args):
    from .models import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype, cache=args.cache_dir,
                      device_map=args.device_map, seqlen=args.seqlen, bos=args.bos)


def _evaluate(lm, args) -> dict:
    from .evaluate import zero_shot
    from .pipeline import evaluate_all

    out = evaluate_all(lm, args.eval_sets, args.eval_windows, args.batch_size, args.data_dir, not args.quiet)
    if args.task_list:
        out["zero_shot"] = zero_shot(lm, args.task_list, args.batch_size, args.tasks_dir)
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


def _provenance(lm) -> dict:
    from .provenance import provenance

    return {**provenance(lm.device, _command()), "dtype": str(lm.model.dtype).replace("torch.", "")}


def _write_json(path: str | None, payload: dict) -> None:
    if path:
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def _prune_pattern(args):
    """The pattern a prune asks for; options that the pattern would ignore are refused, not dropped."""
    from .pipeline import default_group
    from .prune.masks import parse_pattern
    from .prune.run import SPARSEGPT

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
    from .pipeline import CalibConfig, prune
    from .prune.run import SPARSEGPT
    from .prune.sparsegpt import PERCDAMP

    pattern = _prune_pattern(args)
    if args.save:
        require_empty(args.save, "--save folder")
    _check_model_args(args, calibration=True)
    lm = _load(args)
    cfg = CalibConfig(args.nsamples, args.seed, args.batch_size, args.data_dir, args.cache_dir,
                      routing=args.expert_routing, min_tokens=args.expert_min_tokens or CalibConfig.min_tokens)
    payload = {"command": _command(), "provenance": _provenance(lm), "model": args.model, "metric": args.metric,
               "pattern": str(pattern), "sequential": args.sequential, "nsamples": args.nsamples, "seed": args.seed,
               "seqlen": lm.seqlen, "bos": args.bos}
    if not args.skip_dense:
        payload["dense"] = _evaluate(lm, args)
        print(f"dense   {_ppl_line(payload['dense'])}", flush=True)
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
    payload["pruned"] = _evaluate(lm, args)
    from .results import procedure_suffix

    procedure = procedure_suffix(args.update, args.allocation, owl_lambda, owl_m, args.permute, percdamp)
    print(f"pruned  {_ppl_line(payload['pruned'])}  [{res.method}, {pattern}, "
          f"{'sequential' if args.sequential else 'one-shot'}{procedure}]")
    print(f"sparsity {res.sparsity:.4f} of prunable weights; prune {res.seconds:.1f}s, eval {time.time() - t0:.1f}s")
    if res.moe is not None:
        print(res.moe.line())
        payload["moe"] = res.moe.as_dict()
    if args.save:
        save_model(lm, args.save)
        print(f"saved to {args.save}")
    _write_json(args.json, payload)


def cmd_eval(args) -> None:
    _check_model_args(args, calibration=False)
    lm = _load(args)
    payload = {"command": _command(), "provenance": _provenance(lm), "model": args.model, "seqlen": lm.seqlen,
               "bos": args.bos, "eval": _evaluate(lm, args)}
    print(_ppl_line(payload["eval"]))
    if "zero_shot" in payload["eval"]:
        print(json.dumps(payload["eval"]["zero_shot"], indent=2))
    _write_json(args.json, payload)


DEFAULT_SPACE = "prunerzero"   # the paper's space, packaged (prunerzero/spaces/prunerzero.yaml)

# search options that change what a run computes: on --resume they must match the recorded run
_GP_OPTIONS = {"population": "population", "seed": "seed"}
_FITNESS_OPTIONS = {"model": "model", "eval_windows": "eval_windows", "nsamples": "nsamples", "seqlen": "seqlen",
                    "device": "device", "dtype": "dtype", "batch_size": "batch_size", "bos": "bos"}


def _resume_space(args):
    """The recorded space of ``--resume DIR``; options that would change the run are refused, not ignored."""
    from .search.engine import load_run_space, run_state

    if args.space is not None:
        raise UserError("--resume continues the run with its recorded search space: drop --space")
    if args.out is not None and args.out != args.resume:
        raise UserError("--resume writes into the run's own folder: drop --out")
    space, meta = load_run_space(args.resume)
    recorded = {**{o: space.gp[k] for o, k in _GP_OPTIONS.items()},
                **{o: space.fitness[k] for o, k in _FITNESS_OPTIONS.items()}}
    models = space.fitness.get("models") or [space.fitness["model"]]
    recorded["model"] = models[0] if len(models) == 1 else models   # --model M replaced the models list
    for opt, value in recorded.items():
        given = getattr(args, opt)
        if given is not None and given != value:
            flag = "--" + opt.replace("_", "-")
            raise UserError(f"{flag} {given} differs from the run's recorded {value!r}: --resume keeps the "
                            f"recorded settings (drop {flag}, or start a new run with --out)")
    if args.generations is not None:
        done = _checkpoint_generation(args.resume) if run_state(args.resume) == "checkpointed" else -1
        if args.generations < done:
            raise UserError(f"--generations {args.generations} is below the {done} generations already done: "
                            f"use {done} or more")
        space.raw["gp"]["generations"] = args.generations
    return space, meta


def _checkpoint_generation(run_dir) -> int:
    from .search.engine import RunFiles

    try:
        return int(json.loads(RunFiles(Path(run_dir)).checkpoint.read_text())["generation"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{run_dir}/checkpoint.json is unreadable: restore it, or start a new run") from None


def _new_space(args):
    from .search.engine import run_state
    from .search.space import load_space, validate

    space = load_space(args.space or DEFAULT_SPACE)
    raw = space.raw
    for key, value in (("generations", args.generations), ("population", args.population), ("seed", args.seed)):
        if value is not None:
            raw["gp"][key] = value
    for opt, key in _FITNESS_OPTIONS.items():
        value = getattr(args, opt)
        if value is not None:
            raw["fitness"][key] = value
    if args.model is not None:   # --model replaces the space's fitness.models list
        raw["fitness"]["models"] = None
    space = validate(raw, space.path)
    out = args.out or f"results/search-{space.name}"
    state = run_state(out)
    if state != "empty":
        where = "stopped before its first checkpoint" if state == "unstarted" else "has checkpoints"
        raise UserError(f"{out} already holds a search that {where}: continue it with --resume {out}, "
                        "or choose a new --out")
    from .provenance import provenance

    return space, {"command": _command(), "space_file": _portable_path(space.path),
                   "provenance": provenance(space.fitness.get("device"), _command())}, out


def _portable_path(path) -> str:
    """``path`` relative to the working directory or to the installed package's folder when inside one (a run's
    record names the space file without this machine's absolute prefix), else as given."""
    resolved = Path(path).resolve()
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if resolved.is_relative_to(base):
            return str(resolved.relative_to(base))
    return str(path)


def cmd_search(args) -> None:
    from .data import require_data
    from .search.engine import Search
    from .search.table import format_table
    from .search.workers import InProcess, RayPool, build_evaluator

    started = time.time()   # --max-minutes counts the model and statistics too
    if args.resume:
        space, meta = _resume_space(args)
        out = args.resume
    else:
        space, meta, out = _new_space(args)
    fit = space.fitness
    checks.device(fit.get("device"), "--device (fitness.device)")
    checks.folder(args.cache_dir, "--cache-dir")
    checks.folder(out, "--out")
    if args.workers > 1:
        checks.module_available("ray", "--workers", "pip install 'prunerzero[ray]'")
    require_data(args.data_dir, (fit["eval_dataset"],), (fit["eval_split"],), calibration=True)
    terminals = space.stat_terminals
    if args.workers > 1:
        evaluate_many = RayPool(space.fitness, terminals, args.workers, args.data_dir, args.cache_dir)
    else:
        evaluate_many = InProcess(build_evaluator(space.fitness, terminals, args.data_dir, args.cache_dir,
                                                  not args.quiet))
    search = Search(space, out, evaluate_many, meta, progress=not args.quiet, on_resume=evaluate_many.preload)
    budget = None if args.max_minutes is None else 60 * args.max_minutes - (time.time() - started)
    if budget is not None and budget <= 0:
        raise UserError(f"the model and statistics took the whole --max-minutes {args.max_minutes:g} budget "
                        "before the first generation: raise --max-minutes (the statistics are now cached)")
    search.run(resume=bool(args.resume), max_seconds=budget)
    print(format_table(out, args.top))
    print(f"run directory: {out}")


def cmd_show(args) -> None:
    from .search.table import format_table

    print(format_table(args.run, args.top))


def cmd_bench(args) -> None:
    from .results import load_grid, read_rows, run_grid, write_table

    grid = load_grid(args.grid)
    if grid.structural and args.nsamples is not None:
        raise UserError("--nsamples sets the pruning calibration; the structural methods of this grid set their own "
                        "'nsamples' in the grid")
    grid = grid.with_protocol(device=checks.device(args.device), seqlen=args.seqlen,
                                              nsamples=args.nsamples, eval_windows=args.eval_windows,
                                              batch_size=args.batch_size)
    formulas = {}
    for item in args.formula:
        name, _, text = item.partition("=")
        if not name or not text:
            raise UserError(f"--formula '{item}' is not NAME=FORMULA")
        formulas[name] = text
    grid = grid.with_formulas(formulas)
    if args.seeds is not None:
        grid = grid.with_seeds(checks.int_list(args.seeds, "--seeds", 0))
    out = Path(args.out or f"results/{grid.name}")
    checks.folder(out, "--out")
    checks.folder(args.cache_dir, "--cache-dir")
    if not args.render_only:
        run_grid(grid, out, args.data_dir, args.cache_dir, _command(), progress=not args.quiet)
    md = write_table(grid, out)
    rows = read_rows(out / "rows.jsonl")
    print(md.read_text())
    print(f"{len(rows)} rows in {out / 'rows.jsonl'}; table {md}")


STRUCTURAL_INITS = ("metric", "const", "random", "oneshot")


# structural options that map one-to-one onto StructuralConfig fields (CLI name -> field)
STRUCTURAL_FIELDS = {"sparsity": "sparsity", "metric": "metric", "init": "init", "steps": "steps",
                     "samples": "samples", "lr": "lr", "pg_batch_size": "batch_size", "calib_seqlen": "calib_seqlen",
                     "nsamples": "nsamples", "init_nsamples": "init_nsamples", "init_seqlen": "init_seqlen",
                     "seed": "seed", "attn_score": "attn_score", "mlp_score": "mlp_score",
                     "eval_seqlens": "eval_seqlens", "eval_windows": "eval_windows", "reconstruct": "reconstruct",
                     "curve_every": "curve_every"}


def cmd_structural(args) -> None:
    from .pipeline import CalibConfig, check_structural, eval_at, structural, structural_config
    from .prune.structural import forward_latency, save_structural

    if args.save:
        require_empty(args.save, "--save folder")
    explicit = {field: getattr(args, name) for name, field in STRUCTURAL_FIELDS.items()}
    cfg = structural_config(None if args.preset == "none" else args.preset, uniform=args.uniform or None, **explicit)
    check_structural(cfg)
    if cfg.init in ("metric", "oneshot"):
        from .metric.known import resolve_metric
        resolve_metric(cfg.metric)
    seqlens = checks.int_list(cfg.eval_seqlens, "--eval-seqlens", 2)
    _check_model_args(args, calibration=True)
    lm = _load(args)
    datasets = args.eval_sets
    payload = {"command": _command(), "provenance": _provenance(lm), "model": args.model, "preset": args.preset,
               "bos": args.bos, "config": dataclasses.asdict(cfg), "sparsity": cfg.sparsity, "init": cfg.init,
               "metric": cfg.metric, "steps": cfg.steps, "samples": cfg.samples, "lr": cfg.lr, "nsamples": cfg.nsamples,
               "calib_seqlen": cfg.calib_seqlen, "eval_windows": cfg.eval_windows,
               "evaluation": f"WikiText-style perplexity on the first {cfg.eval_windows or 'all'} non-overlapping "
                             f"windows of each length of the test split"}
    lat_len, reps = args.latency_seqlen, args.latency_repeats

    def evaluate(progress: bool = not args.quiet):
        return {str(L): eval_at(lm, L, datasets, cfg.eval_windows, args.batch_size, args.data_dir, progress)
                for L in seqlens}

    if not args.skip_dense:
        payload["dense"] = evaluate()
        if reps:
            payload["latency_before_s"] = forward_latency(lm.model, lat_len, repeats=reps)
        for L, res in payload["dense"].items():
            print(f"dense   seqlen {L}: {_ppl_line(res)}", flush=True)
    def curve_eval():  # the final evaluation, quietly, keyed dataset@length
        return {f"{ds}@{L}": r["ppl"] for L, res in evaluate(False).items() for ds, r in res.items()}

    res = structural(lm, cfg, CalibConfig(seed=cfg.seed, data_dir=args.data_dir, cache=args.cache_dir),
                     progress=not args.quiet, curve_eval=curve_eval)
    payload.update({k: v for k, v in res.items() if k not in ("masks", "probs")})
    payload["pruned"] = evaluate()
    if reps:
        payload["latency_after_s"] = forward_latency(lm.model, lat_len, repeats=reps)
    b, a = res["params_before"], res["params_after"]
    label = f"{cfg.init}, {cfg.metric if cfg.init != 'const' else '-'}{', uniform' if cfg.uniform else ''}"
    for L, r in payload["pruned"].items():
        print(f"pruned  seqlen {L}: {_ppl_line(r)}  [{label}]")
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
        print(f"saved to {args.save} " + ("(per-layer widths: load with trust_remote_code=True)" if remote
                                         else "(uniform widths: a stock LlamaConfig, no remote code)"))
    _write_json(args.json, payload)


def cmd_export(args) -> None:
    from .export import check_export_args, decompress_folder, export_compressed

    check_export_args(args.pruned_dir, args.out, args.format, args.compressor)
    if args.format == "dense":
        res = decompress_folder(args.pruned_dir, args.out)
        print(f"wrote {args.out}: dense, {res['bytes'] / 1e6:.1f} MB "
              f"(compressed {res['compressed_bytes'] / 1e6:.1f} MB, {res['from']})")
        return
    res = export_compressed(args.pruned_dir, args.out, args.compressor)
    print(f"wrote {args.out}: compressed-tensors {res['format']}, {res['layers']} of {res['linears']} Linear layers "
          f"compressed, global sparsity {res['global_sparsity']:.4f}")
    print(f"size on disk {res['bytes'] / 1e6:.1f} MB vs dense save {res['dense_bytes'] / 1e6:.1f} MB "
          f"({res['bytes'] / res['dense_bytes']:.1%})")


MODEL_HELP = ("Models: smollm2, gemma3-270m, qwen2.5-0.5b (built in), any .gguf file, a save_pretrained folder or a hub id of a decoder-only "
              "causal LM.")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prunerzero", description=__doc__.splitlines()[0], formatter_class=_Help)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, formatter_class=_Help,
                              epilog=MODEL_HELP if name in ("prune", "structural", "eval") else None)

    p = command("prune", "prune a model with a metric (name or formula) or SparseGPT; report perplexity")
    _common_model_args(p)
    p.add_argument("--metric", default="wanda",
                   help="magnitude | wanda | pruner-zero | gblm | ria | sparsegpt | a formula such as "
                        "mul(abs(W), sqrt(X))")
    p.add_argument("--sparsity", type=_FRACTION, default=None,
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
    p.add_argument("--owl-lambda", type=_number(0.0, 0.5), default=None,
                   help="OWL: block sparsities spread over 2*lambda (default: 0.08)")
    p.add_argument("--owl-m", type=_number(0.0), default=None,
                   help="OWL: an outlier is a Wanda score above M x the block mean (default: 5)")
    p.add_argument("--permute", action="store_true",
                   help="N:M only: permute o_proj/down_proj input channels (and their producers) to keep more score")
    p.add_argument("--percdamp", type=_number(0.0), default=None,
                   help="Hessian damping of sparsegpt and of --update, a fraction of the mean of diag(H) added to "
                        "the diagonal (default: 0.01, SparseGPT's)")
    p.add_argument("--nsamples", type=_at_least(1), default=_P.nsamples, help="calibration windows from C4 train")
    p.add_argument("--seed", type=_at_least(0), default=_P.seed, help="seed of the calibration sampler")
    p.add_argument("--expert-routing", default="routed", choices=["routed", "all"],
                   help="mixtures of experts: calibrate each expert on the tokens its router sends it (routed) or "
                        "on every token (all)")
    p.add_argument("--expert-min-tokens", type=_at_least(1), default=None,
                   help="mixtures of experts: an expert routed fewer calibration tokens is calibrated on every "
                        "token instead, and counted (default: 16)")
    p.add_argument("--skip-dense", action="store_true", help="do not evaluate the dense model first")
    p.add_argument("--save", default=None,
                   help="write the pruned model to this new folder (plain transformers loads it; default: not saved)")
    p.set_defaults(func=cmd_prune)

    p = command("search", "discover a pruning metric by genetic programming")
    p.add_argument("--space", default=None,
                   help=f"search space: a YAML file or a packaged name ({', '.join(_packaged_spaces())}) "
                        f"(default: {DEFAULT_SPACE}, the paper's space)")
    p.add_argument("--out", default=None, help="new run directory (default: results/search-<space name>)")
    p.add_argument("--resume", default=None,
                   help="continue the run in this directory with its recorded settings (default: a new run)")
    p.add_argument("--generations", type=_at_least(1), default=None,
                   help="generations after the initial population (default: the space's gp.generations)")
    p.add_argument("--population", type=_at_least(2), default=None,
                   help="individuals per generation (default: the space's gp.population)")
    p.add_argument("--seed", type=_at_least(0), default=None, help="GP seed (default: the space's gp.seed)")
    p.add_argument("--model", default=None,
                   help="model to prune for fitness, any that loads; replaces the space's fitness.models "
                        "(default: the space's fitness.models, else fitness.model)")
    p.add_argument("--eval-windows", type=_at_least(1), default=None,
                   help="fitness windows of WikiText-2 validation (default: the space's fitness.eval_windows)")
    p.add_argument("--nsamples", type=_at_least(1), default=None,
                   help="calibration windows for X and G (default: the space's fitness.nsamples)")
    p.add_argument("--seqlen", type=_at_least(2), default=None,
                   help="window length (default: the space's fitness.seqlen)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the space's, else cuda if available)")
    p.add_argument("--dtype", default=None, choices=checks.DTYPES,
                   help="weights' precision for fitness (default: the space's fitness.dtype)")
    p.add_argument("--batch-size", type=_at_least(1), default=None,
                   help="windows per forward pass (default: the space's fitness.batch_size)")
    p.add_argument("--bos", default=None, choices=checks.BOS_MODES,
                   help="stream (Wanda's windows) or window (BOS opens every window, for Gemma); default: the "
                        "space's fitness.bos")
    p.add_argument("--workers", type=_at_least(1), default=1,
                   help="evaluate on N GPUs through a Ray actor pool (prunerzero[ray])")
    p.add_argument("--max-minutes", type=_number(0.0), default=None,
                   help="wall-time ceiling, model and statistics included: no generation is started that the "
                        "last one's length says would end past it; --resume continues it (default: no limit)")
    p.add_argument("--data-dir", default=None,
                   help="folder holding wikitext-2-raw/ and c4/ (default: $PRUNERZERO_DATA, else the hub)")
    p.add_argument("--cache-dir", default=None,
                   help="model and statistics cache (default: $PRUNERZERO_CACHE, else ~/.cache/prunerzero)")
    p.add_argument("--top", type=_at_least(1), default=10, help="rows of the final table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_search)

    p = command("show", "table of the best distinct formulas of a search run")
    p.add_argument("run", help="search run directory")
    p.add_argument("--top", type=_at_least(1), default=10, help="rows of the table")
    p.set_defaults(func=cmd_show)

    p = command("structural", "remove KV-head groups and MLP channels (policy gradient, forward passes only)")
    _common_model_args(p)
    from .pipeline import DEFAULT_STRUCTURAL_PRESET, STRUCTURAL_PRESETS
    from .pipeline import StructuralConfig as D
    p.add_argument("--preset", default=DEFAULT_STRUCTURAL_PRESET, choices=[*sorted(STRUCTURAL_PRESETS), "none"],
                   help="named settings; official-pg: the official backprop-free PG code's (wanda-sp init from "
                        "32 x 1024 C4 tokens, K=2, 8 x 128-token windows per step, lr 2e-3, 320 x 128-token "
                        "evaluation windows); official-pg-ls: the same with lr 0.02, 300 steps and the least-squares "
                        "refit, the best measured at 20%% (results/structural-official-lr-cpu.md); none: the plain "
                        "settings whose defaults the other options list. Explicit options override the preset "
                        f"(default: {DEFAULT_STRUCTURAL_PRESET})")
    p.add_argument("--sparsity", type=_FRACTION, default=None,
                   help=f"fraction of prunable parameters to remove (default: {D.sparsity})")
    p.add_argument("--metric", default=None,
                   help=f"metric (name or formula) for the initial probabilities (default: {D.metric})")
    p.add_argument("--init", default=None, choices=STRUCTURAL_INITS,
                   help="initial policy: metric scores, constant, random, or oneshot (top metric scores, no PG) "
                        f"(default: {D.init})")
    p.add_argument("--steps", type=_at_least(1), default=None, help=f"policy-gradient steps (default: {D.steps})")
    p.add_argument("--samples", type=_at_least(2), default=None,
                   help=f"masks sampled per step (K) (default: {D.samples})")
    p.add_argument("--lr", type=_number(0.0), default=None,
                   help=f"policy learning rate, cosine-decayed (default: {D.lr:g})")
    p.add_argument("--pg-batch-size", type=_at_least(1), default=None,
                   help=f"calibration windows per step (default: {D.batch_size})")
    p.add_argument("--calib-seqlen", type=_at_least(2), default=None,
                   help=f"tokens per policy-gradient window (default: {D.calib_seqlen})")
    p.add_argument("--nsamples", type=_at_least(0), default=None,
                   help="C4 windows the policy cycles through; 0 = steps x pg-batch-size, none seen twice "
                        f"(default: {D.nsamples})")
    p.add_argument("--init-nsamples", type=_at_least(0), default=None,
                   help="C4 windows for the metric statistics of the initialisation; 0 = the policy's windows "
                        f"(default: {D.init_nsamples})")
    p.add_argument("--init-seqlen", type=_at_least(0), default=None,
                   help="tokens per statistics window; 0 = --calib-seqlen (default: "
                        f"{D.init_seqlen})")
    p.add_argument("--seed", type=_at_least(0), default=None,
                   help=f"seed of the sampler and the policy (default: {D.seed})")
    p.add_argument("--attn-score", default=None, choices=["kv", "out", "qkv", "all"],
                   help="weights whose metric scores a KV group: k/v rows, o_proj columns, q/k/v rows, or all "
                        f"(default: {D.attn_score})")
    p.add_argument("--mlp-score", default=None, choices=["out", "in", "all"],
                   help="weights whose metric scores an MLP channel: down column, gate/up rows, or all "
                        f"(default: {D.mlp_score})")
    p.add_argument("--uniform", action="store_true",
                   help="every layer keeps the same number of KV groups and MLP channels (per-layer top-k of the "
                        "policy), so --save writes a stock LlamaConfig that loads without trust_remote_code")
    p.add_argument("--reconstruct", action=argparse.BooleanOptionalAction, default=None,
                   help="before slicing, refit the kept o_proj / down_proj columns by least squares on calibration "
                        "windows (the statistics windows: --init-nsamples x --init-seqlen, default 32 x 1024); "
                        "on in the default preset, --no-reconstruct turns it off")
    p.add_argument("--eval-seqlens", default=None,
                   help=f"comma-separated perplexity window lengths (default: {D.eval_seqlens})")
    p.add_argument("--curve-every", type=_at_least(0), default=None,
                   help="learning curve: evaluate the policy's hard masks (the final evaluation, before any refit) "
                        "at step 0, every N steps and at the last; printed and kept in --json as 'curve' "
                        f"(default: {D.curve_every}, none)")
    p.add_argument("--latency-seqlen", type=_at_least(1), default=2048,
                   help="tokens of the timed forward pass (with --latency-repeats)")
    p.add_argument("--latency-repeats", type=_at_least(0), default=0,
                   help="time the forward pass this many times after 2 warm-ups and report the median; 0 = not "
                        "timed (benchmarks/structural_speed.py measures prefill and decoding)")
    p.add_argument("--skip-dense", action="store_true", help="do not evaluate the dense model first")
    p.add_argument("--save", default=None, help="write the sliced model to this new folder (default: not saved)")
    p.set_defaults(func=cmd_structural)

    p = command("bench", "run an experiment grid (models x methods x patterns x seeds) into rows; render its tables")
    p.add_argument("grid", help="grid YAML (see grids/): protocol, models, methods, patterns, seeds")
    p.add_argument("--out", default=None,
                   help="results folder: rows in OUT/rows.jsonl, tables in OUT.md (default: results/<grid name>)")
    p.add_argument("--render-only", action="store_true", help="re-render OUT.md from the rows, run nothing")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the grid's, else cuda if available)")
    p.add_argument("--formula", action="append", default=[],
                   help="NAME=FORMULA: the formula behind the grid's method NAME (repeatable; default: the grid's)")
    p.add_argument("--seeds", default=None, help="comma-separated calibration seeds (default: the grid's seeds)")
    p.add_argument("--seqlen", type=_at_least(2), default=None, help="override protocol.seqlen (a reduced protocol)")
    p.add_argument("--nsamples", type=_at_least(1), default=None, help="override protocol.nsamples")
    p.add_argument("--eval-windows", type=_at_least(1), default=None, help="override protocol.eval_windows")
    p.add_argument("--batch-size", type=_at_least(1), default=None, help="override protocol.batch_size")
    p.add_argument("--data-dir", default=None,
                   help="folder holding wikitext-2-raw/ and c4/ (default: $PRUNERZERO_DATA, else the hub)")
    p.add_argument("--cache-dir", default=None,
                   help="model and statistics cache (default: $PRUNERZERO_CACHE, else ~/.cache/prunerzero)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench)

    p = command("export", "write a pruned folder in the compressed-tensors sparse format (or back to dense)")
    p.add_argument("pruned_dir", help="folder written by prunerzero prune --save (or an export, with --format dense)")
    p.add_argument("--format", default="compressed-tensors",
                   help="compressed-tensors, or dense to decompress an export")
    p.add_argument("--out", required=True, help="new folder to write")
    p.add_argument("--compressor", default="auto",
                   help="auto (sparse-24-bitmask if every sparse Linear is 2:4, else sparse-bitmask), sparse-bitmask "
                        "or sparse-24-bitmask")
    p.set_defaults(func=cmd_export)

    p = command("eval", "perplexity (and optional zero-shot accuracy) of a model")
    _common_model_args(p)
    p.set_defaults(func=cmd_eval)
    return parser


def _packaged_spaces() -> list[str]:
    from .search.space import packaged_spaces

    return packaged_spaces()


def main(argv=None) -> int:
    import warnings

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (exit 2, one line) and --help (exit 0)
        return int(exc.code or 0)
    from .provenance import git_state

    git_state()   # the commit of the code this process loaded, not of the tree when its first row is written
    try:
        with warnings.catch_warnings():
            shown = warnings.showwarning

            def one_line(message, category, filename, lineno, file=None, line=None):
                """prunerzero's own warnings as one line, like its errors; the libraries' as they come."""
                if issubclass(category, PrunerzeroWarning):
                    print(f"warning: {message}", file=sys.stderr)
                else:
                    shown(message, category, filename, lineno, file, line)
            warnings.showwarning = one_line
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
