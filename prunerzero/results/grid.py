"""The grid schema: a grid of models x methods x patterns x seeds, read and validated before anything slow runs.

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
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from .. import checks
from ..errors import UserError
from ..metric.known import resolve_metric
from ..specs import OWL_WITHOUT_OWL, check_grid_method
from ..pipeline import StructuralConfig, check_structural, structural_config
from ..protocol import Protocol
from ..prune.masks import parse_pattern
from ..prune.rules import ALLOCATIONS, UPDATES
from ..prune.run import SPARSEGPT
from ..prune.sparsegpt import PERCDAMP
from ..prune.structural import ATTN_SCORES, MLP_SCORES, STRUCTURAL_INITS

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
        settings = dict(self.settings)
        preset = settings.pop("preset", None)
        return structural_config(preset, sparsity=sparsity, seed=seed, init=self.mode, metric=self.formula,
                                 **settings)

    @property
    def config_key(self) -> str:
        """What the cell computes beyond its pattern and seed: a row of other settings is another cell."""
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
    for key, choices in (("update", UPDATES), ("allocation", ALLOCATIONS)):
        if key in raw:
            if raw[key] not in choices:
                raise UserError(f"{where}.{key} '{raw[key]}' is unknown: use {' or '.join(choices)}")
            out[key] = raw[key]
    for key, high, open_low in (("owl_lambda", 0.5, False), ("owl_m", None, True)):
        if key in raw:
            if out.get("allocation") != "owl":
                raise UserError(f"{where}: {OWL_WITHOUT_OWL}")
            out[key] = checks.real(raw[key], f"{where}.{key}", 0.0, high, open_low=open_low)
    if "permute" in raw:
        if not isinstance(raw["permute"], bool):
            raise UserError(f"{where}.permute must be true or false, got {raw['permute']!r}")
        out["permute"] = raw["permute"]
    name = str(raw["name"])
    if "percdamp" in raw:
        out["percdamp"] = checks.real(raw["percdamp"], f"{where}.percdamp", 0.0, None, open_low=True)
    if out and name == "dense":
        raise UserError(f"{where}: dense is not pruned: drop {', '.join(sorted(out))}")
    return out   # the combinations (with the grid's patterns) are checked by specs.check_grid_method


# minimum of each integer StructuralConfig field a grid may set (the others: >= 0)
_STRUCTURAL_MINIMA = {"steps": 1, "samples": 2, "batch_size": 1, "calib_seqlen": 2, "ma_window": 1}


def _structural_method(raw: dict, where: str) -> Method:
    """A ``kind: structural`` method: every key a StructuralConfig field (checked by its default's type)."""

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

    init = structural_config(settings.get("preset"), init=settings.pop("init", None)).init  # the preset's, else
    formula = raw.get("formula")                                                            # StructuralConfig's
    return _checked(Method(str(raw["name"]), None if formula is None else str(formula), init, "structural",
                           tuple(sorted(settings.items()))), where)


def _checked(method: Method, where: str) -> Method:
    """Refuse a bad mode, name or formula here, before any model is loaded."""
    if method.kind == "structural":
        if method.name == "dense":
            raise UserError(f"{where}: 'dense' is not a structural method: list it as plain 'dense'")
        cfg = method.structural_config(0.5, 0)   # an unknown preset is refused here
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
    for i, m in enumerate(methods):   # options that go together: the one module every command uses
        if m.kind == "prune" and m.name != "dense":
            check_grid_method(m.name, m.spec, patterns, m.update, m.allocation, m.permute,
                              m.percdamp if m.percdamp != PERCDAMP else None, f"methods[{i}]")
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

