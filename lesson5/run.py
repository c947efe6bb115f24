"""Services: `run(cfg)`, the single path from a composed config to a trained, tracked model.

The command line, tests, sweep trials, the claims report and transfer all call it. Order matters for bad input:
the config is validated, then the data fetched and the first model built (bad weights are refused), and only then
does an MLflow run exist (`lifecycle.TrackedRun`), which ends with the status its outcome gives, however it ended.
"""

from __future__ import annotations

import random
import resource
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig

from lesson5 import data as datasets
from lesson5 import models, naming
from lesson5.callback import Callback
from lesson5.config import Config, flatten, ignored, validate
from lesson5.errors import ConfigError
from lesson5.learner import Learner
from lesson5.lifecycle import TrackedRun, config_yaml, dataset_input, run_weights, standard_tags
from lesson5.outcome import Outcome
from lesson5.tracking import Tracker, open_tracker


@dataclass
class RunResult:
    """The final metrics (fold means for cv), per-fold metrics, and where the MLflow run is stored."""

    metrics: dict[str, float]
    folds: dict[str, dict[str, float]] = field(default_factory=dict)
    run_id: Optional[str] = None
    experiment_id: Optional[str] = None
    tracking_uri: Optional[str] = None
    model: Optional[torch.nn.Module] = None


def pick_device(name: str, model: str = "") -> torch.device:
    """trainer.device: `auto` takes CUDA when available, except for models declared with device="cpu" (too small
    for a GPU to help); a device this machine lacks is a ConfigError."""
    if name == "auto":
        on_cpu = model in models.MODELS and models.MODELS[model].device == "cpu"
        return torch.device("cuda" if torch.cuda.is_available() and not on_cpu else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        have = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA device"
        raise ConfigError(f"trainer.device={name}: this machine has {have} (torch {torch.__version__}). Use "
                          f"trainer.device=cpu, or auto to take a GPU when there is one.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"trainer.device={name}: MPS is not available here. Use trainer.device=cpu or auto.")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process (and of the GPU, when used), in MiB."""
    out = {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def build_model(conf: Config, data: datasets.Data, device: torch.device) -> torch.nn.Module:
    """A fresh, seeded model on the device; weights given as a run id are fetched from conf's tracking store."""
    seed_everything(conf.trainer.seed)
    run_id = models.weights_run(conf.model)
    with tempfile.TemporaryDirectory() if run_id else nullcontext() as tmp:  # read by the time the model is built
        model = models.build(conf.model, data, run_weights(conf, run_id, tmp) if run_id else None).to(device)
    if conf.trainer.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _summary(per_fold: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean (and std across folds, when there are several) of every metric."""
    if len(per_fold) == 1:
        return dict(next(iter(per_fold.values())))
    out = {}
    for key in next(iter(per_fold.values())):
        values = [m[key] for m in per_fold.values()]
        out[key] = statistics.fmean(values)
        if key.startswith("valid_"):
            out[f"{key}_std"] = statistics.stdev(values)
    return out


def run(cfg: DictConfig, *, overrides: Sequence[str] = (), callbacks: Sequence[Callback] = (),
        tracker: Optional[Tracker] = None, parent_run_id: Optional[str] = None,
        tags: Optional[dict[str, str]] = None,
        end_tags: Optional[Callable[[Outcome], dict[str, str]]] = None) -> RunResult:
    """Validate, fetch the data, train every fold, track it all; the one training path.

    Pass a `tracker` to share one MLflow writer across runs (sweeps); otherwise a run starts and closes its own.
    `parent_run_id` nests the run under an existing MLflow run, made by any process; one that does not exist
    raises TrackingError before training. `tags` are added to the run's own (a sweep's trial and study, say),
    and `end_tags(outcome)` to those it ends with (a trial's Optuna state).
    """
    conf = validate(cfg)
    for warning in ignored(conf, overrides):
        print(f"warning: {warning}", file=sys.stderr)
    device = pick_device(conf.trainer.device, conf.model.name)  # refused before the tracker or the data
    own = open_tracker(conf.tracking) if tracker is None else None  # its writer imports MLflow while the data loads
    try:
        return _run(cfg, conf, device, overrides, callbacks, (tracker or own) if conf.tracking.enabled else None,
                    parent_run_id, tags or {}, end_tags)
    finally:
        if own is not None:
            own.close()


def _run(cfg: DictConfig, conf: Config, device: torch.device, overrides: Sequence[str],
         callbacks: Sequence[Callback], tracker: Optional[Tracker], parent_run_id: Optional[str],
         extra_tags: dict[str, str], end_tags: Optional[Callable[[Outcome], dict[str, str]]]) -> RunResult:
    if conf.trainer.threads:
        torch.set_num_threads(conf.trainer.threads)
    data = datasets.build(conf.data)
    model = build_model(conf, data, device)  # before the run exists: bad weights are refused here
    experiment, name = naming.experiment_name(conf), naming.run_name(conf, overrides)
    params = {**flatten(cfg), **{f"data.info.{k}": v for k, v in data.info.items()}} if tracker else {}
    tags = {**standard_tags(conf, params, name, overrides, device), **extra_tags} if tracker else {}
    per_fold, learn = {}, None
    with TrackedRun(tracker, experiment=experiment, name=name, params=params, tags=tags,
                    files={"config.yaml": config_yaml(cfg)}, parent=parent_run_id,
                    datasets=[dataset_input(conf, data)], end_tags=end_tags) as main:
        for fold in data.folds:
            # cv: each fold is a child run of its own, ended as its fit ends
            fold_run = TrackedRun(tracker, experiment=experiment, name=fold.name, tags={"fold": fold.name},
                                  parent=main.rid) if len(data.folds) > 1 and main.tracked else nullcontext(main)
            with fold_run as tracked:
                learn = Learner.from_config(conf, data, fold, model or build_model(conf, data, device), device,
                                            callbacks)
                model = None
                for cb in tracked.callback(conf, learn.recorder):  # after the recorder it reads
                    learn.add(cb)
                for result in learn.fit_stages(conf, device):
                    if conf.trainer.stages:
                        tracked.log_metrics([(k, v, learn.step) for k, v in result.rows().items()])
                per_fold[fold.name] = {**learn.metrics, "train_seconds": learn.train_seconds,
                                       **({k: v for r in learn.stages for k, v in r.rows().items()}
                                          if conf.trainer.stages else {})}
                tracked.log_fit(conf, data, fold, learn)
        result = RunResult({**_summary(per_fold), **peak_memory()}, per_fold, model=learn.model)
        # what the run lacks: a single fold's run has its own metrics already
        logged, step = (per_fold[fold.name], learn.step) if len(per_fold) == 1 else ({}, 0)
        main.log_metrics([(k, v, step) for k, v in result.metrics.items() if k not in logged])
    info = main.info()
    if info is not None:
        result.run_id, result.experiment_id, result.tracking_uri = info.run_id, info.experiment_id, tracker.uri
    return result
