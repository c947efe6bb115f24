"""lesson5 installs anywhere: its wheel carries conf/ and sweeps/, and runs from an empty folder, outside the checkout.

The clean environment is a venv that sees the test venv's packages through a .pth file (so torch is not installed
twice): `venv --system-site-packages` would show the base interpreter's packages, not the test venv's. A path
listed in a .pth file is not scanned for .pth files itself, so the checkout's editable install stays out of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import optuna
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "lesson5", "conf", "sweeps"]


def test_the_wheel_lists_every_package_of_lesson5():
    """pyproject.toml names its packages (a package-dir mapping cannot be found by packages.find): a new
    subpackage must be added there, or the wheel would lack it."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "lesson5").rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert {"lesson5.conf", "lesson5.sweeps"} <= listed


def _build(tmp: Path) -> Path:
    """The wheel of the working tree, built from a copy (setuptools' build/ folder could carry stale files)."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "results"))
        else:
            shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    tmp / "dist", src], check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp / "dist").glob("lesson5-*.whl")
    return wheel


def _venv(tmp: Path, wheel: Path) -> tuple[Path, dict]:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=300)
    (site_dir,) = venv.glob("lib/python*/site-packages")
    # every site-packages the tests see, those reached through a .pth file included
    seen = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (site_dir / "_test_venv.pth").write_text("\n".join(seen) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps",
                    "--no-index", "-q", wheel], check=True, capture_output=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return venv, env


@pytest.mark.slow
def test_the_wheel_runs_and_sweeps_from_an_empty_folder(tmp_path, movielens_dir):
    wheel = _build(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {"lesson5/conf/config.yaml", "lesson5/conf/experiment/lesson5_collab.yaml",
            "lesson5/sweeps/n_factors.yaml"} <= set(names)
    assert not [n for n in names if "results/" in n]  # the committed reports stay in the checkout
    venv, env = _venv(tmp_path, wheel)
    work = tmp_path / "work"  # empty: no conf/, no sweeps/, no lesson5/
    work.mkdir()
    data = [f"data.path={movielens_dir}", "data.verify=false", "trainer.bs=64"]

    where = subprocess.run([venv / "bin" / "python", "-c", "import lesson5, sys; print(lesson5.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(ROOT / "lesson5"), where

    run = subprocess.run([venv / "bin" / "lesson5", "trainer.epochs=1", *data], cwd=work, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "valid_rmse" in run.stdout and (work / "mlflow.db").is_file()

    # A user's own study file and config folder, neither inside the package.
    (work / "myconf" / "experiment").mkdir(parents=True)
    (work / "myconf" / "experiment" / "small.yaml").write_text("# @package _global_\ntrainer:\n  epochs: 1\n")
    study = work / "studies" / "mine.yaml"
    study.parent.mkdir()
    study.write_text(yaml.safe_dump({
        "claim": "n_factors=4 works best", "rule": {"kind": "best", "param": "model.n_factors", "value": 4},
        "base": ["experiment=small"], "space": {"model.n_factors": {"choices": [2, 4]}}, "seeds": [0],
        "objective": {"metric": "valid_rmse", "direction": "minimize"}, "sampler": "grid"}))
    sweep = subprocess.run([venv / "bin" / "lesson5-sweep", "studies/mine.yaml", "--config-dir", "myconf", *data],
                           cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    opt = optuna.load_study(study_name="mine", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(work / "sweeps.journal"))))
    assert sorted(t.state.name for t in opt.trials) == ["COMPLETE"] * 2
    assert (work / "sweeps" / "results" / "mine.md").is_file()
