"""Services: the MLflow store a run is tracked in: its URI, a check that it can work, the lock for setting it up,
and the few calls other services make on it directly (a study's parent run, a run's files, earlier runs).

No torch and no MLflow at import (MLflow's client is imported in the functions that call it): the trainer imports
this, and so does the writer before MLflow.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from lesson5.errors import TrackingError

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


def ui_link(uri: str, experiment_id: str) -> str:
    """The experiment's runs table in the model-training view (`workflowType=machine_learning`): without it,
    MLflow 3 opens on its GenAI overview. A local store is served by `mlflow ui` on 127.0.0.1:5000."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the model-training view (`workflowType=machine_learning`, as `ui_link`)."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def git_commit() -> str:
    """The commit lesson5 runs from, or `unknown` (an installed wheel, no git)."""
    import lesson5

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(lesson5.__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def source_tags() -> dict[str, str]:
    """MLflow's own Source columns for a run this process makes directly (a study's parent run): the command,
    LOCAL, and the git commit, as `lifecycle.standard_tags` gives every training run."""
    from lesson5 import naming

    return {"mlflow.source.name": naming.source_name(), "mlflow.source.type": "LOCAL",
            "mlflow.source.git.commit": git_commit()}


def quiet_console() -> None:
    """No "🏃 View run ... / 🧪 View experiment ..." lines from MLflow when a run on a server ends: a sweep's
    trials would print two each. lesson5 prints its own links. Set before MLflow ends a run; a user's own setting
    wins. Processes started after this (a sweep's workers and their writers) inherit it."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


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


def fail_fast_http() -> None:
    """MLflow retries a failing HTTP call for minutes by default; a few seconds decide that a server is gone
    (the writer then spools, sync says so). Set before the first request; a user's own settings win."""
    for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                       ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
        os.environ.setdefault(key, value)


def open_client(uri: str):
    """An MlflowClient on `uri` whose store has been set up (tables created or migrated) under `store_lock`, so
    that processes starting together on a new store, on one machine or many, take turns."""
    from mlflow import MlflowClient

    quiet_console()
    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # the first touch sets the store up, and reports a bad one now
    return client


def log_files(client, run_id: str, files: dict[str, bytes]) -> None:
    """Artifacts by their path in the run, in one log_artifacts call from a temporary tree of those paths."""
    if not files:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for rel, data in files.items():
            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / rel).write_bytes(data)
        client.log_artifacts(run_id, tmp)


def log_summary(client, run_id: str, *, params: Optional[dict[str, Any]] = None,
                metrics: Optional[dict[str, float]] = None, tags: Optional[dict[str, str]] = None) -> None:
    """Params (cut to MLflow's 6000 characters), metrics (at step 0, stamped now) and tags in one log_batch."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()],
                     metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
                     tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])


def client(uri: str):
    """A plain MlflowClient on `uri`, for reading and adding to runs that exist (open_client sets a store up)."""
    from mlflow import MlflowClient

    quiet_console()
    return MlflowClient(uri)


def get_run(uri: str, run_id: str):
    """Run `run_id` of store `uri` (an mlflow Run); raises MLflow's error for a run or store that is not there."""
    return client(uri).get_run(run_id)


def download(uri: str, run_id: str, path: str, dest: str) -> str:
    """Artifact `path` of run `run_id` in store `uri`, downloaded into folder `dest`; returns its local path."""
    import mlflow.artifacts

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # small files: no progress bars
    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dest, tracking_uri=uri)


def finished_runs(uri: str, experiment: str, key_tag: str) -> dict[str, dict[str, Any]]:
    """The FINISHED runs of `experiment` in store `uri` by their `key_tag` tag: each its metrics and `run_id`
    (the first found for a key wins)."""
    mlflow_client = client(uri)
    exp = mlflow_client.get_experiment_by_name(experiment)
    found: dict[str, dict[str, Any]] = {}
    if exp is not None:
        for r in mlflow_client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'"):
            key = r.data.tags.get(key_tag)
            if key:
                found.setdefault(key, {**r.data.metrics, "run_id": r.info.run_id})
    return found


# What MLflow 3's UI reads to open an experiment on its runs table (the model-training view), not the GenAI overview.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"


def experiment_id(client, name: str) -> str:
    """The id of experiment `name`, made as a model-training experiment if it is new (client: an MlflowClient).
    A deleted one raises, saying how to restore it."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags={KIND_TAG: KIND})
        except Exception as e:  # noqa: BLE001 - another process created it first, or the store refused the name
            exp = client.get_experiment_by_name(name)
            if exp is None:  # not made by anyone: the store's own reason is the cause
                shown = name if len(name) <= 80 else f"{name[:60]}... ({len(name)} characters)"
                raise TrackingError(f"tracking.experiment={shown!r}: {client.tracking_uri} cannot create this "
                                    f"experiment ({type(e).__name__}: {e}). Pick another tracking.experiment (at "
                                    f"most 256 characters).") from e
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(
            f"tracking.experiment={name!r} names a deleted experiment (id {exp.experiment_id}) in "
            f"{client.tracking_uri}. Restore it with `MLFLOW_TRACKING_URI={client.tracking_uri} mlflow experiments "
            f"restore --experiment-id {exp.experiment_id}`, remove it for good with `mlflow gc`, or pick another "
            f"tracking.experiment.")
    if exp.tags.get(KIND_TAG) is None:  # made by MLflow itself or by an older lesson5
        client.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
    return exp.experiment_id


def fail_run(client, run_id: str, reason: str) -> None:
    """Close a run that its trainer or writer could not close as FAILED, saying why (client: an MlflowClient)."""
    from mlflow.entities import RunTag

    from lesson5.outcome import Outcome

    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in Outcome("FAILED", "error", reason).tags().items()])
    client.set_terminated(run_id, "FAILED")


@contextlib.contextmanager
def store_lock(uri: str, key: int = SETUP_LOCK_KEY):
    """Hold an exclusive lock that every process using the store `uri` sees, on this machine or, for
    PostgreSQL, on any. `uri` is a SQLAlchemy URL or a file path (an Optuna journal); `key` names the lock.

    Writers take it to serialize the first touch of a SQL store:
    MLflow creates and migrates a new store's tables on first use, and two processes doing it at once fail:
    on SQLite "duplicate column name" or "table _alembic_tmp_... already exists", on PostgreSQL a unique
    violation on the new tables' types (6 of 9 writers started together on a fresh database failed). That is
    several commands started together, or a sweep's workers, on one machine or many. SQLite stores take an
    exclusive flock on the database file (SQLite itself uses fcntl locks, which do not interact with it);
    PostgreSQL stores take a session-level advisory lock in their database, which every machine sees.
    """
    if uri.startswith("sqlite:///") or "://" not in uri:
        # an empty file is an empty SQLite database; a journal's lock is a file of its own beside it
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else f"{uri}.lesson5-lock"
        with open(path if key == SETUP_LOCK_KEY else f"{path}.{key:x}", "ab") as f:
            with contextlib.suppress(OSError):  # a file system without flock: go ahead unserialized
                fcntl.flock(f, fcntl.LOCK_EX)
            yield  # closing the file releases the lock
    elif uri.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres"):
        import sqlalchemy as sa

        engine = sa.create_engine(uri, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as con:
                con.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                yield  # closing the connection ends the session, which releases the lock
        finally:
            engine.dispose()
    else:
        yield
