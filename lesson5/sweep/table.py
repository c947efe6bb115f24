"""Services (the sweep engine): a study's trials as a small table, `sweeps/results/<study>.csv`, from which anyone
can recompute its report, with neither the Optuna storage nor MLflow.

One row per finished trial (role `trial`): its look, its state, its parameters (the study file's space and
`trainer.seed`), the objective, the objective after each epoch (`curve`, `;`-separated) and its training seconds.
A study with `final` scoring adds one row per fold and recipe (role `final best`, `final base`, `final control`)
with the recipe's overrides. A study under `pruner: halving` has two more columns after `look`: each trial's `rung`
and its `budget` (the trainer.epochs its whole schedule was built for; lesson5.sweep.halving). Numbers are written
as Python's repr, which reads back to the same float, so a report rebuilt from the table is the report the sweep
wrote.

A table is read against its study file: other columns, or a value outside the file's space or seeds, is refused
naming both files (the table belongs to another study, or to an earlier version of this one).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.trial import TrialState

from lesson5.errors import ConfigError
from lesson5.sweep.spec import Param, Study

SEED = "trainer.seed"
TRIAL = "trial"
FINALS = ("best", "base", "control")  # the recipes a study with `final` scores on its folds
STATES = ("COMPLETE", "PRUNED", "FAIL")


@dataclass
class Row:
    role: str  # "trial", or "final best" / "final base" / "final control"
    state: str  # COMPLETE, PRUNED or FAIL
    params: dict[str, Any] = field(default_factory=dict)  # the space's keys and trainer.seed (trials)
    value: float = math.nan  # the objective (nan: none, as for a pruned or failed trial)
    number: Optional[int] = None  # the Optuna trial's number
    look: Optional[int] = None  # the look that added it (1: the study file's seeds)
    fold: str = ""  # finals: the fold scored
    overrides: list[str] = field(default_factory=list)  # finals: the recipe's overrides over the base
    curve: list[float] = field(default_factory=list)  # the objective after each epoch
    seconds: float = math.nan  # training seconds
    rung: Optional[int] = None  # pruner halving: the trial's rung (1: the grid at the smallest budget)
    budget: Optional[int] = None  # pruner halving: its rung's epochs


@dataclass
class Table:
    rows: list[Row]

    def trials(self, *states: str) -> list[Row]:
        """The trial rows, in trial order; only those in `states` when given."""
        return [r for r in self.rows if r.role == TRIAL and (not states or r.state in states)]

    def completed(self) -> list[tuple[dict[str, Any], float]]:
        """(params, objective) of every complete trial: what verdicts judge."""
        return [(r.params, r.value) for r in self.trials("COMPLETE")]

    def finals(self) -> dict[str, dict]:
        """Each scored final recipe: {"overrides": [...], "folds": {fold: objective}}."""
        out: dict[str, dict] = {}
        for r in self.rows:
            if r.role.startswith("final "):
                got = out.setdefault(r.role.split(" ", 1)[1], {"overrides": r.overrides, "folds": {}})
                got["folds"][r.fold] = r.value
        return out

    def at_rung(self, rung: Optional[int]) -> Table:
        """This table with only one rung's trials (and the finals); itself for None (a study without rungs)."""
        return self if rung is None else Table([r for r in self.rows if r.role != TRIAL or r.rung == rung])

    def last_look(self) -> int:
        """The last look that ran trials (1 for a study without looks)."""
        return max((r.look or 1 for r in self.trials()), default=1)


def columns(study: Study) -> list[str]:
    """The table's header for this study file."""
    return ["role", "number", "look", *(["rung", "budget"] if study.budgets else []), "state",
            *(p.key for p in study.space), SEED, "fold", "overrides", study.metric, "curve", "seconds"]


def _seconds(t: optuna.trial.FrozenTrial) -> float:
    if "train_seconds" in t.user_attrs:
        return float(t.user_attrs["train_seconds"])
    if t.datetime_start and t.datetime_complete:  # pruned or failed: its time in the study
        return (t.datetime_complete - t.datetime_start).total_seconds()
    return math.nan


def from_optuna(opt: optuna.Study, study: Study) -> Table:
    """The table of a study in its Optuna storage: its finished trials and its final scores."""
    rows = []
    for t in opt.get_trials(deepcopy=False, states=tuple(TrialState[s] for s in STATES)):
        rows.append(Row(TRIAL, t.state.name, dict(t.params), t.value if t.value is not None else math.nan,
                        t.number, int(t.user_attrs.get("look", 1)),
                        curve=[t.intermediate_values[k] for k in sorted(t.intermediate_values)], seconds=_seconds(t),
                        rung=t.user_attrs.get("rung"), budget=t.user_attrs.get("budget")))
    for label in FINALS:
        final = opt.user_attrs.get(f"final.{label}")
        if final:
            seconds = final.get("seconds", {})
            rows += [Row(f"final {label}", "COMPLETE", value=v, fold=fold, overrides=list(final["overrides"]),
                         seconds=seconds.get(fold, math.nan)) for fold, v in sorted(final["folds"].items())]
    return Table(rows)


def _num(x: Optional[float]) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(x)


def _int(x: Optional[int]) -> str:
    return "" if x is None else str(x)


