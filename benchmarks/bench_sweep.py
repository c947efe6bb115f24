"""Sweep benchmark: a study's throughput with worker processes, against the same trials as separate commands.

    python benchmarks/bench_sweep.py [--study n_factors] [--workers 2] [--n-trials 30] [--storage URL]
    python benchmarks/bench_sweep.py --stacks 1 auto --fastai-python /path/to/python --fastai-fits 3 --no-commands

1. `python -m lesson5.sweep <study> workers=W n_trials=N` in a fresh folder (journal storage unless --storage):
   its wall time, trials per minute, and the share of the workers' wall time spent outside training:
   1 - sum(trials' train_seconds) / sum(workers' wall), each worker's wall from its process start to its exit.
2. The same N trials as N separate `python -m lesson5 <trial's overrides>` commands, W at a time (each pays
   interpreter start-up, imports, data loading and its own MLflow writer).
3. With --storage (say a PostgreSQL URL) and --workers 4: the trial count, duplicates and MLflow children.
4. With --stacks: the study once per `stack=` value, interleaved with the other steps, and with --fastai-python
   (an interpreter with fastai, `pip install -e .[bench]`): `--fastai-fits` fits of fastai's collab_learner at
   the lesson recipe (benchmarks/bench_collab.py), their median times the study's trial count. The target of
   issue 19 compares the sweep's wall with that: the time of as many fastai fits as the study has trials.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def one_look(study: str, folder: Path) -> Path:
    """The study file with one look at its file's seeds: the grid of issue 19's targets (30 trials of n_factors),
    not the seeds that later looks add until its verdicts are decided."""
    import yaml

    from lesson5.sweep import spec

    raw = yaml.safe_load(spec.resolve(study).read_text())
    raw.update(looks=1, max_seeds=len(raw.get("seeds", [0])))
    path = folder / f"{study}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_sweep(args, study_file: Path, stack: str, tmp: Path) -> tuple:
    """The study as its command, in `tmp`: (wall seconds, the Optuna study, its name)."""
    import optuna

    from lesson5.sweep import storage as stores

    name = f"bench_{args.study}_{stack}_{int(time.time())}"
    storage = args.storage or str(tmp / "sweeps.journal")
    cmd = [sys.executable, "-m", "lesson5.sweep", str(study_file), f"workers={args.workers}",
           f"storage={storage}", f"study_name={name}", f"stack={stack}", "progress=false"]
    if args.n_trials:
        cmd.append(f"n_trials={args.n_trials}")
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=tmp, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"sweep (stack={stack}) failed:\n{done.stderr[-3000:]}")
    opt = optuna.load_study(study_name=name, storage=stores.open_storage(storage))
    return wall, opt, name


def fastai_fits(python: str, n: int) -> list[float]:
    """Seconds of n fastai fits of the lesson recipe (benchmarks/bench_collab.py's case), each in its own process."""
    code = "import json, bench_collab; print(json.dumps(bench_collab.case_fastai()))"
    env = {**ENV, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}"}
    out = []
    for _ in range(n):
        done = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"fastai fit failed:\n{done.stderr[-3000:]}")
        out.append(json.loads(done.stdout.strip().splitlines()[-1])["fit_s"])
    return out


def report(args, wall: float, opt, name: str, tmp: Path) -> None:
    from mlflow import MlflowClient

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


def separate_commands(args, study, trials, tmp: Path, wall: float) -> None:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="n_factors")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-trials", type=int, help="trials to run (default: the grid of one look)")
    ap.add_argument("--storage", help="an Optuna storage URL (default: a journal file in the temporary folder)")
    ap.add_argument("--stacks", nargs="+", default=["auto"], help="stack= values to run the study with")
    ap.add_argument("--fastai-python", help="a Python with fastai installed: the baseline of fastai fits")
    ap.add_argument("--fastai-fits", type=int, default=3)
    ap.add_argument("--no-commands", action="store_true", help="skip the separate-commands comparison")
    args = ap.parse_args()
    from lesson5.sweep import spec

    study = spec.load(args.study)
    walls, fastai, count = {}, [], 0
    with tempfile.TemporaryDirectory() as top:
        study_file = one_look(args.study, Path(top))
        for i, stack in enumerate(args.stacks):  # each in its own folder, a fastai fit between them
            tmp = Path(top) / f"stack{stack}"
            tmp.mkdir()
            wall, opt, name = run_sweep(args, study_file, stack, tmp)
            walls[stack], count = wall, len(opt.trials)
            print(f"stack={stack}:")
            report(args, wall, opt, name, tmp)
            if args.fastai_python:
                fastai += fastai_fits(args.fastai_python, max(1, args.fastai_fits // len(args.stacks))
                                      + (i < args.fastai_fits % len(args.stacks)))
            if not args.no_commands and i == 0:
                separate_commands(args, study, opt.trials, tmp, wall)
    if not fastai:
        return
    each = statistics.median(fastai)
    fits = ", ".join(f"{f:.1f}" for f in fastai)
    print(f"\nfastai: {len(fastai)} fits of the lesson recipe, median {each:.1f} s ({fits}); {count} of them: "
          f"{count * each:.0f} s")
    print("| stack | sweep wall s | trials/min | fastai fits' time / sweep's | target |")
    print("|---|---:|---:|---:|---|")
    for stack, wall in walls.items():
        print(f"| {stack} | {wall:.1f} | {60 * count / wall:.1f} | {count * each / wall:.1f}x | >= 20x (stretch 25x) |")


if __name__ == "__main__":
    main()
