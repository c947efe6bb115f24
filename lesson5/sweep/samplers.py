"""Services: Optuna's samplers and pruners by the names a study file uses.

A grid study enqueues its points itself (lesson5.sweep.worker), so every point runs once, however many workers
claim at once, and a lost trial's point runs again; its sampler never picks a value. Optuna's pruners judge a
trial by the objective it reports after each epoch; `halving` prunes nothing inside a trial: its driver adds
rungs of complete fits between them (lesson5.sweep.halving), so its trials get Optuna's NopPruner.
"""

from __future__ import annotations

import optuna

from lesson5.sweep.spec import Study


def make_sampler(study: Study) -> optuna.samplers.BaseSampler:
    if study.sampler == "tpe":  # multivariate with a constant liar by default in Optuna 5: parallel workers
        return optuna.samplers.TPESampler(n_startup_trials=min(10, max(study.n_trials // 3, 2)))
    return optuna.samplers.RandomSampler()


def make_pruner(study: Study) -> optuna.pruners.BasePruner:
    kw = {k: v for k, v in study.pruner.items() if k != "name"}
    name = study.pruner["name"]
    if name == "median":
        return optuna.pruners.MedianPruner(**{"n_startup_trials": 5, "n_warmup_steps": 1, **kw})
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(**{"min_resource": 1, "reduction_factor": 3, **kw})
    return optuna.pruners.NopPruner()
