"""Core: process start-up, helper processes and exit, shared by the CLI, the tracking writer and the sweep.

Start-up (torch, hydra, pandas in the CLI; MLflow and matplotlib in the writer) makes hundreds of thousands of
objects, and the cyclic garbage collector rescans them all on each full pass, at a cost in CPU each time.
`pause_gc` keeps it off through start-up; `resume_gc` freezes what start-up made out of its scans and turns it
back on. At exit, the interpreter's teardown of those module graphs (torch's in the CLI, MLflow's in the writer)
is skipped by `fast_exit`, once everything is written.

Helper processes (the tracking writer, sweep workers) are `python -m <module>` (`start_module`), not
multiprocessing's spawn: spawn re-imports the caller's `__main__`, which fails or hangs for a script without an
`if __name__ == "__main__":` guard, for standard input and for a notebook.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import site
import subprocess
import sys
from pathlib import Path
from typing import Optional

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


def start_module(module: str, *, own_group: bool = False, **pipes) -> subprocess.Popen:
    """`python -m module` with this interpreter and this lesson5, never importing the caller's `__main__`.
    `own_group`: out of the terminal's process group, so that Ctrl-C reaches only its parent. `pipes`: Popen's
    stdin, stdout and stderr."""
    return subprocess.Popen([sys.executable, "-m", module], env=_child_env(), start_new_session=own_group, **pipes)
