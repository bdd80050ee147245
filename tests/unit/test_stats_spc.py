"""Tests for shared/stats/spc.py: XmR charts with Making Data Count rules, and project status.

Expected values come from NHSRplotthedots (nhs-r-community/NHSRplotthedots): its vignette
``vignettes/deviations.Rmd`` prints the limits of an 18-point example with and without
screening, and its ``tests/testthat/test-ptd_calculate_point_type.R`` pins the run rules.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shared.stats.spc import (
    NEAR_LIMIT_FACTOR,
    PROCESS_LIMIT_FACTOR,
    project_assessment,
    project_status,
    xmr,
)

PROPS = settings(max_examples=150, deadline=None)

DEVIATIONS_VIGNETTE = [1, 2, 1, 2, 10, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1]


def variations(chart):
    return [point.variation for point in chart.points]


def rounded_limits(segment) -> tuple[float, float, float]:
    """(upper, mean, lower) to 2 dp, as the vignette's captions print them."""
    return (round(segment.upper_process_limit, 2), round(segment.mean, 2), round(segment.lower_process_limit, 2))


def stable_baseline(length: int = 20) -> list[float]:
    """A baseline with no signals: 11, 9, 11, 9, … (no runs, no trends, mean 10, mR̄ = 2).

    With an even length it ends below the mean, so a run planted after it starts fresh.
    """
    return [10.0 + (-1.0 if i % 2 else 1.0) for i in range(length)]


# ---------------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------------
def test_limits_match_the_nhsrplotthedots_deviations_vignette() -> None:
    screened = xmr(DEVIATIONS_VIGNETTE)
    segment = screened.segments[0]
    assert rounded_limits(segment) == (4.6, 1.94, -0.72)
    assert segment.moving_ranges_screened_out == 2  # the two ranges either side of the 10
    unscreened = xmr(DEVIATIONS_VIGNETTE, screen_outliers=False).segments[0]
    assert rounded_limits(unscreened) == (6.95, 1.94, -3.06)
    # "four grey common cause points followed by a single blue special cause improvement point
    # followed by a further 12 grey common cause points" (the vignette's figure caption, 17 shown).
    assert variations(screened)[:5] == ["common_cause"] * 4 + ["special_cause_improvement"]
    assert set(variations(screened)[5:]) == {"common_cause"}
    assert screened.points[4].astronomical and screened.points[4].signal_direction == "up"


def test_limits_are_mean_plus_or_minus_2_66_and_1_77_mean_moving_ranges() -> None:
    values = [3.0, 5.0, 4.0, 6.0, 5.0, 7.0]
    chart = xmr(values, screen_outliers=False)
    mean = sum(values) / 6
    mean_moving_range = (2 + 1 + 2 + 1 + 2) / 5
    point = chart.points[0]
    assert point.mean == pytest.approx(mean)
    assert point.upper_process_limit == pytest.approx(mean + 2.66 * mean_moving_range)
    assert point.lower_process_limit == pytest.approx(mean - 2.66 * mean_moving_range)
    assert point.upper_two_sigma == pytest.approx(mean + 2 * 2.66 / 3 * mean_moving_range)
    assert NEAR_LIMIT_FACTOR == pytest.approx(2 / 1.128, abs=5e-4)  # the package's 2σ is 2 × mR̄/1.128
    assert [p.moving_range for p in chart.points] == [None, 2.0, 1.0, 2.0, 1.0, 2.0]


def test_fix_after_n_points_freezes_the_limits() -> None:
    values = stable_baseline(12) + [30.0, 31.0, 29.0]
    chart = xmr(values, fix_after_n_points=12)
    segment = chart.segments[0]
    assert (segment.limits_from_start, segment.limits_from_stop) == (0, 12)
    assert segment.mean == pytest.approx(10.0)
    assert {p.upper_process_limit for p in chart.points} == {segment.upper_process_limit}
    assert all(p.astronomical and p.variation == "special_cause_improvement" for p in chart.points[12:])
    assert not segment.trial_limits


