"""`load_run(run_id)`: a finished lesson5 run back from MLflow alone: its config, its data and its trained model.

Shared by `lesson5.interpret`, `lesson5.recommend` and the claims report. The run's `config.yaml` and `weights.pt`
come from its artifacts; the data from lesson5's cache (fetched again if it is gone, and checked).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from lesson5.errors import ConfigError


def tracking_uri(overrides: Sequence[str]) -> Optional[str]:
    """tracking.uri from command-line overrides, if one is given."""
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("tracking.uri=")), None)


@dataclass
class Loaded:
    run_id: str
    uri: str
    conf: Any  # lesson5.config.Config
    data: Any  # lesson5.data.Data
    model: Any  # torch.nn.Module, in eval mode on the CPU
    client: Any  # mlflow.MlflowClient

    def log(self, files: dict[str, bytes], metrics: dict[str, float] = {}) -> None:
        """Add artifacts (by path in the run) and metrics to the run."""
        from mlflow.entities import Metric

        from lesson5.tracking.store import log_files

        log_files(self.client, self.run_id, files)
        now = int(time.time() * 1000)
        if metrics:
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def load_run(run_id: str, uri: Optional[str] = None, kind: Optional[str] = None) -> Loaded:
    """The run's config, data and model; `kind` (a model name) refuses runs of other models, naming both."""
    import torch
    from mlflow import MlflowClient
    from omegaconf import OmegaConf

    from lesson5 import data as datasets
    from lesson5 import models
    from lesson5.config import from_saved, validate
    from lesson5.tracking.store import resolve_uri

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # two small files: no progress bars
    uri = resolve_uri(uri)
    client = MlflowClient(uri)
    try:
        client.get_run(run_id)
    except Exception as e:  # noqa: BLE001 - no such run, or no store
        raise ConfigError(f"run {run_id!r} was not found in {uri} ({type(e).__name__}). Give a run id the MLflow UI "
                          f"shows, and tracking.uri=... if the run is in another store.") from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            config = client.download_artifacts(run_id, "config.yaml", tmp)
            weights = client.download_artifacts(run_id, "weights.pt", tmp)
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
    model.load_state_dict(state)
    return Loaded(run_id, uri, conf, data, model.eval(), client)
