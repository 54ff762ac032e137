"""Block by block == whole model, on real models: the proof that calibration and pruning see what the model computes.

For each model, the first ``--windows`` WikiText-2 test windows of ``--seqlen`` tokens go through the model's own
forward (one batch, a hook on every decoder block) and through prunerzero's ``BlockRunner`` (blocks one by one, in
batches of ``--batch-size``), as calibration and sequential pruning run them; then the model's own tail (final
norm, LM head, soft-capping) runs on our last block's outputs. The table gives, per model, the worst block's
largest absolute difference relative to that block's largest activation, the largest logit difference, and the
share of positions whose top token agrees (``prunerzero.calibration.forward_check``; tests/test_families.py runs
the same check on tiny random configs of every family).

    python benchmarks/block_check.py --model smollm2 --model gemma3-270m --model qwen2.5-0.5b --out results/block-check-cpu
    python benchmarks/block_check.py --out results/block-check-cpu --render-only

A model already in ``<out>/rows.jsonl`` with the same setting is not measured again.
"""
from __future__ import annotations

import argparse

from prunerzero import results as pzr

COLUMNS = [["model", "model", "s"], ["family", "family", "s"], ["blocks", "blocks", "d"],
           ["windows", "windows", "s"], ["worst block", "worst_block", "d"],
           ["max \\|Δh\\| / max \\|h\\|", "hidden_rel_diff", ".2e"], ["max \\|Δ logits\\|", "logits_max_abs_diff", ".2e"],
           ["max \\|logits\\|", "logits_max_abs", ".1f"], ["top-1 agreement", "argmax_agreement", ".6f"]]
DEFAULT_META = {"renderer": "block_check", "blocks": [
    {"text": "# Block by block against the whole model, real models\n\nEach model in fp32 on the CPU: WikiText-2 "
             "test windows through the model's own forward (one batch, hooks on the decoder blocks) and through "
             "prunerzero's block runner (blocks one by one, as calibration and sequential pruning run them), then "
             "the model's own tail on our last block's outputs. Worst block: the largest absolute difference "
             "relative to that block's largest activation. 0 means bit-identical outputs; differences at the level "
             "of fp32 rounding (batching can change the order of sums) would still mean the block runner computes "
             "what the model computes, and the check does fail when a block gets another block's inputs "
             "(tests/test_families.py)."},
    {"commands": {"bench": "block_check"}},
    {"table": {"where": {"bench": "block_check"}, "columns": COLUMNS}}]}


def render(rows: list[dict], meta: dict) -> str:
    return pzr.render_document(rows, meta if meta.get("blocks") else DEFAULT_META)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="repeatable (default: smollm2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    pzr.measurement_args(ap, None)
    args = ap.parse_args()
    if pzr.rendered_only(ap, args, render):
        return
    for name, value in (("--seqlen", args.seqlen), ("--windows", args.windows), ("--batch-size", args.batch_size)):
        if value < 1:
            ap.error(f"{name} must be at least 1")
    models = args.model or ["smollm2"]
    out = pzr.measurement_out(args.out, DEFAULT_META)

    import torch

    from prunerzero.calibration import forward_check
    from prunerzero.data import eval_tokens, eval_windows
    from prunerzero.models import load_model

    setting = f"{args.windows} x {args.seqlen} WikiText-2 test, batches of {args.batch_size}"
    for name in models:
        rid = f"block_check|{name}|{args.windows}x{args.seqlen}|b{args.batch_size}"
        if out is not None and any(r["id"] == rid for r in pzr.read_rows(out / "rows.jsonl")):
            print(f"{rid}: in {out / 'rows.jsonl'} already (delete its row to measure again)")
            continue
        lm = load_model(name, device=args.device, dtype="fp32", seqlen=args.seqlen)
        tokens = eval_tokens(lm.tokenizer, "wikitext2", "test", args.data_dir, lm.seqlen)
        windows = eval_windows(tokens, lm.seqlen, max_windows=args.windows)
        with torch.no_grad():
            summary = forward_check(lm.model, windows, batch_size=args.batch_size).summary()
        fields = {"bench": "block_check", "model": name, "family": lm.model.config.model_type,
                  "windows": setting, **summary}
        print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()))
        if out is not None:
            pzr.record(out, pzr.measurement(rid, fields, str(lm.device)))
        del lm
    if out is not None:
        print(f"rows in {out / 'rows.jsonl'}; table {pzr.write_measurements(out, render)}")


if __name__ == "__main__":
    main()
