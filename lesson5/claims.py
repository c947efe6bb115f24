"""Apps: the claims registry: every claim Lesson 5 makes, the experiment that tests it and the rule that judges it
(`CLAIMS`), every threshold a rule uses with its reason (`THRESHOLDS`), and the identities that cannot fail, which
are checks, not claims (`CHECKS`).

A claim's `measure(ctx)` returns plain measurements (numbers, or trials as (params, objective) pairs); its
`judge(measurements)` turns them into a `Judged`: the verdict, the row of the interval that decided it, and the
numbers in words. Verdicts are never written by hand, and there are three: reproduced, not reproduced, inconclusive
(a claim that could not be measured is inconclusive, and says why).

Where a claim is judged over seeds, it is judged by the paired rules of `lesson5.sweep.verdict`: the claims of the
grid studies by their study file's rule (`sweeps/<name>.yaml`), re-run here on a smaller grid (`quick`) or on the
study's grid with its looks (seeds added until decided); the others by a `better` rule registered here, or against
a threshold (`judge_bound`: the t interval, over seeds, of the measurement minus the threshold). The claims of the
studies that reproduce does not re-run (a TPE search scored on the test folds; the wd study under its pruner) are
judged from the trials the study committed (`sweeps/results/<study>.csv`), by the sweep's own verdicts.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from lesson5.errors import Lesson5Error
from lesson5.load import tracking_uri
from lesson5.sweep.spec import SWEEPS
from lesson5.sweep.verdict import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    SEED,
    Comparison,
    Verdict,
    judge,
    look_level,
    more_seeds,
)
from lesson5.tracking.store import finished_runs, resolve_uri

VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
EXPERIMENT = "lesson5-claims"
RESULTS = SWEEPS / "results"  # the studies' committed trial tables (sweeps/results/<study>.csv)
LEVEL = 0.95  # one look at 95%: the level of every interval judged outside a study's looks


@dataclass(frozen=True)
class Threshold:
    """A number a rule compares with, in the units of what it measures, and why it is that number."""

    value: float
    unit: str
    reason: str


# Every threshold of claims.py and transfer.py, one value per claim. The tolerances of the studies' own rules are
# in their study files (sweeps/<name>.yaml), with their reasons.
THRESHOLDS = {
    "embedding": Threshold(
        1e-5, "largest absolute difference between the predictions",
        "an identity: float32 sums of four products differ from the lookup by rounding only (about 1e-7); "
        "anything above 1e-5 is a real difference"),
    "wd_vs_l2.same": Threshold(
        1e-5, "largest weight difference after 20 SGD steps",
        "an identity for SGD: the two updates differ by float32 rounding only, which 20 steps keep near 1e-7"),
    "wd_vs_l2.differ": Threshold(
        1e-3, "largest weight difference after 20 Adam steps",
        "Adam rescales the penalty's gradient per weight, so the trajectories part by far more than rounding; 1e-3 "
        "is a hundred times the SGD bound"),
    "adam_vs_sgd": Threshold(
        0.001, "valid RMSE (the better rule's tolerance)",
        "the collab studies' tolerance (sweeps/y_range.yaml, schedule.yaml): a difference under 0.001 RMSE does not "
        "matter for this model"),
    "adam_vs_momentum": Threshold(
        0.001, "valid RMSE (the better rule's tolerance)", "as adam_vs_sgd"),
    "frozen_faster": Threshold(
        1.05, "x: an unfrozen epoch's seconds over a frozen epoch's, in the same run",
        "a frozen body skips its weight gradients, which for resnet34 is about a third of a training step's work "
        "(fastai's Pets run: 1.24x); a ratio under 1.05 is a speed-up no user would notice, and within the "
        "epoch-to-epoch timing noise of a shared machine"),
    "ensemble": Threshold(
        0.001, "test RMSE (the better rule's tolerance, paired by fold)",
        "the collab studies' tolerance (sweeps/y_range.yaml, schedule.yaml): a difference under 0.001 RMSE does not "
        "matter for this model"),
    "ensemble.goal": Threshold(
        0.900, "5-fold mean test RMSE (u1..u5), reported beside the verdict",
        "the quality goal of the stacked-trials work: one seed of the lesson's recipe scores about 0.905, and the "
        "tuned recipes of collab_best and collab_wide did not reach 0.900"),
    "bias_ranks": Threshold(
        0.8, "Spearman's rho between movie bias and mean rating (the lesson's 1000 most-rated movies)",
        "'ranks movies as their mean ratings do': rho 0.8 means about 4 in 5 pairs of movies ordered alike (Kendall's "
        "tau about 0.6 under a normal copula), where 0.5 would leave a third of the pairs in the other order"),
    "transfer.finetune_vs_scratch": Threshold(
        0.005, "valid accuracy (the better rule's tolerance)",
        "5 of the 1,000 held-out images: a smaller gain than that does not matter"),
    "transfer.slice_vs_single": Threshold(
        0.005, "valid accuracy (the better rule's tolerance)", "as transfer.finetune_vs_scratch"),
    "transfer.imagenet_features": Threshold(
        0.1, "valid accuracy above the random body's, frozen body, head trained",
        "10 points over the same head on a random body of the same architecture: features that carry over from "
        "ImageNet, not a head that learns alone"),
    "transfer.imagenet_vs_scratch": Threshold(
        0.005, "valid accuracy (the better rule's tolerance)", "as transfer.finetune_vs_scratch"),
}


@dataclass
class Judged:
    """A claim's verdict, the comparison that decided it and the numbers in words."""

    verdict: str
    numbers: str
    row: Optional[Comparison] = None  # the interval shown: the claimed side's advantage (positive: as claimed)
    level: float = LEVEL  # the interval's two-sided level before Holm's correction
    control: Optional[Judged] = None  # a study's control: a claim that must come out "not reproduced"
    control_text: str = ""
    section: list[str] = field(default_factory=list)  # Markdown the report adds after its tables


