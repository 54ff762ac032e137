"""The one Protocol: everything that decides what a perplexity number means, with its defaults in one place.

The defaults are the published protocol (Wanda / SparseGPT / Pruner-Zero): 128 C4 calibration windows of 2048
tokens drawn with seed 0, gradients in fp32, every non-overlapping 2048-token window of WikiText-2 raw *test*.
The CLI, the experiment runner and the benchmarks build a ``Protocol`` from their inputs; a row records
``protocol.as_dict()`` next to its numbers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from . import checks
from .errors import UserError

EVAL_SPLITS = ("test", "validation")

GRAD_PRECISIONS = ("fp32", "model")   # fp32: half models are upcast for the backward passes; model: their dtype


@dataclass(frozen=True)
class Protocol:
    model: str = "smollm2"
    dtype: str = "auto"                   # auto = fp32 on CPU, fp16 on GPU
    device: str | None = None             # None = cuda if available, else cpu
    seqlen: int = 2048
    calibration: str = "c4"               # C4 train shard 00000, Wanda's sampler
    nsamples: int = 128
    seed: int = 0                         # calibration sampler seed
    grad_precision: str = "fp32"
    eval_datasets: tuple[str, ...] = ("wikitext2",)
    eval_split: str = "test"
    eval_windows: int | None = None       # None = every window
    batch_size: int = 1                   # windows per forward pass (numerics only)
    bos: str = checks.BOS_DEFAULT         # checks.BOS_MODES: stream = Wanda's windows; window = BOS opens each

    def __post_init__(self):
        from .data import EVAL_DATASETS

        if not isinstance(self.model, str) or not self.model.strip():
            raise UserError("protocol.model must name a model: smollm2, a .gguf file, a folder or a hub id")
        checks.dtype(self.dtype, "protocol.dtype")
        checks.integer(self.seqlen, "protocol.seqlen", 2)
        checks.integer(self.nsamples, "protocol.nsamples", 1)
        checks.integer(self.seed, "protocol.seed", 0)
        checks.integer(self.batch_size, "protocol.batch_size", 1)
        checks.optional_integer(self.eval_windows, "protocol.eval_windows", 1)
        if self.calibration != "c4":
            raise UserError(f"protocol.calibration '{self.calibration}' is unknown: use c4")
        if self.grad_precision not in GRAD_PRECISIONS:
            raise UserError(f"protocol.grad_precision '{self.grad_precision}': use {' or '.join(GRAD_PRECISIONS)}")
        checks.bos(self.bos, "protocol.bos")
        if self.eval_split not in EVAL_SPLITS:
            raise UserError(f"protocol.eval_split '{self.eval_split}': use {' or '.join(EVAL_SPLITS)}")
        datasets = tuple(self.eval_datasets)
        if not datasets or any(d not in EVAL_DATASETS for d in datasets):
            raise UserError(f"protocol.eval_datasets {list(datasets)}: use some of {', '.join(EVAL_DATASETS)}")
        object.__setattr__(self, "eval_datasets", datasets)

    @classmethod
    def from_dict(cls, raw: dict | None, where: str = "protocol") -> "Protocol":
        raw = dict(raw or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise UserError(f"unknown key '{where}.{unknown[0]}': allowed are {', '.join(sorted(names))}")
        if isinstance(raw.get("eval_datasets"), str):
            raw["eval_datasets"] = checks.name_list(raw["eval_datasets"], f"{where}.eval_datasets")
        if "eval_datasets" in raw:
            raw["eval_datasets"] = tuple(raw["eval_datasets"])
        return cls(**raw)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["eval_datasets"] = list(self.eval_datasets)
        return out

    def with_(self, **changes) -> "Protocol":
        return replace(self, **changes)
