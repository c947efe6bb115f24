"""Core: each model, data set and optimizer is declared once (ModelSpec, DataSpec, OptimSpec); tables derive from it.

A declaration holds a component's facts: its schema (keys, defaults, ranges), its builder, for a model its loss,
layer-group count, default data, device preference and recipe, and for an optimizer its scratch class, the keys it
reads and its momentum's key. `declare` files it under its name and puts its Hydra options in the ConfigStore:
`model=<name>`, `data=<name>`, `optim=<name>`, and the model's `data: of/<name>` and `recipe: <name>`
(conf/config.yaml's defaults), so no YAML file repeats it. `lesson5.config` declares the built-in ones;
`lesson5.models`, `lesson5.data`, `lesson5.optim` and `lesson5.run` read these tables.

Adding a model takes one file and one line (tests/toy_model.py is one). The file declares it::

    # my_model.py
    from dataclasses import dataclass
    from lesson5.components import ModelSpec, declare
    from lesson5.config import ModelConf, rule

    @dataclass
    class WideConf(ModelConf):
        width: int = rule(lambda v: v >= 1, "an integer >= 1", 100)

    declare(ModelSpec(name="wide", schema=WideConf, build="my_model:build", loss="cross_entropy",
                      data="mnist", recipe={"optim": {"lr": 1e-2}, "trainer": {"epochs": 3}}))

and the line registers it: `LESSON5_PLUGINS=my_model` in the environment (comma-separated modules on the Python
path), imported whenever `lesson5.config` is, so `python -m lesson5 model=wide`, `lesson5.compose`, sweeps and
their workers all see it. `build(conf, data)` returns an `nn.Module` whose `layer_groups()` gives `groups` lists
of parameters. The built-in declarations name their builders ("module:function") so that checking a config
imports no torch (the sweep driver's case); a plugin that imports torch at its top brings torch along.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Optional, Union

from hydra.core.config_store import ConfigStore

from lesson5.errors import ConfigError

PLUGINS_ENV = "LESSON5_PLUGINS"
# What an epoch reports for each loss a model may declare (train_loss and what lesson5.metrics computes), for
# checking a sweep's objective without torch; tests/test_sweep.py ties it to the code.
LOGGED = {"mse": ("train_loss", "valid_loss", "valid_rmse", "valid_mae"),
          "cross_entropy": ("train_loss", "valid_loss", "valid_accuracy")}


@dataclass(frozen=True, kw_only=True)
class Spec:
    """What every declaration has: a name, a schema and a builder."""

    key: ClassVar[str]  # its config group
    name: str
    schema: type  # its lesson5.config.ModelConf, DataConf or OptimConf dataclass: keys, defaults, ranges
    build: Union[str, Callable]  # "module:function", imported only when it is built, or the function itself
    defaults: dict = field(default_factory=dict)  # where it differs from its schema's field defaults

    def node(self) -> Any:
        """The schema filled in for it: its Hydra option (`model=<name>`, `data=<name>`, `optim=<name>`)."""
        return self.schema(name=self.name, **self.defaults)

    def builder(self, ref: Union[str, Callable, None] = None) -> Callable:
        """Its build function (or `ref`, another of its functions or classes), imported now when given by name."""
        ref = self.build if ref is None else ref
        if callable(ref):
            return ref
        module, _, attr = ref.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"{self.key}={self.name}: {ref!r} cannot be imported ({e}); give it as "
                              f"'module:function'") from None


@dataclass(frozen=True, kw_only=True)
class DataSpec(Spec):
    """A data set: `build(conf) -> lesson5.data.Data`."""

    key: ClassVar[str] = "data"
    gives: str  # e.g. "ratings": a model reads the data sets that give what its default data gives


@dataclass(frozen=True, kw_only=True)
class ModelSpec(Spec):
    """A model: `build(conf, data) -> nn.Module`, and what is checked and chosen for it without torch."""

    key: ClassVar[str] = "model"
    loss: str  # a key of LOGGED (lesson5.losses has each)
    data: str  # the data set it reads unless data= says otherwise
    recipe: dict  # its task's hyper-parameters, merged at the top level: {"optim": {"lr": ...}, "trainer": ...}
    groups: int = 1  # how many layer groups its layer_groups() returns (stages give each its own lr)
    device: str = "auto"  # "cpu": trainer.device=auto keeps it off the GPU (too small for one to help)
    stacks: bool = False  # several trials of it can train as one stack (lesson5.stack): no stages, no pretrained body

    @property
    def takes_weights(self) -> bool:
        """Whether it loads pretrained weights (`model.weights`), which may name a run in the tracking store."""
        return any(f.name == "weights" for f in fields(self.schema))


@dataclass(frozen=True, kw_only=True)
class OptimSpec(Spec):
    """An optimizer: `build(param_groups, conf)` gives torch's, `scratch(param_groups, conf)` the lesson's."""

    key: ClassVar[str] = "optim"
    scratch: Union[str, Callable]  # its lesson5.optim.scratch class (optim.impl=scratch), "module:Class" as build
    uses: tuple[str, ...] = ()  # the optim keys it reads besides lr, wd and wd_mode: setting another one warns
    momentum: Optional[str] = None  # torch's param-group key the schedule moves its momentum in (betas: the first)


DATASETS: dict[str, DataSpec] = {}
MODELS: dict[str, ModelSpec] = {}
OPTIMIZERS: dict[str, OptimSpec] = {}


def declare(spec: Spec) -> None:
    """File a model, data set or optimizer under its name and put its Hydra options in the ConfigStore."""
    kind, table = {"model": ("model", MODELS), "data": ("data set", DATASETS),
                   "optim": ("optimizer", OPTIMIZERS)}[spec.key]
    problems = [] if spec.name.isidentifier() else ["its name must be a Python identifier"]
    if spec.name in table:
        problems.append(f"another {kind} of that name is already declared (by {table[spec.name].schema.__module__})")
    if not is_dataclass(spec.schema) or "name" not in {f.name for f in fields(spec.schema)}:
        problems.append("schema must be a dataclass derived from lesson5.config.ModelConf, DataConf or OptimConf")
    if isinstance(spec, ModelSpec):
        if spec.loss not in LOGGED:
            problems.append(f"loss={spec.loss!r} is not one of {', '.join(LOGGED)}")
        if spec.data not in DATASETS:
            problems.append(f"data={spec.data!r} is not a declared data set ({', '.join(DATASETS)})")
        if spec.groups < 1 or spec.device not in ("auto", "cpu"):
            problems.append("groups must be >= 1 and device auto or cpu")
    if problems:
        raise ConfigError(f"{kind} {spec.name!r} cannot be declared: {'; '.join(problems)}")
    table[spec.name] = spec
    cs = ConfigStore.instance()
    cs.store(group=spec.key, name=spec.name, node=spec.node())
    if not isinstance(spec, ModelSpec):
        return
    cs.store(group="data/of", name=spec.name, node=DATASETS[spec.data].node())  # config.yaml: data: of/${model}
    cs.store(group="recipe", name=spec.name, node=spec.recipe, package="_global_")  # recipe: ${model}


def model_spec(name: str) -> ModelSpec:
    """The declaration of model=name, or a ConfigError naming those declared."""
    return _find(MODELS, "model", name)


def data_spec(name: str) -> DataSpec:
    """The declaration of data=name, or a ConfigError naming those declared."""
    return _find(DATASETS, "data", name)


def optim_spec(name: str) -> OptimSpec:
    """The declaration of optim=name, or a ConfigError naming those declared."""
    return _find(OPTIMIZERS, "optim", name)


def _find(table: dict, key: str, name: str):
    if name not in table:
        raise ConfigError(f"{key}={name} is not declared here (only {', '.join(table)}); a plugin's needs its "
                          f"module in {PLUGINS_ENV}")
    return table[name]


def load_plugins() -> Optional[ConfigError]:
    """Import the modules named in $LESSON5_PLUGINS (comma-separated), each declaring its components. One that
    cannot be imported is returned, not raised: `config.compose` and `validate` raise it, so that every entry
    point refuses it with its own exit code rather than a traceback at import."""
    value = os.environ.get(PLUGINS_ENV, "")
    for module in filter(None, (m.strip() for m in value.split(","))):
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - not found, a syntax error, a declaration refused: all the plugin's
            return ConfigError(f"{PLUGINS_ENV}={value}: cannot import {module} ({e}). Put its folder on PYTHONPATH "
                               f"(or install it), or remove it from {PLUGINS_ENV}.")
    return None

