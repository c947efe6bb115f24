"""Callbacks of the training loop: the recorder of per-step values, tracking to MLflow, and a progress bar."""

from __future__ import annotations

from typing import Optional

import torch

from lesson5.learner import Callback, Learner
from lesson5.optim.schedule import get_momentum
from lesson5.tracking import Tracker


class Recorder(Callback):
    """Every step's global step, train loss, lr (the last group's) and momentum, across all fits of a Learner.

    Losses arrive as 0-d tensors and are turned into floats in chunks (one device sync per chunk).
    """

    order = 20  # after the schedule has set the step's lr

    def __init__(self, momentum_key: Optional[str], chunk: int = 256):
        self.momentum_key, self.chunk = momentum_key, chunk
        self.steps: list[int] = []
        self.lrs: list[float] = []
        self.moms: list[Optional[float]] = []
        self.losses: list[float] = []
        self._pending: list[torch.Tensor] = []

    def after_step(self, learn: Learner) -> None:
        g = learn.opt.param_groups[-1]
        self.steps.append(learn.step)
        self.lrs.append(g["lr"])
        self.moms.append(get_momentum(g, self.momentum_key) if self.momentum_key else None)
        self._pending.append(learn.loss)
        if len(self._pending) >= self.chunk:
            self.settle()

    def settle(self) -> int:
        """Turn the pending losses into floats; returns how many steps are recorded whole."""
        if self._pending:
            self.losses += torch.stack(self._pending).tolist()
            self._pending = []
        # a fit interrupted inside after_step can leave the lists one apart: count the steps all of them hold
        return min(len(self.steps), len(self.lrs), len(self.moms), len(self.losses))

    def after_epoch(self, learn: Learner) -> None:
        self.settle()

    def after_fit(self, learn: Learner) -> None:
        self.settle()


class TrackMetrics(Callback):
    """Sends the recorder's values at every `every`-th global step and at each epoch's and fit's last step, in
    chunks of about `flush_every` steps, and the epoch metrics at each epoch's last step. A fit that stops
    partway (diverged, interrupted, pruned) still sends its steps up to there."""

    order = 30  # after the recorder

    def __init__(self, tracker: Tracker, rid: int, recorder: Recorder, every: int = 10, flush_every: int = 256):
        self.tracker, self.rid, self.rec = tracker, rid, recorder
        self.every, self.flush_every = every, flush_every
        self.sent = 0  # recorder entries already looked at

    def _flush(self, last: bool) -> None:
        """Send the unsent steps that fall on the `every` grid; with `last`, the latest recorded step too."""
        n = self.rec.settle()
        rec, rows = self.rec, []
        for i in range(self.sent, n):
            s = rec.steps[i]
            if s % self.every == 0 or (last and i == n - 1):
                rows += [("train_loss_step", rec.losses[i], s), ("lr", rec.lrs[i], s)]
                if rec.moms[i] is not None:
                    rows.append(("momentum", rec.moms[i], s))
        if rows:
            self.tracker.log_metrics(self.rid, rows)
        self.sent = n

    def after_step(self, learn: Learner) -> None:
        if len(self.rec.steps) - self.sent >= self.flush_every:
            self._flush(last=False)

    def after_epoch(self, learn: Learner) -> None:
        self._flush(last=True)
        rows = [(k, v, learn.step) for k, v in learn.metrics.items()] + [("epoch", learn.epoch + 1, learn.step)]
        self.tracker.log_metrics(self.rid, rows)
        self.tracker.check()

    def after_fit(self, learn: Learner) -> None:
        self._flush(last=True)  # nothing left after a whole fit; a stopped one sends its steps up to the stop


class ProgressBar(Callback):
    """A rich progress bar per epoch and a line of metrics after each."""

    UPDATE_EVERY = 32  # steps between bar refreshes; each costs a lock and some formatting
    order = 90

    def __init__(self, label: str = ""):
        from rich.console import Console

        self.console, self.label = Console(stderr=True), label

    def before_fit(self, learn: Learner) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=self.console, transient=True,
                                 disable=not self.console.is_terminal)
        self.progress.start()

    def before_epoch(self, learn: Learner) -> None:
        self.task = self.progress.add_task(f"{self.label}epoch {learn.epoch + 1}/{learn.epochs}",
                                           total=len(learn.train))

    def after_step(self, learn: Learner) -> None:
        done = len(learn.epoch_losses)
        if done % self.UPDATE_EVERY == 0:
            self.progress.update(self.task, completed=done)

    def after_epoch(self, learn: Learner) -> None:
        self.progress.remove_task(self.task)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in learn.metrics.items())
        self.console.print(f"{self.label}epoch {learn.epoch + 1}/{learn.epochs}  {shown}  "
                           f"[{learn.train_seconds:.1f}s]", highlight=False)

    def after_fit(self, learn: Learner) -> None:
        self.progress.stop()
