"""Callbacks of the training loop: tracking to MLflow (through the writer) and a progress bar."""

from __future__ import annotations

import torch

from lesson5.learner import Callback, Learner
from lesson5.tracking import Tracker


PLAN_MAX_STEPS = 20_000  # beyond, sending the plan costs the trainer more than the ~0.08 s it saves at the end


class TrackMetrics(Callback):
    """Sends per-step train loss, lr and momentum in chunks, and the epoch metrics at each epoch's last step;
    a fit that stops mid-epoch (diverged, interrupted) still sends its steps up to there."""

    def __init__(self, tracker: Tracker, rid: int, flush_every: int = 256):
        self.tracker, self.rid, self.flush_every = tracker, rid, flush_every
        self.epoch = self.sent = 0  # how many steps of this epoch have been sent

    def _flush(self, learn: Learner) -> None:
        if learn.epoch != self.epoch:  # the learner's per-step lists are a new epoch's
            self.epoch, self.sent = learn.epoch, 0
        # A fit interrupted between the loop's appends leaves the lists one apart: send the steps all three hold.
        k = min(len(learn.epoch_losses), len(learn.epoch_lrs), len(learn.epoch_moms))
        if k <= self.sent:
            return
        losses = torch.stack(learn.epoch_losses[self.sent : k]).tolist()
        first = learn.epoch * learn.steps_per_epoch + self.sent + 1  # global step of the first unsent (from 1)
        rows = []
        for j, loss in enumerate(losses):
            s, i = first + j, self.sent + j
            rows += [("train_loss_step", loss, s), ("lr", learn.epoch_lrs[i], s)]
            if learn.epoch_moms[i] is not None:
                rows.append(("momentum", learn.epoch_moms[i], s))
        self.tracker.log_metrics(self.rid, rows)
        self.sent = k

    def before_fit(self, learn: Learner) -> None:
        self.epoch = self.sent = 0
        if learn.scheduler.total <= PLAN_MAX_STEPS:
            self._plan(learn)

    def _plan(self, learn: Learner) -> None:
        """The schedule is known before the first step: the writer draws it while the fit runs."""
        rows = []
        for step, (lr, mom) in enumerate(learn.scheduler.planned(), start=1):
            rows.append(("lr", lr, step))
            if mom is not None:
                rows.append(("momentum", mom, step))
        self.tracker.plan(self.rid, rows)

    def after_step(self, learn: Learner) -> None:
        if len(learn.epoch_losses) - (self.sent if learn.epoch == self.epoch else 0) >= self.flush_every:
            self._flush(learn)

    def after_epoch(self, learn: Learner) -> None:
        self._flush(learn)
        rows = [(k, v, learn.step) for k, v in learn.metrics.items()] + [("epoch", learn.epoch + 1, learn.step)]
        self.tracker.log_metrics(self.rid, rows)
        self.tracker.check()

    def after_fit(self, learn: Learner) -> None:
        self._flush(learn)  # nothing left after a whole fit


class ProgressBar(Callback):
    """A rich progress bar per epoch and a line of metrics after each."""

    UPDATE_EVERY = 32  # steps between bar refreshes; each costs a lock and some formatting

    def __init__(self, label: str = ""):
        from rich.console import Console

        self.console, self.label = Console(stderr=True), label

    def before_fit(self, learn: Learner) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=self.console, transient=True,
                                 disable=not self.console.is_terminal)
        self.progress.start()
        self.task = None

    def after_step(self, learn: Learner) -> None:
        if self.task is None:
            self.task = self.progress.add_task(f"{self.label}epoch {learn.epoch + 1}/{learn.epochs}",
                                               total=learn.steps_per_epoch)
        done = len(learn.epoch_losses)
        if done % self.UPDATE_EVERY == 0:
            self.progress.update(self.task, completed=done)

    def after_epoch(self, learn: Learner) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        shown = "  ".join(f"{k} {v:.4f}" for k, v in learn.metrics.items())
        self.console.print(f"{self.label}epoch {learn.epoch + 1}/{learn.epochs}  {shown}  "
                           f"[{learn.train_seconds:.1f}s]", highlight=False)

    def after_fit(self, learn: Learner) -> None:
        self.progress.stop()
