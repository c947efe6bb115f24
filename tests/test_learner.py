"""The Learner: fits in stages, batch sources, and how a stopped fit ends its run."""


import pytest
import torch
from mlflow import MlflowClient
from torch import nn
from torch.utils.data import TensorDataset

from lesson5 import compose, losses
from lesson5.callback import Callback
from lesson5.config import ScheduleConf
from lesson5.data.batches import LoaderBatches, TensorBatches
from lesson5.errors import DivergedError
from lesson5.learner import Learner
from lesson5.lifecycle import TrackMetrics
from lesson5.optim.schedule import ParamScheduler
from lesson5.recorder import Recorder
from lesson5.run import run
from lesson5.tracking import Tracker


class Linear(nn.Linear):
    loss = "mse"

    def forward(self, x):
        return super().forward(x).squeeze(1)

    def layer_groups(self):
        return [list(self.parameters())]


def regression(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=g)


def learner(train, valid, callbacks=(), seed=0):
    torch.manual_seed(seed)
    model = Linear(4, 1)
    opt = torch.optim.SGD([{"params": list(model.parameters()), "lr": 0.05, "max_lr": 0.05}], momentum=0.9)
    return Learner(model, train, valid, opt=opt, loss_fn=losses.build("mse"), seed=seed,
                   callbacks=[ParamScheduler(ScheduleConf(), "momentum"), *callbacks])


def test_a_second_fit_starts_a_fresh_one_cycle_and_continues_the_global_steps(tmp_path):
    """Two stages in one run: the lr starts over at each stage, and MLflow gets one continuous curve in which
    every step appears once."""
    x, y = regression()
    cpu = torch.device("cpu")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri)
    rid = tracker.start_run(experiment="stages", name="two fits", params={}, tags={})
    rec = Recorder("momentum")
    learn = learner(TensorBatches(x, y, 16, cpu), TensorBatches(x, y, 64, cpu),
                    [rec, TrackMetrics(tracker, rid, rec, every=1)])
    learn.fit(2)
    learn.fit(3, lrs=[0.01])
    tracker.end_run(rid, "FINISHED")
    run_id = tracker.run_info(rid).run_id
    tracker.close()

    per_epoch = 13  # ceil(200 / 16)
    assert rec.steps == list(range(1, 5 * per_epoch + 1))
    first, second = rec.lrs[: 2 * per_epoch], rec.lrs[2 * per_epoch :]
    assert first[0] == pytest.approx(0.05 / 25) and second[0] == pytest.approx(0.01 / 25)  # each warms up anew
    assert max(first) == pytest.approx(0.05, rel=0.05) and max(second) == pytest.approx(0.01, rel=0.05)
    assert second[-1] < 0.01 / 100 and first[-1] < 0.05 / 100  # each anneals over its own steps
    client = MlflowClient(uri)
    for key in ("train_loss_step", "lr", "momentum"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == rec.steps  # continuous, each step once
    assert [m.step for m in client.get_metric_history(run_id, "valid_loss")] == [13, 26, 39, 52, 65]


def test_a_dataloader_source_gives_the_tensor_sources_trajectory():
    x, y = regression()
    cpu = torch.device("cpu")

    def fit(train, valid):
        rec = Recorder("momentum")
        learn = learner(train, valid, [rec])
        learn.fit(3)
        return rec.losses, torch.cat([p.detach().flatten() for p in learn.model.parameters()]), learn.metrics

    tensors = fit(TensorBatches(x, y, 16, cpu), TensorBatches(x, y, 64, cpu))
    loader = fit(LoaderBatches(TensorDataset(x, y), 16, cpu), LoaderBatches(TensorDataset(x, y), 64, cpu))
    assert len(tensors[0]) == 3 * 13
    assert tensors[0] == loader[0]
    assert torch.equal(tensors[1], loader[1])
    assert tensors[2] == loader[2]


def test_a_loader_with_workers_gives_the_same_batches_in_order():
    x, y = regression(50)
    source = LoaderBatches(TensorDataset(x, y), 8, torch.device("cpu"), num_workers=2)
    for _ in range(2):  # persistent workers serve a second pass
        xs, ys = zip(*source.epoch(torch.Generator().manual_seed(3)))
        perm = torch.randperm(50, generator=torch.Generator().manual_seed(3))
        assert torch.equal(torch.cat(xs), x[perm]) and torch.equal(torch.cat(ys), y[perm])


class Raise(Callback):
    """Raises `exc` at the given step of the fit, as a pruner or an interrupt would."""

    def __init__(self, exc, at=5):
        self.exc, self.at = exc, at

    def after_step(self, learn):
        if learn.fit_step == self.at:
            raise self.exc


def _pruned():
    import optuna

    return optuna.TrialPruned("trial 3 pruned at epoch 1")


@pytest.mark.parametrize("make, raised, status, outcome", [
    (_pruned, "TrialPruned", "KILLED", "pruned"),
    (lambda: KeyboardInterrupt(), KeyboardInterrupt, "KILLED", "interrupted"),
    (lambda: DivergedError("train_loss became nan"), DivergedError, "FAILED", "diverged"),
    (lambda: RuntimeError("CUDA out of memory"), RuntimeError, "FAILED", "error"),
], ids=["pruned", "interrupted", "diverged", "error"])
def test_each_way_a_fit_stops_gives_its_run_status_and_outcome(tiny, tmp_path, make, raised, status, outcome):
    exc = make()
    with pytest.raises(type(exc)):
        run(compose(tiny), callbacks=[Raise(exc)])
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (r,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert (r.info.status, r.data.tags["outcome"]) == (status, outcome)
    assert r.data.tags["stop_reason"]
    assert [m.step for m in client.get_metric_history(r.info.run_id, "train_loss_step")] == [5]  # up to the stop


def test_a_finished_run_says_so(tiny, tmp_path):
    result = run(compose([*tiny, "trainer.epochs=1"]))
    r = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result.run_id)
    assert (r.info.status, r.data.tags["outcome"]) == ("FINISHED", "finished") and "stop_reason" not in r.data.tags


def test_callbacks_run_in_order_and_only_where_they_hook():
    seen = []

    class Spy(Callback):
        def __init__(self, name, order):
            self.name, self.order = name, order

        def before_fit(self, learn):
            seen.append(self.name)

    x, y = regression(32)
    cpu = torch.device("cpu")
    learn = learner(TensorBatches(x, y, 16, cpu), TensorBatches(x, y, 16, cpu), [Spy("late", 80), Spy("early", 1)])
    learn.fit(1)
    assert seen == ["early", "late"]
    assert Spy("x", 0).before_fit not in learn._hooks("after_step")
