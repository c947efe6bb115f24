"""Services (the sweep engine's statistics; pure: numbers in, verdicts out): judging a lesson claim from a study's
trials, by the rule its study file states before any result exists.

Scores and pairs. Trials are (params, objective) pairs; params hold the swept keys and `trainer.seed`. Trials are
grouped by the claim's parameter; a value's score is its best setting of the other swept parameters (one-cycle at
its best lr against constant at its best lr), as the mean over seeds. The setting is chosen by the mean over the
seeds every setting of that value has (a grid's look-1 seeds), so it stays where later looks add seeds: chosen
on all seeds, a setting with three lucky seeds would displace one with eleven (a winner's curse that grows with
unequal counts, seen in the momentum study). Trials at the same seed share the
initialization stream and the batch order, so two values are compared on paired differences: at each seed that
both values' chosen settings have, the claimed value's advantage over the other (positive: the claimed value is
better; W - V for an objective minimized such as RMSE, V - W for one maximized such as accuracy). A seed run twice
at one setting counts once, at its mean; a non-finite objective (a diverged run) is left out.

The interval. Over n paired seeds with mean d and standard deviation s, the two-sided t interval at level 1 - a is
d -+ t(1 - a/2, n - 1) * s / sqrt(n). Each bound read alone is a one-sided test at a/2 (the CONSORT convention for
non-inferiority read off a two-sided interval; Piaggio et al. 2012). The rule's `tolerance` T is the bound of
practical equivalence: a difference smaller than T does not matter. A comparison with fewer than two paired seeds
has no interval (-inf, +inf) and is never evidence for the claim. `judge` takes the level (0.95: one look at 95%).

    best:   {kind: best, param: P, value: V, tolerance: T}      "V works best"
        For every other value W, one row: V's advantage over W.
        reproduced      every row's lower bound is above -T: V is not worse than any W by more than T
                        (non-inferiority with margin T, one test per competitor);
        not reproduced  some row's upper bound is below -T: that W beats V by more than T;
        inconclusive    otherwise, and always when there is no other value or some W has under two paired seeds
                        (a value of `values` with no completed trial counts, as when a pruner stopped all of it).
        Multiplicity: the lower bounds are one family of m one-sided tests (H0: W beats V by T or more), the upper
        bounds another (H0: W does not beat V by more than T), each Holm step-down (Holm 1979) at a/2, so the two
        sides together spend a. In a family, the row with the k-th smallest p-value gets divisor m - k + 1 while
        every row before it was decided; from the first undecided row on, all keep that row's divisor. Each bound is
        reported at its row's Holm level, so a row's outcome can be read off its own interval. (Requiring *every*
        non-inferiority test to pass is an intersection-union test, valid without correction (Berger 1982); Holm
        there is conservative. It is kept on purpose: one rule, one level per row, on both sides.)

    better: {kind: better, param: P, value: V, than: W, tolerance: T}      "V beats W"
        One row: V's advantage over W at level 1 - a, checked in this order:
        1. inside (-T, +T):  not reproduced, no difference that matters (equivalence: two one-sided tests at a/2,
                             Schuirmann 1987, here read off the 1 - a interval, so stricter than his 1 - 2a);
        2. above 0:          reproduced;
        3. below 0:          not reproduced, W is better;
        4. otherwise:        inconclusive.

    final:  {kind: final, tolerance: T}      "the base recipe is as good as the study's best"
        After the study, the best recipe and the base are scored once more on the study file's `final` overrides
        (the test folds), and paired by fold. The reading here: the claim is non-inferiority of the base with
        margin T, i.e. the `best` rule with the base as V and the best recipe as its only W. Reproduced when the
        interval of the best's advantage over the base lies below +T (the base is not worse by more than T);
        not reproduced when it lies above +T (the best beats the base by more than T); inconclusive otherwise,
        also before that scoring has run or with under two folds. The row is the base's advantage over "best".

Seeds until decided (`more_seeds`, `look_level`). A study judges its claim at looks k = 1..K fixed in advance,
adding seeds between looks to the values whose comparisons are still undecided, up to `max_seeds`. Looking
repeatedly would inflate the error rate, so look k uses level 1 - a_k with a_k the alpha spent between the planned
information fractions (k-1)/K and k/K by the Lan-DeMets spending function of O'Brien-Fleming type (Lan & DeMets
1983; O'Brien & Fleming 1979):  A(t) = 2 - 2 Phi(z(1 - a/2) / sqrt(t)),  A(0) = 0,  A(1) = a.
By Bonferroni's inequality the chance of any wrong decision over all K looks is at most the sum of the a_k = a,
whatever the correlation between looks and without a normal approximation to the small-n t statistics. That is
conservative against the exact group-sequential boundaries (recursive integration, Jennison & Turnbull 2000, ch. 7),
which lean on that approximation. For a = 0.05 and K = 3 the levels are 0.99931, 0.98431 and 0.96637: early looks
decide only overwhelming differences. The a_k increase with k (A' is increasing on (0, 1] for a <= 0.05), so on the
same data a comparison decided at one look stays decided at the next; Pocock-type spending lacks that property.
Within a look, Holm controls the comparisons at a_k. A value with a seed count at `max_seeds` gets no more seeds.

Seeds needed. For an undecided row, `seeds_needed` is the smallest n at which the half-width t * s / sqrt(n), at
the observed s and the row's level, would be below the distance from the observed mean to the nearest bound that
decides the row (-T for `best` and `final`; 0 or the tolerance band for `better`). It assumes the mean and s stay.

The t distribution without scipy: its CDF through the regularized incomplete beta (Abramowitz & Stegun 26.7.1),
that by its continued fraction with the modified Lentz method (Press et al., Numerical Recipes, 3rd ed., 6.4), and
quantiles by bisection on the CDF.

Caveats. Each value's setting is chosen on the same trials that then judge it (a winner's curse, the same for
every value); the error control covers the comparisons, not that choice. The references: S. Holm, Scand. J. Stat.
6:65-70 (1979); D. J. Schuirmann, J. Pharmacokinet. Biopharm. 15:657-680 (1987); R. L. Berger, Technometrics
24:295-300 (1982); K. K. G. Lan & D. L. DeMets, Biometrika 70:659-663 (1983); P. C. O'Brien & T. R. Fleming,
Biometrics 35:549-556 (1979); C. Jennison & B. W. Turnbull, Group Sequential Methods with Applications to Clinical
Trials (2000); G. Piaggio et al., JAMA 308:2594-2604 (2012).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from lesson5.errors import ConfigError

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
UNDECIDED = "undecided"
SEED = "trainer.seed"
_MAX_SEEDS_NEEDED = 10**6  # beyond this a difference is, for these studies, not decidable by seeds


# ---- the t distribution ----------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta, by the modified Lentz method (Numerical Recipes 6.4)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        for aa in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"the incomplete beta's continued fraction did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    # the fraction converges fast below the mean (a+1)/(a+b+2); above it, use the symmetry I_x(a,b) = 1 - I_1-x(b,a)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom (A&S 26.7.1), exact in the far tail."""
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (t_quantile(0.975, 4) = 2.776...)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    return _t_isf(1.0 - p, df) if p >= 0.5 else -_t_isf(p, df)


