"""Stacked trials benchmark: seconds per trial-epoch when K trials train as one stack, against one trial alone.

    python benchmarks/bench_stack.py [--model collab|mlp] [--ks 1 2 4 8 16] [--epochs 1] [--repeats 2]
    python benchmarks/bench_stack.py --sweep wd_unpruned [--workers 2]

1. In one process, on the real data of the model's recipe (MovieLens-100k for collab, Fashion-MNIST for mlp):
   K = 1 is the plain Learner (what `run` trains), K > 1 a stack of K seeds (lesson5.stack). Each K is timed
   `--repeats` times, interleaved (K = 1, 2, 4, ... then again), and the best is kept: the machine is shared and
   noisy, so only ratios to K = 1 measured in the same run mean anything. It prints seconds per trial-epoch, the
   speed-up over K = 1, and the stack's memory by lesson5.stack.memory_estimate.
2. With --sweep: the study run with stack=1 and with stack=auto side by side, each in a fresh folder
   (journal, SQLite), twice interleaved: wall time, trials per minute and their ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASES = {"collab": [], "mlp": ["model=mlp", "data=fashion_mnist", "optim=momentum", "schedule=constant",
                               "optim.lr=0.1"]}


def fit_seconds(model: str, k: int, epochs: int) -> float:
    """Training seconds of `epochs` epochs of K trials (seeds 0..K-1), per trial-epoch."""
    import torch

    from lesson5 import data as datasets
    from lesson5 import stack
    from lesson5.config import validate
    from lesson5.learner import Learner
    from lesson5.lifecycle import quiet_config
    from lesson5.run import build_model

    confs = [validate(quiet_config([*BASES[model], f"trainer.epochs={epochs}", f"trainer.seed={s}"]))
             for s in range(k)]
    device = torch.device("cpu")
    data = datasets.build(confs[0].data)
    fold = data.folds[0]
    members = [build_model(c, data, device) for c in confs]
    if k == 1:
        learn = Learner.from_config(confs[0], data, fold, members[0], device)
        learn.fit(epochs)
    else:
        learn = stack.learner(confs, fold, members, device)
        learn.fit(epochs)
    return learn.train_seconds / (k * epochs)


def bench_fits(args) -> None:
    import torch

    from lesson5 import data as datasets
    from lesson5 import stack
    from lesson5.config import validate
    from lesson5.lifecycle import quiet_config
    from lesson5.run import build_model

    torch.set_num_threads(args.threads)
    best: dict[int, float] = {}
    for _ in range(args.repeats):
        for k in args.ks:
            best[k] = min(best.get(k, float("inf")), fit_seconds(args.model, k, args.epochs))
    conf = validate(quiet_config(BASES[args.model]))
    data = datasets.build(conf.data)
    member = build_model(conf, data, torch.device("cpu"))
    rows = sum(t.nbytes for t in data.folds[0].train)
    print(f"{args.model}, {args.epochs} epoch(s) per trial, torch threads {args.threads}, best of {args.repeats}, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    print("| K | s per trial-epoch | speed-up over K=1 | stack memory (estimate) |")
    print("|---:|---:|---:|---:|")
    for k in args.ks:
        print(f"| {k} | {best[k]:.3f} | {best[args.ks[0]] / best[k]:.2f}x | "
              f"{stack.memory_estimate(member, k, rows) / 2**20:.1f} MiB |")


def bench_sweep(args) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    walls: dict[str, list[float]] = {"1": [], "auto": []}
    trials = 0
    for _ in range(args.repeats):
        for stack in ("1", "auto"):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "lesson5.sweep", args.sweep, f"workers={args.workers}",
                                       f"stack={stack}", "progress=false"], cwd=tmp, env=env, capture_output=True,
                                      text=True)
                walls[stack].append(time.perf_counter() - start)
                if done.returncode != 0:
                    sys.exit(f"stack={stack} failed:\n{done.stderr[-3000:]}")
                import optuna

                opt = optuna.load_study(study_name=args.sweep, storage=optuna.storages.JournalStorage(
                    optuna.storages.journal.JournalFileBackend(str(Path(tmp) / "sweeps.journal"))))
                trials = len(opt.trials)
    print(f"study {args.sweep}: {trials} trials, {args.workers} worker(s), best of {args.repeats} interleaved")
    print("| stack | wall s | trials per minute | ratio |")
    print("|---|---:|---:|---:|")
    for stack, w in walls.items():
        print(f"| {stack} | {min(w):.1f} | {60 * trials / min(w):.1f} | {min(walls['1']) / min(w):.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="collab", choices=sorted(BASES))
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a sweep worker's share of the cores)")
    ap.add_argument("--sweep", help="a study to run with stack=1 and stack=auto side by side")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    bench_sweep(args) if args.sweep else bench_fits(args)


if __name__ == "__main__":
    main()
