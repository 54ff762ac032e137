"""Structural stage on a tiny random LLaMA with grouped-query attention (4 heads, 2 KV heads)."""
import itertools

import pytest
import torch
from conftest import make_tiny

from prunerzero.calibration import activation_stats
from prunerzero.metric import parse
from prunerzero.prune.structural import (
    ATTN,
    MLP,
    BernoulliPolicy,
    Layout,
    PolicyConfig,
    StructureMasks,
    count_params,
    init_probs,
    masked_losses,
    optimise,
    pg_gradient,
    project,
    save_structural,
    slice_model,
    structure_scores,
    topk_keep,
)


def random_masks(layout, seed=0, keep=0.6):
    g = torch.Generator().manual_seed(seed)
    attn = torch.rand(layout.layers, layout.kv_heads, generator=g) < keep
    attn[:, 0] = True  # at least one group per layer
    mlp = torch.rand(layout.layers, layout.intermediate, generator=g) < keep
    return {ATTN: attn, MLP: mlp}


def test_sliced_model_equals_masked_model(windows):
    model = make_tiny(layers=3)
    lay = Layout.of(model)
    assert (lay.kv_heads, lay.q_per_kv, lay.head_dim) == (2, 2, 16)
    masks = random_masks(lay)
    hooks = StructureMasks(model)
    hooks.set(masks[ATTN][None].float(), masks[MLP][None].float())
    with torch.no_grad():
        masked = model(windows).logits
    hooks.remove()
    with torch.no_grad():
        dense = model(windows).logits
    assert not torch.allclose(masked, dense)
    slice_model(model, masks)
    with torch.no_grad():
        sliced = model(windows).logits
    torch.testing.assert_close(sliced, masked, rtol=1e-4, atol=1e-5)


