"""Services (the sweep engine): a study's report, from its results table (`lesson5.sweep.table`): the verdicts on
its claim and on its control, how they were reached (paired intervals, the looks and their levels), each value's
scores, the best trials, the parameters' importances and a plot per swept parameter. Written as Markdown (and
PNGs) under `sweeps/results/`, and logged to the study's parent run when there is one, with Optuna's own views of
the study (`lesson5.sweep.study_plots`) beside it.

The report is a function of the table and the study file only: no date, host or wall time that is not in the
table, and Optuna's PED-ANOVA importances (deterministic), so that `python -m lesson5.report <study>` rebuilds the
committed report byte for byte.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import optuna

from lesson5.errors import ConfigError
from lesson5.naming import plain_name
from lesson5.sweep import halving
from lesson5.sweep import table as tables
from lesson5.sweep.spec import Study
from lesson5.sweep.table import SEED, Table
from lesson5.sweep.verdict import INCONCLUSIVE, NOT_REPRODUCED, Comparison, Verdict, judge, judge_final, look_level
from lesson5.tracking.store import log_files, log_summary

RESULTS = Path("sweeps") / "results"  # under the folder the command runs in, beside mlflow.db


@dataclass
class Report:
    verdict: Verdict
    control: Optional[Verdict]
    markdown: str
    plots: dict[str, bytes]
    markdown_path: Optional[Path] = None
    table_path: Optional[Path] = None


def state_counts(trials) -> dict[str, int]:
    """How many trials ended COMPLETE, PRUNED and FAIL (Optuna's trials, or a table's rows)."""
    names = [t.state if isinstance(t.state, str) else t.state.name for t in trials]
    return {s: names.count(s) for s in tables.STATES}


def completed_trials(opt: optuna.Study) -> list[tuple[dict, float]]:
    """(params, objective) of every COMPLETE trial of an Optuna study, as verdicts take them."""
    return [(t.params, t.value) for t in opt.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]


def level(table: Table, study: Study) -> float:
    """The confidence level of the study's last look (0.95 for a study of one look)."""
    return look_level(min(table.last_look(), study.looks), study.looks)


def full_budget(table: Table, study: Study) -> Table:
    """The trials that judge the study and name its best: all of them, or under halving the final rung's."""
    return table.at_rung(len(study.budgets) if study.budgets else None)


def verdicts(table: Table, study: Study) -> dict[str, Verdict]:
    """The verdict on the claim ("rule") and on the control ("control"), each by its rule, at the last look's
    level; a `best` rule counts every value of its parameter's space, finished or not. Under halving, each is
    judged on one rung's trials (`halving.judge_rule`: the final rung's, unless it names an eliminated value)."""
    maximize, at = study.direction == "maximize", level(table, study)
    if study.budgets:
        return {key: halving.judge_rule(study, table, rule, at) for key, rule in study.rules().items()}
    finals = table.finals()
    best = finals.get("best", {}).get("folds", {})
    out = {}
    for key, rule in study.rules().items():
        if rule["kind"] == "final":
            label = "base" if key == "rule" else "control"
            out[key] = judge_final(rule, best, finals.get(label, {}).get("folds", {}), maximize, at,
                                   label=f"the {label}")
        else:
            param = next(p for p in study.space if p.key == rule["param"])
            out[key] = judge(rule, table.completed(), maximize, at, values=param.choices)
    return out


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


