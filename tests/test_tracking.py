"""The tracking package: parents by MLflow run id, and a writer process that stays free of torch."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient

from lesson5 import compose
from lesson5.errors import TrackingError
from lesson5.run import run

ROOT = Path(__file__).resolve().parents[1]


def test_a_parent_that_does_not_exist_is_named_and_no_child_is_created(tiny, tmp_path, monkeypatch):
    from lesson5 import learner

    monkeypatch.setattr(learner.Learner, "fit", lambda *a, **k: pytest.fail("trained under a missing parent"))
    missing = "0123456789abcdef0123456789abcdef"
    with pytest.raises(TrackingError, match=missing):
        run(compose(tiny), parent_run_id=missing)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("test")
    assert exp is None or client.search_runs([exp.experiment_id]) == []


@pytest.mark.slow
def test_a_parent_made_by_another_process_is_named_by_its_run_id(tiny, tmp_path):
    """A sweep's parent run lives in one process and its trials in others: the child names it by run id."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("test"), run_name="study").info.run_id
    script = textwrap.dedent(f"""
        from lesson5 import compose
        from lesson5.run import run
        result = run(compose({tiny!r} + ["trainer.epochs=1"]), parent_run_id={parent!r},
                     tags={{"optuna.study": "demo", "optuna.trial": "0"}})
        print(result.run_id)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    child = client.get_run(done.stdout.split()[-1])
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert (child.data.tags["optuna.study"], child.data.tags["optuna.trial"]) == ("demo", "0")
    assert child.info.status == "FINISHED"


def test_without_a_model_to_log_the_writer_never_imports_torch(tmp_path):
    """The writer's whole job (a run with params, metrics, files, plots, closed) in a process without torch."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    script = textwrap.dedent(f"""
        import multiprocessing as mp, sys
        from lesson5.tracking import writer
        from lesson5.tracking.messages import Close, EndRun, LogFiles, LogMetrics, StartRun
        inbox, outbox = mp.Queue(), mp.Queue()
        for msg in [StartRun(1, "e", "r", {{"optim.lr": "0.1"}}, {{"model": "collab"}}),
                    LogMetrics(1, 0, [("train_loss_step", 1.0, 1), ("lr", 0.1, 1), ("train_loss_step", 0.5, 2),
                                      ("lr", 0.2, 2)]),
                    LogFiles(1, {{"model/weights.pt": b"weights", "confusion_matrix.json": b"[[1, 0], [0, 1]]"}}),
                    EndRun(1, "FINISHED", {{"outcome": "finished"}}), Close()]:
            inbox.put(msg)
        writer.serve({uri!r}, inbox, outbox)
        print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    client = MlflowClient(uri)
    (r,) = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert r.info.status == "FINISHED" and r.data.metrics["lr"] == 0.2 and r.data.params["optim.lr"] == "0.1"
    arts = {a.path for d in ("model", "plots") for a in client.list_artifacts(r.info.run_id, d)}
    assert arts == {"model/weights.pt", "plots/loss.png", "plots/schedule.png", "plots/confusion_matrix.png"}


def test_writers_logging_the_same_data_set_at_once_all_link_it(tmp_path):
    """MLflow inserts a data set it has not seen; writers starting runs together (a sweep's workers) collide on its
    unique key, and without the retry one run of two failed to start (seen in CI, 2026-11-30)."""
    import threading

    from mlflow import MlflowClient
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from lesson5.tracking.writer import log_inputs

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("race")
    runs = [client.create_run(exp).info.run_id for _ in range(8)]
    inputs = [DatasetInput(Dataset("movielens", "abc", "local", "src", None, None),
                           [InputTag("mlflow.data.context", "training")])]
    errors = []

    def start(run_id):
        try:
            log_inputs(MlflowClient(uri), run_id, inputs)
        except Exception as e:  # noqa: BLE001 - what the test counts
            errors.append(e)

    threads = [threading.Thread(target=start, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(len(client.get_run(r).inputs.dataset_inputs) == 1 for r in runs)


# ---- names and URIs refused before any store is touched (issue 21) ----------------------------------------------


def test_a_600_character_experiment_name_is_refused_naming_the_key_and_the_limit(tiny, tmp_path, monkeypatch):
    from lesson5 import data as datasets
    from lesson5.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "build", lambda conf: pytest.fail("data fetched before the check"))
    with pytest.raises(ConfigError) as err:
        run(compose([*tiny, "tracking.experiment=" + "x" * 600]))
    message = str(err.value)
    assert "tracking.experiment=" in message and "at most 256 characters" in message and "600" in message
    assert "lifecycle_stage" not in message and "x" * 100 not in message  # the name is cut in the message
    assert not (tmp_path / "mlflow.db").exists()


def test_the_experiment_name_limit_is_mlflows():
    from mlflow.store.tracking.dbmodels.models import SqlExperiment
    from mlflow.utils.validation import MAX_EXPERIMENT_NAME_LENGTH

    from lesson5.config import MAX_EXPERIMENT_NAME

    assert MAX_EXPERIMENT_NAME == SqlExperiment.__table__.c.name.type.length <= MAX_EXPERIMENT_NAME_LENGTH


def test_an_experiment_the_store_cannot_create_is_named_with_the_stores_reason(tmp_path):
    """Past validate (a name MLflow's API refuses): the store's reason, not 'NoneType has no lifecycle_stage'."""
    from lesson5.tracking.store import experiment_id, open_client

    client = open_client(f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(TrackingError) as err:
        experiment_id(client, "x" * 600)
    assert "tracking.experiment=" in str(err.value) and "600 characters" in str(err.value)
    assert "lifecycle_stage" not in str(err.value)


@pytest.mark.parametrize("uri", ["notascheme", "foo://host/x", "sqlite://mlflow.db", "file:///tmp/mlruns"])
def test_a_uri_mlflow_cannot_open_is_refused_naming_tracking_uri_and_leaves_no_file(uri, tmp_path, monkeypatch):
    from lesson5 import data as datasets
    from lesson5.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setattr(datasets, "build", lambda conf: pytest.fail("data fetched before the check"))
    with pytest.raises(ConfigError) as err:
        run(compose([f"tracking.uri={uri}", "trainer.progress=false"]))
    assert f"tracking.uri='{uri}'" in str(err.value) and "sqlite:///" in str(err.value)
    assert "migrate" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no stray lock file


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "sqlite:////abs/mlflow.db", "http://host:5000",
                                 "https://host", "postgresql://u@h/db", "postgresql+psycopg2://u@h/db",
                                 "mysql+pymysql://u@h/db", "mssql://u@h/db", "databricks"])
def test_store_uris_mlflow_opens_are_accepted(uri):
    from lesson5.config import uri_problem, validate

    assert uri_problem(uri) is None
    if uri != "databricks":
        validate(compose([f"tracking.uri={uri}"]))


def test_a_folder_uri_is_accepted_where_mlflow_allows_its_file_store(monkeypatch):
    from lesson5.config import uri_problem

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert uri_problem("./mlruns") is None and uri_problem("file:///tmp/mlruns") is None
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    assert "MLFLOW_ALLOW_FILE_STORE=true" in uri_problem("./mlruns")


@pytest.mark.slow
def test_cli_refuses_a_bad_uri_with_exit_2_and_leaves_no_file(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lesson5", "tracking.uri=notascheme"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    assert "tracking.uri='notascheme'" in done.stderr and "Traceback" not in done.stderr
    assert "maintenance mode" not in done.stderr
    assert list(tmp_path.iterdir()) == []
