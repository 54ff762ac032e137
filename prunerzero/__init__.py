"""prunerzero: discover pruning metrics for LLMs with genetic programming.

The public API (``prunerzero.api``) is re-exported here and imported on first use, so ``import prunerzero`` stays
fast (no torch, no transformers until a function is called)::

    import prunerzero as pz
    lm = pz.load_model("HuggingFaceTB/SmolLM2-135M")
    pz.prune_model(lm, "mul(abs(W), sqrt(X))", pattern="2:4")
    print(pz.evaluate_model(lm))
"""
from __future__ import annotations

__version__ = "0.2.0"

_API = ("load_model", "calibrate", "prune_model", "evaluate_model", "save_model", "search_formulas", "best_formulas",
        "select_formula", "prune_structure", "export_model")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'prunerzero' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
