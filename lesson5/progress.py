"""Core: a progress bar per epoch and a line of metrics after each, as a callback of the training loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lesson5.callback import Callback

if TYPE_CHECKING:  # the Learner calls these callbacks; importing it at run time would be a cycle
    from lesson5.learner import Learner


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
