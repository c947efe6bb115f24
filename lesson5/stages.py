"""Core: fitting in stages, the lesson's fine-tuning: a frozen body first, then the whole net with discriminative lrs.

A stage (`trainer.stages`, `config.StageConf`) is one `Learner.fit` with its own epochs, per-group lrs
(`lesson5.slices`), schedule and freezing. The Learner's step keeps counting across stages, so MLflow shows one
curve; each stage also logs `<stage>/epoch_seconds` (training only, validation excluded), `<stage>/peak_memory_mb`
and its last epoch's metrics under its name. A run without stages fits once, `trainer.epochs` at `optim.lr`.

Freezing sets `requires_grad=False` on every parameter of the frozen groups (all but the head), so autograd
neither computes nor stores their gradients: that is where a frozen epoch saves time and memory. With
`trainer.train_bn` (fastai's default) BatchNorm layers stay trainable, so gradients still flow back through the
body to reach them; without it the frozen BatchNorm layers also stop updating their running statistics.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from lesson5 import slices
from lesson5.callback import Callback
from lesson5.config import Config, StageConf
from lesson5.optim.schedule import ParamScheduler

if TYPE_CHECKING:  # the Learner calls these callbacks; importing it at run time would be a cycle
    from lesson5.learner import Learner

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def plan(conf: Config) -> list[StageConf]:
    """The run's stages: trainer.stages, or one unfrozen fit of trainer.epochs at optim.lr."""
    return list(conf.trainer.stages) or [StageConf(name="fit", epochs=conf.trainer.epochs, lr=conf.optim.lr)]


def freeze(model: nn.Module, frozen: bool, train_bn: bool = True) -> None:
    """Freeze every layer group but the last (the head), keeping norm layers trainable with `train_bn`; or, with
    `frozen=False`, make every parameter trainable again."""
    groups = model.layer_groups()
    for p in (p for g in groups for p in g):
        p.requires_grad_(True)
    if not frozen:
        return
    bn_params = {id(p) for m in model.modules() if isinstance(m, BN_TYPES) for p in m.parameters(recurse=False)}
    for p in (p for g in groups[:-1] for p in g):
        p.requires_grad_(train_bn and id(p) in bn_params)


class FrozenBatchNorm(Callback):
    """Without train_bn, keeps the frozen groups' norm layers in eval mode (fit and validation switch the model to
    train mode), so their running statistics stay the pretrained ones."""

    order = 5

    def __init__(self, modules: list[nn.Module]):
        self.modules = modules

    def _eval(self, learn: Learner) -> None:
        for m in self.modules:
            m.eval()

    before_fit = after_epoch = _eval


class StageStats(Callback):
    """Per-epoch training seconds (validation excluded) and this stage's peak memory."""

    order = 90

    def __init__(self, device: torch.device):
        self.device, self.epoch_seconds = device, []
        self._peak = None if device.type == "cuda" else _PeakRss()

    def before_fit(self, learn: Learner) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._peak.start()

    def after_epoch(self, learn: Learner) -> None:
        self.epoch_seconds.append(learn.epoch_seconds)

    def after_fit(self, learn: Learner) -> None:
        if self._peak is not None:
            self._peak.stop()

    def peak_memory_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self._peak.peak / 2**20


class _PeakRss:
    """The process's peak resident memory while running (ru_maxrss only gives the peak since the process began,
    which a later stage cannot tell apart): /proc/self/statm read every 20 ms on a thread."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _read(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux: the lifetime peak, the best there is
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._read())

    def start(self) -> None:
        self.peak = self._read()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self._read())


@dataclass
class StageResult:
    name: str
    lrs: list[float]
    epoch_seconds: list[float]
    peak_memory_mb: float
    metrics: dict[str, float]

    def rows(self) -> dict[str, float]:
        """What a stage logs under its name."""
        mean = sum(self.epoch_seconds) / max(len(self.epoch_seconds), 1)
        return {f"{self.name}/epoch_seconds": mean, f"{self.name}/peak_memory_mb": self.peak_memory_mb,
                **{f"{self.name}/{k}": v for k, v in self.metrics.items()}}


def fit(learn: Learner, stage: StageConf, conf: Config, scheduler: Optional[ParamScheduler],
        device: torch.device) -> StageResult:
    """One stage: freeze or unfreeze, set each group's lr and the schedule, fit, and measure it (only explicit
    stages are measured: the implicit one of a run without stages logs nothing under its name)."""
    model = learn.model
    groups = len(model.layer_groups())
    lrs = slices.group_lrs(stage.lr, groups, conf.trainer.slice_div)
    extra = []
    if groups > 1:
        freeze(model, stage.frozen, conf.trainer.train_bn)
        if stage.frozen and not conf.trainer.train_bn:
            head = {id(p) for p in model.layer_groups()[-1]}
            extra.append(FrozenBatchNorm([m for m in model.modules() if isinstance(m, BN_TYPES)
                                          and not any(id(p) in head for p in m.parameters())]))
    stats = StageStats(device) if conf.trainer.stages else None
    if scheduler is not None and stage.schedule is not None:
        scheduler.conf = dataclasses.replace(conf.schedule, name=stage.schedule)
    added = [cb for cb in (stats, *extra) if cb is not None]
    for cb in added:
        learn.add(cb)
    try:
        metrics = learn.fit(stage.epochs, lrs)
    finally:
        learn.callbacks = [cb for cb in learn.callbacks if cb not in added]
        if scheduler is not None:
            scheduler.conf = conf.schedule
    if stats is None:
        return StageResult(stage.name, lrs, [], float("nan"), dict(metrics))
    return StageResult(stage.name, lrs, stats.epoch_seconds, stats.peak_memory_mb(), dict(metrics))

