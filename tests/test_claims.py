"""The claims registry and its reports: each verdict follows its measurements by the paired rules, thresholds come
from one registry, and the committed reports/claims.md and reports/transfer.md have the shape the code writes."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from lesson5 import claims, reproduce, transfer
from lesson5.sweep.verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, judge, judge_final

ROOT = Path(__file__).resolve().parents[1]
BY = {c.key: c for c in claims.CLAIMS}


def _noisy(values: dict, seeds=(0, 1, 2), noise=0.0005, seed=0, **fixed) -> list[tuple[dict, float]]:
    """(params, objective) trials: each value's mean plus noise at each seed (the same seed's noise shared)."""
    rng = random.Random(seed)
    shared = {s: rng.gauss(0, noise) for s in seeds}
    return [({**fixed, **{k: v for k, v in key}, "trainer.seed": s}, mean + shared[s] + rng.gauss(0, noise / 5))
            for key, mean in values.items() for s in seeds]


def fabricated(key: str):
    """A measurement of claim `key` that its judge accepts (the claimed side ahead where it is judged)."""
    c = BY[key]
    if key == "embedding":
        return {"max_abs_diff": 0.0}
    if key == "wd_vs_l2":
        return {"sgd": 1e-7, "adam": 0.3}
    if c.judge is claims.judge_study:
        study = claims._study({"one_cycle": "schedule", "wd": "wd_unpruned"}.get(key, key))
        space = {p.key: list(p.choices) for p in study.space}
        rule, sign = study.rule, (-1 if study.direction == "maximize" else 1)
        points = claims.grid(space)
        values = {tuple(p.items()): 0.9 + sign * (0.0 if str(p[rule["param"]]) == str(rule["value"]) else 0.01)
                  for p in points}
        return {"trials": _noisy(values), "rules": claims.rules_of(study), "maximize": sign < 0, "space": space,
                "level": 0.95, "look": 1, "looks": 1}
    if c.judge is claims.judge_recorded:
        rule = {"kind": "final", "tolerance": 0.001}
        folds = {f"u{i}": 0.9 + 0.001 * i for i in range(1, 6)}
        return {"verdicts": {"rule": judge_final(rule, folds, {f: x + 0.0001 for f, x in folds.items()}, False)},
                "rules": {"rule": rule}}
    if c.judge is claims.judge_optimizers:
        return optimizers(0.89, 0.92)
    if key == "frozen_faster":
        return {s: {"frozen_s": 10.0, "unfrozen_s": 12.4 + 0.1 * s, "frozen_mb": 1.0, "unfrozen_mb": 2.0}
                for s in range(3)}
    if key == "bias_ranks":
        return {"spearman": {0: 0.90, 1: 0.91, 2: 0.89}, "spearman_min50": {0: 0.92}, "n_items": 1000, "seed": 0,
                "lowest": claims.LESSON_LOWEST, "highest": claims.LESSON_HIGHEST[::-1]}
    if key == "ensemble":
        return {1: {f"u{i}": 0.905 + 0.002 * i for i in range(1, 6)},
                5: {f"u{i}": 0.897 + 0.002 * i + 0.0003 * (i % 2) for i in range(1, 6)}}
    raise AssertionError(f"no fabricated measurement for claim {key}: add one")


def optimizers(adam: float, sgd: float, adam_best: float = 3e-3, sgd_best: float = 3.0) -> dict:
    """Trials of Adam and SGD over their lr grids, each best at the lr given, with a valley around it."""
    import math

    lrs = {"adam": [1e-3, 3e-3, 1e-2, 3e-2], "sgd": [0.3, 1.0, 3.0, 10.0]}
    values = {}
    for name, mean, best in (("adam", adam, adam_best), ("sgd", sgd, sgd_best)):
        for lr in lrs[name]:
            values[(("optim", name), ("optim.lr", lr))] = mean + 0.01 * abs(math.log10(lr / best))
    rule = {"kind": "better", "param": "optim", "value": "adam", "than": "sgd", "tolerance": 0.001}
    return {"trials": _noisy(values), "rule": rule, "maximize": False, "lrs": lrs}


def judged_rows():
    return [(c, c.judge(fabricated(c.key))) for c in claims.CLAIMS]


# ---- verdicts follow the measurements ------------------------------------------------------------------------


def test_every_claim_judges_a_fabricated_measurement_into_the_one_vocabulary():
    for c, j in judged_rows():
        assert j.verdict in claims.VERDICTS, c.key
        if not c.check and c.judge is not claims.judge_recorded:
            assert j.verdict == REPRODUCED, (c.key, j.numbers)  # the claimed side is ahead by 0.01 or more


def test_the_ensemble_claim_fails_when_one_seed_is_as_good():
    one = {f"u{i}": 0.905 + 0.002 * i for i in range(1, 6)}
    def shifted(by: float, wobble: float) -> dict[str, float]:
        return {f: x + by + wobble * (-1) ** i for i, (f, x) in enumerate(one.items())}

    same = BY["ensemble"].judge({1: one, 5: shifted(0, 1e-4)})  # no difference that matters
    worse = BY["ensemble"].judge({1: one, 5: shifted(4e-3, 2e-4)})  # one seed better
    assert same.verdict == NOT_REPRODUCED and worse.verdict == NOT_REPRODUCED
    assert "goal of 0.900 not met" in same.numbers


def test_checks_fail_when_the_identity_breaks():
    assert BY["embedding"].judge({"max_abs_diff": 0.1}).verdict == NOT_REPRODUCED
    assert BY["wd_vs_l2"].judge({"sgd": 1e-7, "adam": 1e-7}).verdict == NOT_REPRODUCED  # Adam must differ
    assert BY["wd_vs_l2"].judge({"sgd": 0.01, "adam": 0.3}).verdict == NOT_REPRODUCED
    assert all(c.check for c in claims.CHECKS) and not any(c.check for c in claims.CLAIMS if c not in claims.CHECKS)


def test_a_study_claim_uses_its_control_and_the_values_of_its_grid():
    m = fabricated("n_factors")
    got = BY["n_factors"].judge(m)
    if got.control is not None:  # the study file has a control: a poor value must come out not reproduced
        assert got.control.verdict == NOT_REPRODUCED
    # a value of the grid with no finished trial counts: 40 cannot be "best" over a value never measured
    m["trials"] = [(p, x) for p, x in m["trials"] if p["model.n_factors"] != 30]
    assert BY["n_factors"].judge(m).verdict == INCONCLUSIVE


def test_adam_against_sgd_needs_each_best_lr_inside_its_grid():
    assert BY["adam_vs_sgd"].judge(optimizers(0.89, 0.92)).verdict == REPRODUCED
    assert BY["adam_vs_sgd"].judge(optimizers(0.93, 0.92)).verdict == NOT_REPRODUCED
    edge = BY["adam_vs_sgd"].judge(optimizers(0.89, 0.92, sgd_best=10.0))
    assert edge.verdict == INCONCLUSIVE and "edge of its grid" in edge.numbers
    # the registry's grids put SGD's lrs around 1-3, where it trains (0.05 left it at 1.28 RMSE)
    assert min(claims.OPTIMIZERS["sgd"]["optim.lr"]) < 1 < 3 < max(claims.OPTIMIZERS["sgd"]["optim.lr"])


def test_a_threshold_claim_is_an_interval_over_seeds_against_the_registry():
    t = claims.THRESHOLDS["frozen_faster"]
    runs = fabricated("frozen_faster")
    assert BY["frozen_faster"].judge(runs).verdict == REPRODUCED
    slow = {s: {**r, "unfrozen_s": r["frozen_s"] * (1.0 + 0.01 * s)} for s, r in runs.items()}
    assert BY["frozen_faster"].judge(slow).verdict == NOT_REPRODUCED
    noisy = {s: {**r, "unfrozen_s": r["frozen_s"] * x} for (s, r), x in zip(runs.items(), (0.9, 1.3, 1.1))}
    assert BY["frozen_faster"].judge(noisy).verdict == INCONCLUSIVE
    one = {0: runs[0]}
    assert BY["frozen_faster"].judge(one).verdict == INCONCLUSIVE  # one run is never evidence
    v, _ = claims.judge_bound({0: t.value + 0.2, 1: t.value + 0.21}, t)
    assert v.result == REPRODUCED and v.rows[0].diff == pytest.approx(0.205)
    bias = fabricated("bias_ranks")
    assert BY["bias_ranks"].judge({**bias, "spearman": {0: 0.6, 1: 0.62, 2: 0.61}}).verdict == NOT_REPRODUCED


def test_every_threshold_has_a_reason_and_the_rules_read_it():
    assert all(t.reason and t.unit for t in claims.THRESHOLDS.values())
    moved = dict(claims.THRESHOLDS)
    try:
        claims.THRESHOLDS["frozen_faster"] = claims.Threshold(2.0, "x", "test")
        assert BY["frozen_faster"].judge(fabricated("frozen_faster")).verdict == NOT_REPRODUCED
    finally:
        claims.THRESHOLDS.clear()
        claims.THRESHOLDS.update(moved)


def test_the_summary_counts_doubt_apart():
    rows = judged_rows()
    assert all(j.verdict == REPRODUCED for _, j in rows)
    rows[2] = (rows[2][0], claims.Judged(INCONCLUSIVE, "not measured"))
    rows[3] = (rows[3][0], claims.Judged(NOT_REPRODUCED, "beaten"))
    line = reproduce.summary(rows)
    n = len([c for c, _ in rows if not c.check])
    assert re.match(rf"\*\*{n} claims: {n - 2} reproduced, 1 not reproduced, 1 inconclusive\.\*\*", line), line


# ---- the committed reports have the shape the code writes -----------------------------------------------------


def table(text: str, header: str) -> list[list[str]]:
    """The cells of each row of the Markdown table under `header` (which must be there)."""
    lines = text.splitlines()
    assert header in lines, f"the table header {header!r} is missing"
    rows = []
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_claims_md_is_what_reproduce_writes():
    made = reproduce.markdown(judged_rows(), "python -m lesson5.reproduce quick=true", True, [], 3.0)
    committed = (ROOT / "reports" / "claims.md").read_text()
    assert committed.splitlines()[0] == made.splitlines()[0] == reproduce.TITLE
    head = committed.splitlines()[2]
    assert head.startswith("Made by `python -m lesson5.reproduce") and any(m in head for m in reproduce.MODES.values())
    summary = committed.splitlines()[4]
    assert re.fullmatch(r"\*\*\d+ claims: \d+ reproduced, \d+ not reproduced, \d+ inconclusive\.\*\* Controls: \d+ of "
                        r"\d+ came out not reproduced, as a control must\. Checks: \d+ of \d+ passed\.", summary)
    for header in (reproduce.CLAIMS_HEADER, reproduce.CHECKS_HEADER, reproduce.THRESHOLDS_HEADER):
        mine, theirs = table(made, header), table(committed, header)
        assert [r[0] for r in theirs] == [r[0] for r in mine], header  # the same claims, checks and keys, in order
        assert {len(r) for r in theirs} == {len(header.split("|")) - 2}
    rows = table(committed, reproduce.CLAIMS_HEADER)
    verdicts = [r[4].strip("*") for r in rows]
    assert set(verdicts) <= set(claims.VERDICTS)
    counts = [int(x) for x in re.findall(r"(\d+) (?:claims|reproduced|not reproduced|inconclusive)", summary)[:4]]
    assert counts == [len(rows), verdicts.count(REPRODUCED), verdicts.count(NOT_REPRODUCED),
                      verdicts.count(INCONCLUSIVE)]
    thresholds = table(committed, reproduce.THRESHOLDS_HEADER)
    assert [float(r[1]) for r in thresholds] == [t.value for t in claims.THRESHOLDS.values()]
    assert "## The lesson's bias tables, under the lesson's protocol" in committed


def fabricated_transfer() -> tuple[dict, dict]:
    """A transfer protocol's measurements and configs, as `Protocol.all` returns them."""
    from lesson5 import compose
    from lesson5.config import validate

    def runs(role: str, acc: float) -> dict:
        return {s: {"role": f"{role} seed={s}", "run_id": "0" * 32, "seconds": 1.0, "valid_accuracy": acc + d,
                    "frozen/epoch_seconds": 10.0, "unfrozen/epoch_seconds": 12.0 + d,
                    "frozen/peak_memory_mb": 1.0, "unfrozen/peak_memory_mb": 2.0}
                for s, d in zip((42, 43, 44), (0.0, 0.004, -0.003))}

    out = {"pretrain": runs("pretrain", 0.79)[42], "finetune": runs("finetune slice", 0.95),
           "single_lr": runs("finetune single lr", 0.94), "scratch": runs("scratch", 0.93), "quick": True,
           "efficientnet": {"imagenet": runs("imagenet", 0.47), "calibrated": runs("calibrated", 0.2),
                            "finetune": runs("eff finetune", 0.97), "untouched": runs("untouched", 0.1)[42],
                            "spread": {"eval, initial statistics": 1e-9, "training mode": 0.3,
                                       "eval, measured statistics": 0.2}}}
    conf = {step: validate(compose([f"experiment=transfer_{step}"])) for step in ("pretrain", "mnist")}
    return out, conf