def _t_isf(q: float, df: float) -> float:
    """The t >= 0 with P(T > t) = q, for 0 < q <= 1/2, by bisection (the survival function is decreasing)."""
    if q >= 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > q:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_sf(mid, df) > q else (lo, mid)
    return 0.5 * (lo + hi)


# ---- seeds until decided: the level at each look -------------------------------------------------------------


def _spent(t: float, alpha: float) -> float:
    """Lan-DeMets O'Brien-Fleming-type spending: the two-sided alpha spent by information fraction t."""
    if t <= 0.0:
        return 0.0
    if t >= 1.0:
        return alpha
    z = statistics.NormalDist().inv_cdf(1.0 - alpha / 2.0)
    return math.erfc(z / math.sqrt(t) / math.sqrt(2.0))  # 2 - 2 Phi(z / sqrt t), without cancellation


def look_level(look: int, looks: int, alpha: float = 0.05) -> float:
    """The intervals' confidence level at look `look` of `looks`: 1 minus the alpha spent since the last look."""
    if not (isinstance(look, int) and isinstance(looks, int) and 1 <= look <= looks):
        raise ValueError(f"look {look!r} of {looks!r}: needs whole numbers with 1 <= look <= looks")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha {alpha!r}: needs 0 < alpha < 1")
    return 1.0 - (_spent(look / looks, alpha) - _spent((look - 1) / looks, alpha))


