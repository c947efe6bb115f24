"""Per-step metric writes: MLflow's log_batch against the tracking writer's bulk path, side by side.

    python benchmarks/bench_metrics.py [--uri sqlite:///... | postgresql+psycopg2://...] [--repeats 3]

Writes a lesson run's per-step series (7,035 steps x train_loss_step, lr, momentum = 21,105 values) in the
768-row messages the trainer sends, into two runs of the same store: once with `MlflowClient.log_batch` (1,000
values a call at most), once through the writer (`lesson5.tracking._Writer.metrics`, one INSERT a message).
Prints the medians and microseconds a value. The default store is a new SQLite file in a temporary folder.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import tempfile
import time

from mlflow.entities import Metric

from lesson5.tracking import METRICS_PER_CALL, _Writer

STEPS, MESSAGE_ROWS = 7035, 768


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uri", help="an MLflow SQL store URI (default: a new SQLite file)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        writer = _Writer(args.uri or f"sqlite:///{tmp}/mlflow.db", queue.Queue())
        if writer.sql is None:
            raise SystemExit(f"{args.uri} is not a SQL store: the writer would use log_batch for it")
        client = writer.client
        rows = [r for s in range(1, STEPS + 1) for r in (("train_loss_step", 1 / s, s), ("lr", 1e-3, s),
                                                         ("momentum", 0.9, s))]
        times: dict[str, list[float]] = {"log_batch": [], "writer": []}
        for r in range(args.repeats):
            writer.start(r, None, "bench_metrics", f"writer {r}", {}, {}, {})
            ref = client.create_run(client.get_experiment_by_name("bench_metrics").experiment_id).info.run_id
            t = time.perf_counter()
            for i in range(0, len(rows), MESSAGE_ROWS):
                batch = [Metric(k, v, 1_000 + i, s) for k, v, s in rows[i : i + MESSAGE_ROWS]]
                for j in range(0, len(batch), METRICS_PER_CALL):
                    client.log_batch(ref, metrics=batch[j : j + METRICS_PER_CALL])
            times["log_batch"].append(time.perf_counter() - t)
            t = time.perf_counter()
            for i in range(0, len(rows), MESSAGE_ROWS):
                writer.metrics(r, 1_000 + i, rows[i : i + MESSAGE_ROWS])
            times["writer"].append(time.perf_counter() - t)
    store = args.uri.split(":")[0] if args.uri else "sqlite (temporary file)"
    print(f"{len(rows):,} per-step values into {store}, medians of {args.repeats}")
    base = statistics.median(times["log_batch"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<10} {med:6.2f} s  {med / len(rows) * 1e6:5.0f} us a value  {base / med:5.1f}x")


if __name__ == "__main__":
    main()
