"""The claims report's time with one worker against more, side by side.

    python benchmarks/bench_reproduce.py [--only y_range,one_cycle] [--workers 1 2] [--quick] [overrides ...]

Runs `python -m lesson5.reproduce only=... reuse=false workers=N` once per N, one after the other, each into a
store of its own (a temporary folder), so every run is made again: the report's wall time, its runs, seconds a
run, and the speed-up over the first N. The verdicts must be the same at every N (the runs are the same); the
script fails if they are not. Target (issue 18): the full report (`--only` all claims) in 25 min on 2 cores.
Extra arguments are Hydra overrides passed to every report.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def report(only: str, workers: int, quick: bool, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="lesson5-bench-reproduce-") as tmp:
        out = Path(tmp) / "claims.md"
        cmd = [sys.executable, "-m", "lesson5.reproduce", *([f"only={only}"] if only else []), "reuse=false",
               f"workers={workers}", f"quick={str(quick).lower()}", f"out={out}",
               f"tracking.uri=sqlite:///{tmp}/mlflow.db", *overrides]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=tmp, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        text = out.read_text()
    runs = int(re.search(r"; (\d+) runs \(", text).group(1))
    verdicts = re.findall(r"\| \*\*(reproduced|not reproduced|inconclusive)\*\* \|", text)
    return {"seconds": seconds, "runs": runs, "verdicts": verdicts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="y_range,one_cycle", help="claims to re-test ('' for all)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true")
    args, overrides = parser.parse_known_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    print(f"claims: {args.only or 'all'}, {'quick' if args.quick else 'full'}; {os.cpu_count()} CPU cores; "
          f"lesson5 at {head.stdout.strip()}")
    print("| workers | runs | wall | s a run | speed-up |\n|---:|---:|---:|---:|---:|")
    first = None
    for n in args.workers:
        got = report(args.only, n, args.quick, overrides)
        first = first or got
        print(f"| {n} | {got['runs']} | {got['seconds'] / 60:.1f} min | {got['seconds'] / got['runs']:.2f} | "
              f"{first['seconds'] / got['seconds']:.2f}x |", flush=True)
        if got["verdicts"] != first["verdicts"] or got["runs"] != first["runs"]:
            print(f"error: workers={n} gave other verdicts or runs than workers={args.workers[0]}: "
                  f"{got['verdicts']} ({got['runs']} runs) against {first['verdicts']} ({first['runs']})",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
