"""Services (the sweep engine): a sweep worker, one process that runs trial after trial until every point of the
study so far (a grid's look, or a sampler's n_trials) has a trial that counts.

It keeps its imports, its data (read once, `lesson5.data.build` caches it per process) and one MLflow writer, so
a trial costs little beyond its training. Each trial composes its config with `lifecycle.quiet_config` and calls the
same `run(cfg)` as the command line, as a child of the study's parent run; a grid's points that differ only in a
stack's member keys (seed, lr, wd, ...) are claimed together and trained as one fit by `run_stack` (`stack=`),
each still its own Optuna trial and MLflow run.

Stopping. The driver starts a worker in a session of its own and forwards it SIGINT or SIGTERM (`_STOP`): the
running trials' fit stops at once (never inside a write to the study's storage), their MLflow runs end KILLED and
their Optuna trials FAIL with outcome `interrupted` (resume=true runs their points again), quietly; no trial is
claimed after a stop, and the worker exits 130 (SIGINT) or 143 (SIGTERM). A worker whose driver dies stops the same
way (`_watch_parent`).
"""

from __future__ import annotations

import time

STARTED = time.time()  # this process's start, near enough: the worker's wall time counts from here

import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from typing import Optional  # noqa: E402

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from lesson5.callback import Callback  # noqa: E402
from lesson5.outcome import outcome  # noqa: E402
from lesson5.process import Stop  # noqa: E402
from lesson5.sweep import storage as stores  # noqa: E402
from lesson5.sweep.halving import BUDGET  # noqa: E402
from lesson5.sweep.spec import POINT_META, Param, Study  # noqa: E402
from lesson5.tracking import Tracker  # noqa: E402

# Optuna's state for each way a trial's run can end (lesson5.outcome): the run's tag `optuna.state`.
OPTUNA_STATE = {"finished": "COMPLETE", "pruned": "PRUNED"}
# SIGINT and SIGTERM (from the driver): installed by cli(); raised only while trials train, never in a storage write
_STOP = Stop()


class Pruning(Callback):
    """Reports the objective after every epoch and raises optuna.TrialPruned when the pruner says so; `epochs`
    counts the epochs trained (what pruning saves)."""

    order = 40

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric, self.epochs = trial, metric, 0

    def after_epoch(self, learn) -> None:
        value = learn.metrics[self.metric]
        self.epochs = learn.epoch + 1
        with _STOP.shielded():  # a write to the study's storage: a stop waits until it is done
            self.trial.report(value, learn.epoch)
            prune = self.trial.should_prune()
        if prune:
            raise optuna.TrialPruned(f"pruned after epoch {self.epochs} of {learn.epochs}: {self.metric} {value:.4f}")


