"""Pruned SmolLM2 in llama.cpp on this CPU: file size, prefill and decode speed, and WikiText-2 perplexity from
llama.cpp's own logits, for dense, structurally pruned (per-layer and uniform widths) and Wanda-pruned models
exported as ``prunerzero export --format gguf`` writes them.

    prunerzero structural --sparsity 0.3 --skip-dense --save runs/pg/per-layer-30 --json runs/pg/per-layer-30.json
    python benchmarks/llamacpp.py --out results/llamacpp-cpu --saved 'per-layer 30%=runs/pg/per-layer-30' ...
    python benchmarks/llamacpp.py --out results/llamacpp-cpu --interleave --compare-unaligned --saved ...
    python benchmarks/llamacpp.py --out results/llamacpp-cpu --render-only

Variants: dense; structural pruning at each ``--sparsities`` with per-layer and with uniform widths, each either a
folder ``prunerzero structural --save`` wrote (``--saved NAME=FOLDER``; the policy-gradient stage; its ``--json``
next to it as ``FOLDER.json`` says how it was made) or, where none is given, one-shot (Wanda structure scores,
global top-k of the per-layer z-scores, no policy-gradient steps) on ``--calib`` C4 windows of 512 tokens; Wanda at
50% unstructured and at 2:4 on the same windows. Each is exported to the ``--outtypes`` (dense also to f32, the
exactness reference; Wanda to q8_0 only: how much of the pruned model survives quantization, dense q8_0 beside it).

Per file: size; prefill tokens/s (``--prefill`` random tokens in one batch, after ``--warmup`` untimed runs, median
of ``--repeats``); decode tokens/s (``--decode`` single-token steps after a 16-token prompt, median of
``--repeats`` runs); perplexity from llama.cpp's logits on the first ``--windows`` non-overlapping ``--seqlen``-token
windows of the WikiText-2 test split, the windows prunerzero's evaluation cuts (same token ids, fed to llama.cpp),
next to prunerzero's perplexity of the exported fp32 model (and, for dense, of the weights read back from the file).
``--interleave`` times the files in turns (the ratios the goals are checked on), ``--compare-unaligned`` adds each
structural file with its FFN widths as found (unpadded), ``--flash-attn`` turns llama.cpp's flash attention on.
llama.cpp runs on ``--threads`` threads. Every file is a row of ``<out>/rows.jsonl`` appended when measured (a rerun
measures only missing rows); ``<out>.md`` is rendered from the rows, with the issue's goals checked on them.
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from prunerzero import results as pzr

GOALS = {"decode": 1.25, "prefill": 1.3, "ppl_f16": 0.005, "ppl_q8": 0.02}
# the agreement goals are checked on the models whose next-token distributions mean something, and on all: one-shot
# structural pruning leaves perplexities in the thousands, nearly flat distributions that small numeric differences
# (f16 rounding, llama.cpp's 8-bit activations in q8_0 products) move by percents
GROUPS = (("dense and the policy-gradient / Wanda models", lambda r: not (r.get("how") or "").startswith("one-shot")),
          ("all models, one-shot structural ones included", lambda r: True))


def llama(path, n_ctx: int, threads: int, logits_all: bool = False, flash_attn: bool = False):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                           n_threads_batch=threads, logits_all=logits_all, flash_attn=flash_attn, verbose=False)


def llama_ppl(path, windows: torch.Tensor, threads: int, flash_attn: bool = False) -> float:
    """exp(mean next-token NLL) over every window, from llama.cpp's logits (float64 log-softmax)."""
    llm = llama(path, windows.shape[1], threads, logits_all=True, flash_attn=flash_attn)
    nll, count = 0.0, 0
    try:
        for w in windows.tolist():
            llm.reset()
            llm.eval(w)
            logits = np.asarray(llm.scores[: len(w) - 1], dtype=np.float64)
            top = logits.max(-1, keepdims=True)
            logz = top[:, 0] + np.log(np.exp(logits - top).sum(-1))
            nll += float((logz - logits[np.arange(len(w) - 1), w[1:]]).sum())
            count += len(w) - 1
    finally:
        llm.close()
    return math.exp(nll / count)


