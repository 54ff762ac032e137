"""`prunerzero eval`: perplexity (and optional lm-eval zero-shot accuracy) of a model."""
from __future__ import annotations

import json

from ._common import (check_model_args, command, common_model_args, evaluate, load, ppl_line, provenance,
                      shell_command, write_json)

HELP = "perplexity (and optional zero-shot accuracy) of a model"


def cmd_eval(args) -> None:
    check_model_args(args, calibration=False)
    lm = load(args)
    payload = {"command": shell_command(), "provenance": provenance(lm), "model": args.model, "seqlen": lm.seqlen,
               "bos": args.bos, "eval": evaluate(lm, args)}
    print(ppl_line(payload["eval"]))
    if "zero_shot" in payload["eval"]:
        print(json.dumps(payload["eval"]["zero_shot"], indent=2))
    write_json(args.json, payload)


def add_parser(sub) -> None:
    p = command(sub, "eval", HELP)
    common_model_args(p)
    p.set_defaults(func=cmd_eval)
