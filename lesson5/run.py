"""Services: `run(cfg)`, the single path from a composed config to a trained, tracked model.

The command line, tests, sweep trials, the claims report and transfer all call it. Order matters for bad input:
the config is validated, then the data fetched and the first model built (bad weights are refused), and only then
does an MLflow run exist (`lifecycle.TrackedRun`), which ends with the status its outcome gives, however it ended.
"""

from __future__ import annotations

import os
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
from lesson5 import ensemble, models, naming, stack
from lesson5.callback import Callback
from lesson5.config import Config, flatten, ignored, unstackable, validate
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
    _threads(conf)
    data = datasets.build(conf.data)
    model = build_model(conf, data, device)  # before the run exists: bad weights are refused here
    if conf.trainer.ensemble > 1:  # too large a stack is refused before the run exists too
        refuse_oversized("trainer.ensemble", conf.trainer.ensemble, model, data.folds[0], device)
    extra_tags = {**extra_tags, **batch_of_one(conf, data, model)}
    per_fold, learn = {}, None
    with _tracked(cfg, conf, data, device, overrides, tracker, parent_run_id, extra_tags, end_tags) as main:
        for fold in data.folds:
            # cv: each fold is a child run of its own, ended as its fit ends
            cv = len(data.folds) > 1 and main.tracked
            fold_run = TrackedRun(tracker, experiment=naming.experiment_name(conf), name=fold.name,
                                  tags={"fold": fold.name}, parent=main.rid) if cv else nullcontext(main)
            with fold_run as tracked:
                learn = _learner(conf, data, fold, model, device, callbacks)
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
    _where(result, main)
    return result


def _learner(conf: Config, data: datasets.Data, fold: datasets.Fold, model: Optional[torch.nn.Module],
             device: torch.device, callbacks: Sequence[Callback]) -> Learner | ensemble.Ensembled:
    """The fold's Learner: of `model` (or a fresh one), or with trainer.ensemble=K, of K seeds as one stack, `model`
    the first (lesson5.ensemble)."""
    if conf.trainer.ensemble == 1:
        return Learner.from_config(conf, data, fold, model or build_model(conf, data, device), device, callbacks)
    confs = ensemble.member_confs(conf)
    members = [model if k == 0 and model is not None else build_model(c, data, device) for k, c in enumerate(confs)]
    return ensemble.learner(confs, data, fold, members, device, callbacks)


BATCH_OF_ONE_TAG = "batch_of_one_dropped"


def batch_of_one(conf: Config, data: datasets.Data, model: torch.nn.Module) -> dict[str, str]:
    """For a model with BatchNorm, which cannot train on one row: trainer.bs=1 refused (validate refuses it for the
    models whose config says they have BatchNorm; this catches a plugin's that does not say), and a training set
    one more than a multiple of bs noted, printed and as the run's tag, since its last batch (one row) is left out
    of each epoch (lesson5.data.batches)."""
    if not models.has_batchnorm(model):
        return {}
    bs = conf.trainer.bs
    if bs == 1:
        raise ConfigError(f"trainer.bs=1 is not allowed with model={conf.model.name}: it has BatchNorm layers, which "
                          f"cannot train on a batch of one row; use trainer.bs=2 or more")
    folds = [f for f in data.folds if datasets.batches_drop_one(f.train, bs)]
    if not folds:
        return {}
    rows = ", ".join(f"{f.name} {datasets.rows(f.train)}" for f in folds)
    note = (f"the last training batch of each epoch, one row, is left out: BatchNorm cannot train on one row "
            f"(training rows: {rows}; trainer.bs={bs})")
    print(f"note: {note}", file=sys.stderr)
    return {BATCH_OF_ONE_TAG: note}


def _threads(conf: Config) -> None:
    """trainer.threads: one by default, since small batches gain nothing from more and a sweep's workers, each
    with its writer, share the cores (two workers at torch's default of all cores ran a stack 5-10x slower)."""
    if conf.trainer.threads:
        torch.set_num_threads(conf.trainer.threads)


