"""Models: built-in names, loading, GGUF files, decoder-block discovery and family adapters.

``builtins``  small models packaged on PyPI for offline tests and demos (real users pass hub ids or folders)
``loading``   load any decoder-only causal LM; refuse what cannot be pruned, from its config, in seconds
``gguf``      GGUF headers and the dequantise-once cache of a GGUF model
``blocks``    decoder blocks, their prunable Linears, structural roles, fingerprints
``families``  what a family needs beyond the generic discovery (structural roles, BOS)
``moe``       mixtures of experts: the adapter table of fused expert parameters, one prunable view per expert
"""
from .blocks import (all_prunable, block_device, check_architecture, decoder_layers, model_fingerprint,
                     prunable_linears, role, set_role, structural_roles)
from .builtins import BUILTIN_MODELS, cache_dir, find_builtin_gguf
from .families import (ATTN_PROJ, FAMILIES, LLAMA_ATTN, LLAMA_MLP, MLP_PROJ, ROUTERS, Family,
                       family)
from .gguf import gguf_architecture, read_gguf_metadata
from .loading import (DEFAULT_SEQLEN, LoadedModel, check_config, default_device, load_model, resolve_dtype,
                      resolve_model_source, save_model, window_bos)

__all__ = [
    "ATTN_PROJ", "BUILTIN_MODELS", "DEFAULT_SEQLEN", "FAMILIES", "Family", "LLAMA_ATTN", "LLAMA_MLP", "LoadedModel",
    "MLP_PROJ", "ROUTERS", "all_prunable", "block_device", "cache_dir", "check_architecture",
    "check_config", "decoder_layers", "default_device", "family", "find_builtin_gguf", "gguf_architecture",
    "load_model", "model_fingerprint", "prunable_linears", "read_gguf_metadata", "resolve_dtype",
    "resolve_model_source", "role", "save_model", "set_role", "structural_roles", "window_bos",
]
