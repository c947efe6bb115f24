"""Bulk metric writes into MLflow's SQL stores, for the tracking writer (no torch here).

`MlflowClient.log_batch` builds one SQLAlchemy ORM object per value and flushes it through the unit of work:
~85 us of CPU a value here, ~2 s for a lesson run's 21,000 per-step values. That CPU competes with training and
delays the end of every run. `insert_metrics` writes the same rows in one transaction: a single executemany
INSERT into MLflow's own `metrics` table (through its ORM model, so its types and defaults apply), and the
run's `latest_metrics` updated by the store's own routine. Values are sanitized as the store does (NaN stored
as 0 with is_nan, inf as the largest float). `tests/test_sql_metrics.py` checks that a run written this way
reads back exactly like one written by `log_batch`, so a change in MLflow's schema fails a test, not a user's run.
"""

from __future__ import annotations

from typing import Optional

from mlflow.store.tracking.dbmodels.models import SqlMetric
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from sqlalchemy import insert, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session


def sql_store(client) -> Optional[SqlAlchemyStore]:
    """The client's SQL store, or None when it talks to something else (a tracking server)."""
    store = client._tracking_client.store
    return store if isinstance(store, SqlAlchemyStore) else None


def insert_metrics(store: SqlAlchemyStore, run_id: str, timestamp: int, rows: list[tuple[str, float, int]]) -> bool:
    """(key, value, step) rows, stamped `timestamp` (ms), into an active run: what log_batch stores, faster.

    False when a row is already stored (same key, value, step and millisecond): then nothing is written, and the
    caller's log_batch, which skips such rows, should write them.
    """
    records, latest = {}, {}
    for key, value, step in rows:
        is_nan, value = store.sanitize_metric_value(float(value))
        rec = {"run_uuid": run_id, "key": key, "value": value, "timestamp": timestamp, "step": step,
               "is_nan": is_nan}
        records.setdefault((key, value, step, is_nan), rec)  # a repeated row is stored once, as log_batch does
        best = latest.get(key)
        if best is None or (step, timestamp, value) > (best["step"], best["timestamp"], best["value"]):
            latest[key] = rec
    if not records:
        return True
    try:
        with Session(store.engine) as session, session.begin():
            if store.engine.dialect.name == "sqlite":  # as MLflow's own sessions: wait for other writers' locks
                session.execute(text("PRAGMA busy_timeout = 20000"))
            store._check_run_is_active(store._get_run(run_uuid=run_id, session=session))
            session.execute(insert(SqlMetric), list(records.values()))
            # only each key's newest row can change the run's summary; the store compares it with what is there
            store._update_latest_metrics_if_necessary([SqlMetric(**r) for r in latest.values()], session)
    except IntegrityError:  # the transaction was rolled back whole
        return False
    return True
