"""Verdicts on fabricated trials: the paired, interval-based rules, Holm, the looks' levels and the t quantile."""

import math
import statistics
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lesson5.errors import ConfigError
from lesson5.sweep.verdict import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    betainc,
    check_rule,
    judge,
    judge_final,
    look_level,
    more_seeds,
    scores,
    t_quantile,
    t_sf,
)

P = "model.n_factors"
BEST = {"kind": "best", "param": P, "value": 40, "tolerance": 0.001}
BETTER = {"kind": "better", "param": P, "value": 40, "than": 80, "tolerance": 0.001}
FINAL = {"kind": "final", "tolerance": 0.001}
BASE = [0.890, 0.902, 0.885, 0.897, 0.893]  # each seed's own level: seeds differ far more than values do


def trials(values: dict, param=P, **setting):
    """(params, objective) pairs: values[v][s] is value v at seed s."""
    return [({param: v, "trainer.seed": s, **setting}, x) for v, xs in values.items() for s, x in enumerate(xs)]


def gap(claimed: list[float], diffs: list[float]) -> list[float]:
    """A competitor's RMSE at each seed: the claimed value's plus `diffs` (positive: the claimed is better)."""
    return [c + d for c, d in zip(claimed, diffs)]


def shaped(n: int, mean: float, sd: float) -> list[float]:
    """n paired differences with exactly this mean and standard deviation."""
    z = list(range(n))
    mz, sz = statistics.fmean(z), statistics.stdev(z)
    return [mean + sd * (x - mz) / sz for x in z]


# ---- the t distribution and the looks ----------------------------------------------------------------------


@pytest.mark.parametrize("p, df, table", [(0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 4, 2.776),
                                          (0.975, 19, 2.093), (0.95, 10, 1.812), (0.995, 30, 2.750),
                                          (0.9995, 2, 31.599), (0.975, 100_000, 1.960)])
def test_the_t_quantile_matches_the_tables(p, df, table):
    assert t_quantile(p, df) == pytest.approx(table, abs=5e-4)
    assert t_quantile(1 - p, df) == pytest.approx(-table, abs=5e-4)
    assert t_sf(t_quantile(p, df), df) == pytest.approx(1 - p, rel=1e-9)


def test_the_incomplete_beta_on_closed_forms():
    assert betainc(1.0, 1.0, 0.3) == pytest.approx(0.3)  # uniform
    assert betainc(2.5, 2.5, 0.5) == pytest.approx(0.5)  # symmetric
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(1 - 0.6**4 - 4 * 0.4 * 0.6**3)  # a binomial tail
    assert t_sf(1.0, 1) == pytest.approx(0.25)  # Cauchy: 1/2 - atan(1)/pi
    with pytest.raises(ValueError, match="0 < p < 1"):
        t_quantile(1.0, 3)


def test_the_looks_spend_alpha_as_obrien_fleming():
    assert look_level(1, 1) == pytest.approx(0.95)
    levels = [look_level(k, 3) for k in (1, 2, 3)]
    assert levels == pytest.approx([0.99931, 0.98431, 0.96637], abs=1e-5)
    assert sum(1 - x for x in levels) == pytest.approx(0.05)  # Bonferroni over the looks: at most alpha in all
    assert levels[0] > levels[1] > levels[2]  # a comparison decided at one look stays decided at the next
    with pytest.raises(ValueError, match="look 4 of 3"):
        look_level(4, 3)


# ---- best ----------------------------------------------------------------------------------------------------