def speed(path, prefill: int, decode: int, repeats: int, warmup: int, threads: int, vocab: int,
          flash_attn: bool = False) -> dict:
    """Median prefill and decode tokens/s of llama.cpp on this file (random tokens, fixed seed): the interleaved
    timing of one file."""
    return interleaved_speed({"file": path}, prefill, decode, repeats, warmup, threads, vocab, flash_attn)["file"]


def interleaved_speed(paths: dict[str, Path], prefill: int, decode: int, repeats: int, warmup: int, threads: int,
                      vocab: int, flash_attn: bool = False) -> dict[str, dict]:
    """``speed`` of several files taken in turns (A B C A B C ...), one run of each per round, so that a change of
    the machine's load hits every file alike; medians over ``repeats`` rounds after ``warmup`` rounds."""
    g = np.random.default_rng(0)
    prompt = g.integers(3, vocab, prefill).tolist()
    steps = g.integers(3, vocab, decode + 16).tolist()
    llms = {k: llama(p, max(prefill, decode + 16), threads, flash_attn=flash_attn) for k, p in paths.items()}
    pre = {k: [] for k in paths}
    dec = {k: [] for k in paths}
    try:
        for i in range(warmup + repeats):
            for k, llm in llms.items():
                llm.reset()
                t0 = time.perf_counter()
                llm.eval(prompt)
                t1 = time.perf_counter()
                llm.reset()
                llm.eval(steps[:16])
                t2 = time.perf_counter()
                for tok in steps[16:]:
                    llm.eval([tok])
                t3 = time.perf_counter()
                if i >= warmup:
                    pre[k].append(t1 - t0)
                    dec[k].append(t3 - t2)
    finally:
        for llm in llms.values():
            llm.close()
    return {k: {"prefill_tokens_per_s": prefill / statistics.median(pre[k]),
                "decode_tokens_per_s": decode / statistics.median(dec[k]),
                "prefill_s": sorted(pre[k]), "decode_s": sorted(dec[k])} for k in paths}


ONESHOT = ("one-shot: Wanda structure scores (a KV group's o_proj columns, a channel's down_proj column), global "
           "top-k of per-layer z-scores, no policy-gradient steps, no refit; on the --calib C4 windows of 512 tokens")


def saved_variant(spec: str) -> tuple[str, Path]:
    """``NAME=FOLDER`` of ``--saved``."""
    name, sep, folder = spec.partition("=")
    if not sep or not name or not folder:
        raise SystemExit(f"--saved '{spec}': use NAME=FOLDER, e.g. 'per-layer 30%=runs/pg/per-layer-30'")
    if not (Path(folder) / "config.json").is_file():
        raise SystemExit(f"--saved '{spec}': {folder} is not a saved model (no config.json); write one with "
                         "prunerzero structural --save FOLDER")
    return name, Path(folder)


def saved_facts(folder: Path) -> dict:
    """How a saved structural model was made: ``FOLDER.json`` (``prunerzero structural --json`` written next to
    ``--save FOLDER``), when it is there."""
    path = folder.with_name(folder.name + ".json")
    if not path.is_file():
        return {"how": f"saved model {folder}"}
    import json

    p = json.loads(path.read_text())
    cfg = p.get("config", {})
    ppl = {L: r.get("wikitext2", {}).get("ppl") for L, r in (p.get("pruned") or {}).items()}
    return {"how": f"policy gradient ({cfg.get('steps')} steps, lr {cfg.get('lr')}, K={cfg.get('samples')}, "
                   f"init {cfg.get('init')} {cfg.get('metric')}{', least-squares refit' if cfg.get('reconstruct') else ''}"
                   f"{', uniform widths' if cfg.get('uniform') else ', per-layer widths'}, seed {cfg.get('seed')})"
                   if cfg.get("init") != "oneshot" else f"one-shot ({cfg.get('metric')})",
            "made_by": (p.get("provenance") or {}).get("command"), "removed": p.get("removed_fraction"),
            "structural_ppl": ppl, "seconds": p.get("seconds")}


