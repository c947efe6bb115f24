"""Services (the sweep engine): a study file, what a sweep varies, what it optimizes, and the claim it judges.

A study is a YAML file anywhere (`lesson5-sweep path/to/study.yaml`), or the name of one shipped in `sweeps/`
(the package lesson5.sweeps), such as `n_factors`:

    claim: the lesson's sentence the study re-tests
    rule: {kind: best, param: model.n_factors, value: 40, tolerance: 0.002}     # see lesson5.sweep.verdict
    base: [data.split=random]                       # Hydra overrides for every trial
    space:                                          # Hydra override keys
      model.n_factors: {choices: [10, 20, 40, 80]}  # categorical
      optim.wd: {low: 1e-3, high: 1.0, log: true}   # a range (int: true for integers); grid studies take choices
    control: {kind: best, param: model.n_factors, value: 10}   # optional: a claim that must come out "not
                                                    # reproduced" (a value known to be poor): the rule can fail here
    seeds: [0, 1, 2]                                # trainer.seed values, each point is run at each
    max_seeds: 20                                   # grid: seeds may be added up to this many per setting (<= 20)
    looks: 4                                        # grid: planned looks; after each but the last, seeds are added
                                                    # to the values still undecided (lesson5.sweep.verdict)
    objective: {metric: valid_rmse, direction: minimize}
    sampler: grid                                   # grid | tpe | random
    pruner: none                                    # none | median | hyperband | halving, or {name: median, ...}:
                                                    # halving, {name: halving, eta: 3, min_epochs: 1}, trains
                                                    # complete one-cycle fits at growing epochs (lesson5.sweep.halving)
    n_trials: null                                  # grid: every point at every seed
    max_fail_rate: 0.5                              # the sweep stops when more trials than this fail
    stack: auto                                     # grid: trials trained as one fit (lesson5.stack): auto, or K
    final: {overrides: [data.split=cv]}             # optional: score the best recipe, and the base alone, once
                                                    # more with these overrides (the test folds), for rule final

`load` checks all of it, composing one trial's config, before any trial runs; a problem names the file and key.

Seeds until decided (grid studies). Look 1 runs the grid at `seeds`. Look k of `looks` has `seeds_at(k)`: the file's
seeds, then the next whole numbers after the largest, evenly more per look up to `max_seeds` at the last look, so
the looks sit at the planned information fractions k/looks that the alpha spending assumes. The driver adds the
points a look asks for (`Study.added`, kept in the Optuna study so a resumed sweep has them), as it adds halving's
rungs: a point is its parameters and seed, plus POINT_META (its look; under halving its rung and its epochs).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from lesson5.config import compose, validate
from lesson5.errors import ConfigError, describe
from lesson5.sweep import halving
from lesson5.sweep.verdict import check_rule

# sweeps/ at the top of the checkout, shipped inside the package as lesson5.sweeps (pyproject.toml's package-dir)
SWEEPS = Path(str(files("lesson5.sweeps")))
SAMPLERS = ("grid", "tpe", "random")
# The budget: a claim is decided within 20 paired seeds, or reported inconclusive with the seeds it would take.
MAX_SEEDS = 20
PRUNERS = ("none", "median", "hyperband", "halving")
POINT_META = ("look", "rung", halving.BUDGET)  # what a grid point carries besides its Optuna parameters


@dataclass
class Param:
    key: str  # a Hydra override key
    choices: Optional[list] = None  # categorical; else a numeric range
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    integer: bool = False

    def example(self) -> Any:
        """A value from the space, for checking that a trial's config composes."""
        return self.choices[0] if self.choices is not None else int(self.low) if self.integer else self.low

    def override(self, value: Any) -> str:
        """The Hydra override that sets this key to `value`."""
        return f"{self.key}={value}"


