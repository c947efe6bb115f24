"""Data sets by name: `build(conf)` returns Folds; `batches` turns a fold's part into the Learner's source."""

from __future__ import annotations

import importlib

from lesson5.data.batches import batches
from lesson5.data.folds import Data, Fold

# name -> module with a build(conf) -> Data; imported only when used.
REGISTRY = {"movielens": "lesson5.data.movielens", "mnist": "lesson5.data.mnist",
            "fashion_mnist": "lesson5.data.mnist"}


def build(conf) -> Data:
    """Fetch (or read from the cache) and parse the data set that conf.name selects."""
    return importlib.import_module(REGISTRY[conf.name]).build(conf)


__all__ = ["Data", "Fold", "build", "batches", "REGISTRY"]
