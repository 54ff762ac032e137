"""The experiment runner: a grid of models x methods x patterns x seeds -> one JSONL row per cell -> tables.

A grid is a YAML file (see ``grids/``)::

    name: baselines
    description: dense, magnitude, Wanda, Pruner-Zero, SparseGPT at 50%, 4:8 and 2:4
    protocol: {seqlen: 2048, nsamples: 128, eval_datasets: [wikitext2, c4], batch_size: 8}
    models: [smollm2]                 # default: [protocol.model]
    seeds: [0]                        # calibration seeds (default: [protocol.seed])
    patterns: [0.5, "4:8", "2:4"]     # unstructured sparsity, or N:M
    methods:
      - dense
      - {name: wanda, mode: sequential}
      - {name: found, formula: "mul(sqrt(sub(X, G)), abs(W))", mode: sequential}
      - {name: sparsegpt, mode: sequential}

Structural cells (``kind: structural``: the policy-gradient or one-shot structure-score pruner of
``pipeline.structural``) read the grid's patterns as removed fractions of the prunable parameters; every other key
of such a method is a ``pipeline.StructuralConfig`` field (``preset``, ``init``, ``steps``, ``lr``, ...) whose
defaults are ``structural_config(preset)``'s, and ``formula`` is the metric behind the initial scores::

    structural: {eval_seqlens: [128, 2048], latency_repeats: 3}   # evaluation of every cell (dense included)
    patterns: [0.2, 0.3]
    methods:
      - dense
      - {name: found, kind: structural, init: metric, formula: "mul(sqrt(sub(X, G)), abs(W))", steps: 300, lr: 0.02}
      - {name: found, kind: structural, init: oneshot, formula: "mul(sqrt(sub(X, G)), abs(W))"}

Every cell is one row in ``<out>/rows.jsonl`` with one schema: the protocol, the method, its formula and ranking
key, the pattern, the measured sparsity, perplexity per dataset, seconds, and provenance (git commit and whether
the tree was dirty, library versions, device, the exact command). Rows already present are skipped, so a stopped
run resumes by running the same command. Tables are rendered *from rows* (mean ± std over seeds), never typed.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from . import checks
from .errors import UserError
from .fsutil import atomic_write_text
from .protocol import Protocol
from .prune.sparsegpt import PERCDAMP

MODES = ("sequential", "oneshot")
DATASET_TITLES = {"wikitext2": "WikiText-2", "c4": "C4"}


def procedure_suffix(update: str, allocation: str, owl_lambda: float, owl_m: float, permute: bool,
                     percdamp: float = PERCDAMP) -> str:
    """What a pruning run does beyond its metric's mask, as tables and ``prunerzero prune`` print it:
    ", +OBS" (", +LSQ", ", +ADMM"), ", OWL" (with λ / M where they differ from OWL's 0.08 / 5), ", permuted",
    ", damp 0.1" (a Hessian damping other than SparseGPT's 0.01); '' for a plain metric."""
    owl = ""
    if allocation == "owl":
        params = ([f"λ {owl_lambda:g}"] if owl_lambda != 0.08 else []) + ([f"M {owl_m:g}"] if owl_m != 5.0 else [])
        owl = ", OWL" + (f" {' '.join(params)}" if params else "")
    return ((f", +{update.upper()}" if update != "none" else "") + owl + (", permuted" if permute else "")
            + (f", damp {percdamp:g}" if percdamp != PERCDAMP else ""))


@dataclass(frozen=True)
class Method:
    name: str                       # a known metric, 'sparsegpt', 'dense', or a label of ``formula``
    formula: str | None = None      # the formula text behind a label (None for known names)
    mode: str = "sequential"        # sequential: Wanda's layer-by-layer statistics; oneshot: dense statistics;
                                    # structural methods: their init (metric | const | random | oneshot)
    kind: str = "prune"             # prune | structural
    settings: tuple = ()            # structural: the (StructuralConfig field, value) pairs the grid sets, and preset
    update: str = "none"            # pruning procedure beyond the mask: obs = reconstruct the kept weights
    allocation: str = "uniform"     # uniform | owl (per-block sparsity; unstructured patterns only)
    owl_lambda: float = 0.08
    owl_m: float = 5.0
    permute: bool = False           # N:M input-channel permutation (N:M patterns only)
    percdamp: float = PERCDAMP      # Hessian damping of SparseGPT and of the updates (fraction of mean diag H)
    models: tuple = ()              # the grid's models this method runs on (empty: all); not part of a cell's id

    def runs_on(self, model: str) -> bool:
        return not self.models or model in self.models

    @property
    def procedure(self) -> str:
        """The procedure settings that differ from a plain metric ('' for a plain metric: ids stay as before)."""
        parts = [f"update={self.update}"] if self.update != "none" else []
        if self.allocation != "uniform":
            parts.append(f"allocation={self.allocation}(lambda={self.owl_lambda:g},m={self.owl_m:g})")
        if self.permute:
            parts.append("permute")
        if self.percdamp != PERCDAMP:
            parts.append(f"percdamp={self.percdamp:g}")
        return "|".join(parts)

    def applies_to(self, pattern: str) -> bool:
        """OWL allocation is defined for unstructured sparsity, channel permutation for N:M: other cells are not run."""
        nm = ":" in pattern
        return not ((self.allocation != "uniform" and nm) or (self.permute and not nm))

    @property
    def spec(self) -> str:
        return self.formula or self.name

    @property
    def label(self) -> str:
        if self.name == "dense" or self.kind == "structural":
            return self.name
        extra = procedure_suffix(self.update, self.allocation, self.owl_lambda, self.owl_m, self.permute,
                                 self.percdamp)
        return f"{self.name} ({self.mode}{extra})"

    def structural_config(self, sparsity: float, seed: int):
        """The StructuralConfig of this method at one removed fraction and seed (defaults: ``structural_config``)."""
        from .pipeline import structural_config

        settings = dict(self.settings)
        preset = settings.pop("preset", None)
        return structural_config(preset, sparsity=sparsity, seed=seed, init=self.mode, metric=self.formula,
                                 **settings)

    @property
    def config_key(self) -> str:
        """What the cell computes beyond its pattern and seed: a row of other settings is another cell."""
        import dataclasses
        import hashlib

        cfg = dataclasses.asdict(self.structural_config(0.5, 0))
        for k in STRUCTURAL_CELL_FIELDS:
            cfg.pop(k)
        for k, default in STRUCTURAL_LATER_FIELDS.items():  # at its default, a later field keeps older keys valid
            if cfg.get(k) == default:
                cfg.pop(k)
        return hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Cell:
    model: str
    method: Method
    pattern: str                    # "0.5" (unstructured) or "2:4"; "-" for dense
    seed: int
    protocol_key: str = ""          # ``protocol_key(grid.protocol)``: a row of another protocol is another cell

    @property
    def id(self) -> str:
        extra = f"|config={self.method.config_key}" if self.method.kind == "structural" else ""
        if self.method.procedure:
            extra += f"|{self.method.procedure}"
        return (f"{self.model}|{self.method.name}|{self.method.mode}|{self.pattern}|seed={self.seed}"
                f"|protocol={self.protocol_key}{extra}")


# what makes two numbers comparable; model and seed are in the cell, device and batch size are the environment
PROTOCOL_IDENTITY = ("dtype", "seqlen", "calibration", "nsamples", "grad_precision", "eval_datasets", "eval_split",
                     "eval_windows", "bos")
# identity fields added after rows were committed, with their defaults: left out of the key there
PROTOCOL_LATER_FIELDS = {"bos": checks.BOS_DEFAULT}


def later_default(key: str, value) -> bool:
    """A protocol field added after rows were committed, at its default: left out of keys and table headers."""
    return key in PROTOCOL_LATER_FIELDS and PROTOCOL_LATER_FIELDS[key] == value


def protocol_key(protocol: Protocol, evaluation: dict | None = None) -> str:
    """Hash of what makes numbers comparable; ``evaluation``: a structural grid's window lengths and token count."""
    import hashlib

    ident = {k: v for k, v in protocol.as_dict().items()
             if k in PROTOCOL_IDENTITY and not later_default(k, v)}
    if evaluation is not None:
        ident["structural_evaluation"] = evaluation
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]


# StructuralConfig fields added after rows were committed, with their defaults: left out of a cell's key there
STRUCTURAL_LATER_FIELDS = {"reconstruct": False, "curve_every": 0}
# StructuralConfig fields a structural cell sets itself (pattern, seed) or the grid's evaluation sets
STRUCTURAL_CELL_FIELDS = ("sparsity", "seed", "eval_seqlens", "eval_windows")


@dataclass(frozen=True)
class StructuralEval:
    """How every cell of a structural grid is measured: perplexity at each window length, parameters, latency."""
    seqlens: tuple[int, ...]
    tokens: int | None = None         # the first N test tokens cut into windows of each length (None: the protocol's
                                      # eval_windows windows of each length, every window if that is None too)
    latency_seqlen: int | None = None  # tokens of the timed forward (None: protocol.seqlen)
    latency_repeats: int = 0          # timed forwards after 2 warm-ups, median reported; 0: not timed
    curve_target: float | None = None  # learning curves: the table gives the first step reaching this perplexity

    def identity(self) -> dict:
        return {"seqlens": list(self.seqlens), "tokens": self.tokens}

    def windows(self, seqlen: int, protocol: Protocol) -> int | None:
        return self.tokens // seqlen if self.tokens else protocol.eval_windows


@dataclass(frozen=True)
class Grid:
    name: str
    description: str
    protocol: Protocol
    models: tuple[str, ...]
    methods: tuple[Method, ...]
    patterns: tuple[str, ...]
    seeds: tuple[int, ...]
    path: str | None = None
    structural: StructuralEval | None = None   # set when the grid holds structural methods
    reference: tuple = ()           # methods: tables add each method's ratio to each (transfer reports)
    searched_on: tuple = ()         # (method, models its formula was searched on): marks search / other models
    dense_at: int | None = None     # the seed of the dense cell, kept when ``with_seeds`` runs a subset of seeds

    @property
    def dense_seed(self) -> int:
        """Dense perplexity does not depend on the calibration seed: its one cell is at the grid's lowest seed, also
        when a runner is given other seeds (``--seeds 1`` runs no dense cell rather than a second one at seed 1)."""
        return min(self.seeds) if self.dense_at is None else self.dense_at

    def cell(self, model: str, method: Method, pattern: str, seed: int) -> Cell:
        ev = self.structural.identity() if self.structural else None
        return Cell(model, method, pattern, seed, protocol_key(self.protocol, ev))

    def cells(self) -> list[Cell]:
        out = []
        for model in self.models:
            for seed in self.seeds:
                for method in self.methods:
                    if not method.runs_on(model):
                        continue
                    if method.name == "dense":  # seed-independent: once, at the lowest seed
                        if seed == self.dense_seed:
                            out.append(self.cell(model, method, "-", seed))
                        continue
                    out += [self.cell(model, method, p, seed) for p in self.patterns if method.applies_to(p)]
        return out

    def with_protocol(self, **changes) -> "Grid":
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, protocol=self.protocol.with_(**changes)) if changes else self

    def with_seeds(self, seeds: list[int]) -> "Grid":
        return replace(self, seeds=tuple(seeds), dense_at=self.dense_seed)

    def with_formulas(self, formulas: dict[str, str]) -> "Grid":
        """Set the formula behind method labels (``found=mul(...)``), e.g. the one a selection chose."""
        names = {m.name for m in self.methods}
        for name in formulas:
            if name not in names:
                raise UserError(f"--formula {name}=...: the grid has no method '{name}' (it has {', '.join(names)})")
        methods = tuple(_checked(replace(m, formula=formulas[m.name]), m.name) if m.name in formulas else m
                        for m in self.methods)
        return replace(self, methods=methods)


