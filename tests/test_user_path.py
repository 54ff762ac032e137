"""The user's path through the CLI only (search -> select -> prune --metric RUN -> eval), and what guards it: one
rule module for options that go together, destinations probed before any model loads, models checked before use,
defaults that match the protocol, and help that says what applies."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO

from prunerzero.cli import build_parser, main
from prunerzero.errors import UserError

TINY = ["--seqlen", "64", "--nsamples", "2", "--eval-windows", "1", "--batch-size", "1"]


def refused(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: a refusal must come before it."""
    def boom(*a, **k):
        raise AssertionError("a model was loaded before the refusal")
    import prunerzero.cli._common as common
    import prunerzero.models as models
    monkeypatch.setattr(models, "load_model", boom)
    monkeypatch.setattr(common, "load", boom)


# --------------------------------------------------------------------------------------------- the whole path
def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_search_select_prune_eval_through_the_cli(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """search (tiny space) -> select -> prune --metric RUN --save -> eval, and the pruned weights equal pruning with
    the selected formula's text."""
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--space", str(REPO / "search_spaces/tiny.yaml"), "--model", str(tiny_model_dir),
                 "--seqlen", "64", "--nsamples", "2", "--eval-windows", "1", "--generations", "1",
                 "--population", "4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("search-tiny-") and f"run directory: runs/{runs[0].name}" in printed
    run = f"runs/{runs[0].name}"
    assert refused(["prune", "--model", str(tiny_model_dir), "--metric", run, "--quiet"], capsys) == (
        f"error: {run} is a search run without a selection yet: run `prunerzero select {run}` first")

    assert main(["select", run, "--top", "2", "--patterns", "u", "--seeds", "0", "--mode", "oneshot", *TINY,
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / run / "selection.json").read_text())
    formula = record["chosen"]["formula"]
    assert f"chosen: {formula}" in out and f"prunerzero prune --metric {run}" in out
    assert (tmp_path / run / "selection.md").is_file() and (tmp_path / run / "selection" / "rows.jsonl").is_file()

    base = ["prune", "--model", str(tiny_model_dir), *TINY, "--skip-dense", "--quiet"]
    assert main(base + ["--metric", run, "--save", "by-run", "--json", "by-run.json"]) == 0
    assert main(base + ["--metric", formula, "--save", "by-text"]) == 0
    a, b = _weights(tmp_path / "by-run"), _weights(tmp_path / "by-text")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any((v == 0).float().mean() > 0.4 for k, v in a.items() if k.endswith("proj.weight"))
    payload = json.loads((tmp_path / "by-run.json").read_text())
    assert payload["metric"] == formula and payload["metric_source"] == run and payload["sequential"] is True
    capsys.readouterr()
    assert main(["eval", "--model", "by-run", "--seqlen", "64", "--eval-windows", "1", "--quiet"]) == 0
    assert "wikitext2 ppl" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- one rule module
def test_the_same_bad_combination_gets_the_same_message_through_cli_grid_and_space(tmp_path, capsys):
    from prunerzero.results import load_grid
    from prunerzero.search.space import load_space, validate
    from prunerzero.specs import ALLOCATION_NM

    cli = refused(["prune", "--allocation", "owl", "--pattern", "2:4", "--quiet"], capsys)
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"name": "g", "models": ["smollm2"], "patterns": ["2:4"],
                                    "methods": [{"name": "w", "formula": "wanda", "allocation": "owl"}]}))
    with pytest.raises(UserError) as from_grid:
        load_grid(grid)
    raw = load_space("alloc").raw
    raw["fitness"]["settings"] = [{"pattern": "2:4"}]
    with pytest.raises(UserError) as from_space:
        validate(raw)
    for message in (cli, str(from_grid.value), str(from_space.value)):
        assert ALLOCATION_NM in message
    # and the N:M sparsity rule, through the CLI and a space
    cli = refused(["prune", "--sparsity", "0.6", "--pattern", "2:4", "--quiet"], capsys)
    raw = load_space("quick").raw
    raw["fitness"]["settings"] = [{"pattern": "2:4", "sparsity": 0.6}]
    with pytest.raises(UserError) as from_space:
        validate(raw)
    core = "sparsity 0.6 does not apply to the N:M pattern 2:4 (it prunes 2 of every 4): drop one of the two"
    assert core in cli and core in str(from_space.value)


def test_a_space_is_not_mutated_by_overrides():
    from prunerzero.search.space import load_space

    space = load_space("quick")
    before = json.dumps(space.raw, sort_keys=True)
    other = space.with_overrides(gp={"generations": 1}, fitness={"eval_windows": 3})
    assert json.dumps(space.raw, sort_keys=True) == before
    assert other.gp["generations"] == 1 and other.fitness["eval_windows"] == 3
    with pytest.raises(UserError, match="fitness.eval_windows"):
        space.with_overrides(fitness={"eval_windows": 0})


