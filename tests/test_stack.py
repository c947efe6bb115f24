"""Stacked trials (lesson5.stack): a member of a stack is the same trial run alone, only trained together."""

from __future__ import annotations

import pytest
import torch
from test_mnist import write_idx_folder

from lesson5 import data as datasets
from lesson5 import stack
from lesson5.callback import Callback
from lesson5.config import validate
from lesson5.errors import ConfigError, DivergedError
from lesson5.lifecycle import quiet_config
from lesson5.run import build_model, run, run_stack
from lesson5.sweep import spec


class Epochs(Callback):
    """Every epoch's metrics, as the callback sees them (a member sees only its own)."""

    order = 40

    def __init__(self):
        self.rows = []

    def after_epoch(self, learn):
        self.rows.append(dict(learn.metrics))


def fit_stack(members: list[list[str]], base: list[str], extra=None):
    confs = [validate(quiet_config([*base, *m])) for m in members]
    device = torch.device("cpu")
    data = datasets.build(confs[0].data)
    seen = [[Epochs(), *(extra[k] if extra else [])] for k in range(len(members))]
    learn = stack.learner(confs, data.folds[0], [build_model(c, data, device) for c in confs], device, seen)
    learn.fit(confs[0].trainer.epochs)
    return learn, [s[0].rows for s in seen]


def alone(overrides: list[str]) -> list[dict]:
    seen = Epochs()
    run(quiet_config(overrides), callbacks=[seen])
    return seen.rows


def assert_same_epochs(stacked: list[dict], single: list[dict], key: str, tol: float) -> None:
    assert len(stacked) == len(single) > 0
    for a, b in zip(stacked, single):
        assert abs(a[key] - b[key]) <= tol and abs(a["train_loss"] - b["train_loss"]) <= tol, (a, b)


def test_a_collab_stack_mixing_seeds_lr_wd_and_y_range_matches_each_trial_alone(movielens_dir):
    base = [f"data.path={movielens_dir}", "data.verify=false", "trainer.epochs=3"]
    members = [["trainer.seed=0"], ["trainer.seed=1", "optim.lr=0.02"], ["trainer.seed=2", "optim.wd=0.01"],
               ["trainer.seed=0", "model.y_range=[0,4.5]"]]
    learn, rows = fit_stack(members, base)
    assert learn.out == {}
    for m, got in zip(members, rows):
        assert_same_epochs(got, alone([*base, *m]), "valid_rmse", 1e-5)
    # the members did differ: the same numbers for all would hide a stack that trains one model K times
    assert len({round(r[-1]["valid_rmse"], 6) for r in rows}) == len(members)


def test_an_mlp_stack_with_momentum_sgd_matches_each_trial_alone(tmp_path):
    folder = write_idx_folder(tmp_path / "idx")
    base = ["model=mlp", "data=mnist", f"data.path={folder}", "optim=momentum",
            "schedule=constant", "trainer.epochs=2", "optim.lr=0.1"]
    members = [["trainer.seed=0"], ["trainer.seed=1", "optim.momentum=0.5"], ["trainer.seed=2", "optim.lr=0.3"]]
    _, rows = fit_stack(members, base)
    for m, got in zip(members, rows):
        assert_same_epochs(got, alone([*base, *m]), "valid_accuracy", 1e-5)


@pytest.mark.parametrize("name", ["sgd", "momentum", "rmsprop", "adam"])
def test_the_scratch_optimizers_in_a_stack_match_torchs(movielens_dir, name):
    """As tests/test_optim.py checks them for one model: the lesson's formulas against torch.optim, here as members
    of one stack with different lrs and weight decays."""
    base = [f"data.path={movielens_dir}", "data.verify=false", "trainer.epochs=2", f"optim={name}",
            "optim.lr=0.01" if name != "sgd" else "optim.lr=0.5"]
    members = [["trainer.seed=0"], ["trainer.seed=1", "optim.wd=0.01"]]
    _, torchs = fit_stack(members, base)
    _, scratch = fit_stack(members, [*base, "optim.impl=scratch"])
    for t, s in zip(torchs, scratch):
        assert_same_epochs(s, t, "valid_rmse", 1e-4)


