"""MLflow tracking through a writer process, so that store latency never slows training.

A synchronous MLflow call costs milliseconds (SQLite here: ~85 us per metric even in `log_batch`), and a lesson
run makes ~21,000 per-step values. The trainer therefore does not import MLflow: it puts messages on a queue, and
a spawned writer process, on its own core, turns them into MlflowClient calls (metrics into a SQL store in bulk,
`sql_metrics`), draws the plots and closes the runs. The writer ignores Ctrl-C (the trainer decides the status)
and, if the trainer dies without closing its runs, marks them FAILED; if the writer itself dies, the trainer marks
them FAILED (importing MLflow only then), so no run is left RUNNING.

This module is imported by the writer, so it must not import torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import itertools
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from lesson5.errors import TrackingError

METRICS_PER_CALL = 1000  # MLflow's log_batch limit
SETUP_LOCK_KEY = 0x6C6573736F6E35  # "lesson5": the PostgreSQL advisory lock held while a writer sets up its store


def resolve_uri(uri: Optional[str]) -> str:
    """tracking.uri, or MLflow's embedded default `sqlite:///mlflow.db` made absolute for the current folder."""
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, on a store that cannot work."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingError(f"tracking.uri={uri}: folder {folder} does not exist or is not writable. "
                                f"Create it, or set tracking.uri to another location (or tracking=none).")
    elif uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
        except (urllib.error.URLError, OSError) as e:
            raise TrackingError(f"tracking.uri={uri}: cannot reach the MLflow server ({e}). Start it with "
                                f"`mlflow server --port ...`, or fix tracking.uri (or use tracking=none).") from e


def _plain(rows: list[tuple[str, float, int]]) -> list[tuple[str, float, int]]:
    """(key, value, step) rows as plain Python values, never tensors (see Tracker.start_run)."""
    return [(k, float(v), int(s)) for k, v, s in rows]


class Tracker:
    """Main-process handle on the writer. Runs are named by small local ids until MLflow assigns theirs."""

    def __init__(self, uri: Optional[str]):
        self.uri = resolve_uri(uri)
        check_reachable(self.uri)
        ctx = mp.get_context("spawn")  # fork would copy torch's threads and state into the writer
        self._inbox, self._outbox = ctx.Queue(), ctx.Queue()
        self._proc = ctx.Process(target=_writer, args=(self.uri, self._inbox, self._outbox),
                                 name="lesson5-mlflow-writer", daemon=True)
        self._proc.start()
        self._ids = itertools.count(1)
        self._open: set[int] = set()
        self.runs: dict[int, dict[str, str]] = {}  # local id -> {"run_id", "experiment_id"}
        self._errors: list[str] = []

    def start_run(self, *, experiment: str, name: Optional[str], params: dict[str, Any], tags: dict[str, str],
                  files: dict[str, bytes] = {}, parent: Optional[int] = None) -> int:
        rid = next(self._ids)
        self._open.add(rid)
        # as plain strings: unpickling a torch or numpy value (torch.__version__ is one) imports torch in the writer
        params, tags = {k: str(v) for k, v in params.items()}, {k: str(v) for k, v in tags.items()}
        self._inbox.put(("start", rid, parent, experiment, name, params, tags, files))
        return rid

    def log_metrics(self, rid: int, rows: list[tuple[str, float, int]]) -> None:
        """(key, value, step) rows, stamped now."""
        self._inbox.put(("metrics", rid, int(time.time() * 1000), _plain(rows)))

    def plan(self, rid: int, rows: list[tuple[str, float, int]]) -> None:
        """Per-step values a run is expected to log (its schedule), for drawing them before the run ends."""
        self._inbox.put(("plan", rid, _plain(rows)))

    def log_files(self, rid: int, files: dict[str, bytes]) -> None:
        """Artifacts by their path in the run, e.g. {"model/weights.pt": b"..."}."""
        self._inbox.put(("files", rid, files))

    def end_run(self, rid: int, status: str, reason: Optional[str] = None) -> None:
        """Close a run as FINISHED, FAILED or KILLED; the writer draws its plots first."""
        self._inbox.put(("end", rid, status, reason))
        self._open.discard(rid)

    def _drain(self, block: bool, timeout: float = 0.0) -> Optional[tuple]:
        try:
            msg = self._outbox.get(block, timeout) if block else self._outbox.get_nowait()
        except queue.Empty:
            return None
        if msg[0] == "started":
            self.runs[msg[1]] = {"run_id": msg[2], "experiment_id": msg[3]}
        elif msg[0] == "error":
            self._errors.append(msg[2])
        return msg

    def run_info(self, rid: int, timeout: float = 120.0) -> dict[str, str]:
        """{"run_id", "experiment_id"} of a started run, waiting for the writer to report it."""
        deadline = time.monotonic() + timeout
        while rid not in self.runs and not self._errors and time.monotonic() < deadline:
            self._drain(block=True, timeout=0.5)
        if rid not in self.runs:
            raise TrackingError(f"MLflow store {self.uri}: the run was not created "
                                f"({self._errors[0] if self._errors else 'timed out'})")
        return self.runs[rid]

    def check(self) -> None:
        """Raise TrackingError if the writer has reported a failure."""
        while self._drain(block=False):
            pass
        if self._errors:
            raise TrackingError(f"MLflow store {self.uri}: {self._errors[0]}")
        if not self._proc.is_alive():
            raise TrackingError(f"the MLflow writer process exited (code {self._proc.exitcode})")

    def close(self, timeout: float = 300.0) -> None:
        """Wait until the writer has written everything and closed every run, then stop it."""
        for rid in list(self._open):
            self.end_run(rid, "KILLED", "the trainer closed the tracker with this run still open")
        self._inbox.put(("close",))
        deadline = time.monotonic() + timeout
        closed = False
        while not closed and time.monotonic() < deadline:
            msg = self._drain(block=True, timeout=0.5)
            closed = msg is not None and msg[0] == "closed"
            if msg is None and not self._proc.is_alive():  # it died (killed, out of memory) without closing
                break
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()
        for q in (self._inbox, self._outbox):  # release their semaphores and feeder threads now
            q.close()
            q.join_thread()
        if not closed:
            why = f"exited (code {self._proc.exitcode})" if self._proc.exitcode is not None else \
                f"did not finish within {timeout:.0f} s"
            self._fail_running_runs(f"the MLflow writer {why} before closing this run")
            raise TrackingError(f"the MLflow writer {why} before writing everything to {self.uri}; its runs are "
                                f"marked FAILED. Check the machine's memory and the store, then run again.")
        if self._errors:
            raise TrackingError(f"MLflow store {self.uri}: {self._errors[0]}")

    def _fail_running_runs(self, reason: str) -> None:
        """Without a writer, close its started runs here, so none is left RUNNING (MLflow imported only now)."""
        try:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=self.uri)
            for info in self.runs.values():
                if client.get_run(info["run_id"]).info.status == "RUNNING":
                    client.set_tag(info["run_id"], "failure_reason", reason)
                    client.set_terminated(info["run_id"], "FAILED")
        except Exception as e:  # noqa: BLE001 - the store itself may be the problem; the caller raises anyway
            print(f"lesson5 tracking: could not mark the runs FAILED: {e}", file=sys.stderr)


