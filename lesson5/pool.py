"""Services: many configs' runs, trained in worker processes that each keep one interpreter and one MLflow writer.

A job is a group of runs that may train as one stack (`lesson5.stack`): their overrides, MLflow run names and tags.
`pool(workers)` gives an object whose `submit(job)` returns a Future of each run's final metrics and MLflow run id
(or `{"diverged": why}` for a run that diverged). With one worker the job trains in the caller's thread, at once;
with more, `workers` processes (`python -m lesson5.pool`, never the caller's `__main__`) each take the next job
from one queue, so the jobs of several callers (the claims report's claims, in threads) keep every core busy. Both
train a job the same way, by `Trainer`, which reuses one writer for all the jobs of its process instead of
starting one per run (an MLflow import each, on a core the trainer needs).

A worker reads one JSON job a line on its stdin and answers one JSON line on the descriptor that was its stdout;
its own stdout goes to its stderr, so nothing a run prints can break the exchange. A worker inherits the caller's
process group: Ctrl-C stops its run, which ends KILLED, as it stops the caller; `close(stop=True)` sends the same
SIGINT for a caller stopped otherwise (SIGTERM). A worker that dies fails its job with its exit code, and the next
job starts a new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Optional, Union

from lesson5.errors import ConfigError, DivergedError, Lesson5Error, describe
from lesson5.process import start_module

Job = dict  # {"runs": [[override, ...], ...], "extra": [override, ...], "names": [str], "tags": [{str: str}],
#              "experiment": str, "stored": bool}: extra applies to every run, but is not the run's own (its name,
#              its params' note); stored: answer only once the runs are in the store (the caller reads them back)


class Trainer:
    """Trains jobs one after another in this process, with one MLflow writer for all of them."""

    def __init__(self):
        self.tracker = None
        self._opened = False

    def __call__(self, job: Job) -> list[dict]:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        from lesson5.config import validate
        from lesson5.lifecycle import quiet_config
        from lesson5.run import run, run_stack
        from lesson5.tracking import open_tracker

        runs = job["runs"]
        try:
            cfgs = [quiet_config([*o, *job["extra"]], track=True, experiment=job["experiment"], run_name=name)
                    for o, name in zip(runs, job["names"])]
        except (HydraException, OmegaConfBaseException) as e:  # an override Hydra cannot compose: refused input
            raise ConfigError(describe(e)) from None
        if not self._opened:  # the writer the jobs' tracking section asks for (None: tracking=none)
            self.tracker, self._opened = open_tracker(validate(cfgs[0]).tracking), True
        try:
            if len(cfgs) == 1:
                try:
                    results = [run(cfgs[0], overrides=runs[0], tags=job["tags"][0], tracker=self.tracker)]
                except DivergedError as e:
                    results = [e]
            else:  # each member's own end (diverged) comes back as its result
                results = run_stack(cfgs, overrides=runs, tags=job["tags"], tracker=self.tracker)
            if job.get("stored") and self.tracker is not None:
                self.tracker.flush()  # the caller reads the runs back from the store
        except BaseException:
            with contextlib.suppress(Exception):  # what ended the job is what the caller needs to hear
                self.close()  # a writer that failed is not reused: the next job starts its own
            raise
        out = []
        for result in results:
            if isinstance(result, DivergedError):
                out.append({"diverged": str(result)})
            elif isinstance(result, BaseException):
                raise result
            else:
                out.append({"metrics": result.metrics, "run_id": result.run_id})
        return out

    def close(self) -> None:
        tracker, self.tracker, self._opened = self.tracker, None, False
        if tracker is not None:
            tracker.close()


class InProcess:
    """One worker: each job trains at once, in the caller's thread."""

    def __init__(self):
        self._trainer = Trainer()

    def submit(self, job: Job) -> Future:
        done: Future = Future()
        try:
            done.set_result(self._trainer(job))
        except Exception as e:  # noqa: BLE001 - the caller takes it from the Future, as from a worker's
            done.set_exception(e)
        return done

    def close(self, stop: bool = False) -> None:
        self._trainer.close()


