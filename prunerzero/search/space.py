"""Search spaces: YAML files naming the terminals, operations, GP settings and fitness settings.

Unknown keys, unknown operations and out-of-range values are refused with one line naming the fix.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path


from .. import checks
from . import genes
from ..errors import UserError
from ..metric.expr import parse
from ..metric.known import KNOWN_METRICS
from ..metric.ops import ANY_TERMINALS, EXPERT_TERMINALS, OPS, TERMINALS, canonical_op
from ..protocol import Protocol

_P = Protocol()

DEFAULTS = {
    "name": "unnamed",
    "description": "",
    "terminals": ["W", "X", "G"],
    "unary": ["abs", "neg", "sqr", "sqrt", "log", "exp", "tanh", "sigmoid", "mms", "zsn", "identity"],
    "binary": ["add", "sub", "mul", "div"],
    "init": {"min_depth": 2, "max_depth": 4},
    "limits": {"max_depth": 8, "max_size": 32},
    "gp": {"population": 30, "generations": 20, "tournament": 3, "cxpb": 0.7, "mutpb": 0.3, "elites": 2,
           "seed": 0, "mutation": {"uniform": 0.5, "node": 0.3, "shrink": 0.2, "insert": 0.0, "term": 0.0},
           # true: an individual whose fitness equals an earlier one's in the population (a clone, or a rewrite
           # with the same masks) loses every tournament and is no elite, so parents are distinct (toolbox.py)
           "distinct_parents": False,
           # a local search around the best full-fidelity candidates after each generation (engine.Search._local;
           # null: none); a mapping of LOCAL_DEFAULTS' keys
           "local": None},
    # the protocol's defaults (prunerzero/protocol.py) except what fitness needs of its own: validation, 8 windows
    "fitness": {"model": _P.model, "sparsity": 0.5, "pattern": "unstructured", "group": "row",
                "eval_dataset": "wikitext2", "eval_split": "validation", "eval_windows": 8, "seqlen": _P.seqlen,
                "nsamples": _P.nsamples, "calib_seed": _P.seed, "batch_size": _P.batch_size, "dtype": _P.dtype,
                "device": _P.device, "bos": _P.bos, "penalty": 100000.0, "grad_storage": "fp32",
                # multi-setting, multi-model, multi-fidelity fitness (see ``settings_of`` and search/engine.py)
                "settings": None, "models": None, "reference": "wanda", "combine": "mean", "fidelity": None,
                # what fitness prunes: weights (formulas over W, X, G, ...) or, for a mixture of experts, whole
                # experts (formulas over the expert terminals; fitness = perplexity after dropping the fractions
                # ``drop`` of every MoE layer's experts that score lowest: search/experts_fitness.py)
                "target": "weights", "drop": None},
    "seed_population": [],
    # a layer-wise sparsity allocation gene evolved with the formula (search/genes.py); null: uniform, not searched
    "allocation": None,
}


# gp.local: expand the best ``top`` not-yet-expanded full-fidelity candidates per generation; neighbourhood moves
# (toolbox.neighbours): ``leaf`` replaces a leaf by a term of depth <= ``depth``, ``wrap`` wraps a subtree in a unary
# operation; at most ``max`` neighbours per expanded candidate; ``binary: false`` leaves binary operations out of the
# depth-2 terms (a smaller neighbourhood)
LOCAL_MOVES = ("leaf", "wrap")
LOCAL_DEFAULTS = {"top": 1, "depth": 2, "moves": list(LOCAL_MOVES), "max": 200, "binary": True}


def _check_local(raw) -> dict | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise UserError("gp.local must be a mapping such as {top: 1, depth: 2, moves: [leaf, wrap], max: 200}, "
                        "or null")
    unknown = sorted(set(raw) - set(LOCAL_DEFAULTS))
    if unknown:
        raise UserError(f"unknown key 'gp.local.{unknown[0]}' in search space: allowed are {', '.join(LOCAL_DEFAULTS)}")
    cfg = {**LOCAL_DEFAULTS, **raw}
    checks.integer(cfg["top"], "gp.local.top", 1)
    checks.integer(cfg["max"], "gp.local.max", 1)
    if checks.integer(cfg["depth"], "gp.local.depth", 1) > 2:
        raise UserError("gp.local.depth must be 1 (terminals) or 2 (one operation over terminals)")
    moves = cfg["moves"]
    if not isinstance(moves, list) or not moves or any(m not in LOCAL_MOVES for m in moves) \
            or len(set(moves)) < len(moves):
        raise UserError("gp.local.moves must list leaf and/or wrap, each once")
    if not isinstance(cfg["binary"], bool):
        raise UserError("gp.local.binary must be true or false")
    return cfg


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
    def allocation(self) -> dict | None:
        """The validated ``allocation:`` section (a gene evolved with the formula), or None: uniform, not searched."""
        return self.raw.get("allocation")

    @property
    def ops(self) -> set[str]:
        return set(self.raw["unary"]) | set(self.raw["binary"])

    def allows(self, formula) -> bool:
        """Whether a formula tree uses only this space's terminals and operations (and no constants)."""
        if isinstance(formula, str) and genes.has_gene(formula):
            raise UserError(f"'{formula}' carries an allocation gene: pass the formula alone")
        node = parse(formula, ANY_TERMINALS) if isinstance(formula, str) else formula
        return all((n.op in self.raw["terminals"]) if n.is_terminal else (not n.is_const and n.op in self.ops)
                   for n in node.walk())

    @property
    def stat_terminals(self) -> list[str]:
        """The terminals whose statistics fitness needs: the formulas', and X when an OWL allocation gene reads it."""
        terms = list(self.raw["terminals"])
        alloc = self.allocation
        if alloc is not None and "owl" in alloc["kinds"] and "X" not in terms:
            terms.append("X")
        return terms

    def with_overrides(self, gp: dict | None = None, fitness: dict | None = None) -> "SearchSpace":
        """A new, validated space with these ``gp`` / ``fitness`` values replaced (a value None in ``fitness`` for
        ``models`` drops the list, as ``--model`` does); this space is left as it was."""
        raw = copy.deepcopy(self.raw)
        raw["gp"].update(gp or {})
        raw["fitness"].update(fitness or {})
        return validate(raw, self.path)

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(self.raw, sort_keys=True).encode()).hexdigest()[:12]


