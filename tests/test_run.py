"""End to end: run(cfg) on small data into a real temporary MLflow store."""

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ctrl_c_reaches_it
from mlflow import MlflowClient

from lesson5 import compose
from lesson5.errors import DivergedError, TrackingError
from lesson5.run import run

ROOT = Path(__file__).resolve().parents[1]
CONTRACT_METRICS = {"train_loss", "valid_loss", "valid_rmse", "valid_mae", "train_seconds"}


def runs(tmp_path, experiment="test"):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id]) if exp else []


def test_short_run_logs_the_contract(tiny, tmp_path):
    result = run(compose([*tiny]), overrides=["trainer.epochs=2"])
    client, found = runs(tmp_path)
    assert len(found) == 1
    r = found[0]
    assert r.info.run_id == result.run_id and r.info.status == "FINISHED"
    assert CONTRACT_METRICS <= set(r.data.metrics)
    assert r.data.metrics["valid_rmse"] == pytest.approx(result.metrics["valid_rmse"])
    for key, value in {"model.n_factors": "40", "optim.wd": "0.1", "trainer.epochs": "2", "data.split": "random",
                       "data.valid_pct": "0.1", "tracking.experiment": "test", "trainer.seed": "42"}.items():
        assert r.data.params[key] == value
    assert r.data.tags["overrides"] == "trainer.epochs=2"
    assert {"mlflow.source.git.commit", "torch_version", "device", "seed", "seed_group"} <= set(r.data.tags)
    per_epoch = -(-2700 // 64)  # steps in an epoch over 90% of 3,000 ratings
    logged = sorted({*range(10, 2 * per_epoch + 1, 10), per_epoch, 2 * per_epoch})  # every 10th, each epoch's last
    history = client.get_metric_history(r.info.run_id, "train_loss_step")
    assert sorted(m.step for m in history) == logged
    lrs = [m.value for m in sorted(client.get_metric_history(r.info.run_id, "lr"), key=lambda m: m.step)]
    assert len(lrs) == len(logged) and max(lrs) == pytest.approx(5e-3, rel=2e-2) and lrs[0] < lrs[len(lrs) // 3]
    for key in ("valid_rmse", "train_seconds", "peak_memory_mb"):  # logged once, not again in a summary
        assert len(client.get_metric_history(r.info.run_id, key)) == (2 if key == "valid_rmse" else 1)
    arts = {a.path for a in client.list_artifacts(r.info.run_id)}
    arts |= {a.path for a in client.list_artifacts(r.info.run_id, "plots")}
    assert {"config.yaml", "plots/loss.png", "plots/schedule.png", "weights.pt"} <= arts


def test_training_learns_and_is_deterministic(tiny):
    cfg = compose([*tiny, "tracking=none", "trainer.epochs=4", "optim.lr=3e-2", "optim.wd=0"])
    first, second = run(cfg), run(cfg)
    assert first.metrics["valid_rmse"] == second.metrics["valid_rmse"]
    assert first.metrics["valid_loss"] < first.metrics["train_loss"] * 3
    baseline = run(compose([*tiny, "tracking=none", "trainer.epochs=1", "optim.lr=1e-5"])).metrics["valid_rmse"]
    assert first.metrics["valid_rmse"] < baseline - 0.2  # it learned something


def test_cv_reports_mean_and_std_with_a_child_run_per_fold(tiny, tmp_path):
    # Five folds of 600 rows each: mku.sh's 20,000-line folds scaled down would not fit 3,000 ratings.
    from lesson5.data import movielens
    orig = movielens.FOLD_ROWS
    movielens.FOLD_ROWS = 600
    try:
        result = run(compose([*tiny, "data.split=cv", "trainer.epochs=1"]))
    finally:
        movielens.FOLD_ROWS = orig
    assert set(result.folds) == {"u1", "u2", "u3", "u4", "u5"}
    assert "valid_rmse_std" in result.metrics
    _, found = runs(tmp_path)
    parent = [r for r in found if r.info.run_id == result.run_id][0]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == result.run_id]
    assert len(children) == 5 and all(c.info.status == "FINISHED" for c in children)
    assert parent.data.metrics["valid_rmse"] == pytest.approx(
        sum(c.data.metrics["valid_rmse"] for c in children) / 5)


def test_diverging_run_is_marked_failed_with_the_reason(tiny, tmp_path):
    cfg = compose([*tiny, "model.y_range=null", "optim=sgd", "optim.lr=1e6", "schedule=constant"])
    with pytest.raises(DivergedError, match="diverged"):
        run(cfg)
    client, found = runs(tmp_path)
    assert found[0].info.status == "FAILED" and found[0].data.tags["outcome"] == "diverged"
    assert "diverged" in found[0].data.tags["stop_reason"]
    history = sorted(client.get_metric_history(found[0].info.run_id, "train_loss_step"), key=lambda m: m.step)
    assert 0 < len(history) <= 7 and history[-1].step <= 64  # every 10th step up to the failing check, and it
    assert not math.isfinite(history[-1].value) or history[-1].value > 100 * history[0].value


@pytest.mark.parametrize("uri, hint", [("http://127.0.0.1:9", "cannot reach"),
                                       ("sqlite:////nonexistent/dir/x.db", "not writable")])
def test_unreachable_store_fails_before_training(tiny, uri, hint):
    with pytest.raises(TrackingError, match=hint):
        run(compose([*tiny, f"tracking.uri={uri}"]))


@pytest.mark.slow
def test_cli_prints_the_metrics_and_where_the_run_is(tmp_path, movielens_dir):
    """The command a user types: its table and UI command reach a pipe whole (it exits without the interpreter's
    teardown), exit code 0, no leak warning, and the run it names is FINISHED with its plots."""
    cmd = [sys.executable, "-m", "lesson5", f"data.path={movielens_dir}", "data.verify=false", "trainer.epochs=2"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "leaked" not in done.stderr, done.stderr[-3000:]  # multiprocessing's exit handler ran
    assert "valid_rmse" in done.stdout and "train_seconds" in done.stdout
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert f"Open the UI: mlflow ui --backend-store-uri {uri}" in done.stdout
    run_id = done.stdout.split("MLflow run ")[1].split()[0]
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run_id, "plots")} == {"plots/loss.png", "plots/schedule.png"}


