"""The writer's bulk metric path stores exactly what MLflow's own log_batch stores."""

from __future__ import annotations

import math
import queue

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from lesson5.sql_metrics import insert_metrics, sql_store
from lesson5.tracking import _Writer

# Calls as the writer receives them: a per-step series, a value that is NaN and one that is inf, a key whose
# newest value comes in a later call, one (lr) whose later call holds an older step, and repeated rows.
CALLS = [
    (1_000, [("loss", 0.9, 1), ("lr", 1e-3, 1), ("loss", 0.8, 2), ("lr", 2e-3, 2)]),
    (2_000, [("loss", float("nan"), 3), ("big", float("inf"), 3), ("big", -float("inf"), 2), ("lr", 5e-4, 0)]),
    (3_000, [("loss", 0.7, 4), ("epoch", 1.0, 4), ("epoch", 1.0, 4)]),
    (3_000, [("epoch", 1.0, 4), ("seconds", 2.5, 4)]),  # a row stored by the call before, in the same millisecond
]


def _stored(client: MlflowClient, run_id: str) -> tuple[dict, dict]:
    run = client.get_run(run_id)
    history = {k: sorted((m.step, m.timestamp, repr(m.value)) for m in client.get_metric_history(run_id, k))
               for k in run.data.metrics}
    latest = {k: repr(v) for k, v in run.data.metrics.items()}
    return history, latest


def _writer(uri: str) -> _Writer:
    """The tracking writer, in this process, with one open run (local id 1) in experiment "bulk"."""
    writer = _Writer(uri, queue.Queue())
    writer.start(1, None, "bulk", "bulk", {}, {}, {})
    return writer


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def test_the_writer_stores_what_log_batch_stores(store, tmp_path, request):
    uri = f"sqlite:///{tmp_path}/mlflow.db" if store == "sqlite" else request.getfixturevalue("postgres_uri")
    writer = _writer(uri)
    client, bulk = writer.client, writer.runs[1]
    reference = client.create_run(client.get_experiment_by_name("bulk").experiment_id).info.run_id
    for timestamp, rows in CALLS:
        client.log_batch(reference, metrics=[Metric(k, v, timestamp, s) for k, v, s in rows])
        writer.metrics(1, timestamp, rows)
    assert writer.sql is not None  # the bulk path, not the fallback
    history, latest = _stored(client, bulk)
    assert (history, latest) == _stored(client, reference)
    assert latest["loss"] == "0.7" and latest["lr"] == "0.002" and math.isnan(float(history["loss"][2][2]))
    # the last call's repeated row went through log_batch: the bulk insert declines, writing nothing
    assert insert_metrics(writer.sql, bulk, 3_000, [("epoch", 1.0, 4), ("new", 1.0, 4)]) is False
    assert "new" not in client.get_run(bulk).data.metrics


def test_bulk_insert_refuses_a_deleted_run_as_log_batch_does(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.create_run(client.create_experiment("bulk")).info.run_id
    client.delete_run(run_id)
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        insert_metrics(sql_store(client), run_id, 1_000, [("loss", 1.0, 1)])
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        client.log_batch(run_id, metrics=[Metric("loss", 1.0, 1_000, 1)])


def test_a_tracking_server_uses_log_batch():
    assert sql_store(MlflowClient(tracking_uri="http://127.0.0.1:9")) is None


def test_the_writer_falls_back_to_log_batch_when_the_store_differs(tmp_path, capsys):
    """Bulk writes use store internals; with an MLflow whose store lacks them, metrics still land, by log_batch."""
    writer = _writer(f"sqlite:///{tmp_path}/mlflow.db")
    writer.sql = object()  # a store without sanitize_metric_value, _get_run, ...
    writer.metrics(1, 1_000, [("loss", 0.5, 1), ("loss", 0.25, 2)])
    assert writer.sql is None and "using log_batch" in capsys.readouterr().err
    history = writer.client.get_metric_history(writer.runs[1], "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.25)]
