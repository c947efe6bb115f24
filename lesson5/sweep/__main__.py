"""Apps: `lesson5-sweep <study> [key=value ...]` (or `python -m lesson5.sweep`): run an Optuna study of lesson5 runs.

The study is a YAML file anywhere, or the name of a shipped one (`n_factors`...). Options are typed key=value pairs;
any other key=value is a Hydra override for every trial. Every machine of a shared study runs the same command.

Ctrl-C or SIGTERM, to this process or its whole group, stops the study's workers in order (their running trials'
runs KILLED), closes the parent run as KILLED, and exits 130 (SIGINT) or 143 (SIGTERM); resume=true continues it.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Optional

from lesson5 import cli
from lesson5.process import Stop
from lesson5.sweep import spec
from lesson5.sweep.storage import DEFAULT_JOURNAL

COMMAND = cli.Command(
    name="lesson5-sweep", module="lesson5.sweep",
    summary="run an Optuna study of lesson5 runs: each trial is an MLflow run, a child of the study's parent run, "
            "and the report (the verdict on the study's claim) is written to sweeps/results/ once it completes.",
    example="my_study.yaml n_trials=4 workers=2 data.path=./ml-100k --config-dir ./myconf",
    arguments=(("study", "a study file (path/to/study.yaml), or a shipped study: " + ", ".join(spec.shipped())),),
    options=(
        cli.Option("n_trials", int, "trials to run (default: the study file's; a grid's every point)", low=1),
        cli.Option("workers", int, "worker processes on this machine", default=1, low=1, high=cli.max_workers(),
                   why_high=cli.WORKERS_BOUND),
        cli.Option("storage", str, "the Optuna storage: a journal file, or a database URL (postgresql://...)",
                   default=DEFAULT_JOURNAL),
        cli.Option("study_name", str, "the study's name in the storage (default: the file's name)",
                   check=cli.plain_name),
        cli.Option("resume", bool, "continue a study that already has trials", default=False),
        cli.Option("pruner", str, "stop poor trials early (default: the study file's)", choices=spec.PRUNERS),
        cli.Option("stack", str, "trials a worker trains as one fit (a grid's points that differ only in seed, lr, "
                   "wd, momentum, betas, eps or y_range): auto, or a whole number (1: each alone)",
                   check=lambda v: None if v == "auto" or (v.isdigit() and int(v) >= 1) else
                   "give a positive whole number of trials to train as one stack, or auto (1 trains each alone)"),
        cli.Option("progress", bool, "show trials done, the best so far and the time left as they run", default=True),
    ),
    overrides="every trial")


def _sweep(args: SimpleNamespace) -> int:
    # SIGINT and SIGTERM from here on (cli.run's SIGTERM handler is back after): the driver stops its workers, and
    # the exit code tells which signal it was
    with Stop() as stop:
        try:
            with stop.interruptible():
                from lesson5.sweep.driver import Sweep  # here: it imports Optuna and MLflow, not needed by --help
            # its checks are interruptible; the study's opening and its parent run's start are not (run() then
            # closes the parent as KILLED)
            sweep = Sweep.prepare(args.study, args.overrides, n_trials=args.n_trials, workers=args.workers,
                                  storage=args.storage, study_name=args.study_name, resume=args.resume,
                                  pruner=args.pruner, stop=stop)
        except KeyboardInterrupt:
            print(f"interrupted ({stop.name}) before the study started", file=sys.stderr)
            return stop.code
        if args.stack is not None:  # the study file's `stack`, unless given here
            sweep.study.stack = spec.parse_stack(args.stack)
        return sweep.run(progress=args.progress)


def main(argv: Optional[list[str]] = None) -> int:
    """The `lesson5-sweep` command (argv: default sys.argv[1:]); its exit code."""
    return cli.run(COMMAND, argv, _sweep)


if __name__ == "__main__":
    raise SystemExit(main())
