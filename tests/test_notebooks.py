"""The three notebooks run top to bottom, headless, on a tiny model and a small search run made here."""

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOKS = ["inspect_search", "metric_principles", "plug_metric"]


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    from prunerzero.cli import main

    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["search", "--space", str(REPO / "search_spaces/tiny.yaml"), "--model", str(tiny_model_dir),
                 "--seqlen", "64", "--nsamples", "4", "--eval-windows", "2", "--generations", "2",
                 "--population", "6", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_headless(name, tiny_run, tiny_model_dir, monkeypatch):
    for key, value in {"PZ_RUN": str(tiny_run), "PZ_MODEL": str(tiny_model_dir), "PZ_SEQLEN": "64",
                       "PZ_NSAMPLES": "4", "PZ_EVAL_WINDOWS": "2", "PZ_STEPS": "2", "PZ_MAX_OVERLAP": "8",
                       "PZ_TRANSFER_MODELS": str(tiny_model_dir), "PZ_TRANSFER_SEQLEN": "64",
                       "PZ_TRANSFER_NSAMPLES": "4",
                       "MPLBACKEND": "Agg"}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert all(c.get("execution_count") for c in code)
    if name == "inspect_search":  # its outputs come from this run, not from the committed one
        from prunerzero.search.table import equations

        best = equations(tiny_run, 1).iloc[0]
        assert f"{best.formula}  ppl {best.ppl:.3f}" in _text(nb)


def _text(nb) -> str:
    return "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                   for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_committed_notebooks_carry_real_outputs():
    """The committed copies were executed on SmolLM2 (so they read well on GitHub)."""
    for name in NOTEBOOKS:
        nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.get("execution_count") for c in code), f"{name} has unexecuted cells"
        text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                       for c in code for o in c.get("outputs", []))
        assert "Traceback" not in text


def test_inspect_notebook_on_the_committed_run(monkeypatch):
    """inspect_search needs no model: it runs on the committed SmolLM2 search and agrees with `prunerzero show`."""
    run = REPO / "results" / "search-gpu-prunerzero"
    monkeypatch.setenv("PZ_RUN", str(run))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(REPO / "notebooks" / "inspect_search.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    from prunerzero.search.table import equations

    best = equations(run, 1).iloc[0]  # what `prunerzero show` puts first
    assert f"best formula in both: {best.formula}  ppl {best.ppl:.3f}" in _text(nb)
