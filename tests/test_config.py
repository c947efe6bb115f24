"""Bad config values are refused before any data is fetched or any MLflow run exists."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import ValidationError

from lesson5 import compose
from lesson5 import data as datasets
from lesson5.components import DATASETS, MODELS, OPTIMIZERS
from lesson5.config import flatten, ignored, validate
from lesson5.errors import ConfigError
from lesson5.run import run

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def test_defaults_are_the_lesson_recipe():
    conf = validate(compose())
    assert (conf.model.n_factors, conf.model.y_range) == (40, [0.0, 5.5])
    assert (conf.optim.name, conf.optim.lr, conf.optim.wd, conf.optim.wd_mode.value) == \
        ("adam", 5e-3, 0.1, "decoupled")
    assert (conf.optim.momentum, conf.optim.sqr_mom, conf.optim.eps) == (0.9, 0.99, 1e-5)
    assert (conf.schedule.name.value, conf.trainer.epochs, conf.trainer.bs) == ("one_cycle", 5, 64)
    assert (conf.data.split.value, conf.data.valid_pct, conf.data.seed) == ("random", 0.1, 42)


def test_experiment_recipe_composes_to_the_defaults():
    assert flatten(compose(["experiment=lesson5_collab"])) == flatten(compose())


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_validates(name):
    conf = validate(compose([f"experiment={name}"]))
    assert conf.model.name and conf.trainer.epochs >= 1


def test_the_model_brings_its_recipe_and_the_command_line_wins():
    mlp = validate(compose(["model=mlp", "data=mnist"]))
    assert (mlp.optim.lr, mlp.optim.wd, mlp.trainer.epochs) == (1e-2, 0.0, 10)
    assert validate(compose(["model=mlp", "data=mnist", "optim.wd=0.05"])).optim.wd == 0.05
    assert validate(compose(["experiment=mnist_lesson"])).trainer.epochs == 1  # an experiment wins over a recipe


def _option_files():
    for group in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name != "experiment"):
        yield from sorted(group.glob("*.yaml"))


@pytest.mark.parametrize("path", list(_option_files()), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_option_file_repeats_a_schema_default(path):
    """Every default has one home: an option file sets only what differs from its schema's field defaults."""
    from hydra.core.config_store import ConfigStore

    body = OmegaConf.load(path)
    (base,) = [d for d in body.pop("defaults") if d != "_self_"]
    schema = ConfigStore.instance().load(f"{path.parent.name}/{base}.yaml").node
    repeated = [k for k, v in body.items() if k != "name" and OmegaConf.to_container(OmegaConf.create({"v": v}))
                == OmegaConf.to_container(OmegaConf.create({"v": schema[k]}), enum_to_str=True)]
    assert not repeated, f"{path} repeats the schema's defaults for {repeated}"


@pytest.mark.parametrize("spec", [*MODELS.values(), *DATASETS.values(), *OPTIMIZERS.values()], ids=lambda s: s.name)
def test_no_declaration_repeats_a_schema_default(spec):
    """A model's, data set's or optimizer's declared defaults set only what differs from its schema's field defaults."""
    schema = OmegaConf.structured(spec.schema)
    repeated = [k for k, v in spec.defaults.items() if v == OmegaConf.to_container(schema)[k]]
    assert not repeated, f"{spec.name} repeats the schema's defaults for {repeated}"


def test_log_every_n_steps_must_be_positive():
    with pytest.raises(ConfigError, match="tracking.log_every_n_steps=0"):
        validate(compose(["tracking.log_every_n_steps=0"]))


@pytest.mark.parametrize("override, key, allowed", [
    ("model.n_factors=0", "model.n_factors", "integer in [1, 4096]"),
    ("optim.lr=-1", "optim.lr", "> 0"),
    ("data.valid_pct=1.5", "data.valid_pct", "between 0 and 1"),
    ("model.y_range=[5,1]", "model.y_range", "low < high"),
    ("schedule.moms=[0.9,1.2,0.9]", "schedule.moms", "[0, 1)"),
    ("trainer.epochs=0", "trainer.epochs", "integer in [1, 10,000]"),
])
def test_out_of_range_values_name_the_key(override, key, allowed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "build", lambda conf: pytest.fail("data fetched before validation"))
    with pytest.raises(ConfigError) as err:
        run(compose([override, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]))
    assert key in str(err.value) and allowed in str(err.value)
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run was created


def test_every_bad_key_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        validate(compose(["optim.lr=0", "model.n_factors=-3"]))
    assert "optim.lr" in str(err.value) and "model.n_factors" in str(err.value)