class Workers:
    """`n` worker processes, each fed from one queue of jobs by a thread of its own."""

    def __init__(self, n: int):
        self._stopped = False
        self._jobs: queue.Queue = queue.Queue()
        self._procs: list[Optional[subprocess.Popen]] = [None] * n
        self._threads = [threading.Thread(target=self._serve, args=(i,), name=f"lesson5-pool-{i}", daemon=True)
                         for i in range(n)]
        for t in self._threads:
            t.start()

    def submit(self, job: Job) -> Future:
        done: Future = Future()
        if self._stopped:  # a claim's thread that asks after the stop: nothing more starts
            done.cancel()
        else:
            self._jobs.put((job, done))
        return done

    def _serve(self, i: int) -> None:
        while (item := self._jobs.get()) is not None:
            job, done = item
            if not done.set_running_or_notify_cancel():
                continue
            try:
                done.set_result(self._ask(i, job))
            except Exception as e:  # noqa: BLE001 - it belongs to the job's caller
                done.set_exception(e)
        proc = self._procs[i]
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the worker closes its writer and exits
            try:
                proc.wait(timeout=330)  # its writer's close waits up to 300 s for the store
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _ask(self, i: int, job: Job) -> list[dict]:
        proc = self._procs[i]
        if proc is None or proc.poll() is not None:
            if self._stopped:
                raise Lesson5Error("the report is stopping")
            proc = self._procs[i] = start_module("lesson5.pool", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                 text=True)
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except OSError:
            line = ""
        if not line:
            raise Lesson5Error(f"a lesson5.pool worker (pid {proc.pid}) exited with code {proc.wait()} while "
                               f"training {job['names'][0]!r}{' and others' if len(job['names']) > 1 else ''}; "
                               "what it printed is above")
        reply = json.loads(line)
        if "error" in reply:
            raise (Lesson5Error if reply["lesson5"] else RuntimeError)(reply["error"])
        return reply["results"]

    def close(self, stop: bool = False) -> None:
        """Let the workers finish and exit; `stop`: fail the queued jobs and interrupt the running ones."""
        if stop:
            self._stopped = True
            while True:
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[1].cancel()
            for proc in self._procs:
                if proc is not None and proc.poll() is None:
                    with contextlib.suppress(OSError):
                        proc.send_signal(signal.SIGINT)
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join()


def pool(workers: int) -> Union[InProcess, Workers]:
    """One worker in this process, or `workers` processes."""
    return InProcess() if workers <= 1 else Workers(workers)


_stopping = threading.Event()


def _interrupt_once(signum, frame) -> None:
    """The first SIGINT or SIGTERM stops the run; later ones (Ctrl-C, then the caller's close(stop=True)) do
    nothing, so that none lands in the closing of the runs. (A handler, not SIG_IGN: a signal already caught when
    the handler changed to SIG_IGN would raise "ignored due to race condition" where it lands.)"""
    if not _stopping.is_set():
        _stopping.set()
        raise KeyboardInterrupt


def main() -> int:
    """A worker: train each job read from stdin, answer each on the descriptor that was stdout."""
    # Ctrl-C, SIGTERM to the group (`scancel`) or the caller's close(stop=True) interrupts the run, which ends
    # KILLED, even where the caller started with SIGINT ignored (`cmd &` in a script), which this would inherit
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt_once)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    trainer = Trainer()
    try:
        for line in sys.stdin:
            job = json.loads(line)
            try:
                reply = json.dumps({"results": trainer(job)})
            except Exception as e:  # noqa: BLE001 - the caller's to report
                reply = json.dumps({"error": describe(e), "lesson5": isinstance(e, Lesson5Error)})
            answers.write(reply + "\n")
    except KeyboardInterrupt:  # the run ended KILLED; the caller stops too
        return 130
    finally:
        try:
            trainer.close()
        except Lesson5Error as e:  # its runs are marked FAILED; the jobs were answered already
            print(f"error: {describe(e)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