def test_rebase_starts_a_new_segment_with_its_own_limits_and_rules() -> None:
    values = stable_baseline(10) + [float(50 + (i % 2)) for i in range(10)]
    chart = xmr(values, rebase_at=[10])
    first, second = chart.segments
    assert (first.start, first.stop, second.start, second.stop) == (0, 10, 10, 20)
    assert first.mean == pytest.approx(10.0) and second.mean == pytest.approx(50.5)
    assert chart.points[10].moving_range is None  # no range across a rebase
    assert set(variations(chart)) == {"common_cause"}
    assert first.trial_limits and second.trial_limits  # fewer than 12 points each
    unrebased = xmr(values)
    assert "special_cause_improvement" in variations(unrebased)


def test_too_few_points_for_limits_are_not_assessed() -> None:
    chart = xmr([1.0, 2.0, 3.0, 4.0, 5.0])
    assert all(p.variation is None and p.mean is None and p.upper_process_limit is None for p in chart.points)
    assert not chart.segments[0].has_limits
    assert chart.latest_variation is None and chart.assurance is None
    assert xmr([1.0, 2.0, 3.0], min_points_for_limits=3).points[0].mean == pytest.approx(2.0)


def test_empty_and_single_point_series_do_not_fail() -> None:
    empty = xmr([])
    assert empty.points == () and empty.segments == () and empty.latest_variation is None
    single = xmr([4.2], min_points_for_limits=2)
    assert single.points[0].variation is None


@PROPS
@given(
    level=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    length=st.integers(min_value=0, max_value=60),
    direction=st.sampled_from(["increase", "decrease", "neutral"]),
)
def test_a_constant_series_has_zero_width_limits_and_no_signals(
    level: float, length: int, direction: str,
) -> None:
    chart = xmr([level] * length, improvement_direction=direction, target=level)
    for point in chart.points:
        assert point.variation in (None, "common_cause")
        assert not (point.astronomical or point.shift or point.trend or point.two_of_three)
        if point.mean is not None:
            assert point.lower_process_limit == point.upper_process_limit == point.mean
    if length >= 6 and direction != "neutral":
        assert chart.assurance == "hit_or_miss"


def test_a_constant_baseline_makes_any_later_change_astronomical() -> None:
    chart = xmr([5.0] * 12 + [5.1], fix_after_n_points=12)
    assert chart.points[-1].astronomical and chart.latest_variation == "special_cause_improvement"


# ---------------------------------------------------------------------------------------------
# Run rules (lengths as in NHSRplotthedots)
# ---------------------------------------------------------------------------------------------
def test_shift_needs_seven_points_on_one_side() -> None:
    base = stable_baseline(12)
    six = xmr(base + [10.5] * 6, fix_after_n_points=12)
    assert not any(p.shift for p in six.points)
    seven = xmr(base + [10.5] * 7, fix_after_n_points=12)
    assert [p.shift for p in seven.points[12:]] == [True] * 7
    assert set(variations(seven)[12:]) == {"special_cause_improvement"}
    on_the_mean = xmr(base + [10.5] * 3 + [10.0] + [10.5] * 3, fix_after_n_points=12)
    assert not any(p.shift for p in on_the_mean.points)  # a point on the mean breaks the run


def test_trend_needs_seven_strictly_rising_or_falling_points() -> None:
    base = stable_baseline(12)
    rising = [9.0 + 0.3 * i for i in range(7)]
    chart = xmr(base + rising, fix_after_n_points=12)
    assert [p.trend for p in chart.points[12:]] == [True] * 7
    assert all(p.signal_direction == "up" for p in chart.points[12:] if not p.astronomical)
    short = xmr(base + rising[:6], fix_after_n_points=12)
    assert not any(p.trend for p in short.points[12:])
    tied = xmr(base + rising[:3] + [rising[2]] + rising[3:6], fix_after_n_points=12)
    assert not any(p.trend for p in tied.points[12:])  # an equal value breaks a trend
    falling = xmr(base + list(reversed(rising)), fix_after_n_points=12, improvement_direction="increase")
    assert all(p.variation == "special_cause_concern" for p in falling.points[12:] if p.trend and not p.astronomical)