@dataclass
class Study:
    name: str
    path: Path
    claim: str
    rule: dict
    space: list[Param]
    base: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [42])
    metric: str = "valid_rmse"
    direction: str = "minimize"
    sampler: str = "tpe"
    pruner: dict = field(default_factory=lambda: {"name": "none"})
    n_trials: int = 0
    max_fail_rate: float = 0.5
    final: Optional[list[str]] = None  # overrides for scoring the best recipe and the base once the study is done
    control: Optional[dict] = None  # a claim that must come out "not reproduced"
    max_seeds: int = 1  # the most seeds a setting gets (grid studies add seeds between looks)
    looks: int = 1  # planned looks at the verdict
    added: list[dict[str, Any]] = field(default_factory=list)  # points later looks added, each with its "look"
    stack: Union[int, str] = "auto"  # trials a worker trains as one stack: a whole number, or auto (parse_stack)
    budgets: list[int] = field(default_factory=list)  # pruner halving: each rung's trainer.epochs; [] otherwise

    def grid(self) -> list[dict[str, Any]]:
        """Every point of a grid study, each at each seed: the trials' parameters, in order."""
        names = [p.key for p in self.space]
        return [{**dict(zip(names, values)), "trainer.seed": seed}
                for values in itertools.product(*(p.choices for p in self.space)) for seed in self.seeds]

    def points(self) -> list[dict[str, Any]]:
        """A grid study's points to run, in order: look 1's (the grid, up to n_trials), then those later looks (or
        halving's rungs) added; each has its params, "look" and, under halving, its "rung" and epochs. [] for a
        sampler that picks its own points."""
        if self.sampler != "grid":
            return []
        first = {"look": 1, **({"rung": 1, halving.BUDGET: self.budgets[0]} if self.budgets else {})}
        return [{**p, **first} for p in self.grid()[:self.n_trials]] + [dict(p) for p in self.added]

    def total(self) -> int:
        """How many trials the study runs: n_trials, and for a grid study the points later looks added."""
        return self.n_trials + (len(self.added) if self.sampler == "grid" else 0)

    def seeds_at(self, look: int) -> list[int]:
        """The seeds a setting has by look `look`: the file's, then the next whole numbers after the largest, more
        at each look, evenly, up to max_seeds at the last."""
        n = len(self.seeds)
        if self.looks > 1:
            n += round((self.max_seeds - n) * (look - 1) / (self.looks - 1))
        return [*self.seeds, *range(max(self.seeds) + 1, max(self.seeds) + 1 + n - len(self.seeds))]

    def rules(self) -> dict[str, dict]:
        """The claim's rule and, if any, the control's, by their key in the file."""
        return {"rule": self.rule, **({"control": self.control} if self.control is not None else {})}


