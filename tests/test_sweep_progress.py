"""The live progress of a sweep (lesson5.sweep.progress), fed fabricated trials and a fake clock: what it counts,
the best so far, the ETA, how it draws on a terminal and in a log, and a storage that cannot be read."""

import io
import math
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from lesson5.sweep import progress
from lesson5.sweep.progress import Progress, best_so_far, duration, render, snapshot


def trial(number, state="COMPLETE", value=None, outcome="finished", **params):
    params = {k.replace("__", "."): v for k, v in params.items()}
    return SimpleNamespace(number=number, state=state, value=value, params=params,
                           user_attrs={} if outcome is None else {"outcome": outcome})


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make(trials, total=10, tty=False, **kw):
    out, clock = io.StringIO(), Clock()
    p = Progress(read=lambda: trials, total=lambda: total, metric="valid_rmse", stream=out, tty=tty, clock=clock,
                 **kw)
    return p, out, clock


def test_the_counts_say_what_the_storage_holds():
    trials = [trial(0, value=0.9), trial(1, "PRUNED"), trial(2, "FAIL", outcome="error"),
              trial(3, "FAIL", outcome=None),  # lost: run again, so not done
              trial(4, "RUNNING"), trial(5, "RUNNING"), trial(6, "WAITING")]
    s = snapshot(trials, total=8)
    assert (s.done, s.complete, s.pruned, s.failed, s.running, s.total) == (3, 1, 1, 2, 2, 8)
    assert s.best.value == 0.9 and s.best.number == 0


def test_optunas_own_trials_are_read_too():
    study = optuna.create_study(direction="maximize")
    for x in (0.2, 0.7, 0.5):
        study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions={
            "x": optuna.distributions.FloatDistribution(0, 1)}, value=x))
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED))
    s = snapshot(study.get_trials(deepcopy=False), total=5, direction="maximize")
    assert (s.done, s.complete, s.pruned) == (4, 3, 1)
    assert s.best.value == 0.7 and s.best.params == {"x": 0.7} and s.best.number == 1


def test_the_best_of_a_grid_with_seeds_is_a_setting_by_its_mean_and_std():
    trials = [trial(0, value=0.90, model__n_factors=40, trainer__seed=0),
              trial(1, value=0.92, model__n_factors=40, trainer__seed=1),
              trial(2, value=0.89, model__n_factors=10, trainer__seed=0),  # the best single trial...
              trial(3, value=0.95, model__n_factors=10, trainer__seed=1),  # ...but not the best mean
              trial(4, value=float("nan"), model__n_factors=80, trainer__seed=0)]  # never the best
    best = best_so_far(trials, "minimize", by_seed=True)
    assert best.params == {"model.n_factors": 40} and best.n == 2
    assert best.value == pytest.approx(0.91) and best.std == pytest.approx(math.sqrt(2) * 0.01)
    line = render(snapshot(trials, 8, by_seed=True), 75, 150, "valid_rmse")
    assert "best valid_rmse 0.9100 ± 0.0141 (2 seeds) at n_factors=40" in line
    assert best_so_far(trials, "minimize", by_seed=False).number == 2
    assert best_so_far(trials, "maximize", by_seed=True).params == {"model.n_factors": 10}
    assert best_so_far([trial(0, "PRUNED")], "minimize", True) is None


