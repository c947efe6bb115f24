"""Services (the sweep engine): the sweep driver. It checks a study before any trial, owns its one MLflow parent run,
starts the workers on this machine, runs a grid study's looks (seeds added until its verdicts are decided), and
closes the parent with the study's summary, its results table and its report once the study is complete.

Looks. A grid study runs its grid at the file's seeds (look 1). Then, while the claim's or the control's verdict is
undecided at the look's level and looks remain, `next_points` asks `verdict.more_seeds` which values need seeds,
and adds each at its best setting at the next look's seeds (`Study.seeds_at`): the same new seeds for every value,
so the pairs grow. The added points are kept in the Optuna study (`ADDED_ATTR`), so that a resumed sweep, or the
driver of another machine sharing the study, runs the same ones. Under `pruner: halving` (one look), the points
added after each complete rung are the next rung's instead (`lesson5.sweep.halving.promote`).

Every machine of a shared study runs this. The parent run's id is kept in the Optuna study (a user attribute),
and is created under the study's lock, so machines that start together share one parent. The driver imports
Optuna and MLflow, never torch: trials run in the worker processes.

While its workers run, the driver shows the study's progress (`lesson5.sweep.progress`), read from the storage, so
that it counts every machine's trials; it ends with the commands that open the study in MLflow and in
optuna-dashboard.

Stopping. The workers run in sessions of their own: Ctrl-C or SIGTERM, to the driver alone or to its whole process
group, stops the driver (`lesson5.process.Stop`), which forwards the signal to each worker; the workers end their
running trials (Optuna FAIL with outcome `interrupted`, so resume=true runs their points again) and MLflow runs
(KILLED), then the driver closes the parent run as KILLED with a `stop_reason`, and exits 130 (SIGINT) or 143
(SIGTERM). A worker whose driver dies stops the same way.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import shlex
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import optuna
from optuna.trial import TrialState

from lesson5 import naming
from lesson5.errors import ConfigError
from lesson5.process import Stop, exit_code, start_module
from lesson5.sweep import spec as specs
from lesson5.sweep import storage as stores
from lesson5.sweep.progress import Progress, dashboard_command
from lesson5.sweep.spec import Study
from lesson5.sweep.verdict import SEED, more_seeds
from lesson5.tracking.store import (
    check_reachable,
    experiment_id,
    fail_fast_http,
    fail_run,
    log_summary,
    open_client,
    quiet_console,
    resolve_uri,
    run_link,
    source_tags,
    ui_command,
)

PARENT_ATTR = "mlflow_parent_run_id"
STOPPED = (exit_code(signal.SIGINT), exit_code(signal.SIGTERM))  # the exit codes of a stopped worker
ADDED_ATTR = "added_points"  # the points later looks added, each with its look


def _key(point: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in point.items() if k != "look"))


def next_points(study: Study, trials: list[tuple[dict, float]], look: int) -> list[dict]:
    """After look `look` of a grid study: the points the next look runs, [] when none (decided, the last look, or
    every undecided value at max_seeds). Each value that the claim's or the control's rule still needs
    (`more_seeds`) runs at its best setting (every setting, for a value with none complete) at the next look's seeds
    that it lacks."""
    if study.sampler != "grid" or look >= study.looks:
        return []
    maximize, seeds = study.direction == "maximize", study.seeds_at(look + 1)
    taken, out = {_key(p) for p in study.points()}, []
    for rule in study.rules().values():
        if rule["kind"] == "final":
            continue
        param = next(p for p in study.space if p.key == rule["param"])
        need = more_seeds(rule, trials, maximize, look, study.looks, study.max_seeds, values=param.choices)
        for value, setting in need.items():
            fixed = {param.key: next(c for c in param.choices if str(c) == value), **setting}
            free = [p for p in study.space if p.key not in fixed]
            for combo in itertools.product(*(p.choices for p in free)):
                values = {**fixed, **dict(zip((p.key for p in free), combo))}
                for seed in seeds:
                    point = {**{p.key: values[p.key] for p in study.space}, SEED: seed, "look": look + 1}
                    if _key(point) not in taken:
                        taken.add(_key(point))
                        out.append(point)
    return out


@dataclass
class Sweep:
    study: Study
    storage: str
    study_name: str
    workers: int
    tracking_uri: str
    experiment: str
    opt: optuna.Study
    parent_run_id: Optional[str] = None
    progress: Optional[Progress] = None  # the live display, while the workers run (run(progress=True))
    stop: Optional[Stop] = None  # SIGINT and SIGTERM, installed by the command (or by run())

    @classmethod
    def prepare(cls, name: str, overrides: list[str] = (), *, n_trials: Optional[int] = None, workers: int = 1,
                storage: str = stores.DEFAULT_JOURNAL, study_name: Optional[str] = None, resume: bool = False,
                pruner: Optional[str] = None, stop: Optional[Stop] = None) -> Sweep:
        """Everything that can be refused, refused before a trial or a parent run exists. The options are typed
        (`lesson5.sweep.__main__` parses the command line); None keeps the study file's own. `stop`: the
        command's, installed; a stop cuts the checks short (KeyboardInterrupt), but not the study's opening nor
        its parent run's start, which `run` then closes as KILLED."""
        from lesson5.config import compose, validate

        stop = stop or Stop()  # not installed: signals keep Python's handling
        with stop.interruptible():
            study = specs.load(name, list(overrides))
            if pruner is not None:  # the file's own was checked by load
                study.pruner = {"name": pruner}
                specs.check_pruner(study, where=f"pruner={pruner} (the command line's, for {study.path})")
            if n_trials is not None:
                study.n_trials = n_trials
                if study.sampler == "grid" and study.n_trials > len(study.grid()):
                    raise ConfigError(f"n_trials={study.n_trials}: the grid of {study.path} has "
                                      f"{len(study.grid())} points")
            conf = validate(compose(study.base))
            uri = resolve_uri(conf.tracking.uri)
            if not conf.tracking.enabled or conf.tracking.mode.value == "offline":
                raise ConfigError("tracking=none and tracking.mode=offline: a sweep records every trial as a child "
                                  "of its MLflow parent run, in a reachable store; drop them")
            check_reachable(uri)
        study_name = study_name or study.name
        opt = cls._open_study(study, storage, study_name, resume)
        study.added = list(opt.user_attrs.get(ADDED_ATTR, []))  # a resumed study's later looks
        sweep = cls(study, storage, study_name, workers, uri, naming.experiment_name(conf), opt, stop=stop)
        sweep.parent_run_id = sweep._parent()
        return sweep

    @staticmethod
    def _open_study(study: Study, storage: str, study_name: str, resume: bool) -> optuna.Study:
        from lesson5.sweep.samplers import make_pruner, make_sampler

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        backend = stores.open_storage(storage)
        with stores.lock(storage, study_name):
            try:
                opt = optuna.create_study(study_name=study_name, storage=backend, direction=study.direction,
                                          sampler=make_sampler(study), pruner=make_pruner(study))
                opt.set_user_attr("sweep_file", str(study.path))
                opt.set_user_attr("base", study.base)
                with warnings.catch_warnings():  # "experimental": the objective's name, for optuna-dashboard's plots
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    opt.set_metric_names([study.metric])
                return opt
            except optuna.exceptions.DuplicatedStudyError:
                opt = optuna.load_study(study_name=study_name, storage=backend, sampler=make_sampler(study),
                                        pruner=make_pruner(study))
            except Exception as e:  # noqa: BLE001 - the database went away between open and create
                raise ConfigError(f"storage={storage}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
        active = opt.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        if opt.trials and not active and not resume:
            raise ConfigError(f"study {study_name!r} already has {len(opt.trials)} trials in {storage}: pass "
                              f"resume=true to continue it, or study_name=... to start another")
        if opt.direction.name.lower() != study.direction:
            raise ConfigError(f"study {study_name!r} in {storage} {opt.direction.name.lower()}s, but {study.path} "
                              f"says {study.direction}")
        return opt

    def _client(self):
        quiet_console()  # before any run ends here or in a worker: they inherit it
        fail_fast_http()  # a server gone is said in seconds, not after minutes of retries
        return open_client(self.tracking_uri)

    def _parent(self) -> str:
        """The study's parent run: made by the first machine to get here, running again on a resume."""
        client = self._client()
        with stores.lock(self.storage, self.study_name):
            run_id = self.opt.user_attrs.get(PARENT_ATTR)  # read from the storage: another machine may have set it
            if run_id is not None:
                client.update_run(run_id, status="RUNNING")
                return run_id
            exp_id = experiment_id(client, self.experiment)
            s = self.study
            run = client.create_run(exp_id, run_name=f"study {self.study_name}", tags={
                "optuna.study": self.study_name, "sweep.file": s.name, "sweep.claim": s.claim[:5000],
                "mlflow.note.content": f"Optuna study {self.study_name} ({s.path.name}): {s.claim}",
                **source_tags()})
            params = {"sampler": s.sampler, "pruner": s.pruner["name"], "n_trials": s.n_trials, "objective":
                      f"{s.direction} {s.metric}", "seeds": s.seeds, "max_seeds": s.max_seeds, "looks": s.looks,
                      "rule": s.rule, "control": s.control, "base": " ".join(s.base) or "(none)",
                      "storage": self.storage, **{f"space.{p.key}": p.choices or f"[{p.low}, {p.high}]"
                                                  for p in s.space}}
            log_summary(client, run.info.run_id, params=params)
            self.opt.set_user_attr(PARENT_ATTR, run.info.run_id)
            return run.info.run_id

    def run(self, progress: bool = True) -> int:
        """Start the workers and wait for them, look after look, showing the study's progress (unless
        `progress=False`), then close the parent run if the study is complete. SIGINT and SIGTERM stop the workers
        (the exit code 130 or 143): handled by the command's `Stop`, or by one installed here until the end."""
        own = self.stop is None or not self.stop.installed
        if own:
            self.stop = (self.stop or Stop()).install()
        try:
            return self._run(progress)
        finally:
            if own:
                self.stop.restore()

    def _run(self, progress: bool) -> int:
        from lesson5.sweep.worker import too_many_failures

        s = self.study
        looks = f", up to {s.looks} looks (seeds added up to {s.max_seeds})" if s.looks > 1 else \
            f" at {s.budgets[0]} epochs, then halving's rungs at {', '.join(map(str, s.budgets[1:]))}" if s.budgets \
            else ""
        print(f"study {self.study_name}: {s.n_trials} trials{looks}, {self.workers} worker(s) on "
              f"{socket.gethostname()}, storage {self.storage}; MLflow parent run {self.parent_run_id} in "
              f"{self.tracking_uri}\nwatch it live: {dashboard_command(self.storage)}", file=sys.stderr)
        if progress:
            self.progress = Progress(read=lambda: self.opt.get_trials(deepcopy=False), total=s.total,
                                     metric=s.metric, direction=s.direction,
                                     by_seed=s.sampler == "grid" and (len(s.seeds) > 1 or s.looks > 1),
                                     where=f"storage {self.storage}", prefix=f"study {self.study_name}: ")
        start = time.perf_counter()
        interrupted, crashed = False, []
        try:
            while True:
                if self.stop.signum is not None:  # before the first look (the study opening) or between looks
                    interrupted = True
                    break
                interrupted, crashed = self._work()
                if interrupted or crashed or not self._complete() or too_many_failures(s, self.opt) \
                        or not self._next_look():
                    break
        except KeyboardInterrupt:  # Ctrl-C between looks, without a Stop (run() from a thread): the workers are done
            interrupted, crashed = True, []
        except Exception as e:  # noqa: BLE001 - the storage went away: anything its driver raises
            if self._storage_error() is None:
                raise
            return self._lost(e)
        if self.progress is not None:
            self.progress.close()
        if (lost := self._storage_error()) is not None:
            return self._lost(lost)
        try:
            return self._finish(time.perf_counter() - start, interrupted, crashed)
        except Exception as e:  # noqa: BLE001 - the MLflow store went away: anything its client raises
            if not self._mlflow_down():
                raise
            return self._spool_end(e, time.perf_counter() - start, interrupted, crashed)

    def _spool_end(self, error: Exception, wall: float, interrupted: bool, crashed: list) -> int:
        """The MLflow store is gone at the study's end: the parent run's end (with the report, its summary and
        verdict when the study is complete) goes to a spool, as a trial's runs do, for `python -m lesson5.sync`."""
        from lesson5.outcome import Outcome
        from lesson5.sweep import report
        from lesson5.sweep import table as tables
        from lesson5.sweep.worker import too_many_failures
        from lesson5.tracking.spool import spool_calls

        why = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"
        files, metrics, tags, status, code = {}, {}, {}, "KILLED", 1
        if interrupted or crashed and not self._complete():
            tags = {"stop_reason": f"{'interrupted' if interrupted else f'worker exit codes {crashed}'}; "
                                   f"resume=true continues the study"}
            code = self.stop.code if interrupted else 1
        elif too_many_failures(self.study, self.opt):
            tags = Outcome("FAILED", "error", f"more than {self.study.max_fail_rate:.0%} of the trials failed").tags()
            status = "FAILED"
        elif self._complete():
            rep = report.write(self.opt, self.study)  # the files only: the store is gone
            files, metrics, tags = report.for_parent(rep, self.opt, tables.from_optuna(self.opt, self.study),
                                                     self.study, self.study_name, report.RESULTS)
            metrics["sweep_wall_seconds"] = wall
            status, code = "FINISHED", 0
            print(f"{rep.verdict.result}: {rep.verdict.summary}\nreport: {rep.markdown_path}")
        else:  # other machines still run trials: the last of them closes the parent
            return 0
        folder = spool_calls(self.tracking_uri, self.parent_run_id, files, metrics, tags, status)
        print(f"the MLflow store {self.tracking_uri} stopped answering ({why}): the study's parent run "
              f"{self.parent_run_id} ({status}), like its trials' runs, is spooled to {folder}; send them all with "
              f"`python -m lesson5.sync` once the store is back", file=sys.stderr)
        return code

    def _mlflow_down(self) -> bool:
        try:
            self._client()
            return False
        except Exception:  # noqa: BLE001 - a server gone, a database locked or moved: all alike here
            return True

    def _poll(self) -> None:
        """Update the progress display; a fault in it turns it off, and never stops the sweep. Ctrl-C and SIGTERM
        wait until the read is done: cut short, it could leave the study's storage half-read in this process (a
        journal half replayed), which the driver reads again to close the study."""
        with self.stop.shielded():  # a stop that came meanwhile is raised as the read ends
            try:
                self.progress.poll()
            except Exception as e:  # noqa: BLE001 - the display is a convenience; the workers go on
                self.progress.clear()
                self.progress = None
                print(f"progress display off ({type(e).__name__}: {e})", file=sys.stderr)

    def _say(self, text: str, file=sys.stderr) -> None:
        """A line of the driver's, above the progress display."""
        if self.progress is not None:
            self.progress.clear()
        print(text, file=file, flush=True)

    def _storage_error(self) -> Optional[str]:
        """Why the study's storage cannot be read now, None when it can."""
        try:
            self.opt.get_trials(deepcopy=False)
            return None
        except Exception as e:  # noqa: BLE001 - any storage driver's error
            return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"

    def _resume_command(self) -> str:
        """This command again, with resume=true."""
        args = [a for a in sys.argv[1:] if not a.startswith("resume=")]
        return " ".join([naming.source_name(), *map(shlex.quote, args), "resume=true"])

    def _lost(self, why) -> int:
        """The study's storage cannot be read: say so, and how to continue, without a traceback. The parent run is
        closed as KILLED if its store still answers."""
        reason = why if isinstance(why, str) else f"{type(why).__name__}: {(str(why).splitlines() or [''])[0]}"
        if self.progress is not None:
            self.progress.clear()
        try:
            client = self._client()
            client.set_tag(self.parent_run_id, "stop_reason", f"storage lost ({reason[:300]}); resume=true "
                                                              f"continues the study")
            client.set_terminated(self.parent_run_id, "KILLED")
        except Exception:  # noqa: BLE001 - the MLflow store went with it: its run stays RUNNING until resumed
            pass
        print(f"error: the study's storage {self.storage} cannot be read ({reason}). Its finished trials are kept "
              f"there; when it is back, continue the study with:\n  {self._resume_command()}", file=sys.stderr)
        return 1

    def _work(self) -> tuple[bool, list]:
        """Run this machine's workers until the study's points are claimed: (interrupted, crashed exit codes)."""
        procs = [self._start("main") for _ in range(self.workers)]
        interrupted = self._wait(procs)
        return (interrupted or any(p.returncode in STOPPED for p in procs),  # a worker stopped by a signal of its own
                [p.returncode for p in procs if p.returncode not in (0, *STOPPED)])

    def _wait(self, procs: list[subprocess.Popen]) -> bool:
        """Wait for the workers, the progress display polling the storage whenever it is due (`Progress.wait_s`).
        On SIGINT or SIGTERM, forward it to each of them, and wait until they have closed their trials and runs:
        True (interrupted). Further signals are ignored meanwhile (`Stop`)."""
        try:
            with self.stop.interruptible():
                for p in procs:
                    while True:
                        try:
                            p.wait(timeout=self.progress.wait_s() if self.progress is not None else None)
                            break
                        except subprocess.TimeoutExpired:
                            self._poll()
            return False
        except KeyboardInterrupt:
            self._say(f"stopping ({self.stop.name}): the workers end their running trials and close their runs")
            for p in procs:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):  # it ended just now
                        p.send_signal(self.stop.signum or signal.SIGINT)
            for p in procs:
                p.wait()
            return True

    def _complete(self) -> bool:
        """Every point of the study so far has a trial that counts, and none is running or waiting."""
        trials = self.opt.get_trials(deepcopy=False)
        return (sum(map(stores.counts, trials)) >= self.study.total()
                and not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials))

    def _next_look(self) -> bool:
        """After a complete look of a grid study (or rung, under halving): add the next look's points, if its
        verdicts ask for any (the next rung's, if any); True when there are points to run. Under the study's lock,
        so that machines sharing it add them once."""
        from lesson5.sweep import halving
        from lesson5.sweep import table as tables
        from lesson5.sweep.report import completed_trials

        s = self.study
        if s.sampler != "grid" or (s.looks == 1 and not s.budgets):
            return False
        with stores.lock(self.storage, self.study_name):
            added = self.opt.user_attrs.get(ADDED_ATTR, [])
            if len(added) > len(s.added):  # another machine added them while this one's workers finished
                s.added = list(added)
                return True
            if s.budgets:
                table = tables.from_optuna(self.opt, s)
                new = halving.promote(s, table)
            else:
                look = max(p["look"] for p in s.points())
                new = next_points(s, completed_trials(self.opt), look)
            if not new:
                return False
            s.added = [*s.added, *new]
            self.opt.set_user_attr(ADDED_ATTR, s.added)
        if s.budgets:
            self._say(f"study {self.study_name}: {halving.announce(s, new, table)}")
            return True
        values = sorted({str(p[s.rule["param"]]) for p in new if s.rule.get("param") in p})
        self._say(f"study {self.study_name}: look {look + 1} of {s.looks}: {len(new)} more trials (seeds "
                  f"{sorted({p[SEED] for p in new})}" + (f"; {s.rule['param']} {', '.join(values)}" if values else "")
                  + ")")
        return True

    def _start(self, entry: str) -> subprocess.Popen:
        """A worker process running `worker.<entry>` (main or score_final) on this study. Its arguments go over
        its standard input, not its command line, where a storage URL's password would show. It runs in a session
        of its own, with SIGINT and SIGTERM held until it takes them: a stop reaches it from this driver only
        (`_wait` forwards it), so that the driver ends the study in order."""
        proc = start_module("lesson5.sweep.worker", own_group=True, hold_signals=True, stdin=subprocess.PIPE)
        proc.stdin.write(pickle.dumps((entry, (self.study, self.storage, self.study_name, self.parent_run_id,
                                               self.tracking_uri), os.getpid())))
        proc.stdin.close()
        return proc

    def _finish(self, wall: float, interrupted: bool, crashed: list) -> int:
        from lesson5.sweep import report
        from lesson5.sweep.worker import too_many_failures

        with stores.lock(self.storage, self.study_name):  # a trial whose worker died after the last claim
            stores.fail_lost_trials(self.opt)
        trials = self.opt.get_trials(deepcopy=False)
        count = report.state_counts(trials)
        print(f"study {self.study_name}: {count['COMPLETE']} complete, {count['PRUNED']} pruned, {count['FAIL']} "
              f"failed, in {wall:.1f} s", file=sys.stderr)
        client = self._client()
        complete = self._complete()
        if interrupted or (crashed and not complete):
            return self._killed(client, interrupted, crashed)
        if too_many_failures(self.study, self.opt):
            fail_run(client, self.parent_run_id, f"more than {self.study.max_fail_rate:.0%} of the trials failed")
            print(f"error: more than {self.study.max_fail_rate:.0%} of the trials failed; see their stop_reason "
                  f"tags in MLflow", file=sys.stderr)
            return 1
        if not complete:
            print("other workers still run trials of this study; the last to finish closes its parent run",
                  file=sys.stderr)
            return 0
        if self.study.final is not None and "final.base" not in self.opt.user_attrs:
            control = " and the control" if self.study.control and self.study.control["kind"] == "final" else ""
            print(f"scoring the best recipe, the base{control} with {' '.join(self.study.final)}", file=sys.stderr)
            scorer = self._start("score_final")
            if self._wait([scorer]) or scorer.returncode in STOPPED:
                return self._killed(client, True, [])  # resume=true scores them again
        try:
            result = report.write(self.opt, self.study, client=client, parent_run_id=self.parent_run_id)
        except ConfigError as e:  # its folder became unwritable while the trials ran: the trials are kept
            again = (f"python -m lesson5.report {shlex.quote(str(self.study.path))} source=journal "
                     f"storage={shlex.quote(self.storage)} study_name={self.study_name}")
            fail_run(client, self.parent_run_id, f"{e}; then `{again}` writes it")
            raise
        client.log_metric(self.parent_run_id, "sweep_wall_seconds", wall)
        if "stop_reason" in client.get_run(self.parent_run_id).data.tags:  # an earlier stop's, now resumed to the end
            client.delete_tag(self.parent_run_id, "stop_reason")
        client.set_terminated(self.parent_run_id, "FINISHED")
        print(f"{result.verdict.result}: {result.verdict.summary}\nreport: {result.markdown_path}")
        print(self.links(client.get_run(self.parent_run_id).info.experiment_id))
        return 0

    def _killed(self, client, interrupted: bool, crashed: list) -> int:
        """Close the parent run as KILLED with why it stopped: exit 130 or 143 (interrupted), else 1."""
        why = (f"interrupted ({self.stop.name})" if self.stop.signum else "interrupted") if interrupted \
            else f"worker exit codes {crashed}"
        client.set_tag(self.parent_run_id, "stop_reason", f"{why}; resume=true continues the study")
        client.set_terminated(self.parent_run_id, "KILLED")
        print(f"{why}: the study and its runs are consistent; run again with resume=true to continue",
              file=sys.stderr)
        return self.stop.code if interrupted else 1

    def links(self, experiment_id: str) -> str:
        """Where to look at the study: its parent run in the MLflow UI (the command that serves a local store,
        and the run's page in the model-training view), and optuna-dashboard on its storage."""
        link, serve = run_link(self.tracking_uri, experiment_id, self.parent_run_id), ui_command(self.tracking_uri)
        opened = f"MLflow: open {link}" if serve.startswith("open ") else f"MLflow: {serve}\n  then open {link}"
        return f"{opened}\nOptuna: {dashboard_command(self.storage)}"
