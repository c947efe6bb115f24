"""What a user sees in the MLflow UI: experiments per task, readable run names, MLflow's own conventions (dataset
input, source tags, a loadable model, seed groups), and the printed link opened in a real browser."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import chromium_dom
from mlflow import MlflowClient

from lesson5 import compose, naming
from lesson5.config import validate
from lesson5.errors import TrackingError
from lesson5.run import run
from lesson5.tracking import ui_link
from tests.test_mnist import write_idx_folder

ROOT = Path(__file__).resolve().parents[1]


def _store(tiny) -> str:
    return next(o for o in tiny if o.startswith("tracking.uri=")).split("=", 1)[1]


def test_run_names_read_as_model_optimizer_and_changed_keys():
    conf = validate(compose(["optim=sgd", "optim.wd=0.01"]))
    assert naming.run_name(conf, ["optim=sgd", "optim.wd=0.01", "schedule=constant", "trainer.progress=false",
                                  "data.path=/x", "tracking.uri=sqlite:///a.db"]) == "collab sgd wd=0.01 constant"
    assert naming.run_name(conf, []) == "collab sgd"
    named = validate(compose(["tracking.run_name=mine"]))
    assert naming.run_name(named, ["optim.wd=0.01"]) == "mine"  # an explicit name wins
    long = naming.run_name(conf, [f"model.y_range=[0,{'5' * 400}]"])
    assert len(long) == naming.MAX_RUN_NAME and long.endswith("…")  # cut, not refused


def test_default_experiment_follows_the_data_and_an_explicit_one_wins():
    assert naming.experiment_name(validate(compose())) == "lesson5-movielens"
    assert naming.experiment_name(validate(compose(["model=mlp", "data=mnist"]))) == "lesson5-mnist"
    assert naming.experiment_name(validate(compose(["tracking.experiment=mine"]))) == "mine"


def test_seed_group_ignores_only_seeds_and_where_runs_are_tracked(tiny):
    def group(*extra):
        cfg = compose([*tiny, *extra])
        from lesson5.config import flatten

        return naming.seed_group(validate(cfg), flatten(cfg))

    assert group("trainer.seed=1") == group("trainer.seed=2", "tracking.run_name=x", "tracking.experiment=y")
    assert group("trainer.seed=1") != group("trainer.seed=1", "optim.wd=0.01")


def test_ui_link_opens_the_model_training_runs_table():
    assert ui_link("sqlite:///x.db", "3") == "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
    assert ui_link("http://host:5001/", "3").startswith("http://host:5001/#/experiments/3/runs?")


@pytest.mark.slow
def test_collab_and_mnist_runs_land_in_their_own_experiments(tiny, tmp_path):
    uri = _store(tiny)
    collab = run(compose([*tiny, "tracking.experiment=null", "trainer.epochs=1", "tracking.log_model=false"]))
    folder = write_idx_folder(tmp_path / "idx", n_train=100, n_valid=50)
    images = run(compose(["model=logistic", "data=mnist", f"data.path={folder}", "trainer.epochs=1",
                          "trainer.progress=false", f"tracking.uri={uri}", "tracking.log_model=false"]))
    client = MlflowClient(uri)
    names = {r.run_id: client.get_experiment(r.experiment_id).name for r in (collab, images)}
    assert names == {collab.run_id: "lesson5-movielens", images.run_id: "lesson5-mnist"}
    for r in (collab, images):
        assert client.get_experiment(r.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_tracked_run_follows_mlflow_conventions_and_its_model_reloads(tiny):
    result = run(compose([*tiny, "optim.wd=0.01"]), overrides=["optim.wd=0.01"])
    client = MlflowClient(_store(tiny))
    r = client.get_run(result.run_id)
    assert r.info.run_name == "collab adam wd=0.01"
    tags = r.data.tags
    assert tags["mlflow.source.git.commit"] and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.note.content"].startswith("collab adam wd=0.01: collab on movielens")
    assert tags["seed_group"].startswith("collab adam movielens ")
    (ds,) = r.inputs.dataset_inputs
    assert ds.dataset.name == "movielens" and len(ds.dataset.digest) == 16
    assert ds.dataset.digest == r.data.params["data.info.digest"]

    mlflow.set_tracking_uri(_store(tiny))
    try:
        loaded = mlflow.pytorch.load_model(f"runs:/{result.run_id}/model")
    finally:
        mlflow.set_tracking_uri(None)
    x = torch.tensor([[1, 1], [2, 3], [5, 7]])
    model = result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    (logged,) = client.search_logged_models(experiment_ids=[result.experiment_id])
    assert logged.source_run_id == result.run_id and logged.name == "model"


def test_a_deleted_experiment_is_refused_with_how_to_restore_it(tiny):
    client = MlflowClient(_store(tiny))
    client.delete_experiment(client.create_experiment("gone"))
    with pytest.raises(TrackingError, match=r"deleted experiment.*mlflow experiments restore"):
        run(compose([*tiny, "tracking.experiment=gone", "tracking.log_model=false"]))
    assert client.search_runs([client.get_experiment_by_name("gone").experiment_id], run_view_type=3) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None and not os.environ.get("LESSON5_REQUIRE_CHROMIUM"),
                    reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_printed_link_shows_both_runs_in_a_real_browser(tiny, tmp_path):
    """Two tiny runs, `mlflow ui` on their store, and the link the command prints, rendered by headless
    Chromium: the runs table (not MLflow 3's GenAI overview) shows both run names."""
    uri = _store(tiny)
    first = run(compose([*tiny, "trainer.epochs=1", "tracking.log_model=false"]), overrides=["trainer.epochs=1"])
    run(compose([*tiny, "trainer.epochs=1", "optim=sgd", "tracking.log_model=false"]),
        overrides=["trainer.epochs=1", "optim=sgd"])
    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--port", str(port)],
                          cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and ui.poll() is None, "mlflow ui did not start"
                time.sleep(0.5)
        link = ui_link(uri, first.experiment_id).replace(":5000", f":{port}")
        dom = chromium_dom(link, tmp_path / "chromium")
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    assert "collab adam epochs=1" in dom and "collab sgd epochs=1" in dom