def test_per_sample_masks_in_one_batch(windows):
    model = make_tiny()
    lay = Layout.of(model)
    m1, m2 = random_masks(lay, 1), random_masks(lay, 2)
    hooks = StructureMasks(model)
    both = {t: torch.stack([m1[t], m2[t]]).float() for t in (ATTN, MLP)}
    losses = masked_losses(model, hooks, windows[:3], both)
    single = [masked_losses(model, hooks, windows[:3], {t: m[t][None].float() for t in (ATTN, MLP)})
              for m in (m1, m2)]
    torch.testing.assert_close(losses, torch.cat(single), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_projection_meets_budget_exactly(seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(500, generator=g, dtype=torch.float64) * 3
    for keep in (0.1, 0.5, 0.93):
        q = project(p, keep * 500)
        assert abs(float(q.sum()) - keep * 500) < 1e-9
        assert float(q.min()) >= 0 and float(q.max()) <= 1
        # order is preserved (it is a shift then a clamp)
        assert torch.all((p[:, None] > p[None, :]) <= (q[:, None] >= q[None, :]))


def test_estimator_is_unbiased_on_a_toy_objective():
    """Average of the estimator over many draws equals the exact gradient (enumerated over all 2^n masks)."""
    torch.manual_seed(0)
    p = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def loss(m):  # nonlinear in the mask
        return (m * c).sum(-1) ** 2 + m.prod(-1)

    exact = torch.zeros(3, dtype=torch.float64)
    for bits in itertools.product([0.0, 1.0], repeat=3):
        m = torch.tensor(bits, dtype=torch.float64)
        prob = torch.prod(torch.where(m > 0, p, 1 - p))
        exact += loss(m) * prob * (m - p) / (p * (1 - p))
    k, draws = 4, 40000
    total = torch.zeros(3, dtype=torch.float64)
    for _ in range(draws // 100):
        m = torch.bernoulli(p.expand(100, k, 3))
        losses = loss(m)
        for b in range(100):
            total += pg_gradient(m[b], losses[b], p, float(losses[b].mean()), normalized=False)
    est = total / draws
    torch.testing.assert_close(est, exact, rtol=0.05, atol=0.03)


def test_policy_converges_to_the_known_optimum():
    """Keep 3 of 8 structures with costs c: the optimum keeps the 3 cheapest."""
    c = torch.tensor([[0.9, 0.1, 0.8, 0.3, 0.7, 0.05, 0.6, 0.5]], dtype=torch.float64)
    cfg = PolicyConfig(keep=3 / 8, steps=600, samples=4, lr=0.05, normalized=True, seed=0)
    policy = BernoulliPolicy({ATTN: torch.full((1, 8), 3 / 8, dtype=torch.float64)}, cfg)
    for _ in range(cfg.steps):
        policy.step(lambda m: (m[ATTN] * c).sum((-1, -2)) + torch.randn(m[ATTN].shape[0], dtype=torch.float64) * 0.01)
        assert abs(float(policy.state.probs[ATTN].sum()) - 3.0) < 1e-9
    kept = topk_keep(policy.state.probs[ATTN], 3 / 8)
    assert kept.flatten().nonzero().flatten().tolist() == [1, 3, 5]


def test_metric_init_has_the_keep_ratio_and_follows_scores(windows):
    model = make_tiny(layers=3)
    stats = activation_stats(model, windows, progress=False)
    scores = structure_scores(model, parse("mul(abs(W), sqrt(X))"), stats)
    lay = Layout.of(model)
    assert scores[ATTN].shape == (3, 2) and scores[MLP].shape == (3, 128)
    probs = init_probs("metric", 0.7, lay, scores)
    for t in (ATTN, MLP):
        assert abs(float(probs[t].mean()) - 0.7) < 1e-9
        for row in range(3):  # each layer keeps the ratio, monotone in its scores
            assert abs(float(probs[t][row].mean()) - 0.7) < 1e-9
            order_s = torch.argsort(scores[t][row])
            assert torch.all(probs[t][row][order_s].diff() >= -1e-12)
    assert abs(float(init_probs("random", 0.3, lay)[MLP].mean()) - 0.3) < 1e-9


def test_topk_keeps_one_per_layer():
    p = torch.tensor([[0.9, 0.8], [0.1, 0.05], [0.7, 0.6]])
    m = topk_keep(p, 0.5)
    assert int(m.sum()) == 3 and m.any(1).all()


def test_saved_model_reloads_with_transformers(tmp_path, windows):
    from transformers import AutoModelForCausalLM

    model = make_tiny(layers=3)
    lay = Layout.of(model)
    policy = optimise(model, init_probs("const", 0.5, lay), PolicyConfig(keep=0.5, steps=3), windows,
                      batch_size=2, progress=False)
    masks = policy.hard_masks()
    before = count_params(model)
    shapes = slice_model(model, masks)
    after = count_params(model)
    removed = before["prunable"] - after["prunable"]
    assert removed == int((~masks[ATTN]).sum()) * lay.attn_group_params + int((~masks[MLP]).sum()) * lay.mlp_channel_params
    save_structural(model, None, tmp_path / "pruned")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", trust_remote_code=True)
    assert sum(p.numel() for p in loaded.parameters()) == after["total"]
    assert [l.mlp.down_proj.in_features for l in loaded.model.layers] == [s["intermediate_size"] for s in shapes]
    with torch.no_grad():
        torch.testing.assert_close(loaded(windows).logits, model(windows).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn_from", ["kv", "out", "qkv", "all"])
@pytest.mark.parametrize("mlp_from", ["out", "in", "all"])
def test_structure_score_reductions(attn_from, mlp_from, windows):
    model = make_tiny(layers=2)
    stats = activation_stats(model, windows, progress=False)
    s = structure_scores(model, parse("abs(W)"), stats, attn_from, mlp_from)
    assert s[ATTN].shape == (2, 2) and s[MLP].shape == (2, 128)
    # with |W| the score of a KV group is the sum of |W| over exactly the weights it names
    layer = model.model.layers[0].self_attn
    k = layer.k_proj.weight.abs().sum(1).view(2, -1).sum(1)
    v = layer.v_proj.weight.abs().sum(1).view(2, -1).sum(1)
    o = layer.o_proj.weight.abs().sum(0).view(2, -1).sum(1)
    q = layer.q_proj.weight.abs().sum(1).view(2, -1).sum(1)
    expected = {"kv": k + v, "out": o, "qkv": q + k + v, "all": q + k + v + o}[attn_from]
    torch.testing.assert_close(s[ATTN][0].float(), expected, rtol=1e-5, atol=1e-5)


def test_official_preset_values_and_explicit_overrides():
    from prunerzero.errors import UserError
    from prunerzero.pipeline import (
        STRUCTURAL_PRESETS,
        StructuralConfig,
        structural_config,
    )

    cfg = structural_config("official-pg")
    assert (cfg.metric, cfg.attn_score, cfg.mlp_score, cfg.init) == ("wanda", "out", "out", "metric")
    assert (cfg.init_nsamples, cfg.init_seqlen, cfg.samples, cfg.batch_size, cfg.calib_seqlen) == (32, 1024, 2, 8, 128)
    assert (cfg.lr, cfg.nsamples, cfg.eval_windows, cfg.eval_seqlens) == (2e-3, 0, 320, "128")
    assert cfg.steps == StructuralConfig.steps  # the step count is the user's budget, not part of the preset
    over = structural_config("official-pg", lr=0.02, steps=7, eval_windows=None)
    assert (over.lr, over.steps, over.eval_windows, over.batch_size) == (0.02, 7, 320, 8)
    assert structural_config() == StructuralConfig()
    assert set(STRUCTURAL_PRESETS) == {"official-pg", "official-pg-ls"}
    with pytest.raises(UserError, match="unknown structural preset 'nope': use official-pg"):
        structural_config("nope")


def test_the_best_measured_preset_is_the_measured_cell():
    """``--preset official-pg-ls`` at 300 steps is exactly the grid cell behind its numbers (official/lr0.02+ls)."""
    from conftest import REPO

    from prunerzero.results import load_grid
    from prunerzero.pipeline import structural_config

    grid = load_grid(REPO / "grids" / "structural-official-lr-cpu.yaml")
    (method,) = [m for m in grid.methods if m.name == "official/lr0.02+ls"]
    for seed in grid.seeds:
        assert method.structural_config(0.2, seed) == structural_config("official-pg-ls", steps=300, sparsity=0.2,
                                                                        seed=seed)


def test_cli_defaults_come_from_structural_config():
    from prunerzero.cli import build_parser
    from prunerzero.cli.structural import STRUCTURAL_FIELDS
    from prunerzero.pipeline import StructuralConfig, structural_config

    args = build_parser().parse_args(["structural", "--preset", "none"])
    cfg = structural_config(None, uniform=args.uniform or None,
                            **{f: getattr(args, n) for n, f in STRUCTURAL_FIELDS.items()})
    assert cfg == StructuralConfig()
    args = build_parser().parse_args(["structural"])           # the default: the best measured preset
    assert args.preset == "official-pg-ls"
    cfg = structural_config(args.preset, **{f: getattr(args, n) for n, f in STRUCTURAL_FIELDS.items()})
    assert (cfg.steps, cfg.lr, cfg.reconstruct, cfg.attn_score, cfg.eval_windows) == (300, 0.02, True, "out", 320)
    args = build_parser().parse_args(["structural", "--no-reconstruct", "--steps", "50"])
    cfg = structural_config(args.preset, **{f: getattr(args, n) for n, f in STRUCTURAL_FIELDS.items()})
    assert (cfg.steps, cfg.lr, cfg.reconstruct) == (50, 0.02, False)
    args = build_parser().parse_args(["structural", "--preset", "official-pg", "--lr", "0.05", "--uniform"])
    cfg = structural_config(args.preset, uniform=args.uniform or None,
                            **{f: getattr(args, n) for n, f in STRUCTURAL_FIELDS.items()})
    assert (cfg.lr, cfg.batch_size, cfg.uniform, cfg.attn_score) == (0.05, 8, True, "out")


def test_uniform_widths_meet_the_budget():
    from prunerzero.prune.structural import uniform_keep, uniform_widths

    smol = Layout(layers=30, kv_heads=3, q_per_kv=3, head_dim=64, hidden=576, intermediate=1536)
    w = uniform_widths(smol, 0.8)
    assert w == {ATTN: 2, MLP: 1297}
    kept = 30 * (w[ATTN] * smol.attn_group_params + w[MLP] * smol.mlp_channel_params)
    assert abs(1 - kept / smol.prunable_params() - 0.2) < 1e-3
    p = {ATTN: torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 0.3]]), MLP: torch.tensor([[0.3, 0.2, 0.1, 0.9]] * 2)}
    m = uniform_keep(p, {ATTN: 2, MLP: 1})
    assert m[ATTN].tolist() == [[False, True, True], [True, False, True]]
    assert m[MLP].tolist() == [[False, False, False, True]] * 2


def test_uniform_widths_save_a_stock_llama_config(tmp_path, windows):
    import json

    from transformers import AutoModelForCausalLM

    from prunerzero.prune.structural import uniform_keep, uniform_widths

    model = make_tiny(layers=3)
    lay = Layout.of(model)
    probs = init_probs("random", 0.6, lay, seed=1)
    widths = uniform_widths(lay, 0.6)
    shapes = slice_model(model, uniform_keep(probs, widths))
    assert all(s == shapes[0] for s in shapes) and shapes[0]["num_key_value_heads"] == widths[ATTN]
    assert save_structural(model, None, tmp_path / "u") is False
    cfg = json.loads((tmp_path / "u" / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "auto_map" not in cfg and "layer_shapes" not in cfg
    assert (cfg["num_key_value_heads"], cfg["intermediate_size"]) == (widths[ATTN], widths[MLP])
    assert not (tmp_path / "u" / "modeling_pruned_llama.py").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "u")  # no trust_remote_code
    assert type(loaded).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(loaded(windows).logits, model(windows).logits, rtol=1e-5, atol=1e-5)


def _speed_benchmark():
    """benchmarks/structural_speed.py as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "structural_speed.py"
    spec = importlib.util.spec_from_file_location("structural_speed", path)
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    return speed


def test_speed_harness_runs_on_a_tiny_model():
    speed = _speed_benchmark()
    rows = speed.run(lambda: make_tiny(layers=2), [0.3], prefill_len=8, batches=[1, 2], repeats=2, warmup=1,
                     decode_tokens=3, log=lambda _: None)
    assert [(r["model"], r["batch"]) for r in rows] == [(m, b) for m in ("dense", "per-layer", "uniform")
                                                        for b in (1, 2)]
    assert rows[0]["removed"] == 0 and all(0.2 < r["removed"] < 0.4 for r in rows[2:])
    assert all(r["prefill"]["runs"] == 2 and r["decode"]["tokens_per_s"] > 0 for r in rows)
    assert all((r["prefill_tokens"], r["repeats"], r["warmup"], r["decode_tokens"]) == (8, 2, 1, 3) for r in rows)
    rows = [{**r, "provenance": {"command": "x", "device": "cpu"}} for r in rows]
    text = speed.render(rows, {"model": "tiny", "notes": ["a note"]})
    assert text.count("\n| ") == 8 and text.endswith("\n\na note\n")  # header, rule, six rows, the note
    assert "Command: `x`" in text and "Hardware: cpu. Prefill: 8 tokens" in text
    again = speed.run(lambda: make_tiny(layers=2), [0.3], prefill_len=8, batches=[1, 2], repeats=2, warmup=1,
                      decode_tokens=3, log=lambda _: None, skip={speed.row_id("uniform", 0.3, 2, 8, 3)})
    assert [(r["model"], r["batch"]) for r in again] == [(r["model"], r["batch"]) for r in rows[:-1]]


def test_speed_harness_measures_memory_exactly_on_a_tiny_model():
    speed = _speed_benchmark()
    rows = speed.run(lambda: make_tiny(layers=2), [0.3], prefill_len=8, batches=[1, 2], repeats=1, warmup=0,
                     decode_tokens=3, log=lambda _: None, what="memory")
    dense = make_tiny(layers=2)
    cfg = dense.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    # fp32 keys and values of every layer, batch x kv heads x (16-token prompt + 3 steps) x head_dim
    kv = {b: cfg.num_hidden_layers * 2 * b * cfg.num_key_value_heads * 19 * head_dim * 4 for b in (1, 2)}
    weights = 4 * (sum(p.numel() for p in dense.parameters()) + sum(b.numel() for b in dense.buffers()))
    by = {(r["model"], r["batch"]): r["memory"] for r in rows}
    assert all(r["what"] == "memory" and "prefill" not in r for r in rows)
    assert by[("dense", 1)]["weights_bytes"] == by[("dense", 2)]["weights_bytes"] == weights
    assert by[("dense", 1)]["kv_cache_bytes"] == kv[1] and by[("dense", 2)]["kv_cache_bytes"] == kv[2]
    assert all(m["kv_tokens"] == 19 and m["prefill_peak_bytes"] is None for m in by.values())
    for kind in ("per-layer", "uniform"):
        assert by[(kind, 1)]["weights_bytes"] < weights and by[(kind, 1)]["kv_cache_bytes"] <= kv[1]
    timing = speed.run(lambda: make_tiny(layers=2), [0.3], prefill_len=8, batches=[1], repeats=1, warmup=0,
                       decode_tokens=3, log=lambda _: None)
    both = [{**r, "provenance": {"command": "x", "device": "cpu"}} for r in timing + rows]
    text = speed.render(both, {"model": "tiny"})
    assert text.count("## Memory") == 1 and text.count("\n| ") == 2 + 3 + 2 + 6   # speed table, memory table
    assert speed.row_id("dense", 0, 1, 8, 3, "memory") == "memory|" + speed.row_id("dense", 0, 1, 8, 3)


def test_compensation_refits_kept_columns_lowers_the_error_and_slices_exactly(windows):
    """--reconstruct: the removed structures' o_proj / down_proj columns become zero, the kept ones are refit; the
    compensated model is closer to the dense one on the calibration windows than plain removal, each layer's
    output error drops, and slicing afterwards computes exactly the compensated model."""
    from prunerzero.prune.structural import compensate
    from prunerzero.prune.structural.compensate import kept_columns

    dense = make_tiny(layers=3)
    lay = Layout.of(dense)
    masks = random_masks(lay, seed=1)
    with torch.no_grad():
        ref = dense(windows).logits

    def masked_logits(model):
        hooks = StructureMasks(model)
        hooks.set(masks[ATTN][None].float(), masks[MLP][None].float())
        with torch.no_grad():
            out = model(windows).logits
        hooks.remove()
        return out

    plain = masked_logits(dense)
    model = make_tiny(layers=3)
    errors = compensate(model, masks, windows, progress=False)
    assert set(errors) == {f"layers.{i}.{n}" for i in range(3) for n in ("o", "down")}
    assert all(0 <= e < 1 for e in errors.values())
    for i, (blk, blk_d) in enumerate(zip(model.model.layers, dense.model.layers)):
        cols = kept_columns(model, masks, i)
        for lin, lin_d, keep in ((blk.self_attn.o_proj, blk_d.self_attn.o_proj, cols["o"]),
                                 (blk.mlp.down_proj, blk_d.mlp.down_proj, cols["down"])):
            assert (lin.weight[:, ~keep] == 0).all()
            assert not torch.equal(lin.weight[:, keep], lin_d.weight[:, keep])
        assert torch.equal(blk.self_attn.q_proj.weight, blk_d.self_attn.q_proj.weight)   # rows are not touched
    comp = masked_logits(model)
    assert (comp - ref).norm() < (plain - ref).norm()
    slice_model(model, masks)
    with torch.no_grad():
        torch.testing.assert_close(model(windows).logits, comp, rtol=1e-4, atol=1e-5)


def test_reconstruct_is_its_own_cell_and_leaves_older_cell_keys_alone():
    """``reconstruct: true`` makes another cell; at its default the key is the one committed rows were written with
    (tests/test_results.py re-renders those grids from their rows)."""
    import dataclasses
    import hashlib
    import json

    from prunerzero.results import Method
    from prunerzero.results.grid import STRUCTURAL_CELL_FIELDS

    plain = Method("x", "wanda", "oneshot", "structural", (("preset", "official-pg"),))
    rec = Method("x", "wanda", "oneshot", "structural", (("preset", "official-pg"), ("reconstruct", True)))
    assert rec.config_key != plain.config_key
    cfg = dataclasses.asdict(plain.structural_config(0.5, 0))
    old = {k: v for k, v in cfg.items() if k not in STRUCTURAL_CELL_FIELDS and k not in ("reconstruct", "curve_every")}
    assert plain.config_key == hashlib.sha1(json.dumps(old, sort_keys=True).encode()).hexdigest()[:8]
