"""MLflow tracking through a writer process, so that store latency never slows training.

The trainer holds a `Tracker`: it puts typed messages (`messages.py`) on a queue and never imports MLflow. A
spawned writer (`writer.py`) turns them into MlflowClient calls on its own core. If the writer dies, the Tracker
marks its runs FAILED itself (importing MLflow only then), so no run is left RUNNING.

Imported by the writer too, so nothing here imports torch.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import queue
import sys
import time
from typing import Any, Optional, Union

from lesson5.errors import TrackingError
from lesson5.outcome import Outcome
from lesson5.tracking import writer
from lesson5.tracking.messages import (Close, Closed, EndRun, Failed, LogFiles, LogMetrics, LogModel, Row, StartRun,
                                       Started)
from lesson5.tracking.spool import ROOT as SPOOL_ROOT
from lesson5.tracking.store import check_reachable, fail_run, resolve_uri, ui_command, ui_link  # noqa: F401 - the API


class Tracker:
    """Main-process handle on the writer. Runs are named by small local ids until MLflow assigns theirs."""

    def __init__(self, uri: Optional[str], offline: bool = False, models: bool = False):
        """`offline`: spool everything for `python -m lesson5.sync` (tracking.mode=offline), never touching the
        store; online, a store that stops answering mid-run is spooled from then on. `models`: runs will log
        MLflow models (tracking.log_model), so the writer imports torch while it waits."""
        self.uri = resolve_uri(uri)
        if not offline:
            check_reachable(self.uri)
        ctx = mp.get_context("spawn")  # fork would copy torch's threads and state into the writer
        self._inbox, self._outbox = ctx.Queue(), ctx.Queue()
        self._proc = ctx.Process(target=writer.main, name="lesson5-mlflow-writer", daemon=True,
                                 args=(self.uri, self._inbox, self._outbox, SPOOL_ROOT.resolve(), offline, models))
        self.spooled: Optional[str] = None  # the spool folder, once the writer has closed, if it used one
        self._proc.start()
        self._ids = itertools.count(1)
        self._open: set[int] = set()
        self.runs: dict[int, Started] = {}
        self._errors: dict[Optional[int], str] = {}  # by local run id; None: the writer itself
        self.parents_seen: set[str] = set()  # MLflow run ids a child of this tracker's has been created under

    def start_run(self, *, experiment: str, name: Optional[str], params: dict[str, Any], tags: dict[str, Any],
                  files: dict[str, bytes] = {}, parent: Union[int, str, None] = None,
                  datasets: list[dict[str, str]] = []) -> int:
        """Queue a new run; returns its local id. `parent` is a local id, or an MLflow run id from any process;
        `datasets` are MLflow dataset inputs (see messages.StartRun)."""
        rid = next(self._ids)
        self._open.add(rid)
        # as plain strings: unpickling a torch or numpy value (torch.__version__ is one) imports torch in the writer
        self._inbox.put(StartRun(rid, experiment, name, {k: str(v) for k, v in params.items()},
                                 {k: str(v) for k, v in tags.items()}, dict(files), parent,
                                 [{k: str(v) for k, v in d.items()} for d in datasets]))
        return rid

    def log_metrics(self, rid: int, rows: list[Row]) -> None:
        """(key, value, step) rows, stamped now."""
        self._inbox.put(LogMetrics(rid, int(time.time() * 1000), [(k, float(v), int(s)) for k, v, s in rows]))

    def log_files(self, rid: int, files: dict[str, bytes]) -> None:
        """Artifacts by their path in the run, e.g. {"model/weights.pt": b"..."}."""
        self._inbox.put(LogFiles(rid, files))

    def log_model(self, rid: int, payload: bytes) -> None:
        """An MLflow model named "model": torch.save({"model", "input", "output"}) bytes (messages.LogModel)."""
        self._inbox.put(LogModel(rid, payload))

    def end_run(self, rid: int, status: str, tags: dict[str, str] = {}) -> None:
        """Close a run as FINISHED, FAILED or KILLED, setting `tags` first; the writer draws its plots."""
        self._inbox.put(EndRun(rid, status, {k: str(v) for k, v in tags.items()}))
        self._open.discard(rid)

    def _drain(self, block: bool, timeout: float = 0.0):
        try:
            msg = self._outbox.get(block, timeout) if block else self._outbox.get_nowait()
        except queue.Empty:
            return None
        if isinstance(msg, Started):
            self.runs[msg.rid] = msg
        elif isinstance(msg, Failed):
            self._errors.setdefault(msg.rid, msg.error)
        return msg

    def run_info(self, rid: int, timeout: float = 120.0) -> Started:
        """The MLflow run id and experiment id of a started run, waiting for the writer to report it."""
        deadline = time.monotonic() + timeout
        while (rid not in self.runs and rid not in self._errors and None not in self._errors
               and time.monotonic() < deadline):
            self._drain(block=True, timeout=0.5)
        if rid not in self.runs:
            why = self._errors.get(rid) or self._errors.get(None) or "timed out"
            raise TrackingError(f"MLflow store {self.uri}: the run was not created ({why})")
        return self.runs[rid]

    def _raise_reported(self) -> None:
        if self._errors:
            raise TrackingError(f"MLflow store {self.uri}: {next(iter(self._errors.values()))}")

    def check(self) -> None:
        """Raise TrackingError if the writer has reported a failure."""
        while self._drain(block=False):
            pass
        self._raise_reported()
        if not self._proc.is_alive():
            raise TrackingError(f"the MLflow writer process exited (code {self._proc.exitcode})")

    def close(self, timeout: float = 300.0) -> None:
        """Wait until the writer has written everything and closed every run, then stop it."""
        for rid in list(self._open):
            self.end_run(rid, "KILLED", Outcome("KILLED", "error",
                                                "the trainer closed the tracker with this run still open").tags())
        self._inbox.put(Close())
        deadline = time.monotonic() + timeout
        closed = False
        while not closed and time.monotonic() < deadline:
            msg = self._drain(block=True, timeout=0.5)
            closed = isinstance(msg, Closed)
            if closed:
                self.spooled = msg.spooled
            if msg is None and not self._proc.is_alive():  # it died (killed, out of memory) without closing
                break
        self._proc.join(timeout=10)
        self._proc.terminate()  # if it is still there
        for q in (self._inbox, self._outbox):  # release their semaphores and feeder threads now
            q.close()
            q.join_thread()
        if not closed:
            why = f"exited (code {self._proc.exitcode})" if self._proc.exitcode is not None else \
                f"did not finish within {timeout:.0f} s"
            self._fail_running_runs(f"the MLflow writer {why} before closing this run")
            raise TrackingError(f"the MLflow writer {why} before writing everything to {self.uri}; its runs are "
                                f"marked FAILED. Check the machine's memory and the store, then run again.")
        self._raise_reported()

    def _fail_running_runs(self, reason: str) -> None:
        """Without a writer, close its started runs here, so none is left RUNNING (MLflow imported only now)."""
        try:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=self.uri)
            for info in self.runs.values():
                if client.get_run(info.run_id).info.status == "RUNNING":
                    fail_run(client, info.run_id, reason)
        except Exception as e:  # noqa: BLE001 - the store itself may be the problem; the caller raises anyway
            print(f"lesson5 tracking: could not mark the runs FAILED: {e}", file=sys.stderr)
