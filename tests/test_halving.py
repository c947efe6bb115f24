"""Schedule-aware successive halving (lesson5.sweep.halving): rungs of complete fits at growing epochs, the top
1/eta promoted, verdicts from one rung's trials only; and a halving sweep on tiny data."""

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from lesson5.config import compose, validate
from lesson5.errors import ConfigError
from lesson5.stack import stack_key
from lesson5.sweep import halving, report, spec
from lesson5.sweep import table as tables
from lesson5.sweep.table import Row, Table
from lesson5.sweep.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, judge

ROOT = Path(__file__).resolve().parents[1]
STUDY = {"claim": "n_factors=4 works best", "rule": {"kind": "best", "param": "model.n_factors", "value": 4},
         "control": {"kind": "best", "param": "model.n_factors", "value": 2},
         "space": {"model.n_factors": {"choices": [2, 4, 8]}}, "seeds": [0, 1],
         "objective": {"metric": "valid_rmse", "direction": "minimize"}, "sampler": "grid",
         "base": ["trainer.epochs=2"], "pruner": {"name": "halving", "eta": 2, "min_epochs": 1}}


def write_study(folder: Path, **changes) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}))
    return path


def test_rung_budgets_grow_by_eta_up_to_the_full_recipe():
    assert halving.budgets(3, 1, 5) == [1, 3, 5]
    assert halving.budgets(2, 1, 8) == [1, 2, 4, 8]
    assert halving.budgets(5, 1, 5) == [1, 5]
    assert halving.budgets(3, 2, 5) == [2, 5]
    assert [halving.keep(n, 3) for n in (1, 2, 3, 6, 10)] == [1, 2, 2, 2, 3]  # at least 2: a competitor stays


@pytest.mark.parametrize("pruner, where", [
    ({"name": "halving", "eta": 1}, "pruner.eta: 1"),
    ({"name": "halving", "eta": 2.5}, "pruner.eta: 2.5"),
    ({"name": "halving", "eta": "3"}, "pruner.eta: '3'"),
    ({"name": "halving", "min_epochs": 0}, "pruner.min_epochs: 0"),
    ({"name": "halving", "min_epochs": 2}, "pruner.min_epochs: 2 is not a whole number from 1 to 1"),
    ({"name": "halving", "rungs": 3}, "pruner: unknown field(s) ['rungs']"),
], ids=["eta 1", "eta not whole", "eta a string", "min_epochs 0", "min_epochs at the full epochs", "unknown field"])
def test_a_bad_eta_or_min_epochs_is_refused_naming_the_file_and_key(tmp_path, pruner, where):
    path = write_study(tmp_path, pruner=pruner)
    with pytest.raises(ConfigError) as err:
        spec.load(str(path))
    assert str(path) in str(err.value) and where in str(err.value)


@pytest.mark.parametrize("changes, why", [
    ({"max_seeds": 3, "looks": 2}, "halving needs looks: 1"),
    ({"final": {"overrides": ["data.split=cv"]}}, "without `final` scoring"),
    ({"space": {"model.n_factors": {"choices": [2, 4]}, "trainer.epochs": {"choices": [1, 2]}}},
     "trainer.epochs out of the space"),
], ids=["with looks", "with final scoring", "epochs swept"])
def test_a_study_halving_cannot_run_is_refused(tmp_path, changes, why):
    path = write_study(tmp_path, **changes)
    with pytest.raises(ConfigError) as err:
        spec.load(str(path))
    assert str(path) in str(err.value) and why in str(err.value)


def test_pruner_halving_on_the_command_line_is_checked_against_the_study(tmp_path):
    from lesson5.sweep.driver import Sweep

    path = write_study(tmp_path, pruner="none", max_seeds=3, looks=2)
    with pytest.raises(ConfigError) as err:
        Sweep.prepare(str(path), pruner="halving", storage=str(tmp_path / "j.journal"))
    assert "pruner=halving (the command line's" in str(err.value) and "looks: 1" in str(err.value)


