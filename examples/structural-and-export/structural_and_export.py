"""A smaller model that runs faster: remove KV-head groups and MLP channels with the forward-only policy gradient,
slice the model, time it, save it as a stock transformers folder, and export it as one GGUF file for llama.cpp.

    python examples/structural-and-export/structural_and_export.py                 # the demo: SmolLM2, 20 steps, CPU
    python examples/structural-and-export/structural_and_export.py --model meta-llama/Llama-3.2-1B --device cuda --full
"""
from __future__ import annotations

import argparse
import time

import torch

import prunerzero as pz


def forward_seconds(model, tokens: int = 256, repeats: int = 5) -> float:
    """Median time of one forward pass over ``tokens`` tokens, after one warm-up."""
    ids = torch.randint(100, 1000, (1, tokens), device=model.device)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            model(ids)
            times.append(time.perf_counter() - start)
    return sorted(times[1:])[repeats // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="hub id, folder or .gguf (default: smollm2, the demo)")
    parser.add_argument("--sparsity", type=float, default=0.2, help="fraction of prunable parameters to remove")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/example-sliced", help="new folder for the sliced model")
    parser.add_argument("--full", action="store_true",
                        help="the default preset (official-pg-ls: 300 steps and the least-squares refit) and every "
                             "test window (default: 20 plain steps and 16 windows of 128 tokens, a CPU demo)")
    args = parser.parse_args()

    lm = pz.load_model(args.model, device=args.device, seqlen=128)
    windows = None if args.full else 16
    dense = pz.evaluate_model(lm, windows=windows)["wikitext2"]["ppl"]
    dense_s = forward_seconds(lm.model)
    settings = {} if args.full else {"preset": None, "steps": 20, "init_nsamples": 8, "init_seqlen": 128}
    # uniform widths: every layer keeps as many heads and channels, so the saved folder is a stock config
    res = pz.prune_structure(lm, sparsity=args.sparsity, uniform=True, **settings)
    after = pz.evaluate_model(lm, windows=windows)["wikitext2"]["ppl"]
    sliced_s = forward_seconds(lm.model)
    print(f"parameters {res['params_before']['total']:,} -> {res['params_after']['total']:,} "
          f"({res['removed_fraction']:.1%} of the prunable ones removed)")
    print(f"wikitext2 ppl @128 {dense:.2f} -> {after:.2f}; forward of 256 tokens {dense_s * 1e3:.1f} ms -> "
          f"{sliced_s * 1e3:.1f} ms ({dense_s / sliced_s:.2f}x)")
    folder = pz.save_model(lm, args.out)

    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    print(f"saved to {folder}; reloaded with plain transformers: {sum(p.numel() for p in reloaded.parameters()):,} "
          f"parameters, {reloaded.config.num_key_value_heads} KV heads, MLP width {reloaded.config.intermediate_size}")
    gguf = pz.export_model(folder, f"{args.out}.gguf")   # f16; llama.cpp, Ollama and LM Studio run it
    print(f"exported {args.out}.gguf: GGUF arch {gguf['arch']}, {gguf['bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
