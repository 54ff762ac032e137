"""The document generator: every generated page rendered from committed rows and run logs, and the check that a
fresh render equals what is committed (``python -m prunerzero.results.docs [--check]``, ``prunerzero docs``).

What it renders, for each *root* (the repository itself and every ``studies/<name>/``) holding ``results/``:

- ``results/<name>.md``: each committed result's table (a grid's rows with its grid ``grids/<name>.yaml``, a
  benchmark's rows with its ``meta.json`` and the ``benchmarks/`` script it names; a selection's table is written
  by ``prunerzero select``, whose tests re-render it);
- ``docs/results/<name>.md``: one page per result and per search run (protocol, command, commit, hardware, table),
  and ``docs/results/index.md``, the index of them all; ``results/README.md``, the index of the current results;
- ``studies/<name>/README.md``: each study's card (what it holds and the commands that reproduce it), and
  ``studies/README.md``;
- ``docs/findings.md`` from ``results/findings.template.md`` (``findings``: numbers filled from rows, verdicts
  checked) and the README's headline table between ``<!-- generated:headline -->`` markers.

A generated file is never edited by hand: change the rows (rerun the command) or the template, then rerun this.
"""
from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..fsutil import atomic_write_text
from .findings import fill_template
from .grid import load_grid
from .render import DATASET_TITLES, render
from .rows import read_meta, read_rows

REPO = Path(__file__).resolve().parents[2]
HEADLINE = ("<!-- generated:headline -->", "<!-- /generated:headline -->")
FINDINGS_TEMPLATE = "results/findings.template.md"


@dataclass(frozen=True)
class Result:
    """One committed result: ``folder`` holds its rows (a search run: its log); ``root`` the repository or a study."""
    name: str
    kind: str            # grid | selection | measurement | search
    folder: Path
    root: Path

    @property
    def study(self) -> str | None:
        return self.root.name if self.root.parent.name == "studies" else None

    @property
    def grid_path(self) -> Path:
        return self.folder / "grid.yaml" if self.kind == "selection" else self.root / "grids" / f"{self.name}.yaml"

    @property
    def table(self) -> Path:
        return self.folder.with_suffix(".md")


def roots(repo: Path) -> list[Path]:
    """The repository, then each study (``studies/<name>/`` with a ``results/`` folder), in name order."""
    studies = sorted(p for p in (repo / "studies").glob("*")
                     if (p / "results").is_dir() or (p / "space.yaml").is_file())
    return [repo, *studies]


def results_of(root: Path) -> list[Result]:
    """The committed results under ``root/results``, by kind (folders that are none of them, e.g. logs, skipped)."""
    out = []
    if not (root / "results").is_dir():
        return out
    for folder in sorted(p for p in (root / "results").iterdir() if p.is_dir()):
        name = folder.name
        if (folder / "meta.json").is_file():
            kind = "measurement"
        elif (folder / "grid.yaml").is_file() and folder.with_suffix(".json").is_file():
            kind = "selection"
        elif (root / "grids" / f"{name}.yaml").is_file():
            kind = "grid"
        elif (folder / "config.json").is_file() and (folder / "evaluations.jsonl").is_file():
            kind = "search"
        else:
            continue
        out.append(Result(name, kind, folder, root))
    return out


def all_results(repo: Path = REPO) -> list[Result]:
    found = [r for root in roots(repo) for r in results_of(root)]
    names = [r.name for r in found]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"result name '{repeated[0]}' is used twice (results/ and a study, or two studies): rename one")
    return found


def _benchmarks(repo: Path):
    """The benchmark scripts render their own timing tables (``meta.json`` names the script): import from there."""
    path = str(repo / "benchmarks")
    if path not in sys.path:
        sys.path.insert(0, path)


def render_table(result: Result, repo: Path = REPO) -> str:
    """A result's table, rendered from its rows (what its command's ``--render-only`` writes). A selection's own
    table (``NAME.md``, candidates and choice) is written by ``prunerzero select``; here it is its grid's table."""
    rows = read_rows(result.folder / "rows.jsonl")
    if result.kind in ("grid", "selection"):
        return render(load_grid(result.grid_path), rows)
    _benchmarks(repo)
    if result.kind == "measurement":
        meta = read_meta(result.folder)
        return importlib.import_module(meta["renderer"]).render(rows, meta)
    raise ValueError(result.kind)


