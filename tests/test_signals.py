"""Signals as users send them (issue 21): Ctrl-C (SIGINT to the terminal's process group), `kill` or `timeout` (one
process), `kill -- -PGID`, `scancel` and a container's stop (SIGTERM), to a run and to a sweep. Each ends with its
MLflow runs KILLED (the metrics up to the signal kept), nothing left RUNNING, exit 130 (SIGINT) or 143 (SIGTERM),
and no traceback. A Hydra multirun checks every job's config before the first trains."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ctrl_c_reaches_it
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
STUDY = {"claim": "n_factors=4 works best", "rule": {"kind": "best", "param": "model.n_factors", "value": 4},
         "space": {"model.n_factors": {"choices": [2, 4]}}, "seeds": [0, 1],
         "objective": {"metric": "valid_rmse", "direction": "minimize"}, "sampler": "grid", "pruner": "none"}
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    """A command in a process group of its own (its pid is the group's), as a terminal or `timeout` starts it."""
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=ctrl_c_reaches_it)


def _epochs_logged(db: Path, at_least: int = 1) -> bool:
    """Whether some run has logged `at_least` epochs: training is on. Read-only, with sqlite3 (an MlflowClient
    here would race the writer to create the store's tables)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            row = con.execute("SELECT COUNT(*) FROM metrics WHERE key = 'epoch' GROUP BY run_uuid "
                              "ORDER BY 1 DESC LIMIT 1").fetchone()
            return row is not None and row[0] >= at_least
    except sqlite3.Error:  # not created yet
        return False


def _wait_until_training(proc: subprocess.Popen, db: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not _epochs_logged(db):
        if proc.poll() is not None:
            pytest.fail(f"it ended before training: {proc.returncode}\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.3)
    assert _epochs_logged(db), "training never began"


def _signal(proc: subprocess.Popen, to: str, signum: int) -> str:
    """Send `signum` to the main process alone, or to its whole process group; its standard error once it ends."""
    (os.kill if to == "main" else os.killpg)(proc.pid, signum)
    try:
        _, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"still running 180 s after {signal.Signals(signum).name}:\n{err[-3000:]}")
    return err


def _all_runs(db: Path):
    client = MlflowClient(f"sqlite:///{db}")
    return client, [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def _no_helper_left(folder: Path) -> None:
    """No writer or worker is left behind: every process that runs in the test's folder ends with the main one."""
    def left() -> list[str]:
        out = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == folder:
                    out.append(proc.name + " " + (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:  # gone meanwhile, or not ours
                pass
        return out

    deadline = time.time() + 30
    while left() and time.time() < deadline:
        time.sleep(0.5)
    assert not left()


def write_study(folder: Path, **changes) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}))
    return path


def _journal_study(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "sweeps.journal"))))


