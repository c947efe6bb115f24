"""Data sets by name: `build(conf)` returns Folds; `batches` turns a fold's part into the Learner's source."""

from __future__ import annotations

import importlib

from lesson5.data.batches import batches
from lesson5.data.folds import Data, Fold

# name -> module with a build(conf) -> Data; imported only when used.
REGISTRY = {"movielens": "lesson5.data.movielens", "mnist": "lesson5.data.mnist",
            "fashion_mnist": "lesson5.data.mnist", "images": "lesson5.data.images"}


_built: dict[str, Data] = {}  # by the data config's repr: a process that runs many trials (a sweep worker) reads once


def build(conf) -> Data:
    """Fetch (or read from the cache) and parse the data set that conf.name selects; kept for this process."""
    key = repr(conf)
    if key not in _built:
        if len(_built) >= 2:  # a sweep varies the data rarely: keep the last two
            _built.pop(next(iter(_built)))
        _built[key] = importlib.import_module(REGISTRY[conf.name]).build(conf)
    return _built[key]


__all__ = ["Data", "Fold", "build", "batches", "REGISTRY"]
