"""Models by name. Each declares its `loss` and its `layer_groups()`; the training loop knows nothing else."""

from __future__ import annotations

import importlib

from torch import nn

# name -> module with a build(conf, data) -> nn.Module; a new model is one new file and one line here.
REGISTRY = {"collab": "lesson5.models.collab", "logistic": "lesson5.models.mnist", "mlp": "lesson5.models.mnist"}


def build(conf, data) -> nn.Module:
    """The model conf.name selects, sized by the data."""
    return importlib.import_module(REGISTRY[conf.name]).build(conf, data)


def loss_name(name: str) -> str:
    """The loss a model declares (`mse`, `cross_entropy`), which decides the metrics its runs log."""
    return importlib.import_module(REGISTRY[name]).LOSS
