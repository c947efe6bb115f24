"""Nothing lost: runs spooled when the store is away (or by design, offline), then sent with `lesson5.sync`."""

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import write_movielens
from mlflow import MlflowClient

from lesson5 import compose
from lesson5.run import run
from lesson5.sync import main as sync_main
from lesson5.tracking.messages import Summary
from lesson5.tracking.spool import HEAD, MAGIC, Known, Spool, pending, spool_calls

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


@pytest.fixture(scope="module")
def offline_spool(tmp_path_factory):
    """One offline run's spool (its folder, as it was closed) and the store it is meant for."""
    tmp = tmp_path_factory.mktemp("spooled")
    overrides = [f"data.path={write_movielens(tmp / 'ml')}", "data.verify=false", "trainer.epochs=2",
                 "trainer.bs=64", "trainer.progress=false", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
                 "tracking.experiment=test", "tracking.mode=offline", "tracking.log_model=false"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        run(compose(overrides))
    (folder,) = pending(tmp / ".lesson5" / "offline")
    return folder, MlflowClient(f"sqlite:///{tmp}/mlflow.db")


def _records(data: bytes) -> list[tuple[int, int, str]]:
    """Each record of a spool's file: where it starts, its length with its header, its message's type."""
    import pickle

    out, at = [], len(MAGIC)
    while at < len(data):
        (n, _) = HEAD.unpack_from(data, at)
        out.append((at, HEAD.size + n, type(pickle.loads(data[at + HEAD.size:at + HEAD.size + n])).__name__))
        at += HEAD.size + n
    return out


def _damaged_copy(spool: Path, root: Path, data: bytes) -> tuple[Path, Path]:
    """A copy of `spool` under `root` whose messages are `data`; the folder, and where sync moves it aside."""
    shutil.copytree(spool, root / spool.name)
    (root / spool.name / "messages.pkl").write_bytes(data)
    return root / spool.name, root / "damaged" / spool.name


def _runs_of(aside: Path, client) -> list:
    state = aside / "state.json"
    return [client.get_run(i) for i in json.loads(state.read_text()).values()] if state.exists() else []


def test_a_spool_cut_anywhere_is_synced_up_to_the_cut_kept_aside_and_its_run_failed(offline_spool, tmp_path,
                                                                                      capsys):
    """Cut at every record boundary, inside every record's header and inside every payload (as a disk filling
    mid-write leaves it): sync exits 2 naming the file and where it is kept, and the run ends FAILED with the cut
    in its stop_reason, unless the cut is past its end; nothing stays RUNNING and nothing is read twice."""
    spool, client = offline_spool
    data = (spool / "messages.pkl").read_bytes()
    records = _records(data)
    assert [t for _, _, t in records][:1] + [t for _, _, t in records][-2:] == ["StartRun", "EndRun", "End"]
    ended = next(n for n, (_, _, t) in enumerate(records, 1) if t == "EndRun")
    cuts = [(3, 1, 0)]  # inside the format marker
    for n, (start, size, _) in enumerate(records, 1):
        cuts += [(start, n, start), (start + HEAD.size // 2, n, start), (start + HEAD.size + (size - HEAD.size) // 2,
                                                                          n, start)]
    for at, n, start in cuts:
        folder, aside = _damaged_copy(spool, tmp_path / f"cut{at}", data[:at])
        assert sync_main([f"dir={folder.parent}"]) == 2, at
        out, err = capsys.readouterr()
        where = f"{folder / 'messages.pkl'} "
        assert "synced" not in out and where in err and f"at record {n} (byte {start})" in err, (at, err)
        assert f"kept in {aside}" in err and aside.is_dir() and not folder.exists() and not pending(folder.parent)
        runs = _runs_of(aside, client)
        assert len(runs) == (n > 1), at  # the run exists once its StartRun is whole
        for r in runs:
            if n > ended:
                assert r.info.status == "FINISHED" and "stop_reason" not in r.data.tags, at
            else:
                assert r.info.status == "FAILED", at
                assert where in r.data.tags["stop_reason"] and f"record {n} (byte {start})" in r.data.tags[
                    "stop_reason"], at
        assert sync_main([f"dir={folder.parent}"]) == 0 and "nothing to sync" in capsys.readouterr().out
    exp = client.get_experiment_by_name("test").experiment_id
    assert not [r for r in client.search_runs([exp]) if r.info.status == "RUNNING"]


def test_a_garbled_spool_sends_what_precedes_it_and_fails_from_the_command_line(offline_spool, tmp_path):
    spool, client = offline_spool
    data = bytearray((spool / "messages.pkl").read_bytes())
    n, (start, size, kind) = next((n, r) for n, r in enumerate(_records(bytes(data)), 1) if r[2] == "LogFiles")
    data[start + size - 7] ^= 0x55
    folder, aside = _damaged_copy(spool, tmp_path / ".lesson5" / "offline", bytes(data))
    done = sync(tmp_path)
    assert done.returncode == 2 and "synced" not in done.stdout, done.stderr[-2000:]
    assert f"{folder / 'messages.pkl'} is garbled at record {n} (byte {start})" in done.stderr
    assert str(aside) in done.stderr and aside.is_dir()
    (r,) = _runs_of(aside, client)
    assert r.info.status == "FAILED" and f"is garbled at record {n} (byte {start})" in r.data.tags["stop_reason"]
    assert client.get_metric_history(r.info.run_id, "epoch")  # the records before it were sent
    again = sync(tmp_path)
    assert again.returncode == 0 and "nothing to sync" in again.stdout


def test_a_study_parents_spool_cut_before_its_end_fails_the_parent(tmp_path, capsys):
    """A run the spool only continues (Known: a study's parent, open in the store) is ended FAILED too."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("e"), run_name="study tiny").info.run_id
    folder = spool_calls(uri, parent, {"report/tiny.md": b"# Study"}, {"trials_complete": 4}, {"verdict": "x"},
                         "FINISHED", root=tmp_path / "offline")
    data = (folder / "messages.pkl").read_bytes()
    start, size, kind = _records(data)[2]
    assert kind == "Summary"
    (folder / "messages.pkl").write_bytes(data[:start + size - 1])
    assert sync_main([f"dir={tmp_path / 'offline'}"]) == 2
    assert f"cut at record 3 (byte {start})" in capsys.readouterr().err
    run_ = client.get_run(parent)
    assert run_.info.status == "FAILED" and "cut at record 3" in run_.data.tags["stop_reason"]
    assert "verdict" not in run_.data.tags and [a.path for a in client.list_artifacts(parent, "report")]


def test_a_spool_still_being_written_is_skipped_then_synced(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("e")).info.run_id
    spool = Spool(tmp_path / "offline", uri)
    spool.add(Known(1, parent))
    assert sync_main([f"dir={tmp_path / 'offline'}"]) == 0
    assert f"skipped {spool.dir.name}" in capsys.readouterr().out and spool.dir.is_dir()
    spool.add(Summary(1, {"m": 1.0}, {}, "FINISHED"))
    spool.close()
    assert sync_main([f"dir={tmp_path / 'offline'}"]) == 0
    assert "synced" in capsys.readouterr().out and not spool.dir.exists()
    assert client.get_run(parent).info.status == "FINISHED"


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
