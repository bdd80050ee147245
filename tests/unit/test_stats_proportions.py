"""Tests for shared/stats/proportions.py: intervals, binomial tails, funnel limits, critical counts.

Reference values are computed independently in the test: exact rational binomial sums with
``fractions.Fraction`` and ``math.comb`` for small n, a 50-digit ``decimal`` summation for n = 10⁶,
and published values from Newcombe, "Two-sided confidence intervals for the single proportion:
comparison of seven methods", Statistics in Medicine 1998;17:857-872, Table II (method 3 = Wilson
score, method 5 = Clopper–Pearson "exact").
"""

from __future__ import annotations

import math
import time
from decimal import Decimal, localcontext
from fractions import Fraction
from statistics import NormalDist

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shared.stats.proportions import (
    beta_quantile,
    binomial_cdf,
    binomial_pmf,
    binomial_quantile,
    binomial_upper_tail,
    exact_interval,
    funnel_limits,
    is_above_upper_limit,
    is_below_lower_limit,
    lower_critical_count,
    regularised_incomplete_beta,
    regularised_incomplete_beta_complement,
    upper_critical_count,
    wilson_interval,
)

PROPS = settings(max_examples=150, deadline=None)
FEW_PROPS = settings(max_examples=40, deadline=None)

coverages = st.sampled_from([0.95, 0.998, 0.9, 0.99, 0.5])
benchmarks = st.fractions(min_value=0, max_value=1, max_denominator=200).map(float)
inner_benchmarks = st.integers(min_value=1, max_value=199).map(lambda k: k / 200)
methods = st.sampled_from(["exact", "normal", "wilson"])


# ---------------------------------------------------------------------------------------------
# Independent exact references
# ---------------------------------------------------------------------------------------------
def exact_cdf(k: int, n: int, p: float | Fraction) -> Fraction:
    """P(X ≤ k), X ~ Bin(n, p), as an exact rational (p is taken exactly as given)."""
    p = Fraction(p)
    return sum((math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(0, min(k, n) + 1)), Fraction(0))


def exact_cdf_table(n: int, p: float | Fraction) -> list[Fraction]:
    """[P(X ≤ 0), …, P(X ≤ n)] in one pass (for tests that need every count)."""
    p = Fraction(p)
    running, table = Fraction(0), []
    for i in range(n + 1):
        running += math.comb(n, i) * p**i * (1 - p) ** (n - i)
        table.append(running)
    return table


def exact_pmf(k: int, n: int, p: float | Fraction) -> Fraction:
    p = Fraction(p)
    return math.comb(n, k) * p**k * (1 - p) ** (n - k)


def exact_upper_tail(k: int, n: int, p: float | Fraction) -> Fraction:
    return 1 - exact_cdf(k - 1, n, p) if k > 0 else Fraction(1)


def exact_spiegelhalter_limit(n: int, p: Fraction, q: Fraction) -> Fraction:
    """Spiegelhalter 2005 appendix, in exact arithmetic: (r_q - α) / n."""
    r = next(r for r in range(n + 1) if exact_cdf(r, n, p) >= q)
    alpha = (exact_cdf(r, n, p) - q) / exact_pmf(r, n, p)
    return (r - alpha) / n


def decimal_upper_tail(k: int, n: int, p: str) -> Decimal:
    """P(X ≥ k) to ~40 digits for large n: log-factorials by Stirling's series in Decimal."""

    def log_factorial(m: int) -> Decimal:
        if m < 30:
            return sum((Decimal(i).ln() for i in range(2, m + 1)), Decimal(0))
        x = Decimal(m + 1)
        pi = Decimal("3.14159265358979323846264338327950288419716939937510")
        total = (x - Decimal("0.5")) * x.ln() - x + (2 * pi).ln() / 2
        inverse, inverse_squared = 1 / x, 1 / (x * x)
        for coefficient in (Fraction(1, 12), Fraction(-1, 360), Fraction(1, 1260), Fraction(-1, 1680), Fraction(1, 1188)):
            total += Decimal(coefficient.numerator) / Decimal(coefficient.denominator) * inverse
            inverse *= inverse_squared
        return total

    with localcontext() as context:
        context.prec = 50
        probability = Decimal(p)
        complement = 1 - probability
        log_mass = log_factorial(n) - log_factorial(k) - log_factorial(n - k)
        log_mass += k * probability.ln() + (n - k) * complement.ln()
        mass, total, count = log_mass.exp(), Decimal(0), k
        while count <= n and mass > total * Decimal("1e-40"):
            total += mass
            mass = mass * (n - count) / (count + 1) * probability / complement
            count += 1
        return total


