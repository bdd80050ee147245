"""Binomial proportions: confidence intervals, binomial tails and funnel-plot control limits.

Pure standard-library Python (``math``, ``statistics.NormalDist``); no numpy or scipy.

Conventions
===========
A *proportion* here is ``x / n``: ``x`` events (for example negative responses) out of ``n``
trials (responses). ``benchmark`` is the proportion θ expected under the null ("in control").
A *coverage* ``c`` in (0, 1) always means a **two-sided** region with ``(1 - c) / 2`` in each tail:

* a 95% funnel or interval uses the 2.5% and 97.5% points;
* a 99.8% funnel uses the 0.1% and 99.9% points (Spiegelhalter's "3 SD" limits).

Intervals (for one observed proportion)
---------------------------------------
Wilson score interval (Wilson, JASA 1927), with z = Φ⁻¹((1 + c) / 2), p̂ = x / n::

    centre     = (p̂ + z² / 2n) / (1 + z² / n)
    half-width = z / (1 + z² / n) · sqrt(p̂ (1 - p̂) / n + z² / 4n²)

Clopper–Pearson "exact" interval (Biometrika 1934), via the beta distribution::

    lower = B⁻¹(α/2;     x,     n - x + 1)    (0 when x = 0)
    upper = B⁻¹(1 - α/2; x + 1, n - x)        (1 when x = n),   α = 1 - c

where B⁻¹(q; a, b) is the inverse of the regularised incomplete beta function I_x(a, b).
Closed forms are used at the ends: upper(x = 0) = 1 - (α/2)^(1/n), lower(x = n) = (α/2)^(1/n).

Binomial tails
--------------
With X ~ Bin(n, p), 0 ≤ k < n (Abramowitz & Stegun 26.5.24)::

    P(X ≤ k) = I_{1-p}(n - k, k + 1)        P(X ≥ k) = I_p(k, n - k + 1)   (1 ≤ k ≤ n)

I_x(a, b) is evaluated by its continued fraction with the modified Lentz algorithm (Numerical
Recipes §6.4 and §5.2), on whichever side of the mode converges fastest; the *smaller* of
I and 1 - I is always the one computed directly, so tail probabilities keep their relative
precision. The prefactor x^a (1-x)^b / B(a, b) is evaluated in log space with Stirling-series
corrections (in the spirit of Loader's 2000 binomial density algorithm) so it stays accurate for n up
to 10⁶ and beyond, where ``lgamma`` differences would cancel.

Funnel-plot control limits
==========================
Spiegelhalter, "Funnel plots for comparing institutional performance", Statistics in Medicine
2005;24:1185-1202, appendix (exact limits for a binomial proportion). For a tail probability q
(q = (1 - c)/2 for the lower limit, q = (1 + c)/2 for the upper):

1. r_q = the q-quantile of Bin(n, θ): the smallest r with P(X ≤ r) ≥ q;
2. α_q = (P(X ≤ r_q) - q) / (P(X ≤ r_q) - P(X ≤ r_q - 1)) = (P(X ≤ r_q) - q) / P(X = r_q);
3. limit_q = (r_q - α_q) / n.

The interpolation (step 2) turns the step function r_q / n into limits that are continuous in
n, so the drawn funnel is smooth. ``method="normal"`` is Spiegelhalter's normal approximation
with the *benchmark's* variance, θ ± z·sqrt(θ(1 - θ)/n); ``method="wilson"`` is the set of
observed proportions whose Wilson score interval contains θ, as UKHSA/PHE Fingertips computes
it (ukhsa-collaboration/PHEindicatormethods, R/Funnels.R, ``sigma_adjustment``). Solving that
quadratic gives exactly θ ± z·sqrt(θ(1 - θ)/n) again (the Wilson interval *is* the inversion of
the score test, whose variance is the null's), so "wilson" and "normal" coincide; both names
are kept because both appear in published guidance. Normal/Wilson limits are clipped to [0, 1].

The exact limits are clamped so that lower ≤ θ ≤ upper: when nθ is tiny, step 3 can fall on
the wrong side of θ (n = 1, θ = 0.01, 95%: r = 0, α = 0.015, upper = -0.015). They are
continuous in n but, being discrete at heart, not monotone: between jumps of r_q the upper
limit creeps up (a saw-tooth), so they narrow as n grows only on a coarse scale.

Degenerate cases: n = 0 carries no information and gives (0, 1); θ = 0 gives (0, 0) and θ = 1
gives (1, 1) (every outcome is then certain, and the interpolation would otherwise place a
limit a hair inside the only possible value).

Deciding "above the limit" (money decisions)
--------------------------------------------
``upper_critical_count(n, θ, c)`` is the smallest count r with P(X ≥ r) ≤ (1 - c)/2: an exact
one-sided binomial test at the upper tail. A provider whose true rate equals the benchmark is
flagged with probability at most (1 - c)/2, whatever n and θ. ``is_above_upper_limit`` with
``method="exact"`` is ``observed >= upper_critical_count``.

This deliberately differs, at exactly one count, from the plotted interpolated line: that line
lies in ((r_q - 1)/n, r_q/n], so a provider with r_q events is drawn a fraction *above* it
although P(X ≥ r_q) > (1 - c)/2, so its false-alarm probability can exceed the nominal
(1 - c)/2 (for n = 10, θ = 0.1, 99.8%: 0.0016 instead of 0.001; see also "Specifying the
probability characteristics of funnel plot control limits", PLoS ONE 2012,
doi:10.1371/journal.pone.0045723, on interpolated limits). Where money moves we choose the
test that never exceeds it; a portal should colour points by ``is_above_upper_limit``, not by
geometry. On the lower side the interpolated line and the exact test agree (a count y is
below the line iff P(X ≤ y) < (1 - c)/2; the test also flags an exact tie, = (1 - c)/2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist
from typing import Literal

FunnelMethod = Literal["exact", "normal", "wilson"]
FUNNEL_METHODS: tuple[str, ...] = ("exact", "normal", "wilson")

_STANDARD_NORMAL = NormalDist()
_LOG_TWO_PI = math.log(2.0 * math.pi)
# Relative change below which the continued fraction has converged (a few ulps).
_CF_EPSILON = 1e-15
# Lentz's algorithm replaces exact zeros by this to avoid dividing by zero.
_CF_TINY = 1e-300
# Newton/bisection iterations for the beta quantile: bisection alone needs ~1075 to reach the
# smallest subnormal, Newton needs a handful; this is a hard ceiling, not a tuning knob.
_QUANTILE_MAX_ITERATIONS = 2000


class NumericalError(ArithmeticError):
    """An algorithm failed to converge: a broken invariant, never an input error."""


# ---------------------------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------------------------
def _require_count(name: str, value: object) -> int:
    # bool is an int subclass; a True where a count belongs is always a bug upstream.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _require_successes(successes: object, n: object) -> tuple[int, int]:
    trials = _require_count("n", n)
    events = _require_count("successes", successes)
    if events > trials:
        raise ValueError(f"successes must be <= n, got {events} > {trials}")
    return events, trials


def _require_open_unit(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (0.0 < value < 1.0):
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value!r}")
    return float(value)


def _require_probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    return float(value)


def _require_shape(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (0.0 < value < math.inf):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _require_method(method: object) -> str:
    if method not in FUNNEL_METHODS:
        raise ValueError(f"method must be one of {FUNNEL_METHODS}, got {method!r}")
    return str(method)


def _two_sided_z(coverage: float) -> float:
    """z with (1 - coverage)/2 in each tail: 1.959964 for 95%, 3.090232 for 99.8%."""
    return _STANDARD_NORMAL.inv_cdf((1.0 + coverage) / 2.0)


# ---------------------------------------------------------------------------------------------
# Regularised incomplete beta function
# ---------------------------------------------------------------------------------------------
def _stirling_remainder(x: float) -> float:
    """δ(x) = ln Γ(x) - [(x - ½) ln x - x + ½ ln 2π]: the Stirling series remainder.

    Below 10 the exact difference is small and lgamma is accurate, so it is used directly;
    above, the asymptotic series (terms to x⁻¹¹) is accurate to well under 1e-15.
    """
    if x < 10.0:
        return math.lgamma(x) - ((x - 0.5) * math.log(x) - x + 0.5 * _LOG_TWO_PI)
    inverse = 1.0 / x
    inverse_squared = inverse * inverse
    # B₂ₖ / (2k (2k - 1)) for k = 1..6, summed by Horner's rule in 1/x² from the smallest term.
    coefficients = (1.0 / 12.0, -1.0 / 360.0, 1.0 / 1260.0, -1.0 / 1680.0, 1.0 / 1188.0, -691.0 / 360360.0)
    series = 0.0
    for coefficient in reversed(coefficients):
        series = series * inverse_squared + coefficient
    return inverse * series


def _log_beta_kernel(x: float, a: float, b: float) -> float:
    """ln[x^a (1 - x)^b / B(a, b)] for 0 < x < 1, accurate for large a and b.

    Written about x₀ = a/(a+b), where x^a (1-x)^b peaks, so that the two large logarithms that cancel
    are replaced by a·ln(x/x₀) + b·ln((1-x)/(1-x₀)), each computed with log1p:
        ln kernel = a ln(x/x₀) + b ln((1-x)/(1-x₀)) + ½ ln(ab / (2π(a+b))) - δ(a) - δ(b) + δ(a+b)
    Both ratios are taken from the one input x ((1-x) - (1-x₀) = x₀ - x), never from a rounded
    1 - x: with a or b near 10⁶ an inconsistent pair would cost ten digits. Rounding x₀ itself
    is harmless: the expression is stationary in x₀.
    """
    total = a + b
    mode = a / total
    mode_complement = b / total
    relative_x = (x - mode) / mode
    relative_complement = (mode - x) / mode_complement
    # log1p keeps the digits near the mode; far from it the plain logs are exact enough and
    # log1p would meet -1 (x much smaller than the mode) and fail.
    if abs(relative_x) < 0.5:
        log_ratio_x = math.log1p(relative_x)
    else:
        log_ratio_x = math.log(x) - math.log(mode)
    if abs(relative_complement) < 0.5:
        log_ratio_complement = math.log1p(relative_complement)
    else:
        log_ratio_complement = math.log1p(-x) - math.log(mode_complement)
    return (
        a * log_ratio_x
        + b * log_ratio_complement
        + 0.5 * (math.log(a) + math.log(b) - math.log(total) - _LOG_TWO_PI)
        - _stirling_remainder(a)
        - _stirling_remainder(b)
        + _stirling_remainder(total)
    )


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b) (Numerical Recipes ``betacf``), modified Lentz.

    Converges quickly for x < (a + 1)/(a + b + 2); the number of terms grows like
    sqrt(max(a, b)), so the ceiling scales with it.
    """
    max_terms = 1000 + 20 * int(math.sqrt(max(a, b)))
    sum_ab = a + b
    a_plus_one = a + 1.0
    a_minus_one = a - 1.0
    c = 1.0
    d = 1.0 - sum_ab * x / a_plus_one
    if abs(d) < _CF_TINY:
        d = _CF_TINY
    d = 1.0 / d
    fraction = d
    for m in range(1, max_terms + 1):
        twice_m = 2 * m
        # Even step of the recurrence.
        numerator = m * (b - m) * x / ((a_minus_one + twice_m) * (a + twice_m))
        d = 1.0 + numerator * d
        if abs(d) < _CF_TINY:
            d = _CF_TINY
        c = 1.0 + numerator / c
        if abs(c) < _CF_TINY:
            c = _CF_TINY
        d = 1.0 / d
        fraction *= d * c
        # Odd step.
        numerator = -(a + m) * (sum_ab + m) * x / ((a + twice_m) * (a_plus_one + twice_m))
        d = 1.0 + numerator * d
        if abs(d) < _CF_TINY:
            d = _CF_TINY
        c = 1.0 + numerator / c
        if abs(c) < _CF_TINY:
            c = _CF_TINY
        d = 1.0 / d
        step = d * c
        fraction *= step
        if abs(step - 1.0) < _CF_EPSILON:
            return fraction
    raise NumericalError(f"incomplete beta continued fraction did not converge (x={x}, a={a}, b={b})")


