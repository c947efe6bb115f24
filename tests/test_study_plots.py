"""Optuna's views of a study for its parent run (lesson5.sweep.study_plots), on studies made with Optuna directly."""

from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from lesson5.sweep import study_plots
from lesson5.sweep.spec import Param, Study

SPACE = [Param("model.n_factors", choices=[10, 20, 40]), Param("optim.wd", low=1e-3, high=1.0, log=True)]
STUDY = Study(name="toy", path=Path("toy.yaml"), claim="40 works best",
              rule={"kind": "best", "param": "model.n_factors", "value": 40}, space=SPACE, seeds=[0, 1])
DISTS = {"model.n_factors": CategoricalDistribution([10, 20, 40]), "optim.wd": FloatDistribution(1e-3, 1.0, log=True),
         "trainer.seed": CategoricalDistribution([0, 1])}


def toy(n: int) -> optuna.Study:
    opt = optuna.create_study(direction="minimize")
    for i in range(n):
        params = {"model.n_factors": [10, 20, 40][i % 3], "optim.wd": 10 ** (-3 + 3 * i / max(1, n)),
                  "trainer.seed": i % 2}
        opt.add_trial(create_trial(params=params, distributions=DISTS,
                                   value=0.9 + 0.01 * (i % 3) + 0.02 * abs(params["optim.wd"] - 0.1)))
    opt.add_trial(create_trial(state=TrialState.PRUNED, params=params, distributions=DISTS))
    return opt


def test_the_four_views_are_pngs_named_beside_the_report():
    drawn = study_plots.draw(toy(12), STUDY, "toy")
    assert sorted(drawn) == ["toy_optuna_history.png", "toy_optuna_importances.png",
                             "toy_optuna_parallel_coordinates.png", "toy_optuna_slice.png"]
    assert all(png.startswith(b"\x89PNG") for png in drawn.values())


def test_a_study_too_small_for_a_view_leaves_it_out_without_an_error():
    assert study_plots.draw(optuna.create_study(), STUDY, "toy") == {}  # no complete trial: nothing to draw
    drawn = study_plots.draw(toy(1), STUDY, "toy")
    assert "toy_optuna_history.png" in drawn
