"""Services (the sweep engine): schedule-aware successive halving, a grid study's `pruner: {name: halving, eta: 3,
min_epochs: 1}`.

Why not Optuna's pruners. They compare trials' objectives at equal steps, which assumes curves keep their order.
A one-cycle fit breaks that: stronger weight decay looks worse early and ends better, so the median pruner stopped
every wd >= 0.1 trial of the `wd` study after 2 of 5 epochs. Here no truncated schedule is ever compared: every rung
trains COMPLETE fits at a smaller budget (`trainer.epochs` = the rung's budget, from which the one-cycle is built),
and a rung's fits are only compared with each other.

Rungs. The budgets are min_epochs, min_epochs * eta, ... while below the study's epochs E (its base's
trainer.epochs), then E: the last rung is always the full recipe. Rung 1 runs the grid at the file's seeds. Once a
rung is complete, the values of the claim's parameter are ranked by their mean objective over the rung's seeds,
each at its best setting of the other swept parameters (`verdict.scores`, as the verdicts score them), and the top
floor(n / eta), never fewer than 2 (a `best` rule keeps a competitor), run at the next budget at that setting and
the same seeds. A rung is a set of points added as a look's are (the driver's ADDED_ATTR, so resumed sweeps and
other machines run the same ones), each carrying its `trainer.epochs` and its rung; points of two budgets differ in
trainer.epochs, so they never share a stack (lesson5.stack.stack_key).

Verdicts. A claim is judged by its study's rule on the trials of ONE rung, never on two budgets together:
- the final (full-budget) rung, among the values that reached it, when every value the claim names reached it. The
  eliminated values are not competitors there: halving's premise is that a complete schedule at a smaller budget
  ranks them as the full one would, and they ranked below the values promoted past them. A verdict here holds only
  as far as that premise does: where a smaller budget reorders the values (weight decay, whose benefit comes from
  the overfitting a 1-epoch fit never reaches), a claim on a survivor is judged against the wrong competitors;
- otherwise (a value it names was eliminated) the claim is "inconclusive": there is no full-budget evidence on it.
  Its summary gives the rule's reading at the highest rung that holds every value it names, among that rung's
  values, as information only: a smaller budget's fit is another recipe. (A first version let a "not reproduced"
  there stand; benchmarks/bench_pruners.py showed why not: a complete 1-epoch one-cycle ranks weight decay in
  reverse, as no fit of one epoch overfits, and the `wd` claim, reproduced at 5 epochs, came out "not reproduced".)
The report lists every rung's budget, values and the values it eliminated.

Limits, refused before any trial: halving needs a grid study with one look (`looks: 1`: seeds added between looks
and rungs added between rungs would compete for the same points), a `best` or `better` rule (it ranks the values
of the rule's parameter), no `final` scoring (it would score Optuna's best trial, of any budget), and no
trainer.epochs in the space (the epochs are the budget).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from lesson5.errors import ConfigError
from lesson5.sweep.verdict import INCONCLUSIVE, SEED, Verdict, judge, scores

if TYPE_CHECKING:
    from lesson5.sweep.spec import Study
    from lesson5.sweep.table import Table

BUDGET = "trainer.epochs"  # the override a rung's points carry
DEFAULTS = {"eta": 3, "min_epochs": 1}


def _whole(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def budgets(eta: int, min_epochs: int, epochs: int) -> list[int]:
    """The rungs' epochs: min_epochs, times eta at each rung while below `epochs`, then `epochs`."""
    out, b = [], min_epochs
    while b < epochs:
        out.append(b)
        b *= eta
    return [*out, epochs]


def keep(n: int, eta: int) -> int:
    """How many of a rung's n values the next rung runs: the top 1/eta, at least 2 (and at most n)."""
    return min(n, max(2, n // eta))


def check(study: Study, conf, where: Optional[str] = None) -> list[int]:
    """The rungs' budgets of a study whose pruner is halving and whose full recipe is `conf` (the base's validated
    config); ConfigError naming the file (or `where`, such as the command line) and the key when it cannot run.
    Fills in the defaults."""
    where, epochs = where or f"{study.path}: pruner", conf.trainer.epochs
    control = study.control or {}
    p = study.pruner
    unknown = set(p) - {"name", *DEFAULTS}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)} for halving; it takes eta, min_epochs")
    why = ("a grid study" if study.sampler != "grid" else
           f"looks: 1 (this study has looks: {study.looks}: give looks: 1 and max_seeds: {len(study.seeds)}; "
           f"halving runs every rung at the file's seeds)" if study.looks > 1 else
           "a best or better rule (it ranks the values of the rule's parameter)" if study.rule["kind"] == "final"
           else "a study without `final` scoring" if study.final is not None else
           f"{BUDGET} out of the space (the epochs are its budget)" if any(q.key == BUDGET for q in study.space)
           else "a recipe without trainer.stages (a staged recipe trains its stages' epochs, whatever a rung's "
           "trainer.epochs)" if conf.trainer.stages else
           f"the control on the rule's parameter, {study.rule['param']} (it ranks only that one's values; this "
           f"control is on {control['param']})" if control.get("param", study.rule["param"]) != study.rule["param"]
           else None)
    if why:
        raise ConfigError(f"{where}: halving needs {why}")
    p.update({k: p.get(k, v) for k, v in DEFAULTS.items()})
    if not _whole(p["eta"]) or p["eta"] < 2:
        raise ConfigError(f"{where}.eta: {p['eta']!r} is not a whole number >= 2 (each rung keeps the top 1/eta of "
                          f"the values, at eta times the epochs)")
    if not _whole(p["min_epochs"]) or not 1 <= p["min_epochs"] < epochs:
        raise ConfigError(f"{where}.min_epochs: {p['min_epochs']!r} is not a whole number from 1 to {epochs - 1} "
                          f"(the first rung's epochs, below the study's trainer.epochs={epochs})")
    return budgets(p["eta"], p["min_epochs"], epochs)


