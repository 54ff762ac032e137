"""Speed a user sees from structural pruning: prefill latency/throughput and KV-cache decoding, dense vs sliced.

    nice -n 10 python benchmarks/structural_speed.py --prefill 128 --out results/structural-speed   # CPU
    python benchmarks/structural_speed.py --device cuda --prefill 2048 --out results/structural-speed-gpu
    python benchmarks/structural_speed.py --out results/structural-speed --render-only

Every measurement (variant x batch) is a row of ``<out>/rows.jsonl`` with its settings and provenance, appended when
measured (a rerun measures only the missing ones); ``<out>.md`` is rendered from the rows (``--note`` paragraphs are
kept in ``<out>/meta.json``).

Models: dense, and for each sparsity a per-layer-width slice (global top-k of a random policy: layers differ) and a
uniform-width slice (the same KV groups / MLP channels in every layer). The masks come from random
probabilities: speed depends only on the widths (which structures are removed does not change a matmul's cost),
and the parameter counts match what a learned mask at the same sparsity gives.

Prefill: ``--warmup`` untimed passes, then the median (and quartiles) of ``--repeats`` timed forwards of
[batch, prefill] random tokens without cache. Decode: a 16-token prompt fills a KV cache, then ``--decode-tokens``
greedy single-token steps are timed as one run; the median run over ``--repeats`` gives tokens/s (batch x tokens /
seconds). CUDA is synchronised around every timed region. Nothing is asserted about timing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from prunerzero import results as pzr
from prunerzero.prune import structural as st
from prunerzero.timing import timed


@torch.no_grad()
def prefill(model, seqlen: int, batch: int, repeats: int, warmup: int, seed: int = 0) -> dict:
    """Forward of [batch, seqlen] tokens without cache: median seconds and tokens/s."""
    dev = model.get_input_embeddings().weight.device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, seqlen), generator=g).to(dev)
    out = timed(lambda: model(ids, use_cache=False), dev, repeats, warmup)
    out["tokens_per_s"] = batch * seqlen / out["median_s"]
    return out


def greedy_steps(model, cache, nxt, tokens: int):
    """``tokens`` greedy single-token steps with the KV cache from ``nxt``; returns the cache and the next token."""
    for _ in range(tokens):
        out = model(nxt, cache=cache, use_cache=True)
        cache, nxt = out.cache, out.logits[:, -1:].argmax(-1)
    return cache, nxt


@torch.no_grad()
def decode(model, batch: int, tokens: int, repeats: int, warmup: int, prompt: int = 16, seed: int = 0) -> dict:
    """Greedy decoding of ``tokens`` steps with a KV cache after a ``prompt``-token prefill: tokens/s of the steps."""
    dev = model.get_input_embeddings().weight.device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), generator=g).to(dev)
    state = {}

    def setup():
        out = model(ids, use_cache=True)
        state["cache"], state["next"] = out.cache, out.logits[:, -1:].argmax(-1)

    res = timed(lambda: greedy_steps(model, state["cache"], state["next"], tokens), dev, repeats, warmup,
                setup=setup)
    res["tokens_per_s"] = batch * tokens / res["median_s"]
    return res


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


@torch.no_grad()
def memory(model, batch: int, prefill_len: int, tokens: int, prompt: int = 16, seed: int = 0) -> dict:
    """Bytes a user sizes a machine by: the weights (parameters and buffers), the KV cache after a ``prompt``-token
    prefill and ``tokens`` decode steps at ``batch``, and on CUDA the peak allocated above the resident model during
    a [batch, prefill_len] forward (torch's CPU allocator keeps no peak statistics: None there)."""
    dev = model.get_input_embeddings().weight.device
    g = torch.Generator().manual_seed(seed)
    weights = tensor_bytes(model.parameters()) + tensor_bytes(model.buffers())
    out = model(torch.randint(0, model.config.vocab_size, (batch, prompt), generator=g).to(dev), use_cache=True)
    cache, _ = greedy_steps(model, out.cache, out.logits[:, -1:].argmax(-1), tokens)
    kv = sum(tensor_bytes(vars(layer).values()) for layer in cache.layers)
    peak = None
    if str(dev).startswith("cuda"):
        del out, cache
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        model(torch.randint(0, model.config.vocab_size, (batch, prefill_len), generator=g).to(dev), use_cache=False)
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base
    return {"dtype": str(model.dtype).replace("torch.", ""), "weights_bytes": weights, "kv_cache_bytes": kv,
            "kv_tokens": prompt + tokens, "prefill_peak_bytes": peak}


def variants(model_fn, sparsities: list[float], seed: int = 0):
    """(name, sparsity, model) for dense and, per sparsity, per-layer and uniform widths from random masks."""
    yield "dense", 0.0, model_fn()
    for sp in sparsities:
        for kind in ("per-layer", "uniform"):
            model = model_fn()
            lay = st.Layout.of(model)
            probs = st.init_probs("random", 1 - sp, lay, seed=seed)
            masks = (st.uniform_keep(probs, st.uniform_widths(lay, 1 - sp)) if kind == "uniform"
                     else {t: st.topk_keep(p, 1 - sp) for t, p in probs.items()})
            st.slice_model(model, masks)
            yield kind, sp, model


def row_id(kind: str, sparsity: float, batch: int, prefill_len: int, decode_tokens: int, what: str = "speed") -> str:
    """A speed row's id (as committed before memory rows existed), or a memory row's (``memory|`` first)."""
    rid = f"{kind}|{sparsity:g}|batch={batch}|prefill={prefill_len}|decode={decode_tokens}"
    return rid if what == "speed" else f"{what}|{rid}"


def run(model_fn, sparsities, prefill_len: int, batches: list[int], repeats: int, warmup: int,
        decode_tokens: int, log=print, done=lambda row: None, skip=frozenset(), what: str = "speed") -> list[dict]:
    """Every variant at every batch size (but the ids in ``skip``); ``done(row)`` after each measurement.
    ``what``: "speed" (timed prefill and decode) or "memory" (weights, KV cache, CUDA peak: one pass each)."""
    rows = []
    dense_prunable = None
    for kind, sp, model in variants(model_fn, sparsities):
        model.eval()
        params = st.count_params(model)
        dense_prunable = dense_prunable or params["prunable"]
        for b in batches:
            if row_id(kind, sp, b, prefill_len, decode_tokens, what) in skip:
                continue
            row = {"model": kind, "sparsity": sp, "batch": b, "params": params["total"],
                   "removed": 1 - params["prunable"] / dense_prunable, "prefill_tokens": prefill_len,
                   "decode_tokens": decode_tokens}
            if what == "memory":
                row.update(what="memory", memory=memory(model, b, prefill_len, decode_tokens))
                log(f"{kind:9s} {sp:.0%} batch {b}: weights {row['memory']['weights_bytes'] / 2**20:.1f} MiB, "
                    f"KV cache {row['memory']['kv_cache_bytes'] / 2**20:.2f} MiB")
            else:
                row.update(repeats=repeats, warmup=warmup, prefill=prefill(model, prefill_len, b, repeats, warmup),
                           decode=decode(model, b, decode_tokens, repeats, warmup))
                log(f"{kind:9s} {sp:.0%} batch {b}: prefill {row['prefill']['median_s'] * 1000:.1f} ms, "
                    f"decode {row['decode']['tokens_per_s']:.1f} tok/s")
            rows.append(row)
            done(row)
        del model
    return rows


def mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


def render_memory(rows: list[dict]) -> list[str]:
    """The memory table (markdown lines) of the ``what: memory`` rows, against the dense row of the same batch."""
    if not rows:
        return []
    dense = {r["batch"]: r["memory"] for r in rows if r["model"] == "dense"}
    r0 = rows[0]
    lines = ["", "## Memory", "",
             f"Weights: parameters and buffers as loaded ({r0['memory']['dtype']}). KV cache: every cached tensor "
             f"after a 16-token prompt and {r0['decode_tokens']} decode steps ({r0['memory']['kv_tokens']} tokens per sequence). "
             f"Prefill peak: the most allocated above the resident model during one [batch, {r0['prefill_tokens']}] "
             "forward, CUDA only (torch's CPU allocator keeps no peak statistics: '-').", "",
             "| model | removed | params | batch | weights MiB | vs dense | KV cache MiB | vs dense | "
             "prefill peak MiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        m, d = r["memory"], dense.get(r["batch"])
        name = "dense" if r["model"] == "dense" else f"{r['model']} {r['sparsity']:.0%}"
        lines.append(f"| {name} | {r['removed']:.1%} | {r['params']:,} | {r['batch']} | {mib(m['weights_bytes'])} | "
                     + (f"{m['weights_bytes'] / d['weights_bytes']:.3f} | " if d else "- | ")
                     + f"{mib(m['kv_cache_bytes'])} | "
                     + (f"{m['kv_cache_bytes'] / d['kv_cache_bytes']:.3f} | " if d else "- | ")
                     + f"{mib(m['prefill_peak_bytes'])} |")
    return lines


def render(rows: list[dict], meta: dict) -> str:
    """The table of ``rows`` (speed-up against the dense row of the same batch); ``meta``: base model, notes."""
    head = pzr.commands_line(rows)
    mem = [r for r in rows if r.get("what") == "memory"]
    rows = [r for r in rows if r.get("what", "speed") == "speed"]   # the timed rows' hardware (memory: bytes)
    devices = pzr.distinct(rows, "device")
    r0 = rows[0]
    lines = [f"# Structural pruning: speed of the sliced models ({meta.get('model', 'smollm2')})", "",
             head, "",
             f"Hardware: {', '.join(devices)}. Prefill: {r0['prefill_tokens']} tokens per sequence, {r0['warmup']} "
             f"warm-up passes, median of {r0['repeats']} timed forwards (p25-p75 in brackets), no cache. Decode: "
             f"{r0['decode_tokens']} greedy steps with a KV cache after a 16-token prompt, median of "
             f"{r0['repeats']} runs. Masks are random (speed depends only on the widths); per-layer = global top-k "
             "(layers differ), uniform = the same width in every layer. Speed-up = dense median / model median.",
             "", "| model | removed | params | batch | prefill ms | prefill tok/s | speed-up | decode tok/s | "
             "decode speed-up |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    dense = {r["batch"]: r for r in rows if r["model"] == "dense"}
    for r in rows:
        d, p, c = dense[r["batch"]], r["prefill"], r["decode"]
        name = "dense" if r["model"] == "dense" else f"{r['model']} {r['sparsity']:.0%}"
        lines.append(f"| {name} | {r['removed']:.1%} | {r['params']:,} | {r['batch']} | {p['median_s'] * 1000:.1f} "
                     f"({p['p25_s'] * 1000:.1f}-{p['p75_s'] * 1000:.1f}) | {p['tokens_per_s']:.0f} | "
                     f"{d['prefill']['median_s'] / p['median_s']:.2f}x | {c['tokens_per_s']:.1f} | "
                     f"{c['tokens_per_s'] / d['decode']['tokens_per_s']:.2f}x |")
    for note in meta.get("notes", []):
        lines += ["", note]
    return "\n".join(lines + render_memory(mem)) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="model to slice")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--sparsities", default="0.2,0.3", help="comma-separated fractions of prunable parameters")
    ap.add_argument("--prefill", type=int, default=2048, help="tokens per sequence of the timed prefill")
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--repeats", type=int, default=20, help="timed runs (the median is reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    ap.add_argument("--decode-tokens", type=int, default=32, help="greedy steps of one decode run")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--note", default="", help="a paragraph written under the table (e.g. the machine's load)")
    ap.add_argument("--what", choices=["speed", "memory"], default="speed",
                    help="speed: timed prefill and decode; memory: weights, KV cache and (CUDA) prefill peak, "
                         "one untimed pass per variant and batch (default: speed)")
    pzr.measurement_args(ap, "results/structural-speed")
    args = ap.parse_args()
    if pzr.rendered_only(ap, args, render):
        return
    out = Path(args.out)
    from prunerzero.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    meta = pzr.read_meta(out)
    meta.update(renderer="structural_speed", model=args.model)
    if args.note and args.note not in meta.setdefault("notes", []):
        meta["notes"].append(args.note)
    pzr.write_meta(out, meta)
    skip = {r["id"] for r in pzr.read_rows(out / "rows.jsonl")}

    def done(row):
        rid = row_id(row["model"], row["sparsity"], row["batch"], args.prefill, args.decode_tokens, args.what)
        pzr.record(out, pzr.measurement(rid, row, dev))
        pzr.write_measurements(out, render)

    run(lambda: load_model(args.model, device=dev).model, [float(s) for s in args.sparsities.split(",")],
        args.prefill, [int(b) for b in args.batches.split(",")], args.repeats, args.warmup, args.decode_tokens,
        done=done, skip=skip, what=args.what)
    print(pzr.write_measurements(out, render).read_text())


if __name__ == "__main__":
    main()
