"""Watching costs (issue 20): the sweep's live progress display and MLflow's system metrics, each side by side with
the same command without it, the two cases alternated so that the machine's load falls on both alike.

    python benchmarks/bench_watch.py [--repeats 3] [--skip progress|system-metrics]

1. Progress: `python -m lesson5.sweep <study> workers=2 n_trials=N` with `progress=true` and `progress=false`
   (each in a fresh folder with its own journal and SQLite store): the command's wall time and the driver's own
   CPU seconds (the display is drawn by the driver, which otherwise only waits for its workers).
2. System metrics: a resnet34 fine-tune (`experiment=transfer_mnist` from a random body, small images) with
   `tracking.system_metrics=true` and `false`: the fit's seconds (`train_seconds`), the command's wall time, and
   the system-metric rows the run got.

It prints each case's median and the ratio with/without. A target is a ratio: progress <= 1.01, system metrics
<= 1.02.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SWEEP = ["n_factors", "workers=2", "n_trials=6", "trainer.epochs=1"]
FINETUNE = ["experiment=transfer_mnist", "model.weights=none", "data.size=32", "data.n_train=1000",
            "data.n_valid=300"]


def _timed(cmd: list[str], cwd: str) -> tuple[float, float, float]:
    """The command's wall seconds, its own CPU seconds (the driver's, sampled with psutil until it exits: wait4's
    rusage would add the workers it reaped) and the CPU seconds of it and all its processes."""
    import psutil

    log = Path(cwd) / "output.txt"
    with open(log, "w") as f:  # a file, not a pipe: nothing blocks while it runs
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=f, stderr=subprocess.STDOUT)
        own = psutil.Process(proc.pid)
        cpu = 0.0
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                times = own.cpu_times()
                cpu = times.user + times.system
            time.sleep(0.2)
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{log.read_text()[-3000:]}")
    total = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, cpu, total.ru_utime + total.ru_stime


def progress(repeats: int) -> dict[bool, list[tuple[float, float, float]]]:
    """Per case: wall seconds, the driver's CPU seconds, and every process's CPU seconds (RUSAGE_CHILDREN grows by
    each finished command's whole tree)."""
    out: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    for r in range(repeats):
        for shown in (True, False) if r % 2 == 0 else (False, True):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            with tempfile.TemporaryDirectory() as tmp:
                wall, driver, after = _timed([sys.executable, "-m", "lesson5.sweep", *SWEEP,
                                              f"progress={str(shown).lower()}"], tmp)
            out[shown].append((wall, driver, after - before.ru_utime - before.ru_stime))
            print(f"  progress={shown}: wall {wall:.1f} s, driver CPU {driver:.2f} s of {out[shown][-1][2]:.1f} s",
                  flush=True)
    return out


def system_metrics(repeats: int) -> dict[bool, list[tuple[float, float, int, float, float]]]:
    """Per case: the fit's seconds, the command's wall, the system-metric rows, the trainer's own CPU seconds and
    the CPU seconds of its whole tree (the writer, which samples the metrics, included). CPU seconds vary less
    than seconds of wall time on a machine that other jobs share."""
    from mlflow import MlflowClient

    out: dict[bool, list[tuple[float, float, int, float, float]]] = {True: [], False: []}
    for r in range(repeats):
        for on in (True, False) if r % 2 == 0 else (False, True):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            with tempfile.TemporaryDirectory() as tmp:
                uri = f"sqlite:///{tmp}/mlflow.db"
                wall, trainer, after = _timed([sys.executable, "-m", "lesson5", *FINETUNE, f"tracking.uri={uri}",
                                               f"tracking.system_metrics={str(on).lower()}"], tmp)
                client = MlflowClient(uri)
                run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
                rows = sum(len(client.get_metric_history(run.info.run_id, k))
                           for k in run.data.metrics if k.startswith("system/"))
                tree = after - before.ru_utime - before.ru_stime
                out[on].append((run.data.metrics["train_seconds"], wall, rows, trainer, tree))
            print(f"  system_metrics={on}: fit {out[on][-1][0]:.1f} s, wall {wall:.1f} s, {rows} system rows, "
                  f"CPU {trainer:.1f} s trainer, {tree:.1f} s all", flush=True)
    return out


def _ratio(cases: dict[bool, list], i: int) -> tuple[float, float, float]:
    on, off = statistics.median(c[i] for c in cases[True]), statistics.median(c[i] for c in cases[False])
    return on, off, on / off


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", choices=["progress", "system-metrics"], action="append", default=[])
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {args.repeats} repeats, alternated")
    rows = []
    if "progress" not in args.skip:
        p = progress(args.repeats)
        share = {k: [(c[1] / c[2],) for c in v] for k, v in p.items()}
        rows += [("sweep wall s, progress on / off", *_ratio(p, 0), "<= 1.01"),
                 ("driver CPU s, progress on / off", *_ratio(p, 1), "reported"),
                 ("driver's share of the sweep's CPU, on / off", *_ratio(share, 0), "reported")]
    if "system-metrics" not in args.skip:
        s = system_metrics(args.repeats)
        rows += [("resnet34 fit s, system metrics on / off", *_ratio(s, 0), "<= 1.02"),
                 ("resnet34 command wall s, on / off", *_ratio(s, 1), "reported"),
                 ("resnet34 trainer CPU s, on / off", *_ratio(s, 3), "reported"),
                 ("CPU s of the trainer and its writer, on / off", *_ratio(s, 4), "reported"),
                 ("system-metric rows logged, on / off", *_ratio({k: [(max(c[2], 1),) for c in v]
                                                                  for k, v in s.items()}, 0), "reported")]
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    print("| measure | with | without | ratio | target |\n|---|---:|---:|---:|---|")
    for name, on, off, ratio, target in rows:
        print(f"| {name} | {on:.2f} | {off:.2f} | {ratio:.3f} | {target} |")


if __name__ == "__main__":
    main()
