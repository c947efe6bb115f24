"""Services: the tracking writer, a process that owns the MlflowClient and turns messages into MLflow calls.

A synchronous MLflow call costs milliseconds, so the trainer only queues messages (`messages.py`) and never
imports MLflow; the writer, on its own core, logs them through MLflow's public client API (metrics with
`log_batch`), draws the plots when a run ends and closes it. It ignores SIGINT and SIGTERM, whether a terminal, `kill`
of the group or `scancel` sends them (the trainer decides the status, and closes the writer once its runs are
closed), and if the trainer dies without closing its runs (its end of the pipe closes), it marks them FAILED.

It runs as `python -m lesson5.tracking.writer` (`main`), started by `lesson5.tracking.Tracker`: its settings and
then the trainer's messages come on standard input, its replies go out on standard output, and what it prints
goes to standard error, which the trainer shows and keeps the last lines of for its errors.

It imports torch only to log an MLflow model (`LogModel`), and then while it waits for the trainer, never at
start-up (tests/test_tracking.py checks): torch costs a process seconds and memory.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from lesson5.process import fast_exit, pause_gc, resume_gc, take_signals
from lesson5.tracking.messages import (
    Close,
    Closed,
    EndRun,
    Failed,
    Flush,
    Flushed,
    LogFiles,
    LogMetrics,
    LogModel,
    Pipe,
    Started,
    StartRun,
    Summary,
)
from lesson5.tracking.spool import ROOT, Known, Spool
from lesson5.tracking.store import (
    experiment_id,
    fail_fast_http,
    fail_run,
    log_files,
    log_summary,
    open_client,
    quiet_console,
)

PER_CALL = {"metrics": 1000, "params": 100}  # MLflow's log_batch limits
PARENT_TAG = "mlflow.parentRunId"  # MLflow's system tag for nested runs
FINE_TUNING = ("resnet34", "efficientnet_lite0")  # tracking.system_metrics=auto: their runs take minutes
SYSTEM_METRICS_S = 10  # MLflow's sampling interval (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it)


def wants_system_metrics(params: dict[str, str]) -> bool:
    """Whether a run gets MLflow's system metrics, from its logged config: `tracking.system_metrics` true, or auto
    (the default) for fine-tuning: a run in stages, or a fine-tuning model."""
    setting = str(params.get("tracking.system_metrics", "false")).lower()
    if setting != "auto":
        return setting == "true"
    return params.get("trainer.stages", "[]") not in ("[]", "", "None") or params.get("model.name") in FINE_TUNING


@dataclass
class RunState:
    run_id: str
    experiment_id: str
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # key -> (step, value), for plots
    tables: dict[str, object] = field(default_factory=dict)  # JSON artifacts by path, for plots
    monitor: object = None  # MLflow's SystemMetricsMonitor, while the run has one


class Writer:
    """MLflow calls for the messages of one trainer, by local run id."""

    def __init__(self, uri: str):
        self.client = open_client(uri)
        self.runs: dict[int, RunState] = {}

    def _parent_run_id(self, parent) -> str:
        """The MLflow id of a parent given as a local id or an MLflow run id; one that does not exist raises."""
        if isinstance(parent, int):
            return self.runs[parent].run_id  # started by this tracker before its child: the queue keeps order
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(parent).info.run_id
        except MlflowException as e:
            raise ValueError(f"parent run id {parent!r} does not exist in this store ({e.error_code})") from None

    def _log_batch(self, run_id: str, kind: str, items: list) -> None:
        for i in range(0, len(items), PER_CALL[kind]):
            self.client.log_batch(run_id, **{kind: items[i : i + PER_CALL[kind]]})

    def start(self, msg: StartRun) -> Started:
        tags = {**msg.tags, PARENT_TAG: self._parent_run_id(msg.parent)} if msg.parent is not None else msg.tags
        exp_id = experiment_id(self.client, msg.experiment)
        run_id = self.client.create_run(exp_id, run_name=msg.name, tags=tags).info.run_id
        self.adopt(msg, run_id, exp_id)
        if wants_system_metrics(msg.params):
            asked = str(msg.params.get("tracking.system_metrics")).lower() == "true"
            self.runs[msg.rid].monitor = _system_metrics(run_id, self.client.tracking_uri, asked)
        return Started(msg.rid, run_id, exp_id)

    def adopt(self, msg: StartRun, run_id: str, experiment_id: str) -> None:
        """Take `run_id` as local run msg.rid and log its params, data sets and files (again, for a synced run:
        idempotent)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag, Param

        self.runs[msg.rid] = RunState(run_id, experiment_id)
        self._log_batch(run_id, "params", [Param(k, v[:6000]) for k, v in msg.params.items()])
        if msg.datasets:
            inputs = [DatasetInput(Dataset(d["name"], d["digest"], d["source_type"], d["source"], None,
                                           d.get("profile")),
                                   [InputTag("mlflow.data.context", d.get("context", "training"))])
                      for d in msg.datasets]
            log_inputs(self.client, run_id, inputs)
        self.files(LogFiles(msg.rid, msg.files))

    def store_down(self) -> bool:
        """Whether the store cannot be reached now (after MLflow's own, shortened, retries)."""
        try:
            self.client.search_experiments(max_results=1)
            return False
        except Exception:  # noqa: BLE001 - a server gone, a database locked or a disk full: all alike here
            return True

    def metrics(self, msg: LogMetrics) -> None:
        from mlflow.entities import Metric

        run = self.runs[msg.rid]
        for k, v, s in msg.rows:
            run.series.setdefault(k, []).append((s, v))
        self._log_batch(run.run_id, "metrics", [Metric(k, v, msg.timestamp, s) for k, v, s in msg.rows])

    def files(self, msg: LogFiles) -> None:
        """All of a message's files in one log_artifacts call; JSON ones are kept for the plots drawn at the end."""
        run = self.runs[msg.rid]
        run.tables.update({rel: json.loads(data) for rel, data in msg.files.items() if rel.endswith(".json")})
        log_files(self.client, run.run_id, msg.files)

    def model(self, msg: LogModel) -> None:
        """An MLflow model with its signature, as a logged model of the run's: `runs:/<run id>/<name>` loads it
        with mlflow.pytorch.load_model, and the run's Models column and the registry see it."""
        import mlflow
        from mlflow.models import infer_signature

        torch, mlflow_pytorch = _pytorch()
        mlflow.set_tracking_uri(self.client.tracking_uri)  # log_model is fluent API: it logs to the process's store
        run = self.runs[msg.rid]
        got = torch.load(io.BytesIO(msg.payload), map_location="cpu", weights_only=False)
        signature = infer_signature(got["input"].numpy(), got["output"].numpy())
        logged = self.client.create_logged_model(run.experiment_id, name=msg.name, source_run_id=run.run_id)
        mlflow_pytorch.log_model(got["model"], name=msg.name, run_id=run.run_id, model_id=logged.model_id,
                                 signature=signature, **_model_format(torch))

    def end(self, msg: EndRun) -> None:
        from mlflow.entities import RunTag

        run = self.runs[msg.rid]
        try:
            _stop(run)
            pngs = _plots().run_plots(run.series, run.tables)
            self.files(LogFiles(msg.rid, dict(pngs)))
        finally:
            self.client.log_batch(run.run_id, tags=[RunTag(k, v[:5000]) for k, v in msg.tags.items()])
            self.client.set_terminated(run.run_id, msg.status)
            run.series = None  # closed: kept only to resolve children's parents

    def summary(self, msg: Summary) -> None:
        """Metrics and tags in one batch, then the end, if given (a run adopted as Known, such as a study's
        parent, takes it too)."""
        run = self.runs[msg.rid]
        log_summary(self.client, run.run_id, metrics=msg.metrics, tags={k: v[:5000] for k, v in msg.tags.items()})
        if msg.status is not None:
            self.client.set_terminated(run.run_id, msg.status)

    def fail_open_runs(self, reason: str) -> None:
        for run in self.runs.values():
            if run.series is not None:
                _stop(run)
                fail_run(self.client, run.run_id, reason)


