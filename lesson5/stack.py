"""Core: stacked trials, K models of one shape trained as one, their parameters carrying a leading member dimension.

A lesson-recipe step is some 45 tiny kernels on a model of 107k parameters: kernel launches and Python dispatch
cost more than the arithmetic, so K trials that differ only in numbers (seed, lr, wd, momentum, betas, eps,
y_range) pay that overhead once when run as one fit. The Learner trains a stack with its one loop; what differs is
carried by the parts:

- `Stacked`: one leaf per parameter, [K, ...]; each member's parameters are views of its slice. A batch is
  [K, bs, ...], an output [K, bs, ...], and the loss one value per member (their sum is differentiated);
- `StackedBatches`: each member's own batch order, from its own seed (the order of the trial run alone);
- `StackOptimizer`: each member's own optimizer, built as its trial alone builds it, stepped with its slice of
  the gradient, so its hyperparameters (lr, wd, momentum, ...) and its update are the trial's own;
- `ForMember`: a callback of one member (its recorder, its tracking, its pruning) sees that member alone through a
  `MemberView`; when it raises (pruned), or the member's loss diverges, that member is out of the stack: its
  callbacks stop and its error is kept for its trial, while the others go on.

A member reaches the per-epoch metrics of the same trial run alone (tests/test_stack.py; equal in practice, the
forward of each member rounding as its own would).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.utils.data import Dataset

from lesson5 import losses, optim
from lesson5.callback import Callback, CancelFit, Wrapper
from lesson5.config import Config
from lesson5.data import Fold
from lesson5.data.batches import PERMUTE_MAX_BYTES, TensorBatches, batches
from lesson5.learner import Learner
from lesson5.optim.schedule import ParamScheduler
from lesson5.recorder import Recorder

# Hyperparameters a stack's members may differ in (as sweep overrides): everything else of theirs must be equal.
# (Dropout's rate is a module's attribute, not a tensor: members that differ in it go in separate stacks.)
MEMBER_KEYS = ("trainer.seed", "optim.lr", "optim.wd", "optim.momentum", "optim.sqr_mom", "optim.eps",
               "model.y_range")


def stack_key(overrides: Sequence[str]) -> tuple[str, ...]:
    """What members of one stack share: a trial's overrides without those MEMBER_KEYS set."""
    def shared(o: str) -> bool:
        key, _, value = o.partition("=")
        return key.lstrip("+") not in MEMBER_KEYS or value in ("null", "None")  # no y_range: another forward
    return tuple(sorted(o for o in overrides if shared(o)))


