"""Find a pruning metric for a model: a short search, its best formulas, and (optionally) the validation
re-scoring that picks one to confirm.

    python examples/find-a-metric/find_metric.py                      # the demo: SmolLM2-135M, space quick, CPU
    python examples/find-a-metric/find_metric.py --model Qwen/Qwen2.5-0.5B --space cpu --device cuda --select
"""
from __future__ import annotations

import argparse

import prunerzero as pz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="hub id, folder or .gguf (default: the space's model)")
    parser.add_argument("--space", default="quick", help="packaged space or YAML file (default: quick)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the space's)")
    parser.add_argument("--out", default="runs/example-find-a-metric", help="new run folder")
    parser.add_argument("--select", action="store_true",
                        help="then re-score the best 3 as final runs prune (sequential, 50%% and 2:4, validation)")
    args = parser.parse_args()

    run = pz.search_formulas(args.space, out=args.out, model=args.model, device=args.device)
    table = pz.best_formulas(run, top=5)
    print(table[["formula", "ppl"]].to_string())
    print(f"run folder: {run}")
    if args.select:
        pick = pz.select_formula(run, top=3, device=args.device)
        print("chosen:", pick["formula"] if pick else "none scored at every pattern")


if __name__ == "__main__":
    main()