@dataclass
class Context:
    """What measurements share: quick or full, the user's overrides, the runs made (or reused) so far, and the
    workers that train them (`lesson5.pool`). Safe to use from several threads: the claims of a report with more
    than one worker are measured at once, each in a thread, and the runs they ask for train as the workers free."""

    quick: bool
    overrides: list[str] = field(default_factory=list)
    reuse: bool = True
    workers: int = 1
    made: list[dict] = field(default_factory=list)
    _found: Optional[dict[str, dict]] = None
    _memo: dict[str, Optional[dict]] = field(default_factory=dict)
    _pending: dict[str, tuple] = field(default_factory=dict)  # key: (claim, group, Future) of a job not yet kept
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _pool: Any = None
    _closed: bool = False

    def _finished(self) -> dict[str, dict]:
        """Finished runs of earlier reports in this store, by their trial key."""
        if self._found is None:
            self._found = finished_runs(resolve_uri(tracking_uri(self.overrides)), EXPERIMENT, "claims.trial") \
                if self.reuse else {}
        return self._found

    def _key(self, overrides: list[str]) -> str:
        return hashlib.sha1(" ".join([*overrides, *self.overrides]).encode()).hexdigest()[:16]

    def _known(self, claim: str, overrides: list[str]) -> bool:
        """Whether the run is made already: in this report (memo) or a finished one of an earlier report (reused)."""
        key = self._key(overrides)
        if key in self._memo:  # the same run serves two claims (Adam's lrs for adam_vs_sgd and adam_vs_momentum)
            return True
        if key in self._finished():
            self.made.append({"claim": claim, "overrides": overrides, "reused": True, **self._finished()[key]})
            self._memo[key] = self._finished()[key]
            return True
        return False

    def run(self, claim: str, overrides: list[str]) -> Optional[dict]:
        """One lesson5 run's final metrics and run id (reused from MLflow when an earlier report, or an earlier
        claim of this one, made the same run); None when it failed (diverged, say). A run made here is in the store
        when this returns (its model, for load_run), where run_all's need only have trained."""
        self.run_all(claim, [overrides], stored=True)
        return self._memo[self._key(overrides)]

    def run_all(self, claim: str, runs: list[list[str]], stored: bool = False) -> None:
        """Make the runs not made yet; those that may share a stack (lesson5.stack) train as one, in stacks of the
        size a sweep takes (lesson5.stack_size), each still its own MLflow run with its own metrics. A run another
        claim's thread has asked for already is waited for, not made twice."""
        from lesson5 import pool
        from lesson5.lifecycle import quiet_config
        from lesson5.stack import stack_key
        from lesson5.stack_size import stack_size

        with self._lock:
            if self._closed:  # a claim's thread still asking once the report has stopped
                raise Lesson5Error("the report was stopped")
            jobs, todo = {}, {}
            for overrides in runs:
                key = self._key(overrides)
                if key in self._pending:
                    jobs[id(self._pending[key][2])] = self._pending[key]
                elif not self._known(claim, overrides):
                    todo.setdefault(key, overrides)
            groups: dict[tuple, list[list[str]]] = {}
            for overrides in todo.values():
                groups.setdefault(stack_key([*overrides, *self.overrides]), []).append(overrides)
            if groups and self._pool is None:
                self._pool = pool.pool(self.workers)
            for group in groups.values():
                size = stack_size(quiet_config([*group[0], *self.overrides]))[0] if len(group) > 1 else 1
                for i in range(0, len(group), size):
                    job = (claim, group[i:i + size],
                           self._pool.submit(self._job(claim, group[i:i + size], stored)))
                    jobs[id(job[2])] = job
                    self._pending.update((self._key(o), job) for o in job[1])
        for claim_of, group, done in jobs.values():
            try:
                results = done.result()
            except BaseException:
                with self._lock:  # a later ask makes these runs again, rather than raise this error again
                    for overrides in group:
                        self._pending.pop(self._key(overrides), None)
                raise
            self._keep(claim_of, group, results)

    def _job(self, claim: str, group: list[list[str]], stored: bool) -> dict:
        """The pool's job for `group` (one run, or a stack of them)."""
        return {"runs": group, "extra": self.overrides, "experiment": EXPERIMENT, "stored": stored,
                "names": [f"{claim}: {' '.join(o)}"[:200] for o in group],
                "tags": [{"claims.claim": claim, "claims.trial": self._key(o)} for o in group]}

    def _keep(self, claim: str, group: list[list[str]], results: list[dict]) -> None:
        """Each run's metrics, or None when it diverged; once, whichever claim's thread comes first."""
        with self._lock:
            for overrides, result in zip(group, results):
                key = self._key(overrides)
                if self._pending.pop(key, None) is None:
                    continue
                if "diverged" in result:
                    self.made.append({"claim": claim, "overrides": overrides, "failed": "diverged"})
                    self._memo[key] = None
                    continue
                out = {**result["metrics"], "run_id": result["run_id"]}
                self.made.append({"claim": claim, "overrides": overrides, "reused": False, **out})
                self._memo[key] = out
                print(f"  {claim}: {' '.join(overrides)}"[:202], file=sys.stderr)

    def close(self, stop: bool = False) -> None:
        """Close the workers (`stop`: interrupting their runs; no run starts after it)."""
        with self._lock:
            self._closed = self._closed or stop
        if self._pool is not None:
            self._pool.close(stop)
            self._pool = None

    def trials(self, claim: str, base: list[str], points: Iterable[dict[str, Any]], seeds: Iterable[int],
               metric: str) -> list[tuple[dict[str, Any], float]]:
        """Each point at each seed, as the (params, objective) pairs verdicts judge; a failed run is left out."""
        points, seeds = list(points), list(seeds)
        runs = self.overrides_of(base, points, seeds)
        self.run_all(claim, runs)
        out = []
        for (params, seed), overrides in zip(itertools.product(points, seeds), runs):
            got = self._memo[self._key(overrides)]
            if got is not None and math.isfinite(got.get(metric, math.nan)):
                out.append(({**params, SEED: seed}, got[metric]))
        return out

    @staticmethod
    def overrides_of(base: list[str], points: list[dict[str, Any]], seeds: list[int]) -> list[list[str]]:
        """The runs of each point at each seed (points outer, seeds inner), as overrides."""
        return [[*base, *(f"{k}={v}" for k, v in params.items()), f"trainer.seed={seed}"]
                for params, seed in itertools.product(points, seeds)]


