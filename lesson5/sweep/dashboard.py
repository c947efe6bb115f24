"""Services: optuna-dashboard on a study's storage, once lesson5 has read it (the app: lesson5/dashboard.py).

optuna-dashboard opens whatever it is given and shows an internal error for a storage it cannot read: an
`AssertionError: Should not reach.` deep in Optuna for a journal written by another Optuna version, a
`StorageInternalError` for a SQLite file that is not Optuna's, `Failed to guess storage class` for a missing
file. This command reads the storage first, with the Optuna installed here (the one the dashboard uses), and
refuses one it cannot read with the reason and the fix; then it serves the same storage object.
"""

from __future__ import annotations

from pathlib import Path

from lesson5.errors import ConfigError
from lesson5.sweep.storage import DEFAULT_JOURNAL, how_to_open, is_url


def readable(storage: str):
    """The storage, opened and read to its end (every study in it listed); a ConfigError naming it and the
    reason otherwise."""
    import optuna

    path = storage.split(":///", 1)[1].split("?")[0] if storage.startswith("sqlite:///") else \
        None if is_url(storage) else storage
    if path is not None and not Path(path).is_file():  # not made by opening it
        raise ConfigError(f"storage={storage}: no such file; give the storage a sweep printed (default "
                          f"{DEFAULT_JOURNAL}, in the folder the sweep ran from) or a database URL")
    try:
        if is_url(storage):
            _optuna_tables(storage)
            opened = optuna.storages.RDBStorage(storage, skip_table_creation=True)
        else:
            from optuna.storages.journal import JournalFileBackend

            opened = optuna.storages.JournalStorage(JournalFileBackend(str(Path(storage).resolve())))
        studies = opened.get_all_studies()
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - every storage fails in its own way; each is the same refusal
        raise ConfigError(f"storage={storage}: Optuna {optuna.__version__} cannot read it ({_reason(e)}). "
                          f"{_fix(storage, e)}") from None
    if not studies:
        raise ConfigError(f"storage={storage}: it holds no study yet; run a sweep with storage={storage} first")
    return opened


def _optuna_tables(url: str) -> None:
    """Refuse a database without Optuna's tables (an MLflow store, say), which Optuna would otherwise report as
    a schema from another version."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
    except ImportError as e:
        raise ConfigError(f"storage={url}: {how_to_open(url, e)}") from None
    try:
        tables = set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    if "experiments" in tables:  # MLflow's: its alembic_version is not Optuna's, which then reads a wrong schema
        raise ConfigError(f"storage={url}: this database is an MLflow store, not an Optuna storage; give the "
                          f"storage URL a sweep printed (Optuna's tables need a database of their own)")
    if "studies" not in tables:
        raise ConfigError(f"storage={url}: the database holds no Optuna tables; give the storage URL a sweep "
                          f"printed")


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, AssertionError):  # the journal's replay met an operation it does not know
        text = "a record it does not know"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _fix(storage: str, e: Exception) -> str:
    if not is_url(storage):
        return ("A journal is read by the Optuna that wrote it or a newer one: open it where the sweep ran, or "
                "install that Optuna version here (pip install optuna==<version>).")
    if "optuna storage upgrade" in str(e):
        return f"Upgrade its schema: optuna storage upgrade --storage {storage}"
    return "Check that the URL names an Optuna database (one a sweep wrote) and that it is reachable."


def serve(storage: str, host: str, port: int) -> None:
    """optuna-dashboard on `storage`, read first (`readable`), until interrupted."""
    opened = readable(storage)
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise ConfigError("optuna-dashboard is not installed: pip install 'lesson5[dashboard]'") from None
    print(f"optuna-dashboard on {storage}: http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
    run_server(opened, host=host, port=port)