def values_at(study: Study, table: Table, rung: int, key: str) -> list[str]:
    """The values of `key` a rung ran (finished or not), as strings in the space's order."""
    ran = {str(r.params[key]) for r in table.trials() if r.rung == rung and key in r.params}
    return [str(c) for c in next(p.choices for p in study.space if p.key == key) if str(c) in ran]


def last_rung(table: Table) -> int:
    """The highest rung that ran trials (1 before any)."""
    return max((r.rung or 1 for r in table.trials()), default=1)


def promote(study: Study, table: Table) -> list[dict[str, Any]]:
    """After a complete rung: the next rung's points (the top values at their best setting, at the rung's seeds,
    at the next budget), [] after the final rung."""
    rung = last_rung(table)
    if rung >= len(study.budgets):
        return []
    param = next(p for p in study.space if p.key == study.rule["param"])
    ran = values_at(study, table, rung, param.key)
    sc = scores(table.at_rung(rung).completed(), param.key, study.direction == "maximize")
    sign = -1.0 if study.direction == "maximize" else 1.0
    # only values with a finished trial (one without has no setting, and no evidence to promote it on); ties by
    # the space's order, so every machine promotes the same values
    order = sorted((v for v in ran if v in sc), key=lambda v: (sign * sc[v].mean, ran.index(v)))
    seeds = sorted({r.params[SEED] for r in table.trials() if r.rung == rung and SEED in r.params})
    out = []
    for value in order[:keep(len(ran), study.pruner["eta"])]:
        fixed = {param.key: next(c for c in param.choices if str(c) == value), **sc[value].setting}
        for seed in seeds:
            out.append({**{p.key: fixed[p.key] for p in study.space}, SEED: seed, "look": 1, "rung": rung + 1,
                        BUDGET: study.budgets[rung]})
    return out


def eliminated(study: Study, table: Table) -> dict[int, list[str]]:
    """Each rung's values (of the claim's parameter) that the next rung did not run; the last rung's: none."""
    key = study.rule["param"]
    return {k: [v for v in values_at(study, table, k, key) if v not in values_at(study, table, k + 1, key)]
            for k in range(1, last_rung(table))}


def _named(rule: dict) -> list[str]:
    return [str(rule[f]) for f in ("value", "than") if f in rule]


def judge_rule(study: Study, table: Table, rule: dict, level: float) -> Verdict:
    """The verdict on `rule` (the claim or the control): at the final rung among its values, or, when a value the
    rule names was eliminated, inconclusive, with the rule's reading at the highest rung holding its values."""
    key, top, final = rule["param"], last_rung(table), len(study.budgets)
    named = set(_named(rule))
    rung = next((k for k in range(top, 0, -1) if named <= set(values_at(study, table, k, key))), top)
    v = judge(rule, table.at_rung(rung).completed(), study.direction == "maximize", level,
              values=values_at(study, table, rung, key))
    if rung == final:
        return v
    gone = [x for x in _named(rule) if rung < top and x not in values_at(study, table, rung + 1, key)]
    why = f"{key} {', '.join(gone)} eliminated" if gone else "the study has not reached its full budget"
    head = (f"{why} at rung {rung} of {final} ({study.budgets[rung - 1]} of {study.budgets[-1]} epochs): no "
            f"full-budget evidence; at that budget, another recipe, it read {v.result}")
    return Verdict(INCONCLUSIVE, f"{head}: {v.summary}", v.scores, v.rows, v.level)


def announce(study: Study, new: list[dict[str, Any]], table: Table) -> str:
    """The driver's line for a rung it adds: its budget, the values it runs and those it drops."""
    key, rung = study.rule["param"], new[0]["rung"]
    kept = {str(p[key]) for p in new}
    ran = values_at(study, table, rung - 1, key)
    return (f"rung {rung} of {len(study.budgets)}: {len(new)} trials at {new[0][BUDGET]} epochs ({key} "
            f"{', '.join(v for v in ran if v in kept)}; eliminated {', '.join(v for v in ran if v not in kept)})")