def sweep_args(tmp_path: Path, movielens_dir: Path, *more: str) -> list[str]:
    return ["-m", "lesson5.sweep", str(write_study(tmp_path)), "workers=2", "stack=1", "progress=false",
            f"data.path={movielens_dir}", "data.verify=false", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", *more]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
@pytest.mark.parametrize("to", ["main", "group"])
def test_a_signal_ends_a_run_killed(tmp_path, movielens_dir, to, signum):
    db = tmp_path / "mlflow.db"
    proc = _start(["-m", "lesson5", f"data.path={movielens_dir}", "data.verify=false", "trainer.epochs=1000",
                   "trainer.progress=false", f"tracking.uri=sqlite:///{db}", "tracking.experiment=test"], tmp_path)
    _wait_until_training(proc, db)
    err = _signal(proc, to, signum)
    assert proc.returncode == CODES[signum], err[-3000:]
    assert "Traceback" not in err and f"interrupted ({signal.Signals(signum).name})" in err, err[-3000:]
    client, (run,) = _all_runs(db)
    assert run.info.status == "KILLED", run.data.tags
    assert run.data.tags["outcome"] == "interrupted" and run.data.tags["stop_reason"].startswith("interrupted")
    assert len(client.get_metric_history(run.info.run_id, "epoch")) >= 1  # what it trained until the signal is kept
    assert "train_loss_step" in run.data.metrics
    _no_helper_left(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
@pytest.mark.parametrize("to", ["main", "group"])
def test_a_signal_stops_a_sweep_and_its_workers(tmp_path, movielens_dir, to, signum):
    """Two workers, each training a trial of 1000 epochs: the signal to the driver alone stops them too."""
    db = tmp_path / "mlflow.db"
    proc = _start(sweep_args(tmp_path, movielens_dir, "trainer.epochs=1000"), tmp_path)
    _wait_until_training(proc, db)
    started = time.time()
    err = _signal(proc, to, signum)
    assert time.time() - started < 120  # not after the trials' 1000 epochs
    assert proc.returncode == CODES[signum], err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert "resume=true" in err
    client, found = _all_runs(db)
    (parent,) = [r for r in found if "sweep.file" in r.data.tags and "optuna.trial" not in r.data.tags]
    children = [r for r in found if r is not parent]
    assert parent.info.status == "KILLED"
    assert parent.data.tags["stop_reason"].startswith(f"interrupted ({signal.Signals(signum).name})")
    assert children and all(c.info.status == "KILLED" and c.data.tags["outcome"] == "interrupted" for c in children)
    assert any(len(client.get_metric_history(c.info.run_id, "epoch")) >= 1 for c in children)
    trials = _journal_study(tmp_path).trials
    assert trials and all(t.state.name == "FAIL" and t.user_attrs.get("outcome") == "interrupted" for t in trials)
    _no_helper_left(tmp_path)


@pytest.mark.slow
def test_a_resumed_study_that_completes_drops_the_stale_stop_reason(tmp_path, movielens_dir):
    db = tmp_path / "mlflow.db"
    proc = _start(sweep_args(tmp_path, movielens_dir, "trainer.epochs=1000"), tmp_path)
    _wait_until_training(proc, db)
    err = _signal(proc, "main", signal.SIGTERM)
    assert proc.returncode == 143, err[-3000:]
    client, found = _all_runs(db)
    (parent,) = [r for r in found if "optuna.trial" not in r.data.tags]
    assert "stop_reason" in parent.data.tags
    done = subprocess.run([sys.executable, *sweep_args(tmp_path, movielens_dir, "trainer.epochs=2", "resume=true")],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    assert "stop_reason" not in parent.data.tags, parent.data.tags["stop_reason"]


def test_a_multirun_checks_every_job_before_the_first_trains(tmp_path, movielens_dir):
    done = subprocess.run([sys.executable, "-m", "lesson5", "-m", "trainer.bs=64,0", f"data.path={movielens_dir}",
                           "data.verify=false", "trainer.epochs=1", "trainer.progress=false",
                           f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "job 2 of 2 (trainer.bs=0)" in line and "trainer.bs=0 is not allowed" in line
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists()  # no run, not even the store: nothing was started


@pytest.mark.slow
def test_a_group_sigterm_ends_a_run_with_dataloader_workers_killed(tmp_path):
    """DataLoader workers leave the process group: a group's SIGTERM (`scancel`) reaches the main process only,
    which closes the run KILLED. Before, it killed the workers too, and torch failed the fit ("DataLoader worker
    ... is killed by signal: Terminated"): the run ended FAILED, with a traceback."""
    from tests.test_finetune import write_images

    db = tmp_path / "mlflow.db"
    images = write_images(tmp_path / "images", n=12)
    proc = _start(["-m", "lesson5", "model=resnet34", "model.weights=none", "data=images", f"data.path={images}",
                   "data.size=32", "data.num_workers=2", "trainer.bs=4", "trainer.epochs=1000",
                   "trainer.progress=false", f"tracking.uri=sqlite:///{db}", "tracking.experiment=test"], tmp_path)
    _wait_until_training(proc, db)
    err = _signal(proc, "group", signal.SIGTERM)
    assert proc.returncode == 143 and "Traceback" not in err, err[-3000:]
    _, (run,) = _all_runs(db)
    assert run.info.status == "KILLED" and run.data.tags["outcome"] == "interrupted", run.data.tags
    _no_helper_left(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("to", "signum"), [("group", signal.SIGINT), ("main", signal.SIGTERM),
                                           ("group", signal.SIGTERM)], ids=["INT-group", "TERM-main", "TERM-group"])
def test_a_signal_stops_the_claims_report_and_its_workers(tmp_path, movielens_dir, to, signum):
    """Ctrl-C (or `scancel`'s SIGTERM) reaches the report's workers with it; a SIGTERM to the report alone is passed
    on to them: either way their runs end KILLED, nothing is left RUNNING, and no worker or writer outlives it."""
    db = tmp_path / "mlflow.db"
    proc = _start(["-m", "lesson5.reproduce", "quick=true", "only=y_range,bias_ranks", "workers=2",
                   f"out={tmp_path / 'claims.md'}", f"data.path={movielens_dir}", "data.verify=false",
                   "trainer.epochs=1000", f"tracking.uri=sqlite:///{db}"], tmp_path)
    _wait_until_training(proc, db)
    err = _signal(proc, to, signum)
    assert proc.returncode == CODES[signum], err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    _, runs = _all_runs(db)
    assert runs and all(r.info.status == "KILLED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert not (tmp_path / "claims.md").exists()
    _no_helper_left(tmp_path)