# ---- scores and paired differences -----------------------------------------------------------------------


@dataclass
class Score:
    mean: float
    std: float
    n: int
    setting: dict[str, Any]  # the other swept parameters where this value scored best
    seeds: dict[Any, float] = field(default_factory=dict)  # seed (or fold) -> objective at that setting

    @property
    def se(self) -> float:
        """The standard error of the mean; nan (not infinite: no margin may grow from it) under two seeds."""
        return self.std / math.sqrt(self.n) if self.n > 1 else math.nan


def _score(by_seed: dict[Any, float], setting: dict[str, Any]) -> Score:
    xs = list(by_seed.values())
    return Score(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0, len(xs), setting, by_seed)


def scores(trials: list[tuple[dict[str, Any], float]], param: str, maximize: bool) -> dict[str, Score]:
    """Each value of `param`: its best setting's mean over seeds. `trials` are (params, objective) pairs."""
    settings: dict[str, dict[tuple, dict[Any, list[float]]]] = {}
    for params, value in trials:
        if not math.isfinite(value):
            continue  # a diverged run has no score: its seed is missing, so it can only hold a verdict back
        if SEED not in params:
            raise ValueError(f"a trial's params {params} lack {SEED!r}: verdicts pair trials by seed; add it")
        others = tuple(sorted((k, v) for k, v in params.items() if k not in (param, SEED)))
        settings.setdefault(str(params[param]), {}).setdefault(others, {}).setdefault(params[SEED], []).append(value)
    out = {}
    for v, by_setting in settings.items():
        per_setting = [_score({s: statistics.fmean(xs) for s, xs in by_seed.items()}, dict(others))
                       for others, by_seed in by_setting.items()]
        common = set.intersection(*(set(sc.seeds) for sc in per_setting))
        # the choice: at the seeds all settings share, else each at all its own
        chosen_by = [statistics.fmean(sc.seeds[s] for s in common) if common else sc.mean for sc in per_setting]
        pick = (max if maximize else min)(range(len(per_setting)), key=chosen_by.__getitem__)
        out[v] = per_setting[pick]
    return out


def _advantage(v: Optional[Score], w: Optional[Score], maximize: bool) -> list[float]:
    """V's advantage over W at each seed (or fold) both have; positive: V is better."""
    if v is None or w is None:
        return []
    common = sorted(set(v.seeds) & set(w.seeds), key=str)
    return [(v.seeds[s] - w.seeds[s]) if maximize else (w.seeds[s] - v.seeds[s]) for s in common]


# ---- comparisons -----------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """One row of a verdict: the claimed value (for `final`, the base) against one other, on paired differences."""
    value: str  # the other value; for `final`, "best" (the study's best recipe)
    n: int  # paired seeds (folds for `final`)
    diff: float  # mean advantage of the claimed value over `value` (positive: the claimed is better); nan if n == 0
    sd: float  # standard deviation of the paired differences; nan under two
    lo: float  # lower bound of the advantage's interval; -inf under two paired seeds
    hi: float  # upper bound; +inf under two paired seeds
    confidence: tuple[float, float]  # one-sided confidence of lo and of hi (Holm's level for `best` rows)
    outcome: str  # what the interval shows, in words, or UNDECIDED
    seeds_needed: Optional[int] = None  # undecided: the n that would decide it at the observed sd (see the docstring)

    @property
    def level(self) -> float:
        """The interval's two-sided confidence level (1 - a when both bounds are at 1 - a/2)."""
        return self.confidence[0] + self.confidence[1] - 1.0

    @property
    def decided(self) -> bool:
        return self.outcome != UNDECIDED


