"""What a model of a given size costs in memory and disk, computed from the code's own tensor shapes and dtypes.

The model is built on PyTorch's ``meta`` device (shapes, no storage) from its published config, and the prunable
Linears are the ones ``models.all_prunable`` finds, so the numbers follow what prunerzero actually allocates:

* activation statistics X (``calibration.activations``): one fp32 value per input feature of each prunable Linear;
* gradient statistics (``calibration.gradients``): two fp32 tensors, G1 and G2, of each prunable weight's shape, held
  as accumulators during the gradient pass and written to one safetensors file of the statistics cache, as fp32 or
  (``--grad-storage fp16``) as fp16 with one scale per tensor;
* a search's fitness holds only the statistics its terminals read on the accelerator (``Stats.only``): G2 alone, one
  tensor per prunable weight, for a space over G (G1 only in a space that names it);
* the gradient pass: the model in fp32 (a half model is cast up when it fits, else kept in its dtype), the two
  accumulators on the GPU or, when they do not fit there, in CPU memory (``gradient_plan``), and one weight's
  gradient at a time (freed by its hook); the activations one window's backward keeps are not counted (they grow
  with --seqlen);
* Hessians (SparseGPT, ``--update``, the Hd terminal): an fp32 ``in x in`` matrix per prunable Linear, one decoder
  block at a time.

    python -m prunerzero.sizing            # the markdown table of docs/guides/big-models.md
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

GB = 1e9

# Published configs (config.json of each hub model), enough to rebuild the module shapes.
MODELS = {
    "SmolLM2-135M": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                   tie_word_embeddings=True)),
    "Qwen2.5-0.5B": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                   tie_word_embeddings=True)),
    "Llama-2-7B": ("llama", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                 num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                 tie_word_embeddings=False)),
    "Llama-2-70B": ("llama", dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                  num_attention_heads=64, num_key_value_heads=8, vocab_size=32000,
                                  tie_word_embeddings=False)),
}


@dataclass(frozen=True)
class Sizing:
    name: str
    params: int                 # every parameter
    prunable: int               # weights of the prunable Linears
    x_stats_bytes: int          # X: fp32 per input feature of each prunable Linear
    g_stats_bytes: int          # G1 + G2: fp32, each of the prunable weights' shapes
    g_search_bytes: int         # G2 alone: what a search over G holds with the model during fitness
    grad_pass_bytes: int        # fp32 model + G1/G2 accumulators + the largest single weight's gradient
    grad_pass_gpu_bytes: int    # the same with the accumulators in CPU memory: what stays on the GPU
    hessian_block_bytes: int    # fp32 in x in per prunable Linear of the largest block

    def weights_bytes(self, bytes_per_param: int) -> int:
        return self.params * bytes_per_param


def meta_model(family: str, config: dict) -> torch.nn.Module:
    """The model's modules on the meta device: real shapes, no memory."""
    import transformers

    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[family]
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(cls(**config))


def sizing(name: str, model: torch.nn.Module) -> Sizing:
    from .models import all_prunable, decoder_layers, prunable_linears

    linears = all_prunable(model)
    params = sum(p.numel() for p in model.parameters())
    prunable = sum(lin.weight.numel() for lin in linears.values())
    x = sum(lin.weight.shape[1] for lin in linears.values()) * 4
    g = 2 * prunable * 4
    largest = max(lin.weight.numel() for lin in linears.values())
    grad_pass = params * 4 + g + largest * 4
    grad_pass_gpu = params * 4 + largest * 4
    hessian = max(sum(lin.weight.shape[1] ** 2 * 4 for lin in prunable_linears(block).values())
                  for block in decoder_layers(model))
    return Sizing(name, params, prunable, x, g, prunable * 4, grad_pass, grad_pass_gpu, hessian)


def table(models: dict = MODELS) -> str:
    """Markdown: one row per model."""
    rows = ["| model | parameters | prunable | weights fp16 / fp32 | X statistics | gradient statistics file "
            "(G1 + G2) fp32 / fp16 | G held by a search (G2) fp32 / fp16 | gradient pass (fp32 model + G1/G2) | "
            "the same, G1/G2 in CPU memory | Hessians of one block |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, (family, config) in models.items():
        s = sizing(name, meta_model(family, config))
        rows.append(f"| {name} | {s.params / 1e9:.3f} B | {s.prunable / 1e9:.3f} B | "
                    f"{_gb(s.weights_bytes(2))} / {_gb(s.weights_bytes(4))} | {_gb(s.x_stats_bytes)} | "
                    f"{_gb(s.g_stats_bytes)} / {_gb(s.g_stats_bytes // 2)} | {_gb(s.g_search_bytes)} / "
                    f"{_gb(s.g_search_bytes // 2)} | {_gb(s.grad_pass_bytes)} | {_gb(s.grad_pass_gpu_bytes)} | "
                    f"{_gb(s.hessian_block_bytes)} |")
    return "\n".join(rows) + "\n"


def _gb(n: int) -> str:
    if n < 1e6:
        return f"{n / 1e3:.0f} kB"
    if n < 1e9:
        return f"{n / 1e6:.0f} MB"
    return f"{n / GB:.1f} GB"


if __name__ == "__main__":
    sys.stdout.write(table())
