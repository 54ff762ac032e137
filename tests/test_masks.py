import pytest
import torch

from prunerzero.errors import UserError
from prunerzero.metric import parse
from prunerzero.models import all_prunable
from prunerzero.prune.masks import (MetricError, Pattern, WeightSnapshot, check_scores, mask_from_scores,
                                    parse_pattern)
from prunerzero.prune.run import metric_masks, prune_model
from prunerzero.calibration import Stats


@pytest.mark.parametrize("rows,cols,s", [(7, 40, 0.5), (5, 33, 0.3), (3, 64, 0.9)])
def test_row_mask_exact_count_per_row(rows, cols, s):
    score = torch.randn(rows, cols)
    mask = mask_from_scores(score, Pattern(s, "row"))
    assert mask.shape == score.shape and mask.dtype == torch.bool
    assert (mask.sum(1) == int(cols * s)).all()
    # the pruned weights are the lowest of their row
    for r in range(rows):
        assert score[r][mask[r]].max() <= score[r][~mask[r]].min()


def test_layer_mask_exact_count():
    score = torch.randn(9, 31)
    mask = mask_from_scores(score, Pattern(0.37, "layer"))
    assert int(mask.sum()) == int(score.numel() * 0.37)
    assert score[mask].max() <= score[~mask].min()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_valid(n, m):
    score = torch.randn(6, 8 * m)
    mask = mask_from_scores(score, parse_pattern(pattern=f"{n}:{m}"))
    groups = mask.view(6, 8, m)
    assert (groups.sum(-1) == n).all()
    vals = score.view(6, 8, m)
    assert (torch.where(groups, vals, -torch.inf).amax(-1) <= torch.where(~groups, vals, torch.inf).amin(-1)).all()


def test_ties_broken_by_lower_index_and_exact_count():
    score = torch.ones(4, 8)  # every weight ties
    row = mask_from_scores(score, Pattern(0.5, "row"))
    assert row[:, :4].all() and not row[:, 4:].any()
    nm = mask_from_scores(score, parse_pattern(pattern="2:4"))
    assert nm.view(4, 2, 4)[..., :2].all() and not nm.view(4, 2, 4)[..., 2:].any()
    layer = mask_from_scores(score, Pattern(0.5, "layer"))
    assert layer.view(-1)[:16].all() and not layer.view(-1)[16:].any()


def test_tie_breaking_is_independent_of_input_order_within_equal_values():
    # two rows with the same multiset of values in different order: exact count, lower index first among ties
    score = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 2.0, 1.0, 2.0]])
    mask = mask_from_scores(score, Pattern(0.5, "row"))
    assert mask.tolist() == [[True, True, True, True, False, False, False, False]]


@pytest.mark.parametrize("kwargs,msg", [
    ({"sparsity": 1.5}, "outside (0, 1)"), ({"sparsity": 0.0}, "outside (0, 1)"),
    ({"pattern": "4:2"}, "1 <= N < M"), ({"pattern": "4:4"}, "1 <= N < M"), ({"pattern": "2-4"}, "is not N:M"),
])
def test_bad_patterns(kwargs, msg):
    with pytest.raises(UserError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        parse_pattern(**kwargs)


def test_nm_needs_multiple_of_m():
    with pytest.raises(UserError, match="multiple of M"):
        mask_from_scores(torch.randn(3, 10), parse_pattern(pattern="2:4"))


def test_bad_scores_are_refused():
    w = torch.randn(3, 4)
    with pytest.raises(MetricError, match="NaN/Inf"):
        check_scores(torch.full((3, 4), float("nan")), w)
    with pytest.raises(MetricError, match="one score per weight"):
        check_scores(torch.randn(4, 3), w)


def test_prune_restore_is_bit_exact(tiny):
    linears = all_prunable(tiny)
    before = {k: l.weight.detach().clone() for k, l in linears.items()}
    snap = WeightSnapshot(linears)
    for _ in range(3):
        prune_model(tiny, parse("abs(W)"), Pattern(0.5, "row"), progress=False)
        assert any(not torch.equal(before[k], l.weight) for k, l in linears.items())
        snap.restore()
        assert all(torch.equal(before[k], l.weight) for k, l in linears.items())


def test_metric_nan_is_reported_with_layer(tiny):
    with pytest.raises(MetricError, match="layers.0.self_attn.q_proj"):
        prune_model(tiny, parse("mul(mul(W, 1e30), 1e30)"), Pattern(0.5, "row"), progress=False)


def test_metric_masks_match_prune_model(tiny):
    linears = all_prunable(tiny)
    masks = metric_masks(parse("abs(W)"), linears, Stats(), Pattern(0.5, "row"))
    prune_model(tiny, parse("abs(W)"), Pattern(0.5, "row"), progress=False)
    for k, lin in linears.items():
        assert torch.equal(lin.weight == 0, masks[k])  # random weights hold no exact zeros
        assert int(masks[k].sum()) == lin.weight.numel() // 2


@pytest.mark.parametrize("seed", range(5))
def test_lowest_k_equals_stable_sort(seed):
    from prunerzero.prune.masks import lowest_k

    g = torch.Generator().manual_seed(seed)
    for score in (torch.randn(9, 50, generator=g), torch.randint(0, 4, (9, 50), generator=g).float()):
        for k in (0, 1, 17, 25, 49, 50):
            ref = torch.zeros_like(score, dtype=torch.bool)
            ref.scatter_(1, torch.sort(score, dim=1, stable=True).indices[:, :k], True)
            assert torch.equal(lowest_k(score, k), ref)


def sorted_nm(score, n, m):
    """The reference N:M mask: the first n indices of a stable ascending sort of every group of m."""
    rows, cols = score.shape
    ref = torch.zeros(rows, cols // m, m, dtype=torch.bool)
    ref.scatter_(-1, torch.sort(score.reshape(rows, cols // m, m), dim=-1, stable=True).indices[..., :n], True)
    return ref.reshape(rows, cols)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 4), (4, 8), (1, 2), (8, 16), (5, 16), (2, 32)])
def test_nm_selection_equals_stable_sort(n, m):
    """The pairwise-rank N:M path (and the sort above PAIRWISE_MAX_M) gives the stable sort's mask, ties included."""
    g = torch.Generator().manual_seed(n * 100 + m)
    nan = torch.randn(5, 4 * m, generator=g)
    nan[nan > 0.8] = float("nan")   # only reachable without check_scores (e.g. a direct call): sorted, NaN last
    scores = [torch.randn(7, 4 * m, generator=g), torch.randint(0, 3, (7, 4 * m), generator=g).float(),
              torch.zeros(3, 2 * m), torch.tensor([[0.0, -0.0] * m]), nan,
              torch.randint(0, 3, (7, 4 * m), generator=g).to(torch.bfloat16)]
    for score in scores:
        got = mask_from_scores(score, parse_pattern(pattern=f"{n}:{m}"))
        assert torch.equal(got, sorted_nm(score, n, m))
        counts = got.view(score.shape[0], -1, m).sum(-1)
        assert torch.equal(counts, torch.full((score.shape[0], score.shape[1] // m), n))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nm_selection_on_cuda_equals_the_cpu_mask():
    g = torch.Generator().manual_seed(0)
    for score in (torch.randn(64, 256, generator=g), torch.randint(0, 3, (64, 256), generator=g).half()):
        for p in ("2:4", "4:8", "8:16"):
            got = mask_from_scores(score.cuda(), parse_pattern(pattern=p))
            want = mask_from_scores(score, parse_pattern(pattern=p))
            assert got.device.type == "cuda" and torch.equal(got.cpu(), want)
