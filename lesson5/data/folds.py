"""In-memory data sets: whole tensors, one Fold per train/valid split, so batches are index slices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class Fold:
    """One train/valid split of (inputs, targets) tensors."""

    name: str
    train: tuple[Tensor, Tensor]
    valid: tuple[Tensor, Tensor]


@dataclass
class Data:
    """Folds plus what models need to size themselves (`sizes`) and what interpretation needs (`vocab`)."""

    folds: list[Fold]
    sizes: dict[str, int]
    vocab: dict[str, list] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # logged as data.info.* params
