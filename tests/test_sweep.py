"""Sweeps: study files checked before any trial, verdicts from trials, and whole sweeps on tiny data."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import ctrl_c_reaches_it
from mlflow import MlflowClient

from lesson5 import metrics
from lesson5.errors import ConfigError
from lesson5.sweep import spec
from lesson5.sweep.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, judge, look_level

ROOT = Path(__file__).resolve().parents[1]
STUDY = {"claim": "n_factors=4 works best", "rule": {"kind": "best", "param": "model.n_factors", "value": 4},
         "space": {"model.n_factors": {"choices": [2, 4]}}, "seeds": [0, 1],
         "objective": {"metric": "valid_rmse", "direction": "minimize"}, "sampler": "grid", "pruner": "none"}


def write_study(folder: Path, name="tiny", **changes) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}))
    return path


def test_every_study_in_sweeps_loads_with_a_control_and_its_seed_budget():
    names = sorted(p.stem for p in spec.SWEEPS.glob("*.yaml"))
    assert {"n_factors", "wd", "y_range", "momentum", "schedule"} <= set(names)
    for name in names:
        study = spec.load(name)
        assert study.n_trials >= 1 and study.claim and study.rule
        assert study.control is not None and study.control != study.rule, name  # every shipped study has a control
        assert len(study.seeds) <= study.max_seeds <= spec.MAX_SEEDS, name


@pytest.mark.parametrize("changes, where", [
    ({"control": "n_factors 2 is poor"}, "control: expected a mapping"),
    ({"control": {"kind": "best", "param": "model.n_factors", "value": 3}}, "control.value"),
    ({"control": {"kind": "best", "param": "optim.lr", "value": 2}}, "control.param"),
    ({"control": {"kind": "best", "param": "model.n_factors", "valeu": 2}}, "control: unknown field(s) ['valeu']"),
    ({"control": {"kind": "final", "overrides": ["trainer.epochs=1"]}}, "control.kind: final needs"),
    ({"control": STUDY["rule"]}, "control: the same claim as rule"),
    ({"rule": {"kind": "best", "param": "model.n_factors", "value": 4, "tol": 0.1}}, "rule: unknown field(s)"),
    ({"rule": ["best", "model.n_factors", 4]}, "rule: expected a mapping"),
    ({"rule": {"kind": "better", "param": "model.n_factors", "value": 4, "than": 4}}, "rule.than"),
    ({"max_seeds": 21, "looks": 2}, "max_seeds: 21"),
    ({"max_seeds": 1}, "max_seeds: 1"),
    ({"max_seeds": "20", "looks": 2}, "max_seeds: '20'"),
    ({"max_seeds": 4, "looks": 4}, "looks: 4"),
    ({"max_seeds": 4}, "looks: 1 with max_seeds: 4"),
    ({"looks": 2}, "looks: 2"),
    ({"seeds": [0, "one"]}, "seeds: [0, 'one']"),
    ({"space": {"optim.wd": {"low": 0.01, "high": 1.0}}, "sampler": "tpe", "seeds": [0],
      "rule": {"kind": "best", "param": "optim.wd", "value": 2.0}}, "rule.value: 2.0 is outside"),
    ({"space": {"optim.wd": {"low": 0.01, "high": 1.0}}, "sampler": "tpe", "seeds": [0], "looks": 2,
      "rule": {"kind": "best", "param": "optim.wd", "value": 0.1}}, "a tpe study samples one point"),
], ids=["control not a mapping", "control value", "control param", "control field", "final control without final",
        "control is the rule", "rule field", "rule not a mapping", "better than itself", "max_seeds over 20",
        "max_seeds under the seeds", "max_seeds a string", "too many looks", "max_seeds without looks",
        "looks without max_seeds", "seeds not whole", "value outside a range", "looks in a tpe study"])
def test_a_bad_rule_control_or_seed_budget_is_refused_before_any_trial(tmp_path, changes, where):
    path = write_study(tmp_path, **changes)
    with pytest.raises(ConfigError) as err:
        spec.load(str(path))
    assert str(path) in str(err.value) and where in str(err.value)


def test_the_seeds_of_each_look_reach_max_seeds_evenly():
    study = spec.load(str(write_study(Path(tempfile.mkdtemp()), seeds=[0, 1, 2], max_seeds=20, looks=3)))
    assert [study.seeds_at(k) for k in (1, 2, 3)] == [[0, 1, 2], list(range(11)), list(range(20))]
    assert study.points() == [{"model.n_factors": v, "trainer.seed": s, "look": 1} for v in (2, 4) for s in (0, 1, 2)]
    study.added = [{"model.n_factors": 4, "trainer.seed": 3, "look": 2}]
    assert study.points()[-1] == study.added[0] and study.total() == 7
    odd = spec.load(str(write_study(Path(tempfile.mkdtemp()), seeds=[5, 9], max_seeds=4, looks=2)))
    assert odd.seeds_at(2) == [5, 9, 10, 11]  # new seeds follow the largest listed, never repeat one


@pytest.mark.parametrize("changes, where", [
    ({"space": {"model.n_factorz": {"choices": [2, 4]}}}, "n_factorz"),
    ({"space": {"model.n_factors": {"choices": []}}}, "space.model.n_factors.choices"),
    ({"space": {"optim.wd": {"low": 0.5, "high": 0.1}}, "sampler": "tpe", "seeds": [0],
      "rule": {"kind": "best", "param": "optim.wd", "value": 0.1}}, "space.optim.wd: empty range"),
    ({"objective": {"metric": "valid_accuracy", "direction": "minimize"}}, "objective.metric"),
    ({"rule": {"kind": "best", "param": "optim.lr", "value": 4}}, "rule.param"),
    ({"rule": {"kind": "best", "param": "model.n_factors", "value": 8}}, "rule.value"),
    ({"sampler": "annealing"}, "sampler"),
    ({"n_trials": 9}, "n_trials=9"),
], ids=["unknown key", "no choices", "empty range", "metric not logged", "rule param", "rule value", "sampler",
        "too many trials"])
def test_a_bad_study_file_is_refused_naming_the_file_and_key(tmp_path, changes, where):
    path = write_study(tmp_path, **changes)
    with pytest.raises(ConfigError) as err:
        spec.load(str(path))
    assert str(path) in str(err.value) and where in str(err.value)


def test_a_study_file_that_does_not_parse_is_named(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("claim: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml does not parse"):
        spec.load(str(path))


def test_the_models_losses_and_metrics_are_what_the_code_reports(movielens_dir):
    from lesson5 import compose, models
    from lesson5 import data as datasets
    from lesson5.config import validate

    reg = metrics.METRICS["mse"](torch.zeros(3), torch.ones(3))
    cls = metrics.METRICS["cross_entropy"](torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    assert set(models.LOGGED["mse"]) == {"train_loss", *reg}
    assert set(models.LOGGED["cross_entropy"]) == {"train_loss", *cls}
    ml = datasets.build(validate(compose([f"data.path={movielens_dir}", "data.verify=false"])).data)
    images = datasets.Data(folds=[], sizes={"n_inputs": 784, "n_classes": 10})
    for name in models.REGISTRY:
        no_download = ["model.weights=none"] if name in models.GROUPS_OF_BODIES else []
        conf = validate(compose([f"model={name}", *no_download])).model
        assert models.build(conf, ml if name == "collab" else images).loss == models.LOSSES[name]


def _trials(values: dict, param="model.n_factors"):
    return [({param: v, "trainer.seed": s}, x) for v, xs in values.items() for s, x in enumerate(xs)]


def test_the_verdict_follows_the_trials():
    rule = {"kind": "best", "param": "model.n_factors", "value": 40, "tolerance": 0.001}
    assert judge(rule, _trials({40: [0.890, 0.891, 0.892], 80: [0.895, 0.896, 0.894]}), False).result == REPRODUCED
    assert judge(rule, _trials({40: [0.900, 0.901, 0.902], 80: [0.890, 0.891, 0.889]}), False).result == NOT_REPRODUCED
    # 80 is ahead on every seed, by 0.001-0.002 against a tolerance of 0.001: paired, that is neither "within the
    # tolerance" nor "beyond it" at three seeds (the old unpaired margin called it reproduced)
    noisy = judge(rule, _trials({40: [0.891, 0.899, 0.895], 80: [0.890, 0.897, 0.893]}), False)
    assert noisy.result == INCONCLUSIVE and noisy.seeds_needed > 3
    assert judge(rule, _trials({40: [0.89], 80: [0.90, 0.91]}), False).result == INCONCLUSIVE  # one seed
    better = {"kind": "better", "param": "schedule", "value": "one_cycle", "than": "constant", "tolerance": 0.001}
    sched = lambda oc, c: _trials({"one_cycle": oc, "constant": c}, "schedule")  # noqa: E731
    assert judge(better, sched([0.89, 0.89, 0.891], [0.90, 0.901, 0.90]), False).result == REPRODUCED
    assert judge(better, sched([0.90, 0.901, 0.90], [0.89, 0.89, 0.891]), False).result == NOT_REPRODUCED
    # a steady 0.0001 gap, well inside the tolerance: no difference that matters (was inconclusive)
    tiny = judge(better, sched([0.8900, 0.8902, 0.8904], [0.8901, 0.8903, 0.8905]), False)
    assert tiny.result == NOT_REPRODUCED and "no difference that matters" in tiny.summary
    assert judge(better, sched([0.890, 0.899, 0.894], [0.899, 0.890, 0.895]), False).result == INCONCLUSIVE
    # maximize: higher is better
    acc = {"kind": "best", "param": "optim.momentum", "value": 0.9}
    assert judge(acc, _trials({0.9: [0.88, 0.881], 0.5: [0.85, 0.851]}, "optim.momentum"), True).result == REPRODUCED


def test_each_value_is_scored_at_its_best_setting_of_the_others():
    rule = {"kind": "better", "param": "schedule", "value": "one_cycle", "than": "constant"}
    trials = [({"schedule": s, "optim.lr": lr, "trainer.seed": seed}, x)
              for s, lr, x0 in [("one_cycle", 0.01, 0.95), ("one_cycle", 0.005, 0.89), ("constant", 0.01, 0.92),
                                ("constant", 0.005, 0.93)] for seed, x in enumerate([x0, x0 + 0.001])]
    v = judge(rule, trials, False)
    assert v.scores["one_cycle"].setting == {"optim.lr": 0.005} and v.scores["constant"].setting == {"optim.lr": 0.01}
    assert v.result == REPRODUCED


def sweep(tmp_path, study: Path, *args, timeout=600):
    """`python -m lesson5.sweep` from tmp_path, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "lesson5.sweep", str(study), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def runs_of(tmp_path, study_name):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    found = client.search_runs([client.get_experiment_by_name("lesson5-movielens").experiment_id])
    parents = [r for r in found if r.data.tags.get("optuna.study") == study_name and "optuna.trial" not in r.data.tags]
    children = [r for r in found if "optuna.trial" in r.data.tags]
    return parents, children