def variants(names: list[str], sparsities: list[float], calib: int, saved: dict[str, Path], model: str,
             data_dir=None):
    """(name, make) of every variant; ``make()`` gives (the model to export, facts of how it was made). Structural
    variants are the ``saved`` folders (``prunerzero structural --save``) where given, else one-shot ones."""
    from prunerzero.models import load_model
    from prunerzero.pipeline import CalibConfig, StructuralConfig, prune, structural
    from prunerzero.prune.masks import parse_pattern

    def base():
        return load_model(model, device="cpu", dtype="fp32")

    def dense():
        return base(), {}

    def struct(sp, uniform):
        def make():
            lm = base()
            cfg = StructuralConfig(sparsity=sp, metric="wanda", init="oneshot", uniform=uniform, attn_score="out",
                                   mlp_score="out", init_nsamples=calib, init_seqlen=512, calib_seqlen=512,
                                   nsamples=calib)
            res = structural(lm, cfg, CalibConfig(nsamples=calib, data_dir=data_dir), progress=False)
            return lm, {"removed": res["removed_fraction"], "layer_shapes": res["layer_shapes"], "how": ONESHOT}
        return make

    def from_folder(folder):
        def make():
            from prunerzero.prune.structural import count_params

            lm = load_model(str(folder), device="cpu", dtype="fp32")
            facts = saved_facts(folder)
            if facts.get("removed") is None:
                ref = base()
                facts["removed"] = 1 - count_params(lm.model)["prunable"] / count_params(ref.model)["prunable"]
            return lm, {**facts, "saved": str(folder)}
        return make

    def wanda(pattern):
        def make():
            lm = base()
            res = prune(lm, "wanda", parse_pattern(0.5, pattern), CalibConfig(nsamples=calib, data_dir=data_dir),
                        progress=False, seqlen=512)
            return lm, {"zeros": res.sparsity, "how": f"Wanda, one-shot, on {calib} C4 windows of 512 tokens"}
        return make

    table = {"dense": dense}
    for sp in sparsities:
        for kind, uniform in (("per-layer", False), ("uniform", True)):
            name = f"{kind} {sp:.0%}"
            table[name] = from_folder(saved[name]) if name in saved else struct(sp, uniform)
    for name, folder in saved.items():
        table.setdefault(name, from_folder(folder))
    table["wanda 50%"] = wanda(None)     # measured in q8_0 only: does pruning survive quantization
    table["wanda 2:4"] = wanda("2:4")
    for name in names or table:
        if name not in table:
            raise SystemExit(f"unknown variant '{name}': use {', '.join(table)}")
        yield name, table[name]


def row_id(name: str, outtype: str, threads: int, prefill: int, decode: int, windows: int, seqlen: int,
           ffn_multiple: int = 32, flash_attn: bool = False) -> str:
    return (f"{name}|{outtype}|threads={threads}|prefill={prefill}|decode={decode}|ppl={windows}x{seqlen}"
            + (f"|ffn={ffn_multiple}" if ffn_multiple != 32 else "") + ("|fa" if flash_attn else ""))


def _widths(r: dict) -> str:
    return "as found" if r.get("ffn_multiple", 32) == 1 else f"x{r.get('ffn_multiple', 32)}"


def _setting(r: dict) -> tuple:
    """Rows compared with one another: the same output type, flash attention and timing protocol."""
    return r["outtype"], bool(r.get("flash_attn")), r["threads"], r["prefill"], r["decode"]


