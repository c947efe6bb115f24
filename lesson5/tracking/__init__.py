"""Services: MLflow tracking through a writer process, so that store latency never slows training.

The trainer holds a `Tracker`: it puts typed messages (`messages.py`) on a queue and never imports MLflow. A
feeder thread sends them down a pipe to the writer (`writer.py`, a `python -m` process of its own, so that any
caller works: a script without a main guard, standard input, `python -c`, a notebook, a thread), which turns them
into MlflowClient calls on its own core. A reader thread takes the writer's replies and notices at once when its
pipe closes; another shows what the writer prints and keeps its last lines, which a TrackingError then quotes. If
the writer dies, the Tracker marks its runs FAILED itself (importing MLflow only then), so no run is left RUNNING.

Imported by the writer too, so nothing here imports torch.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import itertools
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional, Union

from lesson5.errors import TrackingError
from lesson5.outcome import Outcome
from lesson5.process import start_module
from lesson5.tracking import messages
from lesson5.tracking.messages import Failed, Pipe, Row, Started
from lesson5.tracking.spool import ROOT as SPOOL_ROOT
from lesson5.tracking.store import check_reachable, fail_run, resolve_uri, ui_command, ui_link  # noqa: F401 - the API

_STOP = object()  # to the feeder thread: everything is sent, close the writer's input
_HUNG_UP = object()  # from the reader thread: the writer's output closed (it exited, or was killed)


class Tracker:
    """Main-process handle on the writer. Runs are named by small local ids until MLflow assigns theirs."""

    def __init__(self, uri: Optional[str], offline: bool = False, models: bool = False):
        """`offline`: spool everything for `python -m lesson5.sync` (tracking.mode=offline), never touching the
        store; online, a store that stops answering mid-run is spooled from then on. `models`: runs will log
        MLflow models (tracking.log_model), so the writer imports torch while it waits. A store that cannot work
        (an unwritable folder, a server that does not answer) and MLflow missing are refused here, before any
        data is read. Nothing waits for the writer to open the store (its start-up overlaps the trainer's): if it
        cannot, the trainer learns at its next start_run or log_metrics, from the writer's own reason."""
        self.uri = resolve_uri(uri)
        if not offline:
            check_reachable(self.uri)
            if importlib.util.find_spec("mlflow") is None:
                raise TrackingError(f"MLflow is not installed for {sys.executable}: install it (pip install "
                                    f"mlflow), or run with tracking=none (or tracking.mode=offline)")
        self.spooled: Optional[str] = None  # the spool folder, once the writer has closed, if it used one
        self._ids = itertools.count(1)
        self._open: set[int] = set()
        self.runs: dict[int, Started] = {}
        self._errors: dict[Optional[int], str] = {}  # by local run id; None: the writer itself
        self._raised: set[str] = set()  # errors already raised to the caller, not raised again by close()
        self.parents_seen: set[str] = set()  # MLflow run ids a child of this tracker's has been created under
        self._trouble = False  # set by the reader thread: the writer reported a failure, or its output closed
        self._gone = False  # the hang-up has been taken off the replies queue (_drain)
        self._closed = False
        self._tail: collections.deque[str] = collections.deque(maxlen=20)  # the writer's last lines of stderr
        # its own session, ignoring SIGINT and SIGTERM from its start (process.take_signals): a terminal's Ctrl-C,
        # `kill` of the group or `scancel` stops the trainer, which closes the runs as KILLED and then the writer
        self._proc = start_module("lesson5.tracking.writer", own_group=True, hold_signals=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()  # unbounded: the trainer never waits on the writer
        self._replies: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=target, name=f"lesson5-tracking-{target.__name__[1:]}", daemon=True)
                         for target in (self._feed, self._read, self._show_stderr)]
        self._stderr_thread = self._threads[2]
        for t in self._threads:
            t.start()
        self._outbox.put(messages.Settings(self.uri, str(SPOOL_ROOT.resolve()), offline, models))

    # ---- the three threads: they move bytes, so that the trainer never waits on the writer ----------------------

    def _feed(self) -> None:
        """Pickle and send the queued messages, in order; once the writer is gone, drop them."""
        pipe, alive = Pipe(self._proc.stdin), True
        while True:
            msg = self._outbox.get()
            if msg is _STOP:
                break
            if alive:
                try:
                    pipe.put(msg)
                except (OSError, ValueError):  # the writer died: the reader sees its output close, and says so
                    alive = False
        with contextlib.suppress(OSError):
            self._proc.stdin.close()

    def _read(self) -> None:
        """Queue the writer's replies; then, once its output closes, say so at once."""
        pipe = Pipe(self._proc.stdout)
        while True:
            try:
                msg = pipe.get()
            except Exception:  # noqa: BLE001 - EOF, or a reply cut short: the writer is gone either way
                break
            self._replies.put(msg)
            self._trouble = self._trouble or isinstance(msg, Failed)
        self._replies.put(_HUNG_UP)
        self._trouble = True

    def _show_stderr(self) -> None:
        """Pass the writer's standard error on to this process's (a notebook shows it), keeping its last lines."""
        for raw in iter(self._proc.stderr.readline, b""):
            line = raw.decode(errors="replace")
            if line.strip():
                self._tail.append(line.strip())
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError, AttributeError):  # no stderr here (pythonw), or it was closed
                pass

    # ---- what the trainer calls ---------------------------------------------------------------------------------

    def start_run(self, *, experiment: str, name: Optional[str], params: dict[str, Any], tags: dict[str, Any],
                  files: Optional[dict[str, bytes]] = None, parent: Union[int, str, None] = None,
                  datasets: Sequence[dict[str, str]] = ()) -> int:
        """Queue a new run; returns its local id. `parent` is a local id, or an MLflow run id from any process;
        `datasets` are MLflow dataset inputs (see messages.StartRun). Raises TrackingError if the writer has
        failed or died."""
        if self._trouble:
            self.check()
        rid = next(self._ids)
        self._open.add(rid)
        # as plain strings: unpickling a torch or numpy value (torch.__version__ is one) imports torch in the writer
        self._outbox.put(messages.StartRun(rid, experiment, name, {k: str(v) for k, v in params.items()},
                                           {k: str(v) for k, v in tags.items()}, dict(files or {}), parent,
                                           [{k: str(v) for k, v in d.items()} for d in datasets]))
        return rid

    def log_metrics(self, rid: int, rows: list[Row]) -> None:
        """(key, value, step) rows, stamped now. Raises TrackingError if the writer has failed or died: a fit
        learns it within one flush of its steps (tracking.flush_every), not at the epoch's end."""
        if self._trouble:
            self.check()
        rows = [(k, float(v), int(s)) for k, v, s in rows]
        self._outbox.put(messages.LogMetrics(rid, int(time.time() * 1000), rows))

    def log_files(self, rid: int, files: dict[str, bytes]) -> None:
        """Artifacts by their path in the run, e.g. {"model/weights.pt": b"..."}."""
        self._outbox.put(messages.LogFiles(rid, files))

    def log_model(self, rid: int, payload: bytes) -> None:
        """An MLflow model named "model": torch.save({"model", "input", "output"}) bytes (messages.LogModel)."""
        self._outbox.put(messages.LogModel(rid, payload))

    def end_run(self, rid: int, status: str, tags: Optional[dict[str, str]] = None) -> None:
        """Close a run as FINISHED, FAILED or KILLED, setting `tags` first; the writer draws its plots."""
        self._outbox.put(messages.EndRun(rid, status, {k: str(v) for k, v in (tags or {}).items()}))
        self._open.discard(rid)

    def _drain(self, block: bool, timeout: float = 0.0):
        """Take the writer's next reply (waiting up to `timeout` if `block`) and note what it says; None if none."""
        try:
            msg = self._replies.get(block, timeout)
        except queue.Empty:
            return None
        if isinstance(msg, Started):
            self.runs[msg.rid] = msg
        elif isinstance(msg, Failed):
            self._errors.setdefault(msg.rid, msg.error)
        elif isinstance(msg, messages.Closed):
            self.spooled = msg.spooled
        elif msg is _HUNG_UP:
            self._gone = True
        return msg

    def _death(self) -> str:
        """How the writer ended, with its last line of error output: `exited (code 1; its last error line: ...)`."""
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "closed its output but is still running"
        self._stderr_thread.join(timeout=2)  # the stderr thread, until it has read the writer's last words
        if code == -signal.SIGKILL:  # it could say nothing: whatever it wrote last is not why
            return "exited (killed by SIGKILL: out of memory, or killed by hand)"
        try:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"code {code}"
        except ValueError:
            how = f"killed by signal {-code}"
        return f"exited ({how}; its last error line: {self._tail[-1]})" if self._tail else f"exited ({how})"

    def run_info(self, rid: int, timeout: float = 120.0) -> Started:
        """The MLflow run id and experiment id of a started run, waiting for the writer to report it."""
        deadline = time.monotonic() + timeout
        while (rid not in self.runs and rid not in self._errors and None not in self._errors and not self._gone
               and time.monotonic() < deadline):
            self._drain(block=True, timeout=0.5)
        if rid not in self.runs:
            why = self._errors.get(rid) or self._errors.get(None) or (
                f"the writer {self._death()}" if self._gone else "timed out")
            raise TrackingError(f"MLflow store {self.uri}: the run was not created ({why})")
        return self.runs[rid]

    def _raise_reported(self) -> None:
        """Raise the first failure the writer reported, unless the caller has had it already."""
        for error in self._errors.values():
            if error not in self._raised:
                self._raised.add(error)
                raise TrackingError(f"MLflow store {self.uri}: {error}")

    def check(self) -> None:
        """Raise TrackingError if the writer has reported a failure, or has died."""
        while self._drain(block=False) is not None:
            pass
        self._raise_reported()
        if self._gone:
            raise TrackingError(f"the MLflow writer {self._death()}: training stops, and closing the tracker marks "
                                f"its runs in {self.uri} FAILED")

    def flush(self, timeout: float = 300.0) -> None:
        """Wait until the writer has written (or spooled) everything sent so far: the runs ended so far are in the
        store, their files included. TrackingError if it reported a failure meanwhile, died or timed out."""
        self._outbox.put(messages.Flush())
        deadline = time.monotonic() + timeout
        while not self._gone and time.monotonic() < deadline:
            if isinstance(self._drain(block=True, timeout=0.5), messages.Flushed):
                self._raise_reported()
                return
        self.check()
        raise TrackingError(f"the MLflow writer did not write everything to {self.uri} within {timeout:.0f} s")

    def close(self, timeout: float = 300.0) -> None:
        """Wait until the writer has written everything and closed every run, then let it exit. A writer that
        died first: its runs are marked FAILED here, and TrackingError says why it died."""
        if self._closed:
            return
        self._closed = True
        for rid in list(self._open):
            self.end_run(rid, "KILLED", Outcome("KILLED", "error",
                                                "the trainer closed the tracker with this run still open").tags())
        self._outbox.put(messages.Close())
        self._outbox.put(_STOP)
        deadline = time.monotonic() + timeout
        closed = False
        while not closed and not self._gone and time.monotonic() < deadline:
            closed = isinstance(self._drain(block=True, timeout=0.5), messages.Closed)
        why = None
        if not closed:
            why = self._death() if self._gone else f"did not finish within {timeout:.0f} s"
        try:
            self._proc.wait(timeout=10)  # it exits as soon as it has said Closed
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for t in self._threads:
            t.join(timeout=5)
        for f in (self._proc.stdout, self._proc.stderr):
            f.close()
        if why is not None:
            self._fail_running_runs(f"the MLflow writer {why} before closing this run")
            raise TrackingError(f"the MLflow writer {why} before writing everything to {self.uri}; its runs are "
                                f"marked FAILED")
        self._raise_reported()

    def _fail_running_runs(self, reason: str) -> None:
        """Without a writer, close its started runs here, so none is left RUNNING (MLflow imported only now)."""
        if not self.runs:
            return
        try:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=self.uri)
            for info in self.runs.values():
                if client.get_run(info.run_id).info.status == "RUNNING":
                    fail_run(client, info.run_id, reason)
        except Exception as e:  # noqa: BLE001 - the store itself may be the problem; the caller raises anyway
            print(f"lesson5 tracking: could not mark the runs FAILED: {e}", file=sys.stderr)


def open_tracker(tracking) -> Optional[Tracker]:
    """The MLflow writer a config's `tracking` section asks for, started now: spooling for
    `tracking.mode=offline`, ready to log MLflow models with `tracking.log_model`; None for `tracking=none`."""
    if not tracking.enabled:
        return None
    return Tracker(tracking.uri, offline=tracking.mode.value == "offline", models=tracking.log_model)