@pytest.mark.parametrize("override", ["optim.impl=numpy", "data.split=u9", "optim.wd_mode=l1"])
def test_unknown_choices_are_refused_while_composing(override):
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose([override])
    assert override.split("=")[0].split(".")[-1] in str(err.value) or override.split("=")[1] in str(err.value)


def test_unknown_config_group_option_is_refused():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["model=colab"])
    assert "collab" in str(err.value)


@pytest.mark.slow
def test_cli_unknown_model_lists_choices_and_exits_nonzero(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lesson5", "model=colab"], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "Available options in 'model'" in done.stderr and "collab" in done.stderr


@pytest.mark.slow
def test_cli_out_of_range_value_exits_nonzero_with_the_key(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lesson5", "data.valid_pct=1.5"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "data.valid_pct=1.5" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("overrides, fix", [
    (["model=mlp", "data=movielens"], "add data=mnist or data=fashion_mnist"),
    (["model=logistic", "data=movielens"], "add data=mnist or data=fashion_mnist"),
    (["model=collab", "data=mnist"], "add data=movielens"),
    (["model=resnet34", "data=mnist"], "add data=images"),
], ids=["mlp on ratings", "logistic on ratings", "collab on images", "resnet34 on flat images"])
def test_a_model_given_data_it_cannot_read_says_which_data_to_use(overrides, fix, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "build", lambda conf: pytest.fail("data fetched before the check"))
    with pytest.raises(ConfigError, match=fix):
        run(compose([*overrides, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]))
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_device_this_machine_lacks_is_refused_before_any_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "build", lambda conf: pytest.fail("data fetched before the check"))
    with pytest.raises(ConfigError, match="trainer.device=cuda: this machine has no CUDA device"):
        run(compose(["trainer.device=cuda", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]))
    assert not (tmp_path / "mlflow.db").exists()


def test_a_value_the_chosen_component_ignores_gets_a_warning_naming_it(tiny, capsys):
    run(compose([*tiny, "tracking=none", "trainer.epochs=1", "optim=sgd", "optim.momentum=0.9"]),
        overrides=["optim=sgd", "optim.momentum=0.9", "schedule.div=10"])
    err = capsys.readouterr().err
    assert "warning: optim.momentum=0.9 is ignored with optim=sgd: use optim=momentum" in err
    assert "schedule.div" not in err  # one-cycle, the default, uses it


@pytest.mark.parametrize("optimizer, warned", [
    ("sgd", ["optim.momentum=0.5 is ignored with optim=sgd: use optim=momentum or optim=adam",
             "optim.eps=1e-06 is ignored with optim=sgd: use optim=rmsprop or optim=adam"]),
    ("rmsprop", ["optim.momentum=0.5 is ignored with optim=rmsprop: use optim=momentum or optim=adam"]),
    ("momentum", ["optim.eps=1e-06 is ignored with optim=momentum: use optim=rmsprop or optim=adam"]),
    ("adam", []),
])
def test_the_optimizer_keys_warned_about_are_those_it_does_not_declare(optimizer, warned):
    overrides = [f"optim={optimizer}", "optim.momentum=0.5", "optim.eps=1e-06", "optim.lr=0.1"]
    assert ignored(validate(compose(overrides)), overrides) == warned


# ---- unknown keys, upper bounds, batches of one (issue 21) --------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("+trainer.foo=1", "trainer.foo: unknown key"),
    ("+trainer.epochz=1", "trainer.epochz: unknown key; did you mean trainer.epochs?"),
    ("+foo=1", "foo: unknown key"),
    ("+model.hidden=[10]", "hidden is a key of model=mlp"),
    ("+optim.momentom=0.5", "optim.momentom: unknown key; did you mean optim.momentum?"),
])
def test_a_key_the_schema_lacks_is_refused_naming_it_and_its_close_match(override, message, tmp_path, monkeypatch):
    """Hydra lets `+key=value` add a key to a structured config (its own error for `trainer.foo=1` suggests it);
    nothing would read it, so validate refuses it, before any data or run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "build", lambda conf: pytest.fail("data fetched before validation"))
    with pytest.raises(ConfigError, match=re.escape(message)):
        run(compose([override, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]))
    assert not (tmp_path / "mlflow.db").exists()


def test_an_unknown_key_in_a_sweep_trial_is_refused():
    """A sweep's trials compose their overrides with lesson5.config.compose and validate them, as here."""
    with pytest.raises(ConfigError, match=re.escape("trainer.epochz: unknown key; did you mean trainer.epochs?")):
        validate(compose(["+trainer.epochz=1"]))
    with pytest.raises(ConfigError, match=re.escape("trainer.stages.0.lrr: unknown key; did you mean "
                                                    "trainer.stages.0.lr?")):
        validate(compose(["model=resnet34", "+trainer.stages.0.lrr=1"]))