class Stacked(nn.Module):
    """K models of one architecture as one module: `forward(x)` maps [K, bs, ...] to [K, bs, ...].

    Each parameter is one tensor with a leading member dimension (`stacked`), the leaf autograd differentiates;
    the members keep the models their trials would train alone, their parameters now views of member k's slice,
    so each member's own optimizer (StackOptimizer) updates the stack in place, with its slice of the gradient.
    A forward runs every member at once: through the model's own `forward_stack(weights, x, **kwargs)` when it has
    one (a batched gather), else through `vmap` of `functional_call`. What a member differs in besides its
    parameters (collab's `y_range`), its model gives as forward keyword tensors, `member_kwargs()`.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if any(True for m in members for _ in m.buffers()):
            raise ValueError(f"{type(members[0]).__name__} has buffers (batch norm): its trials do not stack")
        self.members, self.loss = len(members), members[0].loss
        self._models = list(members)  # a list: their parameters are views of this module's, not more of them
        self._names = [n for n, _ in members[0].named_parameters()]
        self.stacked = nn.ParameterList()
        for n in self._names:
            w = nn.Parameter(torch.stack([m.get_parameter(n).detach() for m in members]))
            self.stacked.append(w)
            for k, m in enumerate(members):  # member k's parameter becomes a view of its slice
                module, _, attr = n.rpartition(".")
                setattr(m.get_submodule(module), attr, nn.Parameter(w.data[k]))
        kwargs = [m.member_kwargs() if hasattr(m, "member_kwargs") else {} for m in members]
        self._kwargs = {n: torch.stack([kw[n] for kw in kwargs]) for n in kwargs[0]}

    def train(self, mode: bool = True) -> Stacked:
        super().train(mode)
        for m in self._models:  # forward_stack runs the template's own dropout and activations
            m.train(mode)
        return self

    def forward(self, x: Tensor) -> Tensor:
        template = self._models[0]
        weights = dict(zip(self._names, self.stacked))
        kwargs = {n: v.to(x.device) for n, v in self._kwargs.items()}
        if hasattr(template, "forward_stack"):
            return template.forward_stack(weights, x, **kwargs)
        return vmap(lambda w, kw, xb: functional_call(template, w, (xb,), kw), randomness="different")(
            weights, kwargs, x)

    def share_grads(self) -> None:
        """After a backward: each member's parameter gets its slice of the stack's gradient (a view, no copy)."""
        for n, w in zip(self._names, self.stacked):
            for k, m in enumerate(self._models):
                m.get_parameter(n).grad = None if w.grad is None else w.grad[k]
            w.grad = None

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(self.stacked)]

    def member(self, k: int) -> nn.Module:
        """Member k as its trial alone would leave it, after the fit: its parameters copied out of the stack."""
        m = self._models[k]
        for n in self._names:
            p = m.get_parameter(n)
            p.data = p.data.clone()
        return m


class StackOptimizer:
    """The members' own optimizers, each built as its trial alone builds it (so a member's updates are the same
    numbers), stepped together; `param_groups` holds all their groups for the schedule."""

    def __init__(self, parts: Sequence, model: Stacked):
        self.parts, self.model = list(parts), model
        self.param_groups = [g for opt in self.parts for g in opt.param_groups]

    def stepper(self, make: Callable) -> Callable[[], None]:
        """One step of every member (`make(opt)`: lesson5.optim.stepper), each with its slice of the gradient."""
        steps = [make(part) for part in self.parts]

        def step() -> None:
            self.model.share_grads()
            for member_step in steps:
                member_step()

        return step


class StackedBatches:
    """A fold part's batches for K members: [K, bs, ...], each member in its own order (its own generator); in order
    (validation), the same batch expanded to every member at no copy."""

    def __init__(self, source: TensorBatches, members: int):
        self.source, self.members = source, members

    def __len__(self) -> int:
        return len(self.source)

    def epoch(self, gens: Optional[Sequence[torch.Generator]] = None) -> Iterator[tuple[Tensor, Tensor]]:
        s, k = self.source, self.members
        if gens is None:
            for xb, yb in s.epoch(None):
                yield xb.expand(k, *xb.shape), yb.expand(k, *yb.shape)
            return
        # each member's order is the randperm of the same trial alone (TensorBatches.epoch)
        idx = torch.stack([torch.randperm(len(s.y), generator=g) for g in gens]).to(s.device)
        if k * (s.x.nbytes + s.y.nbytes) <= PERMUTE_MAX_BYTES:
            yield from zip(s.x[idx].split(s.bs, dim=1), s.y[idx].split(s.bs, dim=1))
        else:
            for i in idx.split(s.bs, dim=1):
                yield s.x[i], s.y[i]


class MemberView:
    """What a callback reads of a Learner, for one member of its stack."""

    def __init__(self, learn: Learner, k: int):
        self._learn, self.k = learn, k

    def __getattr__(self, name):  # epoch, epochs, step, fit_step, total_steps, loss_name, ...: shared
        return getattr(self._learn, name)

    @property
    def metrics(self) -> dict[str, float]:
        return {key: v[self.k] for key, v in self._learn.metrics.items()}

    @property
    def loss(self) -> Optional[Tensor]:
        return None if self._learn.loss is None else self._learn.loss[self.k]

    @property
    def valid_out(self) -> Tensor:
        return self._learn.valid_out[self.k]

    @property
    def valid_y(self) -> Tensor:
        return self._learn.valid_y[self.k]

    @property
    def train_seconds(self) -> float:
        """The stack's training time shared among its members: what this trial cost."""
        return self._learn.train_seconds / self._learn.model.members

    @property
    def model(self) -> nn.Module:
        return self._learn.model.member(self.k)

    @property
    def opt(self):
        return self._learn.opt.parts[self.k]