SETTING_KEYS = ("sparsity", "pattern", "group", "sequential", "update")
FIDELITY_KEYS = ("windows", "seeds", "keep", "audit")
COMBINE = ("mean", "worst", "margin")


def _check_pattern(setting: dict, given: dict, where: str) -> dict:
    """One setting {sparsity, pattern, group}: N:M fixes sparsity and group; a setting that says otherwise is
    refused, then they are recorded as used."""
    from ..prune.masks import parse_pattern
    from ..specs import UPDATES, check_procedure

    checks.fraction(setting["sparsity"], f"{where}sparsity")
    pattern = parse_pattern(setting["sparsity"], setting["pattern"], setting["group"])
    if pattern.is_nm:
        try:   # the rules every command shares (specs.py); a group of row is N:M's own
            check_procedure(None, pattern, setting.get("update", "none") if setting.get("update") in UPDATES else
                            "none", sparsity=float(given["sparsity"]) if "sparsity" in given else None,
                            group=given["group"] if given.get("group", "row") != "row" else None)
        except UserError as e:
            raise UserError(f"{where}{e}") from None
        setting["sparsity"], setting["group"] = pattern.sparsity, "row"
    return setting


def settings_of(fit: dict) -> list[dict]:
    """The fitness settings: ``fitness.settings`` (validated), else the single one of sparsity/pattern/group."""
    if fit.get("settings"):
        return fit["settings"]
    return [{"sparsity": fit["sparsity"], "pattern": fit["pattern"], "group": fit["group"], "sequential": False}]


def setting_slug(setting: dict) -> str:
    """A setting's name in part labels and logs: the pattern's slug, ``+obs`` / ``+lsq`` / ``+admm`` when the kept
    weights are updated."""
    from ..prune.masks import parse_pattern

    slug = parse_pattern(setting["sparsity"], setting["pattern"], setting["group"]).slug
    update = setting.get("update", "none")
    return slug + ("" if update == "none" else f"+{update}")