# ---------------------------------------------------------------------------------------------
# Published values (Newcombe 1998, Table II), 95%, to 4 decimal places
# ---------------------------------------------------------------------------------------------
NEWCOMBE_1998 = [
    # successes, n, Wilson (lower, upper), Clopper–Pearson (lower, upper)
    (81, 263, (0.2553, 0.3662), (0.2527, 0.3676)),
    (15, 148, (0.0624, 0.1605), (0.0578, 0.1617)),
    (0, 20, (0.0000, 0.1611), (0.0000, 0.1684)),
    (1, 29, (0.0061, 0.1718), (0.0009, 0.1776)),
]


@pytest.mark.parametrize(("successes", "n", "wilson", "clopper_pearson"), NEWCOMBE_1998)
def test_intervals_match_newcombe_1998(successes, n, wilson, clopper_pearson) -> None:
    assert [round(bound, 4) for bound in wilson_interval(successes, n)] == list(wilson)
    assert [round(bound, 4) for bound in exact_interval(successes, n)] == list(clopper_pearson)


@pytest.mark.parametrize(
    ("successes", "n", "wilson", "clopper_pearson"),
    [
        # Computed from the defining equations, cross-checked against the closed forms below.
        (0, 10, (0.0, 0.2775), (0.0, 0.3085)),
        (1, 10, (0.0179, 0.4042), (0.0025, 0.4450)),
        (5, 10, (0.2366, 0.7634), (0.1871, 0.8129)),
        (29, 29, (0.8830, 1.0000), (0.8806, 1.0000)),
    ],
)
def test_intervals_for_tenths(successes, n, wilson, clopper_pearson) -> None:
    assert [round(bound, 4) for bound in wilson_interval(successes, n)] == list(wilson)
    assert [round(bound, 4) for bound in exact_interval(successes, n)] == list(clopper_pearson)


def test_exact_interval_closed_forms_at_the_ends() -> None:
    # x = 0: upper = 1 - (α/2)^(1/n); x = n: lower = (α/2)^(1/n).
    assert exact_interval(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-15)
    assert exact_interval(10, 10)[0] == pytest.approx(0.025 ** (1 / 10), abs=1e-15)
    assert exact_interval(0, 10)[0] == 0.0 and exact_interval(10, 10)[1] == 1.0


