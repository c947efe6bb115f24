"""Sweep benchmark: a study's throughput with worker processes, against the same trials as separate commands.

    python benchmarks/bench_sweep.py [--study n_factors] [--workers 2] [--n-trials 30] [--storage URL]

1. `python -m lesson5.sweep <study> workers=W n_trials=N` in a fresh folder (journal storage unless --storage):
   its wall time, trials per minute, and the share of the workers' wall time spent outside training:
   1 - sum(trials' train_seconds) / sum(workers' wall), each worker's wall from its process start to its exit.
2. The same N trials as N separate `python -m lesson5 <trial's overrides>` commands, W at a time (each pays
   interpreter start-up, imports, data loading and its own MLflow writer).
3. With --storage (say a PostgreSQL URL) and --workers 4: the trial count, duplicates and MLflow children.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="n_factors")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-trials", type=int, default=30)
    ap.add_argument("--storage", help="an Optuna storage URL (default: a journal file in the temporary folder)")
    ap.add_argument("--no-commands", action="store_true", help="skip the separate-commands comparison")
    args = ap.parse_args()
    import optuna
    from mlflow import MlflowClient

    from lesson5.sweep import spec
    from lesson5.sweep import storage as stores

    study = spec.load(args.study)
    with tempfile.TemporaryDirectory() as tmp:
        name = f"bench_{args.study}_{int(time.time())}"
        storage = args.storage or str(Path(tmp) / "sweeps.journal")
        cmd = [sys.executable, "-m", "lesson5.sweep", args.study, f"workers={args.workers}",
               f"n_trials={args.n_trials}", f"storage={storage}", f"study_name={name}"]
        t = time.perf_counter()
        done = subprocess.run(cmd, cwd=tmp, env=ENV, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if done.returncode != 0:
            sys.exit(f"sweep failed:\n{done.stderr[-3000:]}")
        opt = optuna.load_study(study_name=name, storage=stores.open_storage(storage))
        trials = opt.trials
        train = sum(tr.user_attrs.get("train_seconds", 0.0) for tr in trials)
        print(f"sweep: {args.study}, {len(trials)} trials, {args.workers} workers, {os.cpu_count()} CPUs")
        print(f"  command wall {wall:.1f} s, {60 * len(trials) / wall:.1f} trials/min")
        workers = [v for k, v in opt.user_attrs.items() if k.startswith("worker ")]
        worker_wall = sum(w["wall_s"] for w in workers)
        each = ", ".join(f"{w['wall_s']:.1f} s for {w['trials']} trials" for w in workers)
        print(f"  trials' train_seconds {train:.1f} s; workers' wall {worker_wall:.1f} s ({each})")
        print(f"  outside training: {100 * (1 - train / worker_wall):.1f}% of the workers' wall time "
              f"(target <= 15%); {100 * (1 - train / (args.workers * wall)):.1f}% of the command's, which adds "
              f"the driver's start-up and the report")
        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        exp = client.get_experiment_by_name("lesson5-movielens")
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        children = [r for r in runs if r.data.tags.get("optuna.study") == name and "optuna.trial" in r.data.tags]
        parents = [r for r in runs if r.data.tags.get("optuna.study") == name and "optuna.trial" not in r.data.tags]
        numbers = [t.number for t in trials]
        print(f"  trials {len(trials)} (distinct numbers {len(set(numbers))}, states "
              f"{sorted({t.state.name for t in trials})}); MLflow: {len(parents)} parent, {len(children)} children, "
              f"{len({c.data.tags['optuna.trial'] for c in children})} distinct trial tags")
        if args.no_commands:
            return
        overrides = [[p.override(tr.params[p.key]) for p in study.space] + [f"trainer.seed={tr.params['trainer.seed']}"]
                     for tr in trials]

        def one(o):
            r = subprocess.run([sys.executable, "-m", "lesson5", "trainer.progress=false", *study.base, *o],
                               cwd=tmp, env=ENV, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"python -m lesson5 failed:\n{r.stderr[-2000:]}")

        t = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(one, overrides))
        separate = time.perf_counter() - t
        print(f"separate commands ({args.workers} at a time): wall {separate:.1f} s, "
              f"{60 * len(overrides) / separate:.1f} trials/min; the sweep is {separate / wall:.2f}x faster")


if __name__ == "__main__":
    main()
