"""The tracking writer: a spawned process that owns the MlflowClient and turns messages into MLflow calls.

A synchronous MLflow call costs milliseconds, so the trainer only queues messages (`messages.py`) and never
imports MLflow; the writer, on its own core, logs them through MLflow's public client API (metrics with
`log_batch`), draws the plots when a run ends and closes it. It ignores Ctrl-C (the trainer decides the status),
and if the trainer dies without closing its runs, it marks them FAILED.

It must never import torch (tests/test_tracking.py checks): that would cost each process seconds and memory.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import tempfile
from pathlib import Path

from lesson5.process import fast_exit, pause_gc, resume_gc
from lesson5.tracking.messages import (Close, Closed, EndRun, Failed, LogFiles, LogMetrics, StartRun, Started)
from lesson5.tracking.store import setup_lock

METRICS_PER_CALL = 1000  # MLflow's log_batch limit
PARAMS_PER_CALL = 100
PARENT_TAG = "mlflow.parentRunId"  # MLflow's system tag for nested runs


class Writer:
    """MLflow calls for the messages of one trainer; a run's metric series are kept for its plots."""

    def __init__(self, uri: str):
        from mlflow import MlflowClient

        with setup_lock(uri):
            self.client = MlflowClient(tracking_uri=uri)
            self.client.search_experiments(max_results=1)  # touch the store now, so a bad one is reported early
        self.run_ids: dict[int, str] = {}
        self.series: dict[int, dict[str, list[tuple[int, float]]]] = {}  # per run: key -> (step, value)
        self.tables: dict[int, dict[str, object]] = {}  # per run: JSON artifacts by path, for the plots

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # noqa: BLE001 - another writer created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def _parent_run_id(self, parent) -> str:
        """The MLflow id of a parent given as a local id or an MLflow run id; one that does not exist raises."""
        if isinstance(parent, int):
            if parent not in self.run_ids:
                raise ValueError(f"parent run {parent} was never started by this tracker")
            return self.run_ids[parent]
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(parent).info.run_id
        except MlflowException as e:
            raise ValueError(f"parent run id {parent!r} does not exist in this store ({e.error_code})") from None

    def start(self, msg: StartRun) -> Started:
        from mlflow.entities import Param

        tags = dict(msg.tags)
        if msg.parent is not None:
            tags[PARENT_TAG] = self._parent_run_id(msg.parent)
        exp_id = self._experiment_id(msg.experiment)
        run_id = self.client.create_run(exp_id, run_name=msg.name, tags=tags).info.run_id
        self.run_ids[msg.rid], self.series[msg.rid], self.tables[msg.rid] = run_id, {}, {}
        params = [Param(k, v[:6000]) for k, v in msg.params.items()]
        for i in range(0, len(params), PARAMS_PER_CALL):
            self.client.log_batch(run_id, params=params[i : i + PARAMS_PER_CALL])
        self.files(LogFiles(msg.rid, msg.files))
        return Started(msg.rid, run_id, exp_id)

    def metrics(self, msg: LogMetrics) -> None:
        from mlflow.entities import Metric

        series = self.series[msg.rid]
        for k, v, s in msg.rows:
            series.setdefault(k, []).append((s, v))
        batch = [Metric(k, v, msg.timestamp, s) for k, v, s in msg.rows]
        for i in range(0, len(batch), METRICS_PER_CALL):
            self.client.log_batch(self.run_ids[msg.rid], metrics=batch[i : i + METRICS_PER_CALL])

    def files(self, msg: LogFiles) -> None:
        """All of a message's files in one log_artifacts call, from a temporary tree of their run paths."""
        if not msg.files:
            return
        import json

        with tempfile.TemporaryDirectory() as tmp:
            for rel, data in msg.files.items():
                path = Path(tmp) / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                if rel.endswith(".json"):  # data for the plots drawn when the run ends
                    self.tables[msg.rid][rel] = json.loads(data)
            self.client.log_artifacts(self.run_ids[msg.rid], tmp)

    def end(self, msg: EndRun) -> None:
        run_id = self.run_ids[msg.rid]
        try:
            plots = _plots()
            self.files(LogFiles(msg.rid, {f"plots/{name}.png": png for name, png in
                                          plots.run_plots(self.series[msg.rid], self.tables[msg.rid])}))
        finally:
            for k, v in msg.tags.items():
                self.client.set_tag(run_id, k, v[:5000])
            self.client.set_terminated(run_id, msg.status)
            del self.series[msg.rid], self.tables[msg.rid]

    def fail_open_runs(self, reason: str) -> None:
        for rid in list(self.series):
            self.client.set_tag(self.run_ids[rid], "outcome", "error")
            self.client.set_tag(self.run_ids[rid], "stop_reason", reason)
            self.client.set_terminated(self.run_ids[rid], "FAILED")


def _plots():
    """lesson5.plots. Importing it (matplotlib) ends the writer's start-up, which resumes the collector."""
    from lesson5 import plots

    resume_gc()
    return plots


HANDLERS = {StartRun: Writer.start, LogMetrics: Writer.metrics, LogFiles: Writer.files, EndRun: Writer.end}


def serve(uri: str, inbox, outbox) -> None:
    """Handle the trainer's messages until Close, or until the trainer dies (then its open runs are FAILED)."""
    parent = os.getppid()
    try:
        w = Writer(uri)
    except Exception as e:  # noqa: BLE001 - reported to the trainer, which raises TrackingError
        outbox.put(Failed(None, f"{type(e).__name__}: {e}"))
        w = None
    broken: set[int] = set()  # runs whose messages failed: only their EndRun is still tried
    while True:
        if w is not None and inbox.empty():
            _plots()  # matplotlib's import while idle, not when a run ends
        try:
            msg = inbox.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the trainer died without closing its runs
                if w is not None:
                    w.fail_open_runs("the training process exited without closing this run")
                return
            continue
        if isinstance(msg, Close):
            outbox.put(Closed())
            return
        if w is None or not (isinstance(msg, StartRun) or msg.rid in w.run_ids):
            continue  # no store, or the run never started (its failure was reported)
        if msg.rid in broken and not isinstance(msg, EndRun):
            continue
        try:
            reply = HANDLERS[type(msg)](w, msg)
        except Exception as e:  # noqa: BLE001 - reported to the trainer, which raises TrackingError
            broken.add(msg.rid)
            outbox.put(Failed(msg.rid, f"{type(e).__name__}: {e}"))
            print(f"lesson5 tracking: {type(msg).__name__} failed: {e}", file=sys.stderr)
        else:
            if reply is not None:
                outbox.put(reply)


def main(uri: str, inbox, outbox) -> None:
    """The writer process: serve, then leave without tearing down MLflow's modules (~1.4 s the trainer would
    wait for)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; it then closes the runs
    pause_gc()  # until _plots: MLflow's and matplotlib's imports make ~200k objects
    serve(uri, inbox, outbox)
    outbox.close()
    outbox.join_thread()
    fast_exit(0)