@pytest.fixture
def data_args(movielens_dir):
    return [f"data.path={movielens_dir}", "data.verify=false", "trainer.epochs=2"]


@pytest.mark.slow
def test_a_study_with_two_workers_and_two_looks_on_a_journal(tmp_path, data_args):
    """Look 1 at seeds 0-1; the verdict undecided (two seeds at look 1's 99.4% level decide nothing), look 2 adds seed
    2 to both values; the results table and the report, which rebuilds byte for byte from the table alone."""
    study = write_study(tmp_path, max_seeds=3, looks=2,
                        control={"kind": "best", "param": "model.n_factors", "value": 2})
    done = sweep(tmp_path, study, "workers=2", *data_args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "look 2 of 2: 2 more trials (seeds [2]; model.n_factors 2, 4)" in done.stderr
    opt = optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "sweeps.journal"))))
    assert sorted(t.state.name for t in opt.trials) == ["COMPLETE"] * 6
    assert sorted((t.user_attrs["look"], t.params["model.n_factors"], t.params["trainer.seed"]) for t in opt.trials) \
        == [(1, 2, 0), (1, 2, 1), (1, 4, 0), (1, 4, 1), (2, 2, 2), (2, 4, 2)]  # every point once, the same new seed
    (parent,), children = runs_of(tmp_path, "tiny")
    # the parent's verdict is the rule's, recomputed from the journal at the last look's level
    assert parent.info.status == "FINISHED"
    trials = [(t.params, t.value) for t in opt.trials]
    assert parent.data.tags["verdict"] == judge(STUDY["rule"], trials, False, look_level(2, 2), [2, 4]).result
    assert parent.data.tags["control"] in (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED)
    assert sorted(int(c.data.tags["optuna.trial"]) for c in children) == list(range(6))
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id and c.data.tags["optuna.state"] == "COMPLETE"
               and c.info.status == "FINISHED" for c in children)
    again = sweep(tmp_path, study, *data_args)  # the study exists: resume=true, or a new name
    assert again.returncode == 2 and "resume=true" in again.stderr
    results = tmp_path / "sweeps" / "results"
    written = (results / "tiny.md").read_text()
    assert (results / "tiny.csv").read_text().count("\ntrial,") == 6
    (tmp_path / "sweeps.journal").unlink()  # rebuilt from the table alone, as on a fresh clone
    rebuilt = subprocess.run([sys.executable, "-m", "lesson5.report", str(study), *data_args], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert (results / "tiny.md").read_text() == written


def test_the_next_look_adds_the_same_new_seeds_to_undecided_values_at_their_best_setting(tmp_path):
    from lesson5.sweep.driver import next_points

    study = spec.load(str(write_study(tmp_path, space={"model.n_factors": {"choices": [2, 4, 8]},
                                                       "optim.lr": {"choices": [0.01, 0.1]}},
                                      seeds=[0, 1, 2], max_seeds=6, looks=2,
                                      control={"kind": "best", "param": "model.n_factors", "value": 2})))
    base = [0.90, 0.93, 0.91]
    noise = {4: [0.0, 0.0, 0.0], 8: [0.004, -0.003, 0.001], 2: [0.05, 0.0501, 0.0499]}
    trials = [({"model.n_factors": v, "optim.lr": lr, "trainer.seed": s}, base[s] + noise[v][s] + (lr == 0.1) * 0.01)
              for v in (2, 4, 8) for lr in (0.01, 0.1) for s in (0, 1, 2)]
    # 2 is worse by 0.05 at every seed (decided even at look 1, for the claim and the control); 4 against 8 is noise
    added = next_points(study, trials, 1)
    assert added == [{"model.n_factors": v, "optim.lr": 0.01, "trainer.seed": s, "look": 2}
                     for v in (4, 8) for s in (3, 4, 5)]
    assert next_points(study, trials, 2) == []  # the last look adds nothing
    study.added = added  # a point already planned is not planned again
    assert next_points(study, trials, 1) == []


@pytest.mark.slow
def test_a_diverging_trial_fails_and_the_study_completes(tmp_path, data_args):
    study = write_study(tmp_path, space={"optim.lr": {"choices": [0.01, 1.0e6]}}, seeds=[0],
                        rule={"kind": "best", "param": "optim.lr", "value": 0.01},
                        base=["optim=sgd", "model.y_range=null"])
    done = sweep(tmp_path, study, *data_args)
    assert done.returncode == 0, done.stderr[-3000:]
    (parent,), children = runs_of(tmp_path, "tiny")
    states = {c.data.params["optim.lr"]: (c.info.status, c.data.tags["outcome"], c.data.tags["optuna.state"])
              for c in children}
    assert states == {"0.01": ("FINISHED", "finished", "COMPLETE"), "1000000.0": ("FAILED", "diverged", "FAIL")}
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
def test_pruning_prunes_and_a_pruned_run_is_not_failed(tmp_path, data_args):
    study = write_study(tmp_path, space={"optim.lr": {"choices": [0.03, 1.0e-6, 1.0e-6]}}, seeds=[0],
                        rule={"kind": "best", "param": "optim.lr", "value": 0.03},
                        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0})
    done = sweep(tmp_path, study, *data_args)
    assert done.returncode == 0, done.stderr[-3000:]
    _, children = runs_of(tmp_path, "tiny")
    pruned = [c for c in children if c.data.tags["optuna.state"] == "PRUNED"]
    assert len(pruned) == 2
    assert all(c.info.status == "KILLED" and c.data.tags["outcome"] == "pruned" for c in pruned)