def test_a_points_epochs_reach_the_trained_config_and_its_own_stacks(tmp_path):
    from lesson5.sweep.worker import _claim, point_overrides, trial_overrides

    study = spec.load(str(write_study(tmp_path)))
    assert study.budgets == [1, 2]
    first = study.points()[0]
    assert first["rung"] == 1 and first[halving.BUDGET] == 1
    assert validate(compose(point_overrides(study, first))).trainer.epochs == 1  # the rung's, not the base's 2
    later = {**first, "rung": 2, halving.BUDGET: 2}
    assert stack_key(point_overrides(study, first)) != stack_key(point_overrides(study, later))
    assert stack_key(point_overrides(study, first)) == stack_key(point_overrides(study, study.points()[1]))  # seeds
    # claimed and asked as the worker does: the trial's overrides carry its epochs, its attributes its rung
    opt = optuna.create_study()
    (claim, *_) = _claim(study, opt, 1)
    assert claim["params"] == {"model.n_factors": 2, "trainer.seed": 0}
    opt.enqueue_trial(claim["params"], user_attrs=claim["user_attrs"])
    trial = opt.ask()
    assert trial.user_attrs["rung"] == 1 and trial_overrides(study, trial)[-1] == "trainer.epochs=1"
    cfg = validate(compose([*study.base, *trial_overrides(study, trial)]))
    assert cfg.trainer.epochs == 1 and cfg.model.n_factors == 2


def test_a_resumed_study_runs_the_rung_it_had_added_at_its_budget(tmp_path):
    """The driver keeps a rung's points in the Optuna study (ADDED_ATTR) and a resumed sweep reads them back into
    Study.added: once the earlier rung's trials count, the worker claims the added rung's points, with their
    epochs, as a stack of their own."""
    from lesson5.sweep.worker import _claim

    study = spec.load(str(write_study(tmp_path)))
    opt = optuna.create_study()
    for _ in range(3):  # rung 1, the grid at 1 epoch: a stack per value (they differ only in seed)
        claims = _claim(study, opt, 8)
        assert [c["user_attrs"]["budget"] for c in claims] == [1, 1]
        for claim in claims:
            opt.enqueue_trial(claim["params"], user_attrs=claim["user_attrs"])
        for _ in claims:
            opt.tell(opt.ask(), 0.9)
    assert _claim(study, opt, 8) == []  # rung 1 is done and nothing was added yet
    study.added = [{"model.n_factors": 4, "trainer.seed": s, "look": 1, "rung": 2, halving.BUDGET: 2}
                   for s in (0, 1)]  # as Sweep.prepare reads them back from ADDED_ATTR
    claims = _claim(study, opt, 8)
    assert [c["user_attrs"] for c in claims] == [{"grid_point": 6 + i, "look": 1, "rung": 2, "budget": 2}
                                                 for i in range(2)]


def rows(rung: int, budget: int, values: dict, start: int = 0) -> list[Row]:
    """Trial rows of one rung: values {n_factors: [objective at seed 0, seed 1, ...]}."""
    out = []
    for v, ys in values.items():
        for seed, y in enumerate(ys):
            out.append(Row("trial", "COMPLETE", {"model.n_factors": v, "trainer.seed": seed}, y,
                           start + len(out), 1, curve=[y] * budget, seconds=1.0, rung=rung, budget=budget))
    return out


