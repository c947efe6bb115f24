"""Every claim Lesson 5 makes, with the experiment that tests it and the rule that judges it (`CLAIMS`).

A claim's `measure(ctx)` returns plain measurements (numbers, or a study's trials as (params, objective) pairs);
its `judge(measurements)` turns them into (verdict, the numbers in words). Verdicts are never written by hand: the
rules for the swept claims are the study files' own (`sweeps/<name>.yaml`, judged by `lesson5.sweep.verdict`),
run here on a smaller grid (`--quick`: fewer values and seeds) or on the study's full grid.

Verdicts: reproduced, not reproduced, inconclusive; "not yet tested" where the measurement could not be made.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from lesson5.load import tracking_uri
from lesson5.sweep.spec import SWEEPS
from lesson5.sweep.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from lesson5.sweep.verdict import judge as judge_trials
from lesson5.tracking.store import finished_runs, resolve_uri

NOT_TESTED = "not yet tested"
EXPERIMENT = "lesson5-claims"


@dataclass
class Context:
    """What measurements share: quick or full, the user's overrides, and the runs made (or reused) so far."""

    quick: bool
    overrides: list[str] = field(default_factory=list)
    reuse: bool = True
    made: list[dict] = field(default_factory=list)
    _found: Optional[dict[str, dict]] = None

    def _finished(self) -> dict[str, dict]:
        """Finished runs of earlier reports in this store, by their trial key."""
        if self._found is None:
            self._found = finished_runs(resolve_uri(tracking_uri(self.overrides)), EXPERIMENT, "claims.trial") \
                if self.reuse else {}
        return self._found

    def run(self, claim: str, overrides: list[str]) -> Optional[dict]:
        """One lesson5 run's final metrics (reused from MLflow when an earlier report made the same one); None
        when it failed (diverged, say)."""
        from lesson5.errors import DivergedError
        from lesson5.lifecycle import quiet_config
        from lesson5.run import run

        every = [*overrides, *self.overrides]
        key = hashlib.sha1(" ".join(every).encode()).hexdigest()[:16]
        if key in self._finished():
            self.made.append({"claim": claim, "overrides": overrides, "reused": True, **self._finished()[key]})
            return self._finished()[key]
        name = f"{claim}: {' '.join(overrides)}"[:200]
        cfg = quiet_config(every, track=True, experiment=EXPERIMENT, run_name=name)
        try:
            result = run(cfg, overrides=overrides, tags={"claims.claim": claim, "claims.trial": key})
        except DivergedError:
            self.made.append({"claim": claim, "overrides": overrides, "failed": "diverged"})
            return None
        out = {**result.metrics, "run_id": result.run_id}
        self.made.append({"claim": claim, "overrides": overrides, "reused": False, **out})
        print(f"  {name}", file=sys.stderr)
        return out

    def trials(self, claim: str, base: list[str], grid: dict[str, list], seeds: list[int],
               metric: str) -> list[tuple[dict[str, Any], float]]:
        """A grid over the claim's parameters and seeds, as the (params, objective) pairs verdicts judge."""
        out = []
        for values in itertools.product(*grid.values()):
            for seed in seeds:
                params = dict(zip(grid, values))
                overrides = [*base, *(f"{k}={v}" for k, v in params.items()), f"trainer.seed={seed}"]
                got = self.run(claim, overrides)
                if got is not None and math.isfinite(got.get(metric, math.nan)):
                    out.append(({**params, "trainer.seed": seed}, got[metric]))
        return out


@dataclass
class Claim:
    key: str
    text: str
    how: str
    measure: Callable[[Context], Any]
    judge: Callable[[Any], tuple[str, str]]


# ---- claims judged by a study file's rule ------------------------------------------------------------------


def _study(name: str):
    from lesson5.sweep.spec import load

    return load(str(SWEEPS / f"{name}.yaml"))


def _swept(key: str, text: str, study: str, quick_grid: dict[str, list], quick_seeds: int = 2,
           quick_base: tuple[str, ...] = ()) -> Claim:
    def measure(ctx: Context):
        s = _study(study)
        grid = quick_grid if ctx.quick else {p.key: p.choices for p in s.space}
        seeds = list(s.seeds)[:quick_seeds] if ctx.quick else list(s.seeds)
        base = [*s.base, *(quick_base if ctx.quick else ())]
        return {"trials": ctx.trials(key, base, grid, seeds, s.metric), "rule": s.rule,
                "maximize": s.direction == "maximize"}

    how = f"the `{study}` study's rule (sweeps/{study}.yaml), on " + (
        ", ".join(f"{k} in {v}" for k, v in quick_grid.items()) + " with --quick, its full grid otherwise")
    return Claim(key, text, how, measure, judge_study)


def judge_study(m: dict) -> tuple[str, str]:
    """A swept claim's verdict, from its trials and its study's rule."""
    if not m["trials"]:
        return NOT_TESTED, "no run finished"
    v = judge_trials(m["rule"], m["trials"], m["maximize"])
    return v.result, v.summary


# ---- claims measured directly ------------------------------------------------------------------------------


def measure_embedding(ctx: Context) -> dict:
    from lesson5 import checks

    return {"max_abs_diff": checks.embedding_vs_one_hot()}


def judge_embedding(m: dict) -> tuple[str, str]:
    d = m["max_abs_diff"]
    return (REPRODUCED if d < 1e-5 else NOT_REPRODUCED), f"largest difference {d:.2e} over 32 predictions"


def measure_decay(ctx: Context) -> dict:
    from lesson5 import checks

    return {"sgd": checks.decay_vs_l2("sgd"), "adam": checks.decay_vs_l2("adam", wd=0.1)}