def _rel(path: Path, repo: Path) -> str:
    return str(path.relative_to(repo))


def _first_sentence(text: str, limit: int = 140) -> str:
    text = " ".join(text.split())
    cut = text.split(". ")[0].rstrip(".")
    return cut if len(cut) <= limit else cut[:limit - 1].rstrip() + "…"


def _cell(text: str) -> str:
    """Text inside a markdown table cell (``|W|`` stays in its cell)."""
    return text.replace("|", "\\|")


def _description(result: Result) -> str:
    if result.kind in ("grid", "selection"):
        return load_grid(result.grid_path).description
    if result.kind == "measurement":
        for block in read_meta(result.folder).get("blocks", []):
            if "text" in block:
                lines = [line for line in block["text"].splitlines() if line.strip() and not line.startswith("#")]
                heads = [line.lstrip("# ") for line in block["text"].splitlines() if line.startswith("#")]
                return lines[0] if lines else heads[0] if heads else ""
        page = result.folder.with_name(result.folder.name + ".md")   # a page its benchmark renders: its title
        titles = [line[2:] for line in page.read_text().splitlines() if line.startswith("# ")] if page.is_file() else []
        return titles[0] if titles else ""
    return json.loads((result.folder / "config.json").read_text()).get("space", {}).get("description", "")


def reproduce_command(result: Result, repo: Path = REPO) -> str | None:
    """The command that reruns a result from its committed configuration (None where there is no single one)."""
    if result.kind == "grid":
        return f"prunerzero bench {_rel(result.grid_path, repo)} --out {_rel(result.folder, repo)}"
    if result.kind == "search":
        space = archived_space(result, repo)
        if space is None:
            return None
        return search_command(result, _rel(space, repo), f"runs/{result.name}")
    return None


def archived_space(result: Result, repo: Path = REPO) -> Path | None:
    """A search run's recorded configuration as a ``--space`` file: the run's own ``space.yaml`` (its exact
    space), else its study's ``space.yaml``."""
    own, study = result.folder / "space.yaml", result.root / "space.yaml"
    if own.is_file():
        return own
    if result.study and study.is_file():
        return study
    return None


def search_command(result: Result, space: str, out: str) -> str:
    """The run's recorded command with ``--space`` and ``--out`` replaced (its other options kept)."""
    words = shlex.split(json.loads((result.folder / "config.json").read_text())["meta"]["command"])
    out_words, skip = [], False
    for w in words:
        if skip:
            skip = False
            continue
        if w in ("--space", "--out"):
            skip = True
            continue
        if w.startswith(("--space=", "--out=")):
            continue
        out_words.append(w)
    return shlex.join(out_words[:2] + ["--space", space] + out_words[2:] + ["--out", out])


def _best_table(summary: dict, top: int = 10) -> list[str]:
    """The run's hall of fame as its summary recorded it: formula, size, perplexity or score, generation."""
    best = summary.get("hall_of_fame") or []
    scored = any(h.get("score") is not None for h in best)
    lines = ["| # | formula | size | " + ("score" if scored else "ppl") + " | generation |",
             "| ---: | --- | ---: | ---: | ---: |"]
    for i, h in enumerate(best[:top], 1):
        value = h.get("score") if scored else h.get("ppl")
        shown = "-" if value is None else f"{value:.4f}" if abs(value) < 10 else f"{value:.3f}"
        lines.append(f"| {i} | `{h['formula']}` | {h.get('size', '-')} | {shown} | {h.get('generation', '-')} |")
    counts = summary.get("counts") or {}
    if counts:
        answered = sum(v for k, v in counts.items() if k in ("text", "key", "mask"))
        lines += ["", f"{summary.get('evaluations', '?')} candidates: {counts.get('eval', 0)} evaluated, {answered} "
                  f"answered by caches (text {counts.get('text', 0)}, canonical key {counts.get('key', 0)}, mask "
                  f"fingerprint {counts.get('mask', 0)}), {counts.get('error', 0)} refused."]
    return lines


