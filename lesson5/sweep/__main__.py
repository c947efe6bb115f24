"""`python -m lesson5.sweep <study name or file> [options] [overrides]`: run an Optuna study of lesson5 runs.

Options (key=value): n_trials, workers (processes on this machine, default 1), storage (a journal file path,
default ./sweeps.journal, or a database URL such as postgresql://...), study_name (default: the file's name),
resume (true: continue a study that already has trials), pruner (none | median | hyperband). Any other
key=value is a Hydra override for every trial. Every machine of a shared study runs the same command.
"""

from __future__ import annotations

import multiprocessing as mp
import sys


from lesson5.errors import Lesson5Error

OPTIONS = ("n_trials", "workers", "storage", "study_name", "resume", "pruner")


def parse(argv: list[str]) -> tuple[str, dict[str, str], list[str]]:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if argv else 2)
    options, overrides = {}, []
    for arg in argv[1:]:
        key = arg.split("=", 1)[0]
        if key in OPTIONS and "=" in arg:
            options[key] = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    return argv[0], options, overrides


def main(argv: list[str]) -> int:
    from lesson5.sweep.driver import Sweep

    name, options, overrides = parse(argv)
    try:
        sweep = Sweep.prepare(name, options, overrides)
    except Lesson5Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return sweep.run()


if __name__ == "__main__":
    mp.freeze_support()
    code = main(sys.argv[1:])
    sys.exit(code)