@dataclass
class Claim:
    key: str
    text: str
    how: str
    measure: Callable[[Context], Any]
    judge: Callable[[Any], Judged]
    check: bool = False  # an identity that cannot fail: reported apart, as a check


def grid(space: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of the values of `space`, as params."""
    return [dict(zip(space, values)) for values in itertools.product(*space.values())]


# ---- reading a verdict ---------------------------------------------------------------------------------------


def decisive(v: Verdict) -> Optional[Comparison]:
    """The row a verdict is read off: the closest competitor when reproduced, the strongest that beat the claim
    when not, the first undecided (fewest seeds first) when inconclusive."""
    if not v.rows:
        return None
    if v.result == REPRODUCED:
        return min(v.rows, key=lambda r: r.lo)
    if v.result == NOT_REPRODUCED:
        return min(v.rows, key=lambda r: r.hi if r.decided else math.inf)
    return min((r for r in v.rows if not r.decided), key=lambda r: r.n, default=v.rows[0])


def interval(row: Optional[Comparison]) -> str:
    """`+0.0023 [+0.0011, +0.0035] vs [0,5]` (95%), or why there is none."""
    if row is None:
        return "no interval"
    if row.n < 2:
        return f"vs {row.value}: fewer than two paired seeds, no interval"
    return f"{row.diff:+.4f} [{row.lo:+.4f}, {row.hi:+.4f}] vs {row.value} ({100 * row.level:.4g}%)"


def from_verdict(v: Verdict, numbers: Optional[str] = None) -> Judged:
    """A Judged from a rule's verdict: its decisive row, and its summary (or `numbers`) in words."""
    words = numbers or v.summary  # a verdict's own summary says how many seeds would decide it
    if numbers and v.result == INCONCLUSIVE and v.seeds_needed:
        words += f"; about {v.seeds_needed} paired seeds would decide it at the observed spread"
    return Judged(v.result, words, decisive(v), v.level)


def judge_bound(measured: dict[Any, float], threshold: Threshold, unit: str = "seeds") -> tuple[Verdict, str]:
    """A measurement repeated over seeds (or runs) against a threshold, above which the claim holds: the `better`
    rule of lesson5.sweep.verdict with the threshold as the competitor at each seed, so the interval is the t
    interval of the mean of (measurement - threshold). Reproduced when it lies above 0, not reproduced below."""
    rule = {"kind": "better", "param": "x", "value": "measured", "than": f"{threshold.value:g}", "tolerance": 0.0}
    kept = {s: x for s, x in measured.items() if math.isfinite(x)}
    trials = [({"x": "measured", SEED: s}, x) for s, x in kept.items()]
    trials += [({"x": rule["than"], SEED: s}, threshold.value) for s in kept]
    v = judge(rule, trials, maximize=True, level=LEVEL)
    mean = sum(kept.values()) / len(kept) if kept else math.nan
    return v, f"mean {mean:.3f} over {len(kept)} {unit} against {threshold.value:g}"


# ---- the checks: identities that cannot fail -----------------------------------------------------------------


def measure_embedding(ctx: Context) -> dict:
    from lesson5 import checks

    return {"max_abs_diff": checks.embedding_vs_one_hot()}


def judge_embedding(m: dict) -> Judged:
    d, t = m["max_abs_diff"], THRESHOLDS["embedding"]
    return Judged(REPRODUCED if d < t.value else NOT_REPRODUCED,
                  f"largest difference {d:.2e} over 32 predictions (bound {t.value:g})")


def measure_decay(ctx: Context) -> dict:
    from lesson5 import checks

    return {"sgd": checks.decay_vs_l2("sgd"), "adam": checks.decay_vs_l2("adam", wd=0.1)}


def judge_decay(m: dict) -> Judged:
    same, differ = THRESHOLDS["wd_vs_l2.same"], THRESHOLDS["wd_vs_l2.differ"]
    ok = m["sgd"] < same.value and m["adam"] > differ.value
    return Judged(REPRODUCED if ok else NOT_REPRODUCED,
                  f"largest weight difference after 20 steps: SGD {m['sgd']:.2e} (bound {same.value:g}), Adam "
                  f"{m['adam']:.2e} (must exceed {differ.value:g})")


# ---- claims judged by a study file's rule, re-run here ---------------------------------------------------------


def _study(name: str):
    from lesson5.sweep.spec import load

    return load(str(SWEEPS / f"{name}.yaml"))


def rules_of(study) -> dict[str, dict]:
    """The study's claim ("rule") and, if it has one, its control."""
    control = getattr(study, "control", None)
    return {"rule": study.rule, **({"control": control} if control else {})}


def _named(rules: dict[str, dict], param: str) -> list[str]:
    """The values of `param` the rules name (claimed, compared with, control), as text."""
    return [str(r[f]) for r in rules.values() if r.get("param") == param for f in ("value", "than") if f in r]


def quick_space(study, quick_grid: dict[str, list]) -> dict[str, list]:
    """The quick grid, with every value the study's rules name added, so the claim and its control are judged."""
    rules = rules_of(study)
    out = {}
    for p in study.space:
        values = list(quick_grid.get(p.key, p.choices))
        for text in _named(rules, p.key):
            if text not in map(str, values):
                values.append(next(c for c in p.choices if str(c) == text))
        out[p.key] = sorted(values, key=lambda c: [str(x) for x in p.choices].index(str(c)))
    return out


def study_trials(ctx: Context, key: str, study, space: dict[str, list], base: list[str]) -> dict:
    """The study's points at its seeds, look by look: after each look but the last, the values still undecided
    (for the claim or its control) get the next look's seeds (`lesson5.sweep.verdict.more_seeds`). `quick`: one
    look at 95%, at the first two seeds."""
    maximize = study.direction == "maximize"
    looks = 1 if ctx.quick else getattr(study, "looks", 1)
    seeds_at = getattr(study, "seeds_at", lambda k: list(study.seeds))
    seeds = list(study.seeds)[:2] if ctx.quick else list(seeds_at(1))
    points = grid(space)
    trials = ctx.trials(key, base, points, seeds, study.metric)
    rules, look = rules_of(study), 1
    while look < looks:
        want: dict[str, tuple] = {}
        for rule in rules.values():
            if rule.get("kind") in ("best", "better"):
                values = space[rule["param"]]
                for v, setting in more_seeds(rule, trials, maximize, look, looks, study.max_seeds,
                                             values=values).items():
                    want.setdefault(f"{rule['param']}={v}", (rule["param"], v, setting))
        if not want:
            break
        look += 1
        add = []  # the value at its best setting (every setting, for a value with no finished trial)
        for param, value, setting in want.values():
            for p in points:
                if str(p[param]) == str(value) and all(str(p[k]) == str(x) for k, x in setting.items()):
                    have = {q[SEED] for q, _ in trials if all(str(q[k]) == str(x) for k, x in p.items())}
                    add.append((p, [s for s in seeds_at(look) if s not in have]))
        ctx.run_all(key, [o for p, seeds in add for o in ctx.overrides_of(base, [p], seeds)])  # the look's stacks
        for p, seeds in add:
            trials += ctx.trials(key, base, [p], seeds, study.metric)
    return {"trials": trials, "rules": rules, "maximize": maximize, "space": space,
            "level": look_level(look, looks) if looks > 1 else LEVEL, "look": look, "looks": looks}


def _swept(key: str, text: str, study: str, quick_grid: dict[str, list],
           quick_base: tuple[str, ...] = ()) -> Claim:
    def measure(ctx: Context):
        s = _study(study)
        space = quick_space(s, quick_grid) if ctx.quick else {p.key: list(p.choices) for p in s.space}
        return study_trials(ctx, key, s, space, [*s.base, *(quick_base if ctx.quick else ())])

    how = (f"the `{study}` study's rule (sweeps/{study}.yaml) on its grid and seeds, seeds added look by look until "
           f"decided; quick: " + ", ".join(f"{k} in {v}" for k, v in quick_grid.items()) + " at two seeds")
    return Claim(key, text, how, measure, judge_study)


def judge_study(m: dict) -> Judged:
    """A swept claim's verdict from its trials and its study's rules, with the control's beside it."""
    if not m["trials"]:
        return Judged(INCONCLUSIVE, "not measured: no run finished")
    out = {}
    for name, rule in m["rules"].items():
        values = m["space"].get(rule.get("param"))
        v = judge(rule, m["trials"], m["maximize"], m["level"], values)
        out[name] = from_verdict(v)
    got = out["rule"]
    if m.get("looks", 1) > 1:
        got.numbers += f" (look {m['look']} of {m['looks']})"
    if "control" in out:
        got.control, got.control_text = out["control"], rule_text(m["rules"]["control"])
    return got


def rule_text(rule: dict) -> str:
    """A rule in words: `model.n_factors=5 works best`, `[0,5] beats [0,5.5]`."""
    if rule.get("kind") == "best":
        return f"{rule['param']}={rule['value']} works best"
    if rule.get("kind") == "better":
        return f"{rule['param']}={rule['value']} beats {rule['than']}"
    return f"the recipe {' '.join(rule.get('overrides', [])) or '(the base)'} is as good as the study's best"


# ---- claims judged from a study's committed trials -------------------------------------------------------------


def _recorded(key: str, text: str, study: str, table: Optional[str] = None, note: str = "") -> Claim:
    name = table or study

    def measure(ctx: Context) -> dict:
        from lesson5.sweep import report
        from lesson5.sweep import table as tables

        s = _study(study)
        t = tables.read(RESULTS / f"{name}.csv", s)
        return {"verdicts": report.verdicts(t, s), "rules": rules_of(s)}

    how = (f"the `{study}` study's committed trials (sweeps/results/{name}.csv{note}), judged by its rule "
           f"(sweeps/{study}.yaml); not re-run here")
    return Claim(key, text, how, measure, judge_recorded)


def judge_recorded(m: dict) -> Judged:
    """A recorded study's verdicts, as its sweep reads them, with the control's beside the claim's."""
    got = from_verdict(m["verdicts"]["rule"])
    if "control" in m["verdicts"]:
        got.control, got.control_text = from_verdict(m["verdicts"]["control"]), rule_text(m["rules"]["control"])
    return got


# ---- Adam against SGD, each at its best lr ---------------------------------------------------------------------

# Each optimizer over a log grid of lrs (steps of about 3x) wide enough that its best is inside, at equal epochs
# (the collab recipe's 5 epochs of one-cycle). Weight decay: the recipe's 0.1 for Adam; 0 for SGD, whose decay per
# step is lr * wd: at the lrs SGD needs (about 1 to 3), wd 0.1 shrinks every weight by 10-30% a step (at lr 1,
# seed 0: wd 0.1 gave 1.284 RMSE, 0.01 gave 1.070, 0.001 gave 0.945, 0 gave 0.929).
OPTIMIZERS = {"adam": {"optim.lr": [1e-3, 3e-3, 1e-2, 3e-2], "optim.wd": [0.1]},
              "sgd": {"optim.lr": [0.3, 1.0, 3.0, 10.0], "optim.wd": [0.0]},
              "momentum": {"optim.lr": [0.3, 1.0, 3.0, 10.0], "optim.wd": [0.0]}}
QUICK_LRS = {"adam": [1e-3, 3e-3, 1e-2], "sgd": [1.0, 3.0, 10.0], "momentum": [1.0, 3.0, 10.0]}


def _optimizer_claim(key: str, text: str, than: str) -> Claim:
    rule = {"kind": "better", "param": "optim", "value": "adam", "than": than,
            "tolerance": THRESHOLDS[key].value}

    def measure(ctx: Context) -> dict:
        trials, grids = [], {}
        for name in ("adam", than):
            space = {**OPTIMIZERS[name], **({"optim.lr": QUICK_LRS[name]} if ctx.quick else {})}
            grids[name] = space["optim.lr"]
            trials += ctx.trials(key, [], [{"optim": name, **p} for p in grid(space)],
                                 [0, 1] if ctx.quick else [0, 1, 2], "valid_rmse")
        return {"trials": trials, "rule": rule, "maximize": False, "lrs": grids}

    grids = "; ".join(f"{n} lr {OPTIMIZERS[n]['optim.lr']}, wd {OPTIMIZERS[n]['optim.wd'][0]}" for n in ("adam", than))
    how = (f"the collab recipe (5 epochs of one-cycle) with each optimizer at its best lr of a log grid ({grids}; "
           f"quick: 3 lrs, 2 seeds), 3 seeds; the `better` rule, tolerance {rule['tolerance']:g} RMSE; a best lr at "
           "the edge of its grid makes the verdict inconclusive")
    return Claim(key, text, how, measure, judge_optimizers)


def judge_optimizers(m: dict) -> Judged:
    """The `better` rule on the optimizers' trials; inconclusive if an optimizer's best lr is at its grid's edge."""
    if not m["trials"]:
        return Judged(INCONCLUSIVE, "not measured: no run finished")
    v = judge(m["rule"], m["trials"], m["maximize"], LEVEL, values=list(m["lrs"].keys()))
    got = from_verdict(v)
    edges = [f"{name}'s best lr {v.scores[name].setting['optim.lr']:g} is at the edge of its grid {lrs}"
             for name, lrs in m["lrs"].items() if name in v.scores
             and v.scores[name].setting.get("optim.lr") in (min(lrs), max(lrs))]
    if edges:
        got.verdict = INCONCLUSIVE
        got.numbers += "; but " + "; ".join(edges) + ": the comparison may be against an untuned optimizer"
    return got


# ---- a frozen body trains faster ---------------------------------------------------------------------------------

FROZEN_QUICK = ["data.size=32", "data.n_train=500", "data.n_valid=200", "trainer.stages.1.epochs=1"]
FROZEN_FULL = ["data.n_train=1000", "data.n_valid=200"]  # the recipe's 64 px; seconds scale with images, ratios not


def measure_frozen(ctx: Context) -> dict:
    """Per run (one per seed): seconds of a frozen and of an unfrozen epoch, and their peak memory."""
    out = {}
    for seed in (0, 1, 2):  # three runs even when quick: an interval over two has a t quantile of 12.7
        got = ctx.run("frozen_faster", ["model=resnet34", "model.weights=none", *(FROZEN_QUICK if ctx.quick
                                                                                  else FROZEN_FULL),
                                        f"trainer.seed={seed}"])
        if got is not None:
            out[seed] = {k: got[f"{s}/{m}"] for k, (s, m) in {"frozen_s": ("frozen", "epoch_seconds"),
                                                             "unfrozen_s": ("unfrozen", "epoch_seconds"),
                                                             "frozen_mb": ("frozen", "peak_memory_mb"),
                                                             "unfrozen_mb": ("unfrozen", "peak_memory_mb")}.items()}
    return out


def judge_frozen(m: dict) -> Judged:
    """Each run's unfrozen/frozen epoch-time ratio against THRESHOLDS["frozen_faster"], over the runs."""
    if not m:
        return Judged(INCONCLUSIVE, "not measured: no resnet34 run finished")
    t = THRESHOLDS["frozen_faster"]
    ratios = {s: r["unfrozen_s"] / r["frozen_s"] for s, r in m.items()}
    v, words = judge_bound(ratios, t, "runs")
    mean = lambda k: sum(r[k] for r in m.values()) / len(m)  # noqa: E731
    words = (f"unfrozen/frozen epoch seconds {', '.join(f'{x:.2f}x' for x in ratios.values())}: {words} (fastai's "
             f"Pets run: ~1.24x); {mean('frozen_s'):.2f} s against {mean('unfrozen_s'):.2f} s an epoch, peak memory "
             f"{mean('frozen_mb'):.0f} against {mean('unfrozen_mb'):.0f} MiB")
    return from_verdict(v, words)


# ---- movie biases, and the lesson's tables under the lesson's protocol ------------------------------------------

# The lesson's tables: fastai/course-v3, nbs/dl1/lesson4-collab.ipynb (commit 0e55efcf, 2019-02-25), the 15 lowest
# and 15 highest item biases over the 1,000 most-rated movies, each with its mean rating.
LESSON_LOWEST = [
    ("Children of the Corn: The Gathering (1996)", 1.32), ("Lawnmower Man 2: Beyond Cyberspace (1996)", 1.71),
    ("Mortal Kombat: Annihilation (1997)", 1.95), ("Cable Guy, The (1996)", 2.34), ("Striptease (1996)", 2.24),
    ("Free Willy 3: The Rescue (1997)", 1.74), ("Beautician and the Beast, The (1997)", 2.31),
    ("Bio-Dome (1996)", 1.90), ("Joe's Apartment (1996)", 2.24), ("Island of Dr. Moreau, The (1996)", 2.16),
    ("Barb Wire (1996)", 1.93), ("Crow: City of Angels, The (1996)", 1.95), ("Grease 2 (1982)", 2.00),
    ("Home Alone 3 (1997)", 1.89), ("McHale's Navy (1997)", 2.19)]
LESSON_HIGHEST = [
    ("Schindler's List (1993)", 4.47), ("Titanic (1997)", 4.25), ("Shawshank Redemption, The (1994)", 4.45),
    ("L.A. Confidential (1997)", 4.16), ("Rear Window (1954)", 4.39), ("Star Wars (1977)", 4.36),
    ("As Good As It Gets (1997)", 4.20), ("Silence of the Lambs, The (1991)", 4.29),
    ("Good Will Hunting (1997)", 4.26), ("Vertigo (1958)", 4.25), ("Godfather, The (1972)", 4.28),
    ("Boot, Das (1981)", 4.20), ("Usual Suspects, The (1995)", 4.39), ("Casablanca (1942)", 4.46),
    ("Close Shave, A (1995)", 4.49)]


def measure_bias(ctx: Context) -> dict:
    """The default collab run's item biases against mean ratings, per seed, over the lesson's 1,000 most-rated
    movies (and over those with 50+ ratings), and the first seed's lowest and highest 15."""
    from lesson5.bias import LESSON_TOP, MIN_RATINGS, bias_tables, spearman
    from lesson5.load import load_run

    out: dict[str, Any] = {"spearman": {}, "spearman_min50": {}}
    for seed in (0, 1, 2):
        got = ctx.run("bias_ranks", [f"trainer.seed={seed}"])
        if got is None:
            continue
        loaded = load_run(got["run_id"], tracking_uri(ctx.overrides), kind="collab")
        items, _ = bias_tables(loaded.model, loaded.data, min_ratings=0, top=LESSON_TOP)
        out["spearman"][seed] = spearman(items)
        out["spearman_min50"][seed] = spearman(bias_tables(loaded.model, loaded.data, MIN_RATINGS)[0])
        if "lowest" not in out:
            out.update(n_items=len(items), seed=seed,
                       lowest=list(zip(items.head(15).title, items.head(15).mean_rating)),
                       highest=list(zip(items.tail(15)[::-1].title, items.tail(15)[::-1].mean_rating)))
    return out


def judge_bias(m: dict) -> Judged:
    """Spearman over seeds against THRESHOLDS["bias_ranks"], and the lesson's tables beside ours."""
    if not m.get("spearman"):
        return Judged(INCONCLUSIVE, "not measured: no collab run finished")
    v, words = judge_bound(m["spearman"], THRESHOLDS["bias_ranks"])
    min50 = ", ".join(f"{x:.3f}" for x in m["spearman_min50"].values())
    words = (f"Spearman {', '.join(f'{x:.3f}' for x in m['spearman'].values())} over the {m['n_items']} most-rated "
             f"movies (the lesson's protocol): {words}; over the movies with 50+ ratings: {min50}")
    got = from_verdict(v, words)
    got.section = lesson_tables(m)
    return got


def lesson_tables(m: dict) -> list[str]:
    """The lesson's two bias tables beside ours, both over the 1,000 most-rated movies."""
    ours_low, ours_high = [t for t, _ in m["lowest"]], [t for t, _ in m["highest"]]
    lines = ["## The lesson's bias tables, under the lesson's protocol", "",
             f"fastai's course-v3 notebook (nbs/dl1/lesson4-collab.ipynb) ranks the biases of the {m['n_items']} "
             "most-rated movies; so does this table (`python -m lesson5.interpret <run> top=1000`), from the default "
             f"collab run at seed {m['seed']}. A title in bold is in both lists.", "",
             "| rank | lesson's lowest | mean | ours | mean | lesson's highest | mean | ours | mean |",
             "|---:|---|---:|---|---:|---|---:|---|---:|"]
    bold = lambda t, other: f"**{t}**" if t in other else t  # noqa: E731
    for i in range(15):
        (ll, lm), (ol, om) = LESSON_LOWEST[i], m["lowest"][i] if i < len(m["lowest"]) else ("", math.nan)
        (lh, hm), (oh, ohm) = LESSON_HIGHEST[i], m["highest"][i] if i < len(m["highest"]) else ("", math.nan)
        lines.append(f"| {i + 1} | {bold(ll, ours_low)} | {lm:.2f} | {bold(ol, [t for t, _ in LESSON_LOWEST])} | "
                     f"{om:.2f} | {bold(lh, ours_high)} | {hm:.2f} | {bold(oh, [t for t, _ in LESSON_HIGHEST])} | "
                     f"{ohm:.2f} |")
    low = len(set(ours_low) & {t for t, _ in LESSON_LOWEST})
    high = len(set(ours_high) & {t for t, _ in LESSON_HIGHEST})
    lines += ["", f"{low} of the lesson's 15 lowest and {high} of its 15 highest are among ours. Of our 15 highest, "
                  f"{sum(x > 4 for _, x in m['highest'])} have a mean rating above 4; of our 15 lowest, "
                  f"{sum(x < 2.5 for _, x in m['lowest'])} have one below 2.5."]
    return lines


# ---- the registry ------------------------------------------------------------------------------------------------

CHECKS = [
    Claim("embedding", "An embedding lookup is a one-hot vector times a matrix",
          "a collab model's predictions by lookup against one-hot matrix products (lesson5.checks)",
          measure_embedding, judge_embedding, check=True),
    Claim("wd_vs_l2", "Weight decay is the same as an L2 penalty for SGD, but not for Adam",
          "20 steps of each optimizer with decoupled decay and with an L2 penalty, from the same start "
          "(lesson5.checks)", measure_decay, judge_decay, check=True),
]

# ---- beyond the lesson: an ensemble of seeds ---------------------------------------------------------------------

ENSEMBLE_FOLDS = ("u1", "u2", "u3", "u4", "u5")
ENSEMBLE_K = 5


def measure_ensemble(ctx: Context) -> dict[int, dict[str, float]]:
    """Test RMSE of the lesson's recipe on each GroupLens fold, one seed against ENSEMBLE_K seeds averaged
    (trainer.ensemble; quick or not, the recipe is the lesson's and the folds its five)."""
    def overrides(k: int, fold: str) -> list[str]:
        return [f"data.split={fold}", "data.valid_from_train=false", f"trainer.ensemble={k}"]

    out = {}
    for k in (1, ENSEMBLE_K):
        ctx.run_all("ensemble", [overrides(k, f) for f in ENSEMBLE_FOLDS])
        got = {f: ctx.run("ensemble", overrides(k, f)) for f in ENSEMBLE_FOLDS}
        out[k] = {f: r["valid_rmse"] for f, r in got.items() if r is not None}
    return out


def judge_ensemble(m: dict[int, dict[str, float]]) -> Judged:
    """ENSEMBLE_K seeds beat one, paired by fold (the `better` rule at the registry's tolerance); the 5-fold means
    beside the goal."""
    t, goal = THRESHOLDS["ensemble"], THRESHOLDS["ensemble.goal"].value
    names = {ENSEMBLE_K: f"{ENSEMBLE_K} seeds", 1: "1 seed"}
    rule = {"kind": "better", "param": "recipe", "value": names[ENSEMBLE_K], "than": names[1], "tolerance": t.value}
    folds = {f: i for i, f in enumerate(ENSEMBLE_FOLDS)}
    trials = [({"recipe": names[k], SEED: folds[f]}, x) for k, xs in m.items() for f, x in xs.items()]
    v = judge(rule, trials, maximize=False, level=LEVEL)
    both = [f for f in ENSEMBLE_FOLDS if all(f in m.get(k, {}) for k in names)]  # a failed run's fold is out
    if not both:
        return from_verdict(v)
    means = {k: sum(m[k][f] for f in both) / len(both) for k in names}
    ens = means[ENSEMBLE_K]
    return from_verdict(v, f"mean test RMSE over {len(both)} folds {ens:.4f} ({names[ENSEMBLE_K]}) against "
                           f"{means[1]:.4f} (1 seed); the 5-fold goal of {goal:.3f} "
                           f"{'met' if ens <= goal and len(both) == 5 else 'not met'}")


CLAIMS = [
    *CHECKS,
    _swept("y_range", "y_range [0, 5.5] beats [0, 5] for ratings of 1 to 5", "y_range",
           {"model.y_range": ["[0,5]", "[0,5.5]"]}),
    _swept("n_factors", "n_factors=40 works best", "n_factors", {"model.n_factors": [10, 40, 160]}),
    _swept("wd", "wd=0.1 is the best weight decay", "wd_unpruned", {"optim.wd": [0.01, 0.1, 1.0]}),
    _recorded("wd_pruned", "wd=0.1 is the best weight decay, judged by a study under median pruning", "wd",
              note=", median pruner"),
    _swept("momentum", "Momentum 0.9 is the usual best for SGD with momentum", "momentum",
           {"optim.momentum": [0.0, 0.9, 0.99], "optim.lr": [0.03, 0.1, 0.3]}, quick_base=("trainer.epochs=1",)),
    _swept("one_cycle", "One-cycle beats a constant lr at equal epochs", "schedule",
           {"schedule": ["one_cycle", "constant"], "optim.lr": [0.002, 0.005]}),
    _optimizer_claim("adam_vs_sgd", "Adam beats plain SGD at equal epochs", "sgd"),
    _optimizer_claim("adam_vs_momentum", "Adam beats SGD with momentum at equal epochs", "momentum"),
    Claim("frozen_faster", "A frozen body trains faster",
          f"resnet34 runs at 3 seeds, each a frozen epoch then unfrozen ones (the default recipe on 1000 images; "
          f"quick: 32 px, 500 images): each run's unfrozen/frozen seconds per epoch against "
          f"{THRESHOLDS['frozen_faster'].value:g}x", measure_frozen, judge_frozen),
    Claim("bias_ranks", "Movie biases rank movies as their mean ratings do",
          f"the default collab run at 3 seeds: Spearman of item bias against mean rating over the 1000 "
          f"most-rated movies (the lesson's protocol) against {THRESHOLDS['bias_ranks'].value:g}",
          measure_bias, judge_bias),
    _recorded("collab_best", "The lesson's collab recipe is as good as tuning gets (on the u1..u5 test folds)",
              "collab_best", note=": 60 TPE trials, then the best and the lesson's recipe on 5 folds"),
    _recorded("collab_wide", "The lesson's collab recipe is as good as tuning over a wide space gets (u1..u5)",
              "collab_wide", note=": 80 TPE trials, then the best and the lesson's recipe on 5 folds"),
    Claim("ensemble", "Beyond the lesson: five seeds of its recipe, averaged, beat one (u1..u5)",
          f"the lesson's recipe on GroupLens' five test folds, one seed against trainer.ensemble={ENSEMBLE_K} (seeds "
          f"0..{ENSEMBLE_K - 1} trained as one stack, predicting their mean), paired by fold",
          measure_ensemble, judge_ensemble),
]