def _check_settings(fit: dict, given: dict) -> None:
    from ..prune.rules import UPDATES

    settings = fit["settings"]
    if settings is None:
        return
    if not isinstance(settings, list) or not settings:
        raise UserError("fitness.settings must be a list of settings, e.g. [{sparsity: 0.5}, {pattern: '2:4'}]")
    clash = [k for k in ("sparsity", "pattern", "group") if k in given and given[k] != DEFAULTS["fitness"][k]]
    if clash:
        raise UserError(f"fitness.{clash[0]} and fitness.settings are both given: list every setting under "
                        "fitness.settings and remove fitness." + clash[0])
    out, slugs = [], []
    for i, s in enumerate(settings):
        where = f"fitness.settings[{i}]."
        if not isinstance(s, dict):
            raise UserError(f"fitness.settings[{i}] must be a mapping such as {{sparsity: 0.5}} or {{pattern: '2:4'}}")
        for k in s:
            if k not in SETTING_KEYS:
                raise UserError(f"unknown key '{where}{k}' in search space: allowed are {', '.join(SETTING_KEYS)}")
        one = {"sparsity": 0.5, "pattern": "unstructured", "group": "row", "sequential": False, **s}
        if one["sequential"] not in (True, False):
            raise UserError(f"{where}sequential must be true or false")
        if one["sequential"]:
            raise UserError(f"{where}sequential: true is not implemented: fitness uses one-shot statistics of the "
                            "dense model (sequential statistics would cost a calibration forward per candidate and "
                            "setting); remove it")
        one = _check_pattern(one, s, where)
        update = one.pop("update", "none")
        if update not in UPDATES:
            raise UserError(f"{where}update must be none, obs (OBS reconstruction of the kept weights after the "
                            f"mask), lsq (their exact least-squares values) or admm (ADMM, the formula re-selecting "
                            f"the mask), got {update!r}")
        if update != "none":   # recorded only when used: earlier runs' settings stay as they were
            one["update"] = update
        slug = setting_slug(one)
        if slug in slugs:
            raise UserError(f"{where} repeats the setting {slug}: list each setting once")
        slugs.append(slug)
        out.append(one)
    fit["settings"] = out


def _check_bos(fit: dict) -> None:
    """``bos``: one mode for every fitness model (``checks.BOS_MODES``), or a mapping from some of the models to
    their mode (the others: stream), e.g. ``{gemma3-270m: window}`` beside a model scored as Wanda cuts windows."""
    bos = fit["bos"]
    if not isinstance(bos, dict):
        checks.bos(bos, "fitness.bos")
        return
    for model, mode in bos.items():
        if model not in fit["models"]:
            raise UserError(f"fitness.bos names '{model}', which is not among fitness.models "
                            f"({', '.join(fit['models'])}): name those models, or give one mode for all (--bos)")
        checks.bos(mode, f"fitness.bos.{model}")


def _check_models(fit: dict) -> None:
    models = fit["models"]
    if models is None:
        fit["models"] = [fit["model"]]
        return
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m.strip() for m in models):
        raise UserError("fitness.models must be a list of models, e.g. [smollm2, /path/to/other]")
    if len(set(models)) != len(models):
        raise UserError("fitness.models names a model twice: list each model once")
    fit["model"] = models[0]


def _check_seeds(fit: dict) -> None:
    """``calib_seed``: one calibration seed, or a list of them (each candidate is then scored with every seed's
    statistics, and its log ratio to the reference at the same seed is averaged over the seeds)."""
    seeds = fit["calib_seed"]
    if not isinstance(seeds, list):
        checks.integer(seeds, "fitness.calib_seed", 0)
        return
    if not seeds:
        raise UserError("fitness.calib_seed must be a seed or a list of seeds, e.g. 0 or [0, 1, 2]")
    for s in seeds:
        checks.integer(s, "fitness.calib_seed[]", 0)
    if len(set(seeds)) != len(seeds):
        raise UserError("fitness.calib_seed lists a seed twice: list each seed once")
    if len(seeds) == 1:
        fit["calib_seed"] = seeds[0]


