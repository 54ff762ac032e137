"""Shared fixtures: a tiny random LLaMA (grouped-query attention) built from a config, and the real SmolLM2."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def data_dir() -> Path:
    return Path(os.environ.get("PRUNERZERO_DATA", SHARED_DATA))


def untimed(rec: dict) -> dict:
    """A search log record without its timings (``seconds`` of the record, of its fidelity stages and of its key
    audit): what two runs of one search must agree on."""
    rec = {k: v for k, v in rec.items() if k != "seconds"}
    if "stages" in rec:
        rec["stages"] = [untimed(st) for st in rec["stages"]]
    if "audit" in rec:
        rec["audit"] = untimed(rec["audit"])
    return rec


def tiny_config(arch: str = "llama", layers: int = 2, vocab: int = 256):
    """A tiny random config of a family (hidden 64, 4 heads, 2 KV heads); sliding windows of 8 tokens, so a test
    with longer windows really exercises both attention types of Gemma 2/3."""
    import transformers

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    alternating = ["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (layers % 2)
    table = {
        "llama": (transformers.LlamaConfig, {}),
        "mistral": (transformers.MistralConfig, {"sliding_window": 8}),
        "qwen2": (transformers.Qwen2Config, {}),
        "qwen3": (transformers.Qwen3Config, {"head_dim": 16, **ids}),
        "gemma": (transformers.GemmaConfig, {"head_dim": 16}),
        "gemma2": (transformers.Gemma2Config, {"head_dim": 16, "sliding_window": 8, "layer_types": alternating,
                                               **ids}),
        "gemma3": (transformers.Gemma3TextConfig, {"head_dim": 16, "sliding_window": 8,
                                                   "layer_types": alternating, **ids}),
        "phi3": (transformers.Phi3Config, ids),
        "olmo2": (transformers.Olmo2Config, ids),
        "mixtral": (transformers.MixtralConfig, {"num_local_experts": 4, "num_experts_per_tok": 2}),
        "qwen3_moe": (transformers.Qwen3MoeConfig, {"num_experts": 4, "num_experts_per_tok": 2,
                                                    "moe_intermediate_size": 32, "head_dim": 16, **ids}),
    }
    cls, extra = table[arch]
    return cls(**common, **extra)


def make_tiny(arch: str = "llama", seed: int = 0, layers: int = 2, vocab: int = 256):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, layers, vocab), dtype=torch.float32)
    model.eval()
    model.config.use_cache = False
    return model



def tiny_with_stats(layers: int = 2):
    """A tiny random model, its one-shot X and G statistics (4 x 32 random tokens) and 2 x 32 evaluation tokens."""
    from prunerzero.calibration import activation_stats, gradient_stats

    model = make_tiny(layers=layers)
    g = torch.Generator().manual_seed(1)
    calib = torch.randint(0, 256, (4, 32), generator=g)
    evalw = torch.randint(0, 256, (2, 32), generator=g)
    stats = activation_stats(model, calib, progress=False).merged(gradient_stats(model, calib, progress=False))
    return model, stats, evalw

@pytest.fixture
def tiny():
    return make_tiny()


@pytest.fixture
def windows():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (6, 32), generator=g)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M (loaded once per session; the first load dequantises the GGUF and caches it)."""
    from prunerzero.models import load_model

    return load_model("smollm2", device="cpu", dtype="fp32")


@pytest.fixture(autouse=True)
def _data_env(monkeypatch):
    """Point every test (and notebook kernels started by tests) at the shared data, by absolute path."""
    monkeypatch.setenv("PRUNERZERO_DATA", str(data_dir().resolve()))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A save_pretrained folder: a random tiny LLaMA that speaks SmolLM2's tokenizer (runs the real data path)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from prunerzero.models import resolve_model_source

    tok = AutoTokenizer.from_pretrained(resolve_model_source("smollm2"))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    out = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
