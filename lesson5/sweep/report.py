"""A study's report: the verdict on its claim, the objective against each swept parameter, the best trials and
the parameters' importances. Written as Markdown (and PNGs) under `sweeps/results/`, and logged to the study's
parent run.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState

from lesson5.sweep.spec import Study
from lesson5.sweep.verdict import Verdict, judge, judge_final
from lesson5.tracking.store import log_files, log_summary

RESULTS = Path("sweeps") / "results"  # under the folder the command runs in, beside mlflow.db


@dataclass
class Report:
    verdict: Verdict
    markdown: str
    plots: dict[str, bytes]
    markdown_path: Optional[Path] = None


def state_counts(trials) -> dict[str, int]:
    """How many trials ended COMPLETE, PRUNED and FAIL."""
    return {s.name: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                 TrialState.FAIL)}


def completed(opt: optuna.Study) -> list[tuple[dict, float]]:
    """(params, objective) of every COMPLETE trial."""
    return [(t.params, t.value) for t in opt.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def plot_param(study: Study, name: str, trials: list[tuple[dict, float]], key: str) -> bytes:
    """The objective against one swept parameter: every trial (seeds spread), and the mean per value."""
    from lesson5 import plots

    plt = plots.plt
    fig, ax = plt.subplots(figsize=(7, 4))
    param = next(p for p in study.space if p.key == key)
    if param.choices is not None:
        labels = [str(c) for c in param.choices]
        pos = {label: i for i, label in enumerate(labels)}
        xs = [pos[str(params[key])] for params, _ in trials]
        ax.set_xticks(range(len(labels)), labels)
        means = [(pos[v], statistics.fmean(ys)) for v, ys in _by(trials, key).items()]
    else:
        xs = [params[key] for params, _ in trials]
        means = sorted((float(v), statistics.fmean(ys)) for v, ys in _by(trials, key).items())
        if param.log:
            ax.set_xscale("log")
    ax.scatter(xs, [v for _, v in trials], s=14, alpha=0.6, label="trials (each seed)")
    if means:
        ax.plot(*zip(*sorted(means)), "o-", color="tab:red", label="mean over seeds")
    ax.set(xlabel=key, ylabel=study.metric, title=f"{name}: {study.metric} against {key}")
    ax.legend()
    plots.fixed_margins(fig)
    return plots.png(fig)


def _by(trials, key) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for params, value in trials:
        out.setdefault(str(params[key]), []).append(value)
    return out


def importances(opt: optuna.Study) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA), or {} when too few trials or values vary."""
    try:
        return optuna.importance.get_param_importances(opt)
    except (ValueError, RuntimeError):
        return {}


def build(opt: optuna.Study, study: Study) -> Report:
    trials = completed(opt)
    maximize = study.direction == "maximize"
    final = {k: opt.user_attrs.get(f"final.{k}", {}) for k in ("best", "base")}
    if study.rule["kind"] == "final":
        verdict = judge_final(study.rule, final["best"].get("folds", {}), final["base"].get("folds", {}), maximize)
    else:
        verdict = judge(study.rule, trials, maximize)
    all_trials = opt.get_trials(deepcopy=False)
    count = state_counts(all_trials)
    epochs = [t.user_attrs["epochs"] for t in all_trials if "epochs" in t.user_attrs]
    lines = [f"# Study `{opt.study_name}` ({study.path.name})", "", f"**Claim.** {study.claim}", "",
             f"**Rule** (written in the study file before any result): `{study.rule}`", "",
             f"**Verdict: {verdict.result}.** {verdict.summary}", "",
             f"Objective: {study.direction} `{study.metric}`. Sampler {study.sampler}, pruner "
             f"{study.pruner['name']}, seeds {study.seeds}. Base overrides: `{' '.join(study.base) or '(none)'}`.",
             f"Trials: {count['COMPLETE']} complete, {count['PRUNED']} pruned, {count['FAIL']} failed"
             + (f"; {sum(epochs)} epochs trained" if epochs else "") + ".", ""]
    sign = -1 if maximize else 1
    if study.rule["kind"] == "final":
        folds = sorted(set(final["best"].get("folds", {})) | set(final["base"].get("folds", {})))
        lines += [f"## Final scoring with `{' '.join(study.final)}`", "",
                  f"| recipe | overrides | {' | '.join(folds)} |", "|---|---|" + "---:|" * len(folds)]
        for label in ("best", "base"):
            scored = final[label].get("folds", {})
            lines.append(f"| {label} | `{' '.join(final[label].get('overrides', [])) or '(the base)'}` | "
                         + " | ".join(f"{scored[f]:.4f}" if f in scored else "" for f in folds) + " |")
    else:
        lines += [f"## `{study.metric}` by `{study.rule['param']}` (each value at its best setting of the others)",
                  "", "| value | mean | std | seeds | at |", "|---|---:|---:|---:|---|"]
        for v, s in sorted(verdict.scores.items(), key=lambda kv: sign * kv[1].mean):
            at = ", ".join(f"{k}={x}" for k, x in s.setting.items()) or "-"
            lines.append(f"| {v} | {s.mean:.4f} | {s.std:.4f} | {s.n} | {at} |")
    best = sorted(opt.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: sign * t.value)[:5]
    lines += ["", "## Best trials", "", f"| trial | {study.metric} | params |", "|---:|---:|---|"]
    lines += [f"| {t.number} | {t.value:.4f} | {', '.join(f'{k}={v}' for k, v in t.params.items())} |" for t in best]
    imp = importances(opt)
    if imp:
        lines += ["", "## Parameter importances (fANOVA)", "", "| param | importance |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in imp.items()]
    plots = {f"{opt.study_name}_{p.key}.png": plot_param(study, opt.study_name, trials, p.key)
             for p in study.space} if trials else {}
    lines += ["", *[f"![{name}]({name})" for name in plots], ""]
    return Report(verdict, "\n".join(lines), plots)


def write(opt: optuna.Study, study: Study, *, client=None, parent_run_id: Optional[str] = None,
          out_dir: Path = RESULTS) -> Report:
    """Build the report, write it under out_dir (as <study name>.md and its PNGs), log it to the parent run."""
    rep = build(opt, study)
    out_dir.mkdir(parents=True, exist_ok=True)
    rep.markdown_path = out_dir / f"{opt.study_name}.md"
    rep.markdown_path.write_text(rep.markdown)
    for name, png in rep.plots.items():
        (out_dir / name).write_bytes(png)
    if client is not None and parent_run_id is not None:
        log_files(client, parent_run_id, {f"report/{name}": (out_dir / name).read_bytes()
                                          for name in [rep.markdown_path.name, *rep.plots]})
        count = state_counts(opt.get_trials(deepcopy=False))
        metrics = {f"trials_{state.lower()}": n for state, n in count.items()}
        if count["COMPLETE"]:
            metrics[f"best_{study.metric}"] = opt.best_value
        log_summary(client, parent_run_id, metrics=metrics,
                    tags={"verdict": rep.verdict.result, "verdict.summary": rep.verdict.summary})
    return rep