def _incomplete_beta_pair(x: float, a: float, b: float) -> tuple[float, float]:
    """(I_x(a, b), 1 - I_x(a, b)), the smaller of the two computed directly.

    Uses I_x(a, b) = 1 - I_{1-x}(b, a) beyond the mode. The prefactor is symmetric
    (x^a (1-x)^b / B(a, b) either way), so it is always evaluated at the caller's x; only the
    continued fraction sees 1 - x, and it is insensitive to that last-bit rounding.
    """
    if x <= 0.0:
        return 0.0, 1.0
    if x >= 1.0:
        return 1.0, 0.0
    prefactor = math.exp(_log_beta_kernel(x, a, b))
    if x < (a + 1.0) / (a + b + 2.0):
        lower = min(max(prefactor * _beta_continued_fraction(x, a, b) / a, 0.0), 1.0)
        return lower, 1.0 - lower
    upper = min(max(prefactor * _beta_continued_fraction(1.0 - x, b, a) / b, 0.0), 1.0)
    return 1.0 - upper, upper


def regularised_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b), the CDF of a Beta(a, b) variable at x."""
    x = _require_probability("x", x)
    return _incomplete_beta_pair(x, _require_shape("a", a), _require_shape("b", b))[0]


def regularised_incomplete_beta_complement(x: float, a: float, b: float) -> float:
    """1 - I_x(a, b), computed without cancellation when it is small."""
    x = _require_probability("x", x)
    return _incomplete_beta_pair(x, _require_shape("a", a), _require_shape("b", b))[1]


def _beta_density(x: float, a: float, b: float) -> float:
    # x^(a-1) (1-x)^(b-1) / B(a, b) = kernel / (x (1 - x)).
    if not 0.0 < x < 1.0:
        return math.nan
    return math.exp(_log_beta_kernel(x, a, b)) / (x * (1.0 - x))


def beta_quantile(probability: float, a: float, b: float) -> float:
    """The x in [0, 1] with I_x(a, b) = probability (inverse of the Beta(a, b) CDF).

    Newton's method safeguarded by a shrinking bracket: any Newton step that leaves the
    bracket (or meets a zero density in a far tail) is replaced by bisection, so it always
    converges; near the answer Newton's quadratic convergence gives full double precision.
    For probability > ½ the equation is solved through the complement, which is the tail
    that I computes directly, so neither side loses precision.
    """
    probability = _require_probability("probability", probability)
    a = _require_shape("a", a)
    b = _require_shape("b", b)
    if probability == 0.0:
        return 0.0
    if probability == 1.0:
        return 1.0
    use_complement = probability > 0.5
    target = 1.0 - probability if use_complement else probability

    def excess(x: float) -> float:
        # Increasing in x in both forms: I_x - p, or (1 - p) - (1 - I_x).
        lower, upper = _incomplete_beta_pair(x, a, b)
        return (target - upper) if use_complement else (lower - target)

    bracket_low, bracket_high = 0.0, 1.0
    mean = a / (a + b)
    spread = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))
    guess = mean + _STANDARD_NORMAL.inv_cdf(probability) * spread
    x = guess if 0.0 < guess < 1.0 else mean
    for _ in range(_QUANTILE_MAX_ITERATIONS):
        value = excess(x)
        if value == 0.0:
            return x
        if value < 0.0:
            bracket_low = x
        else:
            bracket_high = x
        if bracket_high - bracket_low <= 4e-16 * bracket_high:
            return x
        density = _beta_density(x, a, b)
        candidate = x - value / density if density > 0.0 else math.nan
        if not (math.isfinite(candidate) and bracket_low < candidate < bracket_high):
            # Newton left the bracket (or the density under/overflowed): bisect instead.
            candidate = 0.5 * (bracket_low + bracket_high)
        elif abs(candidate - x) <= 1e-15 * x:
            return candidate
        x = candidate
    raise NumericalError(f"beta quantile did not converge (probability={probability}, a={a}, b={b})")


# ---------------------------------------------------------------------------------------------
# Binomial distribution
# ---------------------------------------------------------------------------------------------
def _require_binomial(k: object, n: object, p: object) -> tuple[int, int, float]:
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be an int, got {k!r}")
    return k, _require_count("n", n), _require_probability("p", p)


def binomial_pmf(k: int, n: int, p: float) -> float:
    """P(X = k) for X ~ Bin(n, p), in log space so that large n neither overflows nor underflows early."""
    k, n, p = _require_binomial(k, n, p)
    if k < 0 or k > n:
        return 0.0
    if p == 0.0:
        return 1.0 if k == 0 else 0.0
    if p == 1.0:
        return 1.0 if k == n else 0.0
    if k == 0:
        return math.exp(n * math.log1p(-p))
    if k == n:
        return math.exp(n * math.log(p))
    # C(n, k) = n / (k (n - k)) / B(k, n - k), so P(X = k) = kernel(p; k, n - k) · n / (k (n - k)).
    return math.exp(_log_beta_kernel(p, k, n - k) + math.log(n) - math.log(k) - math.log(n - k))


def _binomial_tails(k: int, n: int, p: float) -> tuple[float, float]:
    """(P(X ≤ k), P(X > k)) with the smaller computed directly."""
    if k < 0:
        return 0.0, 1.0
    if k >= n:
        return 1.0, 0.0
    if p == 0.0:
        return 1.0, 0.0
    if p == 1.0:
        return 0.0, 1.0
    # P(X > k) = P(X ≥ k + 1) = I_p(k + 1, n - k), i.e. P(X ≤ k) = I_{1-p}(n - k, k + 1).
    # Evaluated at p itself: going through a rounded 1 - p would shift a small p by up to
    # 1e-16 absolute, which a tail probability at n = 10⁶ amplifies to 1e-10 relative.
    above, at_most = _incomplete_beta_pair(p, k + 1, n - k)
    return at_most, above


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X ≤ k) for X ~ Bin(n, p)."""
    k, n, p = _require_binomial(k, n, p)
    return _binomial_tails(k, n, p)[0]


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Bin(n, p), accurate when small (no 1 - CDF cancellation)."""
    k, n, p = _require_binomial(k, n, p)
    return _binomial_tails(k - 1, n, p)[1]


def _smallest_count(n: int, guess: float, condition: Callable[[int], bool]) -> int | None:
    """Smallest r in [0, n] where the monotone ``condition`` (False…False True…True) holds.

    Starts from a normal-approximation guess and gallops outwards, so a typical search costs
    a handful of tail evaluations rather than log2(n).
    """
    if not condition(n):
        return None
    start = min(max(int(guess), 0), n)
    if condition(start):
        # Gallop down to a count where it fails (or 0).
        high, step = start, 1
        low = high - step
        while low >= 0 and condition(low):
            high, step = low, step * 2
            low = high - step
        low = max(low, -1)
    else:
        low, step = start, 1
        high = low + step
        while high < n and not condition(high):
            low, step = high, step * 2
            high = low + step
        high = min(high, n)
    # Invariant: condition(high) holds; low == -1 or condition(low) fails.
    while high - low > 1:
        middle = (low + high) // 2
        if condition(middle):
            high = middle
        else:
            low = middle
    return high


def _normal_guess(n: int, p: float, probability: float) -> float:
    return n * p + _STANDARD_NORMAL.inv_cdf(probability) * math.sqrt(n * p * (1.0 - p))


def binomial_quantile(probability: float, n: int, p: float) -> int:
    """The smallest r in [0, n] with P(X ≤ r) ≥ probability, X ~ Bin(n, p)."""
    probability = _require_open_unit("probability", probability)
    n = _require_count("n", n)
    p = _require_probability("p", p)
    if p == 0.0 or n == 0:
        return 0
    if p == 1.0:
        return n

    def reaches(r: int) -> bool:
        lower, upper = _binomial_tails(r, n, p)
        # Compare on the tail that is computed directly: P(X > r) ≤ 1 - q for the upper half.
        return upper <= 1.0 - probability if probability > 0.5 else lower >= probability

    found = _smallest_count(n, _normal_guess(n, p, probability), reaches)
    if found is None:  # cannot happen: P(X ≤ n) = 1 ≥ probability
        raise NumericalError("binomial quantile search failed")
    return found


# ---------------------------------------------------------------------------------------------
# Confidence intervals for one proportion
# ---------------------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for successes / n; (0, 1) when n = 0 (nothing observed)."""
    successes, n = _require_successes(successes, n)
    confidence = _require_open_unit("confidence", confidence)
    if n == 0:
        return 0.0, 1.0
    z = _two_sided_z(confidence)
    z_squared = z * z
    proportion = successes / n
    denominator = 1.0 + z_squared / n
    centre = (proportion + z_squared / (2.0 * n)) / denominator
    half_width = z / denominator * math.sqrt(proportion * (1.0 - proportion) / n + z_squared / (4.0 * n * n))
    # The formula gives exactly 0 / 1 at the ends mathematically; pin them against rounding.
    lower = 0.0 if successes == 0 else max(0.0, centre - half_width)
    upper = 1.0 if successes == n else min(1.0, centre + half_width)
    return lower, upper