def _tracked(cfg: DictConfig, conf: Config, data: datasets.Data, device: torch.device, overrides: Sequence[str],
             tracker: Optional[Tracker], parent_run_id: Optional[str], extra_tags: dict[str, str],
             end_tags: Optional[Callable[[Outcome], dict[str, str]]]) -> TrackedRun:
    """The MLflow run of one config: its name, params, tags, config file and data set input."""
    experiment, name = naming.experiment_name(conf), naming.run_name(conf, overrides)
    params = {**flatten(cfg), **{f"data.info.{k}": v for k, v in data.info.items()}} if tracker else {}
    tags = {**standard_tags(conf, params, name, overrides, device), **extra_tags} if tracker else {}
    return TrackedRun(tracker, experiment=experiment, name=name, params=params, tags=tags,
                      files={"config.yaml": config_yaml(cfg)}, parent=parent_run_id,
                      datasets=[dataset_input(conf, data)], end_tags=end_tags)


def _where(result: RunResult, tracked: TrackedRun) -> None:
    info = tracked.info()
    if info is not None:
        result.run_id, result.experiment_id, result.tracking_uri = info.run_id, info.experiment_id, tracked.tracker.uri


def stackable(conf: Config) -> Optional[str]:
    """Why trials of `conf` cannot train as a stack (lesson5.stack), or None when they can. (An ensemble's members
    can with data.split=cv: they are one run, whose fold loop builds a stack per fold.)"""
    if getattr(conf.data, "split", None) == "cv":
        return "data.split=cv does not stack (a stack of trials trains one fold)"
    if conf.trainer.ensemble > 1:
        return f"trainer.ensemble={conf.trainer.ensemble} does not stack (each trial is a stack of its own)"
    return unstackable(conf)


def _apart(cfgs: Sequence[DictConfig]) -> Optional[str]:
    """What the configs of a stack differ in beyond lesson5.stack.MEMBER_KEYS (tracking aside), or None."""
    def shared(cfg: DictConfig) -> dict:
        flat = flatten(cfg)
        return {key: v for key, v in flat.items() if not key.startswith("tracking.") and (
            key not in stack.MEMBER_KEYS or (key == "model.y_range" and v is None))}
    first = shared(cfgs[0])
    apart = sorted({key for cfg in cfgs[1:] for key, v in shared(cfg).items() if first.get(key) != v}
                   | {key for cfg in cfgs[1:] for key in first.keys() ^ shared(cfg).keys()})
    return f"its trials differ in {', '.join(apart)}, which members of a stack share" if apart else None