def _pattern_text(value, where: str) -> str:
    from .prune.masks import parse_pattern

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        checks.fraction(value, where)
        return f"{float(value):g}"
    if isinstance(value, str) and ":" in value:
        pat = parse_pattern(0.5, value)
        return f"{pat.n}:{pat.m}"
    raise UserError(f"{where} '{value}' is not a pattern: use a sparsity such as 0.5 or N:M such as 2:4")


def _method(raw, where: str) -> Method:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        raise UserError(f"{where} must be a name or a mapping with 'name' (and 'formula', 'mode')")
    kind = raw.get("kind", "prune")
    if kind == "structural":
        return _structural_method(raw, where)
    if kind != "prune":
        raise UserError(f"{where}.kind '{kind}' is unknown: use prune (the default) or structural")
    allowed = ("name", "formula", "mode", "kind", "models") + PROCEDURE_KEYS
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise UserError(f"unknown key '{where}.{unknown[0]}': allowed are {', '.join(allowed)}")
    models = raw.get("models", [])
    if not _model_names(models) or ("models" in raw and not models) or len(set(models)) != len(models):
        raise UserError(f"{where}.models must list the grid's models this method runs on, each once, e.g. "
                        "[smollm2] (leave it out to run it on every model)")
    return _checked(Method(str(raw["name"]), raw.get("formula"), raw.get("mode", "sequential"),
                           models=tuple(models), **_procedure(raw, where)), where)


def _model_names(value) -> bool:
    """Whether a grid value is a list of model names (non-empty strings); each caller words its own error."""
    return isinstance(value, list) and all(isinstance(m, str) and m.strip() for m in value)


PROCEDURE_KEYS = ("update", "allocation", "owl_lambda", "owl_m", "permute", "percdamp")