def importances(table: Table, study: Study) -> dict[str, float]:
    """Optuna's parameter importances by PED-ANOVA (Optuna 5's default: deterministic, and fast where fANOVA took
    over 14 minutes on n_factors' 128 trials of 20 seeds), or {} when too few trials or values vary."""
    try:
        return optuna.importance.get_param_importances(
            tables.optuna_study(table, study),
            evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (ValueError, RuntimeError):
        return {}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def method(study: Study, table: Table) -> list[str]:
    """How the verdicts were reached, in words: the pairing, the intervals, the looks and their levels."""
    lines = ["## Method", ""]
    if study.rule["kind"] == "final":
        lines += ["The study's best recipe and the base (the lesson's recipe) are each scored once on the folds of "
                  f"`{' '.join(study.final)}`, and compared on paired per-fold differences with a "
                  "t interval: the claim is reproduced when the interval of the best's gain over the base lies below "
                  "the tolerance (`lesson5/sweep/verdict.py`)."]
        if study.control is not None and study.control["kind"] == "final":
            lines[-1] += (f" The control recipe (the base with `{' '.join(study.control['overrides'])}`) is scored "
                          "and judged the same way.")
        return [*lines, ""]
    lines += ["Each value is scored at its best setting of the other swept parameters, as the mean over seeds. Trials "
              "at the same seed share the initialization stream and the batch order, so values are compared on "
              "paired differences at the seeds both have, with a t interval on their mean; the rule's tolerance is "
              "the bound of practical equivalence (`lesson5/sweep/verdict.py`: `best` is Holm-corrected "
              "non-inferiority against every other value, `better` reads the equivalence band first). A comparison "
              "with fewer than two paired seeds is never evidence for the claim."]
    if study.looks > 1:
        plan = ", ".join(str(len(study.seeds_at(k))) for k in range(1, study.looks + 1))
        levels = ", ".join(_pct(look_level(k, study.looks)) for k in range(1, study.looks + 1))
        lines += ["", f"Seeds until decided: {study.looks} looks planned, with {plan} seeds per setting (up to "
                      f"max_seeds {study.max_seeds}). After each look but the last, the values in comparisons still "
                      "undecided (for the claim or the control) get the next look's seeds at their best setting, the "
                      "same seeds for every value, so the pairs grow. Repeated looks would inflate the error rate, so "
                      "look k is judged at the level that O'Brien-Fleming-type alpha spending (Lan-DeMets) leaves it: "
                      f"{levels}; their alphas sum to 5%. This study's last look was look "
                      f"{min(table.last_look(), study.looks)}, and its verdicts are read at that look's level."]
    if study.budgets:
        lines += ["", f"Successive halving (`lesson5/sweep/halving.py`, eta {study.pruner['eta']}): every rung "
                      f"trains complete one-cycle fits at its budget (epochs {', '.join(map(str, study.budgets))}); "
                      f"after each rung the top 1/eta of the values of `{study.rule['param']}` (at least 2), ranked "
                      "by their mean over the rung's seeds, run at the next budget. Verdicts read the final "
                      "(full-budget) rung only, among the values that reached it; a claim naming a value eliminated "
                      "earlier is inconclusive (its summary gives its reading at the rung that eliminated it, a "
                      "smaller budget's recipe). A verdict's scores are those of the rung it was read at; the best "
                      "trials, importances and plots below are the final rung's (the parent run's Optuna views show "
                      "every rung's trials)."]
    return [*lines, ""]


def _rows(v: Verdict, unit: str) -> list[str]:
    lines = [f"| against | paired {unit} | advantage | sd | interval | level | outcome | {unit} needed |",
             "|---|---:|---:|---:|---|---:|---|---:|"]
    for r in v.rows:
        lines.append(_row(r))
    return lines


def _row(r: Comparison) -> str:
    if r.n < 2:
        return f"| {r.value} | {r.n} | {'' if r.n == 0 else f'{r.diff:+.4f}'} | | fewer than two pairs | | " \
               f"{r.outcome} | |"
    return (f"| {r.value} | {r.n} | {r.diff:+.4f} | {r.sd:.4f} | [{r.lo:+.4f}, {r.hi:+.4f}] | {_pct(r.level)} | "
            f"{r.outcome} | {r.seeds_needed or ''} |")


def _scores(study: Study, v: Verdict, param: str) -> list[str]:
    sign = -1 if study.direction == "maximize" else 1
    lines = [f"## `{study.metric}` by `{param}` (each value at its best setting of the others)", "",
             "| value | mean | std | seeds | at |", "|---|---:|---:|---:|---|"]
    for value, s in sorted(v.scores.items(), key=lambda kv: (sign * kv[1].mean, kv[0])):
        at = ", ".join(f"{k}={x}" for k, x in s.setting.items()) or "-"
        lines.append(f"| {value} | {s.mean:.4f} | {s.std:.4f} | {s.n} | {at} |")
    return [*lines, ""]


def _looks(study: Study, table: Table) -> list[str]:
    """Which trials each look ran."""
    param = study.rule.get("param")
    lines = ["## Looks", "", f"| look | level | trials | seeds | values of `{param}` |", "|---:|---:|---:|---|---|"]
    for k in range(1, table.last_look() + 1):
        rows = [r for r in table.trials() if (r.look or 1) == k]
        seeds = sorted({r.params[SEED] for r in rows if SEED in r.params})
        values = sorted({str(r.params[param]) for r in rows if param in r.params},
                        key=lambda x: next((i for i, p in enumerate(_choices(study, param)) if str(p) == x), 0))
        lines.append(f"| {k} | {_pct(look_level(k, study.looks))} | {len(rows)} | {_span(seeds)} | "
                     f"{', '.join(values)} |")
    return [*lines, ""]


def _rungs(study: Study, table: Table) -> list[str]:
    """Which trials each halving rung ran, at what budget, and the values it eliminated."""
    param, gone = study.rule["param"], halving.eliminated(study, table)
    lines = ["## Rungs", "", f"| rung | epochs | trials | complete | values of `{param}` | eliminated here |",
             "|---:|---:|---:|---:|---|---|"]
    for k in range(1, halving.last_rung(table) + 1):
        rows = table.at_rung(k).trials()
        lines.append(f"| {k} | {study.budgets[k - 1]} | {len(rows)} | {sum(r.state == 'COMPLETE' for r in rows)} | "
                     f"{', '.join(halving.values_at(study, table, k, param))} | {', '.join(gone.get(k, [])) or '-'} |")
    return [*lines, ""]


def _choices(study: Study, key: str) -> list:
    return next(p.choices or [] for p in study.space if p.key == key)


def _span(seeds: list[int]) -> str:
    """0-4, 7 for [0, 1, 2, 3, 4, 7]."""
    parts, start = [], None
    for i, s in enumerate(seeds):
        start = s if start is None else start
        if i + 1 == len(seeds) or seeds[i + 1] != s + 1:
            parts.append(f"{start}" if start == s else f"{start}-{s}")
            start = None
    return ", ".join(parts)


def _finals(study: Study, table: Table) -> list[str]:
    finals = table.finals()
    folds = sorted({f for got in finals.values() for f in got["folds"]})
    lines = [f"## Final scoring with `{' '.join(study.final)}`", "",
             f"| recipe | overrides | {' | '.join(folds)} |", "|---|---|" + "---:|" * len(folds)]
    for label in tables.FINALS:
        if label in finals:
            scored = finals[label]["folds"]
            lines.append(f"| {label} | `{' '.join(finals[label]['overrides']) or '(the base)'}` | "
                         + " | ".join(f"{scored[f]:.4f}" if f in scored else "" for f in folds) + " |")
    return [*lines, ""]


def build(table: Table, study: Study, name: Optional[str] = None) -> Report:
    """The report of study `name` (default: the study file's name) from its table."""
    name = name or study.name
    got = verdicts(table, study)
    verdict, control = got["rule"], got.get("control")
    full = full_budget(table, study)
    trials = full.completed()
    count = state_counts(table.trials())
    epochs = sum(len(r.curve) for r in table.trials())
    seconds = sum(r.seconds for r in table.trials() if r.seconds == r.seconds)
    unit = "folds" if study.rule["kind"] == "final" else "seeds"
    lines = [f"# Study `{name}` ({study.path.name})", "", f"**Claim.** {study.claim}", "",
             f"**Rule** (written in the study file before any result): `{study.rule}`", "",
             f"**Verdict: {verdict.result}.** {verdict.summary}", ""]
    if control is None:
        lines += ["**Control:** none in the study file: nothing shows that this study's rule can fail.", ""]
    else:
        ok = control.result == NOT_REPRODUCED
        lines += [f"**Control** (a claim that must come out \"not reproduced\"): `{study.control}`", "",
                  f"**Control verdict: {control.result}**" + (" (as it must)." if ok else
                  (": the study could not show that its rule can fail here." if control.result == INCONCLUSIVE else
                   ": the control passed, so this study cannot tell its values apart and its verdict says little."))
                  + f" {control.summary}", ""]
    pruner = study.pruner["name"] + (f" (eta {study.pruner['eta']}, min_epochs {study.pruner['min_epochs']})"
                                     if study.budgets else "")
    lines += [f"Objective: {study.direction} `{study.metric}`. Sampler {study.sampler}, pruner "
              f"{pruner}, seeds {study.seeds}" + (f" (up to {study.max_seeds})" if study.looks > 1
                                                                 else "")
              + f". Base overrides: `{' '.join(study.base) or '(none)'}`.",
              f"Trials: {count['COMPLETE']} complete, {count['PRUNED']} pruned, {count['FAIL']} failed; {epochs} "
              f"epochs trained in {seconds:.0f} s of training.", "", *method(study, table)]
    lines += [f"## The claim: {_whom(study.rule)}", "", *_rows(verdict, unit), ""]
    if control is not None:
        lines += [f"## The control: {_whom(study.control)}", "", *_rows(control, unit), ""]
    if study.rule["kind"] == "final":
        lines += _finals(study, table)
    else:
        lines += _scores(study, verdict, study.rule["param"])
        if control is not None and study.control["param"] != study.rule["param"]:
            lines += _scores(study, control, study.control["param"])
        if study.sampler == "grid":
            lines += _rungs(study, table) if study.budgets else _looks(study, table)
    sign = -1 if study.direction == "maximize" else 1
    best = sorted(full.trials("COMPLETE"), key=lambda r: (sign * r.value, r.number))[:5]
    lines += ["## Best trials", "", f"| trial | {study.metric} | params |", "|---:|---:|---|"]
    lines += [f"| {r.number} | {r.value:.4f} | {', '.join(f'{k}={v}' for k, v in r.params.items())} |" for r in best]
    imp = importances(full, study)
    if imp:
        lines += ["", "## Parameter importances (PED-ANOVA)", "", "| param | importance |",
                  "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in imp.items()]
    plots = {f"{name}_{p.key}.png": plot_param(study, name, trials, p.key) for p in study.space} if trials else {}
    lines += ["", *[f"![{n}]({n})" for n in plots], ""]
    return Report(verdict, control, "\n".join(lines), plots)


def _whom(rule: dict) -> str:
    """What a rule's rows compare, as a heading."""
    if rule["kind"] == "final":
        who = "the base" if "overrides" not in rule else f"the control recipe (`{' '.join(rule['overrides'])}`)"
        return f"{who}'s advantage over the study's best recipe, by fold"
    if rule["kind"] == "better":
        return f"`{rule['param']}` {rule['value']}'s advantage over {rule['than']}, by seed"
    return f"`{rule['param']}` {rule['value']}'s advantage over each other value, by seed"


def write(source: Union[Table, optuna.Study], study: Study, *, name: Optional[str] = None, client=None,
          parent_run_id: Optional[str] = None, out_dir: Path = RESULTS) -> Report:
    """Build the report and write it under out_dir as <name>.md with its PNGs; log it to the parent run if given.

    `source` is the study's table, or its Optuna study: then the table is made from it and written beside the
    report as <name>.csv, and the report is built from that table, as a rebuild from the table would build it.
    """
    name = name or (source.study_name if isinstance(source, optuna.Study) else study.name)
    if plain_name(name or ""):
        raise ConfigError(f"study_name={name!r}: {plain_name(name or '')}")
    try:
        if isinstance(source, optuna.Study):
            table = tables.from_optuna(source, study)
            table_path = tables.write(table, study, out_dir / f"{name}.csv")
        else:
            table, table_path = source, None
        rep = build(table, study, name)
        out_dir.mkdir(parents=True, exist_ok=True)
        rep.markdown_path, rep.table_path = out_dir / f"{name}.md", table_path
        rep.markdown_path.write_text(rep.markdown)
        for png_name, png in rep.plots.items():
            (out_dir / png_name).write_bytes(png)
    except OSError as e:
        raise ConfigError(f"the report's folder {out_dir} cannot be written ({e.strerror or type(e).__name__}: "
                          f"{e.filename or out_dir}); the study's trials are kept in its storage") from None
    if client is not None and parent_run_id is not None:
        files, metrics, tags = for_parent(rep, source, table, study, name, out_dir)
        log_files(client, parent_run_id, files)
        log_summary(client, parent_run_id, metrics=metrics, tags=tags)
    return rep


def for_parent(rep: Report, source: Union[Table, optuna.Study], table: Table, study: Study, name: str,
               out_dir: Path) -> tuple[dict[str, bytes], dict[str, float], dict[str, str]]:
    """What the study's parent run gets for a report written under out_dir: its files by path in the run (the
    report, its plots and table, and Optuna's own views of the study), its summary metrics and its verdict tags."""
    from lesson5.sweep import study_plots

    names = [rep.markdown_path.name, *rep.plots, *([rep.table_path.name] if rep.table_path else [])]
    # Optuna's own views, on the parent run only: drawn from the live study (pruned trials, times) when given
    opt = source if isinstance(source, optuna.Study) else tables.optuna_study(table, study)
    views = study_plots.draw(opt, study, name)
    files = {**{f"report/{n}": (out_dir / n).read_bytes() for n in names},
             **{f"report/{n}": png for n, png in views.items()}}
    count = state_counts(table.trials())
    metrics = {f"trials_{state.lower()}": n for state, n in count.items()}
    done = full_budget(table, study).trials("COMPLETE")
    if done:
        metrics[f"best_{study.metric}"] = (max if study.direction == "maximize" else min)(r.value for r in done)
    tags = {"verdict": rep.verdict.result, "verdict.summary": rep.verdict.summary}
    if rep.control is not None:
        tags.update({"control": rep.control.result, "control.summary": rep.control.summary})
    return files, metrics, tags