def test_no_observations_give_the_whole_unit_interval() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert exact_interval(0, 0) == (0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Defining equations, small n, exact arithmetic
# ---------------------------------------------------------------------------------------------
@PROPS
@given(n=st.integers(min_value=1, max_value=60), data=st.data(), confidence=coverages)
def test_wilson_bounds_solve_the_score_equation(n: int, data, confidence: float) -> None:
    successes = data.draw(st.integers(min_value=0, max_value=n))
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    proportion = successes / n
    for bound in wilson_interval(successes, n, confidence):
        # (p̂ - θ)² = z² θ (1 - θ) / n at each end (the score test's boundary).
        assert (proportion - bound) ** 2 == pytest.approx(z * z * bound * (1 - bound) / n, abs=1e-12)


@FEW_PROPS
@given(n=st.integers(min_value=1, max_value=80), data=st.data(), confidence=coverages)
def test_exact_interval_is_accurate_to_1e9_against_rational_binomial_sums(
    n: int, data, confidence: float,
) -> None:
    successes = data.draw(st.integers(min_value=0, max_value=n))
    lower, upper = exact_interval(successes, n, confidence)
    tail = Fraction(1 - confidence) / 2
    step = Fraction(1, 10**9)
    if successes > 0:
        # The lower bound solves P(X ≥ x | θ) = α/2, increasing in θ: it must straddle α/2 within 1e-9.
        assert exact_upper_tail(successes, n, Fraction(lower) - step) < tail < exact_upper_tail(successes, n, Fraction(lower) + step)
    else:
        assert lower == 0.0
    if successes < n:
        # The upper bound solves P(X ≤ x | θ) = α/2, decreasing in θ.
        assert exact_cdf(successes, n, Fraction(upper) - step) > tail > exact_cdf(successes, n, Fraction(upper) + step)
    else:
        assert upper == 1.0


@PROPS
@given(
    a=st.integers(min_value=1, max_value=40),
    b=st.integers(min_value=1, max_value=40),
    x=st.floats(min_value=1e-6, max_value=1 - 1e-6),
)
def test_incomplete_beta_matches_the_binomial_identity(a: int, b: int, x: float) -> None:
    # For integer a, b: I_x(a, b) = P(Bin(a + b - 1, x) ≥ a).
    reference = exact_upper_tail(a, a + b - 1, x)
    assert regularised_incomplete_beta(x, a, b) == pytest.approx(float(reference), rel=1e-12, abs=1e-300)
    assert regularised_incomplete_beta_complement(x, a, b) == pytest.approx(float(1 - reference), rel=1e-12, abs=1e-300)


@PROPS
@given(n=st.integers(min_value=0, max_value=80), data=st.data(), p=benchmarks)
def test_binomial_pmf_cdf_and_tail_match_exact_sums(n: int, data, p: float) -> None:
    k = data.draw(st.integers(min_value=-2, max_value=n + 2))
    assert binomial_cdf(k, n, p) == pytest.approx(float(exact_cdf(k, n, p)) if k >= 0 else 0.0, rel=1e-12, abs=1e-300)
    expected_tail = float(exact_upper_tail(k, n, p)) if k <= n else 0.0
    assert binomial_upper_tail(k, n, p) == pytest.approx(expected_tail if k > 0 else 1.0, rel=1e-12, abs=1e-300)
    expected_mass = float(exact_pmf(k, n, p)) if 0 <= k <= n else 0.0
    assert binomial_pmf(k, n, p) == pytest.approx(expected_mass, rel=1e-12, abs=1e-300)


@PROPS
@given(
    n=st.integers(min_value=1, max_value=60),
    p=inner_benchmarks,
    probability=st.floats(min_value=0.0005, max_value=0.9995),
)
def test_binomial_quantile_is_the_smallest_count_reaching_the_probability(
    n: int, p: float, probability: float,
) -> None:
    r = binomial_quantile(probability, n, p)
    assert exact_cdf(r, n, p) >= Fraction(probability) or math.isclose(float(exact_cdf(r, n, p)), probability, rel_tol=1e-12)
    if r > 0:
        assert exact_cdf(r - 1, n, p) < Fraction(probability) or math.isclose(float(exact_cdf(r - 1, n, p)), probability, rel_tol=1e-12)


# ---------------------------------------------------------------------------------------------
# Large n: precision and speed
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("k", "n", "p"),
    [(100_589, 10**6, "0.1"), (100_000, 10**6, "0.1"), (500_800, 10**6, "0.5"), (5, 10**6, "0.000002"), (3_200, 10**6, "0.003")],
)
def test_binomial_tail_is_accurate_at_a_million(k: int, n: int, p: str) -> None:
    reference = float(decimal_upper_tail(k, n, p))
    assert binomial_upper_tail(k, n, float(p)) == pytest.approx(reference, rel=1e-11)


def test_exact_interval_approaches_wilson_for_large_n_and_is_fast() -> None:
    started = time.perf_counter()
    for successes in (1, 10, 5_000, 300_000, 500_000, 999_999):
        for confidence in (0.95, 0.998):
            exact_lower, exact_upper = exact_interval(successes, 10**6, confidence)
            wilson_lower, wilson_upper = wilson_interval(successes, 10**6, confidence)
            assert 0.0 <= exact_lower < successes / 10**6 < exact_upper <= 1.0
            if 1_000 <= successes <= 999_000:
                # Both are within O(1/n) of the normal-theory interval.
                assert exact_lower == pytest.approx(wilson_lower, abs=3e-6)
                assert exact_upper == pytest.approx(wilson_upper, abs=3e-6)
    assert time.perf_counter() - started < 2.0


