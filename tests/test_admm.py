"""Exact least-squares reconstruction after a mask (``--update lsq``) and ADMM pruning with the metric's gradual
mask (``--update admm``): exactness against a direct solve, valid masks, and lower layer output error than OBS and
SparseGPT on real SmolLM2 layers with real calibration inputs."""
from __future__ import annotations

import pytest
import torch

from conftest import REPO, make_tiny
from prunerzero import data
from prunerzero.calibration import BlockRunner, InputStats
from prunerzero.errors import UserError
from prunerzero.metric.expr import parse
from prunerzero.models import all_prunable, decoder_layers, prunable_linears
from prunerzero.prune.admm import admm_prune, lsq_update, ramp_mask
from prunerzero.prune.allocation import mask_with_count
from prunerzero.prune.masks import Pattern, mask_from_scores, parse_pattern
from prunerzero.prune.run import prune_model
from prunerzero.prune.sparsegpt import obs_update, sparsegpt_prune

WANDA = parse("mul(abs(W), sqrt(X))")
TWO_FOUR = parse_pattern(pattern="2:4")
PATTERNS = [Pattern(0.5, "row"), Pattern(0.7, "row"), Pattern(0.5, "layer"), TWO_FOUR, parse_pattern(pattern="4:8")]


def _correlated(seed=0, tokens=512, cols=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=g) @ torch.randn(cols, cols, generator=g)
    x[:, 5] = 0                                                    # a dead input, as real layers have
    return x, 2 * x.t() @ x / tokens