# ---- the writer process ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _setup_lock(uri: str):
    """Serialize the first touch of a SQL store across the writers that may share it.

    MLflow creates and migrates a new store's tables on first use, and two processes doing it at once fail:
    on SQLite "duplicate column name" or "table _alembic_tmp_... already exists", on PostgreSQL a unique
    violation on the new tables' types (6 of 9 writers started together on a fresh database failed). That is
    several commands started together, or a sweep's workers, on one machine or many. SQLite stores take an
    exclusive flock on the database file (SQLite itself uses fcntl locks, which do not interact with it);
    PostgreSQL stores take a session-level advisory lock in their database, which every machine sees.
    """
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if uri.startswith("sqlite:///"):
        with open(uri[len("sqlite:///"):], "ab") as f:  # an empty file is an empty SQLite database
            try:
                fcntl.flock(f, fcntl.LOCK_EX)
            except OSError:  # a file system without flock: go ahead unserialized
                pass
            yield  # closing the file releases the lock
    elif scheme in ("postgresql", "postgres"):
        import sqlalchemy as sa

        engine = sa.create_engine(uri, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as con:
                con.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": SETUP_LOCK_KEY})
                yield  # closing the connection ends the session, which releases the lock
        finally:
            engine.dispose()
    else:
        yield


def _add_rows(series: dict[str, list[tuple[int, float]]], rows) -> dict[str, list[tuple[int, float]]]:
    """Append (key, value, step) rows to per-key (step, value) series, as the plots read them."""
    for k, v, s in rows:
        series.setdefault(k, []).append((s, v))
    return series


class _Writer:
    def __init__(self, uri: str, outbox):
        from mlflow import MlflowClient  # imported here, in the writer, never in the trainer

        from lesson5.sql_metrics import sql_store

        with _setup_lock(uri):
            self.client = MlflowClient(tracking_uri=uri)
            self.client.search_experiments(max_results=1)  # touch the store now, so a bad one is reported early
        self.sql = sql_store(self.client)  # a SQL store takes the per-step series in bulk; a server, log_batch
        self.outbox = outbox
        self.runs: dict[int, str] = {}
        self.series: dict[int, dict[str, list[tuple[int, float]]]] = {}
        self.tables: dict[int, dict[str, object]] = {}  # JSON artifacts by path, per run
        self.drawn: dict[int, dict[str, tuple[dict, bytes]]] = {}  # plots drawn ahead: name -> (series shown, PNG)

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another worker created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def start(self, rid, parent, experiment, name, params, tags, files):
        from mlflow.entities import Param
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        exp_id = self._experiment_id(experiment)
        if parent is not None and parent in self.runs:
            tags = {**tags, MLFLOW_PARENT_RUN_ID: self.runs[parent]}
        run = self.client.create_run(exp_id, run_name=name, tags=tags)
        run_id = run.info.run_id
        self.runs[rid], self.series[rid], self.tables[rid], self.drawn[rid] = run_id, {}, {}, {}
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])
        self.files(rid, files)
        self.outbox.put(("started", rid, run_id, exp_id))

    def metrics(self, rid, timestamp, rows):
        from mlflow.entities import Metric

        _add_rows(self.series[rid], rows)
        if self.sql is not None:
            from lesson5.sql_metrics import insert_metrics

            try:
                if insert_metrics(self.sql, self.runs[rid], timestamp, rows):
                    return
            except (AttributeError, TypeError) as e:  # another MLflow's store internals; nothing was written
                print(f"lesson5 tracking: bulk metric writes do not fit this MLflow ({e}); using log_batch",
                      file=sys.stderr)
                self.sql = None
        batch = [Metric(k, v, timestamp, s) for k, v, s in rows]
        for i in range(0, len(batch), METRICS_PER_CALL):
            self.client.log_batch(self.runs[rid], metrics=batch[i : i + METRICS_PER_CALL])

    def files(self, rid, files):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            for rel, data in files.items():
                path = Path(tmp) / Path(rel).name
                path.write_bytes(data)
                folder = str(Path(rel).parent)
                self.client.log_artifact(self.runs[rid], str(path), None if folder == "." else folder)
                if rel.endswith(".json"):  # data for the plots drawn when the run ends
                    self.tables[rid][rel] = json.loads(data)

    def end(self, rid, status, reason):
        run_id = self.runs[rid]
        try:
            self._plot(rid)
        finally:
            if reason:
                self.client.set_tag(run_id, "failure_reason", reason[:5000])
            self.client.set_terminated(run_id, status)
            del self.series[rid], self.tables[rid], self.drawn[rid]

    def plan(self, rid, rows):
        """Draw the schedule from its planned values while the fit runs (~0.08 s less for the trainer to wait
        for at its end); _plot uses the drawing only if the run logged exactly those values."""
        series = _add_rows({}, rows)
        plots = _plots()
        self.drawn[rid]["schedule"] = (series, plots.png(plots.schedule(series)))

    def _plot(self, rid):
        series = self.series[rid]
        ready = {name: png for name, (shown, png) in self.drawn[rid].items()  # a fit stopped early differs
                 if all(series.get(k) == points for k, points in shown.items())}
        for name, png in _plots().run_plots(series, self.tables[rid], skip=ready):
            ready[name] = png
        self.files(rid, {f"plots/{name}.png": png for name, png in ready.items()})

    def fail_open_runs(self, reason):
        for rid in list(self.series):
            self.client.set_tag(self.runs[rid], "failure_reason", reason)
            self.client.set_terminated(self.runs[rid], "FAILED")


