"""Core: the one training loop. It knows a model's `layer_groups()` through the optimizer, a loss function and two
batch sources; nothing of collab, MNIST or resnet.

`fit` can be called again (a second stage, say, unfrozen with other learning rates): each fit has its own
`fit_step` count, from which callbacks such as the schedule work, while `step` counts optimizer steps over every
fit, so tracked curves continue. Schedule, recording, tracking, progress and pruning are callbacks; a callback
stops a fit by raising (`lesson5.outcome` maps what it raised to the run's status).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from lesson5 import losses, models, optim, stages
from lesson5.callback import EVENTS, Callback, CancelFit
from lesson5.config import Config
from lesson5.data import Data, Fold, batches
from lesson5.data.batches import Batches
from lesson5.errors import DivergedError
from lesson5.metrics import METRICS, predict
from lesson5.optim.schedule import ParamScheduler
from lesson5.progress import ProgressBar
from lesson5.recorder import Recorder

CHECK_EVERY = 64  # steps between finiteness checks of the loss (each check syncs with the device)


def progress_bars(conf: Config, data: Data, fold: Fold) -> list[Callback]:
    """The progress bar of a fold's fit, with `trainer.progress` (labelled by the fold's name when there are
    several)."""
    return [ProgressBar(label=f"{fold.name} " if len(data.folds) > 1 else "")] if conf.trainer.progress else []


class Learner:
    """Fits a model on one fold's batch sources with an optimizer; its state is public for callbacks.

    Per fit: `epochs`, `epoch` (0-based), `fit_step` (steps done in this fit), `total_steps`. Over all fits:
    `step`. Per step: `xb`, `yb`, `loss`. Per epoch: `epoch_losses`, then `metrics`, `valid_out`, `valid_y`.
    """

    def __init__(self, model: nn.Module, train: Batches, valid: Batches, *, opt, loss_fn, seed: int | Sequence[int],
                 callbacks: Sequence[Callback] = (), diverge_factor: float = 0.0, amp: bool = False,
                 channels_last: bool = False):
        self.model, self.train, self.valid = model, train, valid
        self.opt, self.loss_fn = opt, loss_fn
        self.loss_name = model.loss
        self.callbacks = sorted(callbacks, key=lambda cb: cb.order)
        # a stack (lesson5.stack) trains `members` models at once, each with its own seed and batch order; its
        # losses and metrics hold one value per member, and a member that diverges is `out` (the others go on)
        self.members: int = getattr(model, "members", 0)
        seeds = list(seed) if self.members else [seed]
        gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        self.gen = gens if self.members else gens[0]
        self.out: dict[int, BaseException] = {}
        self.step = 0
        self.epochs = self.epoch = self.fit_step = self.total_steps = 0
        self.loss: Optional[Tensor] = None
        self.epoch_losses: list[Tensor] = []  # per-step train losses of the current epoch, as 0-d tensors
        self.metrics: dict[str, float] = {}  # the latest epoch's metrics
        self.valid_out: Optional[Tensor] = None  # the latest epoch's validation outputs and targets
        self.valid_y: Optional[Tensor] = None
        self.train_seconds = 0.0  # over every fit
        self.epoch_seconds = 0.0  # the latest epoch's training, validation excluded
        self.amp, self.channels_last = amp, channels_last  # CUDA options (trainer.amp, trainer.channels_last)
        self.diverge_factor = diverge_factor
        self.start_loss: Optional[list[Optional[float]]] = None  # the first step's loss (per member), the yardstick
        # for divergence
        self.recorder: Optional[Recorder] = None  # set by from_config, as are the schedule and the stages
        self.scheduler: Optional[ParamScheduler] = None
        self.stages: list[stages.StageResult] = []

    @classmethod
    def from_config(cls, conf: Config, data: Data, fold: Fold, model: nn.Module, device: torch.device,
                    callbacks: Sequence[Callback] = (), schedule: bool = True) -> Learner:
        """A Learner for one fold of `conf`: its optimizer over the model's layer groups, its Recorder, the
        schedule (unless `schedule` is False: a callback of the caller's sets the lr), a progress bar with
        `trainer.progress`, and the batch sources (for a model with BatchNorm, without a last training batch of
        one row: `lesson5.data.batches`)."""
        groups = model.layer_groups()
        opt = optim.build(conf.optim, groups, [conf.optim.lr] * len(groups))
        mom_key = optim.momentum_key(conf.optim)
        recorder = Recorder(mom_key)
        scheduler = ParamScheduler(conf.schedule, mom_key) if schedule else None
        bar = progress_bars(conf, data, fold)
        bs, workers = conf.trainer.bs, getattr(conf.data, "num_workers", 0)
        cuda = device.type == "cuda"
        drop_one = models.has_batchnorm(model)  # a last batch of one row, which BatchNorm cannot train on
        learn = cls(model, batches(fold.train, bs, device, train=True, num_workers=workers, drop_one=drop_one),
                    batches(fold.valid, bs, device, train=False, num_workers=workers), opt=opt,
                    seed=conf.trainer.seed, loss_fn=losses.build(model.loss, conf.loss.impl),
                    callbacks=[recorder, *callbacks, *bar, *([scheduler] if scheduler else [])],
                    diverge_factor=conf.trainer.diverge_factor, amp=conf.trainer.amp and cuda,
                    channels_last=conf.trainer.channels_last and cuda)
        learn.recorder, learn.scheduler = recorder, scheduler
        return learn

    def fit_stages(self, conf: Config, device: torch.device) -> list[stages.StageResult]:
        """Every stage of `conf` in turn (trainer.stages, or one fit of trainer.epochs): fastai's
        `fit_one_cycle`/`fine_tune` as configuration. Each stage's result is kept in `self.stages`."""
        for stage in stages.plan(conf):
            self.stages.append(stages.fit(self, stage, conf, self.scheduler, device))
        return self.stages

    def add(self, cb: Callback) -> None:
        """Add a callback, in its order."""
        self.callbacks = sorted([*self.callbacks, cb], key=lambda c: c.order)

    def _hooks(self, event: str) -> list:
        """The callbacks' methods for an event, only those that override it (per step, each call counts)."""
        return [getattr(cb, event) for cb in self.callbacks if cb.handles(event)]

    def _check_finite(self, losses: list[Tensor]) -> None:
        """Raise DivergedError if a loss in the window is NaN/inf or beyond diverge_factor times the start. In a
        stack, that member is out instead, and the fit stops (CancelFit) once every member is."""
        window = torch.stack(losses)
        window = window if self.members else window[:, None]  # [steps, members]
        if self.start_loss is None:  # the loss before any update
            self.start_loss = [v if math.isfinite(v) else None for v in window[0].tolist()]
        limits = [self.diverge_factor * s if self.diverge_factor and s else math.inf for s in self.start_loss]
        bad_mask = ~torch.isfinite(window) | (window > torch.tensor(limits, device=window.device))
        if not bool(bad_mask.any()):
            return
        for k in bad_mask.any(0).nonzero().flatten().tolist():
            if k in self.out:
                continue
            bad = int(bad_mask[:, k].nonzero()[0])
            step = self.step - len(losses) + bad + 1
            why = "" if math.isinf(limits[k]) else \
                f" (over {self.diverge_factor:g}x its start, {self.start_loss[k]:.4g})"
            max_lr = (self.opt.parts[k] if self.members else self.opt).param_groups[-1]["max_lr"]
            error = DivergedError(
                f"train_loss became {window[bad, k].item():.4g}{why} at epoch {self.epoch + 1}, step {step}: the run "
                f"diverged. Lower optim.lr (max lr now {max_lr:g}) or add weight decay.")
            if not self.members:
                raise error
            self.out[k] = error
        if len(self.out) == self.members:
            raise CancelFit

    def _forward(self):
        """The model's forward for training: the module itself, or wrapped for bfloat16 autocast and
        channels-last inputs."""
        model = self.model
        if not (self.amp or self.channels_last):
            return model
        device = next(model.parameters()).device.type

        def forward(x):
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=self.amp):
                return model(x).float()

        return forward

    def _metrics(self, train_loss) -> dict:
        """The epoch's metrics: floats, or for a stack one list of the members' values per key."""
        score = METRICS[self.loss_name]
        if not self.members:
            return {"train_loss": train_loss, **score(self.valid_out, self.valid_y)}
        each = [score(out, y) for out, y in zip(self.valid_out, self.valid_y)]
        return {"train_loss": train_loss, **{key: [m[key] for m in each] for key in each[0]}}

    def fit(self, epochs: int, lrs: Optional[Sequence[float]] = None) -> dict[str, float]:
        """Train for `epochs`, validating after each; returns the last epoch's metrics.

        `lrs`, one per layer group, sets each group's max lr for this fit (the schedule scales from it).
        """
        if lrs is not None:
            for g, lr in zip(self.opt.param_groups, lrs, strict=True):
                g["lr"] = g["max_lr"] = lr
        self.epochs, self.fit_step, self.total_steps = epochs, 0, epochs * len(self.train)
        hooks = {event: self._hooks(event) for event in EVENTS}
        model, loss_fn = self._forward(), self.loss_fn
        opt_step = optim.stepper(self.opt)
        params = [p for g in self.opt.param_groups for p in g["params"]]
        start, done_before = time.perf_counter(), self.train_seconds
        self.model.train()
        try:
            for hook in hooks["before_fit"]:
                hook(self)
            for self.epoch in range(epochs):
                self.epoch_losses = []
                epoch_start = time.perf_counter()
                for hook in hooks["before_epoch"]:
                    hook(self)
                for self.xb, self.yb in self.train.epoch(self.gen):  # noqa: B020 - the batch is state for callbacks
                    for hook in hooks["before_batch"]:
                        hook(self)
                    loss = loss_fn(model(self.xb), self.yb)
                    (loss.sum() if self.members else loss).backward()  # a stack: each member's own gradient
                    opt_step()
                    for p in params:  # zero_grad(set_to_none=True), without its profiler record
                        p.grad = None
                    self.step += 1
                    self.fit_step += 1
                    self.loss = loss.detach()
                    self.epoch_losses.append(self.loss)
                    if len(self.epoch_losses) % CHECK_EVERY == 0:
                        self._check_finite(self.epoch_losses[-CHECK_EVERY:])
                    for hook in hooks["after_step"]:
                        hook(self)
                tail = len(self.epoch_losses) % CHECK_EVERY
                if tail:
                    self._check_finite(self.epoch_losses[-tail:])
                train_loss = torch.stack(self.epoch_losses).mean(0).tolist()  # waits for the device: epoch ends
                self.epoch_seconds = time.perf_counter() - epoch_start
                self.valid_out, self.valid_y = predict(model, self.valid)
                self.metrics = self._metrics(train_loss)
                self.train_seconds = done_before + time.perf_counter() - start
                for hook in hooks["after_epoch"]:
                    hook(self)
        except CancelFit:
            pass
        finally:  # after_fit runs even when the fit raises, so callbacks can send or release what they hold
            self.train_seconds = done_before + time.perf_counter() - start
            for hook in hooks["after_fit"]:
                hook(self)
        return self.metrics
