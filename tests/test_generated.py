"""Generated pages equal a fresh render of the committed rows (the check CI runs), and the generator behaves: a stale
file is named in one line, placeholders fill from rows, an expected verdict the rows no longer give stops the render.
The package ships at most eight described spaces; archived configurations still run and reproduce their runs."""
import json
import shlex
import shutil

import pytest
from conftest import REPO

from prunerzero.errors import UserError
from prunerzero.results import docs
from prunerzero.results.findings import fill_template
from prunerzero.search.space import load_space, packaged_spaces, validate

SEARCHES = [r for r in docs.all_results(REPO) if r.kind == "search"]


@pytest.fixture(scope="module")
def fresh():
    return docs.render_all(REPO)


def test_generated_files_equal_a_fresh_render(fresh):
    """Every table, results page, index, study card, the findings and the README headline are what the committed
    rows give: `python -m prunerzero.results.docs` after any change to rows, grids or templates."""
    stale = [str(p.relative_to(REPO)) for p in docs.stale(REPO, fresh)]
    assert not stale, f"stale generated files (run python -m prunerzero.results.docs): {stale}"


def test_every_committed_table_is_generated(fresh):
    """Each NAME.md beside a rows folder (in results/ or a study) is rendered by the generator, or is a selection's
    table (test_results re-renders those); none is typed by hand."""
    tables = [p for root in docs.roots(REPO) for p in (root / "results").glob("*.md")
              if p.name not in ("README.md", "findings.template.md")]
    assert len(tables) > 60
    selections = {r.table for r in docs.all_results(REPO) if r.kind == "selection"}
    assert [p for p in tables if p not in fresh and p not in selections] == []
    kinds = {r.kind for r in docs.all_results(REPO)}
    assert kinds == {"grid", "selection", "measurement", "search"}
    assert (REPO / "docs" / "results" / "index.md") in fresh and (REPO / "docs" / "findings.md") in fresh


def _mini_repo(tmp_path, name="spread-calib-cpu"):
    """A repository holding one committed grid (its YAML, rows and table), copied from this one."""
    (tmp_path / "grids").mkdir()
    (tmp_path / "results").mkdir()
    shutil.copy(REPO / "grids" / f"{name}.yaml", tmp_path / "grids")
    shutil.copytree(REPO / "results" / name, tmp_path / "results" / name)
    shutil.copy(REPO / "results" / f"{name}.md", tmp_path / "results")
    return tmp_path


def test_check_names_the_stale_file_and_exits_nonzero(tmp_path, capsys):
    repo = _mini_repo(tmp_path)
    assert docs.main([], repo) == 0                         # writes the pages, index and README of results/
    assert (repo / "docs" / "results" / "spread-calib-cpu.md").is_file()
    capsys.readouterr()
    assert docs.main(["--check"], repo) == 0
    table = repo / "results" / "spread-calib-cpu.md"
    table.write_text(table.read_text().replace("212.60", "212.61"))   # a number typed over
    assert docs.main(["--check"], repo) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stale: results/spread-calib-cpu.md differs")
    assert "212.61" in table.read_text()                    # --check writes nothing
    (repo / "docs" / "results" / "gone.md").write_text("# a page no result renders\n")
    assert docs.main([], repo) == 0 and docs.main(["--check"], repo) == 0
    assert not (repo / "docs" / "results" / "gone.md").exists() and "212.61" not in table.read_text()


def test_findings_fill_from_rows_and_refuse_a_verdict_the_rows_do_not_give(tmp_path):
    from prunerzero.results import fmt, read_rows

    repo = _mini_repo(tmp_path)
    rows = read_rows(repo / "results" / "spread-calib-cpu" / "rows.jsonl")
    wanda = [r["ppl"]["wikitext2"] for r in sorted(rows, key=lambda r: r["seed"]) if r["method"] == "wanda"]
    text = fill_template("Wanda {{ppl spread-calib-cpu method=wanda pattern=2:4}} (n={{n spread-calib-cpu "
                         "method=wanda pattern=2:4}}, seed 1 alone {{mean spread-calib-cpu method=wanda pattern=2:4 "
                         "seeds=1 fmt=.1f}}); {{verdict spread-calib-cpu method=found-2m-bos pattern=2:4 vs=wanda "
                         "expect=within_spread}}, {{ratio spread-calib-cpu method=found-2m-bos pattern=2:4 vs=wanda}}",
                         repo)
    assert text.startswith(f"Wanda {fmt(wanda)} (n=3, seed 1 alone {wanda[1]:.1f}); within spread, 0.")
    with pytest.raises(UserError, match=r"findings:2: .* is 'within spread', expected 'better'"):
        fill_template("ok\n{{verdict spread-calib-cpu method=found-2m-bos pattern=2:4 vs=wanda expect=better}}",
                      repo, "findings")
    for bad, message in (("{{median spread-calib-cpu method=wanda}}", "unknown kind 'median'"),
                         ("{{ppl spread-calib-cpu method=wanda pattern=2:4 colour=red}}", "unknown key 'colour'"),
                         ("{{ppl spread-calib-cpu method=sparsegpt pattern=2:4}}", "no method 'sparsegpt'"),
                         ("{{ppl no-such-grid method=wanda pattern=2:4}}", "no committed result 'no-such-grid'"),
                         ("{{verdict spread-calib-cpu method=wanda pattern=2:4}}", "vs=wanda"),
                         ("{{ ppl }}", "starts no placeholder")):
        with pytest.raises(UserError, match=message):
            fill_template(bad, repo)


