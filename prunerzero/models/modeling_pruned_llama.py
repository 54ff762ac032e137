"""A LLaMA whose decoder layers have their own widths (written next to a structurally pruned model by
prunerzero; load it with ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``).

``config.layer_shapes[i]`` gives layer i's num_attention_heads, num_key_value_heads and intermediate_size. The
standard LLaMA modules are built, then each layer's Linear layers are resized before the weights are loaded.
This file depends on transformers only. A model whose layers all have the same width does not need it: prunerzero
saves that as a stock LlamaConfig (``prunerzero structural --uniform``).
"""
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM


class PrunedLlamaConfig(LlamaConfig):
    model_type = "pruned_llama"

    def __init__(self, layer_shapes=None, **kwargs):
        self.layer_shapes = layer_shapes or []
        super().__init__(**kwargs)


def _linear(n_in, n_out, like):
    return nn.Linear(n_in, n_out, bias=like.bias is not None, dtype=like.weight.dtype, device=like.weight.device)


class PrunedLlamaForCausalLM(LlamaForCausalLM):
    config_class = PrunedLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        hidden = config.hidden_size
        for layer, shape in zip(self.model.layers, config.layer_shapes):
            attn, mlp = layer.self_attn, layer.mlp
            q, kv, inter = shape["num_attention_heads"], shape["num_key_value_heads"], shape["intermediate_size"]
            attn.q_proj = _linear(hidden, q * head_dim, attn.q_proj)
            attn.k_proj = _linear(hidden, kv * head_dim, attn.k_proj)
            attn.v_proj = _linear(hidden, kv * head_dim, attn.v_proj)
            attn.o_proj = _linear(q * head_dim, hidden, attn.o_proj)
            mlp.gate_proj = _linear(hidden, inter, mlp.gate_proj)
            mlp.up_proj = _linear(hidden, inter, mlp.up_proj)
            mlp.down_proj = _linear(inter, hidden, mlp.down_proj)
        self.post_init()