def _direct(w: torch.Tensor, H: torch.Tensor, mask: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Per row, the kept weights' least-squares values by a direct solve of the damped normal equations (the
    damping of ``lsq_update``: percdamp * diag(H) added to H), in float64."""
    H = H.double()
    d = torch.diag(H)
    Hd = H + percdamp * torch.diag(d)
    out = torch.zeros_like(w, dtype=torch.float64)
    live = d > 0
    for i in range(w.shape[0]):
        s = ~mask[i] & live
        rhs = (w[i].double() * live) @ Hd
        out[i, s] = torch.linalg.solve(Hd[s][:, s], rhs[s])
    return out.float()


@pytest.mark.parametrize("pattern", [Pattern(0.5, "row"), TWO_FOUR])
def test_lsq_matches_a_direct_solve_and_beats_obs(pattern):
    x, H = _correlated()
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(1))
    mask = mask_from_scores(w.abs() * torch.diag(H).sqrt().view(1, -1), pattern)
    new = lsq_update(w, H, mask, iters=300)
    assert torch.equal(new[mask], torch.zeros(int(mask.sum())))
    assert (new[:, 5] == 0).all()                                  # dead input: weight 0
    ref = _direct(w, H, mask, 0.01)
    assert torch.allclose(new, ref, atol=1e-4, rtol=1e-3), float((new - ref).abs().max())
    err = lambda v: float(((v - w) @ x.t()).norm())                 # noqa: E731
    assert err(new) < err(obs_update(w, H, mask))                   # the optimum for the mask; OBS is one sweep
    with pytest.raises(UserError, match="mask shape"):
        lsq_update(w, H, mask[:, :32])


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_ramp_ends_on_the_exact_pattern_and_rises_monotonically(pattern):
    score = torch.rand(16, 64, generator=torch.Generator().manual_seed(2))
    score[0, :8] = 0.5                                             # ties
    assert torch.equal(ramp_mask(score, pattern, None, 1.0), mask_from_scores(score, pattern))
    counts = [int(ramp_mask(score, pattern, None, f).sum()) for f in (0.1, 0.4, 0.8, 1.0)]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    if pattern.is_nm:                                               # every partial mask lies inside the N:M one
        assert not (ramp_mask(score, pattern, None, 0.5) & ~mask_from_scores(score, pattern)).any()
    else:
        assert torch.equal(ramp_mask(score, pattern, 20, 1.0), mask_with_count(score, pattern, 20))


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_admm_prunes_exactly_the_pattern_and_beats_sparsegpt_on_a_correlated_layer(pattern):
    x, H = _correlated()
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    xs = torch.diag(H).view(1, -1)
    new, mask = admm_prune(w, H, pattern, lambda v: v.abs() * xs.sqrt())
    assert (new[mask] == 0).all() and (new[:, 5] == 0).all()     # pruned, and the dead input
    assert (new[~mask & (torch.arange(64) != 5)] != 0).all()      # the kept weights are kept
    if pattern.is_nm:
        assert (mask.view(32, -1, pattern.m).sum(-1) == pattern.n).all()
    elif pattern.group == "row":
        assert (mask.sum(1) == int(64 * pattern.sparsity)).all()
    else:
        assert int(mask.sum()) == int(w.numel() * pattern.sparsity)
    err = lambda v: float(((v - w) @ x.t()).norm())                 # noqa: E731
    assert err(new) < err(sparsegpt_prune(w, H, pattern, blocksize=16))
    with pytest.raises(UserError, match="ramp"):
        admm_prune(w, H, pattern, lambda v: v.abs(), iters=5, ramp=6)


@pytest.mark.real
def test_lsq_and_admm_lower_the_output_error_below_obs_and_sparsegpt_on_real_smollm2_layers(smollm2):
    """SmolLM2 block 0 and its real C4 calibration inputs (4 x 512 tokens), Wanda's metric: at 50%, 70% and 2:4,
    the exact reconstruction of Wanda's mask beats OBS on the same mask, and ADMM with Wanda's gradual mask beats
    SparseGPT, on ||(W' - W) X|| of every layer tried."""
    windows = data.calibration_windows(smollm2.tokenizer, nsamples=4, seqlen=512, seed=0)
    block = decoder_layers(smollm2.model)[0]
    linears = prunable_linears(block)
    names = ("self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj")
    inputs = {n: [] for n in names}
    hooks = {n: InputStats(linears[n], hessian=True) for n in names}
    taps = [linears[n].register_forward_hook(lambda _m, i, _o, n=n: inputs[n].append(i[0].detach().reshape(
        -1, i[0].shape[-1]))) for n in names]
    BlockRunner(smollm2.model, windows).run(block)
    for h in list(hooks.values()) + taps:
        h.remove()
    for n in names:
        x = torch.cat(inputs[n])
        w = linears[n].weight.detach().float()
        H, X = hooks[n].H, hooks[n].X.view(1, -1)
        err = lambda v: float(((v - w) @ x.t()).norm())             # noqa: E731
        for pattern in (Pattern(0.5), Pattern(0.7), TWO_FOUR):
            mask = mask_from_scores(w.abs() * X.sqrt(), pattern)
            lsq = lsq_update(w, H, mask)
            assert (lsq[mask] == 0).all(), n
            assert err(lsq) < 0.95 * err(obs_update(w, H, mask)), (n, str(pattern))
            new, amask = admm_prune(w, H, pattern, lambda v: v.abs() * X.sqrt())
            assert (new[amask] == 0).all(), n
            assert torch.equal(mask_from_scores(-amask.float(), pattern), amask)   # a valid mask of the pattern
            assert err(new) < 0.95 * err(sparsegpt_prune(w, H, pattern)), (n, str(pattern))


def test_admm_in_the_layer_loop_keeps_the_pattern_and_the_allocation(windows):
    dense = make_tiny()
    with torch.no_grad():
        ref = dense(windows).logits
    errs = {}
    for update in ("none", "obs", "lsq", "admm"):
        model = make_tiny()
        prune_model(model, WANDA, TWO_FOUR, windows, sequential=True, progress=False, update=update)
        for key, lin in all_prunable(model).items():
            assert ((lin.weight == 0).view(lin.out_features, -1, 4).sum(-1) >= 2).all(), (update, key)
        with torch.no_grad():
            errs[update] = float((model(windows).logits - ref).norm())
    assert errs["lsq"] < errs["none"] and errs["admm"] < errs["none"], errs
    model = make_tiny()
    keys = list(all_prunable(model))
    counts = {k: (3 if i % 2 else 9) for i, k in enumerate(keys)}
    pruned = prune_model(model, WANDA, Pattern(0.25), windows, progress=False, update="admm", counts=counts)
    lins = all_prunable(model)
    for k in keys:
        assert pruned[k] == counts[k] * lins[k].out_features
        assert ((lins[k].weight == 0).sum(1) >= counts[k]).all()
    with pytest.raises(UserError, match="permute does not go with update admm"):
        prune_model(make_tiny(), WANDA, TWO_FOUR, windows, update="admm", permute=True, progress=False)


@pytest.mark.real
@pytest.mark.parametrize("update", ["obs", "lsq", "admm"])
def test_update_cost_benchmark_times_each_update_on_one_real_block(update):
    """benchmarks/update_cost.py with one SmolLM2 block and one short window: the row every table is rendered from."""
    import argparse
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    import update_cost

    args = argparse.Namespace(device="cpu", nsamples=1, calib_seqlen=128, windows=1, seqlen=128, blocks=1,
                              threads=None, repeats=1, update=update)
    row = update_cost.measure(args)
    assert row["update"] == update and row["blocks updated"] == 1
    assert row["update s"] > 0 and row["factor MB"] > 0 and row["ppl (Wanda + update)"] < 1e4
    assert row["update / ppl, all 30 blocks (linear in blocks)"] == pytest.approx(30 * row["update / ppl"])