def _system_metrics(run_id: str, uri: str, asked: bool = True):
    """MLflow's SystemMetricsMonitor on run `run_id`, started: a thread of the writer's, off the trainer's cores,
    sampling psutil (and NVML's GPUs, where nvidia-ml-py is installed) every SYSTEM_METRICS_S seconds. None when it
    cannot start: the run goes on without. Without psutil (`pip install 'lesson5[system-metrics]'`) `auto` passes
    silently, and `true` says so."""
    import importlib.util

    if importlib.util.find_spec("psutil") is None:
        if asked:
            _say(f"lesson5 tracking: no system metrics for run {run_id}: psutil is not installed (pip install "
                 f"'lesson5[system-metrics]')")
        return None
    try:
        import logging

        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # not "Started monitoring ..."
        monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_S, tracking_uri=uri)
        visible_gpus_only(monitor, os.environ.get("CUDA_VISIBLE_DEVICES"))
        monitor.start()
        return monitor
    except Exception as e:  # noqa: BLE001 - psutil missing, or a monitor that fails: never the run
        _say(f"lesson5 tracking: no system metrics for run {run_id} ({type(e).__name__}: {e})")
        return None


def visible_gpus_only(monitor, visible) -> None:
    """MLflow's GPU monitor reports every GPU of the machine; keep those the trainer can use, by the index or UUID
    that `CUDA_VISIBLE_DEVICES` (the writer inherits the trainer's) names. Unset: all of them."""
    if visible is None:
        return
    keep = {v.strip() for v in visible.split(",") if v.strip()}

    def uuid(handle):
        try:
            import pynvml

            got = pynvml.nvmlDeviceGetUUID(handle)
            return got.decode() if isinstance(got, bytes) else got
        except Exception:  # noqa: BLE001 - NVML's errors vary by driver
            return None

    for m in monitor.monitors:
        handles = getattr(m, "gpu_handles", None)
        if handles is not None:
            m.gpu_handles = [h for i, h in enumerate(handles) if str(i) in keep or uuid(h) in keep]
            m.num_gpus = len(m.gpu_handles)


