"""Core: models by name. Each is declared once (`lesson5.components.ModelSpec`, the built-in ones in
`lesson5.config`); the tables here derive from those declarations, and the training loop knows a model only by its
`loss` and its `layer_groups()`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lesson5 import config  # noqa: F401 - declares the built-in models, and imports the plugins, before the tables
from lesson5.components import LOGGED, MODELS, model_spec
from lesson5.errors import ConfigError

if TYPE_CHECKING:  # torch stays out of processes that only check configs (the sweep driver)
    from torch import nn

REGISTRY = {name: spec.build for name, spec in MODELS.items()}  # name -> its builder
LOSSES = {name: spec.loss for name, spec in MODELS.items()}  # what it trains on; LOGGED[loss]: what an epoch logs
GROUPS = {name: spec.groups for name, spec in MODELS.items()}  # for checking stage lrs without torch
GROUPS_OF_BODIES = {name: spec.groups for name, spec in MODELS.items() if spec.takes_weights}  # pretrained bodies

__all__ = ["GROUPS", "GROUPS_OF_BODIES", "LOGGED", "LOSSES", "MODELS", "REGISTRY", "build"]


def build(conf, data, tracking_uri=None) -> nn.Module:
    """The model conf.name selects, sized by the data, carrying its declared `loss` (`tracking_uri`: where
    weights given as a run id live, for models that take weights)."""
    spec = model_spec(conf.name)
    make = spec.builder()
    model = make(conf, data, tracking_uri) if spec.takes_weights else make(conf, data)
    model.loss = spec.loss
    if len(model.layer_groups()) != spec.groups:  # stage lrs were checked against the declared count
        raise ConfigError(f"model={conf.name}: layer_groups() returns {len(model.layer_groups())} groups but its "
                          f"declaration says groups={spec.groups}; make them agree")
    return model