def test_the_readme_headline_is_replaced_between_its_markers_only():
    start, end = docs.HEADLINE
    text = f"# x\n\nintro\n{start}\nold table\n{end}\nrest\n"
    assert docs._replace_between(text, "| new |\n", docs.HEADLINE, "README.md") == \
        f"# x\n\nintro\n{start}\n| new |\n{end}\nrest\n"
    with pytest.raises(UserError, match="once each"):
        docs._replace_between(text + start, "t\n", docs.HEADLINE, "README.md")
    table = docs.headline(REPO)
    assert table.startswith("| method | 50% unstructured |") and "`results/baselines/`" in table


def test_the_package_ships_a_few_described_spaces():
    names = packaged_spaces()
    assert len(names) <= 8 and {"quick", "tiny", "cpu", "prunerzero"} <= set(names)
    for name in names:
        description = load_space(name).raw["description"]
        assert description and "\n" not in description.strip(), name


def test_the_default_cpu_space_is_the_configuration_that_met_the_goal():
    """`cpu` is cpu-wxg4's configuration (whose pick beat Wanda on test): with --device cpu it differs from the run's
    recorded space (keys added since at their defaults, which compute what it computed) only in name and
    description."""
    default = dict(load_space("cpu").raw)
    default["fitness"] = dict(default["fitness"], device="cpu")
    recorded = validate(json.loads((REPO / "studies" / "cpu-wxg4" / "results" / "search-cpu-wxg4" / "config.json")
                                   .read_text())["space"]).raw   # keys added since take their defaults
    assert {k: v for k, v in default.items() if k not in ("name", "description")} == \
        {k: v for k, v in recorded.items() if k not in ("name", "description")}


@pytest.mark.parametrize("run", SEARCHES, ids=[r.name for r in SEARCHES])
def test_a_committed_search_is_reproduced_by_its_archived_configuration(run, tmp_path):
    """The command each results page gives for a committed search (its archived --space, the run's other options)
    yields exactly the space its config.json recorded (runs that predate fitness.reference scored perplexity: null)."""
    from prunerzero.cli import build_parser
    from prunerzero.cli.search import _new_space

    command = docs.reproduce_command(run, REPO)
    assert command, f"{run.name} has no archived configuration"
    words = shlex.split(command)[1:]
    words[words.index("--out") + 1] = str(tmp_path / "out")
    space, _, _ = _new_space(build_parser().parse_args(words))
    recorded = json.loads((run.folder / "config.json").read_text())["space"]
    recorded["fitness"].setdefault("reference", None)
    assert space.raw == validate(recorded).raw


def test_an_archived_study_configuration_still_runs(tiny_model_dir, tmp_path):
    """A study's space (the multi-fidelity CPU search's) runs end to end at a tiny size from its archived file."""
    from prunerzero.cli import main
    from prunerzero.search.engine import read_evaluations

    out = tmp_path / "run"
    assert main(["search", "--space", str(REPO / "studies" / "cpu-fid" / "space.yaml"), "--out", str(out),
                 "--model", str(tiny_model_dir), "--seqlen", "64", "--nsamples", "4", "--eval-windows", "2",
                 "--device", "cpu", "--generations", "1", "--population", "4", "--cache-dir", str(tmp_path / "c"),
                 "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["space"]["name"] == "cpu-fid"
    assert [r for r in read_evaluations(out) if r["hit"] == "eval"]


def test_bench_renders_a_study_grid_into_its_study(tmp_path, capsys):
    """Without --out, `prunerzero bench studies/S/grids/X.yaml` reads and writes studies/S/results/X (a study's grid
    reruns into its own folder), the table the same as where the rows came from."""
    from prunerzero.cli import main

    study = tmp_path / "studies" / "s"
    (study / "grids").mkdir(parents=True)
    shutil.copy(REPO / "grids" / "spread-calib-cpu.yaml", study / "grids")
    shutil.copytree(REPO / "results" / "spread-calib-cpu", study / "results" / "spread-calib-cpu")
    assert main(["bench", str(study / "grids" / "spread-calib-cpu.yaml"), "--render-only", "--quiet"]) == 0
    assert (study / "results" / "spread-calib-cpu.md").read_text() == \
        (REPO / "results" / "spread-calib-cpu.md").read_text()
    assert "6 rows in" in capsys.readouterr().out