# --------------------------------------------------------------------------------------------- destinations
@pytest.mark.parametrize("argv,flag", [
    (["prune", "--save", "/proc/pz-x"], "--save"),
    (["prune", "--json", "/proc/pz-x.json"], "--json"),
    (["prune", "--cache-dir", "/proc/pz-x"], "--cache-dir"),
    (["eval", "--json", "/proc/pz-x.json"], "--json"),
    (["structural", "--save", "/proc/pz-x"], "--save"),
    (["structural", "--json", "/proc/pz-x/r.json"], "--json"),
    (["search", "--space", "tiny", "--out", "/proc/pz-x"], "--out"),
    (["search", "--space", "tiny", "--cache-dir", "/proc/pz-x"], "--cache-dir"),
    (["select", "results/search-gpu-prunerzero", "--out", "/proc/pz-x"], "--out"),
])
def test_every_write_destination_is_refused_before_any_model_loads(argv, flag, capsys, no_model_load):
    line = refused(argv + ["--quiet"], capsys)
    assert flag in line and "/proc/pz-x" in line


def test_a_save_folder_that_is_a_file_or_not_empty_is_refused(tmp_path, capsys, no_model_load):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "not empty" in refused(["prune", "--save", str(tmp_path / "full"), "--quiet"], capsys)
    assert "is a folder" in refused(["prune", "--json", str(tmp_path), "--quiet"], capsys)


@pytest.mark.parametrize("argv,ok", [
    (["--init-nsamples", "-1"], False), (["--latency-repeats", "-1"], False), (["--latency-seqlen", "0"], False),
    (["--steps", "0"], False), (["--samples", "1"], False), (["--lr", "0"], False), (["--sparsity", "1"], False),
    (["--init-nsamples", "0"], True), (["--latency-repeats", "0"], True), (["--curve-every", "0"], True),
])
def test_structural_ranges_follow_their_help(argv, ok, capsys):
    """0 is documented for --init-nsamples (the policy's windows) and --latency-repeats (not timed): accepted."""
    parser = build_parser()
    if ok:
        args = parser.parse_args(["structural", *argv])
        assert getattr(args, argv[0][2:].replace("-", "_")) == 0
    else:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["structural", *argv])
        assert exc.value.code == 2 and argv[0] in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- models
def test_an_encoder_folder_is_refused_from_its_config(tmp_path, capsys):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "bert")
    capsys.readouterr()
    line = refused(["eval", "--model", str(tmp_path / "bert"), "--quiet"], capsys)
    assert "BertModel" in line and "encoder" in line and "decoder-only causal LM" in line


