"""Core: the Recorder, a callback that keeps every step's global step, train loss, lr and momentum across the
fits of a Learner; the plots and the tracking callback read it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from lesson5.callback import Callback
from lesson5.optim.schedule import get_momentum

if TYPE_CHECKING:  # the Learner calls these callbacks; importing it at run time would be a cycle
    from lesson5.learner import Learner


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
