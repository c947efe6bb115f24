"""Services: where a study lives (Optuna's storage), and the bookkeeping that keeps its trial count exact.

- A path: `JournalStorage` on a file, for several worker processes on one machine (the default,
  `./sweeps.journal`, next to `mlflow.db`).
- A URL (`postgresql://...`): `RDBStorage`, for workers on many machines, with Optuna's heartbeat so that a dead
  worker's trial ends FAIL. SQLite works too, for one worker ("database is locked" with more).

Workers claim trials under a lock every worker sees (`lesson5.tracking.store.store_lock`: a flock beside the
journal, a PostgreSQL advisory lock): a claim enqueues a WAITING trial only while fewer than `n_trials` count.
A trial counts unless it failed without an `outcome` (its worker died, or was interrupted), so such a trial is
run again and a resumed study reaches `n_trials`. A journal has no heartbeat: each trial records its host and
pid, and a claim fails the RUNNING trials of this host whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
import zlib
from pathlib import Path

import optuna
from optuna.trial import TrialState

from lesson5.errors import ConfigError
from lesson5.tracking.store import store_lock

DEFAULT_JOURNAL = "sweeps.journal"
HEARTBEAT_S, GRACE_S = 30, 90
HOST = socket.gethostname()


def is_url(storage: str) -> bool:
    return "://" in storage


def open_storage(storage: str):
    """An Optuna storage for a journal path or a database URL; an unreachable one raises ConfigError."""
    if not is_url(storage):
        if not storage.strip() or Path(storage).is_dir():
            raise ConfigError(f"storage={storage!r}: give a journal file (default {DEFAULT_JOURNAL}) or a database "
                              f"URL such as postgresql://user:pass@host/db")
        folder = Path(storage).resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConfigError(f"storage={storage}: folder {folder} does not exist or is not writable")
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(Path(storage).resolve())))
    try:
        # Optuna creates a new database's tables on first use, and machines starting together on a fresh one
        # fail on PostgreSQL's catalog ("duplicate key ... pg_type_typname_nsp_index"): take turns, as the
        # MLflow writers do. The heartbeat is "experimental" in Optuna 5; it is what we rely on.
        with store_lock(storage), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(storage, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                              engine_kwargs={"pool_pre_ping": True})
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's and the driver's errors vary
        raise ConfigError(f"storage={storage}: cannot open the Optuna storage ({type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0]}). {how_to_open(storage, e)}") from None


def how_to_open(storage: str, error: Exception) -> str:
    """What to do about a database URL that cannot be opened: install its driver, or start the database.
    lesson5's `postgres` extra installs psycopg (3), which SQLAlchemy 2.1 takes a plain postgresql:// URL to mean."""
    if not isinstance(error, ImportError):
        return "Start the database or fix the URL."
    scheme, _, rest = storage.partition("://")
    if scheme.split("+")[0] not in ("postgresql", "postgres"):
        return (f"Its database driver{f' ({error.name})' if error.name else ''} is not installed: pip install it, "
                f"or name an installed one in the URL (dialect+driver://...).")
    driver = error.name or "the PostgreSQL driver"
    if scheme in ("postgresql", "postgresql+psycopg"):
        return (f"The PostgreSQL driver ({driver}) is not installed: pip install -e \".[postgres]\" in the checkout "
                f"(or pip install 'psycopg[binary]')")
    return (f"The driver {scheme}:// names ({driver}) is not installed: pip install it, or pip install -e "
            f"\".[postgres]\" in the checkout and give storage=postgresql://{rest}")


def load_study(storage: str, study_name: str) -> optuna.Study:
    """The study `study_name` in `storage`; a ConfigError naming both when it holds none."""
    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:
        raise ConfigError(f"no study {study_name!r} in {storage}: run the sweep first, or pass storage=... and "
                          f"study_name=...") from None


def lock(storage: str, study_name: str):
    """The study's claim lock (one per study, so studies sharing a storage do not wait on each other)."""
    key = zlib.crc32(f"lesson5 study {study_name}".encode())
    return store_lock(str(Path(storage).resolve()) if not is_url(storage) else storage, key)


def counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts towards n_trials: all but the failed ones without an outcome (lost or interrupted)."""
    return trial.state != TrialState.FAIL or trial.user_attrs.get("outcome") not in (None, "interrupted")


def _alive(pid: int) -> bool:
    """Whether a process of this host is running (a zombie, dead but not yet reaped by its parent, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: the state field follows the parenthesized command name
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def fail_lost_trials(study: optuna.Study) -> list[int]:
    """Fail this host's RUNNING trials whose process is gone (the journal's stand-in for a heartbeat)."""
    lost = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("host") == HOST and not _alive(int(t.user_attrs.get("pid", 0)))]
    for number in lost:
        with contextlib.suppress(RuntimeError, ValueError):  # another worker got there first
            study.tell(number, state=TrialState.FAIL)
    return lost