def render(rows: list[dict], meta: dict) -> str:
    turns = [r for r in rows if r.get("what") == "interleaved"]
    rows = [r for r in rows if r.get("what") != "interleaved"]
    every = rows + turns
    devices = pzr.distinct(every, "device")
    versions = list(dict.fromkeys(r.get("llama_cpp_version", "?") for r in every))
    r0 = rows[0] if rows else turns[0]
    fa = sorted({bool(r.get("flash_attn")) for r in every})
    lines = [f"# Pruned {meta.get('model', 'smollm2')} in llama.cpp (CPU)", "",
             pzr.commands_line(every), "",
             f"llama-cpp-python {', '.join(versions)} built from source CPU-only; hardware: {', '.join(devices)}; "
             f"{r0['threads']} llama.cpp thread(s); flash attention "
             f"{' and '.join('on' if f else 'off' for f in fa)}. Prefill: {r0['prefill']} tokens in one batch; decode: "
             f"{r0['decode']} single-token steps after a 16-token prompt; {r0['warmup']} warm-up run(s), median of "
             f"{' or '.join(str(n) for n in sorted({r['repeats'] for r in every}))} timed runs. FFN widths are "
             "written padded with all-zero channels to a multiple of 32 (`x32`; `as found`: unpadded), as "
             "`prunerzero export` does."]
    if rows:
        lines[-1] += (f" Perplexity: the first {r0['windows']} windows of {r0['seqlen']} tokens of WikiText-2 test "
                      "(prunerzero's windows, the same token ids fed to llama.cpp). `pz file`: prunerzero's perplexity "
                      "of the weights read back from the same GGUF (dense rows); `pz model`: of the exported fp32 "
                      "model. Ratios are against dense of the same output type, measured in the same run, one file "
                      "after another: the machine's speed drifts between rows, so the speed goals are checked on the "
                      "files taken in turns (below).")
    made = {}
    for r in rows:
        if r.get("how"):
            made.setdefault(r["model"], r)
    if made:
        lines += ["", "How the pruned models were made:", ""]
        for name, r in made.items():
            ppl = {L: v for L, v in (r.get("structural_ppl") or {}).items() if v}
            lines.append(f"- **{name}**: {r['how']}" + (f"; `{r['made_by']}`" if r.get("made_by") else "")
                         + (f"; WikiText-2 perplexity at {', '.join(ppl)} tokens (its own evaluation): "
                            f"{', '.join(f'{v:.2f}' for v in ppl.values())}" if ppl else "") + ".")
    lines += ["", "| model | removed | type | arch | MB | prefill tok/s | x dense | decode tok/s | x dense | "
              "ppl llama.cpp | ppl pz file | diff | ppl pz model | diff |",
              "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    dense = {_setting(r): r for r in rows if r["model"] == "dense"}

    def ratio(r, key):
        d = dense.get(_setting(r))
        return f"{r[key] / d[key]:.2f}x" if d else "-"

    for r in rows:
        removed = r.get("removed")
        shown = (f"{removed:.1%}" if removed is not None else f"{r['zeros']:.0%} zeros" if r.get("zeros") else "-")
        pf = r.get("ppl_prunerzero_file")
        lines.append(
            f"| {r['model']} | {shown} | {r['outtype']} | {r['arch']} | "
            f"{r['bytes'] / 1e6:.1f} | {r['prefill_tokens_per_s']:.0f} | {ratio(r, 'prefill_tokens_per_s')} | "
            f"{r['decode_tokens_per_s']:.1f} | {ratio(r, 'decode_tokens_per_s')} | {r['ppl_llamacpp']:.3f} | "
            + (f"{pf:.3f} | {r['ppl_llamacpp'] / pf - 1:+.2%} | " if pf else "- | - | ")
            + f"{r['ppl_prunerzero_model']:.3f} | {r['ppl_llamacpp'] / r['ppl_prunerzero_model'] - 1:+.2%} |")
    if turns:
        t0 = turns[0]
        lines += ["", "## Speed, files taken in turns", "",
                  f"The files of one run timed in turns (each file once per round; {t0['warmup']} warm-up "
                  f"round(s), median of {t0['repeats']} rounds), so a change of the machine's load hits them alike: "
                  f"the ratios the goals are checked on, each against dense of the same type and settings in the "
                  f"same run.", "",
                  "| model | removed | type | FFN widths | flash attn | arch | MB | prefill tok/s | x dense | "
                  "decode tok/s | x dense |",
                  "| --- | ---: | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        tdense = {_setting(r): r for r in turns if r["model"] == "dense"}
        for r in turns:
            d = tdense.get(_setting(r))
            lines.append(f"| {r['model']} | {'-' if r.get('removed') is None else format(r['removed'], '.1%')} | "
                         f"{r['outtype']} | {_widths(r) if r.get('removed') else '-'} | "
                         f"{'on' if r.get('flash_attn') else 'off'} | {r['arch']} | {r['bytes'] / 1e6:.1f} | "
                         f"{r['prefill_tokens_per_s']:.0f} | "
                         + (f"{r['prefill_tokens_per_s'] / d['prefill_tokens_per_s']:.2f}x" if d else "-") + " | "
                         f"{r['decode_tokens_per_s']:.1f} | "
                         + (f"{r['decode_tokens_per_s'] / d['decode_tokens_per_s']:.2f}x" if d else "-") + " |")
    lines += ["", "## Goals (issue 50), checked on these rows", ""] + goal_lines(rows, dense, turns)
    for note in meta.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def goal_lines(rows: list[dict], dense: dict, turns: list[dict] = ()) -> list[str]:
    out = []
    tdense = {_setting(r): r for r in turns if r["model"] == "dense"}
    for r in turns:
        d = tdense.get(_setting(r))
        if r["model"].startswith("per-layer 30") and d and r.get("ffn_multiple", 32) != 1:
            dec = r["decode_tokens_per_s"] / d["decode_tokens_per_s"]
            pre = r["prefill_tokens_per_s"] / d["prefill_tokens_per_s"]
            out.append(f"- 30% per-layer, {r['outtype']}, flash attention {'on' if r.get('flash_attn') else 'off'}, "
                       f"files in turns: decode {dec:.2f}x (goal >= {GOALS['decode']}x: "
                       f"{'met' if dec >= GOALS['decode'] else 'not met'}), prefill {pre:.2f}x (goal >= "
                       f"{GOALS['prefill']}x: {'met' if pre >= GOALS['prefill'] else 'not met'}).")
    for label, keep in GROUPS:
        exact = [r for r in rows if r["outtype"] in ("f32", "f16") and keep(r)]
        if exact:
            worst = max(exact, key=lambda r: abs(r["ppl_llamacpp"] / r["ppl_prunerzero_model"] - 1))
            gap = abs(worst["ppl_llamacpp"] / worst["ppl_prunerzero_model"] - 1)
            out.append(f"- llama.cpp vs prunerzero perplexity, f32/f16 files, {label}: largest gap {gap:.2%} "
                       f"({worst['model']}, {worst['outtype']}; goal within {GOALS['ppl_f16']:.1%}: "
                       f"{'met' if gap <= GOALS['ppl_f16'] else 'not met'}).")
    f16 = {r["model"]: r for r in rows if r["outtype"] == "f16"}
    for label, keep in GROUPS:
        q8 = [(r, f16[r["model"]]) for r in rows if r["outtype"] == "q8_0" and r["model"] in f16 and keep(r)]
        if q8:
            worst, ref = max(q8, key=lambda p: abs(p[0]["ppl_llamacpp"] / p[1]["ppl_llamacpp"] - 1))
            gap = abs(worst["ppl_llamacpp"] / ref["ppl_llamacpp"] - 1)
            out.append(f"- q8_0 vs f16 perplexity in llama.cpp, {label}: largest gap {gap:.2%} ({worst['model']}; "
                       f"goal within {GOALS['ppl_q8']:.0%}: {'met' if gap <= GOALS['ppl_q8'] else 'not met'}).")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--variants", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--sparsities", default="0.2,0.3", help="structural fractions of prunable parameters removed")
    ap.add_argument("--saved", action="append", default=[], metavar="NAME=FOLDER",
                    help="a structural variant from a folder written by prunerzero structural --save (with its "
                         "--json written to FOLDER.json, the table says how it was made), e.g. "
                         "'per-layer 30%%=runs/pg/per-layer-30'; repeatable; variants not given this way are pruned "
                         "one-shot")
    ap.add_argument("--outtypes", default="f16,q8_0", help="GGUF types of every variant (dense also gets f32)")
    ap.add_argument("--ffn-multiple", type=int, default=32,
                    help="FFN widths padded with zero channels to a multiple of this in the GGUF (1: as found)")
    ap.add_argument("--compare-unaligned", action="store_true",
                    help="with --interleave: also time each structural variant with its FFN widths as found (types "
                         "other than q8_0, which always pads to whole blocks)")
    ap.add_argument("--flash-attn", action="store_true", help="llama.cpp's flash attention on")
    ap.add_argument("--calib", type=int, default=8, help="C4 calibration windows of 512 tokens (one-shot variants)")
    ap.add_argument("--windows", type=int, default=4, help="WikiText-2 test windows for perplexity")
    ap.add_argument("--seqlen", type=int, default=512, help="tokens per perplexity window")
    ap.add_argument("--prefill", type=int, default=256, help="prompt tokens of the timed prefill")
    ap.add_argument("--decode", type=int, default=32, help="timed single-token decode steps")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (prefill and decode)")
    ap.add_argument("--note", action="append", default=[], help="a paragraph written under the table (repeatable)")
    ap.add_argument("--interleave", action="store_true",
                    help="time the --variants' files in turns (no perplexity) instead of one after another")
    pzr.measurement_args(ap, "results/llamacpp-cpu")
    args = ap.parse_args()
    if pzr.rendered_only(ap, args, render):
        return
    saved = dict(saved_variant(v) for v in args.saved)
    import llama_cpp

    from prunerzero.data import eval_tokens, eval_windows
    from prunerzero.evaluate import perplexity
    from prunerzero.models.gguf_read import read_model
    from prunerzero.models.gguf_write import write_gguf

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    meta = pzr.read_meta(out)
    meta.update(renderer="llamacpp", model=args.model)
    for note in args.note:
        if note not in meta.setdefault("notes", []):
            meta["notes"].append(note)
    pzr.write_meta(out, meta)
    done = {r["id"] for r in pzr.read_rows(out / "rows.jsonl")}
    outtypes = args.outtypes.split(",")
    names = [n for n in args.variants.split(",") if n]
    sparsities = [float(s) for s in args.sparsities.split(",")]
    fa = args.flash_attn
    common = {"threads": args.threads, "prefill": args.prefill, "decode": args.decode, "repeats": args.repeats,
              "warmup": args.warmup, "flash_attn": fa, "llama_cpp_version": llama_cpp.__version__}
    if args.interleave:
        with tempfile.TemporaryDirectory(prefix="pz-llamacpp-") as tmp:
            paths, facts = {}, {}
            for name, make in variants(names, sparsities, args.calib, saved, args.model):
                lm, info = make()
                for outtype in outtypes:   # q8_0 pads to whole blocks of 32 whatever is asked: no unaligned file
                    unaligned = args.compare_unaligned and info.get("removed") and outtype != "q8_0"
                    for mult in [args.ffn_multiple] + ([1] if unaligned else []):
                        key = f"{name}|{outtype}|{mult}"
                        paths[key] = Path(tmp) / f"{len(paths)}-{outtype}.gguf"
                        res = write_gguf(lm.model, lm.tokenizer, paths[key], outtype, name=f"{args.model} {name}",
                                         ffn_multiple=mult)
                        facts[key] = {"model": name, "outtype": outtype, "arch": res["arch"], "bytes": res["bytes"],
                                      "removed": info.get("removed"), "ffn_multiple": mult,
                                      "padded_ffn_layers": res["padded_ffn_layers"]}
                vocab = lm.model.config.vocab_size
                del lm
            speeds = interleaved_speed(paths, args.prefill, args.decode, args.repeats, args.warmup, args.threads,
                                       vocab, fa)
        for key, sp in speeds.items():
            f = facts[key]
            row = {**f, "what": "interleaved", **sp, **common}
            rid = "turns|" + row_id(f["model"], f["outtype"], args.threads, args.prefill, args.decode, 0, 0,
                                    f["ffn_multiple"], fa)
            pzr.record(out, pzr.measurement(rid, row, "cpu"))
            print(f"{key}: prefill {sp['prefill_tokens_per_s']:.0f} tok/s, decode {sp['decode_tokens_per_s']:.1f}")
        print(pzr.write_measurements(out, render).read_text())
        return
    for name, make in variants(names, sparsities, args.calib, saved, args.model):
        types = (["f32"] if name == "dense" else []) + (["q8_0"] if name.startswith("wanda") else outtypes)
        ids = {t: row_id(name, t, args.threads, args.prefill, args.decode, args.windows, args.seqlen,
                         args.ffn_multiple, fa) for t in types}
        if all(i in done for i in ids.values()):
            continue
        lm, info = make()
        windows = eval_windows(eval_tokens(lm.tokenizer, "wikitext2", "test", None, args.seqlen), args.seqlen,
                               args.windows, lm.window_bos)
        ppl_model = perplexity(lm.model, windows)
        print(f"{name}: prunerzero fp32 ppl {ppl_model:.3f}", flush=True)
        for outtype in types:
            if ids[outtype] in done:
                continue
            with tempfile.TemporaryDirectory(prefix="pz-llamacpp-") as tmp:
                path = Path(tmp) / f"{outtype}.gguf"
                res = write_gguf(lm.model, lm.tokenizer, path, outtype, name=f"{args.model} {name}",
                                 ffn_multiple=args.ffn_multiple)
                # prunerzero on the file's own weights: the dense rows (each outtype); elsewhere the fp32 model only
                ppl_file = perplexity(read_model(path), windows) if name == "dense" else None
                ppl_cpp = llama_ppl(path, windows, args.threads, fa)
                sp = speed(path, args.prefill, args.decode, args.repeats, args.warmup, args.threads,
                           lm.model.config.vocab_size, fa)
            row = {"model": name, "outtype": outtype, "arch": res["arch"], "bytes": res["bytes"],
                   "removed": info.get("removed"), "zeros": info.get("zeros"), "how": info.get("how"),
                   "made_by": info.get("made_by"), "saved": info.get("saved"),
                   "structural_ppl": info.get("structural_ppl"), "layer_shapes": res["shapes"],
                   "ffn_multiple": args.ffn_multiple, "padded_ffn_layers": res["padded_ffn_layers"],
                   "f16_fallback": len(res["f16_fallback"]), "ppl_llamacpp": ppl_cpp, "ppl_prunerzero_file": ppl_file,
                   "ppl_prunerzero_model": ppl_model, **sp, **common, "windows": args.windows,
                   "seqlen": args.seqlen, "calib": args.calib}
            print(f"  {outtype}: {res['bytes'] / 1e6:.1f} MB, prefill {sp['prefill_tokens_per_s']:.0f} tok/s, "
                  f"decode {sp['decode_tokens_per_s']:.1f} tok/s, ppl llama.cpp {ppl_cpp:.3f}",
                  flush=True)
            pzr.record(out, pzr.measurement(ids[outtype], row, "cpu"))
            pzr.write_measurements(out, render)
        del lm
    print(pzr.write_measurements(out, render).read_text())


if __name__ == "__main__":
    main()