def test_a_diverging_member_leaves_the_stack_and_the_others_go_on(movielens_dir):
    base = [f"data.path={movielens_dir}", "data.verify=false", "trainer.epochs=2", "optim=sgd",
            "model.y_range=null"]
    members = [["trainer.seed=0", "optim.lr=0.01"], ["trainer.seed=0", "optim.lr=1e6"]]
    learn, rows = fit_stack(members, base)
    assert list(learn.out) == [1] and isinstance(learn.out[1], DivergedError)
    assert "max lr now 1e+06" in str(learn.out[1])
    assert len(rows[1]) < len(rows[0]) == 2  # its callbacks stopped with it
    assert_same_epochs(rows[0], alone([*base, *members[0]]), "valid_rmse", 1e-5)


def test_a_member_whose_callback_raises_is_out_and_every_member_out_ends_the_fit(movielens_dir):
    class Prune(Callback):
        def after_epoch(self, learn):
            raise RuntimeError(f"pruned at epoch {learn.epoch + 1}")

    base = [f"data.path={movielens_dir}", "data.verify=false", "trainer.epochs=3"]
    learn, rows = fit_stack([["trainer.seed=0"], ["trainer.seed=1"]], base, extra=[[], [Prune()]])
    assert str(learn.out[1]) == "pruned at epoch 1" and 0 not in learn.out and len(rows[0]) == 3
    learn, rows = fit_stack([["trainer.seed=0"], ["trainer.seed=1"]], base, extra=[[Prune()], [Prune()]])
    assert len(learn.out) == 2 and learn.epoch == 0  # stopped after the first epoch, when the last member went


def test_run_stack_tracks_each_member_as_its_own_run(movielens_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    base = [f"data.path={movielens_dir}", "data.verify=false", "trainer.epochs=2",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=stack"]
    members = [["trainer.seed=0"], ["trainer.seed=1", "optim.lr=1e6", "optim=sgd", "model.y_range=null"]]
    with pytest.raises(ConfigError, match="stack"):  # members of different optimizers do not share a stack
        run_stack([quiet_config([*base, *m], track=True) for m in members], overrides=members)
    members = [["trainer.seed=0"], ["trainer.seed=1", "optim.lr=1e6"]]
    results = run_stack([quiet_config([*base, *m], track=True) for m in members], overrides=members)
    assert isinstance(results[1], DivergedError) and results[0].run_id
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = {r.data.tags["stack.member"]: r for r in client.search_runs(
        [client.get_experiment_by_name("stack").experiment_id])}
    assert runs["0"].info.status == "FINISHED" and runs["1"].info.status == "FAILED"
    assert runs["1"].data.tags["outcome"] == "diverged" and runs["0"].data.tags["stack.size"] == "2"
    assert runs["0"].data.params["trainer.seed"] == "0" and runs["1"].data.params["optim.lr"] == "1000000.0"
    history = client.get_metric_history(runs["0"].info.run_id, "valid_rmse")
    assert [round(m.value, 7) for m in history] == [round(r["valid_rmse"], 7) for r in alone([*base[:3],
                                                                                              *members[0]])]
    assert "weights.pt" in {a.path for a in client.list_artifacts(runs["0"].info.run_id)}


def test_a_stack_too_large_for_memory_is_refused_with_the_largest_that_fits(movielens_dir, monkeypatch):
    import lesson5.run

    monkeypatch.setattr(lesson5.run, "available_memory", lambda device: 10 * 2**20)
    base = [f"data.path={movielens_dir}", "data.verify=false", "trainer.epochs=1", "model.n_factors=400"]
    members = [[f"trainer.seed={s}"] for s in range(8)]
    with pytest.raises(ConfigError, match=r"sweep.stack=8: a stack of 8 needs about .* the largest that fits is \d"):
        run_stack([quiet_config([*base, *m]) for m in members], overrides=members)


def test_models_that_do_not_stack_are_named():
    from lesson5.run import stackable

    assert stackable(validate(quiet_config(["model=collab"]))) is None
    assert "resnet34" in stackable(validate(quiet_config(["model=resnet34"])))
    assert "batchnorm" in stackable(validate(quiet_config(["model=mlp", "model.batchnorm=true"])))


def test_stack_keys_group_what_members_may_differ_in():
    assert stack.stack_key(["model.n_factors=40", "trainer.seed=3", "optim.lr=0.1"]) == ("model.n_factors=40",)
    assert stack.stack_key(["optim.wd=0.1", "model.y_range=null"]) == ("model.y_range=null",)
    assert stack.stack_key(["optim=adam", "optim.lr=1"]) != stack.stack_key(["optim=sgd", "optim.lr=1"])


@pytest.mark.parametrize("bad", ["0", "-2", "x", "1.5", True])
def test_a_bad_stack_size_is_refused_naming_the_key(bad):
    with pytest.raises(ConfigError, match="stack"):
        spec.parse_stack(bad)
    assert spec.parse_stack("auto") == "auto" and spec.parse_stack("4") == 4


@pytest.mark.slow
def test_a_sweep_with_stacks_gives_each_trial_the_value_it_gets_alone(tmp_path, movielens_dir):
    """The same grid (two lrs x two seeds, collab) swept with stack=auto (one stack of four) and stack=1: every
    trial is its own Optuna trial and MLflow run, with the same value either way."""
    import optuna
    from test_sweep import runs_of, sweep, write_study

    args = [f"data.path={movielens_dir}", "data.verify=false", "trainer.epochs=2", "progress=false"]
    values = {}
    for stack_size in ("auto", "1"):
        folder = tmp_path / stack_size
        folder.mkdir()
        study = write_study(folder, space={"optim.lr": {"choices": [0.01, 0.02]}}, seeds=[0, 1],
                            rule={"kind": "best", "param": "optim.lr", "value": 0.01},
                            control={"kind": "best", "param": "optim.lr", "value": 0.02})
        done = sweep(folder, study, f"stack={stack_size}", *args)
        assert done.returncode == 0, done.stderr[-3000:]
        opt = optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(folder / "sweeps.journal"))))
        assert sorted(t.user_attrs["stack"] for t in opt.trials) == ([4] * 4 if stack_size == "auto" else [1] * 4)
        values[stack_size] = {(t.params["optim.lr"], t.params["trainer.seed"]): t.value for t in opt.trials}
        (parent,), children = runs_of(folder, "tiny")
        assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
        assert parent.info.status == "FINISHED"
    assert values["auto"].keys() == values["1"].keys()
    assert all(abs(values["auto"][k] - values["1"][k]) <= 1e-6 for k in values["1"])
    bad = sweep(tmp_path, tmp_path / "1" / "tiny.yaml", "stack=0", *args)
    assert bad.returncode == 2 and "stack=0: give a positive whole number" in bad.stderr