def test_a_checkpoint_missing_its_lm_head_is_refused_naming_it(tmp_path, capsys):
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from prunerzero.models import resolve_model_source

    cfg = LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    folder = tmp_path / "headless"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model_source("smollm2")).save_pretrained(folder)
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    del tensors["lm_head.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    capsys.readouterr()
    assert main(["eval", "--model", str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()   # transformers' own loading bar may come before it
    line = err[-1]
    assert line.startswith("error: ") and sum(e.startswith("error:") for e in err) == 1
    assert "lm_head.weight" in line and "missing" in line and "MISSING" not in "".join(err)


def test_a_complete_tied_checkpoint_loads(tiny_model_dir):
    from prunerzero.models import load_model

    lm = load_model(str(tiny_model_dir), device="cpu")
    assert lm.model.config.tie_word_embeddings


# --------------------------------------------------------------------------------------------- defaults
def test_prune_is_sequential_by_default(no_model_load):
    from prunerzero.cli.prune import prune_spec

    parser = build_parser()
    assert prune_spec(parser.parse_args(["prune"])).sequential
    assert prune_spec(parser.parse_args(["prune", "--sequential"])).sequential   # the old flag, a no-op now
    assert not prune_spec(parser.parse_args(["prune", "--one-shot"])).sequential


def test_search_writes_under_runs_by_default(tmp_path, monkeypatch):
    from prunerzero.cli.search import _new_space

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["search", "--space", "tiny"])
    _, _, out = _new_space(args)
    assert out.startswith("runs/search-tiny-") and not out.startswith("results")


def test_metric_names_and_run_folders(capsys, tmp_path):
    from prunerzero.metric.known import FOUND_METRICS, resolve_metric

    assert main(["prune", "--list-metrics"]) == 0
    listed = capsys.readouterr().out
    for m in FOUND_METRICS.values():
        assert m.name in listed and m.run in listed and m.selection.split()[0] in listed
        assert (REPO / m.run).is_dir() and (REPO / m.selection.split()[0]).is_file()
        assert (REPO / m.confirmed.split()[0]).is_file()
    # a committed selection folder prunes with its pick
    chosen = json.loads((REPO / "results/selection-gpu.json").read_text())["chosen"]["formula"]
    assert resolve_metric(str(REPO / "results/selection-gpu"))[0] == chosen
    assert "unknown metric 'frobnicate'" in refused(["prune", "--metric", "frobnicate", "--quiet"], capsys)
    assert "neither a search run nor a selection" in refused(["prune", "--metric", str(tmp_path), "--quiet"], capsys)


# --------------------------------------------------------------------------------------------- help
def test_version(capsys):
    from prunerzero import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"prunerzero {__version__}"


def _help(argv, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "120")
    assert main(argv + ["--help"]) == 0
    return capsys.readouterr().out


def test_top_level_help_lists_every_command_and_cites_the_papers(capsys, monkeypatch):
    from prunerzero.cli import COMMANDS

    text = _help([], capsys, monkeypatch)
    assert all(f"\n    {c}" in text for c in COMMANDS) and "``" not in text
    assert "arXiv:2406.02924" in text and "Dong et al." in text and "Gao et al." in text


@pytest.mark.parametrize("command", ["prune", "structural", "eval", "search", "select"])
def test_option_groups_in_order(command, capsys, monkeypatch):
    text = _help([command], capsys, monkeypatch)
    titles = [t for t in ("model and data:", "what to prune:", "how:", "evaluation:", "output:") if t in text]
    assert len(titles) >= 3 and [text.index(t) for t in titles] == sorted(text.index(t) for t in titles)
    if command == "prune":
        body = text[text.index("model and data:"):]
        assert body.index("--metric") < body.index("--eval-windows") and "--one-shot" in text


def test_structural_help_shows_the_default_presets_values_once(capsys, monkeypatch):
    from prunerzero.pipeline import DEFAULT_STRUCTURAL_PRESET, structural_config

    text = " ".join(_help(["structural"], capsys, monkeypatch).split())
    d = structural_config(DEFAULT_STRUCTURAL_PRESET)
    assert f"policy-gradient steps (default: {d.steps})" in text and f"cosine-decayed (default: {d.lr:g})" in text
    assert (d.steps, d.lr) == (300, 0.02)
    assert text.count(f"(default: {DEFAULT_STRUCTURAL_PRESET})") == 1


@pytest.mark.parametrize("run", ["results/search-gpu-prunerzero", "studies/cpu-wx6/results/search-cpu-wx6"])
def test_show_fits_120_columns_with_labelled_columns(run, capsys):
    assert main(["show", str(REPO / run)]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 120
    head = out.splitlines()[0].split()
    assert {"formula", "prefix", "size", "known"} <= set(head) and ("score" in head or "ppl" in head)
    assert "wanda" in out     # a rediscovered known metric is marked
    assert main(["show", str(REPO / run), "--wide"]) == 0


# --------------------------------------------------------------------------------------------- big models
def test_the_sizing_table_in_the_guide_is_the_generated_one():
    """docs/guides/big-models.md holds `python -m prunerzero.sizing`'s table, and the 135M gradient statistics file
    it states is the size of the real one (two fp32 tensors per prunable weight of SmolLM2-135M)."""
    from prunerzero.sizing import MODELS, meta_model, sizing, table

    generated = table()
    assert generated in (REPO / "docs/guides/big-models.md").read_text()
    s = sizing("SmolLM2-135M", meta_model(*MODELS["SmolLM2-135M"]))
    assert s.prunable == 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)
    assert s.g_stats_bytes == 8 * s.prunable and s.g_search_bytes == 4 * s.prunable


def test_a_search_holds_only_the_statistics_its_terminals_read():
    """Stats.only drops G1 for a space over G (half the gradient statistics on the accelerator) and the scores a
    formula over G sees are the same."""
    from prunerzero.calibration.cache import Stats
    from prunerzero.metric import evaluate

    g = torch.Generator().manual_seed(0)
    full = Stats({"layers.0.q": {"X": torch.rand(8, generator=g), "G1": torch.rand(4, 8, generator=g),
                                 "G2": torch.rand(4, 8, generator=g), "_U": torch.rand(8, 8, generator=g)}})
    trimmed = full.only(["W", "X", "G"])
    assert set(trimmed.tensors["layers.0.q"]) == {"X", "G2", "_U"}
    assert set(full.only(["W", "G1"]).tensors["layers.0.q"]) == {"G1", "_U"}
    w = torch.randn(4, 8, generator=g)
    for formula in ("|W| * sqrt(X - G)", "G * W^2 + |W| * sqrt(X)"):
        assert torch.equal(evaluate(formula, full.env("layers.0.q", w)), evaluate(formula, trimmed.env("layers.0.q", w)))
