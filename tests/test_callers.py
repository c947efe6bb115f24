"""The Python API from any caller: the tracking writer is a `python -m` process of its own, so a script without a
main guard, standard input, `python -c`, a thread and a Jupyter kernel all train and track; a writer that dies
is noticed mid-fit, and one that cannot start fails before training, each with its own reason."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from mlflow import MlflowClient

from lesson5 import compose, tracking
from lesson5.errors import TrackingError
from lesson5.learner import Callback
from lesson5.run import run


def _script(tiny: list[str], marker: Path) -> str:
    """What a user writes: no `if __name__ == "__main__":` guard. It notes each time it runs in `marker`."""
    return textwrap.dedent(f"""
        import lesson5
        import lesson5.run

        with open({str(marker)!r}, "a") as f:
            f.write("ran\\n")
        result = lesson5.run.run(lesson5.compose({tiny!r}))
        print("RUN", result.run_id)
    """)


def _assert_finished(tmp_path: Path, run_id: str) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.data.tags["outcome"] == "finished"
    assert {"valid_rmse", "train_loss_step", "train_seconds"} <= set(r.data.metrics)
    assert [m.step for m in client.get_metric_history(run_id, "epoch")] != []


def _run_id(stdout: str) -> str:
    return stdout.split("RUN ")[-1].split()[0]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["script", "stdin", "-c"])
def test_a_script_without_a_main_guard_trains_and_tracks(tiny, tmp_path, how):
    """Before, the writer was a multiprocessing spawn child, which re-imports the caller's __main__: a script
    failed, standard input hung. The folder is the user's, not the checkout."""
    code = _script(tiny, tmp_path / "ran.txt")
    (tmp_path / "train.py").write_text(code)
    argv, stdin = {"script": (["train.py"], None), "stdin": (["-"], code), "-c": (["-c", code], None)}[how]
    done = subprocess.run([sys.executable, *argv], input=stdin, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_finished(tmp_path, _run_id(done.stdout))
    assert (tmp_path / "ran.txt").read_text() == "ran\n"  # the script's body ran once: no process re-ran it


@pytest.mark.slow
def test_a_run_from_a_thread_trains_and_tracks(tiny, tmp_path):
    results, errors = [], []

    def train():
        try:
            results.append(run(compose(tiny)))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=train)
    t.start()
    t.join(300)
    assert not errors and not t.is_alive(), errors
    _assert_finished(tmp_path, results[0].run_id)


@pytest.mark.slow
def test_a_run_from_a_jupyter_kernel_trains_and_tracks(tiny, tmp_path):
    pytest.importorskip("ipykernel", reason="needs ipykernel (the test extra)")
    manager = pytest.importorskip("jupyter_client.manager", reason="needs jupyter_client (the test extra)")
    km, kc = manager.start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    out: list[str] = []

    def output(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    try:
        reply = kc.execute_interactive(_script(tiny, tmp_path / "ran.txt"), timeout=300, output_hook=output)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "ok", "".join(out)[-3000:]
    _assert_finished(tmp_path, _run_id("".join(out)))


def _epoch_logged(db: Path) -> bool:
    """Read-only, with sqlite3, so as not to race the writer."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute("SELECT 1 FROM metrics WHERE key = 'epoch' LIMIT 1").fetchone() is not None
    except sqlite3.Error:
        return False


class KillWriter(Callback):
    """SIGKILLs the writer once an epoch of the run is in the store, then counts the epochs that still end."""

    def __init__(self, writers: list, db: Path):
        self.writers, self.db, self.killed, self.epochs_after = writers, db, False, 0

    def after_epoch(self, learn) -> None:
        if self.killed:
            self.epochs_after += 1
        elif _epoch_logged(self.db):
            os.kill(self.writers[0].pid, signal.SIGKILL)
            self.killed = True


def test_a_writer_killed_mid_run_stops_training_with_its_cause_and_fails_the_run(tiny, tmp_path, monkeypatch):
    writers = []
    start = tracking.start_module
    monkeypatch.setattr(tracking, "start_module", lambda *a, **k: writers.append(start(*a, **k)) or writers[-1])
    epochs = 2000  # far more than the kill needs: the fit must stop long before its end
    killer = KillWriter(writers, tmp_path / "mlflow.db")
    with pytest.raises(TrackingError, match="SIGKILL") as raised:
        run(compose([*tiny, f"trainer.epochs={epochs}", "tracking.run_name=doomed"]), callbacks=[killer])
    assert killer.killed and killer.epochs_after < epochs // 2
    assert "marked FAILED" in str(raised.value)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (r,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert r.info.status == "FAILED" and "SIGKILL" in r.data.tags["stop_reason"]


class CountEpochs(Callback):
    epochs = 0

    def after_epoch(self, learn) -> None:
        self.epochs += 1


def _not_a_database(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "mlflow.db").write_bytes(b"not a database, " * 100)


def _broken_mlflow(tmp_path: Path, monkeypatch) -> None:
    """An MLflow that dies on import, saying why, in the writer only (the trainer has imported the real one)."""
    fake = tmp_path / "fake" / "mlflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import os, sys\nprint('broken MLflow: reinstall it', file=sys.stderr)\n"
                                      "sys.stderr.flush()\nos._exit(3)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]))


@pytest.mark.parametrize("breakage, reason", [
    (_not_a_database, "file is not a database"),
    (_broken_mlflow, r"writer exited \(code 3; its last error line: broken MLflow: reinstall it\)")])
def test_a_writer_that_cannot_start_stops_the_run_with_its_own_reason(tiny, tmp_path, monkeypatch, breakage, reason):
    breakage(tmp_path, monkeypatch)
    epochs, counter = 2000, CountEpochs()
    with pytest.raises(TrackingError, match=reason):
        run(compose([*tiny, f"trainer.epochs={epochs}"]), callbacks=[counter])
    assert counter.epochs < epochs // 2