def judge_decay(m: dict) -> tuple[str, str]:
    same, differ = m["sgd"] < 1e-5, m["adam"] > 1e-3
    words = f"largest weight difference after 20 steps: SGD {m['sgd']:.2e}, Adam {m['adam']:.2e}"
    return (REPRODUCED if same and differ else NOT_REPRODUCED), words


def measure_frozen(ctx: Context) -> dict:
    quick = ["data.size=32", "data.n_train=500", "data.n_valid=200", "trainer.stages.1.epochs=1"]
    got = ctx.run("frozen_faster", ["model=resnet34", "model.weights=none", *(quick if ctx.quick else [])])
    if got is None:
        return {}
    return {k: got[f"{s}/{m}"] for k, (s, m) in {"frozen_s": ("frozen", "epoch_seconds"),
                                                 "unfrozen_s": ("unfrozen", "epoch_seconds"),
                                                 "frozen_mb": ("frozen", "peak_memory_mb"),
                                                 "unfrozen_mb": ("unfrozen", "peak_memory_mb")}.items()}


def judge_frozen(m: dict) -> tuple[str, str]:
    if not m:
        return NOT_TESTED, "the resnet34 run did not finish"
    ratio = m["unfrozen_s"] / m["frozen_s"]
    words = (f"{m['frozen_s']:.2f} s a frozen epoch, {m['unfrozen_s']:.2f} s unfrozen: {ratio:.2f}x (fastai's "
             f"Pets run: ~1.24x); peak memory {m['frozen_mb']:.0f} vs {m['unfrozen_mb']:.0f} MiB")
    return (REPRODUCED if ratio > 1.05 else NOT_REPRODUCED if ratio < 0.95 else INCONCLUSIVE), words


def measure_bias(ctx: Context) -> dict:
    """The default collab run's item biases against mean ratings (lesson5.interpret)."""
    got = ctx.run("bias_ranks", ["trainer.seed=0"])
    if got is None:
        return {}
    from lesson5.bias import bias_tables, spearman
    from lesson5.load import load_run, tracking_uri

    loaded = load_run(got["run_id"], tracking_uri(ctx.overrides), kind="collab")
    items, _ = bias_tables(loaded.model, loaded.data)
    return {"spearman": spearman(items), "n_items": len(items),
            "top15_mean_over_4": int((items.tail(15).mean_rating > 4).sum()),
            "bottom15_mean_under_2_5": int((items.head(15).mean_rating < 2.5).sum())}


def judge_bias(m: dict) -> tuple[str, str]:
    if not m:
        return NOT_TESTED, "the collab run did not finish"
    words = (f"Spearman {m['spearman']:.3f} over {m['n_items']} movies with 50+ ratings; of the 15 highest biases "
             f"{m['top15_mean_over_4']} have a mean rating above 4, of the 15 lowest {m['bottom15_mean_under_2_5']} "
             f"below 2.5")
    return (REPRODUCED if m["spearman"] > 0.5 else NOT_REPRODUCED), words


ADAM_VS_SGD = {"kind": "better", "param": "optim", "value": "adam", "than": "sgd", "tolerance": 0.001}


def measure_adam(ctx: Context) -> dict:
    grid = {"optim": ["adam", "sgd"], "optim.lr": [5e-3, 5e-2] if ctx.quick else [1e-3, 5e-3, 1e-2, 5e-2, 0.1]}
    return {"trials": ctx.trials("adam_vs_sgd", [], grid, [0, 1] if ctx.quick else [0, 1, 2], "valid_rmse"),
            "rule": ADAM_VS_SGD, "maximize": False}


CLAIMS = [
    Claim("embedding", "An embedding lookup is a one-hot vector times a matrix",
          "a collab model's predictions by lookup against one-hot matrix products (lesson5.checks)",
          measure_embedding, judge_embedding),
    Claim("wd_vs_l2", "Weight decay is the same as an L2 penalty for SGD, but not for Adam",
          "20 steps of each optimizer with decoupled decay and with an L2 penalty, from the same start "
          "(lesson5.checks)", measure_decay, judge_decay),
    _swept("y_range", "y_range [0, 5.5] beats [0, 5] for ratings of 1 to 5", "y_range",
           {"model.y_range": ["[0,5]", "[0,5.5]"]}),
    _swept("n_factors", "n_factors=40 works best", "n_factors", {"model.n_factors": [10, 40, 160]}),
    _swept("wd", "wd=0.1 is the best weight decay", "wd", {"optim.wd": [0.01, 0.1, 1.0]}),
    _swept("momentum", "Momentum 0.9 is the usual best for SGD with momentum", "momentum",
           {"optim.momentum": [0.0, 0.9, 0.99]}, quick_base=("trainer.epochs=1",)),
    _swept("one_cycle", "One-cycle beats a constant lr at equal epochs", "schedule",
           {"schedule": ["one_cycle", "constant"], "optim.lr": [0.002, 0.005]}),
    Claim("adam_vs_sgd", "Adam beats plain SGD at equal epochs",
          "the collab recipe with optim=adam and optim=sgd, each at its best lr of a small grid, over seeds; "
          "judged by the `better` rule", measure_adam, judge_study),
    Claim("frozen_faster", "A frozen body trains faster",
          "one resnet34 run, a frozen stage then an unfrozen one (the default recipe; 32 px and 500 images with "
          "--quick): seconds per epoch, training only", measure_frozen, judge_frozen),
    Claim("bias_ranks", "Movie biases rank movies as their mean ratings do",
          "the default collab run's item biases against mean ratings (lesson5.interpret)", measure_bias, judge_bias),
]