@pytest.mark.slow
def test_an_unreachable_storage_is_refused_before_any_run(tmp_path, data_args):
    done = sweep(tmp_path, write_study(tmp_path), "storage=postgresql://nobody@127.0.0.1:9/none", *data_args)
    assert done.returncode == 2 and "storage=postgresql://nobody@127.0.0.1:9/none" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists() or not runs_of(tmp_path, "tiny")[0]


@pytest.mark.slow
def test_two_machines_share_a_postgresql_study(tmp_path, data_args, postgres_uri):
    """Two sweep commands started together against one PostgreSQL study, as two machines would run them."""
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_uri, isolation_level="AUTOCOMMIT")
    with engine.connect() as con:
        con.execute(sa.text("CREATE DATABASE optuna_sweep"))
    engine.dispose()
    storage = postgres_uri.replace("/mlflow?", "/optuna_sweep?")
    study = write_study(tmp_path, space={"model.n_factors": {"choices": [2, 3, 4]}}, seeds=[0, 1])
    cmd = [sys.executable, "-m", "lesson5.sweep", str(study), "workers=1", f"storage={storage}", *data_args]
    machines = [subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for m in machines:
        _, err = m.communicate(timeout=600)
        assert m.returncode == 0, err[-3000:]
    opt = optuna.load_study(study_name="tiny", storage=storage)
    assert len(opt.trials) == 6 and len({t.number for t in opt.trials}) == 6
    assert len({(t.params["model.n_factors"], t.params["trainer.seed"]) for t in opt.trials}) == 6
    parents, children = runs_of(tmp_path, "tiny")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(int(c.data.tags["optuna.trial"]) for c in children) == list(range(6))
    assert {c.data.tags["optuna.study"] for c in children} == {"tiny"}


def _journal_study(tmp_path, name="tiny"):
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "sweeps.journal"))))