def _check_fidelity(fit: dict) -> None:
    fid = fit["fidelity"]
    if fid is None:
        return
    if not isinstance(fid, dict):
        raise UserError("fitness.fidelity must be a mapping such as {windows: [2, 8, null], keep: 0.5}")
    for k in fid:
        if k not in FIDELITY_KEYS:
            raise UserError(f"unknown key 'fitness.fidelity.{k}' in search space: allowed are "
                            f"{', '.join(FIDELITY_KEYS)}")
    fid = {"keep": 0.5, "audit": 0.0, **fid}
    windows = fid.get("windows")
    if not isinstance(windows, list) or len(windows) < 2 or windows[-1] is not None:
        raise UserError("fitness.fidelity.windows must list window counts ending with null (all of "
                        "fitness.eval_windows), e.g. [2, 8, null]")
    last = 0
    for w in windows[:-1]:
        checks.integer(w, "fitness.fidelity.windows[]", 1)
        if w <= last:
            raise UserError("fitness.fidelity.windows must increase, e.g. [2, 8, null]")
        last = w
    if fit["eval_windows"] is not None and last >= fit["eval_windows"]:
        raise UserError(f"fitness.fidelity.windows {windows} must stay below fitness.eval_windows "
                        f"{fit['eval_windows']} before the final null")
    checks.real(fid["keep"], "fitness.fidelity.keep", 0.0, 1.0, open_low=True)
    checks.real(fid["audit"], "fitness.fidelity.audit", 0.0, 1.0)
    if fid.get("seeds") is not None:
        _check_fidelity_seeds(fid["seeds"], len(windows), fit["calib_seed"])
    fit["fidelity"] = fid


def _check_fidelity_seeds(seeds, levels: int, calib_seed) -> None:
    """``fitness.fidelity.seeds``: per fidelity level, how many of the calibration seeds score (the first n of
    ``calib_seed``), one entry per entry of ``windows``, never decreasing, ending with null (all of them)."""
    n = len(calib_seed) if isinstance(calib_seed, list) else 1
    if n < 2:
        raise UserError("fitness.fidelity.seeds needs several calibration seeds: give fitness.calib_seed a list, "
                        "e.g. [0, 1, 2], or drop fitness.fidelity.seeds")
    if not isinstance(seeds, list) or len(seeds) != levels or seeds[-1] is not None:
        raise UserError(f"fitness.fidelity.seeds must give a seed count per fidelity level ({levels}, as "
                        "fitness.fidelity.windows) ending with null (all seeds), e.g. [1, null]")
    last = 1
    for k in seeds[:-1]:
        checks.integer(k, "fitness.fidelity.seeds[]", 1)
        if k < last or k >= n:
            raise UserError(f"fitness.fidelity.seeds {seeds} must not decrease and must stay below the {n} "
                            "calibration seeds before the final null, e.g. [1, null]")
        last = k


def _check_fitness(fit: dict, given: dict) -> None:
    """Every fitness key, before any model is loaded (``given`` = the keys the YAML itself set)."""
    from ..data import EVAL_DATASETS

    if not isinstance(fit["model"], str) or not fit["model"].strip():
        raise UserError("fitness.model must name a model: smollm2, a .gguf file, a folder or a hub id")
    _check_pattern(fit, given, "fitness.")
    _check_settings(fit, given)
    _check_models(fit)
    if fit["combine"] not in COMBINE:
        raise UserError(f"fitness.combine '{fit['combine']}' is unknown: use mean, worst or margin")
    if fit["reference"] is not None and not isinstance(fit["reference"], str):
        raise UserError("fitness.reference must name a metric (wanda, magnitude, ...), a formula, or be null")
    if fit["eval_dataset"] not in EVAL_DATASETS:
        raise UserError(f"fitness.eval_dataset '{fit['eval_dataset']}' is unknown: use {', '.join(EVAL_DATASETS)}")
    if fit["eval_split"] == "test":
        raise UserError("fitness.eval_split 'test' would select formulas on the split results are reported on: "
                        "use validation")
    if fit["eval_split"] not in ("validation", "valid"):
        raise UserError(f"fitness.eval_split '{fit['eval_split']}' is unknown: use validation")
    if fit["eval_dataset"] == "c4" and fit["eval_split"] in ("validation", "valid"):
        raise UserError("fitness.eval_dataset c4 has one evaluation split, which results are reported on: "
                        "use wikitext2 (validation) for fitness")
    checks.optional_integer(fit["eval_windows"], "fitness.eval_windows", 1)
    checks.integer(fit["seqlen"], "fitness.seqlen", 2)
    checks.integer(fit["nsamples"], "fitness.nsamples", 1)
    checks.grad_storage(fit["grad_storage"], "fitness.grad_storage")
    _check_seeds(fit)
    if fit["combine"] == "margin" and (not isinstance(fit["calib_seed"], list) or fit["reference"] is None):
        raise UserError("fitness.combine margin compares spreads over calibration seeds with a reference: give "
                        "fitness.calib_seed a list of seeds, e.g. [0, 1, 2], and a fitness.reference")
    checks.integer(fit["batch_size"], "fitness.batch_size", 1)
    checks.dtype(fit["dtype"], "fitness.dtype")
    _check_bos(fit)
    if fit["device"] is not None and not isinstance(fit["device"], str):
        raise UserError(f"fitness.device must be a device name such as cpu or cuda, got {fit['device']!r}")
    checks.real(fit["penalty"], "fitness.penalty", 0.0, open_low=True)
    _check_fidelity(fit)


