"""A wheel built with ``python -m build`` installs into a fresh venv and runs ``prunerzero --help`` without the source
tree. The venv gets the wheel alone (``--no-deps``, offline) and finds torch and the other dependencies through a
``.pth`` line naming this environment's site-packages, so nothing is downloaded again; a ``.pth`` line adds a path
without running that folder's own ``.pth`` files, so the editable install of the checkout stays out of the venv."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build", reason="the wheel test needs the 'build' package (pip install -e '.[test]')")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "prunerzero", src / "prunerzero", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    out = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(src)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    wheels = list(dist.glob("prunerzero-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_the_wheel_holds_the_package_its_spaces_and_its_license(wheel):
    import prunerzero

    assert wheel.name.startswith(f"prunerzero-{prunerzero.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    assert "prunerzero/cli/__init__.py" in names or "prunerzero/cli.py" in names
    assert "prunerzero/spaces/quick.yaml" in names and "prunerzero/api.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "results/", "docs/", "benchmarks/")) for n in names)


def test_the_wheel_installs_into_a_fresh_venv_and_runs_without_the_source_tree(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                          "--no-index", str(wheel)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "_test_dependencies.pth").write_text("\n".join(sorted(here)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = tmp_path / "elsewhere"
    run.mkdir()
    script = venv / "bin" / "prunerzero"
    helped = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=run, env=env)
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert helped.stdout.startswith("usage: prunerzero")
    for command in ("prune", "search", "show", "structural", "eval", "export", "bench"):
        assert command in helped.stdout
    code = ("import importlib.metadata as m, prunerzero, prunerzero.search.space as s; print(prunerzero.__file__); "
            "print(m.version('prunerzero') == prunerzero.__version__); print(len(s.packaged_spaces()) > 0)")
    where = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=run, env=env)
    assert where.returncode == 0, where.stderr[-2000:]
    location, same_version, spaces = where.stdout.split()
    assert Path(location).resolve().is_relative_to(Path(purelib).resolve())   # the wheel's copy, not the checkout
    assert same_version == "True" and spaces == "True"
