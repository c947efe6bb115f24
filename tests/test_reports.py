"""Results anyone can recompute: every committed study report rebuilt from its committed table, byte for byte; the
report command on a folder holding only a table; tables that do not match their study file refused."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lesson5.errors import ConfigError
from lesson5.sweep import report, spec
from lesson5.sweep import table as tables
from lesson5.sweep.table import Row, Table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "sweeps" / "results"
TABLES = sorted(RESULTS.glob("*.csv"))


@pytest.mark.parametrize("csv", TABLES, ids=[p.stem for p in TABLES])
def test_a_committed_report_is_its_table_rebuilt(csv, tmp_path):
    study = spec.load(csv.stem)
    rebuilt = report.write(tables.read(csv, study), study, out_dir=tmp_path)
    committed = (RESULTS / f"{csv.stem}.md").read_text()
    assert rebuilt.markdown == committed, f"sweeps/results/{csv.stem}.md is not what its table gives: rebuild it " \
                                          f"with python -m lesson5.report {csv.stem}"


def test_every_committed_report_has_its_table_and_study_file():
    reports = {p.stem for p in RESULTS.glob("*.md")} - {"README"}
    assert reports == {p.stem for p in TABLES}
    assert reports <= set(spec.shipped())


STUDY = {"claim": "n_factors=4 works best", "rule": {"kind": "best", "param": "model.n_factors", "value": 4,
                                                      "tolerance": 0.001},
         "control": {"kind": "best", "param": "model.n_factors", "value": 2, "tolerance": 0.001},
         "space": {"model.n_factors": {"choices": [2, 4, 8]}}, "seeds": [0, 1], "max_seeds": 4, "looks": 2,
         "objective": {"metric": "valid_rmse", "direction": "minimize"}, "sampler": "grid", "pruner": "none"}
# each value's RMSE at seeds 0-3: 4 is best by a steady 0.02 over 2, and 8 ties with 4 within noise
RMSE = {2: [0.93, 0.94, 0.935, 0.945], 4: [0.91, 0.921, 0.914, 0.925], 8: [0.9102, 0.9205, 0.9139, 0.9253]}


def study_file(folder: Path, name="tiny", **changes) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}))
    return path


def fabricated() -> Table:
    """Look 1 at seeds 0-1 for every value, look 2 at seeds 2-3 for 4 and 8, one failed trial, per-epoch curves."""
    rows, number = [], 0
    for look, seeds, values in ((1, (0, 1), (2, 4, 8)), (2, (2, 3), (4, 8))):
        for v in values:
            for s in seeds:
                x = RMSE[v][s]
                rows.append(Row("trial", "COMPLETE", {"model.n_factors": v, "trainer.seed": s}, x, number, look,
                                curve=[x + 0.04, x + 0.01, x], seconds=1.25 + number / 100))
                number += 1
    rows.append(Row("trial", "FAIL", {"model.n_factors": 8, "trainer.seed": 3}, number=number, look=2, curve=[0.95],
                    seconds=0.5))
    return Table(rows)


def test_a_table_reads_back_as_written_and_the_report_is_the_same_twice(tmp_path):
    study = spec.load(str(study_file(tmp_path)))
    path = tables.write(fabricated(), study, tmp_path / "tiny.csv")
    back = tables.read(path, study)
    assert back == fabricated()  # floats as repr: read back exactly
    first, second = report.build(back, study), report.build(tables.read(path, study), study)
    assert first.markdown == second.markdown and first.plots == second.plots
    assert "Verdict: " in first.markdown and "Control verdict: " in first.markdown
    assert "| 1 | 99.44% | 6 | 0-1 | 2, 4, 8 |" in first.markdown  # look 1: its level, trials, seeds and values
    assert "| 2 | 95.56% | 5 | 2-3 | 4, 8 |" in first.markdown


def test_the_report_command_rebuilds_a_report_from_its_table_alone(tmp_path):
    """As on a fresh clone: a folder with the study file and its table, no journal and no MLflow store."""
    study = spec.load(str(study_file(tmp_path)))
    tables.write(fabricated(), study, tmp_path / "sweeps" / "results" / "tiny.csv")
    done = subprocess.run([sys.executable, "-m", "lesson5.report", "tiny.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    written = (tmp_path / "sweeps" / "results" / "tiny.md").read_text()
    assert written == report.build(tables.read(tmp_path / "sweeps" / "results" / "tiny.csv", study), study).markdown
    assert (tmp_path / "sweeps" / "results" / "tiny_model.n_factors.png").is_file()
    assert not (tmp_path / "sweeps.journal").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("edit, where", [
    (lambda text: text.replace("model.n_factors", "model.n_factorz", 1), "its columns"),
    (lambda text: text.replace("valid_rmse", "valid_mae", 1), "its columns"),
    (lambda text: text.replace("\ntrial,0,1,COMPLETE,2,", "\ntrial,0,1,COMPLETE,3,"), "model.n_factors=3 is not among"),
    (lambda text: text.replace("\ntrial,0,1,COMPLETE,2,0,", "\ntrial,0,1,COMPLETE,2,9,"), "trainer.seed=9"),
    (lambda text: text.replace("\ntrial,0,1,", "\ntrial,0,3,"), "look 3"),
], ids=["another key", "another objective", "a value outside the space", "a seed outside the plan", "a look too many"])
def test_a_table_that_does_not_match_its_study_file_is_refused_naming_both(tmp_path, edit, where):
    study = spec.load(str(study_file(tmp_path)))
    path = tables.write(fabricated(), study, tmp_path / "tiny.csv")
    path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigError) as err:
        tables.read(path, study)
    assert str(path) in str(err.value) and str(study.path) in str(err.value) and where in str(err.value)


def test_the_report_command_refuses_another_studys_table_with_exit_2(tmp_path):
    study = spec.load(str(study_file(tmp_path)))
    other = study_file(tmp_path, "other", space={"model.n_factors": {"choices": [2, 4]}})
    tables.write(fabricated(), study, tmp_path / "tiny.csv")
    shutil.copy(tmp_path / "tiny.csv", tmp_path / "other.csv")
    done = subprocess.run([sys.executable, "-m", "lesson5.report", str(other), f"table={tmp_path / 'other.csv'}",
                           f"out={tmp_path / 'out'}"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert str(tmp_path / "other.csv") in done.stderr and str(other) in done.stderr
    assert "model.n_factors=8 is not among" in done.stderr
