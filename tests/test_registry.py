"""Each model, data set and optimizer is declared once; every table derives from the declarations, and a user's own
model is one file plus LESSON5_PLUGINS."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.config_store import ConfigStore

from lesson5 import compose, models, optim
from lesson5.components import DATASETS, MODELS, OPTIMIZERS, DataSpec, ModelSpec, OptimSpec, declare
from lesson5.config import Impl, ModelConf, OptimConf, validate
from lesson5.errors import ConfigError
from lesson5.run import pick_device

ROOT = Path(__file__).resolve().parents[1]


def _cli(args, cwd, plugins="toy_model"):
    env = {**os.environ, "LESSON5_PLUGINS": plugins, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}"}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_a_model_in_one_file_trains_through_the_command_line(movielens_dir, tmp_path):
    done = _cli(["-m", "lesson5", "model=toy", f"data.path={movielens_dir}", "data.verify=false", "tracking=none",
                 "trainer.progress=false", "trainer.epochs=2", "model.start=3.0"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "valid_rmse" in done.stdout  # trained on its declared default data (ratings), with its declared loss
    done = _cli(["-m", "lesson5", "model=toy", "--cfg", "job"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "start: 3.5" in done.stdout and "lr: 0.03" in done.stdout and "bs: 128" in done.stdout  # its recipe


@pytest.mark.slow
def test_a_plugin_that_cannot_be_imported_is_named(tmp_path):
    done = _cli(["-c", "import lesson5; lesson5.compose()"], tmp_path, plugins="toy_model, no_such_plugin")
    assert done.returncode != 0
    assert "LESSON5_PLUGINS=toy_model, no_such_plugin: cannot import no_such_plugin" in done.stderr
    done = _cli(["-m", "lesson5", "model=toy"], tmp_path, plugins="toy_model, no_such_plugin")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "cannot import no_such_plugin" in done.stderr


def test_checking_configs_imports_no_torch(tmp_path):
    """The sweep driver checks configs and the models' losses without torch: the declarations keep it out."""
    code = ("import sys, lesson5.config, lesson5.models; from lesson5 import compose; compose(['model=resnet34']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    done = _cli(["-c", code], tmp_path, plugins="")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_table_is_derived_from_the_declarations():
    assert set(models.REGISTRY) == set(models.LOSSES) == set(models.GROUPS) == set(MODELS)
    assert {n for n, s in MODELS.items() if s.device == "cpu"} == {"collab", "logistic", "mlp"}
    assert models.GROUPS_OF_BODIES == {"resnet34": 3, "efficientnet_lite0": 3}
    for name, spec in MODELS.items():
        conf = validate(compose([f"model={name}"]))
        assert conf.data.name == spec.data  # data: of/${model}
        assert type(conf.model) is spec.schema and conf.model.name == name


@pytest.mark.parametrize("name", ["resnet34", "efficientnet_lite0"])
def test_the_vision_models_share_one_recipe(name):
    conf = validate(compose([f"model={name}"]))
    assert [(s.name, s.epochs, s.lr, s.frozen) for s in conf.trainer.stages] == [
        ("frozen", 1, 3e-3, True), ("unfrozen", 2, "slice(1e-5,1e-3)", False)]
    assert (conf.optim.wd, conf.trainer.threads) == (0.01, 0)


def test_the_device_preference_comes_from_the_declaration():
    assert pick_device("auto", "mlp").type == "cpu"
    assert pick_device("auto", "efficientnet_lite0").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("change, message", [
    (dict(name="collab"), "already declared"),
    (dict(loss="hinge"), "loss='hinge' is not one of mse, cross_entropy"),
    (dict(data="ratings"), "data='ratings' is not a declared data set"),
    (dict(groups=0), "groups must be >= 1"),
    (dict(device="gpu"), "device auto or cpu"),
    (dict(schema=dict), "schema must be a dataclass"),
    (dict(name="my-model"), "a Python identifier"),
])
def test_a_bad_declaration_is_refused_naming_what_is_wrong(change, message):
    good = dict(name="fresh", schema=ModelConf, build="x:y", loss="mse", data="movielens", recipe={})
    with pytest.raises(ConfigError, match=message):
        declare(ModelSpec(**{**good, **change}))
    assert "fresh" not in MODELS and "my-model" not in MODELS


def test_a_data_set_name_is_declared_once():
    with pytest.raises(ConfigError, match="data set 'mnist' cannot be declared: another data set of that name is"):
        declare(DataSpec(name="mnist", schema=DATASETS["mnist"].schema, build="x:y", gives="flat 28x28 images"))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_an_optimizer_is_built_and_scheduled_as_declared(name):
    spec = OPTIMIZERS[name]
    assert f"{name}.yaml" in ConfigStore.instance().list("optim")  # optim=<name>
    conf = validate(compose([f"optim={name}"])).optim
    params = [list(torch.nn.Linear(3, 2).parameters())]
    for impl in Impl:
        conf.impl = impl
        group = optim.build(conf, params, [conf.lr]).param_groups[0]
        key = optim.momentum_key(conf)
        assert (key is None) == (spec.momentum is None) and (key is None or key in group)  # what the schedule moves
    assert type(optim.build(conf, params, [conf.lr])) is spec.builder(spec.scratch)


def test_an_optimizer_name_is_declared_once_and_an_undeclared_one_is_refused():
    with pytest.raises(ConfigError, match="optimizer 'adam' cannot be declared: another optimizer of that name is"):
        declare(OptimSpec(name="adam", schema=OptimConf, build="x:y", scratch="x:Y"))
    with pytest.raises(ConfigError, match="optim=nadam is not declared here \\(only sgd, momentum, rmsprop, adam\\)"):
        validate(compose(["optim.name=nadam"]))


def test_a_model_whose_layer_groups_differ_from_its_declaration_is_refused(monkeypatch):
    monkeypatch.setitem(MODELS, "logistic", dataclasses.replace(MODELS["logistic"], groups=2))
    data = type("Data", (), {"sizes": {"n_inputs": 784, "n_classes": 10}})()
    with pytest.raises(ConfigError, match="layer_groups\\(\\) returns 1 groups but its declaration says groups=2"):
        models.build(validate(compose(["model=logistic", "data=mnist"])).model, data)


def test_an_undeclared_model_name_is_refused_by_validate():
    with pytest.raises(ConfigError, match="model=nothing is not declared here"):
        validate(compose(["model.name=nothing"]))
