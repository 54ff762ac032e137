"""benchmarks/sparse24.py on a tiny model on the CPU: valid 2:4 masks, the harness runs, the table says why not."""
import sys
from types import SimpleNamespace

import torch
from conftest import REPO, make_tiny

from prunerzero.export import is_24
from prunerzero.models import all_prunable

sys.path.insert(0, str(REPO / "benchmarks"))
import sparse24  # noqa: E402


def test_cpu_run_prunes_24_and_reports_not_measured():
    model = make_tiny()
    with torch.no_grad():
        dense = model(torch.arange(32).view(1, 32)).logits
    args = SimpleNamespace(prefill=2048, decode=64, decode_batch=2, warmup=5, runs=20)
    row = sparse24.bench_model("tiny", model, args, "cpu", on_gpu=False)
    assert row["layers_2to4"] == 14 and all(is_24(lin.weight) for lin in all_prunable(model).values())
    assert row["prefill_tokens"] == 64 and row["decode_steps"] == 2 and row["dense_prefill_tps"] > 0
    assert row["dense_decode_tps"] > 0
    if torch.cuda.is_available():
        return
    assert row["converted"] == 0 and "CUDA" in row["sparse_skipped"]
    with torch.no_grad():
        assert not torch.equal(model(torch.arange(32).view(1, 32)).logits, dense)  # the masks were applied
    text = sparse24.table([row], on_gpu=False, device_name="CPU")
    assert sparse24.NOT_MEASURED in text and "CUDA" in text
    rows = [{**row, "on_gpu": False, "provenance": {"device": "x86_64 CPU, 1 threads", "command": "python x.py"}}]
    text = sparse24.render(rows, {})   # what --out writes from the rows (and --render-only re-renders)
    assert text.startswith("# 2:4 speed") and "CUDA-only" in text and "Command: `python x.py`" in text
    assert f"2:4 semi-structured sparsity, x86_64 CPU, 1 threads ({sparse24.NOT_MEASURED})" in text
