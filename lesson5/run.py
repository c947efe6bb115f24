"""`run(cfg)`: the single path from a composed config to a trained, tracked model.

The command line, tests and sweep trials all call it. Order matters for bad input: the config is validated,
then the data fetched, and only then does an MLflow run exist; whatever happens after, the run is closed with
the status and `outcome` tag that `lesson5.outcome` gives for how it ended.
"""

from __future__ import annotations

import copy
import io
import json
import platform
import resource
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

import lesson5
from lesson5 import data as datasets
from lesson5 import losses, metrics, models, naming, optim, stages
from lesson5.callbacks import ProgressBar, Recorder, TrackMetrics
from lesson5.config import Config, TrackingMode, flatten, ignored, validate
from lesson5.errors import ConfigError
from lesson5.learner import Callback, Learner
from lesson5.optim.schedule import ParamScheduler
from lesson5.outcome import Outcome, outcome
from lesson5.tracking import Tracker


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
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(lesson5.__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process (and of the GPU, when used), in MiB."""
    out = {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def build_model(conf: Config, data: datasets.Data, device: torch.device) -> torch.nn.Module:
    """A fresh, seeded model on the device; weights given as a run id are read from conf's tracking store."""
    seed_everything(conf.trainer.seed)
    model = models.build(conf.model, data, conf.tracking.uri).to(device)
    if conf.trainer.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def learner(conf: Config, data: datasets.Data, fold: datasets.Fold, device: torch.device,
            callbacks: Sequence[Callback], schedule: bool = True, model: Optional[torch.nn.Module] = None) -> Learner:
    """A Learner for one fold, on `model` or a fresh one, with a new optimizer, the schedule (unless `schedule` is
    False: a callback of the caller's sets the lr; else `learn.scheduler`) and a Recorder (`learn.recorder`)."""
    model = model if model is not None else build_model(conf, data, device)
    groups = model.layer_groups()
    opt = optim.build(conf.optim, groups, [conf.optim.lr] * len(groups))
    mom_key = optim.momentum_key(conf.optim)
    recorder = Recorder(mom_key)
    scheduler = ParamScheduler(conf.schedule, mom_key) if schedule else None
    bs, workers = conf.trainer.bs, getattr(conf.data, "num_workers", 0)
    cuda = device.type == "cuda"
    learn = Learner(model, datasets.batches(fold.train, bs, device, train=True, num_workers=workers),
                    datasets.batches(fold.valid, bs, device, train=False, num_workers=workers), opt=opt,
                    seed=conf.trainer.seed, loss_fn=losses.build(model.loss, conf.loss.impl),
                    callbacks=[recorder, *callbacks, *([scheduler] if scheduler else [])],
                    diverge_factor=conf.trainer.diverge_factor, amp=conf.trainer.amp and cuda,
                    channels_last=conf.trainer.channels_last and cuda)
    learn.recorder, learn.scheduler = recorder, scheduler
    return learn


def fit_fold(conf: Config, data: datasets.Data, fold: datasets.Fold, device: torch.device,
             callbacks: Sequence[Callback], tracker: Optional[Tracker] = None, rid: Optional[int] = None,
             model: Optional[torch.nn.Module] = None) -> Learner:
    """Train `model` (or a fresh one) on one fold, stage after stage, tracked into run `rid` when given.
    `learn.stages` holds each stage's StageResult; with explicit stages, each is logged under its name."""
    cbs = list(callbacks)
    if conf.trainer.progress:
        cbs.append(ProgressBar(label=f"{fold.name} " if len(data.folds) > 1 else ""))
    learn = learner(conf, data, fold, device, cbs, model=model)
    if rid is not None:  # added after: it needs the learner's recorder
        learn.add(TrackMetrics(tracker, rid, learn.recorder, conf.tracking.log_every_n_steps, conf.tracking.flush_every))
    learn.stages = []
    for stage in stages.plan(conf):
        result = stages.fit(learn, stage, conf, learn.scheduler, device)
        learn.stages.append(result)
        if rid is not None and conf.trainer.stages:
            tracker.log_metrics(rid, [(k, v, learn.step) for k, v in result.rows().items()])
    return learn


def _weights(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def _input(part, i: int) -> torch.Tensor:
    """Input i of a fold's part ((x, y) tensors or a Dataset of (x, y) pairs)."""
    return part[0][i] if isinstance(part, (tuple, list)) else part[i][0]


def _size(part) -> int:
    return len(part[1]) if isinstance(part, (tuple, list)) else len(part)


def _artifacts(conf: Config, data: datasets.Data, fold: datasets.Fold, learn: Learner):
    """(files, metrics) a fold's run logs as it ends: the weights, the tables its plots are drawn from (confusion
    matrix and most-wrong images for classifiers) and, for collab, what the model learned (lesson5.interpret)."""
    files = {"weights.pt": _weights(learn.model)}
    for name, table in metrics.tables(learn.valid_out, learn.valid_y, learn.loss_name).items():
        files[name] = json.dumps(table).encode()
    found = {"train_seconds": learn.train_seconds}
    if learn.loss_name == "cross_entropy":
        files["most_wrong.json"] = json.dumps(metrics.most_wrong(
            learn.valid_out, learn.valid_y, lambda i: _input(fold.valid, i), data.vocab.get("classes"))).encode()
    if conf.tracking.interpret and conf.model.name == "collab":
        from lesson5 import interpret

        more, learned, _ = interpret.artifacts(learn.model, data)
        files.update(more)
        found.update(learned)
    return files, found


def _mlflow_model(model: torch.nn.Module, fold: datasets.Fold) -> bytes:
    """The payload of an MLflow model: the CPU model in eval mode and an example batch with its output (for the
    signature), pickled here so that the writer, not the trainer, pays for MLflow's model code."""
    x = torch.stack([_input(fold.valid, i) for i in range(min(5, _size(fold.valid)))])
    model = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        out = model(x)
    buf = io.BytesIO()
    torch.save({"model": model, "input": x, "output": out}, buf)
    return buf.getvalue()


def _dataset(conf: Config, data: datasets.Data) -> dict[str, str]:
    """The run's MLflow dataset input: the data set's name, content digest, source and size."""
    info = data.info
    profile = {k: v for k, v in info.items() if k.startswith("n_")}
    return {"name": str(info.get("variant", conf.data.name)), "digest": str(info.get("digest", "unknown")),
            "source": str(info.get("source", conf.data.name)), "source_type": "local",
            "profile": json.dumps(profile)}


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
    device = pick_device(conf.trainer.device, conf.model.name)  # a missing device is refused before the tracker or the data
    own_tracker = tracker is None and conf.tracking.enabled
    if own_tracker:
        # the writer imports MLflow while the data loads
        tracker = Tracker(conf.tracking.uri, offline=conf.tracking.mode is TrackingMode.offline,
                          models=conf.tracking.log_model)
    try:
        return _run(cfg, conf, device, overrides, callbacks, tracker if conf.tracking.enabled else None,
                    parent_run_id, tags or {}, end_tags or (lambda end: {}))
    finally:
        if own_tracker:
            tracker.close()


def _run(cfg: DictConfig, conf: Config, device: torch.device, overrides: Sequence[str],
         callbacks: Sequence[Callback], tracker: Optional[Tracker], parent_run_id: Optional[str],
         extra_tags: dict[str, str], end_tags: Callable[[Outcome], dict[str, str]]) -> RunResult:
    if conf.trainer.threads:
        torch.set_num_threads(conf.trainer.threads)
    data = datasets.build(conf.data)
    first_model = build_model(conf, data, device)  # before the run exists: bad weights are refused here
    rid = None
    experiment = naming.experiment_name(conf)
    if tracker is not None:
        params = {**flatten(cfg), **{f"data.info.{k}": v for k, v in data.info.items()}}
        name = naming.run_name(conf, overrides)
        tags = {"overrides": " ".join(overrides) or "(defaults)", "torch_version": torch.__version__,
                "lesson5_version": lesson5.__version__, "python_version": platform.python_version(),
                "device": str(device), "seed": str(conf.trainer.seed), "model": conf.model.name,
                "data": conf.data.name, "seed_group": naming.seed_group(conf, params),
                "mlflow.source.name": naming.source_name(), "mlflow.source.type": "LOCAL",
                "mlflow.source.git.commit": git_commit(), "mlflow.note.content": naming.note(conf, name, overrides),
                **extra_tags}
        config_yaml = OmegaConf.to_yaml(cfg, resolve=True).encode()
        rid = tracker.start_run(experiment=experiment, name=name, params=params, tags=tags,
                                files={"config.yaml": config_yaml}, parent=parent_run_id,
                                datasets=[_dataset(conf, data)])
        if parent_run_id is not None and parent_run_id not in tracker.parents_seen:
            tracker.run_info(rid)  # a parent that does not exist fails here, before any training
            tracker.parents_seen.add(parent_run_id)  # later runs under it (a worker's trials) need not wait
    error, fold_rid = None, None
    try:
        per_fold, learn = {}, None
        for fold in data.folds:
            fold_rid = rid
            if tracker is not None and len(data.folds) > 1:
                fold_rid = tracker.start_run(experiment=experiment, name=fold.name, params={},
                                             tags={"fold": fold.name}, parent=rid)
            learn = fit_fold(conf, data, fold, device, callbacks, tracker, fold_rid, first_model)
            first_model = None
            per_fold[fold.name] = {**learn.metrics, "train_seconds": learn.train_seconds,
                                   **({k: v for r in learn.stages for k, v in r.rows().items()}
                                      if conf.trainer.stages else {})}
            if fold_rid is not None:
                files, found = _artifacts(conf, data, fold, learn)
                tracker.log_metrics(fold_rid, [(k, v, learn.step) for k, v in found.items()])
                tracker.log_files(fold_rid, files)
                if conf.tracking.log_model:
                    tracker.log_model(fold_rid, _mlflow_model(learn.model, fold))
                if fold_rid != rid:
                    tracker.end_run(fold_rid, "FINISHED", outcome(None).tags())
            fold_rid = None
        result = RunResult({**_summary(per_fold), **peak_memory()}, per_fold, model=learn.model)
        if tracker is not None:  # what the run lacks: a single fold's run has its own metrics already
            logged, step = (per_fold[fold.name], learn.step) if len(per_fold) == 1 else ({}, 0)
            tracker.log_metrics(rid, [(k, v, step) for k, v in result.metrics.items() if k not in logged])
    except BaseException as e:
        error = e
        raise
    finally:
        if tracker is not None:
            end = outcome(error)
            if fold_rid is not None and fold_rid != rid:
                tracker.end_run(fold_rid, end.status, end.tags())
            if rid is not None:
                tracker.end_run(rid, end.status, {**end.tags(), **end_tags(end)})
    if tracker is not None:
        info = tracker.run_info(rid)
        result.run_id, result.experiment_id, result.tracking_uri = info.run_id, info.experiment_id, tracker.uri
    return result