def test_the_stack_size_is_the_measured_one_capped_by_memory_and_a_size_memory_cannot_hold_is_refused(
        movielens_dir, monkeypatch):
    import lesson5.run
    from lesson5.stack_size import AUTO, stack_size

    cfg = quiet_config([f"data.path={movielens_dir}", "data.verify=false", "trainer.device=cpu"])
    assert stack_size(cfg) == (AUTO[("collab", "cpu")], None) and stack_size(cfg, 1) == (1, None)
    monkeypatch.setattr(lesson5.run, "stack_capacity", lambda cfg: 3)  # as if memory held 3
    assert stack_size(cfg) == (3, None) and stack_size(cfg, 2) == (2, None)
    with pytest.raises(ConfigError, match=r"stack=5: .* the largest that fits is 3"):
        stack_size(cfg, 5)
    size, why = stack_size(quiet_config(["model=resnet34"]), 4)
    assert size == 1 and "model=resnet34" in why


def test_a_sweep_claims_an_ensemble_point_alone_and_stacks_the_points_that_can(tmp_path):
    """stack_size judges a study by its first point; a space that also holds trainer.ensemble=2 (a stack of its
    own) must claim those points one at a time, or run_stack would refuse them and every such trial would fail."""
    import optuna
    from test_sweep import write_study

    from lesson5.sweep.worker import _claim

    study = spec.load(str(write_study(tmp_path, space={"trainer.ensemble": {"choices": [1, 2]}}, seeds=[0, 1],
                                      rule={"kind": "best", "param": "trainer.ensemble", "value": 2},
                                      control={"kind": "best", "param": "trainer.ensemble", "value": 1})))
    opt = optuna.create_study()
    first = _claim(study, opt, 8)
    assert [c["params"]["trainer.ensemble"] for c in first] == [1, 1]  # seeds 0 and 1 of K=1: one stack
    for c in first:  # their trials finish
        opt.enqueue_trial(c["params"], user_attrs=c["user_attrs"])
        opt.tell(opt.ask(), 1.0)
    assert [c["params"]["trainer.ensemble"] for c in _claim(study, opt, 8)] == [2]  # K=2: alone