def _procedure(raw: dict, where: str) -> dict:
    """A pruning method's procedure keys (as ``prunerzero prune`` --update/--allocation/--owl-*/--permute)."""
    out = {}
    for key, choices in (("update", ("none", "obs", "lsq", "admm")), ("allocation", ("uniform", "owl"))):
        if key in raw:
            if raw[key] not in choices:
                raise UserError(f"{where}.{key} '{raw[key]}' is unknown: use {' or '.join(choices)}")
            out[key] = raw[key]
    for key, high, open_low in (("owl_lambda", 0.5, False), ("owl_m", None, True)):
        if key in raw:
            if out.get("allocation") != "owl":
                raise UserError(f"{where}.{key} sets the OWL allocation: add 'allocation: owl' or drop it")
            out[key] = checks.real(raw[key], f"{where}.{key}", 0.0, high, open_low=open_low)
    if "permute" in raw:
        if not isinstance(raw["permute"], bool):
            raise UserError(f"{where}.permute must be true or false, got {raw['permute']!r}")
        out["permute"] = raw["permute"]
    name = str(raw["name"])
    if "percdamp" in raw:
        out["percdamp"] = checks.real(raw["percdamp"], f"{where}.percdamp", 0.0, None, open_low=True)
        if str(raw.get("formula") or name) != "sparsegpt" and out.get("update", "none") == "none":
            raise UserError(f"{where}.percdamp damps the Hessian of sparsegpt or of an update: add 'update: obs' "
                            "(or lsq, admm), or drop it")
    if out and name == "dense":
        raise UserError(f"{where}: dense is not pruned: drop {', '.join(sorted(out))}")
    if name == "sparsegpt" and not raw.get("formula") and (out.get("update", "none") != "none" or out.get("permute")):
        raise UserError(f"{where}: sparsegpt already reconstructs (OBS) and has no metric to permute by: use a "
                        "metric with 'update: obs' instead")
    return out


# minimum of each integer StructuralConfig field a grid may set (the others: >= 0)
_STRUCTURAL_MINIMA = {"steps": 1, "samples": 2, "batch_size": 1, "calib_seqlen": 2, "ma_window": 1}


def _structural_method(raw: dict, where: str) -> Method:
    """A ``kind: structural`` method: every key a StructuralConfig field (checked by its default's type)."""
    import dataclasses

    from .cli import STRUCTURAL_INITS
    from .pipeline import StructuralConfig
    from .prune.structural import ATTN_SCORES, MLP_SCORES

    defaults = {f.name: f.default for f in dataclasses.fields(StructuralConfig)
                if f.name not in STRUCTURAL_CELL_FIELDS and f.name != "metric"}
    allowed = {"name", "kind", "formula", "preset"} | set(defaults)
    unknown = sorted(set(raw) - allowed)
    if unknown:
        hint = " (the metric of a structural method is its 'formula')" if unknown[0] == "metric" else ""
        raise UserError(f"unknown key '{where}.{unknown[0]}'{hint}: allowed are {', '.join(sorted(allowed))}")
    choices = {"init": STRUCTURAL_INITS, "attn_score": ATTN_SCORES, "mlp_score": MLP_SCORES}
    settings = {}
    for key in sorted(set(raw) - {"name", "kind", "formula"}):
        value, what = raw[key], f"{where}.{key}"
        default = defaults.get(key)
        if key == "preset":
            if not isinstance(value, str):
                raise UserError(f"{what} must name a preset, got {value!r}")
        elif key in choices:
            if value not in choices[key]:
                raise UserError(f"{what} '{value}' is unknown: use {', '.join(choices[key])}")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise UserError(f"{what} must be true or false, got {value!r}")
        elif isinstance(default, int):
            checks.integer(value, what, _STRUCTURAL_MINIMA.get(key, 0))
        elif isinstance(default, float):
            value = checks.real(value, what, 0.0, open_low=True)
        settings[key] = value
    from .pipeline import structural_config

    init = structural_config(settings.get("preset"), init=settings.pop("init", None)).init  # the preset's, else
    formula = raw.get("formula")                                                            # StructuralConfig's
    return _checked(Method(str(raw["name"]), None if formula is None else str(formula), init, "structural",
                           tuple(sorted(settings.items()))), where)


def _checked(method: Method, where: str) -> Method:
    """Refuse a bad mode, name or formula here, before any model is loaded."""
    from .metric.known import resolve_metric
    from .prune.run import SPARSEGPT

    if method.kind == "structural":
        if method.name == "dense":
            raise UserError(f"{where}: 'dense' is not a structural method: list it as plain 'dense'")
        cfg = method.structural_config(0.5, 0)   # an unknown preset is refused here
        from .pipeline import check_structural
        try:
            check_structural(cfg)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        if cfg.init in ("metric", "oneshot"):
            resolve_metric(cfg.metric)
        return method
    if method.mode not in MODES:
        raise UserError(f"{where}.mode '{method.mode}' is unknown: use sequential or oneshot")
    if method.name != "dense" and method.spec != SPARSEGPT:
        resolve_metric(method.spec)
    return method


