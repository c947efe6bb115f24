"""Services: `load_run(run_id)`, a finished lesson5 run back from MLflow alone: its config, data and trained model.

Shared by `lesson5.interpret`, `lesson5.recommend` and the claims report. The run's `config.yaml` and `weights.pt`
come from its artifacts; the data from lesson5's cache (fetched again if it is gone, and checked).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from lesson5 import data as datasets
from lesson5 import models
from lesson5.config import from_saved, validate
from lesson5.errors import ConfigError
from lesson5.models.ensemble import Ensemble
from lesson5.tracking import store


def tracking_uri(overrides: Sequence[str]) -> Optional[str]:
    """tracking.uri from command-line overrides, if one is given."""
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("tracking.uri=")), None)


@dataclass
class Loaded:
    run_id: str
    uri: str
    conf: Any  # lesson5.config.Config
    data: Any  # lesson5.data.Data
    model: Any  # torch.nn.Module, in eval mode on the CPU (an Ensemble for a run of trainer.ensemble > 1)

    def log(self, files: dict[str, bytes], metrics: Optional[dict[str, float]] = None) -> None:
        """Add artifacts (by path in the run) and metrics to the run."""
        mlflow_client = store.client(self.uri)
        store.log_files(mlflow_client, self.run_id, files)
        store.log_summary(mlflow_client, self.run_id, metrics=metrics)


def load_run(run_id: str, uri: Optional[str] = None, kind: Optional[str] = None) -> Loaded:
    """The run's config, data and model; `kind` (a model name) refuses runs of other models, naming both."""
    uri = store.resolve_uri(uri)
    try:
        store.get_run(uri, run_id)
    except Exception as e:  # noqa: BLE001 - no such run, or no store
        raise ConfigError(f"run {run_id!r} was not found in {uri} ({type(e).__name__}). Give a run id the MLflow UI "
                          f"shows, and tracking.uri=... if the run is in another store.") from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            config = store.download(uri, run_id, "config.yaml", tmp)
            weights = store.download(uri, run_id, "weights.pt", tmp)
        except Exception as e:  # noqa: BLE001 - a run that is not lesson5's, or not finished
            raise ConfigError(f"run {run_id} in {uri} has no config.yaml and weights.pt: it is not a finished "
                              f"lesson5 run ({type(e).__name__})") from None
        conf = validate(from_saved(OmegaConf.load(config)))
        state = torch.load(weights, map_location="cpu", weights_only=True)
    if kind is not None and conf.model.name != kind:
        raise ConfigError(f"run {run_id} trained model={conf.model.name}; this needs a model={kind} run")
    data = datasets.build(conf.data)
    if conf.model.name in models.GROUPS_OF_BODIES:
        conf.model.weights = "none"  # the run's own weights follow
    model = models.build(conf.model, data)
    if conf.trainer.ensemble > 1:  # K seeds' models, predicting their mean (lesson5.ensemble)
        model = Ensemble([model, *(models.build(conf.model, data) for _ in range(conf.trainer.ensemble - 1))])
    model.load_state_dict(state)
    return Loaded(run_id, uri, conf, data, model.eval())