def shipped() -> list[str]:
    """The names of the studies shipped with lesson5."""
    return sorted(p.stem for p in SWEEPS.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """A study's file: a path as given (relative to the working folder), else a shipped study by its name."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists() or len(path.parts) > 1:
        if not path.is_file():
            raise ConfigError(f"study file {path} ({path.resolve()}) does not exist: give the path of a study "
                              f"file, or the name of a shipped study ({', '.join(shipped())})")
        return path.resolve()
    own = SWEEPS / f"{name_or_path}.yaml"
    if not own.is_file():
        raise ConfigError(f"no study {name_or_path!r}: give a study file, or one of {', '.join(shipped())}")
    return own


def _param(path: Path, key: str, raw: Any) -> Param:
    where = f"{path}: space.{key}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected {{choices: [...]}} or {{low: .., high: ..}}, got {raw!r}")
    unknown = set(raw) - {"choices", "low", "high", "log", "int"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; use choices, or low, high, log, int")
    if "choices" in raw:
        if not isinstance(raw["choices"], list) or not raw["choices"]:
            raise ConfigError(f"{where}.choices: an empty or missing list; give at least one value")
        # a list value (y_range) becomes its Hydra override text, which Optuna can store as a categorical choice
        return Param(key, choices=[json.dumps(c, separators=(",", ":")) if isinstance(c, list) else c
                                   for c in raw["choices"]])
    try:
        low, high = float(raw["low"]), float(raw["high"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{where}: a range needs numbers low and high") from None
    if not low < high or (raw.get("log") and low <= 0):
        raise ConfigError(f"{where}: empty range [{low}, {high}]" + (" (log needs low > 0)" if raw.get("log") else ""))
    return Param(key, low=low, high=high, log=bool(raw.get("log")), integer=bool(raw.get("int")))


def load(name_or_path: str, overrides: list[str] = ()) -> Study:
    """Read and check a study file; `overrides` (from the command line) are added to its base."""
    path = resolve(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} does not parse as YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of study fields")
    known = {"claim", "rule", "control", "base", "space", "seeds", "max_seeds", "looks", "objective", "sampler",
             "pruner", "n_trials", "max_fail_rate", "final", "stack"}
    if set(raw) - known:
        raise ConfigError(f"{path}: unknown field(s) {sorted(set(raw) - known)}; known: {sorted(known)}")
    for key in ("claim", "rule", "space", "objective"):
        if not raw.get(key):
            raise ConfigError(f"{path}: `{key}` is missing")
    if not isinstance(raw["space"], dict):
        raise ConfigError(f"{path}: space: expected a mapping of override keys to {{choices: [...]}} or ranges")
    space = [_param(path, k, v) for k, v in raw["space"].items()]
    objective = raw["objective"]
    pruner = raw.get("pruner", "none")
    pruner = {"name": pruner} if isinstance(pruner, str) else dict(pruner)
    seeds = raw.get("seeds", [42])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{path}: seeds: {seeds!r} is not a list of whole numbers (trainer.seed values)")
    study = Study(name=path.stem, path=path, claim=str(raw["claim"]).strip(), rule=raw["rule"], space=space,
                  base=[*raw.get("base", []), *overrides], seeds=list(seeds), control=raw.get("control"),
                  metric=objective.get("metric", ""), direction=objective.get("direction", "minimize"),
                  sampler=raw.get("sampler", "tpe"), pruner=pruner, max_fail_rate=float(raw.get("max_fail_rate", 0.5)),
                  final=list(raw["final"]["overrides"]) if raw.get("final") else None)
    study.stack = parse_stack(raw.get("stack", "auto"), f"{path}: stack")
    conf = _check(study, raw.get("n_trials"), list(overrides))
    _check_looks(study, raw.get("max_seeds", len(study.seeds)), raw.get("looks", 1))
    check_pruner(study, conf)
    return study


def parse_stack(value: Any, where: str = "stack") -> Union[int, str]:
    """A stack size: `auto` (lesson5.sweep.worker picks one by measurement and memory) or a positive integer."""
    if value == "auto":
        return "auto"
    try:
        k = int(str(value))
    except ValueError:
        k = 0
    if k < 1 or isinstance(value, (bool, float)):
        raise ConfigError(f"{where}={value!r}: give a positive whole number of trials to train as one stack, or "
                          f"auto (1 trains each trial alone)")
    return k


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_looks(study: Study, max_seeds: Any, looks: Any) -> None:
    """max_seeds and looks: whole numbers that give every later look at least one new seed, within MAX_SEEDS."""
    path, n = study.path, len(study.seeds)
    if study.sampler != "grid":
        if max_seeds != n or looks != 1:
            raise ConfigError(f"{path}: max_seeds: {max_seeds!r}, looks: {looks!r}: a {study.sampler} study samples "
                              f"one point per trial and adds no seeds; leave both out (or max_seeds: {n}, looks: 1)")
        study.max_seeds, study.looks = n, 1
        return
    if not _whole(max_seeds) or not n <= max_seeds <= MAX_SEEDS:
        raise ConfigError(f"{path}: max_seeds: {max_seeds!r} is not a whole number from {n} (the seeds listed) to "
                          f"{MAX_SEEDS}")
    if not _whole(looks) or not 1 <= looks <= 1 + max_seeds - n:
        raise ConfigError(f"{path}: looks: {looks!r} is not a whole number from 1 to {1 + max_seeds - n} (each look "
                          f"after the first adds at least one seed, from {n} seeds up to max_seeds {max_seeds})")
    if (looks == 1) != (max_seeds == n):
        raise ConfigError(f"{path}: looks: {looks} with max_seeds: {max_seeds} and {n} seeds: seeds are added only "
                          f"between looks, so give looks >= 2 with max_seeds above {n}, or looks: 1 and max_seeds: {n}")
    study.max_seeds, study.looks = max_seeds, looks


def check_pruner(study: Study, conf=None, where: Optional[str] = None) -> None:
    """Refuse a pruner name that is not one of PRUNERS, and a halving that cannot run (lesson5.sweep.halving.check,
    on `conf`, the base's validated config, composed when not given); set the study's rung budgets."""
    if study.pruner.get("name") not in PRUNERS:
        raise ConfigError(f"{where or f'{study.path}: pruner'}: {study.pruner.get('name')!r} is not one of "
                          f"{', '.join(PRUNERS)}")
    study.budgets = []
    if study.pruner["name"] == "halving":
        study.budgets = halving.check(study, conf or validate(compose(study.base)), where)


def _blame(study: Study, overrides: list[str], extra: list[str], error: Exception, what: str) -> ConfigError:
    """The error for a config that does not compose or validate: the command line's overrides are named when the
    study file's own base composes without them, the file otherwise (`what` says which of its parts)."""

    message = str(error) if isinstance(error, ConfigError) else describe(error)
    if overrides:
        own = study.base[:len(study.base) - len(overrides)]
        try:
            validate(compose([*own, *extra]))
        except Exception:  # noqa: BLE001 - the file is wrong too: say so, as below
            pass
        else:
            return ConfigError(f"the command line's {' '.join(overrides)}: {message} (the study file {study.path} "
                               f"composes without them)")
    return ConfigError(f"{study.path}: {what}: {message}")


def _check(study: Study, n_trials: Optional[int], overrides: list[str] = ()):
    """Everything about the study that can be wrong, before a trial runs: choices, the rule, and one trial's
    config (so an unknown key, a bad value or an objective its model does not log is caught here). A config
    that only the command line's `overrides` break is blamed on them, not on the file. Returns that config."""
    from lesson5 import models  # here, not at the top: it imports torch, which the sweep driver never needs

    path = study.path
    if study.sampler not in SAMPLERS:
        raise ConfigError(f"{path}: sampler: {study.sampler!r} is not one of {SAMPLERS}")
    if study.direction not in ("minimize", "maximize"):
        raise ConfigError(f"{path}: objective.direction: {study.direction!r} is not minimize or maximize")
    if not study.seeds or len(study.seeds) != len(set(study.seeds)):
        raise ConfigError(f"{path}: seeds: give distinct trainer.seed values")
    if study.sampler == "grid":
        ranges = [p.key for p in study.space if p.choices is None]
        if ranges:
            raise ConfigError(f"{path}: space.{ranges[0]}: a grid study needs choices, not a range")
        study.n_trials = int(n_trials or len(study.grid()))
        if study.n_trials > len(study.grid()):
            raise ConfigError(f"{path}: n_trials={study.n_trials} is more than the grid's {len(study.grid())} points")
    else:
        if len(study.seeds) > 1:
            raise ConfigError(f"{path}: seeds: a {study.sampler} study samples one point per trial, so it takes "
                              f"one seed (repeat seeds with sampler: grid)")
        study.n_trials = int(n_trials or 20)
    if study.n_trials < 1:
        raise ConfigError(f"{path}: n_trials must be >= 1")
    first = [p.override(p.example()) for p in study.space]
    seed = [f"trainer.seed={study.seeds[0]}"]
    try:
        conf = validate(compose([*study.base, *first, *seed]))
    except ConfigError as e:
        raise _blame(study, overrides, [*first, *seed], e, "a trial's config is invalid") from None
    except Exception as e:  # noqa: BLE001 - Hydra's composition errors name the key
        raise _blame(study, overrides, [*first, *seed], e, "base or space names something Hydra cannot compose") \
            from None
    logged = models.LOGGED[models.LOSSES[conf.model.name]]
    if study.metric not in logged:
        raise ConfigError(f"{path}: objective.metric: {study.metric!r} is not logged by model "
                          f"{conf.model.name}; it logs {', '.join(logged)}")
    if study.final is not None:
        try:
            validate(compose([*study.base, *first, *study.final]))
        except Exception as e:  # noqa: BLE001 - ConfigError or Hydra's composition errors
            raise _blame(study, overrides, [*first, *study.final], e, "final.overrides do not compose with the base") \
                from None
    check_rule(study)
    if study.control is not None:
        check_rule(study, study.control, "control")
        if study.control == study.rule:
            raise ConfigError(f"{path}: control: the same claim as rule; a control is a claim that must come out "
                              f"\"not reproduced\", such as a value known to be poor")
        if study.control.get("kind") == "final":
            try:
                validate(compose([*study.base, *first, *study.final, *study.control["overrides"]]))
            except Exception as e:  # noqa: BLE001 - ConfigError or Hydra's composition errors
                raise _blame(study, overrides, [*first, *study.final, *study.control["overrides"]], e,
                             "control.overrides do not compose with the base") from None
    return conf