@dataclass
class _Diffs:
    n: int
    mean: float
    sd: float

    @classmethod
    def of(cls, xs: list[float]) -> _Diffs:
        return cls(len(xs), statistics.fmean(xs) if xs else math.nan, statistics.stdev(xs) if len(xs) > 1 else math.nan)

    def bound(self, q: float, upper: bool) -> float:
        """The one-sided bound at confidence 1 - q (lower or upper); infinite under two values."""
        if self.n < 2:
            return math.inf if upper else -math.inf
        half = _t_isf(q, self.n - 1) * self.sd / math.sqrt(self.n)
        return self.mean + half if upper else self.mean - half

    def p_above(self, x: float) -> float:
        """The one-sided p-value against `mean <= x` (small: the mean is above x); 1 under two values."""
        if self.n < 2:
            return 1.0
        if self.sd == 0:
            return 0.0 if self.mean > x else 1.0
        return t_sf((self.mean - x) / (self.sd / math.sqrt(self.n)), self.n - 1)

    def p_below(self, x: float) -> float:
        """The one-sided p-value against `mean >= x`; 1 under two values."""
        if self.n < 2:
            return 1.0
        if self.sd == 0:
            return 0.0 if self.mean < x else 1.0
        return t_sf((x - self.mean) / (self.sd / math.sqrt(self.n)), self.n - 1)

    def seeds_to_decide(self, q: float, distance: float) -> Optional[int]:
        """The smallest n >= 2 whose half-width at confidence 1 - q and this sd is below `distance`."""
        if self.n < 2 or not distance > 0:
            return None

        def clears(n: int) -> bool:
            return _t_isf(q, n - 1) * self.sd / math.sqrt(n) < distance

        if clears(2):
            return 2
        lo, hi = 2, 4  # clears(lo) is false; double hi until it clears, then bisect
        while not clears(hi):
            lo, hi = hi, 2 * hi
            if hi > _MAX_SEEDS_NEEDED:
                return None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if clears(mid) else (mid, hi)
        return hi


def _holm(order: list[int], m: int, passes: Callable[[int, int], bool]) -> dict[int, int]:
    """Holm's step-down: each row's divisor; `passes(row, divisor)` tests a row at alpha / divisor."""
    divisor, stop = {}, None
    for rank, i in enumerate(order):
        divisor[i] = stop or m - rank
        if stop is None and not passes(i, m - rank):
            stop = m - rank  # Holm stops here: this row and every later one keep this divisor, undecided
    return divisor


def _noninferior(rows: dict[str, list[float]], tol: float, alpha: float) -> list[Comparison]:
    """`best`'s rows: V's advantage over each W against -tol, one Holm family per side, each at alpha / 2."""
    stats = {w: _Diffs.of(xs) for w, xs in rows.items()}
    names, m, q = list(rows), len(rows), alpha / 2.0
    lo_div = _holm(sorted(range(m), key=lambda i: stats[names[i]].p_above(-tol)), m,
                   lambda i, k: stats[names[i]].bound(q / k, upper=False) > -tol)
    hi_div = _holm(sorted(range(m), key=lambda i: stats[names[i]].p_below(-tol)), m,
                   lambda i, k: stats[names[i]].bound(q / k, upper=True) < -tol)
    out = []
    for i, w in enumerate(names):
        s, q_lo, q_hi = stats[w], q / lo_div[i], q / hi_div[i]
        lo, hi = s.bound(q_lo, upper=False), s.bound(q_hi, upper=True)
        outcome = (f"not worse by more than {tol:g}" if lo > -tol else f"worse by more than {tol:g}" if hi < -tol
                   else UNDECIDED)
        need = None
        if outcome == UNDECIDED and s.n >= 2:
            need = s.seeds_to_decide(q_lo if s.mean > -tol else q_hi, abs(s.mean + tol))
        out.append(Comparison(w, s.n, s.mean, s.sd, lo, hi, (1 - q_lo, 1 - q_hi), outcome, need))
    return out