def test_beta_quantile_inverts_the_incomplete_beta_in_far_tails() -> None:
    cases = [(1e-12, 0.1, 5.0), (0.3, 0.5, 0.5), (0.999999, 200.0, 3.0), (1e-300, 2.0, 3.0), (0.001, 100_000.0, 900_001.0)]
    for probability, a, b in cases:
        x = beta_quantile(probability, a, b)
        if probability < 0.5:
            assert regularised_incomplete_beta(x, a, b) == pytest.approx(probability, rel=1e-9)
        else:
            assert regularised_incomplete_beta_complement(x, a, b) == pytest.approx(1 - probability, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# Funnel limits
# ---------------------------------------------------------------------------------------------
@FEW_PROPS
@given(
    n=st.integers(min_value=1, max_value=60),
    numerator=st.integers(min_value=1, max_value=99),
    coverage=st.sampled_from([0.95, 0.998]),
)
def test_exact_funnel_limits_follow_spiegelhalter_in_exact_arithmetic(
    n: int, numerator: int, coverage: float,
) -> None:
    benchmark = Fraction(numerator, 100)
    tail = (1 - Fraction(coverage)) / 2
    lower, upper = funnel_limits(n, float(benchmark), coverage, "exact")
    # Tail probabilities as the code sees them: the float values of (1 ∓ c)/2.
    expected_lower = exact_spiegelhalter_limit(n, Fraction(float(benchmark)), Fraction((1 - coverage) / 2))
    expected_upper = exact_spiegelhalter_limit(n, Fraction(float(benchmark)), Fraction(1 - (1 - coverage) / 2))
    assert tail > 0
    assert lower == pytest.approx(float(min(max(expected_lower, 0), benchmark)), abs=1e-10)
    assert upper == pytest.approx(float(max(min(expected_upper, 1), benchmark)), abs=1e-10)


def test_funnel_uses_the_2_5_and_97_5_points_for_95_and_0_1_and_99_9_for_99_8() -> None:
    n, benchmark = 400, 0.2
    sd = math.sqrt(benchmark * (1 - benchmark) / n)
    assert funnel_limits(n, benchmark, 0.95, "normal") == pytest.approx((benchmark - 1.959963985 * sd, benchmark + 1.959963985 * sd))
    assert funnel_limits(n, benchmark, 0.998, "normal") == pytest.approx((benchmark - 3.090232306 * sd, benchmark + 3.090232306 * sd))


@PROPS
@given(n=st.integers(min_value=1, max_value=10**6), benchmark=inner_benchmarks, coverage=coverages)
def test_wilson_funnel_is_the_set_of_proportions_whose_wilson_interval_holds_the_benchmark(
    n: int, benchmark: float, coverage: float,
) -> None:
    lower, upper = funnel_limits(n, benchmark, coverage, "wilson")
    assert (lower, upper) == funnel_limits(n, benchmark, coverage, "normal")
    z = NormalDist().inv_cdf((1 + coverage) / 2)
    for proportion in (lower, upper):
        if 0.0 < proportion < 1.0:  # unclipped: the benchmark lies on that proportion's Wilson boundary
            assert (proportion - benchmark) ** 2 == pytest.approx(z * z * benchmark * (1 - benchmark) / n, rel=1e-9)


@pytest.mark.parametrize("benchmark", [0.02, 0.1, 0.5, 0.93])
@pytest.mark.parametrize("coverage", [0.95, 0.998])
def test_exact_funnel_approaches_the_normal_funnel_for_large_n(benchmark: float, coverage: float) -> None:
    n = 200_000
    exact = funnel_limits(n, benchmark, coverage, "exact")
    normal = funnel_limits(n, benchmark, coverage, "normal")
    # Skewness moves the exact limits by O(1/n); with 1/n = 5e-6 they agree to a few 1e-5.
    assert exact == pytest.approx(normal, abs=3e-5)


@PROPS
@given(n=st.integers(min_value=0, max_value=5_000), benchmark=benchmarks, method=methods)
def test_funnel_limits_nest_and_contain_the_benchmark(n: int, benchmark: float, method: str) -> None:
    lower_95, upper_95 = funnel_limits(n, benchmark, 0.95, method)
    lower_998, upper_998 = funnel_limits(n, benchmark, 0.998, method)
    assert 0.0 <= lower_998 <= lower_95 <= benchmark <= upper_95 <= upper_998 <= 1.0
    assert not any(math.isnan(limit) for limit in (lower_95, upper_95, lower_998, upper_998))


@PROPS
@given(n=st.integers(min_value=1, max_value=20_000), benchmark=inner_benchmarks, coverage=coverages)
def test_normal_funnel_narrows_with_every_extra_response(n: int, benchmark: float, coverage: float) -> None:
    lower, upper = funnel_limits(n, benchmark, coverage, "normal")
    next_lower, next_upper = funnel_limits(n + 1, benchmark, coverage, "normal")
    assert lower <= next_lower and next_upper <= upper


@PROPS
@given(
    n=st.integers(min_value=1, max_value=20_000),
    benchmark=inner_benchmarks,
    coverage=st.sampled_from([0.95, 0.998]),
)
def test_exact_funnel_narrows_on_a_coarse_scale(n: int, benchmark: float, coverage: float) -> None:
    # The exact limits are a saw-tooth in n (module docstring); quadrupling n always narrows
    # them once at least one event and one non-event are expected.
    assume(n * min(benchmark, 1 - benchmark) >= 1)
    lower, upper = funnel_limits(n, benchmark, coverage, "exact")
    lower_4n, upper_4n = funnel_limits(4 * n, benchmark, coverage, "exact")
    assert lower - 1e-12 <= lower_4n and upper_4n <= upper + 1e-12


def test_degenerate_funnels() -> None:
    assert funnel_limits(0, 0.3, 0.95) == (0.0, 1.0)
    assert funnel_limits(50, 0.0, 0.95) == (0.0, 0.0)
    assert funnel_limits(50, 1.0, 0.998) == (1.0, 1.0)
    # Tiny nθ: the interpolation would put the upper limit below θ; it is clamped to θ.
    assert funnel_limits(1, 0.01, 0.95, "exact") == (0.0, 0.01)


# ---------------------------------------------------------------------------------------------
# Critical counts and the money decision
# ---------------------------------------------------------------------------------------------
@PROPS
@given(n=st.integers(min_value=0, max_value=70), benchmark=benchmarks, coverage=coverages)
def test_upper_critical_count_is_the_smallest_significant_count(
    n: int, benchmark: float, coverage: float,
) -> None:
    tail = Fraction((1 - coverage) / 2)
    critical = upper_critical_count(n, benchmark, coverage)
    at_most = exact_cdf_table(n, benchmark)
    significant = [r for r in range(n + 1) if (1 - at_most[r - 1] if r > 0 else 1) <= tail]
    assert critical == (significant[0] if significant else None)


@PROPS
@given(n=st.integers(min_value=0, max_value=70), benchmark=benchmarks, coverage=coverages)
def test_lower_critical_count_is_the_largest_significant_count(
    n: int, benchmark: float, coverage: float,
) -> None:
    tail = Fraction((1 - coverage) / 2)
    critical = lower_critical_count(n, benchmark, coverage)
    at_most = exact_cdf_table(n, benchmark)
    significant = [r for r in range(n + 1) if at_most[r] <= tail]
    assert critical == (significant[-1] if significant else None)


@PROPS
@given(
    n=st.integers(min_value=1, max_value=10**6),
    benchmark=inner_benchmarks,
    coverage=st.sampled_from([0.95, 0.998]),
)
def test_upper_critical_count_is_consistent_with_the_cdf_at_any_size(
    n: int, benchmark: float, coverage: float,
) -> None:
    tail = (1 - coverage) / 2
    critical = upper_critical_count(n, benchmark, coverage)
    if critical is None:
        assert binomial_upper_tail(n, n, benchmark) > tail
    else:
        assert binomial_upper_tail(critical, n, benchmark) <= tail
        assert binomial_upper_tail(critical - 1, n, benchmark) > tail


@FEW_PROPS
@given(n=st.integers(min_value=1, max_value=60), benchmark=inner_benchmarks, coverage=coverages)
def test_false_alarm_rate_of_the_exact_decision_never_exceeds_the_nominal_tail(
    n: int, benchmark: float, coverage: float,
) -> None:
    flagged_mass = sum(
        (exact_pmf(r, n, benchmark) for r in range(n + 1) if is_above_upper_limit(r, n, benchmark, coverage, "exact")),
        Fraction(0),
    )
    assert flagged_mass <= Fraction((1 - coverage) / 2)


@PROPS
@given(
    n=st.integers(min_value=0, max_value=3_000),
    data=st.data(),
    benchmark=benchmarks,
    coverage=coverages,
    method=methods,
)
def test_is_above_upper_limit_is_monotone_in_the_observed_count(
    n: int, data, benchmark: float, coverage: float, method: str,
) -> None:
    observed = data.draw(st.integers(min_value=0, max_value=n))
    more = data.draw(st.integers(min_value=observed, max_value=n))
    if is_above_upper_limit(observed, n, benchmark, coverage, method):
        assert is_above_upper_limit(more, n, benchmark, coverage, method)
    if is_below_lower_limit(more, n, benchmark, coverage, method):
        assert is_below_lower_limit(observed, n, benchmark, coverage, method)


@PROPS
@given(
    n=st.integers(min_value=1, max_value=3_000),
    data=st.data(),
    benchmark=inner_benchmarks,
    coverage=coverages,
)
def test_exact_decision_is_the_critical_count(n: int, data, benchmark: float, coverage: float) -> None:
    observed = data.draw(st.integers(min_value=0, max_value=n))
    critical = upper_critical_count(n, benchmark, coverage)
    assert is_above_upper_limit(observed, n, benchmark, coverage) == (critical is not None and observed >= critical)


def test_the_documented_one_count_gap_between_plotted_line_and_decision() -> None:
    # n = 10, θ = 0.1, 99.8%: r_q = 5 and α > 0, so 5/10 is drawn above the interpolated line,
    # but P(X ≥ 5) = 0.00163 > 0.001, so the exact test does not flag it; 6 events are needed.
    upper = funnel_limits(10, 0.1, 0.998, "exact")[1]
    assert 0.4 < upper < 0.5
    assert float(exact_upper_tail(5, 10, Fraction(1, 10))) == pytest.approx(0.0016349374, rel=1e-8)
    assert upper_critical_count(10, 0.1, 0.998) == 6
    assert not is_above_upper_limit(5, 10, 0.1, 0.998)
    assert is_above_upper_limit(6, 10, 0.1, 0.998)


def test_nobody_can_be_flagged_when_no_count_is_unlikely_enough() -> None:
    assert upper_critical_count(1, 0.5, 0.95) is None  # P(X ≥ 1) = 0.5
    assert not is_above_upper_limit(1, 1, 0.5, 0.95)
    assert upper_critical_count(0, 0.5, 0.95) is None
    assert not is_above_upper_limit(0, 0, 0.5, 0.95, "normal")
    assert upper_critical_count(50, 1.0, 0.95) is None
    assert upper_critical_count(50, 0.0, 0.95) == 1  # any event at all is impossible under θ = 0


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        lambda: wilson_interval(-1, 10),
        lambda: wilson_interval(11, 10),
        lambda: wilson_interval(1, -1),
        lambda: wilson_interval(1.0, 10),
        lambda: wilson_interval(True, 10),
        lambda: exact_interval(1, 10, confidence=1.0),
        lambda: exact_interval(1, 10, confidence=0.0),
        lambda: exact_interval(1, 10, confidence=math.nan),
        lambda: funnel_limits(10, 1.5, 0.95),
        lambda: funnel_limits(10, -0.1, 0.95),
        lambda: funnel_limits(10, math.nan, 0.95),
        lambda: funnel_limits(10, 0.5, 1.0),
        lambda: funnel_limits(-1, 0.5, 0.95),
        lambda: funnel_limits(10, 0.5, 0.95, "poisson"),
        lambda: upper_critical_count(10, 0.5, 0.0),
        lambda: is_above_upper_limit(11, 10, 0.5, 0.95),
        lambda: is_above_upper_limit(-1, 10, 0.5, 0.95),
        lambda: binomial_cdf(1, 10, 1.2),
        lambda: beta_quantile(0.5, 0.0, 1.0),
        lambda: regularised_incomplete_beta(1.5, 1.0, 1.0),
    ],
)
def test_invalid_arguments_raise_value_error(call) -> None:
    with pytest.raises(ValueError):
        call()
