"""Apps: `lesson5-lr-find [start_lr=1e-7] [end_lr=10] [overrides]` (or `python -m lesson5.lr_find`): fastai's
learning-rate finder (Smith, "Cyclical Learning Rates", arXiv:1506.01186), for any lesson5 config.

Over one pass of the training data the lr grows exponentially from `start_lr` to `end_lr`, one step at a time;
the pass stops once the smoothed loss exceeds 4x its minimum. It plots the loss against the lr, suggests the lr
where the smoothed loss falls fastest (fastai v1's suggestion), and logs both to an MLflow run. The model is
thrown away: nothing but the run is kept.

"""

from __future__ import annotations

import math
import sys
from typing import Optional

import torch

from lesson5 import cli, naming
from lesson5 import data as datasets
from lesson5.callback import Callback, CancelFit
from lesson5.config import flatten
from lesson5.errors import ConfigError
from lesson5.learner import Learner
from lesson5.lifecycle import TrackedRun
from lesson5.run import build_model, pick_device
from lesson5.tracking import open_tracker

SMOOTH = 0.98  # fastai's exponential smoothing of the loss
STOP_FACTOR = 4.0
MIN_STEPS = 20  # fewer steps than this cannot place a suggestion (fastai's skips the first 10)


class LRFinder(Callback):
    """Sets lr = start * (end/start)**(i/n) before step i of n; records the smoothed loss; stops on explosion."""

    order = 10  # where the schedule would be

    def __init__(self, start_lr: float = 1e-7, end_lr: float = 10.0):
        self.start_lr, self.end_lr = start_lr, end_lr
        self.lrs: list[float] = []
        self.losses: list[float] = []  # smoothed, bias-corrected as fastai's
        self._avg = 0.0

    def before_fit(self, learn) -> None:
        self.n = max(learn.total_steps - 1, 1)

    def before_batch(self, learn) -> None:
        lr = self.start_lr * (self.end_lr / self.start_lr) ** (learn.fit_step / self.n)
        for g in learn.opt.param_groups:
            g["lr"] = lr

    def after_step(self, learn) -> None:
        loss = learn.loss.item()
        self._avg = SMOOTH * self._avg + (1 - SMOOTH) * loss
        smoothed = self._avg / (1 - SMOOTH ** learn.fit_step)
        self.lrs.append(learn.opt.param_groups[-1]["lr"])
        self.losses.append(smoothed)
        if not math.isfinite(smoothed) or smoothed > STOP_FACTOR * min(self.losses):
            raise CancelFit

    def suggestion(self) -> float:
        """The lr where the smoothed loss falls fastest against log(lr), before its minimum. Slopes are taken over
        a window of 2% of the steps, after the first 10 (fastai's skip_start): step-to-step noise would win."""
        lrs, losses = self.lrs, self.losses
        lowest = min(range(len(losses)), key=losses.__getitem__)
        w = max(1, len(losses) // 50)
        starts = range(min(10, lowest // 2), max(lowest - w, 1))
        if not starts:
            return lrs[lowest]
        slope = {i: (losses[i + w] - losses[i]) / math.log(lrs[i + w] / lrs[i]) for i in starts}
        return lrs[min(slope, key=slope.__getitem__) + w // 2]


def plot(finder: LRFinder, suggested: float) -> bytes:
    from lesson5 import plots

    fig, ax = plots.plt.subplots(figsize=(7, 4))
    ax.plot(finder.lrs, finder.losses)
    ax.axvline(suggested, color="tab:red", ls="--", label=f"suggested {suggested:.2e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="train loss (smoothed)", title="LR finder")
    ax.legend()
    plots.fixed_margins(fig)
    return plots.png(fig)


def find(overrides: list[str], start_lr: float = 1e-7, end_lr: float = 10.0, base: list[str] = ()):
    """Run the finder on the config `base` and these overrides compose; returns (finder, suggested lr, MLflow run id).
    Everything that can be refused (the config, the lrs, a pass too short to suggest an lr) is refused before the
    store is opened; a pass whose loss explodes within its first MIN_STEPS steps ends its run FAILED, saying so."""
    if not (math.isfinite(start_lr) and math.isfinite(end_lr) and 0 < start_lr < end_lr):
        raise ConfigError(f"start_lr={start_lr}, end_lr={end_lr}: expected finite lrs with 0 < start_lr < end_lr "
                          f"(fastai's range is start_lr=1e-7 end_lr=10)")
    cfg, conf = cli.checked(overrides, base)
    device = pick_device(conf.trainer.device, conf.model.name)
    torch.set_num_threads(conf.trainer.threads or torch.get_num_threads())
    data = datasets.build(conf.data)
    finder = LRFinder(start_lr, end_lr)
    learn = Learner.from_config(conf, data, data.folds[0], build_model(conf, data, device), device, [finder],
                                schedule=False)
    learn.diverge_factor = 0.0  # the finder stops the pass itself when the loss explodes
    steps = len(learn.train)
    if steps < MIN_STEPS:
        raise ConfigError(f"trainer.bs={conf.trainer.bs}: the finder's pass (one epoch of the training data) would "
                          f"be {steps} steps, and it "
                          f"needs at least {MIN_STEPS} to suggest an lr: lower trainer.bs, or use more data")
    tracker = open_tracker(conf.tracking)
    try:
        end_tags: dict[str, str] = {}
        with TrackedRun(tracker, experiment=naming.experiment_name(conf),
                        name=conf.tracking.run_name or f"lr_find {conf.model.name}", params=flatten(cfg),
                        tags={"lesson5.kind": "lr_find", "model": conf.model.name},
                        end_tags=lambda end: end_tags) as tracked:
            learn.fit(1)
            tracked.log_metrics([("lr_find_lr", lr, i) for i, lr in enumerate(finder.lrs, 1)]
                                + [("lr_find_loss", v, i) for i, v in enumerate(finder.losses, 1)])
            if len(finder.lrs) < MIN_STEPS:
                raise ConfigError(
                    f"end_lr={end_lr:g}: the loss exploded after {len(finder.lrs)} of {steps} steps, at lr "
                    f"{finder.lrs[-1]:.1e}: too few steps to suggest an lr. Lower end_lr (the lr grows from "
                    f"start_lr={start_lr:g} by {(end_lr / start_lr) ** (1 / max(steps - 1, 1)):.3g}x a step), or "
                    f"give a smaller trainer.bs for more steps")
            suggested = finder.suggestion()
            tracked.log_metrics([("suggested_lr", suggested, 0)])
            if tracked.tracked:
                tracked.log_files({"plots/lr_find.png": plot(finder, suggested)})
            end_tags["suggested_lr"] = f"{suggested:.3g}"
        info = tracked.info()
        return finder, suggested, info.run_id if info else None
    finally:
        if tracker is not None:
            tracker.close()


COMMAND = cli.Command(
    name="lesson5-lr-find", module="lesson5.lr_find",
    summary="fastai's learning-rate finder for any lesson5 config: one pass with the lr growing exponentially "
            "from start_lr to end_lr; it plots the loss against the lr, suggests an lr, and logs both to an MLflow "
            "run.",
    example="start_lr=1e-6 model=mlp data=mnist",
    options=(cli.Option("start_lr", float, "the first step's lr", default=1e-7, above=0),
             cli.Option("end_lr", float, "the lr the pass grows to (above start_lr)", default=10.0, above=0)),
    overrides="the run")


def _find(args) -> int:
    finder, suggested, run_id = find(args.overrides, args.start_lr, args.end_lr, base=["trainer.progress=false"])
    print(f"lr finder: {len(finder.lrs)} steps from {finder.lrs[0]:.1e} to {finder.lrs[-1]:.1e}; "
          f"lowest smoothed loss {min(finder.losses):.4f}; suggested lr {suggested:.2e}")
    if run_id:
        print(f"MLflow run {run_id}: plots/lr_find.png")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """The `lesson5-lr-find` command (argv: default sys.argv[1:]); its exit code."""
    return cli.run(COMMAND, argv, _find)


if __name__ == "__main__":
    sys.exit(main())