def test_the_line_has_done_total_running_pruned_failed_elapsed_eta_and_best():
    trials = [trial(0, value=0.9), trial(1, "PRUNED"), trial(2, "RUNNING")]
    line = render(snapshot(trials, 6), 134, 220, "valid_rmse")
    assert line.startswith("2/6 trials, 1 running, 1 pruned, 0 failed | 2m14s, ETA 3m40s | best valid_rmse 0.9000")
    assert "ETA ?" in render(snapshot([], 6), 3, None, "valid_rmse")
    assert "none yet" in render(snapshot([], 6), 3, None, "valid_rmse")
    assert [duration(s) for s in (0, 42, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]


def test_the_eta_counts_the_rate_of_this_sweep_only():
    trials = [trial(i, value=1.0) for i in range(4)]  # a resumed study: 4 done before this sweep
    p, out, clock = make(trials, total=10)
    p.poll()
    assert "ETA ?" in out.getvalue()
    clock.t += 60
    trials += [trial(4, value=1.0), trial(5, value=1.0)]  # 2 trials in 60 s: 4 left take 120 s
    p.poll()
    assert out.getvalue().splitlines()[-1].startswith("6/10 trials") and "ETA 2m00s" in out.getvalue()


def test_a_log_gets_a_plain_line_every_n_trials_or_every_30_s():
    trials = []
    p, out, clock = make(trials, total=20, every_n=2)
    assert p.poll() is not None  # the first reading is always shown
    trials.append(trial(0, value=1.0))
    clock.t += 5
    assert p.poll() is None  # one trial since the last line, and 5 s
    trials.append(trial(1, value=1.0))
    clock.t += 5
    assert p.poll().startswith("2/20")  # two trials
    clock.t += 29
    assert p.poll() is None
    clock.t += 2
    assert p.poll().startswith("2/20")  # 30 s since the last line
    assert "\r" not in out.getvalue() and len(out.getvalue().splitlines()) == 3
    trials.append(trial(2, value=0.5))
    p.close()  # the last reading is printed, once
    assert out.getvalue().splitlines()[-1].startswith("3/20") and len(out.getvalue().splitlines()) == 4


def test_a_terminal_redraws_one_line_in_place():
    trials = [trial(0, "RUNNING")]
    p, out, clock = make(trials, total=4, tty=True)
    p.poll()
    trials[0] = trial(0, value=0.8)
    clock.t += 3
    p.poll()
    p.say("look 2 of 2: 2 more trials")
    p.poll()
    p.close()
    text = out.getvalue()
    assert text.count("\n") == 2 and text.endswith("\n")  # the caller's line and the last one
    assert text.startswith("\r0/4 trials, 1 running") and "\r1/4 trials" in text
    assert "\r\x1b[Klook 2 of 2: 2 more trials\n" in text


def test_polls_are_spaced_by_the_interval_and_by_their_own_cost():
    clock = Clock()

    def slow_read():
        clock.t += 0.05  # a slow database: 50 ms a poll
        return []

    p = Progress(read=slow_read, total=lambda: 3, stream=io.StringIO(), tty=False, clock=clock)
    assert p.wait_s() == 0
    p.poll()
    assert p.wait_s() == pytest.approx(progress.BUDGET * 0.05)  # 10 s: 0.5% of the driver's time at most
    fast = Progress(read=lambda: [], total=lambda: 3, stream=io.StringIO(), tty=False, clock=clock)
    fast.poll()
    assert fast.wait_s() == pytest.approx(progress.INTERVAL_S)


def test_a_lost_storage_is_a_message_and_the_display_comes_back():
    state = {"up": True}
    trials = [trial(0, value=1.0)]

    def read():
        if not state["up"]:
            raise OSError("could not connect to server: Connection refused\n\tIs the server running?")
        return trials

    p, out, clock = make(trials, total=4, where="storage postgresql://db/lesson5")
    p.read = read
    p.poll()
    state["up"] = False
    for _ in range(3):
        clock.t += 10
        p.poll()  # no traceback; said once while the reason stays the same
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("cannot read storage postgresql://db/lesson5 (OSError: could not connect to server")
    assert "resume=true" in lines[1]
    state["up"] = True
    clock.t += 10
    assert p.poll().startswith("1/4 trials")  # back: shown at once


@pytest.mark.slow
def test_a_sweep_shows_its_progress_and_ends_with_its_links(tmp_path, movielens_dir):
    """A tiny grid study, as a user runs it in a log (not a terminal): progress lines, then the MLflow and
    optuna-dashboard commands and the parent run's link; the parent has its source tags and Optuna's views. With
    progress=false, no progress line."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml
    from mlflow import MlflowClient

    root = Path(__file__).resolve().parents[1]
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump({
        "claim": "n_factors=4 works best", "rule": {"kind": "best", "param": "model.n_factors", "value": 4},
        "space": {"model.n_factors": {"choices": [2, 4]}}, "seeds": [0, 1], "sampler": "grid", "pruner": "none",
        "objective": {"metric": "valid_rmse", "direction": "minimize"}}))
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def sweep(*args):
        return subprocess.run([sys.executable, "-m", "lesson5.sweep", str(study), f"data.path={movielens_dir}",
                               "data.verify=false", "trainer.epochs=1", f"tracking.uri={uri}",
                               f"storage={tmp_path}/s.journal", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(root)})

    done = sweep()
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("study tiny: ") and " running, " in line]
    assert lines and lines[-1].startswith("study tiny: 4/4 trials, 0 running, 0 pruned, 0 failed")
    assert "(2 seeds) at n_factors=" in lines[-1] and "\r" not in done.stderr
    assert f"optuna-dashboard {tmp_path}/s.journal" in done.stderr  # said at the start, to watch it live
    client = MlflowClient(uri)
    (parent,) = [r for r in client.search_runs([client.get_experiment_by_name("lesson5-movielens").experiment_id])
                 if "optuna.trial" not in r.data.tags]
    assert f"MLflow: mlflow ui --backend-store-uri {uri}\n" in done.stdout
    assert f"/runs/{parent.info.run_id}?workflowType=machine_learning" in done.stdout
    assert f"Optuna: optuna-dashboard {tmp_path}/s.journal" in done.stdout
    assert "View run" not in done.stdout + done.stderr
    assert parent.data.tags["mlflow.source.name"] == "python -m lesson5.sweep"
    assert parent.data.tags["mlflow.source.type"] == "LOCAL" and parent.data.tags["mlflow.source.git.commit"]
    assert {"trials_complete", "trials_pruned", "best_valid_rmse", "sweep_wall_seconds"} <= set(parent.data.metrics)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/tiny_optuna_history.png", "report/tiny_optuna_slice.png"} <= arts
    quiet = sweep("study_name=tiny_quiet", "progress=false")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert " running, " not in quiet.stderr and "Optuna: optuna-dashboard" in quiet.stdout


@pytest.mark.slow
def test_two_machines_each_show_the_whole_shared_study(tmp_path, movielens_dir, postgres_uri):
    """Two sweep commands on one PostgreSQL study, as two machines run them: each one's display counts every
    trial of the study, its own workers' and the other's, so the one that closes the study shows them all."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import sqlalchemy as sa
    import yaml

    engine = sa.create_engine(postgres_uri, isolation_level="AUTOCOMMIT")
    with engine.connect() as con:
        con.execute(sa.text("CREATE DATABASE optuna_progress"))
    engine.dispose()
    storage = postgres_uri.replace("/mlflow?", "/optuna_progress?")
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump({
        "claim": "n_factors=4 works best", "rule": {"kind": "best", "param": "model.n_factors", "value": 4},
        "space": {"model.n_factors": {"choices": [2, 3, 4]}}, "seeds": [0, 1], "sampler": "grid", "pruner": "none",
        "objective": {"metric": "valid_rmse", "direction": "minimize"}}))
    cmd = [sys.executable, "-m", "lesson5.sweep", str(study), "workers=1", f"storage={storage}",
           f"data.path={movielens_dir}", "data.verify=false", "trainer.epochs=1"]
    root = Path(__file__).resolve().parents[1]
    machines = [subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [m.communicate(timeout=600) for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    closers = [err for out, err in outs if "report:" in out]  # a machine that found the study complete
    assert closers
    for err in closers:
        shown = [line for line in err.splitlines() if line.startswith("study tiny: ") and " running, " in line]
        assert shown[-1].startswith("study tiny: 6/6 trials, 0 running")
    assert not any("cannot read" in err or "Traceback" in err for _, err in outs)


def test_a_parent_runs_end_spooled_while_its_store_is_away_is_synced_later(tmp_path):
    """The driver's calls on a study's parent run (files, summary, end), spooled as a trial's runs are, reach the
    store with `python -m lesson5.sync`."""
    from mlflow import MlflowClient

    from lesson5.sync import sync_one
    from lesson5.tracking.spool import pending, spool_calls

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("e"), run_name="study tiny").info.run_id
    folder = spool_calls(uri, parent, {"report/tiny.md": b"# Study"}, {"trials_complete": 4, "sweep_wall_seconds": 9},
                         {"verdict": "reproduced"}, "FINISHED", root=tmp_path / "offline")
    assert pending(tmp_path / "offline") == [folder]
    assert sync_one(folder) == [parent] and not folder.exists()
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["verdict"] == "reproduced"
    assert run.data.metrics == {"trials_complete": 4.0, "sweep_wall_seconds": 9.0}
    assert [a.path for a in client.list_artifacts(parent, "report")] == ["report/tiny.md"]