def dumps(table: Table, study: Study) -> str:
    """The table as CSV text, for this study file's columns."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns(study))
    for r in table.rows:
        w.writerow([r.role, _int(r.number), _int(r.look),
                    *([_int(r.rung), _int(r.budget)] if study.budgets else []), r.state,
                    *(_num(r.params[p.key]) if isinstance(r.params.get(p.key), float) else r.params.get(p.key, "")
                      for p in study.space),
                    r.params.get(SEED, ""), r.fold, " ".join(r.overrides), _num(r.value),
                    ";".join(repr(v) for v in r.curve), _num(r.seconds)])
    return buf.getvalue()


def write(table: Table, study: Study, path: Path) -> Path:
    """Write the table to `path` (its folder made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(table, study))
    return path


def _value(p: Param, text: str, where: str) -> Any:
    """A cell back as the space's value; ConfigError when the space does not hold it."""
    if p.choices is not None:
        for c in p.choices:
            if str(c) == text:
                return c
        raise ConfigError(f"{where}: {p.key}={text} is not among the choices {p.choices}")
    try:
        x = int(text) if p.integer else float(text)
    except ValueError:
        raise ConfigError(f"{where}: {p.key}={text} is not a number") from None
    if not p.low <= x <= p.high:
        raise ConfigError(f"{where}: {p.key}={text} is outside the range [{p.low:g}, {p.high:g}]")
    return x


def _rung(cell: dict[str, str], study: Study, where: str) -> tuple[int, int]:
    """A halving trial's rung and budget, checked against the study's budgets."""
    try:
        rung, budget = int(cell["rung"]), int(cell["budget"])
    except ValueError:
        raise ConfigError(f"{where}: rung {cell['rung']!r} and budget {cell['budget']!r} are not whole numbers") \
            from None
    if not 1 <= rung <= len(study.budgets) or study.budgets[rung - 1] != budget:
        raise ConfigError(f"{where}: rung {rung} at {budget} epochs is not one of the study's rungs (epochs "
                          f"{study.budgets})")
    return rung, budget


def _float(text: str, where: str) -> float:
    try:
        return float(text) if text else math.nan
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number") from None


def read(path: Path, study: Study) -> Table:
    """The table at `path`, checked against the study file: ConfigError naming both files when it does not match."""
    path = Path(path)
    mismatch = f"{path} does not match {study.path}"
    if not path.is_file():
        raise ConfigError(f"{path}: no results table for study {study.name}; run the sweep (python -m lesson5.sweep "
                          f"{study.name}), or rebuild it from its storage with source=journal")
    lines = list(csv.reader(io.StringIO(path.read_text())))
    if not lines or lines[0] != columns(study):
        got = lines[0] if lines else []
        raise ConfigError(f"{mismatch}: its columns {got} are not the study's {columns(study)} (another study, or "
                          f"the study file changed its space or objective since the table was written)")
    seeds = set(study.seeds_at(study.looks))
    rows = []
    for i, cells in enumerate(lines[1:], start=2):
        where = f"{mismatch}: line {i}"
        if len(cells) != len(lines[0]):
            raise ConfigError(f"{where}: {len(cells)} cells, the header has {len(lines[0])}")
        cell = dict(zip(lines[0], cells))
        role, state = cell["role"], cell["state"]
        if role not in (TRIAL, *(f"final {x}" for x in FINALS)) or state not in STATES:
            raise ConfigError(f"{where}: role {role!r} or state {state!r} is not one the sweep writes")
        row = Row(role, state, value=_float(cell[study.metric], where), fold=cell["fold"],
                  overrides=cell["overrides"].split(), seconds=_float(cell["seconds"], where),
                  curve=[_float(x, where) for x in cell["curve"].split(";") if x])
        if role == TRIAL:
            row.number, row.look = int(cell["number"]), int(cell["look"] or 1)
            if not 1 <= row.look <= study.looks:
                raise ConfigError(f"{where}: look {row.look} is not one of the study's {study.looks} look(s)")
            if study.budgets:
                row.rung, row.budget = _rung(cell, study, where)
            row.params = {p.key: _value(p, cell[p.key], where) for p in study.space if cell[p.key] != ""}
            if cell[SEED] != "":
                row.params[SEED] = int(cell[SEED])
                if row.params[SEED] not in seeds:
                    raise ConfigError(f"{where}: {SEED}={row.params[SEED]} is not among the study's seeds "
                                      f"{sorted(seeds)}")
            if state == "COMPLETE" and len(row.params) != len(study.space) + 1:
                raise ConfigError(f"{where}: a complete trial lacks some of {[p.key for p in study.space]}, {SEED}")
        rows.append(row)
    return Table(rows)


def optuna_study(table: Table, study: Study) -> optuna.Study:
    """The table's complete trials in an in-memory Optuna study, for Optuna's importances."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    def dist(p: Param):
        if p.choices is not None:
            return CategoricalDistribution(p.choices)
        return (IntDistribution if p.integer else FloatDistribution)(p.low, p.high, log=p.log)

    done = table.trials("COMPLETE")
    dists = {p.key: dist(p) for p in study.space}
    dists[SEED] = CategoricalDistribution(sorted({r.params[SEED] for r in done}) or study.seeds)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "a new study created in memory" on every report
    opt = optuna.create_study(direction=study.direction)
    opt.add_trials([optuna.trial.create_trial(params=r.params, distributions=dists, value=r.value) for r in done])
    return opt
