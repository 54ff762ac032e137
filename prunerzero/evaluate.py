"""Perplexity exactly as Wanda's ``eval_ppl_wikitext``, batched; optional zero-shot through lm-eval-harness.

The token stream is cut into non-overlapping windows of ``seqlen`` (remainder dropped). Each window's loss is the
mean next-token cross-entropy over its seqlen-1 predictions; Wanda multiplies it by seqlen and divides the sum by
n_windows * seqlen, so ppl = exp(mean over windows of the per-window mean loss). ``max_windows`` evaluates the
first N windows only (what the search does).
"""
from __future__ import annotations

import math
import time

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
    from .data import eval_tokens, eval_windows

    seqlen = seqlen or lm.seqlen
    tokens = eval_tokens(lm.tokenizer, dataset, split, data_dir, seqlen)
    windows = eval_windows(tokens, seqlen, max_windows)
    t0 = time.time()
    value = perplexity(lm.model, windows, batch_size, progress)
    return {"dataset": dataset, "split": split, "ppl": value, "windows": int(windows.shape[0]),
            "tokens": int(tokens.numel()), "seqlen": seqlen, "seconds": time.time() - t0}


def zero_shot(lm, tasks: list[str], batch_size: int = 1) -> dict:
    """Zero-shot accuracy through lm-eval-harness (``pip install prunerzero[eval]``; needs its datasets)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise UserError("zero-shot evaluation needs lm-eval: pip install 'prunerzero[eval]'") from None
    wrapped = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size)
    res = lm_eval.simple_evaluate(model=wrapped, tasks=tasks, num_fewshot=0)
    return {task: {k: v for k, v in vals.items() if isinstance(v, (int, float))}
            for task, vals in res["results"].items()}
