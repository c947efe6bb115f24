"""Core: A data set as the core sees it: one Fold per train/valid split, plus what models need to size themselves."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from lesson5.data.batches import Part


@dataclass
class Fold:
    """One train/valid split. Each part is (inputs, targets) CPU tensors or a Dataset (`data.batches` makes the
    Learner's source from it, on the run's device)."""

    name: str
    train: Part
    valid: Part


@dataclass
class Data:
    """Folds plus what models need to size themselves (`sizes`) and what interpretation needs (`vocab`)."""

    folds: list[Fold]
    sizes: dict[str, int]
    vocab: dict[str, list] = field(default_factory=dict)
    # logged as data.info.* params; `source` and `digest` also name the run's MLflow dataset input
    info: dict[str, Any] = field(default_factory=dict)


def digest(*parts) -> str:
    """A short content hash of numpy arrays or bytes (the data as read, before any split): MLflow's dataset
    digest."""
    h = hashlib.sha256()
    for a in parts:
        h.update(a if isinstance(a, bytes) else a.tobytes())
    return h.hexdigest()[:16]
