"""Optimizers by name (`optim.name`), from torch or written from the lesson's formulas (`optim.impl`).

Weight decay convention (`optim.wd`, as in torch and fastai): `l2` adds wd*w to the gradient, i.e. it adds
(wd/2)*sum(w**2) to the loss -- the lesson's `update()` adds wd*sum(w**2), which is our l2 with 2*wd.
`decoupled` shrinks the weights directly, w <- w * (1 - lr*wd), outside the gradient statistics
(Loshchilov & Hutter, arXiv:1711.05101). For plain SGD the two are the same update; for Adam they differ.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.optim import Optimizer

from lesson5.config import Impl, OptimConf, OptimName, WdMode


def momentum_key(conf: OptimConf) -> Optional[str]:
    """The param-group key a momentum schedule moves, or None for optimizers without momentum."""
    if conf.impl is Impl.scratch:  # scratch optimizers keep every coefficient under its config name
        return "momentum" if conf.name in (OptimName.adam, OptimName.momentum) else None
    return {OptimName.adam: "betas", OptimName.momentum: "momentum"}.get(conf.name)


def build(conf: OptimConf, groups: Sequence[Sequence[nn.Parameter]], lrs: Sequence[float]) -> Optimizer:
    """An optimizer over layer groups, each with its own max lr (kept as `max_lr` for the schedule)."""
    param_groups = [{"params": list(g), "lr": lr, "max_lr": lr} for g, lr in zip(groups, lrs)]
    if conf.impl is Impl.scratch:
        from lesson5.optim import scratch

        return scratch.build(conf, param_groups)
    decoupled = conf.wd_mode is WdMode.decoupled
    wd = conf.wd
    if conf.name is OptimName.adam:
        cls = torch.optim.AdamW if decoupled else torch.optim.Adam
        # fused: one kernel for all tensors; ~3x less optimizer time per small step than foreach on CPU.
        return cls(param_groups, lr=lrs[-1], betas=(conf.momentum, conf.sqr_mom), eps=conf.eps, weight_decay=wd,
                   fused=_fusable(param_groups))
    if conf.name is OptimName.rmsprop:
        opt = torch.optim.RMSprop(param_groups, lr=lrs[-1], alpha=conf.sqr_mom, eps=conf.eps,
                                  weight_decay=0.0 if decoupled else wd)
    else:
        mom = conf.momentum if conf.name is OptimName.momentum else 0.0
        # dampening=mom makes torch's buffer the lesson's moving average v = mom*v + (1-mom)*g, started at the
        # first gradient (like pandas' ewm(adjust=False)), rather than fastai's undamped v = mom*v + g.
        opt = torch.optim.SGD(param_groups, lr=lrs[-1], momentum=mom, dampening=mom,
                              weight_decay=0.0 if decoupled else wd, fused=_fusable(param_groups))
    return DecoupledDecay(opt, wd) if decoupled and wd else opt


def _fusable(param_groups) -> bool:
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in param_groups for p in g["params"])


def stepper(opt) -> Callable[[], None]:
    """`opt.step()` for a training loop: the optimizer's own step, without the wrapper torch.optim puts around it.

    That wrapper (a profiler record, global and per-optimizer hook dispatch, a grad-mode switch, a dynamo graph
    break) costs ~50-80 us per call on CPU, a sixth of the lesson's collab step. lesson5 registers no optimizer
    hooks, so the loop calls the undecorated method under no_grad. Should torch stop exposing it through
    `__wrapped__`, `inspect.unwrap` returns the full step and only the speed changes.
    """
    if isinstance(opt, DecoupledDecay):
        inner = stepper(opt.opt)

        def step() -> None:
            opt.decay()
            inner()

        return step
    raw = inspect.unwrap(type(opt).step)

    def step() -> None:
        with torch.no_grad():
            raw(opt)

    return step


class DecoupledDecay:
    """Wraps a torch optimizer so weights shrink by lr*wd before each step (torch has this only as AdamW)."""

    def __init__(self, opt: Optimizer, wd: float):
        self.opt, self.wd = opt, wd

    @torch.no_grad()
    def decay(self) -> None:
        for g in self.opt.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if params:
                torch._foreach_mul_(params, 1 - g["lr"] * self.wd)

    def step(self):
        self.decay()
        return self.opt.step()

    def __getattr__(self, name):  # param_groups, zero_grad, state_dict ... come from the wrapped optimizer
        return getattr(self.opt, name)
