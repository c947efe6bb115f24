"""Core: data sets by name, `build(conf)` returns Folds; `batches` turns a fold's part into the Learner's source.

Each data set is declared once (`lesson5.components.DataSpec`, the built-in ones in `lesson5.config`).
"""

from __future__ import annotations

from lesson5.components import data_spec
from lesson5.data.batches import batches
from lesson5.data.batches import drops_one as batches_drop_one
from lesson5.data.batches import size as rows
from lesson5.data.folds import Data, Fold

_built: dict[str, Data] = {}  # by the data config's repr: a process that runs many trials (a sweep worker) reads once


def build(conf) -> Data:
    """Fetch (or read from the cache) and parse the data set that conf.name selects; kept for this process."""
    key = repr(conf)
    if key not in _built:
        if len(_built) >= 2:  # a sweep varies the data rarely: keep the last two
            _built.pop(next(iter(_built)))
        _built[key] = data_spec(conf.name).builder()(conf)
    return _built[key]


__all__ = ["Data", "Fold", "build", "batches", "batches_drop_one", "rows"]
