"""Cost of one policy-gradient step against the K forward passes it needs (the overhead must be small).

    python benchmarks/structural.py                       # SmolLM2 on CPU
    python benchmarks/structural.py --device cuda --batch-size 8 --seqlen 128
"""
from __future__ import annotations

import argparse
import resource
import time

import pandas as pd
import torch

from prunerzero.models import load_model
from prunerzero.prune import structural as st


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--samples", type=int, default=2, help="K")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()

    lm = load_model(args.model, device=args.device)
    model, dev = lm.model, lm.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    layout = st.Layout.of(model)
    ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.seqlen))
    keep = 0.8
    policy = st.BernoulliPolicy(st.init_probs("const", keep, layout),
                                st.PolicyConfig(keep=keep, steps=args.steps, samples=args.samples))
    hooks = st.StructureMasks(model)

    def forward_only():
        with torch.no_grad():
            model(ids.to(dev).repeat(args.samples, 1), use_cache=False)

    def pg_step():
        policy.step(lambda m: st.masked_losses(model, hooks, ids, m))

    rows = []
    for name, fn in (("K forward passes alone", forward_only), ("policy-gradient step", pg_step)):
        fn()  # warm-up
        times = []
        for _ in range(args.steps):
            sync(dev)
            t = time.perf_counter()
            fn()
            sync(dev)
            times.append(time.perf_counter() - t)
        rows.append({"what": name, "median s": sorted(times)[len(times) // 2], "min s": min(times)})
    hooks.remove()
    df = pd.DataFrame(rows)
    overhead = df["median s"].iloc[1] / df["median s"].iloc[0] - 1
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(f"{args.model} on {dev}: K={args.samples}, batch {args.batch_size} x {args.seqlen} tokens, "
          f"{layout.counts['attn']} KV groups + {layout.counts['mlp']} MLP channels")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"overhead of a step over its forward passes: {overhead:+.1%}; peak memory {peak:.0f} MB")


if __name__ == "__main__":
    main()
