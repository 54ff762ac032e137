"""The public Python API: the jobs of the command line as a few functions.

    import prunerzero as pz

    lm = pz.load_model("HuggingFaceTB/SmolLM2-135M", device="cuda")
    print(pz.evaluate_model(lm))                                      # dense perplexity
    pz.prune_model(lm, "mul(abs(W), sqrt(X))", pattern="2:4")         # a formula, a known metric, or "sparsegpt"
    print(pz.evaluate_model(lm))
    pz.save_model(lm, "pruned/")

    run = pz.search_formulas("quick", out="runs/demo")                # a search run folder
    print(pz.best_formulas(run))                                      # its best distinct formulas
    pick = pz.select_formula(run, seeds=(0, 1, 2))                    # re-scored as final runs prune
    pz.export_model("pruned/", "pruned-ct/")                          # compressed-tensors sparse format

Every function validates its arguments the way the CLI does (a bad value raises ``prunerzero.errors.UserError``
before any slow work) and calls the same library code, so a result here is the result the CLI prints. Defaults are
the evaluation protocol's (``prunerzero.protocol.Protocol``): 128 C4 calibration windows of 2048 tokens, seed 0,
sequential pruning, WikiText-2 test perplexity.

Models: a Hugging Face hub id, a ``save_pretrained`` folder or a ``.gguf`` file. The names ``smollm2``,
``gemma3-270m`` and ``qwen2.5-0.5b`` are small models packaged for offline tests and demos.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .errors import UserError
from .protocol import Protocol

if TYPE_CHECKING:  # imported lazily below: ``import prunerzero`` stays fast
    import pandas as pd

    from .calibration import Stats
    from .models import LoadedModel
    from .pipeline import PruneResult

_P = Protocol()
PathLike = str | os.PathLike

# Verbs with an object: ``prunerzero.prune``, ``.search``, ``.evaluate`` and ``.export`` are modules of the package,
# and importing a module sets the package attribute of that name, so a function there would be shadowed.
__all__ = ["load_model", "calibrate", "prune_model", "evaluate_model", "save_model", "search_formulas",
           "best_formulas", "select_formula", "prune_structure", "export_model"]


def load_model(model: str = _P.model, *, device: str | None = None, dtype: str = _P.dtype,
               device_map: str | None = None, seqlen: int | None = _P.seqlen, bos: str = _P.bos,
               cache_dir: PathLike | None = None) -> "LoadedModel":
    """Load a decoder-only causal LM and its tokenizer.

    Args:
        model: a hub id, a ``save_pretrained`` folder, a ``.gguf`` file (dequantised once and cached), or a packaged
            small model's name.
        device: ``cpu``, ``cuda``, ``cuda:1`` ... (default: cuda if torch sees one, else cpu).
        dtype: ``auto`` (fp32 on CPU, fp16 on GPU), ``fp32``, ``fp16`` or ``bf16``.
        device_map: ``auto`` spreads a large model over the GPUs of one machine (accelerate).
        seqlen: tokens per calibration and evaluation window (capped at the model's context).
        bos: ``stream`` (Wanda's windows, BOS only before the first) or ``window`` (BOS opens every window: Gemma).
        cache_dir: model and statistics cache (default: ``$PRUNERZERO_CACHE``, else ``~/.cache/prunerzero``).

    Returns:
        A ``LoadedModel`` (``.model``, ``.tokenizer``, ``.seqlen``, ``.device``). An encoder, a mixture of experts of
        an unsupported family, or a checkpoint that would load with missing weights is refused.
    """
    from .models import load_model

    return load_model(model, device=device, dtype=dtype, cache=cache_dir, device_map=device_map, seqlen=seqlen,
                      bos=bos)


def _calib(nsamples: int, seed: int, batch_size: int, data_dir: PathLike | None, cache_dir: PathLike | None,
           grad_storage: str = "fp32"):
    from . import checks
    from .pipeline import CalibConfig

    checks.integer(nsamples, "nsamples", 1)
    checks.integer(seed, "seed", 0)
    checks.integer(batch_size, "batch_size", 1)
    checks.grad_storage(grad_storage, "grad_storage")
    return CalibConfig(nsamples, seed, batch_size, None if data_dir is None else str(data_dir),
                       None if cache_dir is None else str(cache_dir), grad_storage=grad_storage)


def calibrate(lm: "LoadedModel", *, activations: bool = True, gradients: bool = True, hessian: bool = False,
              nsamples: int = _P.nsamples, seed: int = _P.seed, seqlen: int | None = None, batch_size: int = 1,
              data_dir: PathLike | None = None, cache_dir: PathLike | None = None, grad_storage: str = "fp32",
              progress: bool = False) -> "Stats":
    """The dense model's calibration statistics, computed once and cached as safetensors.

    Args:
        activations: ``X`` per prunable layer (Wanda's squared input norms).
        gradients: ``G`` and ``G1`` (one backward pass per calibration window, in fp32 for a half-precision model).
        hessian: ``Hd`` (and ``X``) from the layer Hessians.
        nsamples, seed, seqlen: C4 calibration windows, the sampler's seed, tokens per window (default: the
            model's ``seqlen``).
        grad_storage: ``"fp32"``, or ``"fp16"``: the gradient statistics cached and held as fp16 with a
            power-of-two scale per tensor (half the size; ``Stats.value`` gives fp32).

    Returns:
        ``Stats``: ``.tensors["layers.{i}.{name}"]`` maps each terminal name to its tensor.
    """
    from .pipeline import one_shot_stats

    cfg = _calib(nsamples, seed, batch_size, data_dir, cache_dir, grad_storage)
    return one_shot_stats(lm, cfg, need_x=activations, need_g=gradients, need_h=hessian, progress=progress,
                          seqlen=seqlen)


def prune_model(lm: "LoadedModel", metric: str = "wanda", *, sparsity: float | None = None,
                pattern: str | None = None, group: str | None = None, sequential: bool = True,
                update: str = "none", allocation: str = "uniform", owl_lambda: float | None = None, owl_m: float | None = None,
                permute: bool = False, percdamp: float | None = None, nsamples: int = _P.nsamples,
                seed: int = _P.seed, seqlen: int | None = None, batch_size: int = 1,
                data_dir: PathLike | None = None, cache_dir: PathLike | None = None, grad_storage: str = "fp32",
                progress: bool = False) -> "PruneResult":
    """Prune ``lm`` in place.

    Args:
        metric: a known metric (``magnitude``, ``wanda``, ``pruner-zero``, ``gblm``, ``ria``, a named found formula),
            ``sparsegpt``, a formula in prefix or infix form (``mul(abs(W), sqrt(X))``, ``|W| * X^0.5``), or a
            search run / selection folder (its selected formula).
        sparsity: fraction of each group's weights to prune, unstructured (default 0.5; not with ``pattern``).
        pattern: ``N:M`` such as ``2:4`` (default: unstructured).
        group: ``row`` or ``layer`` for unstructured sparsity (default: the metric's paper: layer for magnitude).
        sequential: Wanda's layer-by-layer scheme (the protocol's); False uses the dense model's statistics.
        update: ``none``, ``obs`` (SparseGPT's reconstruction after the metric's mask), ``lsq`` (exact least
            squares) or ``admm`` (the metric re-selects its mask while ADMM updates the weights).
        allocation: ``uniform`` or ``owl`` (OWL layer-wise sparsity, with ``owl_lambda`` and ``owl_m``, default
            0.08 and 5: OWL's).
        permute: N:M only: permute ``o_proj``/``down_proj`` input channels to keep more score.
        percdamp: Hessian damping of ``sparsegpt`` and of ``update`` (default 0.01).
        grad_storage: how gradient statistics are cached and held (``fp32`` or ``fp16``, see ``calibrate``).

    Returns:
        ``PruneResult``: ``.sparsity`` reached over the prunable weights, ``.seconds``, ``.pruned`` per layer.
    """
    from .pipeline import prune as run_prune
    from .specs import PruneSpec

    # every rule for options that go together, checked where the CLI, grids and spaces check them (specs.py)
    spec = PruneSpec.build(metric, sparsity, pattern, group, update, allocation, owl_lambda, owl_m, permute,
                           percdamp, sequential)
    return run_prune(lm, spec.metric, spec.pattern, _calib(nsamples, seed, batch_size, data_dir, cache_dir,
                                                                 grad_storage),
                     sequential=spec.sequential, progress=progress, seqlen=seqlen, update=spec.update,
                     allocation=spec.allocation, owl_lambda=spec.owl_lambda, owl_m=spec.owl_m, permute=spec.permute,
                     percdamp=spec.percdamp)


def evaluate_model(lm: "LoadedModel", datasets: Iterable[str] = _P.eval_datasets, *, windows: int | None = None,
                   split: str = "test", seqlen: int | None = None, batch_size: int = 1, tasks: Iterable[str] = (),
                   tasks_dir: PathLike | None = None, data_dir: PathLike | None = None,
                   progress: bool = False) -> dict:
    """Perplexity by Wanda's protocol (and optional lm-eval zero-shot accuracy).

    Args:
        datasets: ``wikitext2`` and/or ``c4``.
        windows: evaluate the first N windows of each dataset only (default: all of them).
        split: ``test`` or ``validation``.
        seqlen: window length (default: the model's ``seqlen``).
        tasks: lm-eval task names (needs ``prunerzero[eval]``); ``tasks_dir`` adds local task YAMLs.

    Returns:
        ``{dataset: {"ppl": ..., "windows": ...}}``, plus ``"zero_shot"`` when ``tasks`` are given.
    """
    from .pipeline import evaluate_all

    out = evaluate_all(lm, list(datasets), windows, batch_size, None if data_dir is None else str(data_dir),
                       progress, split=split, seqlen=seqlen)
    tasks = list(tasks)
    if tasks:
        from .evaluate import zero_shot

        out["zero_shot"] = zero_shot(lm, tasks, batch_size, None if tasks_dir is None else str(tasks_dir))
    return out


def save_model(lm: "LoadedModel", folder: PathLike) -> Path:
    """Write the (pruned) model and its tokenizer to a new folder that transformers loads; the folder appears whole or
    not at all, and an existing non-empty folder is refused. A model sliced by ``prune_structure`` is saved with its
    new shapes: a stock config when every layer has the same widths (``uniform=True``), else with the bundled
    modeling file (load it with ``trust_remote_code=True``)."""
    from .fsutil import require_empty
    from .models import save_model as save_pretrained_folder

    require_empty(str(folder), "save folder")
    if getattr(lm.model.config, "layer_shapes", None) is not None:
        from .prune.structural import save_structural

        save_structural(lm.model, lm.tokenizer, folder)
    else:
        save_pretrained_folder(lm, folder)
    return Path(folder)


def search_formulas(space: PathLike = "quick", out: PathLike | None = None, *, resume: PathLike | None = None,
                    model: str | None = None, generations: int | None = None, population: int | None = None,
                    seed: int | None = None, device: str | None = None, workers: int = 1,
                    max_minutes: float | None = None, fitness: dict | None = None, data_dir: PathLike | None = None,
                    cache_dir: PathLike | None = None, progress: bool = False) -> Path:
    """Run (or, with ``resume``, continue) a metric search; returns the run folder.

    Args:
        space: a packaged space's name (``quick``, ``cpu``, ``prunerzero`` ...) or a YAML file.
        out: a new run folder (default: ``runs/search-<space name>``).
        resume: continue the run in this folder with its recorded settings (``space`` and ``out`` are then ignored;
            ``generations`` may extend it).
        model: the model to prune for fitness (replaces the space's fitness models).
        generations, population, seed: override the space's ``gp`` settings.
        device: override ``fitness.device``.
        fitness: further ``fitness`` keys to override, e.g. ``{"seqlen": 256, "nsamples": 8, "eval_windows": 4}``.
        workers: evaluate on N devices through Ray (``prunerzero[ray]``).
        max_minutes: wall-time ceiling; the run stops cleanly at a generation boundary and can be resumed.
    """
    from . import checks
    from .data import require_data
    from .provenance import provenance
    from .search.engine import Search, load_run_space, run_state
    from .search.space import load_space, validate
    from .search.workers import InProcess, RayPool, build_evaluator

    started = time.time()
    if resume is not None:
        space_obj, meta = load_run_space(str(resume))
        if any(v is not None for v in (model, population, seed, device, fitness)):
            raise UserError("resume continues the run with its recorded settings: drop model, population, seed, "
                            "device and fitness (generations may extend it)")
        if generations is not None:
            space_obj.raw["gp"]["generations"] = generations
        folder = str(resume)
    else:
        space_obj = load_space(space)
        raw = space_obj.raw
        for key, value in (("generations", generations), ("population", population), ("seed", seed)):
            if value is not None:
                raw["gp"][key] = value
        for key, value in {**(fitness or {}), **({"device": device} if device is not None else {})}.items():
            if key not in raw["fitness"]:
                raise UserError(f"unknown fitness key '{key}': use one of {', '.join(raw['fitness'])}")
            raw["fitness"][key] = value
        if model is not None:
            raw["fitness"]["model"], raw["fitness"]["models"] = model, None
        space_obj = validate(raw, space_obj.path)
        folder = str(out or Path("runs") / f"search-{space_obj.name}")
        if run_state(folder) != "empty":
            raise UserError(f"{folder} already holds a search: pass resume={folder!r}, or choose a new out")
        meta = {"command": f"prunerzero.api.search_formulas({str(space)!r})", "space_file": str(space_obj.path),
                "provenance": provenance(space_obj.fitness.get("device"), "prunerzero.api.search_formulas")}
    fit = space_obj.fitness
    checks.device(fit.get("device"), "device (fitness.device)")
    checks.folder(None if cache_dir is None else str(cache_dir), "cache_dir")
    checks.folder(folder, "out")
    checks.integer(workers, "workers", 1)
    if workers > 1:
        checks.module_available("ray", "workers", "pip install 'prunerzero[ray]'")
    data = None if data_dir is None else str(data_dir)
    cache = None if cache_dir is None else str(cache_dir)
    require_data(data, (fit["eval_dataset"],), (fit["eval_split"],), calibration=True)
    terminals = space_obj.stat_terminals
    evaluate_many = (RayPool(fit, terminals, workers, data, cache) if workers > 1
                     else InProcess(build_evaluator(fit, terminals, data, cache, progress)))
    run = Search(space_obj, folder, evaluate_many, meta, progress=progress, on_resume=evaluate_many.preload)
    budget = None if max_minutes is None else 60 * max_minutes - (time.time() - started)
    if budget is not None and budget <= 0:
        raise UserError(f"the model and statistics took the whole max_minutes {max_minutes:g} budget: raise it "
                        "(the statistics are now cached)")
    run.run(resume=resume is not None, max_seconds=budget)
    return Path(folder)


def best_formulas(run: PathLike, top: int = 10) -> "pd.DataFrame":
    """A search run's best distinct formulas at full fidelity, as the equations table ``prunerzero show`` prints."""
    from .search.table import equations

    return equations(str(run), top)


def select_formula(run: PathLike | Iterable[PathLike], *, top: int = 6, seeds: Iterable[int] = (0,),
                   patterns: Iterable[str] = ("u", "2:4"), reference: str = "wanda", mode: str = "sequential",
                   out: PathLike | None = None, progress: bool = False, **options) -> dict | None:
    """Re-score a run's best distinct formulas as final runs prune them (sequential, at each pattern, on validation,
    over calibration ``seeds``) and choose one; the pick is written into ``RUN/selection.json`` (or ``out``), where
    ``prune_model(lm, RUN)`` finds it. Further ``options`` are fields of ``prunerzero.search.select.SelectOptions``
    (``model``, ``nsamples``, ``seqlen``, ``eval_windows``, ``device``, ``data_dir``, ``cache_dir`` ...).

    Returns:
        The chosen candidate (its ``formula`` and scores), or None when none was scored at every pattern.
    """
    from .search.select import SelectOptions
    from .search.select import select as run_select

    runs = (str(run),) if isinstance(run, (str, os.PathLike)) else tuple(str(r) for r in run)
    return run_select(SelectOptions(runs=runs, out=None if out is None else str(out), top=top,
                                    seeds=tuple(seeds), patterns=tuple(patterns), reference=reference, mode=mode,
                                    progress=progress, command="prunerzero.api.select_formula", **options))


def prune_structure(lm: "LoadedModel", *, sparsity: float | None = None, preset: str | None = "default",
                    metric: str | None = None, data_dir: PathLike | None = None, cache_dir: PathLike | None = None,
                    progress: bool = False, **options) -> dict:
    """Remove KV-head groups and MLP channels (forward-only policy gradient, Gao et al. 2025) and slice ``lm``
    in place.

    Args:
        sparsity: fraction of the prunable parameters to remove (default: the preset's, 0.2).
        preset: ``default`` (``official-pg-ls``), ``official-pg``, ``official-pg-ls`` or None for the plain settings.
        metric: the metric (name or formula) whose structure scores start the policy.
        options: further ``StructuralConfig`` fields (``steps``, ``lr``, ``init``, ``uniform``, ``reconstruct`` ...).

    Returns:
        masks, the learned probabilities, history, parameter counts before and after, and timings.
    """
    from .pipeline import DEFAULT_STRUCTURAL_PRESET, CalibConfig, check_structural
    from .pipeline import structural as run_structural
    from .pipeline import structural_config

    explicit = {k: v for k, v in {"sparsity": sparsity, "metric": metric, **options}.items() if v is not None}
    cfg = structural_config(DEFAULT_STRUCTURAL_PRESET if preset == "default" else preset, **explicit)
    check_structural(cfg)
    calib = CalibConfig(seed=cfg.seed, data_dir=None if data_dir is None else str(data_dir),
                        cache=None if cache_dir is None else str(cache_dir))
    return run_structural(lm, cfg, calib, progress=progress)


def export_model(source: PathLike, out: PathLike, *, format: str = "gguf", outtype: str | None = None,
                 compressor: str = "auto", cache_dir: PathLike | None = None) -> dict:
    """Export a (pruned) model, as ``prunerzero export`` does.

    Args:
        source: a folder written by ``save_model`` (pruned or structurally sliced), or for GGUF also a packaged
            name, a ``.gguf`` file or a hub id.
        out: the new ``.gguf`` file (``gguf``), or a new folder.
        format: ``gguf`` (one file llama.cpp, Ollama and LM Studio run; per-layer widths as arch ``deci``),
            ``compressed-tensors`` (sparse bitmask storage of a pruned folder) or ``dense`` (decompress that).
        outtype: GGUF weight type of the 2-D tensors: ``f32``, ``f16`` (default), ``bf16`` or ``q8_0``.
        compressor: compressed-tensors only: ``auto``, ``sparse-bitmask`` or ``sparse-24-bitmask``.

    Returns:
        What was written: sizes, the layout or GGUF architecture used.
    """
    from .export import check_export_args, decompress_folder, export_compressed, export_gguf

    check_export_args(str(source), str(out), format, compressor, outtype)
    if format == "gguf":
        return export_gguf(str(source), out, outtype or "f16", None if cache_dir is None else str(cache_dir))
    if format == "dense":
        return decompress_folder(source, out)
    return export_compressed(source, out, compressor)
