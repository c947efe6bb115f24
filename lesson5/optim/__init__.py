"""Core: optimizers by name (`optim.name`), from torch or written from the lesson's formulas (`optim.impl`).

Each is declared once in lesson5.config (`OptimSpec`), naming its builder here and its scratch class.

Weight decay convention (`optim.wd`, as in torch and fastai): `l2` adds wd*w to the gradient, i.e. it adds
(wd/2)*sum(w**2) to the loss -- the lesson's `update()` adds wd*sum(w**2), which is our l2 with 2*wd.
`decoupled` shrinks the weights directly, w <- w * (1 - lr*wd), outside the gradient statistics
(Loshchilov & Hutter, arXiv:1711.05101). For plain SGD the two are the same update; for Adam they differ.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import nn
from torch.optim import Optimizer

from lesson5.components import optim_spec
from lesson5.config import Impl, OptimConf, WdMode


def momentum_key(conf: OptimConf) -> Optional[str]:
    """The param-group key a momentum schedule moves, or None for optimizers without momentum."""
    key = optim_spec(conf.name).momentum
    # scratch optimizers keep every coefficient under its config name
    return ("momentum" if key else None) if conf.impl is Impl.scratch else key


def build(conf: OptimConf, groups: Sequence[Sequence[nn.Parameter]], lrs: Sequence[float]) -> Optimizer:
    """An optimizer over layer groups, each with its own max lr (kept as `max_lr` for the schedule)."""
    param_groups = [{"params": list(g), "lr": lr, "max_lr": lr} for g, lr in zip(groups, lrs)]
    spec = optim_spec(conf.name)  # its builder here, or its scratch class: both take (param_groups, conf)
    return spec.builder(spec.scratch if conf.impl is Impl.scratch else None)(param_groups, conf)


def adam(param_groups: list[dict], conf: OptimConf) -> Optimizer:
    """torch's Adam, or AdamW for decoupled weight decay."""
    cls = torch.optim.AdamW if conf.wd_mode is WdMode.decoupled else torch.optim.Adam
    # fused: one kernel for all tensors, much less optimizer time per small step than foreach on the CPU.
    return cls(param_groups, lr=param_groups[-1]["lr"], betas=(conf.momentum, conf.sqr_mom), eps=conf.eps,
               weight_decay=conf.wd, fused=_fusable(param_groups))


def rmsprop(param_groups: list[dict], conf: OptimConf) -> Optimizer:
    """torch's RMSprop (its alpha is our sqr_mom)."""
    return _decayed(torch.optim.RMSprop, param_groups, conf, alpha=conf.sqr_mom, eps=conf.eps)


def sgd(param_groups: list[dict], conf: OptimConf) -> Optimizer:
    """torch's SGD, with the lesson's momentum for an optimizer declared to use it (optim=momentum)."""
    mom = conf.momentum if "momentum" in optim_spec(conf.name).uses else 0.0
    # dampening=mom makes torch's buffer the lesson's moving average v = mom*v + (1-mom)*g, started at the
    # first gradient (like pandas' ewm(adjust=False)), rather than fastai's undamped v = mom*v + g.
    return _decayed(torch.optim.SGD, param_groups, conf, momentum=mom, dampening=mom, fused=_fusable(param_groups))


def _decayed(cls, param_groups: list[dict], conf: OptimConf, **kwargs) -> Optimizer:
    """`cls` with L2 weight decay, or wrapped in DecoupledDecay for decoupled."""
    decoupled = conf.wd_mode is WdMode.decoupled
    opt = cls(param_groups, lr=param_groups[-1]["lr"], weight_decay=0.0 if decoupled else conf.wd, **kwargs)
    return DecoupledDecay(opt, conf.wd) if decoupled and conf.wd else opt


def _fusable(param_groups) -> bool:
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in param_groups for p in g["params"])


def stepper(opt) -> Callable[[], None]:
    """`opt.step()` for a training loop: the same update, without the Python that torch.optim puts around it.

    torch's per-call wrapper (a profiler record, global and per-optimizer hook dispatch, a grad-mode switch, a
    dynamo graph break) costs ~50-80 us per call on CPU, a sixth of the lesson's collab step: lesson5 registers no
    optimizer hooks, so the loop calls the undecorated method under no_grad. Should torch stop exposing it
    through `__wrapped__`, `inspect.unwrap` returns the full step and only the speed changes. Fused Adam(W) on the
    CPU, under a tested torch release, goes one step further (`_fused_adam_kernel`). Both are bit-identical to
    `opt.step()` (tests/test_optim.py).
    """
    if hasattr(opt, "parts"):  # a stack's optimizers (lesson5.stack.StackOptimizer), one per member
        return opt.stepper(stepper)
    if isinstance(opt, DecoupledDecay):
        inner = stepper(opt.opt)

        def step() -> None:
            opt.decay()
            inner()

        return step
    raw = inspect.unwrap(type(opt).step)
    fused = _fused_adam_kernel(opt)

    def step() -> None:
        with torch.no_grad():
            if fused is None or not fused():
                raw(opt)

    return step


# torch releases the direct fused-Adam call was checked against, bit for bit
# (tests/test_optim.py::test_direct_fused_adam_step_is_torchs_step). It repeats what torch.optim.adam._fused_adam
# does around the private op, so any other release takes Adam.step: same numbers, ~7% slower collab fit.
FUSED_ADAM_TORCH = {"2.14.1"}


def _fused_adam_kernel(opt, torch_version: str = torch.__version__) -> Optional[Callable[[], bool]]:
    """For fused Adam(W) on the CPU under a tested torch, a step that calls torch's fused kernel as `Adam.step`
    itself does.

    Why: `Adam.step` rebuilds its per-tensor lists and groups them by device on every call: ~40 us of Python per
    collab step (111 us against 71 us), 7% of the lesson's 2.6 s fit. This does only what
    `torch.optim.adam._fused_adam` does with them: add 1 to each step count and call the private
    `torch._fused_adam(w)_` with the group's hyperparameters. It returns False, and the caller runs `Adam.step`,
    whenever that does more: on the first step of a parameter (its state is created there), or with tensor
    hyperparameters. Anything else torch's fused step supports (amsgrad, maximize, capturable, GradScaler's
    inputs), other devices and untested torch releases (`FUSED_ADAM_TORCH`) keep torch's step throughout.
    """
    if torch_version.split("+")[0] not in FUSED_ADAM_TORCH:
        return None
    kernels = getattr(torch, "_fused_adam_", None), getattr(torch, "_fused_adamw_", None)
    groups = opt.param_groups
    if (not isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)) or None in kernels
            or any(not g.get("fused") or g["amsgrad"] or g["maximize"] or g.get("capturable")
                   or g.get("differentiable") for g in groups)
            or any(p.device.type != "cpu" for g in groups for p in g["params"])):
        return None
    state = opt.state

    def step() -> bool:
        work = []
        for g in groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            states = [state.get(p) for p in params]
            if not all(states) or any(torch.is_tensor(v) for v in (g["lr"], *g["betas"])):
                return False
            work.append((g, params, states))
        for g, params, states in work:
            steps = [s["step"] for s in states]
            for t in steps:
                t.add_(1)
            decoupled = g.get("decoupled_weight_decay", isinstance(opt, torch.optim.AdamW))
            kernels[decoupled](params, [p.grad for p in params], [s["exp_avg"] for s in states],
                               [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False, lr=g["lr"],
                               beta1=g["betas"][0], beta2=g["betas"][1], weight_decay=g["weight_decay"],
                               eps=g["eps"], maximize=False)
        return True

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