def _wait_for(predicate, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return True
        except (KeyError, OSError, ValueError):  # the study or its journal is not there yet
            pass
        time.sleep(0.3)
    return False


@pytest.mark.slow
def test_ctrl_c_leaves_a_consistent_study_that_resume_completes(tmp_path, movielens_dir):
    args = [f"data.path={movielens_dir}", "data.verify=false", "trainer.epochs=40"]
    study = write_study(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "lesson5.sweep", str(study), *args], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=ctrl_c_reaches_it)
    complete = lambda: sum(t.state.name == "COMPLETE" for t in _journal_study(tmp_path).trials) >= 1  # noqa: E731
    assert _wait_for(complete)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the driver, its workers and their writers
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    assert "resume=true" in err
    trials = _journal_study(tmp_path).trials
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials) and len(trials) < 5
    (parent,), children = runs_of(tmp_path, "tiny")
    assert parent.info.status == "KILLED" and all(c.info.status != "RUNNING" for c in children)
    done = sweep(tmp_path, study, "resume=true", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    opt = _journal_study(tmp_path)
    finished = [t for t in opt.trials if t.state.name == "COMPLETE"]
    assert len(finished) == 4 and len({tuple(sorted(t.params.items())) for t in finished}) == 4
    (parent,), _ = runs_of(tmp_path, "tiny")
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
def test_a_worker_killed_mid_trial_loses_nothing(tmp_path, movielens_dir):
    """kill -9 of one worker: the other goes on, the lost trial ends FAIL and its point runs again."""
    args = [f"data.path={movielens_dir}", "data.verify=false", "trainer.epochs=40"]
    study = write_study(tmp_path, space={"model.n_factors": {"choices": [2, 3, 4]}})
    proc = subprocess.Popen([sys.executable, "-m", "lesson5.sweep", str(study), "workers=2", *args], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    running = lambda: [t for t in _journal_study(tmp_path).trials if t.state.name == "RUNNING"  # noqa: E731
                       and "pid" in t.user_attrs]
    assert _wait_for(lambda: len(running()) >= 1)
    victim = running()[0]
    os.kill(int(victim.user_attrs["pid"]), signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    opt = _journal_study(tmp_path)
    assert opt.trials[victim.number].state.name == "FAIL"
    finished = [t for t in opt.trials if t.state.name == "COMPLETE"]
    assert len(finished) == 6 and len({tuple(sorted(t.params.items())) for t in finished}) == 6, err[-3000:]
    assert proc.returncode == 0, err[-3000:]


def test_lr_find_suggests_an_lr_within_its_range_and_logs_its_plot(tiny, tmp_path):
    from lesson5.lr_find import find

    finder, suggested, run_id = find([*tiny, "model.y_range=null"], start_lr=1e-5, end_lr=100.0)
    assert finder.lrs[0] == pytest.approx(1e-5) and finder.lrs[-1] <= 100.0
    assert finder.lrs[0] <= suggested <= finder.lrs[-1]
    assert len(finder.lrs) < 43  # the loss exploded before the pass ended, and the finder stopped
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and float(r.data.tags["suggested_lr"]) == pytest.approx(suggested, rel=1e-2)
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/lr_find.png"]
    assert len(client.get_metric_history(run_id, "lr_find_loss")) == len(finder.lrs)
