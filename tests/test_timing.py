"""prunerzero.timing.timed: the one timing loop (warm-up, setup outside the timed region, median of runs)."""
import pytest

from prunerzero.timing import timed


def test_timed_counts_runs_and_keeps_setup_untimed():
    calls, setups = [], []
    out = timed(lambda: calls.append(1), "cpu", repeats=5, warmup=2, setup=lambda: setups.append(1))
    assert len(calls) == 7 and len(setups) == 7
    assert out["runs"] == 5
    assert 0 <= out["p25_s"] <= out["median_s"] <= out["p75_s"]


def test_timed_single_run_and_bad_counts():
    out = timed(lambda: None, "cpu", repeats=1, warmup=0)
    assert out["runs"] == 1 and out["p25_s"] == out["median_s"] == out["p75_s"]
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        timed(lambda: None, "cpu", repeats=0)
