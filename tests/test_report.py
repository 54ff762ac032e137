"""prunerzero.report helpers that the notebooks and benchmarks print."""
import torch

from prunerzero.calibration.cache import Stats
from prunerzero.report import term_scales


def test_term_scales_order_does_not_depend_on_where_the_statistics_came_from():
    """Freshly computed statistics list modules in model order, cached ones (safetensors) alphabetically; the table
    is the same either way, one row per module type, and averages the per-layer medians."""
    g = torch.Generator().manual_seed(0)
    model_order = {}
    for i in range(2):
        for m in ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj"):
            x = torch.rand(8, generator=g) * (i + 1)
            model_order[f"layers.{i}.{m}"] = {"X": x, "G2": torch.rand(4, 8, generator=g) * 0.01}
    cached_order = dict(sorted(model_order.items()))
    a, b = term_scales(Stats(model_order)), term_scales(Stats(cached_order))
    assert a.equals(b) and list(a.module) == sorted(a.module) and len(a) == 4
    q = a.set_index("module").loc["self_attn.q_proj", "median X"]
    want = (model_order["layers.0.self_attn.q_proj"]["X"].double().median()
            + model_order["layers.1.self_attn.q_proj"]["X"].double().median()) / 2
    assert abs(q - float(want)) < 1e-12