def _plots():
    """lesson5.plots. Importing it (matplotlib, ~0.5 s) ends the writer's start-up: what was made so far is frozen
    out of the cyclic collector's scans, and the collector goes back on."""
    from lesson5 import plots

    if not gc.isenabled():
        gc.freeze()
        gc.enable()
    return plots


def _writer(uri: str, inbox, outbox) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; it then closes the runs
    # Importing MLflow and matplotlib makes ~200k objects that the cyclic collector would rescan on each full
    # pass (0.4-0.6 s of the writer's CPU per run); it stays off until _plots.
    gc.disable()
    parent = os.getppid()
    try:
        w = _Writer(uri, outbox)
    except Exception as e:  # noqa: BLE001
        outbox.put(("error", None, f"{type(e).__name__}: {e}"))
        w = None
    broken: set[int] = set()
    while True:
        if w is not None and not gc.isenabled() and inbox.empty():
            _plots()  # while idle, not when a run ends
        try:
            msg = inbox.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the trainer died without closing its runs
                if w is not None:
                    w.fail_open_runs("the training process exited without closing this run")
                return
            continue
        kind = msg[0]
        if kind == "close":
            outbox.put(("closed",))
            outbox.close()
            outbox.join_thread()
            sys.stdout.flush()
            sys.stderr.flush()
            # Everything is committed. Skip the interpreter's teardown of MLflow's module graph (~1.4 s here),
            # which the trainer would otherwise wait for.
            os._exit(0)
        rid = msg[1]
        if w is None or (kind != "end" and rid in broken) or (kind != "start" and rid not in w.runs):
            continue
        try:
            getattr(w, kind)(*msg[1:])
        except Exception as e:  # noqa: BLE001 - reported to the trainer, which raises TrackingError
            broken.add(rid)
            outbox.put(("error", rid, f"{type(e).__name__}: {e}"))
            print(f"lesson5 tracking: {kind} failed: {e}", file=sys.stderr)