def _epoch_logged(db: Path) -> bool:
    """Read-only, with sqlite3: an MlflowClient here would race the writer to create the store's tables."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute("SELECT 1 FROM metrics WHERE key = 'epoch' LIMIT 1").fetchone() is not None
    except sqlite3.Error:  # not created yet
        return False


@pytest.mark.slow
def test_ctrl_c_marks_the_run_killed(tmp_path, movielens_dir):
    cmd = [sys.executable, "-m", "lesson5", f"data.path={movielens_dir}", "data.verify=false", "trainer.epochs=1000",
           "trainer.progress=false", "tracking.experiment=test"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=ctrl_c_reaches_it)
    deadline = time.time() + 120
    while time.time() < deadline and not _epoch_logged(tmp_path / "mlflow.db"):  # wait until training is on
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # the whole process group, as a terminal's Ctrl-C does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (r,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert r.info.status == "KILLED"


@pytest.mark.slow
def test_writer_fails_runs_whose_trainer_died(tmp_path):
    script = textwrap.dedent(f"""
        import os, time
        from lesson5.tracking import Tracker
        t = Tracker("sqlite:///{tmp_path}/mlflow.db")
        rid = t.start_run(experiment="test", name="doomed", params={{}}, tags={{}})
        t.run_info(rid)
        os._exit(3)  # dies without closing the run
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=120)
    assert done.returncode == 3
    deadline = time.time() + 30
    while time.time() < deadline:
        _, found = runs(tmp_path)
        if found and found[0].info.status != "RUNNING":
            break
        time.sleep(0.5)
    assert found[0].info.status == "FAILED"
    assert "exited without closing" in found[0].data.tags["stop_reason"]


def test_closing_a_tracker_whose_writer_died_fails_at_once(tmp_path):
    """A writer killed (say, out of memory) is reported at once, not waited on until close()'s timeout, and the
    run it held open is marked FAILED rather than left RUNNING."""
    from lesson5.tracking import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri)
    rid = tracker.start_run(experiment="e", name="r", params={}, tags={})
    run_id = tracker.run_info(rid).run_id
    tracker._proc.kill()
    tracker._proc.wait(10)
    with pytest.raises(TrackingError, match="writer exited .* marked FAILED"):
        tracker.close(timeout=60)
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FAILED" and "writer exited" in run.data.tags["stop_reason"]


def test_flush_returns_once_ended_runs_and_their_files_are_in_the_store(tmp_path):
    """What a claims-report worker waits for before the report reads a run back (lesson5.pool, `stored`); the
    tracker stays open for the next run. A writer that died meanwhile is a TrackingError, not a wait."""
    from lesson5.tracking import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri)
    rid = tracker.start_run(experiment="e", name="r", params={}, tags={})
    tracker.log_files(rid, {"weights.pt": b"x" * 100_000})
    tracker.end_run(rid, "FINISHED")
    tracker.flush(timeout=120)
    run_id = tracker.runs[rid].run_id
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [f.path for f in client.list_artifacts(run_id)] == ["weights.pt"]
    second = tracker.start_run(experiment="e", name="r2", params={}, tags={})
    tracker.end_run(second, "FINISHED")
    tracker._proc.kill()
    tracker._proc.wait(10)
    with pytest.raises(TrackingError, match="writer exited"):
        tracker.flush(timeout=60)
    with pytest.raises(TrackingError):
        tracker.close(timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def test_writers_starting_together_share_a_fresh_store(tmp_path, request, store):
    """Several runs started at once on a new store (a sweep's workers) all get their runs: MLflow's table
    creation, which fails when two processes do it at once, happens under a lock (a flock on SQLite, an
    advisory lock on PostgreSQL)."""
    from lesson5.tracking import Tracker

    if store == "sqlite":
        uri = f"sqlite:///{tmp_path}/mlflow.db"
    else:  # a new database on the session's throwaway server
        import sqlalchemy as sa

        server = request.getfixturevalue("postgres_uri")
        engine = sa.create_engine(server, isolation_level="AUTOCOMMIT")
        with engine.connect() as con:
            con.execute(sa.text("CREATE DATABASE fresh_store"))
        engine.dispose()
        uri = server.replace("/mlflow?", "/fresh_store?")
    trackers = [Tracker(uri) for _ in range(3)]
    rids = [t.start_run(experiment="e", name=f"r{i}", params={}, tags={}) for i, t in enumerate(trackers)]
    for t, rid in zip(trackers, rids):
        t.end_run(rid, "FINISHED")
    for t in trackers:
        t.close(timeout=120)
    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert sorted(r.info.status for r in found) == ["FINISHED"] * 3


@pytest.mark.slow
def test_hydras_multirun_makes_one_run_per_job(tmp_path, movielens_dir):
    cmd = [sys.executable, "-m", "lesson5", "-m", "model.n_factors=2,3", f"data.path={movielens_dir}",
           "data.verify=false", "trainer.epochs=1", "trainer.progress=false", "tracking.experiment=multi"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    found = client.search_runs([client.get_experiment_by_name("multi").experiment_id])
    assert sorted((r.data.params["model.n_factors"], r.info.status) for r in found) == [("2", "FINISHED"),
                                                                                       ("3", "FINISHED")]