def _better_row(w: str, xs: list[float], tol: float, alpha: float) -> Comparison:
    """`better`'s row: V's advantage over W at level 1 - alpha, read in the rule's order."""
    s, q = _Diffs.of(xs), alpha / 2.0
    lo, hi = s.bound(q, upper=False), s.bound(q, upper=True)
    if tol > 0 and -tol < lo and hi < tol:
        outcome = "no difference that matters"
    elif lo > 0:
        outcome = "better"
    elif hi < 0:
        outcome = "worse"
    else:
        outcome = UNDECIDED
    need = None
    if outcome == UNDECIDED and s.n >= 2:
        # decisive either way: the sign (distance |d| from 0) or the band (distance T - |d|), whichever is nearer
        need = s.seeds_to_decide(q, max(abs(s.mean), tol - abs(s.mean)))
    return Comparison(w, s.n, s.mean, s.sd, lo, hi, (1 - q, 1 - q), outcome, need)


# ---- verdicts --------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    result: str
    summary: str
    scores: dict[str, Score]
    rows: list[Comparison] = field(default_factory=list)
    level: float = 0.95  # the look's two-sided confidence level

    @property
    def seeds_needed(self) -> Optional[int]:
        """Inconclusive: the paired seeds at which every undecided row would be decided at its observed spread."""
        if self.result != INCONCLUSIVE:
            return None
        needs = [r.seeds_needed for r in self.rows if not r.decided]
        return max(needs) if needs and None not in needs else None


def _check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level {level!r}: a confidence level needs 0 < level < 1 (0.95 for one look at 95%)")
    return 1.0 - level


RULE_FIELDS = {"best": {"kind", "param", "value", "tolerance"},
               "better": {"kind", "param", "value", "than", "tolerance"},
               "final": {"kind", "tolerance", "overrides"}}


def check_rule(study, rule: Optional[dict] = None, key: str = "rule") -> None:
    """A rule (the study's `rule`, or `rule` under `key`, such as its control) names a swept parameter and values
    among its choices, a tolerance >= 0 if any, and no other field; ConfigError naming the file and the key."""
    rule, path = study.rule if rule is None else rule, study.path
    keys = {p.key: p for p in study.space}
    if not isinstance(rule, dict):
        raise ConfigError(f"{path}: {key}: expected a mapping such as {{kind: best, param: P, value: V, tolerance: "
                          f"T}}, got {rule!r}")
    if rule.get("kind") not in RULE_FIELDS:
        raise ConfigError(f"{path}: {key}.kind: {rule.get('kind')!r} is not best, better or final")
    # `overrides` belongs to a final control only: the claim's own final recipe is the study's base
    allowed = RULE_FIELDS[rule["kind"]] - ({"overrides"} if key == "rule" else set())
    if set(rule) - allowed:
        raise ConfigError(f"{path}: {key}: unknown field(s) {sorted(set(rule) - allowed)} for kind "
                          f"{rule['kind']}; it takes {', '.join(sorted(allowed))}")
    tol = rule.get("tolerance", 0.0)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < math.inf:
        raise ConfigError(f"{path}: {key}.tolerance: {tol!r} is not a number >= 0 (the difference too small to "
                          "matter, in the objective's units)")
    if rule["kind"] == "final":
        if study.final is None:
            raise ConfigError(f"{path}: {key}.kind: final needs a `final: {{overrides: [...]}}` section")
        # a final control is a recipe of its own (the base with these overrides), scored beside the best
        if key != "rule" and not (isinstance(rule.get("overrides"), list) and rule["overrides"]
                                  and all(isinstance(o, str) and "=" in o for o in rule["overrides"])):
            raise ConfigError(f"{path}: {key}.overrides: {rule.get('overrides')!r} is not a list of Hydra overrides "
                              "(key=value): the recipe that must not be as good as the study's best")
        return
    param = keys.get(rule.get("param"))
    if param is None:
        raise ConfigError(f"{path}: {key}.param: {rule.get('param')!r} is not a key of space ({', '.join(keys)})")
    for field_ in ("value", "than") if rule["kind"] == "better" else ("value",):
        if field_ not in rule:
            raise ConfigError(f"{path}: {key}.{field_} is missing")
        v = rule[field_]
        if param.choices is not None and str(v) not in map(str, param.choices):
            raise ConfigError(f"{path}: {key}.{field_}: {v!r} is not among {param.key}'s choices {param.choices}")
        if param.choices is None and not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                          and param.low <= v <= param.high):
            raise ConfigError(f"{path}: {key}.{field_}: {v!r} is outside {param.key}'s range [{param.low:g}, "
                              f"{param.high:g}]")
    if rule["kind"] == "better" and str(rule["value"]) == str(rule["than"]):
        raise ConfigError(f"{path}: {key}.than: {rule['than']!r} is the claimed value itself; name another value")