def test_two_of_three_beyond_two_sigma_on_the_same_side() -> None:
    base = stable_baseline(12)  # mean 10, mR̄ 2: 2σ at 10 ± 3.547, 3σ at 10 ± 5.32
    chart = xmr(base + [13.8, 10.5, 13.9, 10.4], fix_after_n_points=12, screen_outliers=False)
    flags = [p.two_of_three for p in chart.points[12:]]
    assert flags == [True, False, True, False]  # only the near-limit points are flagged
    assert chart.points[12].variation == "special_cause_improvement"
    opposite = xmr(base + [13.8, 10.5, 6.1], fix_after_n_points=12, screen_outliers=False)
    assert not any(p.two_of_three for p in opposite.points)  # sides never combine (0.2.2 fix)
    beyond = xmr(base + [13.8, 10.5, 16.0], fix_after_n_points=12, screen_outliers=False)
    assert not beyond.points[12].two_of_three  # a point beyond 3σ is astronomical, not "near"
    assert beyond.points[14].astronomical


def test_trend_outranks_shift_when_they_disagree() -> None:
    # Seven falling points all above the mean: shift says "up", trend says "down".
    chart = xmr(stable_baseline(12) + [13.0, 12.8, 12.6, 12.4, 12.2, 12.0, 11.8], fix_after_n_points=12, screen_outliers=False)
    after = chart.points[12:]
    assert all(p.shift and p.trend for p in after)
    assert all(p.signal_direction == "down" and p.variation == "special_cause_concern" for p in after)


def test_direction_decides_improvement_or_concern() -> None:
    values = stable_baseline(12) + [30.0]
    assert xmr(values, fix_after_n_points=12, improvement_direction="increase").latest_variation == "special_cause_improvement"
    assert xmr(values, fix_after_n_points=12, improvement_direction="decrease").latest_variation == "special_cause_concern"
    assert xmr(values, fix_after_n_points=12, improvement_direction="neutral").latest_variation == "special_cause_neither"


# ---------------------------------------------------------------------------------------------
# Assurance (ptd_calculate_assurance_type)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("direction", "target", "expected"),
    [
        ("increase", 20.0, "fail"),  # target above the upper limit: never reached
        ("increase", 0.0, "pass"),  # target below the lower limit: always met
        ("increase", 10.0, "hit_or_miss"),
        ("decrease", 20.0, "pass"),
        ("decrease", 0.0, "fail"),
        ("decrease", 10.0, "hit_or_miss"),
        ("neutral", 20.0, None),
        ("increase", None, None),
    ],
)
def test_assurance_against_the_latest_limits(
    direction: str, target: float | None, expected: str | None,
) -> None:
    assert xmr(stable_baseline(), improvement_direction=direction, target=target).assurance == expected


def test_assurance_uses_the_latest_segment() -> None:
    values = stable_baseline(12) + [float(40 + (i % 2)) for i in range(12)]
    assert xmr(values, rebase_at=[12], target=20.0).assurance == "pass"


# ---------------------------------------------------------------------------------------------
# Project status
# ---------------------------------------------------------------------------------------------
noisy_baselines = st.lists(st.floats(min_value=-100, max_value=100, allow_nan=False), min_size=8, max_size=30)


@PROPS
@given(
    baseline=noisy_baselines,
    after_length=st.integers(min_value=7, max_value=15),
    step_up=st.booleans(),
    jitter=st.floats(min_value=0.0, max_value=0.4),
)
def test_a_planted_three_sigma_step_is_flagged_and_judged_by_direction(
    baseline, after_length, step_up, jitter,
) -> None:
    reference = project_assessment(baseline, [], improvement_direction="increase", min_points_baseline=8, min_points_after=1)
    segment = reference.chart.segments[0]
    assume(segment.mean_moving_range is not None and segment.mean_moving_range > 1e-6)
    sigma = segment.mean_moving_range / 1.128
    sign = 1.0 if step_up else -1.0
    # Three sigma away, alternating by at most 0.4σ so no trend can form inside the step.
    after = [segment.mean + sign * 3.0 * sigma + (jitter if i % 2 else -jitter) * sigma for i in range(after_length)]
    for direction in ("increase", "decrease"):
        assessment = project_assessment(
            baseline, after, improvement_direction=direction, min_points_baseline=8, min_points_after=7
        )
        after_points = assessment.chart.points[len(baseline):]
        assert all(p.shift or p.astronomical for p in after_points)
        improved = (direction == "increase") == step_up
        assert assessment.status == ("improving" if improved else "worse")
        status = project_status(baseline, after, improvement_direction=direction, min_points_baseline=8, min_points_after=7)
        assert status == assessment.status


