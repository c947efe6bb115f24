"""Models by name. Each declares its `loss` and its `layer_groups()`; the training loop knows nothing else."""

from __future__ import annotations

import importlib

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays out of processes that only check configs (the sweep driver)
    from torch import nn

# name -> module with a build(conf, data) -> nn.Module; a new model is one new file and one line here.
REGISTRY = {"collab": "lesson5.models.collab", "logistic": "lesson5.models.mnist", "mlp": "lesson5.models.mnist",
            "resnet34": "lesson5.models.vision", "efficientnet_lite0": "lesson5.models.vision"}


def build(conf, data, tracking_uri=None) -> "nn.Module":
    """The model conf.name selects, sized by the data (`tracking_uri`: where weights given as a run id live)."""
    module = importlib.import_module(REGISTRY[conf.name])
    return module.build(conf, data, tracking_uri) if conf.name in GROUPS_OF_BODIES else module.build(conf, data)


# The loss each model declares (its class's `loss`), and the metrics an epoch then reports (train_loss and what
# lesson5.metrics computes): for checking a sweep's objective without importing torch. Tests tie both to the code.
LOSSES = {"collab": "mse", "logistic": "cross_entropy", "mlp": "cross_entropy", "resnet34": "cross_entropy",
          "efficientnet_lite0": "cross_entropy"}
# How many layer groups each model's layer_groups() returns, for checking stage lrs without torch.
GROUPS_OF_BODIES = {"resnet34": 3, "efficientnet_lite0": 3}
GROUPS = {"collab": 1, "logistic": 1, "mlp": 1, **GROUPS_OF_BODIES}
LOGGED = {"mse": ("train_loss", "valid_loss", "valid_rmse", "valid_mae"),
          "cross_entropy": ("train_loss", "valid_loss", "valid_accuracy")}