def test_best_real_effect_opposite_effect_and_noise():
    v = BASE[:3]
    real = judge(BEST, trials({40: v, 80: gap(v, [0.004, 0.005, 0.0045]), 20: gap(v, [0.002, 0.0025, 0.0018])}),
                 False)
    assert real.result == REPRODUCED and [r.value for r in real.rows] == ["20", "80"]
    opposite = judge(BEST, trials({40: v, 80: gap(v, [-0.004, -0.005, -0.0045]), 20: gap(v, [0.002, 0.003, 0.002])}),
                     False)
    assert opposite.result == NOT_REPRODUCED and "80" in opposite.summary
    noise = judge(BEST, trials({40: v, 80: gap(v, [0.004, -0.003, 0.0005])}), False)
    assert noise.result == INCONCLUSIVE and noise.rows[0].lo < -0.001 < noise.rows[0].hi
    # accuracy: higher is better, so the same numbers read the other way round
    acc = {**BEST, "tolerance": 0.002}
    assert judge(acc, trials({40: v, 80: gap(v, [0.004, 0.005, 0.0045])}), True).result == NOT_REPRODUCED


def test_pairs_by_seed_see_what_the_seed_noise_hides():
    # seeds move the RMSE by 0.017; 40 is ahead of 80 by 0.003 at every seed: only the pairs show it
    v = BASE
    verdict = judge(BEST, trials({40: v, 80: gap(v, [0.003, 0.0032, 0.0028, 0.0031, 0.0029])}), False)
    assert verdict.result == REPRODUCED
    row = verdict.rows[0]
    assert row.n == 5 and row.diff == pytest.approx(0.003) and row.lo > 0 and row.level == pytest.approx(0.95)
    assert verdict.scores["40"].std > 0.005  # each value's own spread, as reports show it


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.80, 1.0), min_size=3, max_size=3), st.floats(0.5, 1.5), st.integers(0, 2))
def test_a_one_seed_competitor_never_gives_reproduced(claimed, lone, seed):
    t = trials({40: claimed, 80: gap(claimed, [0.05, 0.06, 0.055])}) + [({P: 20, "trainer.seed": seed}, lone)]
    assert judge(BEST, t, False).result != REPRODUCED
    better = judge(BETTER, trials({40: claimed}) + [({P: 80, "trainer.seed": seed}, lone)], False)
    assert better.result == INCONCLUSIVE and better.rows[0].n == 1


def test_a_value_of_the_space_with_no_completed_trial_blocks_best():
    v = BASE[:3]
    t = trials({40: v, 80: gap(v, [0.004, 0.005, 0.0045])})
    assert judge(BEST, t, False).result == REPRODUCED
    pruned = judge(BEST, t, False, values=[20, 40, 80])
    assert pruned.result == INCONCLUSIVE and "20 (n=0" in pruned.summary


def test_holm_makes_a_borderline_case_inconclusive():
    v, d = BASE, [-0.0015, 0.0015, 0.0, -0.001, 0.001]  # mean 0, against a tolerance of 0.002
    rule = {**BEST, "tolerance": 0.002}
    alone = judge(rule, trials({40: v, 80: gap(v, d)}), False)
    assert alone.result == REPRODUCED and alone.rows[0].lo > -0.002  # uncorrected: 97.5% one-sided bound clears
    three = judge(rule, trials({40: v, 80: gap(v, d), 60: gap(v, d[1:] + d[:1]), 20: gap(v, d[2:] + d[:2])}), False)
    assert three.result == INCONCLUSIVE
    assert all(r.lo < -0.002 and r.confidence[0] == pytest.approx(1 - 0.025 / 3) for r in three.rows)


def test_seeds_needed_decide_at_the_observed_spread():
    rule = {**BEST, "tolerance": 0.001}
    d = shaped(3, -0.0005, 0.002)  # 40 is a little worse, inside the tolerance, with noise
    v = judge(rule, trials({40: BASE[:3], 80: gap(BASE[:3], d)}), False)
    n = v.seeds_needed
    assert v.result == INCONCLUSIVE and n == v.rows[0].seeds_needed and n > 3 and f"about {n} paired" in v.summary
    base = [0.89 + 0.01 * math.sin(i) for i in range(n)]
    assert judge(rule, trials({40: base, 80: gap(base, shaped(n, -0.0005, 0.002))}), False).result == REPRODUCED
    base = base[:-1]
    assert judge(rule, trials({40: base, 80: gap(base, shaped(n - 1, -0.0005, 0.002))}), False).result == INCONCLUSIVE


