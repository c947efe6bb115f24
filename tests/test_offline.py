"""Nothing lost: runs spooled when the store is away (or by design, offline), then sent with `lesson5.sync`."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from lesson5 import compose
from lesson5.run import run

ROOT = Path(__file__).resolve().parents[1]


def sync(cwd, *args):
    return subprocess.run([sys.executable, "-m", "lesson5.sync", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def contents(client, run):
    """What a run holds, without its ids and times: metric rows per key, final metrics, params, artifacts."""
    rid = run.info.run_id
    timing = ("train_seconds", "peak_memory_mb")  # measured, so they differ between any two runs: steps only
    rows = {k: sorted((m.step, None if k in timing else m.value) for m in client.get_metric_history(rid, k))
            for k in run.data.metrics}
    arts = sorted(a.path for d in ("", "plots") for a in client.list_artifacts(rid, d or None) if not a.is_dir)
    params = {k: v for k, v in run.data.params.items() if k != "tracking.run_name" and k != "tracking.mode"}
    return rows, arts, params, run.info.status, run.data.tags.get("outcome")


def test_offline_runs_arrive_complete_and_sync_twice_duplicates_nothing(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(compose([*tiny, "tracking.run_name=online"]))
    offline = run(compose([*tiny, "tracking.mode=offline", "tracking.run_name=offline"]))
    assert offline.run_id.startswith("offline-")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("test").experiment_id
    assert len(client.search_runs([exp])) == 1  # the offline run is only in the spool
    first, second = sync(tmp_path), sync(tmp_path)
    assert first.returncode == 0 and "synced" in first.stdout, first.stderr[-2000:]
    assert second.returncode == 0 and "nothing to sync" in second.stdout
    runs = {r.info.run_name: r for r in client.search_runs([exp])}
    assert set(runs) == {"online", "offline"}
    assert contents(client, runs["offline"]) == contents(client, runs["online"])
    assert contents(client, runs["offline"])[3:] == ("FINISHED", "finished")


def test_sync_with_an_unreachable_store_keeps_the_spool(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(compose([*tiny, "tracking.mode=offline"]))
    done = sync(tmp_path, "to=http://127.0.0.1:9")
    assert done.returncode == 2 and "cannot reach the MLflow store http://127.0.0.1:9" in done.stderr
    assert list((tmp_path / ".lesson5" / "offline").glob("*/messages.pkl"))  # kept as it was


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(backend: Path, artifacts: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{backend}",
                               "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("mlflow server did not start")


def _epoch_logged(backend: Path, name: str) -> bool:
    try:
        with sqlite3.connect(f"file:{backend}?mode=ro", uri=True) as con:
            return con.execute("SELECT 1 FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid WHERE r.name = ? AND "
                               "m.key = 'epoch' LIMIT 1", (name,)).fetchone() is not None
    except sqlite3.Error:
        return False


@pytest.mark.slow
def test_a_tracking_server_killed_mid_run_loses_nothing(tmp_path, movielens_dir):
    """The server dies after the first epoch and comes back after the run: sync (twice) makes the run what an
    uninterrupted run with the same seed is."""
    backend, artifacts, port = tmp_path / "server.db", tmp_path / "artifacts", _free_port()
    uri = f"http://127.0.0.1:{port}"
    base = [sys.executable, "-m", "lesson5", f"data.path={movielens_dir}", "data.verify=false", "trainer.epochs=120",
            "trainer.progress=false", f"tracking.uri={uri}", "tracking.experiment=failover"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = _serve(backend, artifacts, port)
    try:
        ref = subprocess.run([*base, "tracking.run_name=reference"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300, env=env)
        assert ref.returncode == 0, ref.stderr[-3000:]
        proc = subprocess.Popen([*base, "tracking.run_name=failover"], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.time() + 120
        while time.time() < deadline and not _epoch_logged(backend, "failover"):
            time.sleep(0.05)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert "python -m lesson5.sync" in out and "stopped answering" in err
        server = _serve(backend, artifacts, port)
        first, second = sync(tmp_path), sync(tmp_path)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "nothing to sync" in second.stdout
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("failover").experiment_id
        runs = {r.info.run_name: r for r in client.search_runs([exp])}
        assert set(runs) == {"reference", "failover"}  # the run was continued, not copied
        got, want = contents(client, runs["failover"]), contents(client, runs["reference"])
        assert got[0] == want[0]  # every metric row, step and value, once
        assert got == want and got[3:] == ("FINISHED", "finished")
    finally:
        os.killpg(server.pid, signal.SIGKILL)
