"""Process start-up and exit, shared by the CLI and the tracking writer.

Start-up (torch, hydra, pandas in the CLI; MLflow and matplotlib in the writer) makes hundreds of thousands of
objects, and the cyclic garbage collector rescans them all on each full pass: ~0.5 s of each process's CPU per
run. `pause_gc` keeps it off through start-up; `resume_gc` freezes what start-up made out of its scans and turns
it back on. At exit, the interpreter's teardown of those module graphs (torch's took ~0.85 s of a ~6 s command,
MLflow's ~1.4 s in the writer) is skipped by `fast_exit`, once everything is written.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys

# atexit._run_exitfuncs is CPython's own, not public API. It runs the exit handlers (multiprocessing's releases
# the tracker's semaphores, else its resource tracker warns of leaks; logging's flushes) before os._exit skips
# the teardown, ~0.85 s of a ~6 s lesson run. Gated to the Pythons it was tested on (add one after the slow CLI
# tests pass on it: tests/test_run.py checks the output, the exit code and that nothing leaks); others exit
# normally.
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
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