def exact_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper–Pearson interval for successes / n; (0, 1) when n = 0 (nothing observed)."""
    successes, n = _require_successes(successes, n)
    confidence = _require_open_unit("confidence", confidence)
    if n == 0:
        return 0.0, 1.0
    tail = (1.0 - confidence) / 2.0
    log_tail_per_trial = math.log(tail) / n
    if successes == 0:
        lower = 0.0
    elif successes == n:
        lower = math.exp(log_tail_per_trial)
    else:
        lower = beta_quantile(tail, successes, n - successes + 1)
    if successes == n:
        upper = 1.0
    elif successes == 0:
        upper = -math.expm1(log_tail_per_trial)
    else:
        upper = beta_quantile(1.0 - tail, successes + 1, n - successes)
    return lower, upper


# ---------------------------------------------------------------------------------------------
# Funnel plots
# ---------------------------------------------------------------------------------------------
def _exact_funnel_limit(n: int, benchmark: float, probability: float) -> float:
    """Spiegelhalter's interpolated exact limit (r_q - α_q) / n for tail probability q."""
    quantile = binomial_quantile(probability, n, benchmark)
    at_most, above = _binomial_tails(quantile, n, benchmark)
    # P(X ≤ r) - q, taken from the tail computed directly so it keeps its precision.
    surplus = (1.0 - probability) - above if probability > 0.5 else at_most - probability
    point_mass = binomial_pmf(quantile, n, benchmark)
    interpolation = surplus / point_mass if point_mass > 0.0 else 0.0
    # α is in [0, 1) mathematically; clamp only the last-ulp rounding.
    interpolation = min(max(interpolation, 0.0), 1.0)
    return min(max((quantile - interpolation) / n, 0.0), 1.0)


