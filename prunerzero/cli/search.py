"""`prunerzero search`: discover a pruning metric by genetic programming."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .. import checks
from ..errors import UserError
from ..specs import probe_folder
from ._common import at_least, command, groups, number, shell_command

HELP = "discover a pruning metric by genetic programming"


DEFAULT_SPACE = "prunerzero"   # the paper's space, packaged (prunerzero/spaces/prunerzero.yaml)

# search options that change what a run computes: on --resume they must match the recorded run
_GP_OPTIONS = {"population": "population", "seed": "seed"}
_FITNESS_OPTIONS = {"model": "model", "eval_windows": "eval_windows", "nsamples": "nsamples", "seqlen": "seqlen",
                    "device": "device", "dtype": "dtype", "batch_size": "batch_size", "bos": "bos",
                    "grad_storage": "grad_storage"}


def _resume_space(args):
    """The recorded space of ``--resume DIR``; options that would change the run are refused, not ignored."""
    from ..search.engine import load_run_space, run_state

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
        space = space.with_overrides(gp={"generations": args.generations})
    return space, meta


def _checkpoint_generation(run_dir) -> int:
    from ..search.engine import RunFiles

    try:
        return int(json.loads(RunFiles(Path(run_dir)).checkpoint.read_text())["generation"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{run_dir}/checkpoint.json is unreadable: restore it, or start a new run") from None


def _new_space(args):
    from ..search.engine import run_state
    from ..search.space import load_space

    space = load_space(args.space or DEFAULT_SPACE)
    gp = {key: value for key, value in (("generations", args.generations), ("population", args.population),
                                        ("seed", args.seed)) if value is not None}
    fitness = {key: getattr(args, opt) for opt, key in _FITNESS_OPTIONS.items() if getattr(args, opt) is not None}
    if args.model is not None:   # --model replaces the space's fitness.models list
        fitness["models"] = None
    space = space.with_overrides(gp=gp, fitness=fitness)
    out = args.out or default_out(space.name)
    state = run_state(out)
    if state != "empty":
        where = "stopped before its first checkpoint" if state == "unstarted" else "has checkpoints"
        raise UserError(f"{out} already holds a search that {where}: continue it with --resume {out}, "
                        "or choose a new --out")
    from ..provenance import provenance

    return space, {"command": shell_command(), "space_file": _portable_path(space.path),
                   "provenance": provenance(space.fitness.get("device"), shell_command())}, out


RUNS = "runs"   # new runs go here by default (never into the committed results/)


def default_out(space_name: str) -> str:
    """``runs/search-<space>-<UTC timestamp>``: a new folder per run, outside the committed ``results/``."""
    return f"{RUNS}/search-{space_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def _portable_path(path) -> str:
    """``path`` relative to the working directory or to the installed package's folder when inside one (a run's
    record names the space file without this machine's absolute prefix), else as given."""
    resolved = Path(path).resolve()
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if resolved.is_relative_to(base):
            return str(resolved.relative_to(base))
    return str(path)


def cmd_search(args) -> None:
    from ..data import require_data
    from ..search.engine import Search
    from ..search.table import format_table
    from ..search.workers import InProcess, RayPool, build_evaluator

    if args.list_spaces:
        print(list_spaces())
        return
    started = time.time()   # --max-minutes counts the model and statistics too
    if args.resume:
        space, meta = _resume_space(args)
        out = args.resume
    else:
        space, meta, out = _new_space(args)
    fit = space.fitness
    checks.device(fit.get("device"), "--device (fitness.device)")
    checks.device_map(args.device_map)
    if args.device_map and args.workers > 1:
        raise UserError("--device-map spreads one model over the GPUs; --workers puts one model on each GPU: use "
                        "one of the two")
    if fit.get("target") == "experts":
        from ..models.moe import config_of, expert_count_of

        if args.workers > 1 or args.device_map:
            raise UserError("a search over expert scores (fitness.target experts) runs in one process on one "
                            "device: drop --workers/--device-map")
        cfg = config_of(fit["model"], args.cache_dir)
        if cfg is None or expert_count_of(cfg) is None:
            raise UserError(f"fitness.target experts drops routed experts, and {fit['model']} has none: pass a "
                            "mixture of experts with --model")
    probe_folder(args.cache_dir, "--cache-dir")
    probe_folder(out, "--out")
    if not args.resume:
        print(f"run directory: {out}", flush=True)
    if args.workers > 1:
        checks.module_available("ray", "--workers", "pip install 'prunerzero[ray]'")
    require_data(args.data_dir, (fit["eval_dataset"],), (fit["eval_split"],), calibration=True)
    terminals = space.stat_terminals
    if args.workers > 1:
        evaluate_many = RayPool(space.fitness, terminals, args.workers, args.data_dir, args.cache_dir)
    else:
        evaluate_many = InProcess(build_evaluator(space.fitness, terminals, args.data_dir, args.cache_dir,
                                                  not args.quiet, device_map=args.device_map))
    search = Search(space, out, evaluate_many, meta, progress=not args.quiet, on_resume=evaluate_many.preload)
    budget = None if args.max_minutes is None else 60 * args.max_minutes - (time.time() - started)
    if budget is not None and budget <= 0:
        raise UserError(f"the model and statistics took the whole --max-minutes {args.max_minutes:g} budget "
                        "before the first generation: raise --max-minutes (the statistics are now cached)")
    search.run(resume=bool(args.resume), max_seconds=budget)
    print(format_table(out, args.top))
    print(f"run directory: {out}")


