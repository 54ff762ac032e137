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