def test_the_top_1_over_eta_values_are_promoted_at_their_seeds_and_the_next_budget(tmp_path):
    study = spec.load(str(write_study(tmp_path, space={"model.n_factors": {"choices": [2, 4, 8, 16, 32]}},
                                      pruner={"name": "halving", "eta": 2})))
    table = Table(rows(1, 1, {2: [0.95, 0.96], 4: [0.90, 0.91], 8: [0.92, 0.90], 16: [0.93, 0.99], 32: [0.97, 0.98]}))
    new = halving.promote(study, table)
    # means 4: 0.905, 8: 0.91, 2: 0.955, 16: 0.96, 32: 0.975; keep 5 // 2 = 2
    assert new == [{"model.n_factors": v, "trainer.seed": s, "look": 1, "rung": 2, halving.BUDGET: 2}
                   for v in (4, 8) for s in (0, 1)]
    assert halving.promote(study, Table(table.rows + rows(2, 2, {4: [0.9, 0.9], 8: [0.9, 0.9]}, 10))) == []
    maximize = spec.load(str(write_study(tmp_path, space={"model.n_factors": {"choices": [2, 4, 8, 16, 32]}},
                                         objective={"metric": "valid_rmse", "direction": "maximize"},
                                         pruner={"name": "halving", "eta": 2})))
    assert sorted({p["model.n_factors"] for p in halving.promote(maximize, table)}) == [16, 32]


def test_a_value_with_no_finished_trial_is_not_promoted(tmp_path):
    """With two swept parameters, a value whose every trial failed has no best setting and no evidence: it is left
    out (it once raised KeyError and left the study's parent run RUNNING)."""
    study = spec.load(str(write_study(tmp_path, space={"model.n_factors": {"choices": [2, 4, 8]},
                                                       "optim.wd": {"choices": [0.0, 0.1]}},
                                      pruner={"name": "halving", "eta": 2})))
    ok = [Row("trial", "COMPLETE", {"model.n_factors": 4, "optim.wd": wd, "trainer.seed": s}, 0.9 + wd, i, 1,
              curve=[0.9], seconds=1.0, rung=1, budget=1) for i, (wd, s) in enumerate([(0.0, 0), (0.0, 1), (0.1, 0),
                                                                                      (0.1, 1)])]
    failed = [Row("trial", "FAIL", {"model.n_factors": v, "optim.wd": 0.0, "trainer.seed": 0}, None, 10 + i, 1,
                  curve=[], seconds=1.0, rung=1, budget=1) for i, v in enumerate((2, 8))]
    new = halving.promote(study, Table(ok + failed))
    assert new == [{"model.n_factors": 4, "optim.wd": 0.0, "trainer.seed": s, "look": 1, "rung": 2,
                    halving.BUDGET: 2} for s in (0, 1)]


@pytest.mark.parametrize("changes, why", [
    ({"base": ["model=mlp", "data=mnist", "++trainer.stages=[{name: a, epochs: 2, lr: 0.01}]"],
      "rule": {"kind": "best", "param": "optim.lr", "value": 0.01},
      "control": {"kind": "best", "param": "optim.lr", "value": 0.1},
      "space": {"optim.lr": {"choices": [0.01, 0.1]}},
      "objective": {"metric": "valid_loss", "direction": "minimize"}}, "a recipe without trainer.stages"),
    ({"space": {"model.n_factors": {"choices": [2, 4]}, "optim.wd": {"choices": [0.0, 0.1]}},
      "control": {"kind": "best", "param": "optim.wd", "value": 0.0}}, "the control on the rule's parameter"),
], ids=["staged recipe", "control on another parameter"])
def test_a_study_whose_rungs_would_not_be_what_they_say_is_refused(tmp_path, changes, why):
    path = write_study(tmp_path, **changes)
    with pytest.raises(ConfigError) as err:
        spec.load(str(path))
    assert str(path) in str(err.value) and why in str(err.value)


