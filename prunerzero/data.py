"""Text sources -> token windows, exactly as SparseGPT / Wanda / Pruner-Zero build them.

Evaluation (``eval_tokens``): WikiText-2 raw test (or validation) rows joined with ``"\\n\\n"``, tokenised once;
the caller cuts non-overlapping windows and drops the remainder. C4 validation: the first 1100 documents joined
with a space, cut to 256 windows.

Calibration (``calibration_windows``): ``nsamples`` windows of ``seqlen`` tokens; each from a random C4 train
document longer than ``seqlen`` tokens, at a random offset, drawn with Python's ``random`` seeded with ``seed``.

Files come from a data directory (``--data-dir`` or env ``PRUNERZERO_DATA``) laid out as::

    wikitext-2-raw/wiki.test.raw  wiki.valid.raw
    c4/c4-train.00000-of-01024.head1000.json  (or c4-train.00000-of-01024.json[.gz])
    c4/c4-validation.subset2000.json          (or c4-validation.00000-of-00008.json[.gz])

Without a data directory the Hugging Face hub is used through ``datasets`` (needs network).
"""
from __future__ import annotations

import gzip
import json
import os
import random
import weakref
from functools import lru_cache
from pathlib import Path

import torch

from .errors import UserError

WIKITEXT_FILES = {"test": "wiki.test.raw", "validation": "wiki.valid.raw", "valid": "wiki.valid.raw"}
C4_TRAIN_FILES = ("c4-train.00000-of-01024.head1000.json", "c4-train.00000-of-01024.json",
                  "c4-train.00000-of-01024.json.gz")
C4_VAL_FILES = ("c4-validation.subset2000.json", "c4-validation.00000-of-00008.json",
                "c4-validation.00000-of-00008.json.gz")
C4_VAL_DOCS = 1100
C4_VAL_WINDOWS = 256
EVAL_DATASETS = ("wikitext2", "c4")


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """``data_dir``, else env ``PRUNERZERO_DATA``, else None (hub). A named directory must exist."""
    value = data_dir or os.environ.get("PRUNERZERO_DATA")
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        raise UserError(f"data directory {path} is a file: pass --data-dir (or PRUNERZERO_DATA) pointing at the "
                        "folder holding wikitext-2-raw/ and c4/")
    if not path.is_dir():
        raise UserError(f"data directory {path} does not exist: pass --data-dir (or PRUNERZERO_DATA) "
                        "pointing at the folder holding wikitext-2-raw/ and c4/")
    return path


HUB_HOST = ("huggingface.co", 443)
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def require_data(data_dir=None, eval_sets: tuple[str, ...] = (), splits: tuple[str, ...] = ("test",),
                 calibration: bool = False) -> Path | None:
    """Fail in seconds, before a model is loaded, when the data a command needs is not there: the local files
    of a data directory, or (with none given) a reachable Hugging Face hub."""
    root = resolve_data_dir(data_dir)
    if root is None:
        off = [v for v in _OFFLINE_VARS if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]
        why = f"{off[0]}=1 is set" if off else ("the Hugging Face hub is unreachable" if not _hub_reachable()
                                               else "")
        if why:
            raise UserError(f"no data directory given and {why}: pass --data-dir or set PRUNERZERO_DATA to the "
                            "folder holding wikitext-2-raw/ and c4/")
        return None
    for ds in eval_sets:
        if ds == "wikitext2":
            for split in splits:
                _need_file(root, "wikitext-2-raw", (WIKITEXT_FILES[split],))
        elif ds == "c4":
            _need_file(root, "c4", C4_VAL_FILES)
    if calibration:
        _need_file(root, "c4", C4_TRAIN_FILES)
    return root


def _need_file(root: Path, sub: str, names) -> Path:
    for name in names:
        if (root / sub / name).is_file():
            return root / sub / name
    raise UserError(f"{root / sub} lacks {names[0]}: put the file there or point --data-dir elsewhere")


def _hub(fn, what: str):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - network, missing package, hub errors all mean the same to the user
        raise UserError(f"no data directory given and loading {what} from the Hugging Face hub failed "
                        f"({type(exc).__name__}): pass --data-dir or set PRUNERZERO_DATA") from None


def wikitext2_rows(split: str, data_dir=None) -> list[str]:
    """The rows of the Hugging Face ``wikitext-2-raw-v1`` split (built from the raw file when one is local)."""
    if split not in WIKITEXT_FILES:
        raise UserError(f"unknown WikiText-2 split '{split}': use test or validation")
    root = resolve_data_dir(data_dir)
    if root is None:
        def load():
            from datasets import load_dataset
            hub_split = "validation" if split == "valid" else split
            return list(load_dataset("wikitext", "wikitext-2-raw-v1", split=hub_split)["text"])
        return _hub(load, "WikiText-2")
    raw = _need_file(root, "wikitext-2-raw", (WIKITEXT_FILES[split],)).read_text(encoding="utf-8")
    return [line + "\n" if line.strip() else "" for line in raw.split("\n")[:-1]]