def reference_formula(fit: dict) -> str | None:
    """The formula text of ``fitness.reference`` (a known metric's name or a formula), None for null."""
    ref = fit.get("reference")
    if ref is None:
        return None
    return str(parse(KNOWN_METRICS[ref].formula if ref in KNOWN_METRICS else ref, ANY_TERMINALS))


EXPERT_DEFAULTS = {"terminals": list(EXPERT_TERMINALS), "reference": "reap", "drop": [0.25]}


def _check_experts_target(cfg: dict, raw: dict) -> None:
    """``fitness.target: experts``: the expert terminals by default, a REAP reference, drop fractions; the
    weight-pruning settings do not apply (refused when set, not ignored)."""
    fit, given = cfg["fitness"], (raw or {}).get("fitness") or {}
    if fit["target"] not in ("weights", "experts"):
        raise UserError(f"fitness.target '{fit['target']}' is unknown: use weights or experts")
    if fit["target"] == "weights":
        if fit["drop"] is not None:
            raise UserError("fitness.drop is the fraction of experts fitness drops: set fitness.target experts, or "
                            "remove it")
        del fit["target"], fit["drop"]  # a weight space's record (and fingerprint) stays what it was before them
        return
    if "terminals" not in (raw or {}):
        cfg["terminals"] = list(EXPERT_DEFAULTS["terminals"])
    for key in ("reference", "drop"):
        if key not in given:
            fit[key] = copy.deepcopy(EXPERT_DEFAULTS[key])
    drops = fit["drop"] if isinstance(fit["drop"], list) else [fit["drop"]]
    if not drops:
        raise UserError("fitness.drop must list at least one fraction of experts, e.g. [0.25, 0.5]")
    for d in drops:
        checks.real(d, "fitness.drop", 0.0, 1.0, open_low=True)
    fit["drop"] = drops
    for t in cfg["terminals"]:
        if t not in EXPERT_TERMINALS:
            raise UserError(f"terminal '{t}' is not an expert terminal (fitness.target experts): use "
                            f"{', '.join(EXPERT_TERMINALS)}")
    if fit["settings"] is not None:
        raise UserError("fitness.settings sets weight pruning, which fitness.target experts does not do: remove it")
    if isinstance(fit["models"], list) and len(fit["models"]) > 1:
        raise UserError("fitness.target experts scores on one model: give fitness.model, not a list of models")
    if raw.get("allocation") is not None:
        raise UserError("allocation evolves a weight-sparsity allocation: remove it with fitness.target experts")
    if isinstance(fit["calib_seed"], list):
        raise UserError("fitness.target experts scores with one calibration seed: give fitness.calib_seed one "
                        "number")
    if fit["combine"] == "margin":
        raise UserError("fitness.combine margin needs several calibration seeds: use mean or worst")


