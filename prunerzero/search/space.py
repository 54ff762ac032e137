"""Search spaces: YAML files naming the terminals, operations, GP settings and fitness settings.

Unknown keys, unknown operations and out-of-range values are refused with one line naming the fix.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UserError
from ..metric.expr import parse
from ..metric.known import KNOWN_METRICS
from ..metric.ops import OPS, TERMINALS, canonical_op

DEFAULTS = {
    "name": "unnamed",
    "description": "",
    "terminals": ["W", "X", "G"],
    "unary": ["abs", "neg", "sqr", "sqrt", "log", "exp", "tanh", "sigmoid", "mms", "zsn", "identity"],
    "binary": ["add", "sub", "mul", "div"],
    "init": {"min_depth": 2, "max_depth": 4},
    "limits": {"max_depth": 8, "max_size": 32},
    "gp": {"population": 30, "generations": 20, "tournament": 3, "cxpb": 0.7, "mutpb": 0.3, "elites": 2,
           "seed": 0, "mutation": {"uniform": 0.5, "node": 0.3, "shrink": 0.2}},
    "fitness": {"model": "smollm2", "sparsity": 0.5, "pattern": "unstructured", "group": "row",
                "eval_dataset": "wikitext2", "eval_split": "validation", "eval_windows": 8, "seqlen": 2048,
                "nsamples": 128, "calib_seed": 0, "batch_size": 1, "dtype": "auto", "device": None,
                "penalty": 100000.0},
    "seed_population": [],
}


def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if k not in base:
            raise UserError(f"unknown key '{where}{k}' in search space: allowed are {', '.join(base)}")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise UserError(f"'{where}{k}' must be a mapping")
            out[k] = _merge(base[k], v, f"{where}{k}.")
        else:
            out[k] = v
    return out


@dataclass
class SearchSpace:
    raw: dict
    path: str | None = None
    seeds: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def gp(self) -> dict:
        return self.raw["gp"]

    @property
    def fitness(self) -> dict:
        return self.raw["fitness"]

    @property
    def ops(self) -> set[str]:
        return set(self.raw["unary"]) | set(self.raw["binary"])

    def allows(self, formula) -> bool:
        """Whether a formula tree uses only this space's terminals and operations (and no constants)."""
        node = parse(formula) if isinstance(formula, str) else formula
        return all((n.op in self.raw["terminals"]) if n.is_terminal else (not n.is_const and n.op in self.ops)
                   for n in node.walk())

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(self.raw, sort_keys=True).encode()).hexdigest()[:12]


def validate(raw: dict, path: str | None = None) -> SearchSpace:
    cfg = _merge(DEFAULTS, raw or {}, "")
    for t in cfg["terminals"]:
        if t not in TERMINALS:
            raise UserError(f"unknown terminal '{t}' in search space: use {', '.join(TERMINALS)}")
    for kind, arity in (("unary", 1), ("binary", 2)):
        names = []
        for op in cfg[kind]:
            name = canonical_op(op)
            if name not in OPS:
                raise UserError(f"unknown operation '{op}' in search space: use one of {', '.join(sorted(OPS))}")
            if OPS[name].arity != arity:
                raise UserError(f"operation '{op}' is not {kind} (it takes {OPS[name].arity} argument(s))")
            names.append(name)
        cfg[kind] = sorted(set(names), key=names.index)
    if not cfg["binary"] and not cfg["unary"]:
        raise UserError("search space has no operations: list some under unary/binary")
    ini, lim, gp = cfg["init"], cfg["limits"], cfg["gp"]
    if not (1 <= ini["min_depth"] <= ini["max_depth"] <= lim["max_depth"]):
        raise UserError("need 1 <= init.min_depth <= init.max_depth <= limits.max_depth")
    for k in ("population", "generations", "tournament"):
        if not isinstance(gp[k], int) or gp[k] < 1:
            raise UserError(f"gp.{k} must be a positive integer")
    if not (0 <= gp["elites"] < gp["population"]):
        raise UserError("gp.elites must be in [0, population)")
    for k in ("cxpb", "mutpb"):
        if not (0.0 <= float(gp[k]) <= 1.0):
            raise UserError(f"gp.{k} must be a probability in [0, 1]")
    if sum(gp["mutation"].values()) <= 0 or any(v < 0 for v in gp["mutation"].values()):
        raise UserError("gp.mutation weights must be >= 0 and not all 0")
    fit = cfg["fitness"]
    if fit["eval_split"] == "test":
        raise UserError("fitness.eval_split 'test' would select formulas on the split results are reported on: "
                        "use validation")
    space = SearchSpace(cfg, path)
    for s in cfg["seed_population"]:
        node = parse(KNOWN_METRICS[s].formula if s in KNOWN_METRICS else s)
        if not space.allows(node):
            raise UserError(f"seed '{s}' uses terminals or operations outside this space: remove it or widen the space")
        space.seeds.append(str(node))
    return space


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"search space {path} not found: see search_spaces/*.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a mapping of settings")
    return validate(raw, str(path))
