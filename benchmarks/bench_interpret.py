"""How long `python -m lesson5.interpret <run id>` takes on a finished default collab run (target: <= 5 s on 2 CPU
cores), side by side with a bare `python -c "import lesson5.interpret"`, the floor every command pays.

    python benchmarks/bench_interpret.py [--repeats 3]

It trains one default collab run into a temporary store first (not timed).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: str) -> float:
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as store:
        uri = f"sqlite:///{store}/mlflow.db"
        out = subprocess.run([sys.executable, "-m", "lesson5", "trainer.progress=false", f"tracking.uri={uri}",
                              "tracking.log_model=false"], cwd=store, capture_output=True, text=True, check=True)
        run_id = out.stdout.split("MLflow run ")[1].split()[0]
        cases = {"import only": [sys.executable, "-c", "import lesson5.interpret, lesson5.load"],
                 "interpret": [sys.executable, "-m", "lesson5.interpret", run_id, f"tracking.uri={uri}"]}
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.repeats):
            for name, cmd in cases.items():
                times[name].append(timed(cmd, store))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"medians of {args.repeats} interleaved repeats")
    for name, t in med.items():
        print(f"{name:<12}{t:>7.2f} s{t / med['import only']:>7.2f}x")
    print(f"interpret {'meets' if med['interpret'] <= 5 else 'misses'} the 5 s target")


if __name__ == "__main__":
    main()
