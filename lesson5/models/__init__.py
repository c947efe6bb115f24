"""Core: models by name. Each is declared once (`lesson5.components.ModelSpec`, the built-in ones in
`lesson5.config`); the tables here derive from those declarations, and the training loop knows a model only by its
`loss` and its `layer_groups()`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from lesson5 import config  # noqa: F401 - declares the built-in models, and imports the plugins, before the tables
from lesson5.components import LOGGED, MODELS, model_spec
from lesson5.errors import ConfigError

if TYPE_CHECKING:  # torch stays out of processes that only check configs (the sweep driver)
    from torch import nn

REGISTRY = {name: spec.build for name, spec in MODELS.items()}  # name -> its builder
LOSSES = {name: spec.loss for name, spec in MODELS.items()}  # what it trains on; LOGGED[loss]: what an epoch logs
GROUPS = {name: spec.groups for name, spec in MODELS.items()}  # for checking stage lrs without torch
GROUPS_OF_BODIES = {name: spec.groups for name, spec in MODELS.items() if spec.takes_weights}  # pretrained bodies

__all__ = ["GROUPS", "GROUPS_OF_BODIES", "LOGGED", "LOSSES", "MODELS", "REGISTRY", "build", "has_batchnorm",
           "weights_run"]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether a built model has BatchNorm layers, which cannot train on a batch of one row (its config says so
    beforehand: `ModelConf.has_batchnorm`, checked by validate)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return any(isinstance(m, _BatchNorm) for m in model.modules())


def weights_run(conf) -> Optional[str]:
    """The MLflow run whose `weights.pt` model.weights names (a run id or `runs:/<id>`), for models that take
    weights; None otherwise. The lifecycle fetches that file: core code never talks to a tracking store."""
    spec = getattr(conf, "weights", None) if model_spec(conf.name).takes_weights else None
    if not spec:
        return None
    if spec.startswith("runs:/"):
        return spec[len("runs:/"):].split("/")[0]
    is_id = len(spec) == 32 and all(c in "0123456789abcdef" for c in spec)
    return spec if is_id and not Path(spec).exists() else None


def build(conf, data, run_file: Optional[str] = None) -> nn.Module:
    """The model conf.name selects, sized by the data, carrying its declared `loss` (`run_file`: the weights
    file of the run `weights_run(conf)` names, for models that take weights)."""
    spec = model_spec(conf.name)
    make = spec.builder()
    model = make(conf, data, run_file) if spec.takes_weights else make(conf, data)
    model.loss = spec.loss
    if len(model.layer_groups()) != spec.groups:  # stage lrs were checked against the declared count
        raise ConfigError(f"model={conf.name}: layer_groups() returns {len(model.layer_groups())} groups but its "
                          f"declaration says groups={spec.groups}; make them agree")
    return model