class ForMember(Wrapper):
    """Runs callback `cb` for member `k` of a stack only, while that member is in; whatever `cb` raises (pruned, a
    lost tracking store) puts the member out with that error, and the fit stops once every member is out."""

    def __init__(self, cb: Callback, k: int):
        super().__init__(cb)
        self.k = k

    def _call(self, event: str, learn: Learner) -> None:
        if self.k in learn.out and event != "after_fit":
            return
        try:
            getattr(self.cb, event)(MemberView(learn, self.k))
        except Exception as e:  # noqa: BLE001 - the member's error, for its trial; KeyboardInterrupt stops all
            learn.out.setdefault(self.k, e)
            if len(learn.out) == learn.model.members and event != "after_fit":
                raise CancelFit from None


    def after_fit(self, learn):
        self._call("after_fit", learn)


def learner(confs: Sequence[Config], fold: Fold, members: Sequence[nn.Module], device: torch.device,
            callbacks: Sequence[Sequence[Callback]] = ()) -> Learner:
    """A Learner for a stack: `members` (each built and seeded as its trial alone would be) as one `Stacked`
    model, each with its config's hyperparameters, seed and batch order, and its own Recorder
    (`learn.recorders`) and `callbacks[k]`, seeing only itself. The configs must agree on all but MEMBER_KEYS."""
    conf = confs[0]
    if isinstance(fold.train, Dataset):
        raise ValueError(f"data={conf.data.name} is read through a DataLoader: its trials do not stack")
    model = Stacked(members)  # the members are on `device` already: their parameters become views of its own
    opt = StackOptimizer([optim.build(c.optim, m.layer_groups(), [c.optim.lr] * len(m.layer_groups()))
                          for c, m in zip(confs, members)], model)
    mom_key = optim.momentum_key(conf.optim)
    recorders = [Recorder(mom_key) for _ in confs]
    scheduler = ParamScheduler(conf.schedule, mom_key)
    own = [[rec, *(callbacks[k] if callbacks else ())] for k, rec in enumerate(recorders)]
    k = len(members)
    learn = Learner(model, StackedBatches(batches(fold.train, conf.trainer.bs, device, train=True), k),
                    StackedBatches(batches(fold.valid, conf.trainer.bs, device, train=False), k), opt=opt,
                    seed=[c.trainer.seed for c in confs], loss_fn=vmap(losses.build(model.loss, conf.loss.impl)),
                    callbacks=[*(ForMember(cb, i) for i, cbs in enumerate(own) for cb in cbs), scheduler],
                    diverge_factor=conf.trainer.diverge_factor)
    learn.recorders, learn.scheduler = recorders, scheduler
    return learn


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def memory_estimate(member: nn.Module, k: int, data_bytes: int = 0) -> int:
    """Bytes a stack of k copies of `member` needs: parameters, gradients and two optimizer states each, plus the
    training rows gathered once per epoch in each member's order."""
    return k * (4 * param_bytes(member) + (data_bytes if k * data_bytes <= PERMUTE_MAX_BYTES else 0))


def largest_fitting(member: nn.Module, available: int, data_bytes: int = 0, share: float = 0.5) -> int:
    """The largest K whose stack takes at most `share` of `available` bytes (at least 1)."""
    per = max(memory_estimate(member, 1, data_bytes), 1)
    return max(1, math.floor(share * available / per))