@PROPS
@given(
    baseline=st.lists(st.floats(min_value=-100, max_value=100, allow_nan=False), max_size=40),
    after=st.lists(st.floats(min_value=-100, max_value=100, allow_nan=False), max_size=40),
    min_points_baseline=st.integers(min_value=2, max_value=20),
    min_points_after=st.integers(min_value=1, max_value=20),
)
def test_too_few_points_says_too_few_responses(
    baseline, after, min_points_baseline, min_points_after,
) -> None:
    status = project_status(
        baseline,
        after,
        improvement_direction="increase",
        min_points_baseline=min_points_baseline,
        min_points_after=min_points_after,
    )
    too_few = len(baseline) < min_points_baseline or len(after) < min_points_after
    assert (status == "too_few_responses") == too_few


def test_no_change_when_the_after_period_is_common_cause() -> None:
    assessment = project_assessment(stable_baseline(), stable_baseline(8), improvement_direction="increase", min_points_baseline=12, min_points_after=6)
    assert assessment.status == "no_change" and assessment.improvement_signals == () and assessment.concern_signals == ()


def test_mixed_signals_resolve_to_worse_and_list_both() -> None:
    after = [30.0] + [8.5, 8.8] * 4  # one astronomical high, then a run of 8 below the mean
    assessment = project_assessment(stable_baseline(), after, improvement_direction="increase", min_points_baseline=12, min_points_after=6)
    assert assessment.status == "worse"
    assert assessment.improvement_signals == (20,)
    assert assessment.concern_signals == tuple(range(21, 29))
    assert "improvement" in assessment.reason


def test_a_run_must_lie_wholly_after_the_start() -> None:
    baseline = stable_baseline(16) + [10.5] * 4  # the baseline ends with four points above the mean
    after = [10.5] * 4
    assessment = project_assessment(baseline, after, improvement_direction="increase", min_points_baseline=12, min_points_after=4)
    assert assessment.status == "no_change"
    # The same numbers as one fixed-limit chart would show a shift straddling the start.
    straddling = xmr(baseline + after, fix_after_n_points=len(baseline))
    assert any(p.shift for p in straddling.points[len(baseline):])


def test_project_limits_come_from_the_baseline_only() -> None:
    assessment = project_assessment(stable_baseline(), [50.0] * 10, improvement_direction="decrease", min_points_baseline=12, min_points_after=6)
    baseline_segment, after_segment = assessment.chart.segments
    assert (after_segment.limits_from_start, after_segment.limits_from_stop) == (0, 20)
    assert after_segment.mean == baseline_segment.mean == pytest.approx(10.0)
    assert assessment.status == "worse"
    assert assessment.chart.points[20].moving_range == pytest.approx(41.0)  # 50 - 9: continuous across the start


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call",
    [
        lambda: xmr([1.0, math.nan]),
        lambda: xmr([1.0, math.inf]),
        lambda: xmr(["1"]),
        lambda: xmr([1.0] * 10, improvement_direction="up"),
        lambda: xmr([1.0] * 10, fix_after_n_points=3),
        lambda: xmr([1.0] * 10, rebase_at=[0]),
        lambda: xmr([1.0] * 10, rebase_at=[10]),
        lambda: xmr([1.0] * 10, rebase_at=[5, 3]),
        lambda: xmr([1.0] * 10, target=math.nan),
        lambda: xmr([1.0] * 10, min_points_for_limits=1),
        lambda: project_status([1.0] * 10, [1.0] * 10, improvement_direction="neutral", min_points_baseline=5, min_points_after=5),
        lambda: project_status([1.0] * 10, [1.0] * 10, improvement_direction="increase", min_points_baseline=1, min_points_after=5),
        lambda: project_status([1.0] * 10, [1.0] * 10, improvement_direction="increase", min_points_baseline=5, min_points_after=0),
    ],
)
def test_invalid_arguments_raise_value_error(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_constants_are_the_packages() -> None:
    assert PROCESS_LIMIT_FACTOR == 2.66
    assert NEAR_LIMIT_FACTOR == pytest.approx(2 * 2.66 / 3)