def _search_page(result: Result, repo: Path) -> str:
    config = json.loads((result.folder / "config.json").read_text())
    summary_path = result.folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    meta = config.get("meta", {})
    origin = meta.get("provenance") or {}
    space = config.get("space", {})
    lines = [f"# {result.name}", "", space.get("description", "").strip(), "",
             f"Space `{space.get('name', '?')}` (recorded in `{_rel(result.folder / 'config.json', repo)}`). "
             f"Command: `{meta.get('command', 'unknown')}`", "",
             f"Device: {origin.get('device') or space.get('fitness', {}).get('device') or 'unknown'}. "
             f"Commit: {(origin.get('commit') or 'unknown')[:10]}{'+dirty' if origin.get('dirty') else ''}.", ""]
    if summary:
        lines += [f"Run: {summary.get('evaluations', '?')} candidates, {summary.get('generations_done', '?')} "
                  f"generations done ({'complete' if summary.get('complete') else 'stopped before its last generation'}), "
                  f"{summary.get('wall_seconds', 0) / 60:.0f} minutes.", ""]
    command = reproduce_command(result, repo)
    if command:
        lines += ["Reproduce:", "", "```", command, "```", ""]
    if summary:
        lines += ["Best formulas (`prunerzero show` prints the full table from the log):", "", *_best_table(summary)]
    return "\n".join(lines).rstrip() + "\n"


def result_page(result: Result, repo: Path = REPO, table: str | None = None) -> str:
    """A result's docs page: its table (protocol, commands, device, commit included), where it lives, how to rerun."""
    if result.kind == "search":
        return _search_page(result, repo)
    table = render_table(result, repo) if table is None else table
    if result.kind == "selection":
        saved = json.loads(result.folder.with_suffix(".json").read_text())
        table = (table.rstrip() + f"\n\nChosen: `{saved['chosen']['formula']}` "
                 f"({'better than' if saved['beats_reference'] else 'not better than'} "
                 f"{saved['meta']['reference']} beyond both spreads; candidates and choice: "
                 f"`{_rel(result.table, repo)}`, written by the selection).\n")
    files = [f"Rows: `{_rel(result.folder / 'rows.jsonl', repo)}`"]
    if result.kind != "selection":
        files.append(f"table: `{_rel(result.table, repo)}`")
    if result.kind in ("grid", "selection"):
        files.insert(0, f"grid: `{_rel(result.grid_path, repo)}`")
    if result.study:
        files.append(f"study: `studies/{result.study}`")
    lines = [table.rstrip(), "", "---", "", "; ".join(files) + "."]
    command = reproduce_command(result, repo)
    if command:
        lines += ["", "Reproduce (a rerun skips the rows already present):", "", "```", command, "```"]
    return "\n".join(lines) + "\n"


def index_page(results: list[Result]) -> str:
    lines = ["# Results", "", "Every page below is generated from committed rows or run logs "
             "(`python -m prunerzero.results.docs`); none is typed by hand. Current results first, then the "
             "archived studies (past experiments, `studies/`).", ""]
    for study in dict.fromkeys(r.study for r in results):
        group = [r for r in results if r.study == study]
        lines += [f"## {'Current results' if study is None else 'Study ' + study}", "",
                  "| page | kind | what |", "| --- | --- | --- |"]
        lines += [f"| [{r.name}]({r.name}.md) | {r.kind} | {_cell(_first_sentence(_description(r)))} |"
                  for r in group]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def study_card(root: Path, results: list[Result], repo: Path = REPO) -> str:
    """A study's README: what it was for (its space's or first grid's description), what it holds, how to rerun."""
    import yaml

    space = root / "space.yaml"
    about = ""
    if space.is_file():
        about = (yaml.safe_load(space.read_text()) or {}).get("description", "")
    if not about and results:
        about = _description(results[0])
    lines = [f"# Study: {root.name}", "", "A past experiment, archived with its configuration and rows (this card is "
             "generated by `python -m prunerzero.results.docs`).", "", " ".join(about.split()), ""]
    if space.is_file():
        lines += ["Its search space: `space.yaml` (`prunerzero search --space "
                  f"{_rel(space, repo)} --out runs/{root.name}`).", ""]
    lines += ["| result | kind | table | reproduce |", "| --- | --- | --- | --- |"]
    for r in results:
        table = f"[{r.name}.md](results/{r.name}.md)" if r.kind != "search" else f"`results/{r.name}/`"
        command = reproduce_command(r, repo)
        lines.append(f"| {r.name} | {r.kind} | {table} | {f'`{command}`' if command else '-'} |")
    return "\n".join(lines).rstrip() + "\n"


