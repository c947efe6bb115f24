"""MLflow's system metrics for long runs (tracking.system_metrics): which runs get them, and a run that does."""

import time

import pytest
from mlflow import MlflowClient

from lesson5.config import compose, validate
from lesson5.errors import ConfigError
from lesson5.tracking.messages import EndRun, StartRun
from lesson5.tracking.writer import Writer, wants_system_metrics


@pytest.mark.parametrize("params, wanted", [
    ({"tracking.system_metrics": "auto", "model.name": "resnet34", "trainer.stages": "[{'name': 'frozen'}]"}, True),
    ({"tracking.system_metrics": "auto", "model.name": "efficientnet_lite0", "trainer.stages": "[]"}, True),
    ({"tracking.system_metrics": "auto", "model.name": "collab", "trainer.stages": "[]"}, False),
    ({"tracking.system_metrics": "auto", "model.name": "mlp", "trainer.stages": "[{'name': 'a'}]"}, True),
    ({"tracking.system_metrics": "True", "model.name": "collab", "trainer.stages": "[]"}, True),
    ({"tracking.system_metrics": "false", "model.name": "resnet34", "trainer.stages": "[{}]"}, False),
    ({}, False),  # a run synced from an older spool: no setting, no monitor
])
def test_auto_means_fine_tuning(params, wanted):
    assert wants_system_metrics(params) is wanted


def test_the_setting_is_checked_with_the_config():
    assert compose([]).tracking.system_metrics == "auto"
    assert str(compose(["tracking.system_metrics=true"]).tracking.system_metrics).lower() == "true"
    with pytest.raises(ConfigError, match="system_metrics"):
        validate(compose(["tracking.system_metrics=sometimes"]))


def test_a_run_with_system_metrics_logs_them_and_stops_with_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    w = Writer(uri)
    w.start(StartRun(1, "e", "long", {"tracking.system_metrics": "true", "model.name": "collab"}, {}))
    monitor = w.runs[1].monitor
    assert monitor is not None
    deadline = time.monotonic() + 120
    while monitor._logging_step < 2 and time.monotonic() < deadline:  # two samples published, however long
        time.sleep(0.1)
    w.end(EndRun(1, "FINISHED"))
    assert w.runs[1].monitor is None and not monitor._process
    run = MlflowClient(uri).get_run(w.runs[1].run_id)
    assert run.info.status == "FINISHED"
    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system
    w.start(StartRun(2, "e", "short", {"tracking.system_metrics": "auto", "model.name": "collab"}, {}))
    assert w.runs[2].monitor is None
    w.end(EndRun(2, "FINISHED"))


def test_only_the_gpus_the_trainer_sees_are_reported():
    from types import SimpleNamespace

    from lesson5.tracking.writer import visible_gpus_only

    gpu, cpu = SimpleNamespace(gpu_handles=["h0", "h1", "h2"], num_gpus=3), SimpleNamespace()
    monitor = SimpleNamespace(monitors=[cpu, gpu])
    visible_gpus_only(monitor, None)
    assert gpu.gpu_handles == ["h0", "h1", "h2"]
    visible_gpus_only(monitor, "0, 2")
    assert gpu.gpu_handles == ["h0", "h2"] and gpu.num_gpus == 2