def _structural_eval(raw, protocol: Protocol) -> StructuralEval:
    from .pipeline import StructuralConfig

    raw = dict(raw or {})
    allowed = {"eval_seqlens", "eval_tokens", "latency_seqlen", "latency_repeats", "curve_target"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise UserError(f"unknown key 'structural.{unknown[0]}': allowed are {', '.join(sorted(allowed))}")
    seqlens = raw.get("eval_seqlens", StructuralConfig.eval_seqlens)
    if isinstance(seqlens, (list, tuple)):
        seqlens = tuple(checks.integer(L, "structural.eval_seqlens[]", 2) for L in seqlens)
    else:
        seqlens = tuple(checks.int_list(seqlens, "structural.eval_seqlens", 2))
    if not seqlens or len(set(seqlens)) != len(seqlens):
        raise UserError("structural.eval_seqlens must list window lengths, each once: e.g. [128, 2048]")
    tokens = checks.optional_integer(raw.get("eval_tokens"), "structural.eval_tokens", max(seqlens))
    if tokens is not None and protocol.eval_windows is not None:
        raise UserError("structural.eval_tokens and protocol.eval_windows both limit the evaluation: keep one")
    return StructuralEval(seqlens, tokens,
                          checks.optional_integer(raw.get("latency_seqlen"), "structural.latency_seqlen", 1),
                          checks.integer(raw.get("latency_repeats", 0), "structural.latency_repeats", 0),
                          None if raw.get("curve_target") is None
                          else checks.real(raw["curve_target"], "structural.curve_target", 0.0, open_low=True))


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid YAML (every key checked before anything slow happens)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"grid {path} not found: pass a grid YAML (see grids/)")
    raw = checks.yaml_mapping(path, "grid settings (name, protocol, methods, patterns, ...)")
    allowed = {"name", "description", "protocol", "models", "methods", "patterns", "seeds", "structural",
               "reference", "searched_on"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise UserError(f"unknown key '{unknown[0]}' in grid {path}: allowed are {', '.join(sorted(allowed))}")
    protocol = Protocol.from_dict(raw.get("protocol"))
    models = raw.get("models") or [protocol.model]
    if not _model_names(models):
        raise UserError(f"grid {path}: models must be a list of model names, e.g. [smollm2, gemma3-270m]")
    if len(set(models)) != len(models):
        raise UserError(f"grid {path}: models repeat a model: list each once")
    models = tuple(models)
    seeds = tuple(checks.integer(s, "seeds[]", 0) for s in (raw.get("seeds") or [protocol.seed]))
    if len(set(seeds)) != len(seeds):
        raise UserError("grid seeds repeat a seed: list each once")
    methods = tuple(_method(m, f"methods[{i}]") for i, m in enumerate(raw.get("methods") or []))
    if not methods:
        raise UserError(f"grid {path} lists no methods: add e.g. 'methods: [dense, wanda]'")
    names = [(m.name, m.mode) for m in methods]
    if len(set(names)) != len(names):
        raise UserError("grid methods repeat a (name, mode): give each its own name")
    for i, m in enumerate(methods):
        stray = [name for name in m.models if name not in models]
        if stray:
            raise UserError(f"grid {path}: methods[{i}].models names '{stray[0]}', which is not one of the grid's "
                            f"models ({', '.join(models)})")
    patterns = tuple(_pattern_text(p, f"patterns[{i}]") for i, p in enumerate(raw.get("patterns") or [0.5]))
    structural = None
    if any(m.kind == "structural" for m in methods):
        pruning = [m.name for m in methods if m.kind != "structural" and m.name != "dense"]
        if pruning:
            raise UserError(f"grid {path} mixes structural methods with pruning method '{pruning[0]}': "
                            "put them in separate grids")
        if any(":" in p for p in patterns):
            raise UserError(f"grid {path}: structural methods remove a fraction of the parameters; pattern "
                            f"'{next(p for p in patterns if ':' in p)}' is N:M: use fractions such as 0.2")
        if "nsamples" in (raw.get("protocol") or {}):
            raise UserError(f"grid {path}: protocol.nsamples is the pruning calibration; structural methods take "
                            "their own 'nsamples' (C4 windows of the policy): set it on the methods")
        structural = _structural_eval(raw.get("structural"), protocol)
    elif "structural" in raw:
        raise UserError(f"grid {path} has a 'structural' block but no 'kind: structural' method: add one or drop it")
    reference, searched_on = _reference(raw, methods, path)
    return Grid(str(raw.get("name") or path.stem), str(raw.get("description") or ""), protocol, models, methods,
                patterns, seeds, str(path), structural, reference, searched_on)


def _reference(raw: dict, methods: tuple[Method, ...], path: Path) -> tuple[tuple, tuple]:
    """The grid's optional ``reference`` (a method name or a list of them) and ``searched_on`` ({method: [models]})."""
    names = [m.name for m in methods]
    reference = raw.get("reference")
    reference = () if reference is None else tuple(reference) if isinstance(reference, list) else (reference,)
    for ref in reference:
        if not isinstance(ref, str) or ref not in names or ref == "dense":
            raise UserError(f"grid {path}: reference '{ref}' is not one of its methods ({', '.join(names)})")
        if any(m.models for m in methods if m.name == ref):
            raise UserError(f"grid {path}: reference '{ref}' must run on every model: drop its 'models' key")
    if len(set(reference)) != len(reference):
        raise UserError(f"grid {path}: reference repeats a method: list each once")
    searched = raw.get("searched_on") or {}
    if not isinstance(searched, dict):
        raise UserError(f"grid {path}: searched_on must map a method to the models its search used, "
                        "e.g. {found: [smollm2]}")
    out = []
    for name, models in searched.items():
        if name not in names:
            raise UserError(f"grid {path}: searched_on names '{name}', which is not one of its methods")
        if not models or not _model_names(models):
            raise UserError(f"grid {path}: searched_on.{name} must be a list of models, e.g. [smollm2]")
        out.append((name, tuple(models)))
    if out and not reference:
        raise UserError(f"grid {path}: searched_on needs a reference method (e.g. reference: wanda)")
    return reference, tuple(out)


# ------------------------------------------------------------------------------------------------ rows
def read_rows(path: str | Path) -> list[dict]:
    """Rows of a ``rows.jsonl``; a torn last line (killed mid-write) is dropped with a note."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "id" not in row:
                raise ValueError
        except ValueError:
            if i == len(lines):
                print(f"note: dropped the torn last line {i} of {path}", file=sys.stderr)
                break
            raise UserError(f"{path} line {i} is not a row: restore the file or remove that line") from None
        rows.append(row)
    return rows


def _append_row(path: Path, row: dict) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def claim(rows_path: Path, cell_id: str):
    """Yield True when this process may run ``cell_id``: no row holds it yet and no other live runner has claimed
    it. Several ``prunerzero bench`` processes can thus share one grid and one rows file (one per GPU, say): each
    cell is run once. A claim is a file under ``<out>/.claims/`` holding host and pid; one left by a runner that
    died (same host, pid gone) is taken over, and every claim is removed when its cell ends."""
    import hashlib

    folder = rows_path.parent / ".claims"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / hashlib.sha1(cell_id.encode()).hexdigest()
    if not _take_claim(path):
        yield False
        return
    try:
        yield cell_id not in {r["id"] for r in read_rows(rows_path)}  # another runner may have finished it
    finally:
        path.unlink(missing_ok=True)


def _take_claim(path: Path) -> bool:
    """Create the claim file ``path`` (host and pid); one left by a runner that died on this host is taken over."""
    import os
    import socket

    host = socket.gethostname()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner, pid = path.read_text().split()
            except (OSError, ValueError):  # being written or removed just now: leave it to its owner
                return False
            if owner != host or _alive(int(pid)):
                return False
            path.unlink(missing_ok=True)   # a runner that died holding it
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{host} {os.getpid()}")
        return True
    return False


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_grid(grid: Grid, out: str | Path, data_dir=None, cache=None, command: str | None = None,
             progress: bool = True, only_model: str | None = None) -> list[dict]:
    """Run every cell of ``grid`` that ``<out>/rows.jsonl`` does not hold yet; returns all rows."""
    from .data import require_data
    from .metric.simplify import rank_key
    from .models import all_prunable, load_model
    from .pipeline import CalibConfig, default_group, evaluate_all, prune
    from .provenance import provenance
    from .prune.masks import WeightSnapshot, parse_pattern
    from .prune.run import SPARSEGPT

    out = Path(out)
    rows_path = out / "rows.jsonl"
    done = {r["id"] for r in read_rows(rows_path)}
    proto = grid.protocol
    checks.device(proto.device, "protocol.device")
    require_data(data_dir, proto.eval_datasets, (proto.eval_split,), calibration=True)
    todo = [c for c in grid.cells() if c.id not in done and (only_model is None or c.model == only_model)]
    if grid.structural:
        _run_structural(grid, todo, rows_path, data_dir, cache, command, progress)
        return read_rows(rows_path)
    for model in dict.fromkeys(c.model for c in todo):
        lm = load_model(model, device=proto.device, dtype=proto.dtype, cache=cache, seqlen=proto.seqlen,
                        bos=proto.bos)
        snapshot = WeightSnapshot(all_prunable(lm.model), device="cpu")
        origin = provenance(lm.device, command)
        for cell in (c for c in todo if c.model == model):
            with claim(rows_path, cell.id) as mine:
                if not mine:
                    continue
                method = cell.method
                t0 = time.time()
                row = {"id": cell.id, "grid": grid.name, "model": model, "method": method.name,
                       "formula": None, "key": None, "mode": None if method.name == "dense" else method.mode,
                       "pattern": cell.pattern, "seed": cell.seed}
                if method.name != "dense":
                    spec = method.spec
                    if spec != SPARSEGPT:
                        from .metric.known import resolve_metric
                        _, node, _ = resolve_metric(spec)
                        row["formula"], row["key"] = str(node), rank_key(str(node))
                    pattern = (parse_pattern(0.5, cell.pattern) if ":" in cell.pattern
                               else parse_pattern(float(cell.pattern), None, default_group(spec)))
                    calib = CalibConfig(proto.nsamples, cell.seed, proto.batch_size, data_dir, cache)
                    res = prune(lm, spec, pattern, calib, sequential=method.mode == "sequential", progress=progress,
                                update=method.update, allocation=method.allocation, owl_lambda=method.owl_lambda,
                                owl_m=method.owl_m, permute=method.permute, percdamp=method.percdamp)
                    row.update(pattern_text=str(pattern), sparsity=res.sparsity, prune_seconds=round(res.seconds, 3))
                    if method.procedure:
                        row["procedure"] = {"update": method.update, "allocation": method.allocation,
                                            "permute": method.permute}
                        if method.allocation == "owl":
                            row["procedure"].update(owl_lambda=method.owl_lambda, owl_m=method.owl_m)
                        if method.percdamp != PERCDAMP:
                            row["procedure"]["percdamp"] = method.percdamp
                else:
                    row.update(pattern_text="dense", sparsity=0.0, prune_seconds=0.0)
                t1 = time.time()
                ev = evaluate_all(lm, list(proto.eval_datasets), proto.eval_windows, proto.batch_size, data_dir,
                                  progress, split=proto.eval_split)
                row["ppl"] = {ds: r["ppl"] for ds, r in ev.items()}
                row["windows"] = {ds: r["windows"] for ds, r in ev.items()}
                row["eval_seconds"] = round(time.time() - t1, 3)
                row["seconds"] = round(time.time() - t0, 3)
                row["protocol"] = {**proto.as_dict(), "model": model, "seed": cell.seed, "seqlen": lm.seqlen,
                                   "dtype": str(lm.model.dtype).replace("torch.", ""), "device": str(lm.device)}
                row["provenance"] = origin
                _append_row(rows_path, row)
                snapshot.restore()
                if progress:
                    shown = "  ".join(f"{ds} {v:.3f}" for ds, v in row["ppl"].items())
                    print(f"{cell.id}: {shown}", flush=True)
        del lm, snapshot
    return read_rows(rows_path)


def _run_structural(grid: Grid, todo: list[Cell], rows_path: Path, data_dir, cache, command, progress) -> None:
    """Structural cells: each slices a freshly loaded model (dense: measured as loaded)."""
    import dataclasses

    from .metric.known import resolve_metric
    from .metric.simplify import rank_key
    from .models import load_model
    from .pipeline import CalibConfig, structural
    from .provenance import provenance
    from .prune.structural import count_params, forward_latency

    proto, ev = grid.protocol, grid.structural
    for cell in todo:
        with claim(rows_path, cell.id) as mine:
            if not mine:
                continue
            method = cell.method
            t0 = time.time()
            lm = load_model(cell.model, device=proto.device, dtype=proto.dtype, cache=cache, seqlen=proto.seqlen,
                            bos=proto.bos)
            row = {"id": cell.id, "grid": grid.name, "model": cell.model, "method": method.name, "kind": "structural",
                   "formula": None, "key": None, "mode": None, "pattern": cell.pattern, "seed": cell.seed}
            if method.name == "dense":
                row.update(sparsity=0.0, removed=0.0, params=count_params(lm.model)["total"], prune_seconds=0.0,
                           final_loss=None)
                cfg = None
            else:
                cfg = method.structural_config(float(cell.pattern), cell.seed)
                if cfg.init in ("metric", "oneshot"):
                    _, node, _ = resolve_metric(cfg.metric)
                    row["formula"], row["key"] = str(node), rank_key(str(node))

                def curve_eval():  # the row's own evaluation, at every curve point
                    return _structural_ppl(grid, lm, data_dir, False)

                res = structural(lm, cfg, CalibConfig(seed=cell.seed, data_dir=data_dir, cache=cache), progress,
                                 curve_eval=curve_eval)
                row.update(mode=cfg.init, sparsity=cfg.sparsity, removed=res["removed_fraction"],
                           params=res["params_after"]["total"], prune_seconds=round(res["seconds"], 3),
                           final_loss=res["history"][-1]["baseline"] if res["history"] else None)
            t1 = time.time()
            row["ppl"], row["windows"] = _structural_ppl(grid, lm, data_dir, progress, windows=True)
            row["eval_seconds"] = round(time.time() - t1, 3)
            row["latency_ms"] = (1000 * forward_latency(lm.model, ev.latency_seqlen or proto.seqlen,
                                                        repeats=ev.latency_repeats) if ev.latency_repeats else None)
            row["seconds"] = round(time.time() - t0, 3)
            row["protocol"] = {**proto.as_dict(), "model": cell.model, "seed": cell.seed, "seqlen": lm.seqlen,
                               "dtype": str(lm.model.dtype).replace("torch.", ""), "device": str(lm.device),
                               "evaluation": {**ev.identity(), "latency_seqlen": ev.latency_seqlen or proto.seqlen,
                                              "latency_repeats": ev.latency_repeats}}
            row["structural"] = dataclasses.asdict(cfg) if cfg else None
            if cfg:
                row["layer_shapes"], row["history"] = res["layer_shapes"], res["history"][-5:]
                row["compensation"] = res["compensation"]
                if res["curve"]:
                    row["curve"], row["curve_seconds"] = res["curve"], round(res["curve_seconds"], 3)
            row["provenance"] = provenance(lm.device, command)
            _append_row(rows_path, row)
            del lm
            if progress:
                shown = "  ".join(f"{k} {v:.3f}" for k, v in row["ppl"].items())
                print(f"{cell.id}: {shown}", flush=True)


def _structural_ppl(grid: Grid, lm, data_dir, progress: bool, windows: bool = False):
    """A structural cell's perplexities, keyed ``dataset@seqlen`` (and the window counts, with ``windows``)."""
    from .pipeline import evaluate_all

    proto, ev = grid.protocol, grid.structural
    ppl, counts = {}, {}
    for L in ev.seqlens:
        for ds, r in evaluate_all(lm, list(proto.eval_datasets), ev.windows(L, proto), proto.batch_size,
                                  data_dir, progress, split=proto.eval_split, seqlen=L).items():
            ppl[f"{ds}@{L}"], counts[f"{ds}@{L}"] = r["ppl"], r["windows"]
    return (ppl, counts) if windows else ppl


# ------------------------------------------------------------------------------------------------ tables
def mean_std(values: list[float]) -> tuple[float, float | None]:
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    m, s = mean_std(values)
    return f"{m:.2f}" if s is None else f"{m:.2f} ± {s:.2f}"


def better(a: list[float], b: list[float]) -> bool:
    """``a`` beats ``b`` (lower perplexity) by more than both spreads: mean(b) - mean(a) > std(a) + std(b).
    With fewer than 3 values on either side there is no spread to compare with, so nothing is 'better'."""
    if len(a) < 3 or len(b) < 3:
        return False
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    return mb - ma > sa + sb


def verdict(mine: list[float], theirs: list[float]) -> str:
    """How ``mine`` compares with a reference's perplexities: better / worse only beyond both spreads (``better``)."""
    return ("better" if better(mine, theirs) else "worse" if better(theirs, mine)
            else "within spread" if min(len(mine), len(theirs)) >= 3 else "n<3")


def _header(grid: Grid, rows: list[dict]) -> list[str]:
    """Title, description, protocol, and where the rows came from (commands, devices, commits)."""
    lines = [f"# {grid.name}", "", grid.description, ""] if grid.description else [f"# {grid.name}", ""]
    proto = grid.protocol
    evaluation = ""
    if grid.structural:
        ev = grid.structural
        evaluation = (f"; structural evaluation: window lengths {', '.join(map(str, ev.seqlens))}, "
                      + (f"the first {ev.tokens} test tokens cut into windows of each length" if ev.tokens else
                         f"the first {proto.eval_windows} windows of each length" if proto.eval_windows
                         else "every window of each length")
                      + (f"; latency: median of {ev.latency_repeats} forwards of 1 x "
                         f"{ev.latency_seqlen or proto.seqlen} tokens after 2 warm-ups" if ev.latency_repeats else ""))
    # the device is the environment (the rows' devices are listed below); a structural grid's methods set nsamples
    shown = {k: v for k, v in proto.as_dict().items()
             if k != "device" and not (grid.structural and k == "nsamples") and not later_default(k, v)}
    if list(grid.models) != [proto.model]:   # the grid's models list replaces protocol.model
        shown = {("models" if k == "model" else k): (", ".join(grid.models) if k == "model" else v)
                 for k, v in shown.items()}
    lines += [f"Protocol: {', '.join(f'{k}={v}' for k, v in shown.items())}{evaluation}; "
              f"seeds {', '.join(map(str, grid.seeds))}; "
              f"{'mean ± std over seeds' if len(grid.seeds) > 1 else 'one seed'}.", ""]
    return lines + provenance_lines(rows, f"{grid.name}/rows.jsonl")


def provenance_lines(rows: list[dict], rows_name: str) -> list[str]:
    """Where rows came from: their commands, devices and commits, and the rows file (markdown lines)."""
    lines = []
    commands = sorted({r["provenance"]["command"] for r in rows if r.get("provenance", {}).get("command")})
    devices = sorted({r["provenance"]["device"] for r in rows if r.get("provenance", {}).get("device")})
    commits = sorted({(r["provenance"].get("commit") or "unknown")[:10] + ("+dirty" if r["provenance"].get("dirty")
                                                                          else "")
                      for r in rows if r.get("provenance")})
    if commands:
        lines += ["Command" + ("s" if len(commands) > 1 else "") + ": " + "; ".join(f"`{c}`" for c in commands), ""]
    if devices or commits:
        lines += [f"Device: {', '.join(devices) or 'unknown'}. Commit: {', '.join(commits) or 'unknown'}. "
                  f"Rows: `{rows_name}` ({len(rows)}).", ""]
    return lines


def _missing(grid: Grid, by_id: dict) -> list[str]:
    missing = [c.id for c in grid.cells() if c.id not in by_id]
    return [f"Not yet run: {len(missing)} cells (rerun the command to fill them in).", ""] if missing else []


def render(grid: Grid, rows: list[dict]) -> str:
    """The grid's markdown: one table per evaluation dataset, methods x patterns, mean ± std over seeds."""
    if grid.structural:
        return render_structural(grid, rows)
    by_id = {r["id"]: r for r in rows}
    lines = _header(grid, rows)
    proto = grid.protocol
    for model in grid.models:
        for ds in proto.eval_datasets:
            title = DATASET_TITLES.get(ds, ds)
            split = "validation" if ds == "c4" else proto.eval_split  # C4's evaluation text is its validation split
            lines += [f"**{model}, {title} {split} perplexity**", "",
                      "| method | " + " | ".join(_pattern_header(p) for p in grid.patterns) + " |",
                      "| --- |" + " ---: |" * len(grid.patterns)]
            for method in grid.methods:
                if not method.runs_on(model):
                    continue
                if method.name == "dense":
                    r = by_id.get(grid.cell(model, method, "-", grid.dense_seed).id)
                    value = f"{r['ppl'][ds]:.2f}" if r and ds in r["ppl"] else "-"
                    lines.append(f"| dense | {value} |" + " |" * (len(grid.patterns) - 1))
                    continue
                def mean_std(p, method=method, ds=ds):
                    vals = _seed_values(grid, by_id, model, method, p, ds)
                    return fmt(vals) + ("" if len(vals) in (0, len(grid.seeds)) else f" (n={len(vals)})")

                cells = _pattern_cells(grid, method, mean_std)
                lines.append(f"| {method.label} | " + " | ".join(cells) + " |")
            lines.append("")
        for ref in grid.reference:
            for ds in proto.eval_datasets:
                lines += _ratio_table(grid, model, by_id, ref, ds)
    formulas = [m for m in grid.methods if m.formula]
    if formulas:
        lines += [", ".join(f"`{m.name}` = `{m.formula}`" for m in formulas), ""]
    lines += _missing(grid, by_id)
    return "\n".join(lines).rstrip() + "\n"


def _pattern_cells(grid: Grid, method, text_of) -> list[str]:
    """One table cell per pattern of the grid: ``text_of(pattern)``, or n/a where the method does not apply."""
    return [text_of(p) if method.applies_to(p) else "n/a" for p in grid.patterns]


def _seed_values(grid: Grid, by_id: dict, model: str, method, pattern, ds: str) -> list[float]:
    """The perplexities on ``ds`` of the cells (model, method, pattern) that have run, one per seed."""
    cells = (grid.cell(model, method, pattern, s) for s in grid.seeds)
    return [by_id[c.id]["ppl"][ds] for c in cells if c.id in by_id and ds in by_id[c.id]["ppl"]]


def _ratio_table(grid: Grid, model: str, by_id: dict, reference: str, ds: str) -> list[str]:
    """Per method and pattern: mean ppl / the reference's mean ppl on ``model`` and dataset ``ds``, marked 'better' or
    'worse' only where one mean wins by more than both spreads (>= 3 seeds each), and whether the method's formula
    was searched on this model. Where the grid has the reference in several statistics modes, each method is
    compared with the reference of its own mode (one-shot with one-shot, sequential with sequential)."""
    refs = [m for m in grid.methods if m.name == reference]
    searched = dict(grid.searched_on)

    lines = [f"**{model}: ratio to {reference} ({DATASET_TITLES.get(ds, ds)}; below 1 = lower perplexity)**",
             "", "| method | " + " | ".join(_pattern_header(p) for p in grid.patterns)
             + (" | this model in its search |" if searched else " |"),
             "| --- |" + " ---: |" * len(grid.patterns) + (" --- |" if searched else "")]
    for method in grid.methods:
        if method.name in ("dense", reference) or not method.runs_on(model):
            continue
        ref = next((m for m in refs if m.mode == method.mode), refs[0])

        def ratio(p, method=method, ref=ref):
            mine = _seed_values(grid, by_id, model, method, p, ds)
            theirs = _seed_values(grid, by_id, model, ref, p, ds)
            if not mine or not theirs:
                return "-"
            return f"{statistics.fmean(mine) / statistics.fmean(theirs):.3f} ({verdict(mine, theirs)})"

        cells = _pattern_cells(grid, method, ratio)
        mark = ""
        if searched:
            mark = (" | yes" if model in searched.get(method.name, ()) else " | no" if method.name in searched
                    else " | -")
        lines.append(f"| {method.label} | " + " | ".join(cells) + mark + " |")
    return lines + [""]


def _structural_settings(methods: list[Method]) -> list[str]:
    """A table of what each structural method does (its StructuralConfig, presets and defaults applied)."""
    configs = [(m, m.structural_config(0.5, 0)) for m in methods]
    rec = any(cfg.reconstruct for _, cfg in configs)
    curve = any(cfg.curve_every for _, cfg in configs)
    lines = ["| method | init | scores of | preset | steps | lr | K | windows per step | policy windows | "
             "KV / MLP scores | statistics windows | widths |" + (" kept o/down columns |" if rec else "")
             + (" curve every |" if curve else ""),
             "| --- |" + " --- |" * (11 + rec + curve)]
    for m, cfg in configs:
        pg = cfg.init != "oneshot"
        scored = cfg.init in ("metric", "oneshot")
        pool = (cfg.nsamples or "steps x batch, each once") if pg or scored else "-"
        stats = (f"{cfg.init_nsamples or 'policy'} x {cfg.init_seqlen or cfg.calib_seqlen}"
                 if scored and (cfg.init_nsamples or cfg.init_seqlen) else "the policy's" if scored else "-")
        lines.append(" | ".join([
            f"| {m.name}", cfg.init, f"`{cfg.metric}`" if scored else "-", dict(m.settings).get("preset") or "-",
            str(cfg.steps) if pg else "-", f"{cfg.lr:g}" if pg else "-", str(cfg.samples) if pg else "-",
            f"{cfg.batch_size} x {cfg.calib_seqlen}" if pg else "-", str(pool),
            f"{cfg.attn_score} / {cfg.mlp_score}" if scored else "-", stats,
            "uniform" if cfg.uniform else "per layer"]
            + ([f"least squares on {cfg.init_nsamples or 32} x {cfg.init_seqlen or 1024}" if cfg.reconstruct
                else "as trained"] if rec else [])
            + ([f"{cfg.curve_every} steps" if cfg.curve_every else "-"] if curve else [])) + " |")
    return lines


def render_structural(grid: Grid, rows: list[dict]) -> str:
    """A structural grid's markdown: per model, dense then every method at every removed fraction, perplexity at
    each window length (mean ± std over seeds), parameters, removed fraction, latency, final PG loss, seconds."""
    by_id = {r["id"]: r for r in rows}
    lines = _header(grid, rows)
    proto, ev = grid.protocol, grid.structural
    keys = [(ds, L) for ds in proto.eval_datasets for L in ev.seqlens]
    ppl_head = " | ".join(f"{DATASET_TITLES.get(ds, ds)} ppl @{L}" for ds, L in keys)
    timed = ev.latency_repeats > 0
    head = (f"| removed (target) | method | init | {ppl_head} | params | removed | "
            + ("latency ms | " if timed else "") + "final PG loss | optimisation s |")

    def cells_of(found: list[dict], dense: bool) -> str:
        ppl = []
        for ds, L in keys:
            vals = [r["ppl"][f"{ds}@{L}"] for r in found if f"{ds}@{L}" in r["ppl"]]
            ppl.append(fmt(vals))
        n = "" if len(found) in (1, len(grid.seeds)) or dense else f" (n={len(found)})"
        ppl = [c + n if c != "-" else c for c in ppl]
        first = found[0]
        out = [*ppl, "-" if first["params"] is None else f"{first['params']:,}", f"{first['removed']:.3%}"]
        if timed:
            lat = [r["latency_ms"] for r in found if r.get("latency_ms") is not None]
            out.append(f"{statistics.fmean(lat):.0f}" if lat else "-")
        losses = [r["final_loss"] for r in found if r.get("final_loss") is not None]
        out.append(f"{statistics.fmean(losses):.3f}" if losses and not dense else "-")
        out.append("-" if dense else f"{statistics.fmean(r['prune_seconds'] for r in found):.0f}")
        return " | ".join(out) + " |"

    for model in grid.models:
        lines += [f"**{model}, structural pruning, {proto.eval_split} split**", "", head,
                  "| --- | --- | --- |" + " ---: |" * (len(keys) + 4 + timed)]
        for method in grid.methods:
            if method.name == "dense":
                r = by_id.get(grid.cell(model, method, "-", grid.dense_seed).id)
                if r:
                    lines.append(f"| 0 | dense | - | {cells_of([r], True)}")
        for p in grid.patterns:
            for method in (m for m in grid.methods if m.kind == "structural"):
                found = [by_id[c.id] for c in (grid.cell(model, method, p, s) for s in grid.seeds) if c.id in by_id]
                if found:
                    lines.append(f"| {float(p):.0%} | {method.label} | {method.mode} | {cells_of(found, False)}")
        lines.append("")
    lines += _curves(grid, by_id, keys)
    lines += ["Methods (policy gradient: lr cosine-decayed, moving-average baseline; one-shot: top structures by the "
              "scores, no policy gradient):", "",
              *_structural_settings([m for m in grid.methods if m.kind == "structural"]), ""]
    lines += _missing(grid, by_id)
    return "\n".join(lines).rstrip() + "\n"


def _curves(grid: Grid, by_id: dict, keys: list[tuple[str, int]]) -> list[str]:
    """Learning-curve tables of the rows that carry a ``curve`` (``curve_every``): perplexity of the policy's hard
    masks at each recorded step (mean ± std over seeds), then the first step at which each seed reaches the grid's
    ``curve_target``."""
    target = grid.structural.curve_target
    lines = []
    for model in grid.models:
        for p in grid.patterns:
            runs = []
            for method in (m for m in grid.methods if m.kind == "structural"):
                found = [by_id[c.id] for c in (grid.cell(model, method, p, s) for s in grid.seeds)
                         if c.id in by_id and by_id[c.id].get("curve")]
                if found:
                    runs.append((method, found))
            if not runs:
                continue
            for ds, L in keys:
                name = f"{ds}@{L}"
                steps = sorted({pt["step"] for _, found in runs for r in found for pt in r["curve"]})
                lines += [f"**{model}, {float(p):.0%} removed: learning curve, {DATASET_TITLES.get(ds, ds)} ppl @{L}** "
                          "(the policy's hard masks applied at each step, before any least-squares refit; mean ± std "
                          "over seeds)", "",
                          "| step | " + " | ".join(f"{m.label} (n={len(f)})" for m, f in runs) + " |",
                          "| ---: |" + " ---: |" * len(runs)]
                for step in steps:
                    cells = [fmt([pt["ppl"][name] for r in found for pt in r["curve"]
                                  if pt["step"] == step and name in pt["ppl"]]) for _, found in runs]
                    lines.append(f"| {step} | " + " | ".join(cells) + " |")
                lines.append("")
                if target is None:
                    continue
                lines += [f"Steps to reach perplexity {target:g} (first recorded step at or below it; '> N': not within "
                          "the N steps run):", "", "| method | " + " | ".join(f"seed {s}" for s in grid.seeds) + " |",
                          "| --- |" + " ---: |" * len(grid.seeds)]
                for method, found in runs:
                    by_seed = {r["seed"]: r for r in found}
                    cells = []
                    for s in grid.seeds:
                        if s not in by_seed:
                            cells.append("-")
                            continue
                        pts = by_seed[s]["curve"]
                        hit = next((pt["step"] for pt in pts if pt["ppl"].get(name, math.inf) <= target), None)
                        cells.append(str(hit) if hit is not None else f"> {pts[-1]['step']}")
                    lines.append(f"| {method.label} | " + " | ".join(cells) + " |")
                lines.append("")
    return lines


def _pattern_header(p: str) -> str:
    return p if ":" in p else f"{float(p):.0%} unstructured"


def write_table(grid: Grid, out: str | Path) -> Path:
    out = Path(out)
    md = out.with_suffix(".md") if out.suffix != ".md" else out
    atomic_write_text(md, render(grid, read_rows(Path(out) / "rows.jsonl")))
    return md



# ------------------------------------------------------------------------------------------------ measurements
# Timing benchmarks (benchmarks/*.py --out OUT) keep one row per measurement in OUT/rows.jsonl, the prose that goes
# with them in OUT/meta.json (whose "renderer" names the benchmarks/ script that renders it), and render OUT.md from
# both (``--render-only`` re-renders without measuring).

def measurement(row_id: str, fields: dict, device=None, command: str | None = None) -> dict:
    """One measurement as a row: its id, its fields, and provenance (commit, versions, device, command, time)."""
    from .provenance import provenance

    return {"id": row_id, **fields, "provenance": provenance(device, command)}


def record(out: str | Path, row: dict) -> None:
    """Append a measurement to ``out/rows.jsonl`` (synced: a killed run keeps every finished row)."""
    _append_row(Path(out) / "rows.jsonl", row)


def read_meta(out: str | Path) -> dict:
    path = Path(out) / "meta.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not JSON: restore it from git or delete it") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} must hold a JSON object")
    return meta