def results_readme(results: list[Result], repo: Path = REPO) -> str:
    """``results/README.md``: what the current results are, each with its table, and where the rest lives."""
    lines = ["# results", "", "The committed rows behind the current documentation: one folder of rows (or a search "
             "run's log) per result, and the table rendered from it next to it (`NAME.md`). Every table is generated "
             "(`python -m prunerzero.results.docs`); past experiments are archived under `studies/`, and every result "
             "has a page under `docs/results/`.", "", "| result | kind | what |", "| --- | --- | --- |"]
    for r in results:
        link = f"[{r.name}]({r.name}.md)" if r.kind != "search" else f"[{r.name}]({r.name}/)"
        lines.append(f"| {link} | {r.kind} | {_cell(_first_sentence(_description(r)))} |")
    return "\n".join(lines) + "\n"


def studies_readme(repo: Path = REPO) -> str:
    """``studies/README.md``: the archived studies, each with its card."""
    import yaml

    lines = ["# studies", "", "Past experiments, outside the package: each folder holds its configuration (`space.yaml`, "
             "`grids/`), its rows and tables (`results/`) and a generated card (`README.md`) with the commands that "
             "rerun it. `prunerzero search --space studies/NAME/space.yaml` runs a study's search space. "
             "`NOTES.md` is the narrative kept while they ran.", "", "| study | what |", "| --- | --- |"]
    for root in roots(repo)[1:]:
        space = root / "space.yaml"
        about = (yaml.safe_load(space.read_text()) or {}).get("description", "") if space.is_file() else ""
        lines.append(f"| [{root.name}]({root.name}/README.md) | {_cell(_first_sentence(about))} |")
    return "\n".join(lines) + "\n"


def headline(repo: Path = REPO) -> str:
    """The README's headline table: the full-protocol baselines and the found metric (GPU), WikiText-2 test ppl."""
    base = next(r for r in all_results(repo) if r.name == "baselines")
    conf = next(r for r in all_results(repo) if r.name == "confirm-gpu")
    lines = []
    grid_b, rows_b = load_grid(base.grid_path), read_rows(base.folder / "rows.jsonl")
    grid_c, rows_c = load_grid(conf.grid_path), read_rows(conf.folder / "rows.jsonl")
    by_id = {r["id"]: r for r in rows_b + rows_c}
    patterns = [p for p in grid_b.patterns if p in grid_c.patterns]
    model = grid_b.models[0]
    head = {"0.5": "50% unstructured"}
    lines += ["| method | " + " | ".join(head.get(p, p) for p in patterns) + " |",
              "| --- |" + " ---: |" * len(patterns)]

    def cell(grid, method, p):
        r = by_id.get(grid.cell(model, method, p if method.name != "dense" else "-", grid.dense_seed).id)
        return f"{r['ppl']['wikitext2']:.2f}" if r else "-"

    for grid, names in ((grid_b, None), (grid_c, ("found",))):
        for m in grid.methods:
            if names is not None and m.name not in names:
                continue
            label = "dense" if m.name == "dense" else m.label
            bold = "**" if m.name == "found" else ""
            cells = [cell(grid, m, p) for p in (patterns[:1] if m.name == "dense" else patterns)]
            cells += [""] * (len(patterns) - len(cells))
            lines.append(f"| {bold}{label}{bold} | " + " | ".join(f"{bold}{c}{bold}" if c else "" for c in cells)
                         + " |")
    found = next(m for m in grid_c.methods if m.name == "found")
    device = sorted({r["provenance"]["device"] for r in rows_b + rows_c if r.get("provenance")})
    proto = grid_b.protocol
    dtypes = sorted({r["protocol"]["dtype"] for r in rows_b + rows_c if r.get("protocol")})
    lines += ["", f"{model}, {DATASET_TITLES['wikitext2']} {proto.eval_split} perplexity; calibration "
              f"{proto.nsamples} x {proto.seqlen} tokens of {proto.calibration}, seed {grid_b.seeds[0]} (one seed); "
              f"{', '.join(dtypes)}; "
              f"{', '.join(device)}. found = `{found.formula}`. Rows: `results/baselines/`, `results/confirm-gpu/` "
              "([tables](docs/results/index.md))."]
    return "\n".join(lines) + "\n"