def _stop(run: RunState) -> None:
    """Stop a run's system metrics monitor, if it has one, logging its last samples."""
    monitor, run.monitor = run.monitor, None
    if monitor is not None:
        with contextlib.suppress(Exception):
            monitor.finish()


def _plots():
    """lesson5.plots. Importing it (matplotlib) ends the writer's start-up, which resumes the collector."""
    from lesson5 import plots

    resume_gc()
    return plots


def _model_format(torch) -> dict:
    """How lesson5 saves MLflow models. Pickled: the lesson's models are plain nn.Modules, and the default pt2
    export would trace each one. `code_paths` ships lesson5's classes, so a model loads where lesson5 is not
    installed."""
    import lesson5

    return {"serialization_format": "pickle", "pip_requirements": [f"torch=={torch.__version__.split('+')[0]}"],
            "code_paths": [str(Path(lesson5.__file__).parent)]}


_warm = False


def _pytorch():
    """torch and mlflow.pytorch, ready: imported while the writer waits (`serve(models=True)`), or when a model
    comes. Saving a one-weight model first fills MLflow's caches (its requirements check reads every installed
    package's metadata) while nothing waits for it."""
    global _warm
    import logging

    import mlflow.pytorch
    import torch

    if not _warm:
        _warm = True
        torch.set_num_threads(1)  # the trainer's cores are its own
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # pickle is chosen (_model_format)
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.pytorch.save_model(torch.nn.Linear(1, 1), f"{tmp}/m", **_model_format(torch))
    return torch, mlflow.pytorch


HANDLERS = {StartRun: Writer.start, LogMetrics: Writer.metrics, LogFiles: Writer.files, LogModel: Writer.model,
            EndRun: Writer.end, Summary: Writer.summary}


