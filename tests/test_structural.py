"""Structural stage on a tiny random LLaMA with grouped-query attention (4 heads, 2 KV heads)."""
import itertools

import pytest
import torch

from conftest import make_tiny
from prunerzero.calibration import activation_stats
from prunerzero.metric import parse
from prunerzero.prune.structural import (ATTN, MLP, BernoulliPolicy, Layout, PolicyConfig, StructureMasks,
                                         count_params, init_probs, masked_losses, optimise, pg_gradient, project,
                                         save_structural, slice_model, structure_scores, topk_keep)


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