def test_trials_of_two_budgets_are_never_judged_together(tmp_path):
    """The claim (4) and the control (2) are judged on the final rung alone: its means, not a mix with the 1-epoch
    rung's (where 4 looked worst); a claim whose value was eliminated is judged where it was, never reproduced."""
    study = spec.load(str(write_study(tmp_path, seeds=[0, 1, 2])))
    rung1 = rows(1, 1, {2: [0.80, 0.81, 0.79], 4: [0.99, 0.98, 0.97], 8: [0.85, 0.86, 0.84]})
    rung2 = rows(2, 2, {2: [0.95, 0.96, 0.94], 4: [0.90, 0.91, 0.89]}, len(rung1))
    table = Table(rung1 + rung2)
    got = report.verdicts(table, study)
    alone = judge(study.rule, [(r.params, r.value) for r in rung2], False, values=[2, 4])
    assert got["rule"].result == alone.result == REPRODUCED
    assert got["rule"].scores["4"].mean == pytest.approx(0.90) and "8" not in got["rule"].scores
    assert got["control"].result == NOT_REPRODUCED
    # 8 was eliminated at rung 1: a claim that 8 works best has no full-budget evidence, whatever rung 1 read
    eight = halving.judge_rule(study, table, {"kind": "best", "param": "model.n_factors", "value": 8,
                                              "tolerance": 0.1}, 0.95)
    assert eight.result == INCONCLUSIVE and "8 eliminated at rung 1 of 2 (1 of 2 epochs)" in eight.summary
    assert "it read reproduced" in eight.summary  # within 0.1 of 2 at 1 epoch
    beaten = halving.judge_rule(study, table, {"kind": "best", "param": "model.n_factors", "value": 8}, 0.95)
    assert beaten.result == INCONCLUSIVE and "it read not reproduced" in beaten.summary  # 2 beat it at 1 epoch
    assert halving.eliminated(study, table) == {1: ["8"]}
    # the table keeps each trial's rung and budget, and the report names the eliminated values by rung
    path = tables.write(table, study, tmp_path / "tiny.csv")
    back = tables.read(path, study)
    assert [(r.rung, r.budget) for r in back.trials()] == [(r.rung, r.budget) for r in table.trials()]
    text = report.build(back, study).markdown
    assert "| 1 | 1 | 9 | 9 | 2, 4, 8 | 8 |" in text and "| 2 | 2 | 6 | 6 | 2, 4 | - |" in text


def sweep(tmp_path, study: Path, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "lesson5.sweep", str(study), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow
def test_a_halving_sweep_ends_with_complete_full_budget_trials_and_a_verdict(tmp_path, movielens_dir):
    study = write_study(tmp_path)
    data = [f"data.path={movielens_dir}", "data.verify=false"]
    done = sweep(tmp_path, study, "workers=2", *data)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rung 2 of 2: 4 trials at 2 epochs (model.n_factors " in done.stderr
    opt = optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "sweeps.journal"))))
    assert [t.state.name for t in opt.trials] == ["COMPLETE"] * 10
    by_rung = {r: [t for t in opt.trials if t.user_attrs["rung"] == r] for r in (1, 2)}
    assert len(by_rung[1]) == 6 and len(by_rung[2]) == 4
    assert all(t.user_attrs["epochs"] == len(t.intermediate_values) == t.user_attrs["budget"] == r
               for r, ts in by_rung.items() for t in ts)  # each trained its rung's whole schedule
    assert len({t.params["model.n_factors"] for t in by_rung[2]}) == 2
    study_ = spec.load(str(study), data)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("lesson5-movielens").experiment_id])
    (parent,) = [r for r in runs if "optuna.trial" not in r.data.tags]
    verdict = report.verdicts(tables.from_optuna(opt, study_), study_)["rule"]
    assert parent.info.status == "FINISHED" and parent.data.tags["verdict"] == verdict.result
    children = [r for r in runs if "optuna.trial" in r.data.tags]
    assert sorted(c.data.params["trainer.epochs"] for c in children) == ["1"] * 6 + ["2"] * 4
    written = (tmp_path / "sweeps" / "results" / "tiny.md").read_text()
    assert "## Rungs" in written and "pruner halving (eta 2, min_epochs 1)" in written
    again = sweep(tmp_path, study, "resume=true", *data)  # complete: a resume adds no rung and runs nothing
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "sweeps.journal")))).trials) == 10
