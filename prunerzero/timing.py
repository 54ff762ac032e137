"""One way to time code: untimed warm-up runs, then the median (and quartiles) of timed runs, CUDA synchronised
around every timed region. Used by the structural latency, the structural speed and the 2:4 speed benchmarks."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device) -> None:
    """Wait for queued kernels on a CUDA ``device`` (a no-op elsewhere)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device, repeats: int = 20, warmup: int = 2,
          setup: Callable[[], object] | None = None) -> dict:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; ``setup`` (untimed) runs before every
    call. Returns median_s, p25_s, p75_s (seconds) and runs."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    times = []
    for i in range(warmup + repeats):
        if setup is not None:
            setup()
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_s": statistics.median(times), "p25_s": q[0], "p75_s": q[2], "runs": len(times)}