def serve(uri: str, inbox, outbox, spool_root: Path = ROOT, offline: bool = False, models: bool = False) -> None:
    """Handle the trainer's messages until Close, or until the trainer hangs up or dies (then its open runs are
    FAILED). `inbox`: a queue.Queue of messages, None when the trainer's end closed; `outbox`: where replies are
    `put`. `models`: runs will log MLflow models, so torch is imported while waiting, not when the run ends.

    If the store stops answering mid-run, everything not yet in it (the open runs' messages since their start,
    and all that follows) goes to a spool instead, and training goes on; `offline` spools from the start.
    """
    parent = os.getppid()
    w, spool = None, Spool(spool_root, uri) if offline else None
    if spool is None:
        try:
            w = Writer(uri)
        except Exception as e:  # noqa: BLE001 - reported to the trainer, which raises TrackingError
            outbox.put(Failed(None, f"{type(e).__name__}: {e}"))
    history: dict[int, list] = {}  # the messages of each open run, while online: what a spool would need
    broken: set[int] = set()
    while True:
        if (w is not None or spool is not None) and inbox.empty():
            _plots()  # matplotlib's import while idle, not when a run ends
            if models and w is not None and inbox.empty():
                _pytorch()
        try:
            msg = inbox.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() == parent:
                continue
            msg = None  # reparented: the trainer died (its pipe's end closing normally says so first)
        if msg is None:  # the trainer is gone without Close
            if w is not None and spool is None:
                w.fail_open_runs("the training process exited without closing this run")
            return
        if isinstance(msg, Flush):  # the messages before it are handled: they came first, on one queue
            outbox.put(Flushed())
            continue
        if isinstance(msg, Close):
            if spool is not None:
                spool.close()  # its End record: sync can tell it whole
            outbox.put(Closed(str(spool.dir) if spool is not None else None))
            return
        if spool is not None:
            spool.add(msg)
            if isinstance(msg, StartRun):
                outbox.put(Started(msg.rid, f"offline-{msg.rid}", "offline"))
            continue
        if w is None or (msg.rid not in w.runs and not isinstance(msg, StartRun)) or (
                msg.rid in broken and not isinstance(msg, EndRun)):
            continue  # no store, a run that never started, or one whose messages failed (only its end is tried)
        history.setdefault(msg.rid, []).append(msg)
        try:
            reply = HANDLERS[type(msg)](w, msg)
        except Exception as e:  # noqa: BLE001 - spooled if the store is gone, else reported to the trainer
            if w.store_down():
                spool = _spool_open_runs(w, history, spool_root, uri)
                _say(f"lesson5 tracking: the store {uri} stopped answering ({type(e).__name__}); the runs go on "
                     f"to {spool.dir}: send them with `python -m lesson5.sync`")
                if isinstance(msg, StartRun) and msg.rid not in w.runs:
                    outbox.put(Started(msg.rid, f"offline-{msg.rid}", "offline"))
                continue
            broken.add(msg.rid)
            outbox.put(Failed(msg.rid, f"{type(e).__name__}: {e}"))
            _say(f"lesson5 tracking: {type(msg).__name__} failed: {e}")
        else:
            if isinstance(reply, Started):
                outbox.put(reply)
            if isinstance(msg, EndRun):
                del history[msg.rid]


def _say(line: str) -> None:
    """A line on standard error, which the trainer shows; lost without harm if the trainer is gone."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def _spool_open_runs(w: Writer, history: dict[int, list], root: Path, uri: str) -> Spool:
    """A new spool holding every run the store has (as Known) and the open runs' messages so far, in order."""
    spool = Spool(root, uri)
    for rid, run in w.runs.items():
        spool.add(Known(rid, run.run_id))
    for msgs in history.values():
        for msg in msgs:
            spool.add(msg)
    return spool


class _Replies:
    """The writer's end of the reply pipe: a reply to a trainer that is gone is dropped (its hang-up follows)."""

    def __init__(self, file):
        self.pipe = Pipe(file)

    def put(self, msg) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.pipe.put(msg)


def _receive(pipe: Pipe, inbox: queue.Queue) -> None:
    """Move the trainer's messages into `inbox`, then None once its end of the pipe closes."""
    while True:
        try:
            inbox.put(pipe.get())
        except Exception:  # noqa: BLE001 - EOF, a broken pipe or a message cut short: the trainer is gone
            inbox.put(None)
            return


def _channel() -> tuple[io.BufferedReader, io.BufferedWriter]:
    """The trainer's pipes, moved off fds 0 and 1: fd 0 becomes /dev/null and fd 1 standard error, so that what
    MLflow prints, or a process it starts, can neither read the messages nor corrupt the replies."""
    inp, out = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return inp, out


def log_inputs(client, run_id: str, inputs: list, attempts: int = 3) -> None:
    """`client.log_inputs`, retried when another writer inserted the same data set at the same moment: MLflow
    inserts a data set it has not seen, and two writers (a sweep's workers starting their trials together) collide
    on its unique key; the retry finds it and links the run to it."""
    for attempt in range(attempts):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except Exception as e:
            if attempt == attempts - 1 or not any(s in str(e) for s in ("UNIQUE constraint", "duplicate key")):
                raise


def main() -> None:
    """The writer process: read the settings, serve, then leave without tearing down MLflow's modules, which the
    trainer would wait for."""
    take_signals(signal.SIG_IGN)  # Ctrl-C and SIGTERM are the trainer's to handle; it then closes the runs
    pause_gc()  # until _plots: MLflow's and matplotlib's imports make ~200k objects
    fail_fast_http()
    quiet_console()
    inp, out = _channel()
    try:
        settings = Pipe(inp).get()
    except EOFError:  # the trainer went before it said anything
        fast_exit(0)
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=_receive, args=(Pipe(inp), inbox), name="lesson5-writer-inbox", daemon=True).start()
    serve(settings.uri, inbox, _Replies(out), Path(settings.spool_root), settings.offline, settings.models)
    with contextlib.suppress(OSError):
        out.close()
    fast_exit(0)


if __name__ == "__main__":
    main()

