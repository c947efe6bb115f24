"""Services (the sweep engine): a sweep worker, one process that runs trial after trial until every point of the
study so far (a grid's look, or a sampler's n_trials) has a trial that counts.

It keeps its imports, its data (read once, `lesson5.data.build` caches it per process) and one MLflow writer, so
a trial costs little beyond its training. Each trial composes its config with `lifecycle.quiet_config` and calls the
same `run(cfg)` as the command line, as a child of the study's parent run.
"""

from __future__ import annotations

import time

STARTED = time.time()  # this process's start, near enough: the worker's wall time counts from here

import contextlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Optional  # noqa: E402

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from lesson5.callback import Callback  # noqa: E402
from lesson5.outcome import outcome  # noqa: E402
from lesson5.sweep import storage as stores  # noqa: E402
from lesson5.sweep.spec import Param, Study  # noqa: E402
from lesson5.tracking import Tracker  # noqa: E402

# Optuna's state for each way a trial's run can end (lesson5.outcome): the run's tag `optuna.state`.
OPTUNA_STATE = {"finished": "COMPLETE", "pruned": "PRUNED"}


class Pruning(Callback):
    """Reports the objective after every epoch and raises optuna.TrialPruned when the pruner says so; `epochs`
    counts the epochs trained (what pruning saves)."""

    order = 40

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric, self.epochs = trial, metric, 0

    def after_epoch(self, learn) -> None:
        value = learn.metrics[self.metric]
        self.epochs = learn.epoch + 1
        self.trial.report(value, learn.epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {self.epochs} of {learn.epochs}: {self.metric} {value:.4f}")


def suggest(trial: optuna.Trial, p: Param):
    if p.choices is not None:
        return trial.suggest_categorical(p.key, p.choices)
    if p.integer:
        return trial.suggest_int(p.key, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(p.key, p.low, p.high, log=p.log)


def objective(study: Study, tracker: Tracker, parent_run_id: str, claim: contextlib.ExitStack):
    """The Optuna objective: one lesson5 run per trial, its metric the value. It releases the claim lock first:
    by then Optuna has popped the trial this worker claimed."""
    from lesson5.lifecycle import quiet_config
    from lesson5.run import run

    def trial_fn(trial: optuna.Trial) -> float:
        claim.close()
        trial.set_user_attr("host", stores.HOST)
        trial.set_user_attr("pid", os.getpid())
        prune = Pruning(trial, study.metric)
        params = {p.key: suggest(trial, p) for p in study.space}
        # every seed the study's looks may add, so that a later look's points fit the same distribution
        seed = trial.suggest_categorical("trainer.seed", study.seeds_at(study.looks))
        swept = [p.override(params[p.key]) for p in study.space] + [f"trainer.seed={seed}"]
        overrides = [*study.base, *swept]
        tags = {"optuna.study": trial.study.study_name, "optuna.trial": str(trial.number), "sweep.file": study.name}
        try:
            result = run(quiet_config(overrides, track=True, run_name=f"{study.name} trial {trial.number}"),
                         overrides=swept, tracker=tracker, parent_run_id=parent_run_id, tags=tags,
                         callbacks=[prune],
                         end_tags=lambda end: {"optuna.state": OPTUNA_STATE.get(end.outcome, "FAIL")})
        except BaseException as e:
            end = outcome(e)
            trial.set_user_attr("epochs", prune.epochs)
            trial.set_user_attr("outcome", end.outcome)
            trial.set_user_attr("stop_reason", (end.reason or "")[:500])
            raise
        for key, value in (("epochs", prune.epochs), ("mlflow_run_id", result.run_id),
                           ("train_seconds", result.metrics["train_seconds"]), ("outcome", "finished")):
            trial.set_user_attr(key, value)
        return result.metrics[study.metric]

    return trial_fn


def _next(study: Study, opt: optuna.Study) -> Optional[dict]:
    """Under the claim lock: what to enqueue for the next trial, {} to run a trial already WAITING (left by an
    interrupted claim), or None when the study's trials count already. A grid study takes its first point (look 1's
    grid, then those later looks added) that no counted trial covers; other samplers choose their own values."""
    trials = [t for t in opt.get_trials(deepcopy=False) if stores.counts(t)]
    if any(t.state == TrialState.WAITING for t in trials):
        return {}
    if len(trials) >= study.total():
        return None
    if study.sampler != "grid":
        return {"params": {}, "user_attrs": {}}
    taken = {t.user_attrs.get("grid_point") for t in trials}
    return next(({"params": {k: v for k, v in point.items() if k != "look"},
                  "user_attrs": {"grid_point": i, "look": point["look"]}}
                 for i, point in enumerate(study.points()) if i not in taken), None)


def too_many_failures(study: Study, opt: optuna.Study) -> bool:
    done = [t for t in opt.get_trials(deepcopy=False) if t.state.is_finished() and stores.counts(t)]
    failed = sum(t.state == TrialState.FAIL for t in done)
    return len(done) >= 4 and failed / len(done) > study.max_fail_rate


def main(study: Study, storage: str, study_name: str, parent_run_id: str, tracking_uri: str) -> None:
    """A worker process: claim, run and tell trials until the study is full, interrupted or failing."""
    from lesson5.sweep.samplers import make_pruner, make_sampler

    tracker = Tracker(tracking_uri)  # first: its writer imports MLflow while this process imports torch
    import lesson5.run  # noqa: F401

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opt = optuna.load_study(study_name=study_name, storage=stores.open_storage(storage),
                            sampler=make_sampler(study), pruner=make_pruner(study))
    code, trials = 0, 0
    try:
        while not too_many_failures(study, opt):
            # The lock is held from the claim until Optuna has popped the claimed trial (the objective's first
            # line releases it), so each worker runs the trial it enqueued, and none is left WAITING.
            with contextlib.ExitStack() as claim:
                claim.enter_context(stores.lock(storage, study_name))
                stores.fail_lost_trials(opt)
                nxt = _next(study, opt)
                if nxt is None:
                    break
                if nxt:
                    opt.enqueue_trial(nxt["params"], user_attrs=nxt["user_attrs"])
                # a diverged or failing trial ends FAIL and the sweep goes on; Ctrl-C stops this worker
                opt.optimize(objective(study, tracker, parent_run_id, claim), n_trials=1, catch=(Exception,),
                             gc_after_trial=False)
            trials += 1
    except KeyboardInterrupt:
        code = 130
    finally:
        tracker.close()
        if code == 0:  # for the throughput report: this worker's wall time and trials
            opt.set_user_attr(f"worker {stores.HOST} {os.getpid()}", {"wall_s": time.time() - STARTED,
                                                                    "trials": trials})
    sys.exit(code)


def score_final(study: Study, storage: str, study_name: str, parent_run_id: str, tracking_uri: str) -> None:
    """A process that scores the study's best recipe, the base recipe and a `final` control's recipe once each with
    the study file's `final` overrides (the test folds), as children of the parent; per-fold scores and training
    seconds go to the study's user attributes."""
    from lesson5.lifecycle import quiet_config
    from lesson5.run import run

    opt = optuna.load_study(study_name=study_name, storage=stores.open_storage(storage))
    best = {k: v for k, v in opt.best_trial.params.items() if k != "trainer.seed"}  # the base's seed for both
    swept = [p.override(best[p.key]) for p in study.space if p.key in best]
    tracker = Tracker(tracking_uri)
    try:
        recipes = [("best", swept), ("base", [])]
        if study.control is not None and study.control["kind"] == "final":
            recipes.append(("control", list(study.control["overrides"])))
        for label, overrides in recipes:
            # the finals keep their MLflow model: they are the study's answer
            result = run(quiet_config([*study.base, *overrides, *study.final, "tracking.log_model=true"], track=True,
                                      run_name=f"{study.name} final {label}"),
                         overrides=[*overrides, *study.final], tracker=tracker, parent_run_id=parent_run_id,
                         tags={"optuna.study": study_name, "sweep.final": label})
            folds = {name: m[study.metric] for name, m in result.folds.items()}
            seconds = {name: m["train_seconds"] for name, m in result.folds.items()}
            opt.set_user_attr(f"final.{label}", {"overrides": overrides, "folds": folds, "seconds": seconds,
                                                 "run_id": result.run_id})
    finally:
        tracker.close()


def cli() -> None:
    """`python -m lesson5.sweep.worker`, as the driver starts it: (entry, args) pickled on standard input, entry
    "main" (a worker) or "score_final"."""
    import pickle

    entry, args = pickle.load(sys.stdin.buffer)
    {"main": main, "score_final": score_final}[entry](*args)


if __name__ == "__main__":
    cli()
