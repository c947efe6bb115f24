"""Models by name. Each declares its `loss` and its `layer_groups()`; the training loop knows nothing else."""

from __future__ import annotations

import importlib

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays out of processes that only check configs (the sweep driver)
    from torch import nn

# name -> module with a build(conf, data) -> nn.Module; a new model is one new file and one line here.
REGISTRY = {"collab": "lesson5.models.collab", "logistic": "lesson5.models.mnist", "mlp": "lesson5.models.mnist"}


def build(conf, data) -> "nn.Module":
    """The model conf.name selects, sized by the data."""
    return importlib.import_module(REGISTRY[conf.name]).build(conf, data)


# The loss each model declares (its class's `loss`), and the metrics an epoch then reports (train_loss and what
# lesson5.metrics computes): for checking a sweep's objective without importing torch. Tests tie both to the code.
LOSSES = {"collab": "mse", "logistic": "cross_entropy", "mlp": "cross_entropy"}
LOGGED = {"mse": ("train_loss", "valid_loss", "valid_rmse", "valid_mae"),
          "cross_entropy": ("train_loss", "valid_loss", "valid_accuracy")}
