"""Ensembles (trainer.ensemble=K, lesson5.ensemble): K seeds of one recipe as one stack in one run, predicting their
mean; each member is its seed trained alone."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient
from test_stack import Epochs

from lesson5 import bias, compose, interpret, recommend
from lesson5.data import movielens
from lesson5.errors import ConfigError, DivergedError
from lesson5.load import load_run
from lesson5.metrics import regression
from lesson5.models.ensemble import Ensemble
from lesson5.run import run


def _uri(tiny) -> str:
    return next(o for o in tiny if o.startswith("tracking.uri=")).split("=", 1)[1]


def _runs(tiny):
    client = MlflowClient(_uri(tiny))
    experiment = client.get_experiment_by_name("test")
    return client, ([] if experiment is None else client.search_runs([experiment.experiment_id]))


def test_ensemble_1_is_the_single_model_run(tiny):
    plain, one = (run(compose([*tiny, "tracking=none", *extra])) for extra in ([], ["trainer.ensemble=1"]))
    assert plain.metrics["valid_rmse"] == one.metrics["valid_rmse"]
    assert not isinstance(one.model, Ensemble) and not any(k.startswith("member") for k in one.metrics)


def test_each_member_reaches_the_epochs_of_its_seed_trained_alone(tiny):
    base = [*tiny, "tracking=none", "trainer.epochs=3", "trainer.seed=7"]
    seen = Epochs()
    run(compose([*base, "trainer.ensemble=3"]), callbacks=[seen])
    for k in range(3):
        alone = Epochs()
        run(compose([*base, f"trainer.seed={7 + k}"]), callbacks=[alone])
        assert len(seen.rows) == len(alone.rows) == 3
        for got, want in zip(seen.rows, alone.rows):
            for key in ("train_loss", "valid_rmse", "valid_loss"):
                assert got[f"member{k}/{key}"] == pytest.approx(want[key], abs=1e-5), (k, key)
    first = Epochs()
    run(compose(base), callbacks=[first])
    assert seen.rows[-1]["valid_rmse"] != first.rows[-1]["valid_rmse"]  # the run's keys are the ensemble's


def test_one_finished_run_whose_metric_is_the_mean_prediction_and_whose_model_loads(tiny, capsys):
    result = run(compose([*tiny, "trainer.ensemble=3"]))
    client, found = _runs(tiny)
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    logged = found[0].data.metrics
    assert {f"member{k}/valid_rmse" for k in range(3)} <= logged.keys() and "valid_rmse" in logged
    assert len(client.get_metric_history(result.run_id, "member2/valid_rmse")) == 2  # one per epoch

    loaded = load_run(result.run_id, _uri(tiny))
    assert isinstance(loaded.model, Ensemble) and len(loaded.model.members) == 3
    x, y = loaded.data.folds[0].valid
    with torch.no_grad():
        mean = torch.stack([m(x) for m in loaded.model.members]).mean(0)
        assert torch.allclose(loaded.model(x), mean)
    assert regression(mean, y)["valid_rmse"] == pytest.approx(logged["valid_rmse"], abs=1e-5)
    # the norm of a mean is at most the mean of the norms: never worse than its members on average
    assert regression(mean, y)["valid_rmse"] <= sum(logged[f"member{k}/valid_rmse"] for k in range(3)) / 3

    items, _ = bias.bias_tables(loaded.model, loaded.data, min_ratings=0)  # every item, sorted by bias
    mean_bias = torch.stack([m.item_bias.weight.detach()[1:, 0] for m in loaded.model.members]).mean(0)
    assert torch.allclose(torch.tensor(items.bias.to_numpy()), mean_bias.sort().values)
    assert bias.learned(loaded.model, "item_factors").shape[1] == 3 * loaded.conf.model.n_factors
    assert interpret.main([result.run_id, "min_ratings=20", f"tracking.uri={_uri(tiny)}"]) == 0
    assert recommend.main([result.run_id, "user=new", "k=3", "min_ratings=1", f"tracking.uri={_uri(tiny)}"]) == 0
    user = str(loaded.data.vocab["users"][1])
    assert recommend.main([result.run_id, f"user={user}", "k=3", f"tracking.uri={_uri(tiny)}"]) == 0
    assert "Logged" in capsys.readouterr().out


def test_cv_trains_a_stack_per_fold_each_its_own_child_run(tiny, monkeypatch):
    monkeypatch.setattr(movielens, "FOLD_ROWS", 600)  # five folds of the 3,000 ratings (tests/test_run.py)
    result = run(compose([*tiny, "data.split=cv", "trainer.epochs=1", "trainer.ensemble=2",
                          "tracking.log_model=false"]))
    assert set(result.folds) == {"u1", "u2", "u3", "u4", "u5"} and isinstance(result.model, Ensemble)
    _, found = _runs(tiny)
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == result.run_id]
    parent = next(r for r in found if r.info.run_id == result.run_id)
    assert len(found) == 6 and all(r.info.status == "FINISHED" for r in found)
    assert all("member1/valid_rmse" in c.data.metrics for c in children)
    assert parent.data.metrics["valid_rmse"] == pytest.approx(sum(c.data.metrics["valid_rmse"] for c in children) / 5)
    assert "member0/valid_rmse" in parent.data.metrics


@pytest.mark.parametrize("overrides, says", [
    (["trainer.ensemble=0"], "trainer.ensemble=0 is not allowed: expected an integer in [1, 64]"),
    (["trainer.ensemble=65"], "trainer.ensemble=65 is not allowed: expected an integer in [1, 64]"),
    (["model=resnet34", "trainer.ensemble=2"], "trainer.ensemble=2 is not allowed: an ensemble's members train as one "
                                               "stack, and model=resnet34 does not stack"),
    (["model=mlp", "model.batchnorm=true", "trainer.ensemble=3"], "model.batchnorm=true does not stack"),
    (["trainer.ensemble=2", "trainer.stages=[{epochs: 1}]"], "trainer.stages do not stack"),
])
def test_a_bad_ensemble_is_refused_naming_the_key_before_any_run(tiny, overrides, says):
    with pytest.raises(ConfigError) as e:  # refused before any data is read: only the store is tiny's
        run(compose([*(o for o in tiny if o.startswith("tracking.")), *overrides]))
    assert says in str(e.value) and ("use trainer.ensemble=1" in str(e.value) or "[1, 64]" in str(e.value))
    assert _runs(tiny)[1] == []


def test_an_ensemble_too_large_for_memory_is_refused_with_the_largest_that_fits(tiny, monkeypatch):
    import lesson5.run

    monkeypatch.setattr(lesson5.run, "available_memory", lambda device: 2**20)
    with pytest.raises(ConfigError, match=r"trainer.ensemble=8: a stack of 8 needs about .* the largest that fits "
                                          r"is (\d+): use trainer.ensemble=\1 or less"):
        run(compose([*tiny, "trainer.ensemble=8", "model.n_factors=400"]))
    assert _runs(tiny)[1] == []


def test_a_diverging_member_fails_the_run(tiny):
    with pytest.raises(DivergedError, match="diverged"):
        run(compose([*tiny, "trainer.ensemble=2", "model.y_range=null", "optim=sgd", "optim.lr=1e6",
                     "schedule=constant"]))
    _, found = _runs(tiny)
    assert len(found) == 1 and found[0].info.status == "FAILED" and found[0].data.tags["outcome"] == "diverged"


def test_trials_of_an_ensemble_are_not_stacked_again_by_a_sweep():
    from lesson5.config import validate
    from lesson5.lifecycle import quiet_config
    from lesson5.run import stackable

    assert "trainer.ensemble=2" in stackable(validate(quiet_config(["trainer.ensemble=2"])))
    assert stackable(validate(quiet_config(["trainer.ensemble=1"]))) is None
