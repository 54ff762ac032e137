"""Perplexity exactly as Wanda's ``eval_ppl_wikitext``, batched; optional zero-shot through lm-eval-harness.

The token stream is cut into non-overlapping windows of ``seqlen`` (remainder dropped). Each window's loss is the
mean next-token cross-entropy over its seqlen-1 predictions; Wanda multiplies it by seqlen and divides the sum by
n_windows * seqlen, so ppl = exp(mean over windows of the per-window mean loss). ``max_windows`` evaluates the
first N windows only (what the search does).
"""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .errors import UserError


@torch.no_grad()
def window_losses(model: nn.Module, windows: torch.Tensor, batch_size: int = 1, progress: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy of every window (fp32), shape [n_windows]."""
    dev = model.get_input_embeddings().weight.device
    out = []
    for i in tqdm(range(0, windows.shape[0], batch_size), desc="ppl", disable=not progress):
        ids = windows[i:i + batch_size].to(dev)
        logits = model(ids, use_cache=False).logits
        shift = logits[:, :-1, :].float()
        loss = F.cross_entropy(shift.reshape(-1, shift.shape[-1]), ids[:, 1:].reshape(-1).to(shift.device),
                               reduction="none").view(ids.shape[0], -1)
        out.append(loss.mean(dim=1).cpu())
        del logits, shift
    return torch.cat(out)


def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 1, progress: bool = False) -> float:
    losses = window_losses(model, windows, batch_size, progress)
    value = math.exp(losses.double().mean().item())
    return value if math.isfinite(value) else float("inf")


def ppl_on(lm, dataset: str = "wikitext2", split: str = "test", max_windows: int | None = None,
           batch_size: int = 1, data_dir=None, progress: bool = False, seqlen: int | None = None) -> dict:
    """Evaluate a LoadedModel on a dataset with windows of ``seqlen`` tokens (default ``lm.seqlen``); returns ppl,
    windows, tokens and seconds."""
    from .data import C4_VAL_WINDOWS, eval_tokens, eval_windows

    seqlen = seqlen or lm.seqlen
    if dataset == "c4":   # its stream holds C4_VAL_WINDOWS windows; BOS windows take one token less of it each
        max_windows = min(max_windows or C4_VAL_WINDOWS, C4_VAL_WINDOWS)
    tokens = eval_tokens(lm.tokenizer, dataset, split, data_dir, seqlen)
    windows = eval_windows(tokens, seqlen, max_windows, lm.window_bos)
    t0 = time.time()
    value = perplexity(lm.model, windows, batch_size, progress)
    return {"dataset": dataset, "split": split, "ppl": value, "windows": int(windows.shape[0]),
            "tokens": int(tokens.numel()), "seqlen": seqlen, "seconds": time.time() - t0}


_MANAGERS: dict = {}


def _task_manager(tasks: list[str], tasks_dir: str | None):
    """lm-eval's TaskManager for these tasks (memoised: the CLI checks before the model load, then evaluates).

    With ``tasks_dir``, the local YAMLs are indexed alone first (seconds); lm-eval's ~15,000 built-in tasks are
    indexed only when a task is not found there.
    """
    from lm_eval.tasks import TaskManager

    folder = os.path.abspath(tasks_dir) if tasks_dir else None
    key = (tuple(tasks), folder)
    if key not in _MANAGERS:
        manager = TaskManager(include_path=folder, include_defaults=False) if folder else None
        if manager is None or any(t not in manager.all_tasks for t in tasks):
            manager = TaskManager(include_path=folder)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            where = f" (nor in {tasks_dir})" if tasks_dir else ""
            raise UserError(f"unknown lm-eval task(s) {', '.join(unknown)}{where}: check the names "
                            "(python -m lm_eval ls tasks)")
        _MANAGERS[key] = manager
    return _MANAGERS[key]


def check_zero_shot(tasks: list[str], tasks_dir: str | None = None):
    """Fail early (before a model is loaded): lm-eval installed, known task names, a readable --tasks-dir."""
    from .checks import module_available

    module_available("lm_eval", "zero-shot evaluation (--tasks)", "pip install 'prunerzero[eval]'")
    if not tasks or not all(tasks):
        raise UserError("--tasks needs comma-separated task names, e.g. --tasks arc_easy,hellaswag")
    if tasks_dir is not None:
        from pathlib import Path

        folder = Path(tasks_dir)
        if not folder.is_dir():
            raise UserError(f"--tasks-dir {tasks_dir} is not a folder: pass the folder holding the task YAML files")
        if not any(folder.rglob("*.yaml")):
            raise UserError(f"--tasks-dir {tasks_dir} holds no .yaml task files")
    return _task_manager(tasks, tasks_dir)


@contextmanager
def _cwd(folder):
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def zero_shot(lm, tasks: list[str], batch_size: int = 1, tasks_dir: str | None = None) -> dict:
    """Zero-shot accuracy through lm-eval-harness (``pip install prunerzero[eval]``).

    ``tasks_dir`` adds local task YAMLs (lm-eval's ``include_path``); they are read with that folder as the
    working directory, so a YAML's ``dataset_path: json`` / ``data_files`` may name files next to it (no
    download: runs with ``HF_DATASETS_OFFLINE=1``). Returns the numeric results per task, e.g. ``acc,none``.
    """
    manager = check_zero_shot(tasks, tasks_dir)
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    folder = os.path.abspath(tasks_dir) if tasks_dir else None
    wrapped = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size, max_length=lm.seqlen)
    with _cwd(folder) if folder else nullcontext():
        res = lm_eval.simple_evaluate(model=wrapped, tasks=tasks, num_fewshot=0, task_manager=manager,
                                      log_samples=False, bootstrap_iters=0)
    return {task: {k: v for k, v in vals.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for task, vals in res["results"].items()}