def list_spaces() -> str:
    """The packaged search spaces, one line each: name and the description the YAML carries."""
    from ..search.space import load_space

    rows = [(name, load_space(name).raw.get("description") or "") for name in _packaged_spaces()]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {text}" for name, text in rows)


def _packaged_spaces() -> list[str]:
    from ..search.space import packaged_spaces

    return packaged_spaces()


def add_parser(sub) -> None:
    p = command(sub, "search", HELP)
    p.description = (HELP + ". Every option without a value given takes the search space's; a new run goes to "
                     f"{RUNS}/search-<space>-<timestamp> unless --out names a folder (printed when it starts)")
    g = groups(p)
    m, what, how, ev, out = (g["model and data"], g["what to prune"], g["how"], g["evaluation"], g["output"])
    what.add_argument("--space", default=None,
                      help=f"search space: a YAML file or a packaged name ({', '.join(_packaged_spaces())}) "
                           f"(default: {DEFAULT_SPACE}, the paper's space)")
    what.add_argument("--list-spaces", action="store_true",
                      help="print the packaged search spaces with what each is for, and exit")
    m.add_argument("--model", default=None,
                   help="model to prune for fitness, any that loads; replaces the space's fitness.models "
                        "(default: the space's fitness.models, else fitness.model)")
    m.add_argument("--device", default=None, help="cpu, cuda, ... (default: the space's, else cuda if available)")
    m.add_argument("--device-map", default=None, choices=checks.DEVICE_MAPS,
                   help="spread a model that does not fit one GPU over all GPUs (and CPU memory) with accelerate; "
                        "a placement, not part of the run's settings (default: the whole model on --device)")
    m.add_argument("--dtype", default=None, choices=checks.DTYPES,
                   help="weights' precision for fitness (default: the space's fitness.dtype)")
    m.add_argument("--seqlen", type=at_least(2), default=None,
                   help="window length (default: the space's fitness.seqlen)")
    m.add_argument("--bos", default=None, choices=checks.BOS_MODES,
                   help="stream (Wanda's windows) or window (BOS opens every window, for Gemma) (default: the "
                        "space's fitness.bos)")
    m.add_argument("--nsamples", type=at_least(1), default=None,
                   help="calibration windows for X and G (default: the space's fitness.nsamples)")
    m.add_argument("--batch-size", type=at_least(1), default=None,
                   help="windows per forward pass (default: the space's fitness.batch_size)")
    m.add_argument("--grad-storage", default=None, choices=checks.GRAD_STORAGES,
                   help="gradient statistics cached and held as fp32, or fp16 with a power-of-two scale per tensor "
                        "(half the disk and accelerator memory) (default: the space's fitness.grad_storage, fp32)")
    m.add_argument("--data-dir", default=None,
                   help="folder holding wikitext-2-raw/ and c4/ (default: $PRUNERZERO_DATA, else the hub)")
    m.add_argument("--cache-dir", default=None,
                   help="model and statistics cache (default: $PRUNERZERO_CACHE, else ~/.cache/prunerzero)")
    how.add_argument("--generations", type=at_least(1), default=None,
                     help="generations after the initial population (default: the space's gp.generations)")
    how.add_argument("--population", type=at_least(2), default=None,
                     help="individuals per generation (default: the space's gp.population)")
    how.add_argument("--seed", type=at_least(0), default=None, help="GP seed (default: the space's gp.seed)")
    how.add_argument("--workers", type=at_least(1), default=1,
                     help="evaluate on N GPUs through a Ray actor pool (prunerzero[ray])")
    how.add_argument("--max-minutes", type=number(0.0), default=None,
                     help="wall-time ceiling, model and statistics included: no generation is started that the "
                          "last one's length says would end past it; --resume continues it (default: no limit)")
    ev.add_argument("--eval-windows", type=at_least(1), default=None,
                    help="fitness windows of WikiText-2 validation (default: the space's fitness.eval_windows)")
    out.add_argument("--out", default=None,
                     help=f"new run directory (default: {RUNS}/search-<space name>-<UTC timestamp>)")
    out.add_argument("--resume", default=None,
                     help="continue the run in this directory with its recorded settings (default: a new run)")
    out.add_argument("--top", type=at_least(1), default=10, help="rows of the final table")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_search)
