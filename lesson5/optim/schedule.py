"""Learning-rate and momentum schedules, applied to every param group relative to its own max lr.

One-cycle follows fastai v1's `fit_one_cycle` (Smith, "Super-Convergence", arXiv:1708.07120): over the first
`pct_start` of the steps the lr rises from lr/div to lr along a cosine while momentum falls from moms[0] to
moms[1]; over the rest the lr anneals to lr/div_final and momentum climbs back to moms[2]. The defaults
(pct_start 0.3, div 25, div_final 25e4 = div*1e4, moms 0.95/0.85/0.95) are the lesson's fastai v1 values;
fastai v2 uses pct_start 0.25 and div_final 1e5.
"""

from __future__ import annotations

import math
from typing import Optional

from torch.optim import Optimizer

from lesson5.config import ScheduleConf, ScheduleName


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


class Scheduler:
    """Sets each group's lr (and momentum, when the optimizer has one) before every step."""

    def __init__(self, conf: ScheduleConf, opt: Optimizer, total_steps: int, momentum_key: Optional[str]):
        self.conf, self.opt, self.total = conf, opt, max(total_steps, 1)
        self.momentum_key = momentum_key
        self.base_mom = _get_mom(opt.param_groups[0], momentum_key) if momentum_key else None

    def at(self, step: int) -> tuple[float, Optional[float]]:
        """(lr multiplier, momentum) for a global step."""
        if self.conf.name is ScheduleName.constant:
            return 1.0, self.base_mom
        c = self.conf
        mult, mom = one_cycle(step / self.total, pct_start=c.pct_start, div=c.div, div_final=c.div_final, moms=c.moms)
        return mult, (mom if self.momentum_key else None)

    def planned(self) -> list[tuple[float, Optional[float]]]:
        """What step(i) will return for each step i of the fit, without applying anything."""
        top = self.opt.param_groups[-1]["max_lr"]
        return [(top * mult, mom) for mult, mom in map(self.at, range(self.total))]

    def step(self, step: int) -> tuple[float, Optional[float]]:
        """Apply the schedule for `step`; returns the last group's lr and the momentum."""
        mult, mom = self.at(step)
        for g in self.opt.param_groups:
            g["lr"] = g["max_lr"] * mult
            if mom is not None:
                _set_mom(g, self.momentum_key, mom)
        return self.opt.param_groups[-1]["lr"], mom


def _get_mom(group: dict, key: str) -> float:
    return group["betas"][0] if key == "betas" else group[key]


def _set_mom(group: dict, key: str, mom: float) -> None:
    if key == "betas":
        group["betas"] = (mom, group["betas"][1])
    else:
        group[key] = mom
        if group.get("dampening"):  # keep SGD's momentum a moving average: v = mom*v + (1-mom)*g
            group["dampening"] = mom
