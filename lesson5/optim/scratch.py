"""Core: the lesson's optimizers written from their formulas (`optim.impl=scratch`; each `OptimSpec` names its class).

Each is checked against its torch.optim counterpart step by step in tests/test_optim.py. With g the gradient:

  sgd       p <- p - lr * g
  momentum  v <- mom * v + (1 - mom) * g      (a moving average of the gradients, started at the first g)
            p <- p - lr * v
  rmsprop   s <- a * s + (1 - a) * g^2        (a moving average of the squared gradients, from 0)
            p <- p - lr * g / (sqrt(s) + eps)
  adam      m <- b1 * m + (1 - b1) * g ;  s <- b2 * s + (1 - b2) * g^2   (momentum plus RMSprop)
            p <- p - lr * (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + eps)  (bias-corrected: both start at 0)

Weight decay (see lesson5/optim/__init__.py for the convention): `l2` replaces g by g + wd * p before the
update; `decoupled` first shrinks p <- p * (1 - lr * wd).
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from lesson5.config import OptimConf, WdMode


class ScratchOptimizer(Optimizer):
    """Applies weight decay, then `update` for each parameter; param groups carry every hyper-parameter."""

    def __init__(self, param_groups, conf: OptimConf):
        defaults = dict(lr=conf.lr, wd=conf.wd, decoupled=conf.wd_mode is WdMode.decoupled, momentum=conf.momentum,
                        sqr_mom=conf.sqr_mom, eps=conf.eps)
        super().__init__(param_groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd = group["lr"], group["wd"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd and group["decoupled"]:
                    p.mul_(1 - lr * wd)
                elif wd:
                    g = g + wd * p
                self.update(p, g, self.state[p], group)

    def update(self, p, g, state, group) -> None:
        raise NotImplementedError


class SGD(ScratchOptimizer):
    def update(self, p, g, state, group):
        p.sub_(group["lr"] * g)


class Momentum(ScratchOptimizer):
    def update(self, p, g, state, group):
        mom = group["momentum"]
        if "avg" not in state:
            state["avg"] = g.clone()
        else:
            state["avg"].mul_(mom).add_((1 - mom) * g)
        p.sub_(group["lr"] * state["avg"])


class RMSprop(ScratchOptimizer):
    def update(self, p, g, state, group):
        a = group["sqr_mom"]
        sqr = state.setdefault("sqr_avg", torch.zeros_like(p))
        sqr.mul_(a).add_((1 - a) * g * g)
        p.sub_(group["lr"] * g / (sqr.sqrt() + group["eps"]))


class Adam(ScratchOptimizer):
    def update(self, p, g, state, group):
        b1, b2 = group["momentum"], group["sqr_mom"]
        if not state:
            state.update(step=0, avg=torch.zeros_like(p), sqr_avg=torch.zeros_like(p))
        state["step"] += 1
        t = state["step"]
        state["avg"].mul_(b1).add_((1 - b1) * g)
        state["sqr_avg"].mul_(b2).add_((1 - b2) * g * g)
        m_hat = state["avg"] / (1 - b1**t)
        s_hat = state["sqr_avg"] / (1 - b2**t)
        p.sub_(group["lr"] * m_hat / (s_hat.sqrt() + group["eps"]))