def _score_funnel_limits(n: int, benchmark: float, coverage: float) -> tuple[float, float]:
    """θ ± z·sqrt(θ(1-θ)/n): the normal approximation and the Wilson-score inversion alike."""
    half_width = _two_sided_z(coverage) * math.sqrt(benchmark * (1.0 - benchmark) / n)
    return max(0.0, benchmark - half_width), min(1.0, benchmark + half_width)


def funnel_limits(
    n: int, benchmark: float, coverage: float, method: FunnelMethod = "exact"
) -> tuple[float, float]:
    """(lower, upper) funnel control limits for a proportion from n trials around ``benchmark``.

    Two-sided: ``coverage`` 0.95 uses the 2.5%/97.5% points, 0.998 the 0.1%/99.9% points.
    See the module docstring for the formulas of each method and the degenerate cases.
    """
    n = _require_count("n", n)
    benchmark = _require_probability("benchmark", benchmark)
    coverage = _require_open_unit("coverage", coverage)
    method = _require_method(method)
    if n == 0:
        return 0.0, 1.0
    if benchmark in (0.0, 1.0):
        return benchmark, benchmark
    if method == "exact":
        tail = (1.0 - coverage) / 2.0
        lower = _exact_funnel_limit(n, benchmark, tail)
        upper = _exact_funnel_limit(n, benchmark, 1.0 - tail)
        # For tiny nθ the interpolation can land on the wrong side of θ (n = 1, θ = 0.01:
        # r = 0, α = 0.015, "upper" = -0.015); a limit never sits across the benchmark.
        return min(lower, benchmark), max(upper, benchmark)
    return _score_funnel_limits(n, benchmark, coverage)