def available_memory(device: torch.device) -> int:
    """Bytes free for a stack on `device`: CUDA's free memory, or the system's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def stack_capacity(cfg: DictConfig) -> int:
    """The largest stack of `cfg`'s trials that fits in this machine's memory (lesson5.stack.largest_fitting)."""
    conf = validate(cfg)
    device = pick_device(conf.trainer.device, conf.model.name)
    data = datasets.build(conf.data)
    return stack.largest_fitting(build_model(conf, data, device), available_memory(device),
                                 _row_bytes(data.folds[0]))


def _row_bytes(fold: datasets.Fold) -> int:
    """The bytes of a fold's training rows, when held as tensors (a stack gathers them in each member's order)."""
    return sum(t.nbytes for t in fold.train) if isinstance(fold.train, tuple) else 0


def refuse_oversized(key: str, k: int, member: torch.nn.Module, fold: datasets.Fold, device: torch.device) -> None:
    """A ConfigError naming `key` when a stack of k copies of `member` on `fold` needs more than half of the memory
    free on `device` (lesson5.stack.memory_estimate), with the largest K that fits."""
    rows = _row_bytes(fold)
    need, have = stack.memory_estimate(member, k, rows), available_memory(device)
    if need > have / 2:
        fits = stack.largest_fitting(member, have, rows)
        raise ConfigError(f"{key}={k}: a stack of {k} needs about {need / 2**30:.1f} GiB, more than half of the "
                          f"{have / 2**30:.1f} GiB free on {device}; the largest that fits is {fits}: use "
                          f"{key}={fits} or less")


def run_stack(cfgs: Sequence[DictConfig], *, overrides: Sequence[Sequence[str]],
              callbacks: Sequence[Sequence[Callback]] = (), tracker: Optional[Tracker] = None,
              parent_run_id: Optional[str] = None, tags: Sequence[dict[str, str]] = (),
              end_tags: Sequence[Callable[[Outcome], dict[str, str]]] = ()) -> list[RunResult | BaseException]:
    """K trials trained as one stack (lesson5.stack): each validated, built, seeded and tracked as `run(cfg)` does
    it alone, with its own MLflow run (its own params, metrics, artifacts, and the end its outcome gives), but in
    one fit. Per member: its RunResult, or the exception that put it out of the stack (diverged, pruned).

    The configs must agree on everything but lesson5.stack.MEMBER_KEYS; a stack larger than this machine's memory
    holds is refused before training. An error of the whole fit (Ctrl-C, a lost store) ends every member's run.
    """
    confs = [validate(c) for c in cfgs]
    conf, k = confs[0], len(confs)
    why = stackable(conf) or _apart(cfgs)
    if why:
        raise ConfigError(f"sweep.stack={k}: {why}; use sweep.stack=1")
    device = pick_device(conf.trainer.device, conf.model.name)
    own = open_tracker(conf.tracking) if tracker is None else None
    try:
        _threads(conf)
        data = datasets.build(conf.data)
        members = [build_model(c, data, device) for c in confs]
        fold = data.folds[0]
        refuse_oversized("sweep.stack", k, members[0], fold, device)
        return _run_stack(cfgs, confs, data, fold, members, device, overrides, callbacks, tracker or own,
                          parent_run_id, tags, end_tags)
    finally:
        if own is not None:
            own.close()


def _run_stack(cfgs, confs, data, fold, members, device, overrides, callbacks, tracker, parent_run_id, tags,
               end_tags) -> list[RunResult | BaseException]:
    k = len(confs)
    runs = [_tracked(cfg, c, data, device, overrides[i], tracker if c.tracking.enabled else None, parent_run_id,
                     {**(tags[i] if tags else {}), "stack.size": str(k), "stack.member": str(i)},
                     end_tags[i] if end_tags else None) for i, (cfg, c) in enumerate(zip(cfgs, confs))]
    entered: list[TrackedRun] = []
    try:
        for r in runs:
            entered.append(r.__enter__())
        learn = stack.learner(confs, fold, members, device, callbacks)
        for i, r in enumerate(runs):
            for cb in r.callback(confs[i], learn.recorders[i]):
                learn.add(stack.ForMember(cb, i))
        learn.fit(confs[0].trainer.epochs)
        results: list[RunResult | BaseException] = []
        for i, r in enumerate(runs):
            if i in learn.out:
                results.append(learn.out[i])
                continue
            view = stack.MemberView(learn, i)
            metrics = {**view.metrics, "train_seconds": view.train_seconds}
            r.log_fit(confs[i], data, fold, view)
            results.append(RunResult({**metrics, **peak_memory()}, {fold.name: metrics}, model=view.model))
            r.log_metrics([(key, v, learn.step) for key, v in peak_memory().items()])
    except BaseException as e:
        for r in entered:
            r.__exit__(type(e), e, e.__traceback__)
        raise
    for r, result in zip(runs, results):
        error = result if isinstance(result, BaseException) else None
        r.__exit__(type(error) if error else None, error, None)
        if error is None:
            _where(result, r)
    return results
