"""Bad input ends in one line on stderr that says what to do, exit status 2, and nothing written."""
import pytest

from prunerzero.cli import main


@pytest.mark.parametrize("argv,msg", [
    (["prune", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["prune", "--sparsity", "1.5"], "argument --sparsity: must be a finite number in (0, 1)"),
    (["prune", "--pattern", "4:2"], "1 <= N < M"),
    (["prune", "--metric", "mul(abs(W), sqrt(X)"], "unbalanced parentheses"),
    (["prune", "--metric", "__import__('os')"], "cannot read formula at character 12"),
    (["prune", "--metric", "__import__(W)"], "unknown operation or terminal '__import__'"),
    (["prune", "--metric", "abs(W, X)"], "'abs' takes 1 argument(s), got 2"),
    (["prune", "--metric", "frobnicate"], "unknown metric 'frobnicate'"),
    (["prune", "--data-dir", "/nonexistent/dir", "--model", "smollm2"], "does not exist"),
    (["eval", "--model", "/tmp/missing-model.gguf"], "not found"),
    (["eval", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1"),
    (["search", "--space", "search_spaces/tiny.yaml", "--max-minutes", "0"], "argument --max-minutes: must be a finite number > 0"),
    (["prune", "--grad-storage", "fp8"], "argument --grad-storage: invalid choice: 'fp8'"),
])
def test_bad_input_one_line(argv, msg, capsys, tmp_path):
    code = main(argv + ["--cache-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err
    assert msg in err


def test_save_refuses_nonempty_folder(tmp_path, capsys):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    assert main(["prune", "--save", str(target), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_prune_save_loads_with_plain_transformers(tiny_model_dir, tmp_path, capsys):
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from prunerzero.models import all_prunable

    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_model_dir), "--metric", "wanda", "--pattern", "2:4", "--sequential",
                 "--nsamples", "2", "--seqlen", "64", "--eval-windows", "2", "--save", str(out),
                 "--json", str(tmp_path / "r.json"), "--quiet", "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    assert "dense" in printed and "pruned" in printed and "sparsity 0.5000" in printed
    model = AutoModelForCausalLM.from_pretrained(out)
    for lin in all_prunable(model).values():
        assert ((lin.weight == 0).view(lin.out_features, -1, 4).sum(-1) == 2).all()  # random weights: no zeros of their own
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["pruned"]["wikitext2"]["windows"] == 2 and res["sparsity"] == 0.5
    assert torch.isfinite(torch.tensor(res["pruned"]["wikitext2"]["ppl"]))


def test_fp16_gradient_storage_from_prune_and_search(tiny_model_dir, tmp_path):
    """--grad-storage fp16 caches G at half the size under its own key (the fp32 file stays valid), prunes with it,
    and a search space carries it as fitness.grad_storage."""
    import json

    from prunerzero.calibration import Stats
    from prunerzero.search.space import load_space

    cache = tmp_path / "cache"
    base = ["prune", "--model", str(tiny_model_dir), "--metric", "pruner-zero", "--one-shot", "--nsamples", "2",
            "--seqlen", "64", "--eval-windows", "2", "--quiet", "--skip-dense", "--cache-dir", str(cache)]
    assert main(base + ["--json", str(tmp_path / "a.json")]) == 0
    assert main(base + ["--grad-storage", "fp16", "--json", str(tmp_path / "b.json")]) == 0
    files = {f: Stats.load(f).meta.get("grad_storage", "fp32") for f in (cache / "stats").glob("*.safetensors")}
    half = [f for f, s in files.items() if s == "fp16"]
    full = [f for f, s in files.items() if s == "fp32" and "G2" in Stats.load(f).terms()]
    assert len(half) == len(full) == 1
    assert 0.45 < half[0].stat().st_size / full[0].stat().st_size < 0.55
    a, b = (json.loads((tmp_path / n).read_text())["pruned"]["wikitext2"]["ppl"] for n in ("a.json", "b.json"))
    assert abs(a / b - 1) < 0.05
    space = load_space("tiny").with_overrides(fitness={"grad_storage": "fp16"})
    assert space.raw["fitness"]["grad_storage"] == "fp16"
    with pytest.raises(Exception, match="fitness.grad_storage 'fp8' is unknown"):
        load_space("tiny").with_overrides(fitness={"grad_storage": "fp8"})


def test_readme_commands_parse():
    """Every `prunerzero ...` line of the README's code blocks is a valid command line (options and values)."""
    import re
    import shlex
    from pathlib import Path

    from prunerzero.cli import build_parser

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    lines = [ln.split(" #")[0].strip() for b in blocks for ln in b.splitlines()]
    commands = [shlex.split(ln)[1:] for ln in lines if ln.startswith("prunerzero ") and "&&" not in ln]
    assert len(commands) >= 15 and any(c[:1] == ["search"] and "--model" in c for c in commands)
    parser = build_parser()
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README command does not parse: prunerzero {shlex.join(argv)}")


def test_a_run_records_its_space_file_without_the_machine_prefix(tmp_path, monkeypatch):
    from prunerzero.cli.search import _portable_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spaces").mkdir()
    assert _portable_path(tmp_path / "spaces" / "a.yaml") == "spaces/a.yaml"
    import prunerzero

    packaged = __import__("pathlib").Path(prunerzero.__file__).parent / "spaces" / "cpu.yaml"
    assert _portable_path(packaged) == "prunerzero/spaces/cpu.yaml"
    assert _portable_path("/elsewhere/b.yaml") == "/elsewhere/b.yaml"


def test_a_gemma_model_cut_as_wanda_cuts_warns_in_one_line(tmp_path, capsys):
    """A family that needs BOS (Gemma) evaluated with bos 'stream' gets one 'warning:' line naming --bos window;
    with --bos window, none."""
    from transformers import AutoTokenizer

    from conftest import make_tiny
    from prunerzero.models import resolve_model_source

    tok = AutoTokenizer.from_pretrained(resolve_model_source("smollm2"))
    make_tiny("gemma3", vocab=len(tok)).save_pretrained(tmp_path / "g")
    tok.save_pretrained(tmp_path / "g")
    argv = ["eval", "--model", str(tmp_path / "g"), "--seqlen", "32", "--eval-windows", "1", "--device", "cpu",
            "--quiet", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "BOS" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: ") and "--bos window" in warned[0]
    assert "UserWarning" not in err
    assert main(argv + ["--bos", "window"]) == 0
    assert "BOS" not in capsys.readouterr().err


def test_list_spaces_prints_every_packaged_space_with_its_description(capsys):
    from prunerzero.search.space import packaged_spaces

    assert main(["search", "--list-spaces"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == packaged_spaces()
    assert all(len(line.split(None, 1)) == 2 for line in lines)   # a description after every name