def test_a_free_form_field_takes_any_key():
    """A component declares free-form extras with a dict field: keys under it are not checked."""
    from dataclasses import dataclass, field

    from lesson5.config import _unknown

    @dataclass
    class WithExtras:
        n: int = 1
        extras: dict = field(default_factory=dict)

    cfg = OmegaConf.structured(WithExtras)
    with open_dict(cfg):
        cfg.extras.anything = 3
        cfg.typo = 2
    assert _unknown(cfg) == [_unknown(cfg)[0]] and _unknown(cfg)[0].startswith("typo: unknown key")


@pytest.mark.slow
def test_cli_refuses_a_plus_key_the_schema_lacks(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lesson5", "+trainer.foo=1"], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "trainer.foo: unknown key" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("overrides, key, cost", [
    (["model.n_factors=100000"], "model.n_factors=100000", "4.2 GB with their gradients and Adam's two moments"),
    (["model=mlp", "model.hidden=[100000,100000]"], "model.hidden=[100000, 100000]", "10,079,600,010 weights"),
    (["model=resnet34", "model.hidden=100000"], "model.hidden=100000", "102,400,000 weights"),
    (["trainer.bs=10000000"], "trainer.bs=10000000", "larger than any lesson data set"),
    (["trainer.epochs=100000"], "trainer.epochs=100000", "would take at least 39 hours"),
    (["model=resnet34", "trainer.stages.0.epochs=100000"], "trainer.stages.0.epochs=100000", "hours"),
    (["model=resnet34", "data.size=5000"], "data.size=5000", "as float32 input"),
], ids=["n_factors", "mlp hidden", "head hidden", "bs", "epochs", "stage epochs", "image size"])
def test_a_value_that_can_only_be_a_mistake_is_refused_with_its_cost(overrides, key, cost):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert key in str(err.value) and cost in str(err.value)


def _grid_overrides(space: dict):
    """Each parameter of a study's space at each of its extremes (or choices), as overrides."""
    for key, dist in space.items():
        values = dist.get("choices") or [dist["low"], dist["high"]]
        for v in values:
            shown = "[" + ",".join(map(str, v)) + "]" if isinstance(v, list) else "null" if v is None else v
            yield key, f"{key}={shown}"


@pytest.mark.parametrize("study", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_no_value_of_a_study_grid_is_refused(study):
    spec = yaml.safe_load(study.read_text())
    for _, override in _grid_overrides(spec.get("space", {})):
        validate(compose([*spec.get("base", []), override]))


@pytest.mark.parametrize("overrides, fix", [
    (["model=mlp", "model.batchnorm=true", "trainer.bs=1"], "use trainer.bs=2 or more or model.batchnorm=false"),
    (["model=resnet34", "trainer.bs=1"], "use trainer.bs=2 or more"),
], ids=["mlp batchnorm", "resnet34"])
def test_a_batch_of_one_is_refused_for_batchnorm_models(overrides, fix):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert "trainer.bs=1" in str(err.value) and fix in str(err.value)


def test_a_batch_of_one_is_allowed_without_batchnorm():
    validate(compose(["model=mlp", "trainer.bs=1"]))
    validate(compose(["trainer.bs=1"]))


def test_a_base_schema_is_not_a_model_option():
    """model=base_collab: Hydra lists the models there are (the schemas are not among the options)."""
    with pytest.raises(ConfigCompositionException) as err:
        compose(["model=base_collab"])
    assert "model/base_collab" in str(err.value) and all(m in str(err.value) for m in MODELS)
    assert "recipe" not in str(err.value)


def test_compose_works_from_several_threads_at_once():
    # Hydra's compose uses one global instance: unguarded, 4 threads composing at once fail with "GlobalHydra is
    # already initialized" (the claims report measures its claims in threads)
    import threading

    got, errors = [], []

    def compose_some(seed: int) -> None:
        try:
            got.extend(compose([f"trainer.seed={seed}"]).trainer.seed for _ in range(5))
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=compose_some, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(got) == sorted(list(range(4)) * 5)
