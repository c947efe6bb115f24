"""Shared fixtures: configs composed the way the CLI composes them, and small MovieLens-shaped data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from lesson5.config import register

CONF = str(Path(__file__).resolve().parents[1] / "conf")
register()


def make_cfg(*overrides: str):
    """The composed config for these overrides, exactly as `python -m lesson5` would build it."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


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


@pytest.fixture
def movielens_dir(tmp_path) -> Path:
    return write_movielens(tmp_path / "ml")


@pytest.fixture
def tiny(movielens_dir, tmp_path):
    """Overrides for a quick run on the small data, tracked into a temporary SQLite store."""
    return [f"data.path={movielens_dir}", "data.verify=false", "trainer.epochs=2", "trainer.bs=64",
            "trainer.progress=false", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=test"]