def upper_critical_count(n: int, benchmark: float, coverage: float) -> int | None:
    """Smallest count r with P(X ≥ r) ≤ (1 - coverage)/2 for X ~ Bin(n, benchmark).

    None when no count up to n is that unlikely (small n, or benchmark 1), so nobody can be
    flagged. One-sided at the upper tail of the two-sided funnel: 0.025 for 95%, 0.001 for 99.8%.
    """
    n = _require_count("n", n)
    benchmark = _require_probability("benchmark", benchmark)
    coverage = _require_open_unit("coverage", coverage)
    tail = (1.0 - coverage) / 2.0

    def significant(r: int) -> bool:
        return _binomial_tails(r - 1, n, benchmark)[1] <= tail

    return _smallest_count(n, _normal_guess(n, benchmark, 1.0 - tail) + 1.0, significant)


def lower_critical_count(n: int, benchmark: float, coverage: float) -> int | None:
    """Largest count r with P(X ≤ r) ≤ (1 - coverage)/2; None when even 0 is not that unlikely."""
    n = _require_count("n", n)
    benchmark = _require_probability("benchmark", benchmark)
    coverage = _require_open_unit("coverage", coverage)
    tail = (1.0 - coverage) / 2.0

    def not_significant(r: int) -> bool:
        return _binomial_tails(r, n, benchmark)[0] > tail

    first_not_significant = _smallest_count(n, _normal_guess(n, benchmark, tail), not_significant)
    if first_not_significant is None:  # P(X ≤ n) = 1 > tail always; kept for the type checker
        raise NumericalError("lower critical count search failed")
    return first_not_significant - 1 if first_not_significant > 0 else None