def write_meta(out: str | Path, meta: dict) -> None:
    atomic_write_text(Path(out) / "meta.json", json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


def write_measurements(out: str | Path, render) -> Path:
    """``out.md`` = ``render(rows, meta)`` of ``out/rows.jsonl`` and ``out/meta.json``, written atomically."""
    out = Path(out)
    md = out.with_suffix(".md")
    atomic_write_text(md, render(read_rows(out / "rows.jsonl"), read_meta(out)))
    return md


def measurement_args(parser, default_out: str) -> None:
    """The ``--out`` and ``--render-only`` options every timing benchmark takes."""
    parser.add_argument("--out", default=default_out, type=lambda v: v[:-3] if v.endswith(".md") else v,
                        help="rows in OUT/rows.jsonl (prose in OUT/meta.json), table in OUT.md")
    parser.add_argument("--render-only", action="store_true",
                        help="re-render OUT.md from OUT/rows.jsonl and OUT/meta.json; measure nothing")


def measurement_out(out: str | None, default_meta: dict) -> Path | None:
    """The ``--out`` folder of a timing benchmark (None without one), its ``meta.json`` written on first use."""
    if not out:
        return None
    if not read_meta(out):
        write_meta(out, default_meta)
    return Path(out)


def rendered_only(parser, args, render) -> bool:
    """With ``--render-only``: re-render OUT.md from its rows (OUT required) and print it; says whether it did."""
    if not args.render_only:
        return False
    if not args.out:
        parser.error("--render-only needs --out")
    print(write_measurements(args.out, render).read_text())
    return True


def _matches(row: dict, where: dict) -> bool:
    return all(row.get(k) == v for k, v in where.items())


def _filled(template: str, row: dict) -> str:
    """``template`` with each ``{field}`` or ``{field:spec}`` replaced by ``format(row[field], spec)`` (nothing else
    of str.format: no attribute or index lookups)."""
    import re

    def one(m):
        value = row.get(m.group(1))
        return "-" if value is None else format(value, m.group(2) or "")

    return re.sub(r"\{(\w+)(?::([^{}]*))?\}", one, template)


def render_document(rows: list[dict], meta: dict) -> str:
    """A measurement document: ``meta["blocks"]`` in order, each ``{"text": markdown}``, ``{"commands": WHERE}``
    (the commands and devices of the rows that match WHERE, a mapping of field -> value),
    ``{"table": {"where": WHERE, "columns": [[header, field, format spec], ...]}}`` (one line per matching row,
    each value through ``format(value, spec)``; a missing value is '-') or ``{"line": {"where": WHERE, "text":
    "... {field:spec} ...", "head": optional first line}}`` (that sentence for each matching row)."""
    lines = []
    for i, block in enumerate(meta.get("blocks") or []):
        if "line" in block:
            spec = block["line"]
            lines += ([spec["head"]] if spec.get("head") else []) + [
                _filled(spec["text"], r) for r in rows if _matches(r, spec.get("where", {}))] + [""]
        elif "text" in block:
            lines += [block["text"].rstrip("\n"), ""]
        elif "commands" in block:
            found = [r for r in rows if _matches(r, block["commands"])]
            commands = list(dict.fromkeys(r["provenance"]["command"] for r in found))
            devices = list(dict.fromkeys(r["provenance"]["device"] for r in found))
            lines += ["```", *commands, "```", "", f"Device: {', '.join(devices)}.", ""]
        elif "table" in block:
            spec = block["table"]
            cols = spec["columns"]
            lines += ["| " + " | ".join(c[0] for c in cols) + " |",
                      "| " + " | ".join("---" if c[2] == "s" else "---:" for c in cols) + " |"]
            for r in (r for r in rows if _matches(r, spec.get("where", {}))):
                lines.append("| " + " | ".join("-" if r.get(c[1]) is None else
                                                format(r[c[1]], c[2]).replace("|", "\\|")   # |W| stays in its cell
                                                for c in cols) + " |")
            lines.append("")
        else:
            raise UserError(f"meta.json block {i} is none of text, commands, table")
    return "\n".join(lines).rstrip() + "\n"