def validate(raw: dict, path: str | None = None) -> SearchSpace:
    cfg = _merge(DEFAULTS, raw or {}, "")
    _check_experts_target(cfg, raw or {})
    experts = cfg["fitness"].get("target") == "experts"
    for k in ("terminals", "unary", "binary", "seed_population"):
        if not isinstance(cfg[k], list) or not all(isinstance(x, str) for x in cfg[k]):
            raise UserError(f"'{k}' must be a list of names, e.g. [{', '.join(DEFAULTS['terminals'])}]")
    for k in ("name", "description"):
        if not isinstance(cfg[k], str):
            raise UserError(f"'{k}' must be a text")
    for t in cfg["terminals"]:
        if t not in TERMINALS and not experts:
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
    for where, d in (("init", ini), ("limits", lim)):
        for k, v in d.items():
            checks.integer(v, f"{where}.{k}", 1)
    if not (1 <= ini["min_depth"] <= ini["max_depth"] <= lim["max_depth"]):
        raise UserError("need 1 <= init.min_depth <= init.max_depth <= limits.max_depth")
    for k in ("population", "generations", "tournament"):
        checks.integer(gp[k], f"gp.{k}", 1)
    checks.integer(gp["seed"], "gp.seed", 0)
    if not (0 <= checks.integer(gp["elites"], "gp.elites", 0) < gp["population"]):
        raise UserError("gp.elites must be in [0, population)")
    for k in ("cxpb", "mutpb"):
        checks.real(gp[k], f"gp.{k}", 0.0, 1.0)
    if not isinstance(gp["distinct_parents"], bool):
        raise UserError("gp.distinct_parents must be true or false")
    for k, v in gp["mutation"].items():
        checks.real(v, f"gp.mutation.{k}", 0.0)
    if sum(gp["mutation"].values()) <= 0:
        raise UserError("gp.mutation weights must be >= 0 and not all 0")
    gp["local"] = _check_local(gp["local"])
    _check_fitness(cfg["fitness"], (raw or {}).get("fitness") or {})
    cfg["allocation"] = genes.validate_section(cfg["allocation"])
    if cfg["allocation"] is not None:
        from ..prune.masks import parse_pattern

        if all(parse_pattern(s["sparsity"], s["pattern"], s["group"]).is_nm for s in settings_of(cfg["fitness"])):
            from ..specs import ALLOCATION_NM

            raise UserError(f"allocation (the evolved gene): {ALLOCATION_NM}; add an unstructured fitness setting such as "
                            "{sparsity: 0.7} to fitness.settings, or remove allocation")
    space = SearchSpace(cfg, path)
    pool = genes.Genes(cfg["allocation"]) if cfg["allocation"] is not None else None
    ref = cfg["fitness"]["reference"]
    if ref is not None:
        try:
            node = parse(reference_formula(cfg["fitness"]), ANY_TERMINALS)
        except UserError:
            raise UserError(f"fitness.reference '{ref}' is neither a known metric ({', '.join(KNOWN_METRICS)}) "
                            "nor a formula: fix it, or set it to null") from None
        missing = sorted(node.terminals() - set(cfg["terminals"]))
        if missing:
            raise UserError(f"fitness.reference {ref} reads {', '.join(missing)}, which the space's terminals "
                            "lack (no statistics are computed for it): choose a reference such as magnitude")
    for s in cfg["seed_population"]:
        if genes.has_gene(s) and pool is None:
            raise UserError(f"seed '{s}' carries an allocation gene but the space has no allocation section: "
                            "add one, or drop ' @ ...' from the seed")
        text, slug = genes.split_candidate(s)
        node = parse(KNOWN_METRICS[text].formula if text in KNOWN_METRICS else text, ANY_TERMINALS)
        if not space.allows(node):
            raise UserError(f"seed '{s}' uses terminals or operations outside this space: remove it or widen the space")
        if pool is not None and not pool.allows(slug):
            raise UserError(f"seed '{s}': allocation {slug} is outside allocation.kinds / lam / m / slope: widen "
                            "them or change the seed")
        space.seeds.append(genes.join_candidate(str(node), slug))
    return space


PACKAGED = Path(__file__).resolve().parents[1] / "spaces"   # search_spaces/ in a checkout links here


def packaged_spaces() -> list[str]:
    return sorted(p.stem for p in PACKAGED.glob("*.yaml"))


def resolve_space(name: str | Path) -> Path:
    """A YAML path as given, else a packaged space by name (``quick``) or by its checkout path
    (``search_spaces/quick.yaml``), so the defaults work from any directory."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if (path.parent == Path(".") or path.parent.name == "search_spaces") and (PACKAGED / f"{stem}.yaml").is_file():
        return PACKAGED / f"{stem}.yaml"
    raise UserError(f"search space '{name}' not found: pass a YAML file or one of {', '.join(packaged_spaces())}")


def load_space(path: str | Path) -> SearchSpace:
    path = resolve_space(path)
    return validate(checks.yaml_mapping(path, "settings"), str(path))
