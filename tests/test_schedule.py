"""One-cycle lr and momentum at the start, the peak and the end, applied per param group."""

from types import SimpleNamespace

import pytest
import torch

from lesson5.config import ScheduleConf, ScheduleName
from lesson5.optim.schedule import ParamScheduler, one_cycle

KW = dict(pct_start=0.3, div=25.0, div_final=25e4, moms=[0.95, 0.85, 0.95])


def test_one_cycle_start_peak_end():
    assert one_cycle(0.0, **KW) == pytest.approx((1 / 25, 0.95))
    assert one_cycle(0.3, **KW) == pytest.approx((1.0, 0.85))
    assert one_cycle(1.0, **KW) == pytest.approx((1 / 25e4, 0.95))


def test_lr_and_momentum_move_in_opposite_directions():
    pts = [one_cycle(p / 100, **KW) for p in range(101)]
    for (lr0, m0), (lr1, m1) in zip(pts, pts[1:]):
        assert (lr1 - lr0) * (m1 - m0) <= 1e-15
    assert max(pts)[0] == pytest.approx(1.0)


def fit_of(opt, total_steps):
    """The learner state ParamScheduler reads: the optimizer, and the steps of the current fit."""
    return SimpleNamespace(opt=opt, total_steps=total_steps, fit_step=0)


def apply(sched, learn, fit_step):
    learn.fit_step = fit_step
    sched.before_batch(learn)


def test_scheduler_scales_each_group_from_its_own_max_lr():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [a], "lr": 1e-3, "max_lr": 1e-3}, {"params": [b], "lr": 1e-2, "max_lr": 1e-2}],
                           betas=(0.9, 0.99))
    sched, learn = ParamScheduler(ScheduleConf(), "betas"), fit_of(opt, 100)
    sched.before_fit(learn)
    apply(sched, learn, 0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 / 25, 1e-2 / 25])
    assert opt.param_groups[0]["betas"] == pytest.approx((0.95, 0.99))
    apply(sched, learn, 30)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-2])
    assert opt.param_groups[1]["betas"][0] == pytest.approx(0.85)


def test_constant_schedule_keeps_lr_and_momentum():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.1, "max_lr": 0.1}], momentum=0.9)
    sched, learn = ParamScheduler(ScheduleConf(name=ScheduleName.constant), "momentum"), fit_of(opt, 10)
    sched.before_fit(learn)
    apply(sched, learn, 5)
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]) == (0.1, 0.9)


def test_sgd_momentum_stays_a_moving_average_under_the_schedule():
    """torch's SGD with dampening=momentum is the lesson's v = mom*v + (1-mom)*g; the schedule moves both."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.1, "max_lr": 0.1}], momentum=0.9, dampening=0.9)
    sched, learn = ParamScheduler(ScheduleConf(), "momentum"), fit_of(opt, 10)
    sched.before_fit(learn)
    apply(sched, learn, 3)
    assert opt.param_groups[0]["momentum"] == opt.param_groups[0]["dampening"] == pytest.approx(0.85)
