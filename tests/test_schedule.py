"""One-cycle lr and momentum at the start, the peak and the end, applied per param group."""

import pytest
import torch

from lesson5.config import ScheduleConf, ScheduleName
from lesson5.optim.schedule import Scheduler, one_cycle

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


def test_scheduler_scales_each_group_from_its_own_max_lr():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [a], "lr": 1e-3, "max_lr": 1e-3}, {"params": [b], "lr": 1e-2, "max_lr": 1e-2}],
                           betas=(0.9, 0.99))
    sched = Scheduler(ScheduleConf(), opt, total_steps=100, momentum_key="betas")
    sched.step(0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 / 25, 1e-2 / 25])
    assert opt.param_groups[0]["betas"] == pytest.approx((0.95, 0.99))
    sched.step(30)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-2])
    assert opt.param_groups[1]["betas"][0] == pytest.approx(0.85)


def test_constant_schedule_keeps_lr_and_momentum():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.1, "max_lr": 0.1}], momentum=0.9)
    sched = Scheduler(ScheduleConf(name=ScheduleName.constant), opt, 10, "momentum")
    assert sched.step(5) == (0.1, 0.9)


@pytest.mark.parametrize("name, key", [(ScheduleName.one_cycle, "betas"), (ScheduleName.constant, "momentum"),
                                       (ScheduleName.one_cycle, None)])
def test_planned_is_what_each_step_returns(name, key):
    """The plan the tracking writer draws ahead of time is exactly what the steps then log."""
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    groups = [{"params": [a], "lr": 1e-3, "max_lr": 1e-3}, {"params": [b], "lr": 1e-2, "max_lr": 1e-2}]
    opt = torch.optim.Adam(groups, betas=(0.9, 0.99)) if key == "betas" else torch.optim.SGD(groups, momentum=0.9)
    sched = Scheduler(ScheduleConf(name=name), opt, total_steps=97, momentum_key=key)
    planned = sched.planned()
    assert len(planned) == 97
    assert planned == [sched.step(i) for i in range(97)]
