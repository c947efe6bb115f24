"""Services: an ensemble, `trainer.ensemble=K`: K seeds of one recipe trained as one stack (lesson5.stack) in one
run, through `run()`'s one training path, predicting the mean of its members.

Member k is the recipe at seed `trainer.seed + k` (mod 2**32): member 0 is the run of K=1, and each member, with its
own initialisation and batch order, reaches the per-epoch metrics of its seed trained alone (the stack's promise).
The fold's Learner is a stack's, seen through `Ensembled`, which shows `_run`, its callbacks and `log_fit` one
model's Learner: the run's usual keys (valid_rmse, valid_loss, ...) are the ensemble's, on the mean prediction,
`train_loss` is the members' mean (each member, not the mean, is what trains), and member k's own epoch metrics go
under `member<k>/<key>`, as a stage's go under `<stage>/<key>`. A member that diverges fails the run: an ensemble
short of a member is not the recipe asked for. After the fit its model is a `lesson5.models.ensemble.Ensemble`.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from lesson5 import optim, stack
from lesson5.callback import Callback, Wrapper
from lesson5.config import Config
from lesson5.data import Data, Fold
from lesson5.learner import Learner, progress_bars
from lesson5.metrics import METRICS
from lesson5.models.ensemble import Ensemble, mean_prediction
from lesson5.recorder import Recorder


def member_confs(conf: Config) -> list[Config]:
    """The K members' configs: the recipe at seeds trainer.seed, seed+1, ... (mod 2**32)."""
    return [dataclasses.replace(conf, trainer=dataclasses.replace(conf.trainer, seed=(conf.trainer.seed + k) % 2**32))
            for k in range(conf.trainer.ensemble)]


def member_key(k: int, key: str) -> str:
    return f"member{k}/{key}"


class Ensembled:
    """A stack's Learner seen as one model's: what `_run`, its callbacks and `TrackedRun.log_fit` read."""

    def __init__(self, learn: Learner, recorder: Recorder):
        self._learn, self.recorder, self.stages = learn, recorder, []

    def __getattr__(self, name):  # epoch, epochs, step, train, epoch_losses, train_seconds, loss_name, ...: shared
        return getattr(self._learn, name)

    @property
    def valid_out(self) -> Optional[Tensor]:
        out = self._learn.valid_out
        return None if out is None else mean_prediction(out, self._learn.loss_name)

    @property
    def valid_y(self) -> Optional[Tensor]:
        y = self._learn.valid_y
        return None if y is None else y[0]

    @property
    def metrics(self) -> dict[str, float]:
        """The ensemble's metrics on its mean prediction, the members' mean train_loss, and each member's own."""
        each = self._learn.metrics
        if not each:
            return {}
        own = {member_key(k, key): v for key, values in each.items() for k, v in enumerate(values)}
        return {"train_loss": statistics.fmean(each["train_loss"]),
                **METRICS[self._learn.loss_name](self.valid_out, self.valid_y), **own}

    @property
    def loss(self) -> Optional[Tensor]:
        loss = self._learn.loss
        return None if loss is None else loss.mean()

    @property
    def opt(self):
        return self._learn.opt.parts[0]  # the members share the recipe: its lr and momentum are each one's

    def add(self, cb: Callback) -> None:
        self._learn.add(ForEnsemble(cb, self))

    def fit_stages(self, conf: Config, device: torch.device) -> list:
        """One fit of trainer.epochs (an ensemble has no stages: validate refuses them); then `model` is the
        Ensemble of the members, and a member's divergence is the run's error."""
        self._learn.fit(conf.trainer.epochs)
        raise_out(self._learn)
        self.model: nn.Module = Ensemble([self._learn.model.member(k) for k in range(self._learn.model.members)])
        return []


def raise_out(learn: Learner) -> None:
    """The error of the first member out of the stack (diverged), if one is."""
    if learn.out:
        raise learn.out[min(learn.out)]


class ForEnsemble(Wrapper):
    """Runs callback `cb` with the stack's Learner seen as the ensemble's, and stops the fit with a member's error
    as soon as one is out."""

    def __init__(self, cb: Callback, view: Ensembled):
        super().__init__(cb)
        self.view = view

    def _call(self, event: str, learn: Learner) -> None:
        if event != "after_fit":
            raise_out(learn)
        getattr(self.cb, event)(self.view)


    def after_fit(self, learn):
        self._call("after_fit", learn)


def learner(confs: Sequence[Config], data: Data, fold: Fold, members: Sequence[nn.Module], device: torch.device,
            callbacks: Sequence[Callback] = ()) -> Ensembled:
    """The fold's Learner of an ensemble: `members` (built and seeded by `confs`, `member_confs`) as one stack, its
    recorder, `callbacks` and progress bar seeing the ensemble."""
    conf = confs[0]
    learn = Ensembled(stack.learner(confs, fold, members, device), Recorder(optim.momentum_key(conf.optim)))
    for cb in (learn.recorder, *callbacks, *progress_bars(conf, data, fold)):
        learn.add(cb)
    return learn
