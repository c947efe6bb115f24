"""Services (the sweep engine): Optuna's own matplotlib views of a study, as PNGs for its MLflow parent run, where
MLflow users compare studies: the optimization history, parallel coordinates and slices over the swept parameters,
and their importances by PED-ANOVA (Optuna 5's default evaluator).

They are logged beside the report (`report/<name>_optuna_<view>.png`), and not written into the Markdown report,
which stays a function of the study's table alone. A view Optuna cannot draw (too few trials, a single value) is
left out, never an error: the report matters more than its plots.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna

from lesson5.sweep.spec import Study

SEED = "trainer.seed"


def _figure(drawn):
    """The figure of what an Optuna matplotlib function returns: Axes, or an array of them (slice)."""
    first = drawn.flat[0] if hasattr(drawn, "flat") else drawn
    return first.figure


def views(opt: optuna.Study, study: Study) -> dict[str, Callable]:
    """Each view's name and how to draw it, over the swept parameters (the seed is not one)."""
    from optuna.visualization import matplotlib as vis

    params = [p.key for p in study.space]
    target = study.metric
    return {
        "history": lambda: vis.plot_optimization_history(opt, target_name=target),
        "parallel_coordinates": lambda: _room_below(
            vis.plot_parallel_coordinate(opt, params=params, target_name=target)),
        "slice": lambda: vis.plot_slice(opt, params=params, target_name=target),
        "importances": lambda: _importances(vis.plot_param_importances(
            opt, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), params=params, target_name=target)),
    }


def _room_below(ax):
    """Room under the axes for the slanted parameter names (Hydra keys are long)."""
    ax.figure.subplots_adjust(bottom=0.25)
    return ax


def _importances(ax):
    """Room for the parameters' full names (Hydra keys are long), and the evaluator in the title."""
    ax.set_title("Hyperparameter importances (PED-ANOVA)", loc="left")
    ax.figure.subplots_adjust(left=0.3, right=0.95)
    return ax


def draw(opt: optuna.Study, study: Study, name: str) -> dict[str, bytes]:
    """The PNGs of the views Optuna can draw for `opt`, by file name (`<name>_optuna_<view>.png`); {} without a
    complete trial."""
    from lesson5 import plots  # matplotlib, on the Agg backend

    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in opt.get_trials(deepcopy=False)):
        return {}
    out = {}
    for view, make in views(opt, study).items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental", and matplotlib's layout notes
                fig = _figure(make())  # at Optuna's own size and layout (its slice view places a colorbar)
            out[f"{name}_optuna_{view}.png"] = plots.png(fig)
        except Exception:  # noqa: BLE001 - Optuna refuses a view it cannot draw (too few trials, one value)
            plots.plt.close("all")
    return out
