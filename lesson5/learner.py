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

from lesson5.errors import DivergedError
from lesson5 import losses
from lesson5.metrics import evaluate
from lesson5.optim.schedule import Scheduler

CHECK_EVERY = 64  # steps between finiteness checks of the loss (each check syncs with the device)


class Callback:
    """Hooks called by Learner.fit; each receives the learner and reads what it needs from it."""

    def before_fit(self, learn: "Learner") -> None: ...
    def after_step(self, learn: "Learner") -> None: ...
    def after_epoch(self, learn: "Learner") -> None: ...
    def after_fit(self, learn: "Learner") -> None: ...


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
        self.train_seconds = 0.0
        self.diverge_factor = diverge_factor
        self.start_loss: Optional[float] = None  # the first step's loss, the yardstick for divergence

    def _emit(self, event: str) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self)

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
        model, opt, loss_fn, bs = self.model, self.opt, self.loss_fn, self.bs
        n = len(self.train_y)
        for self.epoch in range(epochs):
            perm = torch.randperm(n, generator=self.gen).to(self.device)
            xs, ys = self.train_x[perm], self.train_y[perm]
            self.epoch_losses, self.epoch_lrs, self.epoch_moms = [], [], []
            for i in range(0, n, bs):
                lr, mom = self.scheduler.step(self.step)
                loss = loss_fn(model(xs[i : i + bs]), ys[i : i + bs])
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                self.step += 1
                self.epoch_losses.append(loss.detach())
                self.epoch_lrs.append(lr)
                self.epoch_moms.append(mom)
                if self.step % CHECK_EVERY == 0:
                    self._check_finite(self.epoch_losses[-CHECK_EVERY:])
                self._emit("after_step")
            tail = len(self.epoch_losses) % CHECK_EVERY
            if tail:
                self._check_finite(self.epoch_losses[-tail:])
            train_loss = torch.stack(self.epoch_losses).mean().item()
            self.metrics = {"train_loss": train_loss,
                            **evaluate(model, self.valid_x, self.valid_y, self.loss_name)}
            self.train_seconds = time.perf_counter() - start
            self._emit("after_epoch")
        self.train_seconds = time.perf_counter() - start
        self._emit("after_fit")
        return self.metrics
