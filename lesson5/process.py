"""Core: process start-up, helper processes and exit, shared by the CLI, the tracking writer and the sweep.

Start-up (torch, hydra, pandas in the CLI; MLflow and matplotlib in the writer) makes hundreds of thousands of
objects, and the cyclic garbage collector rescans them all on each full pass, at a cost in CPU each time.
`pause_gc` keeps it off through start-up; `resume_gc` freezes what start-up made out of its scans and turns it
back on. At exit, the interpreter's teardown of those module graphs (torch's in the CLI, MLflow's in the writer)
is skipped by `fast_exit`, once everything is written.

Helper processes (the tracking writer, sweep workers) are `python -m <module>` (`start_module`), not
multiprocessing's spawn: spawn re-imports the caller's `__main__`, which fails or hangs for a script without an
`if __name__ == "__main__":` guard, for standard input and for a notebook.

Signals. A user stops a run or a sweep with Ctrl-C (SIGINT to the terminal's process group) or SIGTERM (`timeout`
and `kill` to one process, `scancel` and a container's stop to every process): only the main process decides how it
ends. Its helpers start in their own session, out of the group's reach, with SIGINT and SIGTERM held (blocked) from
their first instruction until they say what to do with them (`take_signals`): the writer ignores them (it ends when
its trainer closes it, or dies), a sweep worker stops its trials when its driver forwards the stop (the claims report's
pool workers, `lesson5.pool`, share the caller's group instead, and take its first SIGINT or SIGTERM as a stop).
`Stop` turns the first of them into one KeyboardInterrupt, raised only where the process can stop cleanly
(`interruptible`, not in a `shielded` block such as a storage write), and gives the exit code: 130 for SIGINT,
143 for SIGTERM (128 + the signal's number, as a shell reports a process that a signal ended).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import signal
import site
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional, Union

# atexit._run_exitfuncs is CPython's own, not public API. It runs the exit handlers (logging's flushes, and those
# of any multiprocessing user) before os._exit skips the teardown, a large part of a lesson run. Gated to the
# Pythons it was tested on (add one after the slow CLI tests pass on it: tests/test_run.py checks the output, the
# exit code and that nothing leaks); others exit normally.
_FAST_EXIT_PYTHONS = {(3, 11)}


def pause_gc() -> None:
    """Keep the cyclic collector off while a process imports and sets up."""
    gc.disable()


def resume_gc() -> None:
    """End start-up: freeze what it made out of the collector's scans, and turn the collector back on."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def fast_exit(code: int) -> None:
    """Exit with `code` after the exit handlers, without tearing down the modules: call it only once every run
    is closed and every file written."""
    if sys.version_info[:2] not in _FAST_EXIT_PYTHONS or not hasattr(atexit, "_run_exitfuncs"):
        sys.exit(code)
    atexit._run_exitfuncs()  # logging's flush among them
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # a pipe whose reader is gone, or none
            stream.flush()
    os._exit(code)


def _child_env() -> Optional[dict[str, str]]:
    """The environment for a `python -m lesson5...` child: this one, with the folder lesson5 was imported from on
    PYTHONPATH when that is not a site-packages folder (a checkout on sys.path, or a caller that has since
    changed folder), so that the child imports the same lesson5. None: the child inherits this environment."""
    root = str(Path(__file__).resolve().parents[1])
    sites = {str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if root in sites:
        return None
    paths = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, paths]) if paths else root}


def start_module(module: str, *, own_group: bool = False, hold_signals: bool = False, **pipes) -> subprocess.Popen:
    """`python -m module` with this interpreter and this lesson5, never importing the caller's `__main__`.
    `own_group`: in a session of its own, out of the terminal's process group, so that Ctrl-C (or `kill` of the
    group) reaches only its parent. `hold_signals`: SIGINT and SIGTERM are held (blocked, not lost) in the child
    until it calls `take_signals`, so that none lands in its start-up. `pipes`: Popen's stdin, stdout and stderr."""
    held = _block(STOP_SIGNALS) if hold_signals else None  # the child inherits this thread's mask
    try:
        return subprocess.Popen([sys.executable, "-m", module], env=_child_env(), start_new_session=own_group,
                                **pipes)
    finally:
        if held is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)  # one that came meanwhile is delivered now


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
Handler = Union[Callable, int, signal.Handlers]


def _block(signals) -> Optional[set]:
    """Block `signals` in this thread; the mask before, None where signal masks do not exist (Windows)."""
    if not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, set(signals))


def take_signals(handler: Handler) -> None:
    """In a helper started with `hold_signals`: handle SIGINT and SIGTERM with `handler` (signal.SIG_IGN, or a
    `Stop`'s), then let them through; one that came while they were held is handled now."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOP_SIGNALS))


def exit_code(signum: Optional[int]) -> int:
    """The exit code of a process stopped by `signum`: 130 for SIGINT (or none known), 143 for SIGTERM."""
    return 128 + (signum or signal.SIGINT)


class Stop:
    """The first SIGINT or SIGTERM this process gets, as one KeyboardInterrupt, raised only inside `interruptible`
    blocks (and not in a `shielded` block within one, until it ends); elsewhere it is kept in `signum` for the
    caller to look at. Later signals are ignored: the process is already stopping, and closes its runs and
    trials in order. `install` (from the main thread; elsewhere it does nothing and the signals keep Python's
    handling) until `restore`, or as a context manager."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.installed = False
        self._armed = False
        self._raised = False
        self._previous: dict[int, Handler] = {}

    def install(self) -> Stop:
        """Take SIGINT and SIGTERM from now on; a stop from an earlier install is forgotten."""
        if not self.installed:
            self.signum, self._raised = None, False
        if not self.installed and threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
            take_signals(self._handle)
            self.installed = True
        return self

    def restore(self) -> None:
        if self.installed:
            for s, handler in self._previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
            self.installed = False

    def __enter__(self) -> Stop:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()

    @property
    def code(self) -> int:
        """130 (SIGINT) or 143 (SIGTERM)."""
        return exit_code(self.signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "SIGINT"

    def _raise(self) -> None:
        if not self._raised:
            self._raised = True
            raise KeyboardInterrupt

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            if self._armed:
                self._raise()

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A block that a stop ends at once (at its start, if one came before) with KeyboardInterrupt."""
        was, self._armed = self._armed, True
        try:
            if self.signum is not None:
                self._raise()
            yield
        finally:
            self._armed = was

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """A block that a stop does not cut short (a storage write): inside an interruptible block, the stop is
        raised as the block ends."""
        was, self._armed = self._armed, False
        try:
            yield
        except BaseException:  # an error already on its way out is not replaced by the stop
            self._armed = was
            raise
        self._armed = was
        if was and self.signum is not None:
            self._raise()
