"""One mask path: the masks a search scores a formula with are exactly the masks a one-shot prune applies."""
import pytest
import torch

from conftest import make_tiny
from prunerzero.calibration import activation_stats, gradient_stats
from prunerzero.metric.expr import parse
from prunerzero.models import all_prunable
from prunerzero.prune.masks import Pattern, WeightSnapshot
from prunerzero.prune.run import metric_masks, prune_model


@pytest.mark.parametrize("formula", ["mul(abs(W), sqrt(X))", "mul(sqrt(sub(X, G)), abs(W))",
                                     "mul(add(rown(abs(W)), coln(abs(W))), sqrt(sqrt(X)))", "abs(W)"])
@pytest.mark.parametrize("pattern", [Pattern(0.5, "row"), Pattern(0.5, "layer"), Pattern(n=2, m=4)],
                         ids=["row", "layer", "2:4"])
def test_one_shot_prune_applies_the_search_masks(formula, pattern, windows):
    model = make_tiny()
    node = parse(formula)
    grads = gradient_stats(model, windows, progress=False)
    stats = activation_stats(model, windows, progress=False).merged(grads)
    linears = all_prunable(model)
    search_masks = metric_masks(node, linears, stats, pattern)
    snap = WeightSnapshot(linears)
    prune_model(model, node, pattern, windows, grads, sequential=False, progress=False)
    for key, lin in linears.items():
        applied = (lin.weight == 0) & (snap.saved[key] != 0)
        assert torch.equal(applied, search_masks[key]), key


@pytest.mark.parametrize("formula", ["mul(abs(W), sqrt(X))", "mul(sqrt(sub(X, G)), abs(W))"])
def test_one_shot_prune_from_cached_statistics_equals_a_calibration_pass(formula, tiny_model_dir, tmp_path):
    """``pipeline.prune(sequential=False)`` reads the dense X from the statistics cache instead of running the
    calibration windows again: the pruned weights are bit-identical to a prune that runs them."""
    from prunerzero.models import load_model
    from prunerzero.pipeline import CalibConfig, calibration_windows, one_shot_stats, prune

    cfg = CalibConfig(nsamples=4, seed=0, cache=str(tmp_path / "cache"))
    lm = load_model(str(tiny_model_dir), seqlen=32)
    linears = all_prunable(lm.model)
    snap = WeightSnapshot(linears)
    prune(lm, formula, Pattern(0.5, "row"), cfg, sequential=False, progress=False)
    cached = {k: lin.weight.clone() for k, lin in linears.items()}
    snap.restore()
    grads = one_shot_stats(lm, cfg, need_x=False, progress=False)
    prune_model(lm.model, parse(formula), Pattern(0.5, "row"), calibration_windows(lm, cfg), grads,
                sequential=False, progress=False)
    for key, lin in linears.items():
        assert torch.equal(lin.weight, cached[key]), key


def test_one_shot_prune_from_cached_statistics_on_real_smollm2(smollm2, tmp_path):
    """The same on the real SmolLM2-135M (all 210 prunable layers, real activation scales, ties included)."""
    from prunerzero.pipeline import CalibConfig, calibration_windows, prune

    cfg = CalibConfig(nsamples=2, seed=0, cache=str(tmp_path / "cache"))
    linears = all_prunable(smollm2.model)
    snap = WeightSnapshot(linears)
    try:
        prune(smollm2, "wanda", Pattern(0.5, "row"), cfg, sequential=False, progress=False, seqlen=128)
        cached = {k: lin.weight == 0 for k, lin in linears.items()}
        snap.restore()
        prune_model(smollm2.model, parse("mul(abs(W), sqrt(X))"), Pattern(0.5, "row"),
                    calibration_windows(smollm2, cfg, 128), None, sequential=False, progress=False)
        for key, lin in linears.items():
            assert torch.equal(lin.weight == 0, cached[key]), key
    finally:
        snap.restore()
