"""MNIST benchmark: one epoch of the lesson's loop against lesson5's, same model and optimizer, side by side.

    python benchmarks/bench_mnist.py [--repeats 3] [--data fashion_mnist]

The lesson's loop is TensorDataset + DataLoader(bs=64, shuffle=True) + its `update()` (forward, loss, backward,
a hand-written SGD step with the wd*sum(w**2) penalty, zero the grads). lesson5's is `run(cfg)` with model=mlp,
optim=sgd (impl torch, then scratch), optim.wd_mode=l2 and a constant lr, 1 epoch. Both time the epoch alone; repeats
alternate; medians, and the ratio lesson / lesson5.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
LR, WD, BS = 2e-2, 1e-5, 64


def lesson_epoch(data) -> tuple[float, float]:
    """The lesson's notebook loop, as written there (with our Classifier as Mnist_NN)."""
    from lesson5.models.mnist import Classifier

    torch.manual_seed(42)
    (x, y), (vx, vy) = data.folds[0].train, data.folds[0].valid
    model = Classifier([784, 50, 10])
    loss_func = nn.CrossEntropyLoss()
    dl = DataLoader(TensorDataset(x, y), batch_size=BS, shuffle=True)

    def update(xb, yb, lr):
        y_hat = model(xb)
        w2 = 0.0
        for p in model.parameters():
            w2 += (p**2).sum()
        loss = loss_func(y_hat, yb) + w2 * WD
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(lr * p.grad)
                p.grad.zero_()
        return loss.item()

    t = time.perf_counter()
    for xb, yb in dl:
        update(xb, yb, LR)
    seconds = time.perf_counter() - t
    with torch.no_grad():
        acc = (model(vx).argmax(1) == vy).float().mean().item()
    return seconds, acc


def lesson5_epoch(data_name: str, impl: str) -> tuple[float, float]:
    from lesson5.lifecycle import quiet_config
    from lesson5.run import run

    result = run(quiet_config([
        "model=mlp", f"data={data_name}", "optim=sgd", f"optim.impl={impl}", "optim.wd_mode=l2",
        f"optim.lr={LR}", f"optim.wd={2 * WD}", "schedule=constant", "trainer.epochs=1", f"trainer.bs={BS}"]))
    return result.metrics["train_seconds"], result.metrics["valid_accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default="fashion_mnist", choices=["fashion_mnist", "mnist"])
    args = ap.parse_args()
    from lesson5 import compose
    from lesson5 import data as datasets
    from lesson5.config import validate

    conf = validate(compose([f"data={args.data}", "model=mlp"]))
    data = datasets.build(conf.data)
    torch.set_num_threads(1)  # both loops on one thread, as lesson5 runs by default
    times: dict[str, list[tuple[float, float]]] = {"lesson loop": [], "lesson5 torch": [], "lesson5 scratch": []}
    for _ in range(args.repeats):
        times["lesson loop"].append(lesson_epoch(data))
        times["lesson5 torch"].append(lesson5_epoch(args.data, "torch"))
        times["lesson5 scratch"].append(lesson5_epoch(args.data, "scratch"))
    print(f"{args.data}, {data.info['n_train']} images, mlp 784-50-10, SGD lr {LR}, bs {BS}, 1 epoch; "
          f"medians of {args.repeats}")
    base = statistics.median(t for t, _ in times["lesson loop"])
    for name, rs in times.items():
        med = statistics.median(t for t, _ in rs)
        print(f"{name:<16} {med:7.2f} s  {base / med:5.1f}x  valid_accuracy {statistics.median(a for _, a in rs):.4f}")


if __name__ == "__main__":
    main()
