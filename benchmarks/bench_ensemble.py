"""Ensembles of seeds (trainer.ensemble=K) against one seed, on GroupLens' five folds.

    python benchmarks/bench_ensemble.py [--ks 1 5] [--recipes lesson collab_wide] [overrides ...]

Each recipe runs `run(cfg)` (untracked) with data.split=cv (u1..u5, each validated on its own test fold) at each K,
side by side in one process: the 5-fold mean test RMSE of the ensemble (the mean of K seeds' predictions, seeds
trainer.seed .. seed+K-1), the mean over folds of its members' own RMSE (what one seed gives), and the fit time
(train_seconds summed over the folds) against K=1's. Targets (issue 19): K=5 at a 5-fold mean RMSE <= 0.900, in
<= 2.5x the fit time of one seed. Extra arguments are Hydra overrides applied to every run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDS = ("u1", "u2", "u3", "u4", "u5")
RECIPES = {
    "lesson": [],  # the default collab experiment: 5 epochs of one-cycle at 5e-3, wd 0.1, 40 factors, bs 64
    "collab_wide": ["model.n_factors=17", "optim.wd=0.20120553372862204", "optim.lr=0.0033456736941540207",
                    "trainer.bs=128", "trainer.epochs=16"],  # sweeps/results/collab_wide.md's best recipe
}
TARGET_RMSE, TARGET_RATIO = 0.900, 2.5


def measure(overrides: list[str], k: int) -> dict:
    from lesson5.lifecycle import quiet_config
    from lesson5.run import run

    cfg = quiet_config(["data.split=cv", "data.valid_from_train=false", f"trainer.ensemble={k}", *overrides])
    result = run(cfg)
    folds = [result.folds[f] for f in FOLDS]
    members = [statistics.fmean(f[f"member{m}/valid_rmse"] for m in range(k)) for f in folds] if k > 1 else \
        [f["valid_rmse"] for f in folds]
    return {"rmse": [f["valid_rmse"] for f in folds], "members": members,
            "seconds": sum(f["train_seconds"] for f in folds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args, overrides = parser.parse_known_args()
    sys.path.insert(0, str(ROOT))
    print(f"# bench_ensemble {time.strftime('%Y-%m-%d %H:%M')}  ks={args.ks} overrides={overrides}", flush=True)
    print("| recipe | K | " + " | ".join(FOLDS) + " | 5-fold mean | members' mean | fit s | vs K=1 |")
    print("|---|---:|" + "---:|" * (len(FOLDS) + 4), flush=True)
    for name in args.recipes:
        base = None
        for k in args.ks:
            m = measure([*RECIPES[name], *overrides], k)
            base = base or m["seconds"]
            print(f"| {name} | {k} | " + " | ".join(f"{v:.4f}" for v in m["rmse"])
                  + f" | {statistics.fmean(m['rmse']):.4f} | {statistics.fmean(m['members']):.4f} | "
                  f"{m['seconds']:.1f} | {m['seconds'] / base:.2f}x |", flush=True)
    print(f"\ntargets: K=5 at a 5-fold mean RMSE <= {TARGET_RMSE} (lesson recipe) in <= {TARGET_RATIO}x K=1's fit time")


if __name__ == "__main__":
    main()
