"""The one training loop. It knows a model's `loss` and `layer_groups()`, nothing of collab, MNIST or resnet.

Batches are slices of whole tensors shuffled once per epoch, so there is no per-row Dataset/DataLoader cost.
Tracking, progress and pruning are callbacks; a callback stops the fit by raising.
"""

from __future__ import annotations

import math
import time
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from lesson5 import losses, optim
from lesson5.errors import DivergedError
from lesson5.metrics import METRICS, predict
from lesson5.optim.schedule import Scheduler

CHECK_EVERY = 64  # steps between finiteness checks of the loss (each check syncs with the device)
# Up to this size a dataset is gathered into shuffled order once per epoch and batches are free slices of it;
# beyond, allocating (and page-faulting) a fresh copy each epoch costs more than gathering each batch.
PERMUTE_MAX_BYTES = 1 << 24


class Callback:
    """Hooks called by Learner.fit; each receives the learner and reads what it needs from it."""

    def before_fit(self, learn: "Learner") -> None: ...
    def after_step(self, learn: "Learner") -> None: ...
    def after_epoch(self, learn: "Learner") -> None: ...
    def after_fit(self, learn: "Learner") -> None: ...  # also when the fit raises


class Learner:
    """Fits a model on one fold with an optimizer and a schedule; state is public for callbacks."""

    def __init__(self, model: nn.Module, train: tuple[Tensor, Tensor], valid: tuple[Tensor, Tensor], *,
                 opt, scheduler_factory, bs: int, seed: int, callbacks: Sequence[Callback] = (),
                 device: torch.device = torch.device("cpu"), loss_fn=None, diverge_factor: float = 0.0):
        self.device = device
        self.model = model.to(device)
        self.train_x, self.train_y = (t.to(device) for t in train)
        self.valid_x, self.valid_y = (t.to(device) for t in valid)
        self.loss_name = model.loss
        self.loss_fn = loss_fn or losses.build(model.loss)
        self.opt, self.bs, self.callbacks = opt, bs, list(callbacks)
        self.steps_per_epoch = math.ceil(len(self.train_y) / bs)
        self.scheduler_factory = scheduler_factory
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.epoch = self.step = 0
        self.epoch_losses: list[Tensor] = []  # per-step train losses of the current epoch, as 0-d tensors
        self.epoch_lrs: list[float] = []
        self.epoch_moms: list[Optional[float]] = []
        self.metrics: dict[str, float] = {}  # the latest epoch's metrics
        self.valid_out: Optional[Tensor] = None  # the latest epoch's validation outputs
        self.train_seconds = 0.0
        self.diverge_factor = diverge_factor
        self.start_loss: Optional[float] = None  # the first step's loss, the yardstick for divergence

    def _emit(self, event: str) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self)

    def _batches(self):
        """(x, y) batches of one epoch in a fresh random order."""
        bs = self.bs
        perm = torch.randperm(len(self.train_y), generator=self.gen).to(self.device)
        x, y = self.train_x, self.train_y
        if x.nbytes + y.nbytes <= PERMUTE_MAX_BYTES:
            return zip(x.index_select(0, perm).split(bs), y.index_select(0, perm).split(bs))
        return ((x.index_select(0, idx), y.index_select(0, idx)) for idx in perm.split(bs))

    def _check_finite(self, losses: list[Tensor]) -> None:
        """Raise DivergedError if a loss in the window is NaN/inf or beyond diverge_factor times the start."""
        window = torch.stack(losses)
        finite = torch.isfinite(window)
        if self.start_loss is None and bool(finite[0]):
            self.start_loss = window[0].item()  # the loss before any update
        limit = self.diverge_factor * self.start_loss if self.diverge_factor and self.start_loss else math.inf
        bad_mask = ~finite | (window > limit)
        if bool(bad_mask.any()):
            bad = int(bad_mask.nonzero()[0])
            step = self.step - len(losses) + bad + 1
            why = "" if math.isinf(limit) else f" (over {self.diverge_factor:g}x its start, {self.start_loss:.4g})"
            raise DivergedError(
                f"train_loss became {window[bad].item():.4g}{why} at epoch {self.epoch + 1}, step {step}: the run "
                f"diverged. Lower optim.lr (max lr now {self.opt.param_groups[-1]['max_lr']:g}) or add weight decay.")

    def fit(self, epochs: int) -> dict[str, float]:
        """Train for `epochs`, validating after each; returns the last epoch's metrics."""
        self.epochs = epochs
        self.scheduler: Scheduler = self.scheduler_factory(self.opt, epochs * self.steps_per_epoch)
        self._emit("before_fit")
        start = time.perf_counter()
        model, loss_fn = self.model, self.loss_fn
        opt_step = optim.stepper(self.opt)
        params = [p for g in self.opt.param_groups for p in g["params"]]
        # only callbacks that override after_step are called per step
        step_hooks = [cb.after_step for cb in self.callbacks if type(cb).after_step is not Callback.after_step]
        try:
            for self.epoch in range(epochs):
                self.epoch_losses, self.epoch_lrs, self.epoch_moms = [], [], []
                for xb, yb in self._batches():
                    lr, mom = self.scheduler.step(self.step)
                    loss = loss_fn(model(xb), yb)
                    loss.backward()
                    opt_step()
                    for p in params:  # zero_grad(set_to_none=True), without its profiler record
                        p.grad = None
                    self.step += 1
                    self.epoch_losses.append(loss.detach())
                    self.epoch_lrs.append(lr)
                    self.epoch_moms.append(mom)
                    if self.step % CHECK_EVERY == 0:
                        self._check_finite(self.epoch_losses[-CHECK_EVERY:])
                    for hook in step_hooks:
                        hook(self)
                tail = len(self.epoch_losses) % CHECK_EVERY
                if tail:
                    self._check_finite(self.epoch_losses[-tail:])
                train_loss = torch.stack(self.epoch_losses).mean().item()
                self.valid_out = predict(model, self.valid_x)  # kept for the end-of-run tables
                self.metrics = {"train_loss": train_loss, **METRICS[self.loss_name](self.valid_out, self.valid_y)}
                self.train_seconds = time.perf_counter() - start
                self._emit("after_epoch")
        finally:  # after_fit runs even when the fit raises, so callbacks can release what they hold
            self.train_seconds = time.perf_counter() - start
            self._emit("after_fit")
        return self.metrics
