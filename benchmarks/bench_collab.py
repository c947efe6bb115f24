"""Collab benchmark: lesson5 against fastai's collab_learner on the lesson recipe, side by side.

    python benchmarks/bench_collab.py [--repeats 3] [--no-fastai] [--before REV]

Each case runs in a fresh process, in turn, `--repeats` times; the table shows medians and ratios against the
first case (the baseline), because absolute times on shared machines drift. `fit s` is the training alone
(fastai's fit_one_cycle; lesson5's train_seconds); `command s` is the whole process, imports, data loading and
tracking included, as a user waits for it. Cases:
  fastai        collab_learner(n_factors=40, y_range=(0, 5.5), wd=0.1); fit_one_cycle(5, 5e-3); bs 64, 10% valid
                (its loader draws each epoch's rows with replacement, hence its higher RMSE: bench_quality.py)
  lesson5       `python -m lesson5 tracking=none`: the same recipe (the defaults)
  lesson5+mlflow  `python -m lesson5`, tracked into a SQLite store (new on the first repeat, then reused),
                the trained model logged as an MLflow model (tracking.log_model=true, the default)
  mlflow-model  the same with tracking.log_model=false: what logging the MLflow model costs
  collab_fast   `python -m lesson5 experiment=collab_fast tracking=none`
  before, before+mlflow   with --before REV: the first two lesson5 cases run from a checkout of git revision REV
                (a temporary `git worktree`, same venv), to compare a change with what it replaced
Then, in one process, run(cfg) as sweep trials call it, untracked and tracked through one shared writer.
fastai is optional (`pip install -e .[bench]`); without it the lesson5 run is the baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]


def case_fastai() -> dict:
    import torch
    from fastai.collab import CollabDataLoaders, collab_learner

    from lesson5.config import MovieLensConf
    from lesson5.data import movielens

    ratings, items = movielens.read(movielens.locate(MovieLensConf()))
    df = ratings.merge(items, on="movie_id")[["user_id", "title", "rating"]]
    torch.manual_seed(42)
    dls = CollabDataLoaders.from_df(df, valid_pct=0.1, seed=42, item_name="title", bs=64)
    learn = collab_learner(dls, n_factors=40, y_range=(0, 5.5), wd=0.1)
    t = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(5, 5e-3)
    seconds = time.perf_counter() - t
    valid_mse = float(learn.validate()[0])
    return {"fit_s": seconds, "valid_rmse": valid_mse**0.5, "threads": torch.get_num_threads()}


def case_lesson5(*overrides: str, tree: Path = ROOT) -> dict:
    """The command a user types, `python -m lesson5 ...`, in a subprocess; metrics read from its final table.
    Run from `tree`, whose lesson5 package shadows the installed one (the current folder comes first)."""
    out = subprocess.run([sys.executable, "-m", "lesson5", "trainer.progress=false", *overrides], cwd=tree,
                         capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    if out.returncode != 0:
        sys.exit(f"python -m lesson5 {' '.join(overrides)} failed:\n{out.stderr[-3000:]}")
    table = dict(re.findall(r"│ (\w+)\s+│\s+([-\d.]+) │", out.stdout))
    return {"fit_s": float(table["train_seconds"]), "valid_rmse": float(table["valid_rmse"])}


def case_sweep_trials(store: str, repeats: int) -> dict:
    """run(cfg) in one process, as sweep trials call it: untracked, then tracked through one shared writer.

    Trials share a Tracker, so the writer's start-up is paid once and its plotting overlaps the next trial; the
    wall time of each run() call is what a sweep pays per trial. The first call of each kind warms up imports.
    """
    from lesson5.lifecycle import quiet_config
    from lesson5.run import run
    from lesson5.tracking import Tracker

    off = quiet_config()
    on = quiet_config([f"tracking.uri=sqlite:///{store}/sweep.db"], track=True)
    tracker = Tracker(on.tracking.uri)
    times: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for r in range(repeats + 1):
            for kind, cfg in (("off", off), ("on", on)):
                t = time.perf_counter()
                run(cfg, tracker=tracker if kind == "on" else None)
                if r:
                    times[kind].append(time.perf_counter() - t)
    finally:
        tracker.close()
    return {k: statistics.median(v) for k, v in times.items()}


def cases(with_fastai: bool, store: str, before: Optional[Path]) -> dict[str, tuple[Optional[Path], list[str]]]:
    """name -> (the tree to run lesson5 from, or None for fastai; its overrides)."""
    out = {"fastai": (None, [])} if with_fastai else {}
    untracked, tracked = ["tracking=none"], [f"tracking.uri=sqlite:///{store}/mlflow.db", "tracking.experiment=bench"]
    out["lesson5"] = (ROOT, untracked)
    out["lesson5+mlflow"] = (ROOT, tracked)
    out["mlflow-model"] = (ROOT, [*tracked, "tracking.log_model=false"])
    if before is not None:
        out["before"] = (before, untracked)
        out["before+mlflow"] = (before, [f"tracking.uri=sqlite:///{store}/before.db", "tracking.experiment=bench"])
    out["collab_fast"] = (ROOT, ["experiment=collab_fast", "tracking=none"])
    return out


def one(tree: Optional[Path], overrides: list[str]) -> dict:
    """Run one case in a fresh process; `command_s` is that process's wall time, imports and all."""
    t = time.perf_counter()
    if tree is None:
        out = subprocess.run([sys.executable, __file__, "--fastai"], cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"fastai failed:\n{out.stderr[-3000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
    else:
        res = case_lesson5(*overrides, tree=tree)
    return {**res, "command_s": time.perf_counter() - t}


@contextlib.contextmanager
def checkout(rev: Optional[str]):
    """A temporary worktree of git revision `rev` (None: nothing)."""
    if rev is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-fastai", action="store_true")
    ap.add_argument("--before", metavar="REV", help="also run the lesson5 cases from this git revision")
    ap.add_argument("--fastai", action="store_true", help=argparse.SUPPRESS)  # internal: the fastai case, as JSON
    ap.add_argument("--sweep-trials", help=argparse.SUPPRESS)  # internal: the sweep-trial case, as JSON
    args = ap.parse_args()
    if args.fastai:
        print(json.dumps(case_fastai()))
        return
    if args.sweep_trials:
        print(json.dumps(case_sweep_trials(args.sweep_trials, args.repeats)))
        return
    try:
        import fastai  # noqa: F401

        with_fastai = not args.no_fastai
    except ImportError:
        with_fastai = False
        print("fastai is not installed (pip install -e .[bench]); lesson5 is the baseline")
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as store, checkout(args.before) as before:
        plan = cases(with_fastai, store, before)
        for r in range(args.repeats):
            for name, (tree, overrides) in plan.items():  # interleaved, so drift hits every case alike
                results.setdefault(name, []).append(one(tree, overrides))
                print(f"  repeat {r + 1} {name}: {results[name][-1]}", file=sys.stderr)
        out = subprocess.run([sys.executable, __file__, "--sweep-trials", store, "--repeats", str(args.repeats)],
                             cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"sweep trials failed:\n{out.stderr[-3000:]}")
        trials = json.loads(out.stdout.strip().splitlines()[-1])
    med = {n: {k: statistics.median(x[k] for x in rs) for k in ("fit_s", "command_s", "valid_rmse")}
           for n, rs in results.items()}
    base = next(iter(med))
    print(f"\nmedians of {args.repeats} interleaved repeats; ratios are baseline ({base}) time / case time")
    print(f"{'case':<16}{'fit s':>8}{'speedup':>9}{'command s':>11}{'speedup':>9}{'valid_rmse':>12}")
    for name, m in med.items():
        print(f"{name:<16}{m['fit_s']:>8.2f}{med[base]['fit_s'] / m['fit_s']:>8.1f}x{m['command_s']:>11.2f}"
              f"{med[base]['command_s'] / m['command_s']:>8.1f}x{m['valid_rmse']:>12.4f}")
    print()
    for label, (on, off) in {"tracking overhead": ("lesson5+mlflow", "lesson5"),
                             "logging the MLflow model": ("lesson5+mlflow", "mlflow-model"),
                             "tracking overhead, before": ("before+mlflow", "before"),
                             "this tree against before, untracked": ("lesson5", "before"),
                             "this tree against before, tracked": ("lesson5+mlflow", "before+mlflow")}.items():
        if on in med and off in med:
            a, b = med[on], med[off]
            print(f"{label}: fit {100 * (a['fit_s'] / b['fit_s'] - 1):+.1f}%, whole command "
                  f"{100 * (a['command_s'] / b['command_s'] - 1):+.1f}% ({a['command_s'] - b['command_s']:+.2f} s)")
    print(f"sweep trials (run(cfg) in one process, one shared writer, no MLflow model): "
          f"untracked {trials['off']:.2f} s, "
          f"tracked {trials['on']:.2f} s, {100 * (trials['on'] / trials['off'] - 1):+.1f}% per trial")


if __name__ == "__main__":
    main()