def _replace_between(text: str, body: str, markers: tuple[str, str], where: str) -> str:
    start, end = markers
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise UserError(f"{where} must hold {start} ... {end} once each")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{body}{end}{tail}"


def render_all(repo: Path = REPO) -> dict[Path, str]:
    """Every generated file (absolute path -> text): tables, result pages, index, study cards, findings, README."""
    out: dict[Path, str] = {}
    results = all_results(repo)
    for r in results:
        table = None
        if r.kind in ("grid", "measurement"):
            table = out[r.table] = render_table(r, repo)
        out[repo / "docs" / "results" / f"{r.name}.md"] = result_page(r, repo, table)
    out[repo / "docs" / "results" / "index.md"] = index_page(results)
    out[repo / "results" / "README.md"] = results_readme([r for r in results if r.root == repo], repo)
    if (repo / "studies").is_dir():
        out[repo / "studies" / "README.md"] = studies_readme(repo)
    for root in roots(repo)[1:]:
        out[root / "README.md"] = study_card(root, [r for r in results if r.root == root], repo)
    template = repo / FINDINGS_TEMPLATE
    if template.is_file():
        out[repo / "docs" / "findings.md"] = fill_template(template.read_text(), repo, FINDINGS_TEMPLATE)
    readme = repo / "README.md"
    if readme.is_file() and HEADLINE[0] in readme.read_text():
        out[readme] = _replace_between(readme.read_text(), headline(repo), HEADLINE, "README.md")
    return out


def stale(repo: Path = REPO, fresh: dict[Path, str] | None = None) -> list[Path]:
    """Generated files whose committed text differs from a fresh render (or that are missing), then stray pages
    under ``docs/results/`` that no result renders."""
    fresh = render_all(repo) if fresh is None else fresh
    out = [p for p, text in fresh.items() if not p.is_file() or p.read_text() != text]
    out += sorted(p for p in (repo / "docs" / "results").glob("*.md") if p not in fresh)
    return out


def write_all(repo: Path = REPO) -> list[Path]:
    """Write every generated file that changed; remove stray pages under ``docs/results/``. Returns what changed."""
    fresh = render_all(repo)
    changed = []
    for path, text in fresh.items():
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
            changed.append(path)
    for path in sorted((repo / "docs" / "results").glob("*.md")):
        if path not in fresh:
            path.unlink()
            changed.append(path)
    return changed


def main(argv: list[str] | None = None, repo: Path | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prunerzero docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming the first generated file that differs from a fresh render")
    args = parser.parse_args(argv)
    repo = REPO if repo is None else repo
    try:
        if not (repo / "results").is_dir():
            raise UserError(f"no results/ folder in {repo}: the generator renders a checkout's committed rows; run "
                            "it from a clone of the repository")
        if args.check:
            found = stale(repo)
            if found:
                print(f"stale: {_rel(found[0], repo)} differs from a fresh render ({len(found)} file(s)): run "
                      "`python -m prunerzero.results.docs` and commit the result", file=sys.stderr)
                return 1
            print("generated files are up to date")
            return 0
        for path in write_all(repo):
            print(f"wrote {_rel(path, repo)}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
