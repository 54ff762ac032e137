"""Prune a model with a named metric, check its perplexity, and save it as a folder plain transformers loads.

    python examples/prune-and-save/prune_and_save.py                  # the demo: SmolLM2-135M, short windows, CPU
    python examples/prune-and-save/prune_and_save.py --model meta-llama/Llama-3.2-1B --device cuda --full
"""
from __future__ import annotations

import argparse

import prunerzero as pz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="hub id, folder or .gguf (default: smollm2, the demo)")
    parser.add_argument("--metric", default="found-smollm2-cpu", help="a named metric or a formula")
    parser.add_argument("--pattern", default="2:4", help="N:M, or 'unstructured' for 50%% per row")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/example-pruned", help="new folder for the pruned model")
    parser.add_argument("--full", action="store_true", help="the full protocol: 128 x 2048-token calibration "
                        "windows, every test window (default: 8 x 256 tokens, 16 test windows, for a CPU demo)")
    args = parser.parse_args()

    seqlen, nsamples, windows = (2048, 128, None) if args.full else (256, 8, 16)
    lm = pz.load_model(args.model, device=args.device, seqlen=seqlen)
    dense = pz.evaluate_model(lm, windows=windows)["wikitext2"]
    result = pz.prune_model(lm, args.metric, pattern=args.pattern, nsamples=nsamples)   # sequential, as Wanda
    pruned = pz.evaluate_model(lm, windows=windows)["wikitext2"]
    print(f"dense  wikitext2 ppl {dense['ppl']:.2f} ({dense['windows']} windows of {lm.seqlen} tokens)")
    print(f"pruned wikitext2 ppl {pruned['ppl']:.2f} [{result.method}, {result.pattern}, sparsity "
          f"{result.sparsity:.4f}, {result.seconds:.0f} s]")
    folder = pz.save_model(lm, args.out)

    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    zeros = sum(int((p == 0).sum()) for n, p in reloaded.named_parameters() if "layers." in n and p.dim() == 2)
    total = sum(p.numel() for n, p in reloaded.named_parameters() if "layers." in n and p.dim() == 2)
    print(f"saved to {folder}; reloaded with transformers: {zeros / total:.4f} of the block weights are zero")


if __name__ == "__main__":
    main()