# ---- better --------------------------------------------------------------------------------------------------


def test_better_in_the_rules_order():
    v = BASE[:3]
    assert judge(BETTER, trials({40: v, 80: gap(v, [0.004, 0.005, 0.0045])}), False).result == REPRODUCED
    worse = judge(BETTER, trials({40: v, 80: gap(v, [-0.004, -0.005, -0.0045])}), False)
    assert worse.result == NOT_REPRODUCED and "80 is better" in worse.summary
    same = judge(BETTER, trials({40: v, 80: gap(v, [0.0002, 0.0003, 0.0001])}), False)
    assert same.result == NOT_REPRODUCED and same.rows[0].outcome == "no difference that matters"
    noise = judge(BETTER, trials({40: v, 80: gap(v, [0.004, -0.003, 0.0005])}), False)
    assert noise.result == INCONCLUSIVE and noise.seeds_needed and noise.seeds_needed > 3
    # significant but inside the tolerance: the band is checked first
    band = judge(BETTER, trials({40: BASE, 80: gap(BASE, [0.0004, 0.0005, 0.0004, 0.0005, 0.00045])}), False)
    assert band.result == NOT_REPRODUCED and band.rows[0].lo > 0
    # with no tolerance there is no band: the same numbers reproduce
    assert judge({**BETTER, "tolerance": 0}, trials({40: BASE, 80: gap(BASE, [0.0004, 0.0005, 0.0004, 0.0005,
                                                                             0.00045])}), False).result == REPRODUCED


def test_each_value_is_paired_at_its_best_setting():
    t = (trials({40: BASE[:3]}, **{"optim.lr": 0.005}) + trials({40: gap(BASE[:3], [0.03] * 3)}, **{"optim.lr": 0.01})
         + trials({80: gap(BASE[:3], [0.002, 0.0025, 0.003])}, **{"optim.lr": 0.01}))
    sc = scores(t, P, False)
    assert sc["40"].setting == {"optim.lr": 0.005} and sc["80"].setting == {"optim.lr": 0.01}
    v = judge({**BETTER, "tolerance": 0}, t, False)
    assert v.result == REPRODUCED and v.rows[0].diff == pytest.approx(0.0025)


def test_a_setting_is_chosen_at_the_seeds_all_its_settings_share_so_later_looks_do_not_move_it():
    """lr 0.005 got seeds 0-4 (looks 1 and 2), lr 0.01 only seeds 0-2, where it was worse; its mean over its three
    seeds happens to be lower than 0.005's over five (seeds 3 and 4 are hard ones), but the choice is made at
    seeds 0-2, which both have, and stays with 0.005."""
    hard = [0.890, 0.902, 0.885, 0.930, 0.935]
    t = trials({40: hard}, **{"optim.lr": 0.005}) + trials({40: gap(hard[:3], [0.001] * 3)}, **{"optim.lr": 0.01})
    chosen = scores(t, P, False)["40"]
    assert chosen.setting == {"optim.lr": 0.005} and chosen.n == 5
    assert statistics.fmean(hard) > statistics.fmean(gap(hard[:3], [0.001] * 3))  # the mean alone would move it


def test_only_the_seeds_both_values_have_are_paired():
    t = trials({40: BASE, 80: gap(BASE[:2], [0.004, 0.005])})  # 80 finished two seeds of five
    assert judge(BETTER, t, False).rows[0].n == 2
    assert scores(t, P, False)["40"].n == 5 and math.isnan(scores(t[:1], P, False)["40"].se)
    with pytest.raises(ValueError, match="trainer.seed"):
        judge(BETTER, [({P: 40}, 0.9)], False)


# ---- final ---------------------------------------------------------------------------------------------------


def _folds(xs):
    return {f"u{i + 1}": x for i, x in enumerate(xs)}