def _require_observed(observed: object, n: int) -> int:
    events = _require_count("observed", observed)
    if events > n:
        raise ValueError(f"observed must be <= n, got {events} > {n}")
    return events


def is_above_upper_limit(
    observed: int, n: int, benchmark: float, coverage: float, method: FunnelMethod = "exact"
) -> bool:
    """Whether ``observed`` events out of ``n`` lie significantly above the benchmark.

    ``exact``: observed ≥ ``upper_critical_count`` (the exact one-sided test; see the module
    docstring for why this, not the interpolated line, decides). ``normal``/``wilson``:
    observed / n strictly above the upper limit. Always False when n = 0.
    """
    n = _require_count("n", n)
    observed = _require_observed(observed, n)
    benchmark = _require_probability("benchmark", benchmark)
    coverage = _require_open_unit("coverage", coverage)
    method = _require_method(method)
    if n == 0:
        return False
    if method == "exact":
        critical = upper_critical_count(n, benchmark, coverage)
        return critical is not None and observed >= critical
    return observed / n > funnel_limits(n, benchmark, coverage, method)[1]


def is_below_lower_limit(
    observed: int, n: int, benchmark: float, coverage: float, method: FunnelMethod = "exact"
) -> bool:
    """Mirror of ``is_above_upper_limit`` for the lower tail (better than the benchmark when events are bad)."""
    n = _require_count("n", n)
    observed = _require_observed(observed, n)
    benchmark = _require_probability("benchmark", benchmark)
    coverage = _require_open_unit("coverage", coverage)
    method = _require_method(method)
    if n == 0:
        return False
    if method == "exact":
        critical = lower_critical_count(n, benchmark, coverage)
        return critical is not None and observed <= critical
    return observed / n < funnel_limits(n, benchmark, coverage, method)[0]