def _read_jsonl(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def c4_documents(split: str, data_dir=None) -> list[str]:
    """C4 ``en`` documents: ``train`` from shard 00000 (calibration), ``validation`` (evaluation)."""
    root = resolve_data_dir(data_dir)
    files = {"train": ("en/c4-train.00000-of-01024.json.gz", C4_TRAIN_FILES),
             "validation": ("en/c4-validation.00000-of-00008.json.gz", C4_VAL_FILES)}
    if split not in files:
        raise UserError(f"unknown C4 split '{split}': use train or validation")
    hub_file, local = files[split]
    if root is None:
        def load():
            from datasets import load_dataset
            return list(load_dataset("allenai/c4", data_files={split: hub_file}, split=split)["text"])
        return _hub(load, "C4")
    return _read_jsonl(_need_file(root, "c4", local))


def _tokenize(tokenizer, text: str) -> torch.Tensor:
    return tokenizer(text, return_tensors="pt").input_ids[0]


@lru_cache(maxsize=8)
def _eval_tokens_cached(tokenizer, dataset: str, split: str, data_dir: str | None, seqlen: int) -> torch.Tensor:
    if dataset == "wikitext2":
        return _tokenize(tokenizer, "\n\n".join(wikitext2_rows(split, data_dir)))
    if dataset == "c4":
        docs = c4_documents("validation", data_dir)[:C4_VAL_DOCS]
        return _tokenize(tokenizer, " ".join(docs))[: C4_VAL_WINDOWS * seqlen]
    raise UserError(f"unknown evaluation dataset '{dataset}': use one of {', '.join(EVAL_DATASETS)}")


def eval_tokens(tokenizer, dataset: str = "wikitext2", split: str = "test", data_dir=None,
                seqlen: int = 2048) -> torch.Tensor:
    """The 1-D token stream an evaluation is cut from (cached per tokenizer/dataset/split)."""
    root = resolve_data_dir(data_dir)
    return _eval_tokens_cached(tokenizer, dataset, split, str(root) if root else None, seqlen)


def _without_bos(ids: torch.Tensor, bos: int) -> torch.Tensor:
    return ids[1:] if ids.numel() and int(ids[0]) == bos else ids


def _with_bos(windows: torch.Tensor, bos: int) -> torch.Tensor:
    return torch.cat([torch.full((windows.shape[0], 1), bos, dtype=windows.dtype), windows], dim=1)


def eval_windows(tokens: torch.Tensor, seqlen: int, max_windows: int | None = None,
                 bos: int | None = None) -> torch.Tensor:
    """Non-overlapping windows [n, seqlen] of a token stream; the remainder is dropped.

    ``bos`` (protocol ``bos: window``): every window is that token followed by the next seqlen - 1 tokens of the
    stream (a BOS the tokenizer put at the stream's start is dropped first), so each is scored as a sequence the
    model can open."""
    if bos is not None:
        tokens = _without_bos(tokens, bos)
    step = seqlen - (bos is not None)
    n = tokens.numel() // step
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise UserError(f"the evaluation text has fewer than seqlen={seqlen} tokens: lower --seqlen")
    windows = tokens[: n * step].view(n, step)
    return windows if bos is None else _with_bos(windows, bos)


_WINDOWS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> {args: windows}


def calibration_windows(tokenizer, nsamples: int = 128, seqlen: int = 2048, seed: int = 0, data_dir=None,
                        source: str = "c4", bos: int | None = None) -> torch.Tensor:
    """Wanda/SparseGPT's C4 sampler: [nsamples, seqlen] token windows, deterministic for a seed.

    ``bos`` (protocol ``bos: window``): each window is that token followed by seqlen - 1 tokens sampled the same
    way from documents without their own leading BOS.
    Remembered per tokenizer for the process (a copy is returned), keyed by the arguments and the data files'
    names and sizes, so the statistics cache's content hash does not re-tokenise C4 on every call."""
    key = (nsamples, seqlen, seed, data_fingerprint(data_dir), source, bos)
    try:
        memo = _WINDOWS.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: no memo
        memo = {}
    if key not in memo:
        if len(memo) >= 8:
            memo.pop(next(iter(memo)))
        memo[key] = _sample_windows(tokenizer, nsamples, seqlen, seed, data_dir, source, bos)
    return memo[key].clone()


def _sample_windows(tokenizer, nsamples: int, seqlen: int, seed: int, data_dir, source: str,
                    bos: int | None = None) -> torch.Tensor:
    if source != "c4":
        raise UserError(f"unknown calibration source '{source}': use c4")
    if nsamples < 1 or seqlen < 2:
        raise UserError("calibration needs nsamples >= 1 and seqlen >= 2")
    docs = c4_documents("train", data_dir)
    rng = random.Random(seed)  # same stream as random.seed(seed) + random.randint
    lengths: dict[int, torch.Tensor] = {}
    span = seqlen - (bos is not None)  # stream tokens per window
    if not any(len(d) > span for d in docs):  # a token is at least one character
        raise UserError(f"no C4 document is longer than seqlen={seqlen} tokens: lower --seqlen")
    out = []
    for _ in range(nsamples):
        while True:
            i = rng.randint(0, len(docs) - 1)
            if i not in lengths:
                ids = _tokenize(tokenizer, docs[i])
                lengths[i] = ids if bos is None else _without_bos(ids, bos)
            ids = lengths[i]
            if ids.numel() > span:
                break
        start = rng.randint(0, ids.numel() - span - 1)
        out.append(ids[start:start + span])
    windows = torch.stack(out)
    return windows if bos is None else _with_bos(windows, bos)


def data_fingerprint(data_dir=None) -> str:
    """Identity of the data source for cache keys: file names and sizes, or 'hub'."""
    root = resolve_data_dir(data_dir)
    if root is None:
        return "hub"
    parts = []
    for sub in ("c4", "wikitext-2-raw"):
        d = root / sub
        if d.is_dir():
            parts += [f"{p.name}:{p.stat().st_size}" for p in sorted(d.iterdir()) if p.is_file()]
    return ";".join(parts)