def test_transfer_verdicts_are_paired_by_seed_with_the_registry_thresholds():
    out, _ = fabricated_transfer()
    got = dict(transfer.verdicts(out))
    assert all(j.verdict == REPRODUCED for j in got.values()), {k: j.numbers for k, j in got.items()}
    out["scratch"] = {s: {**r, "valid_accuracy": r["valid_accuracy"] + 0.05} for s, r in out["scratch"].items()}
    worse = dict(transfer.verdicts(out))
    assert worse["Fine-tuning pretrained weights beats training from scratch at equal epochs"].verdict == NOT_REPRODUCED
    one = {k: ({42: v[42]} if k in ("finetune", "single_lr", "scratch") else v) for k, v in out.items()}
    assert next(iter(dict(transfer.verdicts(one)).values())).verdict == INCONCLUSIVE  # one seed: no interval


def test_transfer_md_is_what_transfer_writes():
    report = ROOT / "reports" / "transfer.md"
    if not report.exists():  # visible in the test summary, not a pass
        pytest.skip("reports/transfer.md is not yet regenerated by `python -m lesson5.transfer` under the paired "
                    "rules; the earlier report is in reports/before-issue-18/")
    out, conf = fabricated_transfer()
    made = transfer.markdown(out, "python -m lesson5.transfer quick=true", conf)
    committed = report.read_text()
    assert committed.splitlines()[0] == made.splitlines()[0] == transfer.TITLE
    assert committed.splitlines()[2].startswith("Made by `python -m lesson5.transfer")
    assert re.match(r"\*\*\d+ claims: \d+ reproduced, \d+ not reproduced, \d+ inconclusive\.\*\*",
                    committed.splitlines()[4])
    mine, theirs = table(made, transfer.CLAIMS_HEADER), table(committed, transfer.CLAIMS_HEADER)
    assert [r[0] for r in theirs] == [r[0] for r in mine]
    assert {r[3].strip("*") for r in theirs} <= set(claims.VERDICTS)
    runs = table(committed, transfer.RUNS_HEADER)
    pattern = re.compile(r"(pretrain fashion_mnist|finetune slice|finetune single lr|scratch|efficientnet_lite0 .*)"
                         r"( seed=\d+)?")
    assert runs and all(pattern.fullmatch(r[0]) and re.fullmatch(r"`[0-9a-f]{32}`", r[3]) for r in runs)


