"""Scratch optimizers follow torch.optim's trajectories; L2 equals decoupled decay for SGD, not for Adam."""

import copy
import importlib

import pytest
import torch
from torch import nn

from lesson5 import checks, optim
from lesson5.components import OPTIMIZERS
from lesson5.config import Impl, OptimConf, WdMode

STEPS = 150


def model_and_data(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    return model, x, y


def trajectory(conf: OptimConf, steps=STEPS, extra_loss=None, lean=False):
    model, x, y = model_and_data()
    opt = optim.build(conf, [list(model.parameters())], [conf.lr])
    step = optim.stepper(opt) if lean else opt.step
    out = []
    for i in range(steps):
        xb, yb = x[(i * 16) % 64 :][:16], y[(i * 16) % 64 :][:16]
        loss = nn.functional.cross_entropy(model(xb), yb)
        if extra_loss is not None:
            loss = loss + extra_loss(model)
        loss.backward()
        step()
        opt.zero_grad(set_to_none=True)
        out.append(torch.cat([p.detach().flatten() for p in model.parameters()]).clone())
    return torch.stack(out)


CASES = [(name, mode, wd) for name in OPTIMIZERS for mode in WdMode for wd in (0.0, 0.1)]


@pytest.mark.parametrize("name, mode, wd", CASES, ids=[f"{n}-{m.value}-wd{w}" for n, m, w in CASES])
def test_scratch_matches_torch(name, mode, wd):
    lr = {"sgd": 0.1, "momentum": 0.1, "rmsprop": 1e-2, "adam": 1e-2}[name]
    conf = OptimConf(name=name, lr=lr, wd=wd, wd_mode=mode, momentum=0.9, sqr_mom=0.99, eps=1e-5)
    ours = trajectory(_with(conf, Impl.scratch))
    theirs = trajectory(_with(conf, Impl.torch))
    assert not torch.equal(ours[0], ours[-1])  # the parameters moved
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, mode, wd", CASES, ids=[f"{n}-{m.value}-wd{w}" for n, m, w in CASES])
def test_lean_step_is_the_optimizers_own_step(name, mode, wd):
    """The training loop's stepper skips torch's per-call wrapper, not any of the update: bit-identical."""
    conf = OptimConf(name=name, lr=1e-2, wd=wd, wd_mode=mode, momentum=0.9, sqr_mom=0.99, eps=1e-5)
    for impl in Impl:
        lean, full = trajectory(_with(conf, impl), lean=True), trajectory(_with(conf, impl))
        assert not torch.equal(lean[0], lean[-1])
        assert torch.equal(lean, full)


def _with(conf, impl):
    c = copy.copy(conf)
    c.impl = impl
    return c


def test_scratch_optimizer_follows_a_momentum_schedule():
    conf = OptimConf(name="adam", impl=Impl.scratch, lr=1e-2)
    model, _, _ = model_and_data()
    opt = optim.build(conf, [list(model.parameters())], [conf.lr])
    assert optim.momentum_key(conf) == "momentum" and opt.param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize("impl", list(Impl))
def test_l2_equals_decoupled_for_plain_sgd_but_not_for_adam(impl):
    assert checks.decay_vs_l2("sgd", impl) < 1e-5  # the numbers the claims report shows
    assert checks.decay_vs_l2("adam", impl, wd=0.1) > 1e-2


def test_lessons_update_is_l2_with_twice_the_wd():
    """The lesson adds wd * sum(w**2) to the loss; our l2 adds wd * w to the gradient, so ours needs 2 * wd."""
    wd = 1e-3

    def lesson_penalty(model):
        return wd * sum((p**2).sum() for p in model.parameters())

    lesson = trajectory(OptimConf(name="sgd", impl=Impl.scratch, lr=0.1, wd=0.0), extra_loss=lesson_penalty)
    ours = trajectory(OptimConf(name="sgd", impl=Impl.scratch, lr=0.1, wd=2 * wd, wd_mode=WdMode.l2))
    torch.testing.assert_close(lesson, ours, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", list(WdMode))
def test_direct_fused_adam_step_is_torchs_step(mode, monkeypatch):
    """The stepper's direct call of the fused Adam(W) kernel gives torch's own step bit for bit, with lr and betas
    changed between steps (as the one-cycle schedule does), two groups with their own lr (discriminative lrs),
    and a layer frozen for a while (no grad, no state): its first step there goes through torch's step."""
    conf = OptimConf(name="adam", lr=1e-2, wd=0.1, wd_mode=mode, momentum=0.9, sqr_mom=0.99, eps=1e-5)
    torchs = []  # one entry per param group that torch's own fused Adam stepped
    adam_module = importlib.import_module("torch.optim.adam")
    fused_adam = adam_module._fused_adam
    monkeypatch.setattr(adam_module, "_fused_adam",
                        lambda params, *a, **k: (params and torchs.append(1)) or fused_adam(params, *a, **k))

    def fit(lean):
        torchs.clear()
        model, x, y = model_and_data()
        body, head = list(model[0].parameters()), list(model[2].parameters())
        opt = optim.build(conf, [body, head], [1e-3, 1e-2])
        assert optim._fused_adam_kernel(opt) is not None
        step = optim.stepper(opt) if lean else opt.step
        for i in range(40):
            for g in opt.param_groups:
                g["lr"], g["betas"] = g["max_lr"] * (1 + i) / 40, (0.95 - i / 400, 0.99)
            for p in body:
                p.requires_grad_(i >= 10)  # frozen body for the first 10 steps
            nn.functional.cross_entropy(model(x), y).backward()
            step()
            opt.zero_grad(set_to_none=True)
        return torch.cat([p.detach().flatten() for p in model.parameters()]), len(torchs)

    (lean, lean_torch_steps), (full, full_torch_steps) = fit(True), fit(False)
    assert torch.equal(lean, full)
    assert full_torch_steps == 40 + 30  # the head's 40 steps and the body's 30
    assert lean_torch_steps == 1 + 2  # the first step (the head's), the body's first (both groups); the rest direct


def test_direct_fused_adam_call_only_under_the_torch_releases_it_was_checked_on():
    model, _, _ = model_and_data()
    opt = optim.build(OptimConf(name="adam", lr=1e-2), [list(model.parameters())], [1e-2])
    assert optim._fused_adam_kernel(opt, torch_version="2.14.1+cu130") is not None
    assert optim._fused_adam_kernel(opt, torch_version="2.15.0") is None  # Adam.step, unchanged numbers
