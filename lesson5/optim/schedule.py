"""Core: learning-rate and momentum schedules: a callback that sets every param group's lr, relative to its own max lr,
before each step of a fit. Each fit (stage) runs its own schedule over its own steps.

One-cycle follows fastai v1's `fit_one_cycle` (Smith, "Super-Convergence", arXiv:1708.07120): over the first
`pct_start` of the steps the lr rises from lr/div to lr along a cosine while momentum falls from moms[0] to
moms[1]; over the rest the lr anneals to lr/div_final and momentum climbs back to moms[2]. The defaults
(pct_start 0.3, div 25, div_final 25e4 = div*1e4, moms 0.95/0.85/0.95) are the lesson's fastai v1 values;
fastai v2 uses pct_start 0.25 and div_final 1e5.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

from lesson5.callback import Callback
from lesson5.config import ScheduleConf, ScheduleName

if TYPE_CHECKING:  # the Learner calls these callbacks; importing it at run time would be a cycle
    from lesson5.learner import Learner


def cos_anneal(start: float, end: float, pct: float) -> float:
    """Cosine from start (pct=0) to end (pct=1)."""
    return end + (start - end) / 2 * (1 + math.cos(math.pi * pct))


def one_cycle(pos: float, *, pct_start: float, div: float, div_final: float, moms) -> tuple[float, float]:
    """(lr as a fraction of the max lr, momentum) at position pos in [0, 1] of the fit."""
    if pos < pct_start:
        p = pos / pct_start
        return cos_anneal(1 / div, 1.0, p), cos_anneal(moms[0], moms[1], p)
    p = (pos - pct_start) / (1 - pct_start)
    return cos_anneal(1.0, 1 / div_final, p), cos_anneal(moms[1], moms[2], p)


def get_momentum(group: dict, key: str) -> float:
    """A param group's momentum under `key` (`betas` holds Adam's as its first element)."""
    return group["betas"][0] if key == "betas" else group[key]


def _set_momentum(group: dict, key: str, mom: float) -> None:
    if key == "betas":
        group["betas"] = (mom, group["betas"][1])
    else:
        group[key] = mom
        if group.get("dampening"):  # keep SGD's momentum a moving average: v = mom*v + (1-mom)*g
            group["dampening"] = mom


class ParamScheduler(Callback):
    """Sets each group's lr (and the momentum, when the optimizer has one) before every step of a fit.

    `momentum_key` is the param-group key the momentum lives under (`optim.momentum_key`), None for none.
    """

    order = 10  # before anything that reads the lr of a step

    def __init__(self, conf: ScheduleConf, momentum_key: Optional[str]):
        self.conf, self.momentum_key, self.total = conf, momentum_key, 1

    def at(self, fit_step: int) -> tuple[float, Optional[float]]:
        """(lr multiplier, momentum or None to leave it) for a step of the current fit."""
        if self.conf.name is ScheduleName.constant:
            return 1.0, None
        c = self.conf
        mult, mom = one_cycle(fit_step / self.total, pct_start=c.pct_start, div=c.div, div_final=c.div_final,
                              moms=c.moms)
        return mult, (mom if self.momentum_key else None)

    def before_fit(self, learn: Learner) -> None:
        self.total = max(learn.total_steps, 1)

    def before_batch(self, learn: Learner) -> None:
        mult, mom = self.at(learn.fit_step)
        for g in learn.opt.param_groups:
            g["lr"] = g["max_lr"] * mult
            if mom is not None:
                _set_momentum(g, self.momentum_key, mom)