def test_judge_reads_a_threshold_rule_as_the_registry_says():
    # judge_bound is the better rule with the threshold as the competitor: the same numbers through judge directly
    t = claims.Threshold(1.0, "x", "test")
    rule = {"kind": "better", "param": "x", "value": "measured", "than": "1", "tolerance": 0.0}
    xs = {0: 1.3, 1: 1.2, 2: 1.25}
    trials = [({"x": "measured", "trainer.seed": s}, v) for s, v in xs.items()]
    trials += [({"x": "1", "trainer.seed": s}, 1.0) for s in xs]
    assert claims.judge_bound(xs, t)[0].rows[0].lo == judge(rule, trials, True).rows[0].lo


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_the_quick_report_runs_on_tiny_data_and_reuses_its_runs(tiny, workers):
    """In this process, or in two workers with the claims measured at once: the same runs, in the same stacks."""
    keys = ["embedding", "wd_vs_l2", "y_range", "adam_vs_sgd", "adam_vs_momentum", "bias_ranks"]
    ctx = claims.Context(quick=True, overrides=[*[o for o in tiny if not o.startswith("tracking.experiment")],
                                                "trainer.epochs=1"], workers=workers)
    rows = reproduce.measure_all(ctx, keys)
    ctx.close()
    assert [c.key for c, _ in rows] == keys
    assert all(j.verdict in claims.VERDICTS for _, j in rows)
    y_ranges = claims.quick_space(claims._study("y_range"), {})["model.y_range"]  # with any control's value
    runs = len(y_ranges) * 2 + 3 * 3 * 2 + 3  # y_range: each value at 2 seeds; adam, sgd, momentum: 3 lrs x 2 (adam's
    # shared by its two claims, made once even when both ask at once); biases: 3
    assert all(not m.get("reused") for m in ctx.made) and len(ctx.made) == runs
    # a claim's runs that differ only in seed, lr or y_range train as stacks, each still its own MLflow run
    from mlflow import MlflowClient

    client = MlflowClient(next(o for o in tiny if o.startswith("tracking.uri=")).partition("=")[2])
    sizes = {m["claim"]: client.get_run(m["run_id"]).data.tags.get("stack.size") for m in ctx.made}
    assert sizes["y_range"] == str(len(y_ranges) * 2) and sizes["adam_vs_sgd"] == "6", sizes
    again = claims.Context(quick=True, overrides=ctx.overrides)
    assert [j.verdict for _, j in reproduce.measure_all(again, keys)] == [j.verdict for _, j in rows]
    assert all(m.get("reused") for m in again.made) and len(again.made) == runs


def test_a_random_efficientnet_body_is_constant_in_eval_mode_until_its_batchnorm_is_measured(tmp_path):
    """Why transfer.md's random-body baseline scored exactly chance, and that the calibrated body fixes it."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from lesson5 import compose
    from lesson5.config import validate
    from lesson5.models import vision
    from tests.test_finetune import write_images

    folder = write_images(tmp_path / "imgs", classes=("cat", "dog", "owl"), n=8)
    conf = validate(compose(["model=efficientnet_lite0", "model.weights=none", f"data.path={folder}",
                             "data.size=32", "data.valid_pct=0.25", "trainer.bs=8"]))
    s = transfer.feature_spread(conf, seed=0)
    assert s["eval, initial statistics"] < 1e-3 * s["training mode"]  # the same features for every image
    assert s["eval, measured statistics"] > 0.1 * s["training mode"]
    body = transfer.calibrated_body(conf, 0, tmp_path / "body.pt")
    built = vision.build(validate(compose(["model=efficientnet_lite0", f"model.weights={body}"])).model,
                         type("D", (), {"sizes": {"n_classes": 3}})())  # loads as a body checkpoint
    assert built.body.state_dict()["0.bn.running_var"].mean() != 1.0  # measured, not the initial variance