def _fmt(v: str, s: Optional[Score]) -> str:
    if s is None:
        return f"{v}: no completed trial"
    where = "".join(f", {k}={x}" for k, x in s.setting.items())
    return f"{v}: {s.mean:.4f} +- {s.std:.4f} (n={s.n}{where})"


def _row(r: Comparison) -> str:
    if r.n < 2:
        return f"{r.value} (n={r.n}: fewer than two paired seeds)"
    return f"{r.value} {r.diff:+.4f} [{r.lo:+.4f}, {r.hi:+.4f}] n={r.n}"


def _pct(level: float) -> str:
    return f"{100 * level:.4g}%"


def _needed(v: Verdict, unit: str = "seeds") -> str:
    n = v.seeds_needed
    return f"; about {n} paired {unit} would decide it at the observed spread" if n else ""


def judge(rule: dict, trials: list[tuple[dict[str, Any], float]], maximize: bool, level: float = 0.95,
          values: Optional[Iterable[Any]] = None) -> Verdict:
    """The verdict on a `best` or `better` claim from completed trials' (params, objective) pairs, at `level`.

    `values`, when given, are the parameter's values in the study's space: one with no completed trial is a
    competitor with no seeds (so a `best` claim cannot pass over a value the sweep never finished).
    """
    alpha = _check_level(level)
    param, claim, tol = rule["param"], str(rule["value"]), float(rule.get("tolerance", 0.0))
    sc = scores(trials, param, maximize)
    sign = -1.0 if maximize else 1.0  # sorts best first, whatever the direction
    if rule["kind"] == "better":
        than = str(rule["than"])
        row = _better_row(than, _advantage(sc.get(claim), sc.get(than), maximize), tol, alpha)
        result = {"better": REPRODUCED, "worse": NOT_REPRODUCED, "no difference that matters": NOT_REPRODUCED,
                  UNDECIDED: INCONCLUSIVE}[row.outcome]
        head = f"{_fmt(claim, sc.get(claim))} against {_fmt(than, sc.get(than))}"
        if row.n < 2:
            return Verdict(result, f"{head}; fewer than two paired seeds", sc, [row], level)
        words = {"better": f"{claim} is better", "worse": f"{than} is better",
                 "no difference that matters": f"no difference that matters (within +-{tol:g})",
                 UNDECIDED: "undecided"}[row.outcome]
        v = Verdict(result, f"{head}; {claim} better by {row.diff:.4f} over {row.n} paired seeds, {_pct(level)} "
                            f"interval [{row.lo:.4f}, {row.hi:.4f}] (tolerance {tol:g}): {words}", sc, [row], level)
        v.summary += _needed(v)
        return v
    others = {str(x) for x in values} if values is not None else set()
    others = sorted((others | set(sc)) - {claim},
                    key=lambda w: (w not in sc, sign * sc[w].mean if w in sc else 0.0, w))
    rows = _noninferior({w: _advantage(sc.get(claim), sc.get(w), maximize) for w in others}, tol, alpha)
    v = Verdict(INCONCLUSIVE, "", sc, rows, level)
    head = (f"claimed {_fmt(claim, sc.get(claim))}; its advantage over each other value ({_pct(level)} intervals, "
            f"Holm over {len(rows)}, tolerance {tol:g})")
    if not rows:
        v.summary = f"{head}: there is no other value to compare with"
    elif all(r.outcome.startswith("not worse") for r in rows):
        closest = min(rows, key=lambda r: r.lo)
        v.result, v.summary = REPRODUCED, f"{head}: not worse than any by more than {tol:g}; closest {_row(closest)}"
    elif any(r.outcome.startswith("worse") for r in rows):
        beat = [r for r in rows if r.outcome.startswith("worse")]
        v.result = NOT_REPRODUCED
        v.summary = f"{head}: beaten by more than {tol:g} by " + "; ".join(_row(r) for r in beat)
    else:
        open_ = [r for r in rows if not r.decided]
        v.summary = f"{head}: undecided against " + "; ".join(_row(r) for r in open_) + _needed(v)
    return v