def suggest(trial: optuna.Trial, p: Param):
    if p.choices is not None:
        return trial.suggest_categorical(p.key, p.choices)
    if p.integer:
        return trial.suggest_int(p.key, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(p.key, p.low, p.high, log=p.log)


def trial_overrides(study: Study, trial: optuna.Trial) -> list[str]:
    """The trial's swept overrides (its parameters and seed, as Optuna records them; under halving, its rung's
    epochs, a user attribute: the budget is not a parameter of the space)."""
    params = {p.key: suggest(trial, p) for p in study.space}
    # every seed the study's looks may add, so that a later look's points fit the same distribution
    seed = trial.suggest_categorical("trainer.seed", study.seeds_at(study.looks))
    budget = trial.user_attrs.get("budget")
    return [p.override(params[p.key]) for p in study.space] + [f"trainer.seed={seed}"] + \
        ([f"{BUDGET}={budget}"] if budget is not None else [])


def run_trials(study: Study, tracker: Tracker, parent_run_id: str, trials: list[optuna.Trial],
               opt: optuna.Study) -> None:
    """Run claimed trials, alone or, several, as one stack (lesson5.stack), each its own lesson5 run under the
    parent and its own Optuna trial, and tell Optuna how each ended: its metric, pruned, or failed."""
    from lesson5.lifecycle import quiet_config
    from lesson5.run import run, run_stack

    swept = [trial_overrides(study, t) for t in trials]
    prunes = [Pruning(t, study.metric) for t in trials]
    for t in trials:
        t.set_user_attr("host", stores.HOST)
        t.set_user_attr("pid", os.getpid())
        t.set_user_attr("stack", len(trials))
    cfgs = [quiet_config([*study.base, *sw], track=True, run_name=f"{study.name} trial {t.number}")
            for t, sw in zip(trials, swept)]
    tags = [{"optuna.study": t.study.study_name, "optuna.trial": str(t.number), "sweep.file": study.name}
            for t in trials]

    def end_tags(end) -> dict[str, str]:
        return {"optuna.state": OPTUNA_STATE.get(end.outcome, "FAIL")}

    try:
        with _STOP.interruptible():  # a stop that came since the claim stops them before they start
            if len(trials) == 1:
                results = [run(cfgs[0], overrides=swept[0], tracker=tracker, parent_run_id=parent_run_id,
                               tags=tags[0], callbacks=prunes, end_tags=end_tags)]
            else:  # each member's own end (diverged, pruned) comes back as its result
                results = run_stack(cfgs, overrides=swept, callbacks=[[p] for p in prunes], tracker=tracker,
                                    parent_run_id=parent_run_id, tags=tags, end_tags=[end_tags] * len(trials))
    except Exception as e:  # noqa: BLE001 - a diverged or failing trial (or stack) ends FAIL; the sweep goes on
        results = [e] * len(trials)
    except BaseException as e:  # Ctrl-C: the claimed trials end FAIL, as Optuna's optimize leaves them
        for t in trials:
            _tell(opt, t, e, None)
        raise
    for t, prune, result in zip(trials, prunes, results):
        _tell(opt, t, result, prune.epochs, study.metric)


def _tell(opt: optuna.Study, trial: optuna.Trial, result, epochs: Optional[int], metric: str = "") -> None:
    """Record how a trial ended (its RunResult, or what ended it) as its user attributes and its Optuna state."""
    if isinstance(result, BaseException):
        end = outcome(result)
        for key, value in (("epochs", epochs), ("outcome", end.outcome), ("stop_reason", (end.reason or "")[:500])):
            trial.set_user_attr(key, value)
        pruned = isinstance(result, optuna.TrialPruned)
        if not pruned and not isinstance(result, KeyboardInterrupt):
            print(f"trial {trial.number} failed: {end.reason}", file=sys.stderr)
        opt.tell(trial, state=TrialState.PRUNED if pruned else TrialState.FAIL)
        return
    for key, value in (("epochs", epochs), ("mlflow_run_id", result.run_id),
                       ("train_seconds", result.metrics["train_seconds"]), ("outcome", "finished")):
        trial.set_user_attr(key, value)
    opt.tell(trial, result.metrics[metric])


def _claim(study: Study, opt: optuna.Study, size: int) -> list[dict]:
    """Under the claim lock: what to enqueue for the next trials ([{}]: run one already WAITING, left by an
    interrupted claim), or [] when the study's trials count already. A grid study takes its first point (look 1's
    grid, then those later looks added) that no counted trial covers, and up to `size` - 1 more that may share a
    stack with it (lesson5.stack.stack_key); other samplers choose their own values, one trial at a time."""
    from lesson5.stack import stack_key  # torch: not for the driver, which imports this module

    trials = [t for t in opt.get_trials(deepcopy=False) if stores.counts(t)]
    if any(t.state == TrialState.WAITING for t in trials):
        return [{}]
    if len(trials) >= study.total():
        return []
    if study.sampler != "grid":
        return [{"params": {}, "user_attrs": {}}]
    taken = {t.user_attrs.get("grid_point") for t in trials}
    free = [(i, point) for i, point in enumerate(study.points()) if i not in taken]
    if not free:
        return []
    key = stack_key(point_overrides(study, free[0][1]))
    together = [(i, point) for i, point in free if stack_key(point_overrides(study, point)) == key][:size]
    if len(together) > 1 and _apart_from_stacks(study, key):  # a point of a space that also holds unstackables
        together = together[:1]
    return [{"params": {k: v for k, v in point.items() if k not in POINT_META},
             "user_attrs": {"grid_point": i, "look": point["look"],
                            **({"rung": point["rung"], "budget": point[BUDGET]} if BUDGET in point else {})}}
            for i, point in together]


_UNSTACKABLE: dict[tuple, Optional[str]] = {}


def _apart_from_stacks(study: Study, key: tuple) -> Optional[str]:
    """Why points of this stack key cannot share a stack (a swept trainer.ensemble > 1, data.split=cv,
    model.batchnorm: lesson5.run.stackable), or None; `stack_size` judged the study's first point only."""
    if key not in _UNSTACKABLE:
        from lesson5.config import validate
        from lesson5.lifecycle import quiet_config
        from lesson5.run import stackable

        _UNSTACKABLE[key] = stackable(validate(quiet_config(list(key))))
    return _UNSTACKABLE[key]


def point_overrides(study: Study, point: dict) -> list[str]:
    """A grid point's overrides: the study's base, its parameters and its seed, and a halving rung's epochs (after
    the base, which they replace; so points of two budgets never share a stack_key)."""
    return [*study.base, *(p.override(point[p.key]) for p in study.space), f"trainer.seed={point['trainer.seed']}",
            *([f"{BUDGET}={point[BUDGET]}"] if BUDGET in point else [])]


def stack_size(study: Study) -> int:
    """How many trials this worker trains as one stack: the study's `stack`, or for auto the measured size for its
    model and device, never more than memory holds (lesson5.stack_size). A study whose trials cannot stack gets 1,
    and a line why."""
    if study.stack == 1 or study.sampler != "grid":
        return 1
    if study.pruner["name"] not in ("none", "halving") and study.stack == "auto":
        # a stack's members move in step, and a pruned member's share of the fit is spent anyway: pruning saves
        # time only between trials that run one after another
        print(f"study {study.name}: each trial alone (stack=1): pruner {study.pruner['name']}", file=sys.stderr)
        return 1
    from lesson5.lifecycle import quiet_config
    from lesson5.stack_size import stack_size as size_of

    size, why = size_of(quiet_config(point_overrides(study, study.points()[0])), study.stack)
    if why:
        print(f"study {study.name}: each trial alone (stack=1): {why}", file=sys.stderr)
    return size


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
    size = stack_size(study)
    try:
        while not too_many_failures(study, opt) and _STOP.signum is None:
            # The lock is held from the claim until Optuna has handed out the claimed trials, so each worker runs
            # the trials it enqueued, and none is left WAITING.
            with stores.lock(storage, study_name):
                stores.fail_lost_trials(opt)
                claimed = _claim(study, opt, size)
                for nxt in claimed:
                    if nxt:
                        opt.enqueue_trial(nxt["params"], user_attrs=nxt["user_attrs"])
                asked = [opt.ask() for _ in claimed]
            if not asked:
                break
            run_trials(study, tracker, parent_run_id, asked, opt)
            trials += len(asked)
    except KeyboardInterrupt:  # the trials have been told (run_trials): nothing to print
        code = _STOP.code
    finally:
        tracker.close()  # their runs' ends reach the store
    if _STOP.signum is not None:
        code = _STOP.code
    if code == 0:  # for the throughput report: this worker's wall time and trials
        try:
            opt.set_user_attr(f"worker {stores.HOST} {os.getpid()}", {"wall_s": time.time() - STARTED,
                                                                    "trials": trials})
        except Exception as e:  # noqa: BLE001 - a storage lost at the end: the driver says what to do
            print(f"worker {os.getpid()}: its wall time not recorded ({type(e).__name__}: {e})", file=sys.stderr)
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
            with _STOP.interruptible():
                result = run(quiet_config([*study.base, *overrides, *study.final, "tracking.log_model=true"],
                                          track=True, run_name=f"{study.name} final {label}"),
                             overrides=[*overrides, *study.final], tracker=tracker, parent_run_id=parent_run_id,
                             tags={"optuna.study": study_name, "sweep.final": label})
            folds = {name: m[study.metric] for name, m in result.folds.items()}
            seconds = {name: m["train_seconds"] for name, m in result.folds.items()}
            opt.set_user_attr(f"final.{label}", {"overrides": overrides, "folds": folds, "seconds": seconds,
                                                 "run_id": result.run_id})
    except KeyboardInterrupt:  # its run ended KILLED; resume=true scores the finals again
        pass
    finally:
        tracker.close()
    if _STOP.signum is not None:
        sys.exit(_STOP.code)


def _watch_parent(parent: int) -> None:
    """A thread: once the driver is gone (this process reparented: it was killed), stop as if it had said so."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def cli() -> None:
    """`python -m lesson5.sweep.worker`, as the driver starts it: (entry, args) pickled on standard input, entry
    "main" (a worker) or "score_final"."""
    import pickle

    _STOP.install()  # SIGINT and SIGTERM, held since the start (process.start_module), are taken from here on
    entry, args, driver = pickle.load(sys.stdin.buffer)
    # the driver's pid as it sent it: a driver killed before this line is seen as gone at the first look
    threading.Thread(target=_watch_parent, args=(driver,), name="lesson5-worker-parent", daemon=True).start()
    {"main": main, "score_final": score_final}[entry](*args)


if __name__ == "__main__":
    cli()