def test_final_base_as_good_as_the_best():
    best = [0.913, 0.9035, 0.897, 0.9013, 0.9009]
    # the best recipe's gain over the base, per fold (RMSE: base - best)
    as_good = judge_final(FINAL, _folds(best), _folds(gap(best, [0.0002, -0.0001, 0.0001, 0.0, 0.0001])), False)
    assert as_good.result == REPRODUCED and "the base is as good as the best" in as_good.summary
    beaten = judge_final(FINAL, _folds(best), _folds(gap(best, [0.005, 0.006, 0.004, 0.0055, 0.0045])), False)
    assert beaten.result == NOT_REPRODUCED and beaten.rows[0].value == "best" and beaten.rows[0].diff < 0
    noise = judge_final(FINAL, _folds(best[:3]), _folds(gap(best[:3], [0.004, -0.002, 0.0005])), False)
    assert noise.result == INCONCLUSIVE and "folds would decide" in noise.summary
    one = judge_final(FINAL, _folds(best[:1]), _folds(best[:1]), False)
    assert one.result == INCONCLUSIVE and one.rows[0].n == 1
    # the base far better than the best is still "as good"
    assert judge_final(FINAL, _folds(best), _folds(gap(best, [-0.01] * 5)), False).result == REPRODUCED


# ---- seeds until decided -------------------------------------------------------------------------------------


def test_more_seeds_only_for_undecided_values_up_to_max_seeds():
    v = BASE[:3]
    lr = {"optim.lr": 0.01}
    t = trials({40: v, 80: gap(v, [0.05, 0.0501, 0.0499]), 20: gap(v, [0.004, -0.003, 0.0005])}, **lr)
    # 80 is far worse (decided even at the first look's strict level); 20 is noise: undecided
    assert more_seeds(BEST, t, False, 1, 3, max_seeds=10) == {"20": lr, "40": lr}
    assert more_seeds(BEST, t, False, 3, 3, max_seeds=10) == {}  # the last look: no more seeds
    assert more_seeds(BEST, t, False, 1, 3, max_seeds=3) == {}  # every undecided value is at max_seeds
    more = t + trials({40: BASE}, **lr)  # 40 reached 5 seeds; 20 still has 3
    assert more_seeds(BEST, more, False, 2, 3, max_seeds=5) == {"20": lr}
    assert more_seeds(FINAL, t, False, 1, 3, max_seeds=10) == {}
    with pytest.raises(ValueError, match="max_seeds"):
        more_seeds(BEST, t, False, 1, 3, max_seeds=1)


def test_an_early_look_decides_only_what_is_overwhelming():
    v = BASE[:3]
    t = trials({40: v, 80: gap(v, [0.004, 0.005, 0.0045])})
    assert judge(BEST, t, False).result == REPRODUCED  # one look at 95%
    early = judge(BEST, t, False, level=look_level(1, 3))
    assert early.result == INCONCLUSIVE and early.level == pytest.approx(0.99931, abs=1e-5)
    assert more_seeds(BEST, t, False, 1, 3, max_seeds=10) == {"40": {}, "80": {}}
    decided = trials({40: v, 80: gap(v, [0.05, 0.0501, 0.0499])})
    assert more_seeds(BEST, decided, False, 1, 3, max_seeds=10) == {}


# ---- the rule in the study file ------------------------------------------------------------------------------


def test_a_malformed_tolerance_is_refused_naming_the_key():
    space = [SimpleNamespace(key=P, choices=[20, 40, 80])]
    for bad in (-0.001, "0.001", True, math.inf):
        study = SimpleNamespace(rule={**BEST, "tolerance": bad}, path="sweeps/x.yaml", space=space, final=None)
        with pytest.raises(ConfigError, match="rule.tolerance"):
            check_rule(study)
    check_rule(SimpleNamespace(rule=BEST, path="sweeps/x.yaml", space=space, final=None))


def test_a_diverged_run_only_holds_a_verdict_back():
    v = BASE[:3]
    t = trials({40: v, 80: gap(v, [0.004, 0.005, 0.0045])})
    t[-1] = (t[-1][0], math.inf)  # 80 diverged at seed 2: two pairs remain
    assert judge(BEST, t, False).rows[0].n == 2