def judge_final(rule: dict, best: dict[str, float], base: dict[str, float], maximize: bool,
                level: float = 0.95, label: str = "the base") -> Verdict:
    """The `final` rule from per-fold scores of the study's best recipe and of the base recipe (or, named by
    `label`, another recipe such as a control's), paired by fold."""
    alpha = _check_level(level)
    tol = float(rule.get("tolerance", 0.0))
    folds = sorted(set(best) & set(base))
    sc = {name: _score({f: v[f] for f in folds}, {}) for name, v in (("best", best), ("base", base)) if folds}
    row = _noninferior({"best": _advantage(sc.get("base"), sc.get("best"), maximize)}, tol, alpha)[0]
    if len(folds) < 2:
        return Verdict(INCONCLUSIVE, f"the best recipe and {label} have not both been scored on two or more folds",
                       sc, [row], level)
    result = (REPRODUCED if row.outcome.startswith("not worse") else NOT_REPRODUCED if row.outcome.startswith("worse")
              else INCONCLUSIVE)
    words = {REPRODUCED: f"below +{tol:g}: {label} is as good as the best", INCONCLUSIVE: f"straddles +{tol:g}",
             NOT_REPRODUCED: f"above +{tol:g}: the best beats {label}"}[result]
    v = Verdict(result, f"over {len(folds)} folds, the best recipe {sc['best'].mean:.4f} +- {sc['best'].std:.4f}, "
                        f"{label} {sc['base'].mean:.4f} +- {sc['base'].std:.4f}; the best is better by "
                        f"{-row.diff:.4f}, {_pct(level)} interval [{-row.hi:.4f}, {-row.lo:.4f}], {words}",
                sc, [row], level)
    v.summary += _needed(v, "folds")
    return v


def more_seeds(rule: dict, trials: list[tuple[dict[str, Any], float]], maximize: bool, look: int, looks: int,
               max_seeds: int, *, values: Optional[Iterable[Any]] = None,
               alpha: float = 0.05) -> dict[str, dict[str, Any]]:
    """After look `look` of `looks`: each value that needs more seeds, with the setting to run it at; {} when done.

    A value needs seeds when it is in a comparison still undecided at this look's level (`look_level`) and its
    setting has fewer than `max_seeds` seeds. {} when the verdict is decided, at the last look, or when every
    undecided comparison's values are at `max_seeds`. The caller runs each returned value at its setting (an empty
    setting for a value with no completed trial: all of its settings) at the study's next seeds that it lacks, the
    same seeds for every value, so the pairs grow. `final` is scored on fixed folds: no seeds to add.
    """
    if isinstance(max_seeds, bool) or not isinstance(max_seeds, int) or max_seeds < 2:
        raise ValueError(f"max_seeds {max_seeds!r}: needs a whole number >= 2 (a comparison needs two paired seeds)")
    level = look_level(look, looks, alpha)
    if rule["kind"] == "final":
        return {}
    v = judge(rule, trials, maximize, level, values)
    if v.result != INCONCLUSIVE or look == looks:
        return {}
    claim = str(rule["value"])
    want = set()
    for r in v.rows:
        if not r.decided:
            want |= {claim, r.value}
    return {x: dict(v.scores[x].setting) if x in v.scores else {}
            for x in sorted(want) if (v.scores[x].n if x in v.scores else 0) < max_seeds}
