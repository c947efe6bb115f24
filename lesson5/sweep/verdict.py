"""Judging a lesson claim from a study's trials, by the rule its study file states before any result exists.

Trials are grouped by the claim's parameter. A value's score is its best setting of the other swept parameters
(one-cycle at its best lr against constant at its best lr), as the mean over seeds of the objective, with the
standard error of that mean. Two scores differ when their gap exceeds the margin: the larger of the rule's
`tolerance` (a difference too small to matter) and twice the standard error of the difference (the seed noise).

    best:   {kind: best, param: P, value: V, tolerance: T}
            reproduced if V scores best, or within the margin of the best; not reproduced otherwise
    better: {kind: better, param: P, value: V, than: W, tolerance: T}
            reproduced if V beats W by more than the margin; not reproduced if W beats V by more; else inconclusive

Either is inconclusive when a value it names has no completed trial, or fewer than two seeds at its setting.

    final:  {kind: final, tolerance: T}
            the claim is that the base recipe is as good as the study's best: after the study, both are scored
            once more on the study file's `final` overrides (the test folds). Not reproduced if the best beats
            the base by more than the margin (T, or twice the standard error of the per-fold differences);
            reproduced otherwise; inconclusive before that scoring has run.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from lesson5.errors import ConfigError

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


@dataclass
class Score:
    mean: float
    std: float
    n: int
    setting: dict[str, Any]  # the other swept parameters where this value scored best

    @property
    def se(self) -> float:
        return self.std / math.sqrt(self.n) if self.n > 1 else math.inf


@dataclass
class Verdict:
    result: str
    summary: str
    scores: dict[str, Score]


def check_rule(study) -> None:
    """The rule names a swept parameter and values among its choices."""
    rule, path = study.rule, study.path
    keys = {p.key: p for p in study.space}
    if rule.get("kind") not in ("best", "better", "final"):
        raise ConfigError(f"{path}: rule.kind: {rule.get('kind')!r} is not best, better or final")
    if rule["kind"] == "final":
        if study.final is None:
            raise ConfigError(f"{path}: rule.kind: final needs a `final: {{overrides: [...]}}` section")
        return
    param = keys.get(rule.get("param"))
    if param is None:
        raise ConfigError(f"{path}: rule.param: {rule.get('param')!r} is not a key of space ({', '.join(keys)})")
    for field in ("value", "than") if rule["kind"] == "better" else ("value",):
        if field not in rule:
            raise ConfigError(f"{path}: rule.{field} is missing")
        if param.choices is not None and str(rule[field]) not in map(str, param.choices):
            raise ConfigError(f"{path}: rule.{field}: {rule[field]!r} is not among {param.key}'s choices {param.choices}")


def scores(trials: list[tuple[dict[str, Any], float]], param: str, maximize: bool) -> dict[str, Score]:
    """Each value of `param`: its best setting's mean over seeds. `trials` are (params, objective) pairs."""
    settings: dict[str, dict[tuple, list[float]]] = {}
    for params, value in trials:
        others = tuple(sorted((k, v) for k, v in params.items() if k not in (param, "trainer.seed")))
        settings.setdefault(str(params[param]), {}).setdefault(others, []).append(value)
    out = {}
    for v, by_setting in settings.items():
        best = (max if maximize else min)(by_setting.items(), key=lambda kv: statistics.fmean(kv[1]))
        values = best[1]
        out[v] = Score(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values),
                       dict(best[0]))
    return out


def _fmt(v: str, s: Score) -> str:
    where = "".join(f", {k}={x}" for k, x in s.setting.items())
    return f"{v}: {s.mean:.4f} +- {s.std:.4f} (n={s.n}{where})"


def judge(rule: dict, trials: list[tuple[dict[str, Any], float]], maximize: bool) -> Verdict:
    """The verdict on a claim from completed trials' (params, objective) pairs."""
    param, claim = rule["param"], str(rule["value"])
    sc = scores(trials, param, maximize)
    sign = -1.0 if maximize else 1.0  # gaps below are "how much worse", whatever the direction

    def margin(a: Score, b: Score) -> float:
        return max(float(rule.get("tolerance", 0.0)), 2 * math.hypot(a.se, b.se))

    named = [claim] + ([str(rule["than"])] if rule["kind"] == "better" else [])
    missing = [v for v in named if v not in sc or sc[v].n < 2]
    if missing:
        return Verdict(INCONCLUSIVE, f"{param}={missing[0]} has fewer than two completed seeds", sc)
    if rule["kind"] == "best":
        best = min(sc, key=lambda v: sign * sc[v].mean)
        gap, m = sign * (sc[claim].mean - sc[best].mean), margin(sc[claim], sc[best])
        if best == claim:
            return Verdict(REPRODUCED, f"{param}={claim} scored best: {_fmt(claim, sc[claim])}", sc)
        line = f"best {_fmt(best, sc[best])}; claimed {_fmt(claim, sc[claim])}; gap {gap:.4f}, margin {m:.4f}"
        return Verdict(REPRODUCED if gap <= m else NOT_REPRODUCED, line, sc)
    than = str(rule["than"])
    gap, m = sign * (sc[than].mean - sc[claim].mean), margin(sc[claim], sc[than])
    result = REPRODUCED if gap > m else NOT_REPRODUCED if gap < -m else INCONCLUSIVE
    return Verdict(result, f"{_fmt(claim, sc[claim])} against {_fmt(than, sc[than])}; {claim} better by {gap:.4f}, "
                           f"margin {m:.4f}", sc)


def judge_final(rule: dict, best: dict[str, float], base: dict[str, float], maximize: bool) -> Verdict:
    """The `final` rule from per-fold scores of the study's best recipe and of the base recipe, paired by fold."""
    folds = sorted(set(best) & set(base))
    if len(folds) < 2:
        return Verdict(INCONCLUSIVE, "the best recipe and the base have not both been scored on two or more folds", {})
    sign = -1.0 if maximize else 1.0
    diffs = [sign * (base[f] - best[f]) for f in folds]  # > 0: the tuned recipe is better on that fold
    gain = statistics.fmean(diffs)
    m = max(float(rule.get("tolerance", 0.0)), 2 * statistics.stdev(diffs) / math.sqrt(len(diffs)))
    sc = {name: Score(statistics.fmean(v[f] for f in folds), statistics.stdev(v[f] for f in folds), len(folds), {})
          for name, v in (("best", best), ("base", base))}
    line = (f"over {len(folds)} folds, the best recipe {sc['best'].mean:.4f} +- {sc['best'].std:.4f}, the base "
            f"{sc['base'].mean:.4f} +- {sc['base'].std:.4f}; the best is better by {gain:.4f}, margin {m:.4f}")
    return Verdict(NOT_REPRODUCED if gain > m else REPRODUCED, line, sc)
