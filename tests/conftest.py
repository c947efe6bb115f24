"""Shared fixtures: small MovieLens-shaped data, a temporary tracked store, a throwaway PostgreSQL server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest


def write_movielens(folder: Path, n_users: int = 60, n_items: int = 80, n_ratings: int = 3000, seed: int = 0) -> Path:
    """A MovieLens-shaped u.data/u.item with a low-rank signal, so a collab model can learn it."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    uf, itf = rng.normal(size=(n_users, 3)), rng.normal(size=(n_items, 3))
    users = rng.integers(1, n_users + 1, n_ratings)
    items = rng.integers(1, n_items + 1, n_ratings)
    score = (uf[users - 1] * itf[items - 1]).sum(1)
    ratings = np.clip(np.round(3 + score), 1, 5).astype(int)
    lines = [f"{u}\t{i}\t{r}\t{880000000 + k}\n" for k, (u, i, r) in enumerate(zip(users, items, ratings))]
    (folder / "u.data").write_text("".join(lines))
    # Two items share a title, as in MovieLens, so keying by title merges them.
    titles = [f"Movie {i} (1995)" if i != 2 else "Movie 1 (1995)" for i in range(1, n_items + 1)]
    (folder / "u.item").write_text("".join(f"{i}|{t}|01-Jan-1995||http://x|" + "|".join("0" * 19) + "\n"
                                           for i, t in enumerate(titles, start=1)), encoding="latin-1")
    return folder


def ctrl_c_reaches_it() -> None:
    """For a child the test sends SIGINT: Python leaves SIGINT ignored, with no KeyboardInterrupt, in a process
    started with it ignored (as `cmd &` does in a non-interactive shell), so the test would hang or pass wrongly."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def chromium_dom(url: str, profile: Path) -> str:
    """The page at `url` as headless Chromium renders it, once its scripts have run (up to 30 s of virtual time):
    what a user of the MLflow UI or optuna-dashboard would see."""
    return subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180).stdout


@pytest.fixture
def movielens_dir(tmp_path) -> Path:
    return write_movielens(tmp_path / "ml")


@pytest.fixture
def tiny(movielens_dir, tmp_path):
    """Overrides for a quick run on the small data, tracked into a temporary SQLite store."""
    return [f"data.path={movielens_dir}", "data.verify=false", "trainer.epochs=2", "trainer.bs=64",
            "trainer.progress=false", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=test"]


@pytest.fixture(scope="session")
def postgres_uri():
    """A throwaway PostgreSQL server (Debian's `postgresql` package) for this session, as an SQLAlchemy URI.

    Skipped where PostgreSQL is not installed, unless LESSON5_REQUIRE_POSTGRES is set: `.ci/run` installs it and
    sets that, so CI always runs these tests.
    """
    initdbs = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not initdbs:
        why = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("LESSON5_REQUIRE_POSTGRES"):
            pytest.fail(why)
        pytest.skip(why)
    bindir = initdbs[-1].parent
    root = Path(tempfile.mkdtemp(prefix="lesson5-pg-"))  # not under pytest's 0700 folder: the server must reach it
    as_user = []
    if os.geteuid() == 0:  # initdb refuses root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_user, bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, bindir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "start", "-o",
                    f"-p {port} -k {root} -c listen_addresses=''"], check=True, capture_output=True)
    try:
        subprocess.run([*as_user, bindir / "createdb", "-h", root, "-p", str(port), "-U", "postgres", "mlflow"],
                       check=True, capture_output=True)
        yield f"postgresql://postgres@/mlflow?host={root}&port={port}"
    finally:
        subprocess.run([*as_user, bindir / "pg_ctl", "-D", data, "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
