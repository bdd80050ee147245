"""XmR (individuals) charts as NHS England's "Making Data Count" applies them.

The rules follow the NHS-R Community's R package NHSRplotthedots (repository
nhs-r-community/NHSRplotthedots, version 0.2.2, read at commit 050b07d). What was found, where:

``R/ptd_spc_standard.R`` (limits)
    * ``limit <- 2.66``; ``limitclose <- 2 * (limit / 3)``.
      Process limits: mean ± 2.66 × mean moving range (mR̄).
      Near ("2 sigma") limits: mean ± (2/3 × 2.66) × mR̄ = mean ± 1.7733 × mR̄. This is the
      package's reading of 2σ with σ = mR̄ / 1.128 (2.66 = 3 / 1.128 rounded; 2/1.128 = 1.7730).
      We use the package's constants, so our limits match its output digit for digit.
    * The mean and the moving ranges use only the first ``fix_after_n_points`` points of each
      rebase group (``fix_y``); every point of the group is then judged against those limits.
    * Moving range mR_i = |x_i - x_(i-1)| within a group (none for a group's first point).
    * Screening of outlying moving ranges (``screen_outliers = TRUE`` by default): any mR that
      is not *strictly less than* 3.267 × mR̄ is dropped and mR̄ recomputed once (Nelson 1982;
      the ``vignettes/deviations.Rmd`` notes the Excel tools do not screen).
    * ``outside_limits``: value > upper or < lower process limit (strict).
      ``close_to_limits``: not outside, and value > upper or < lower near limit (strict).
      ``relative_to_mean``: sign(value - mean); a point exactly on the mean is on neither side.

``R/ptd_calculate_point_type.R`` (special-cause rules, applied per rebase group)
    * Astronomical: outside the process limits.
    * Shift: 7 consecutive points on the same side of the mean (``ptd_seven_point_one_side_mean``);
      all 7 (and any longer run) are flagged (``ptd_part_of_seven_trend``).
    * Trend: 7 consecutive points each strictly higher (or each strictly lower) than the one
      before (``ptd_seven_point_trend``); an equal value breaks a trend; all 7 are flagged.
    * Two of three: within 3 consecutive points all on the same side of the mean, at least 2
      are "close to limits" (beyond 2σ but not beyond 3σ); the close points are flagged
      (``ptd_two_in_three``, fixed in 0.2.2 so that opposite sides never combine).
    * A point's special-cause type is the first that applies of: astronomical, trend, two of
      three, shift (``case_when`` order). Its direction is the side of the mean for
      astronomical/two-of-three/shift and the direction of the trend for a trend.
    * ``ptd_point_type``: direction × improvement direction > 0 → special cause improvement,
      < 0 → concern; with a neutral direction, special cause high/low (here
      "special_cause_neither"); otherwise common cause.

``R/ptd_calculate_assurance_type.R`` (assurance icon, against the last point's limits)
    * No target, or a neutral direction → no assurance.
    * target > upper process limit: "consistent fail" when increase is better, else "consistent pass".
    * target < lower process limit: "consistent pass" when increase is better, else "consistent fail".
    * otherwise "inconsistent" (here ``pass`` / ``fail`` / ``hit_or_miss``).

``R/geom_ptd_icon.R``: the variation icon is the point type of the latest point.

``R/ptd_spc_options.R``: ``fix_after_n_points`` must be ≥ 12. ``R/ptd_add_short_group_warnings.R``
and ``vignettes/number-of-points-required.Rmd``: limits are computed from any number of points but
are "trial limits" below 12 points (the code's default threshold is 13 while its message and the
vignette say 12; we follow the documented 12). ``ptd_rebase`` starts a new group (fresh mean,
limits and rules) at each rebase date.

Where we differ, and why
------------------------
* Minimum points: NHSRplotthedots computes limits from any group (one point gives NaN in R).
  We compute none below ``min_points_for_limits`` (default 6: the package's vignette quotes
  Wheeler, "useful limits may be constructed with as few as five or six values"); those points
  get ``variation=None`` ("not assessed") rather than a misleading "common cause".
* ``fix_after_n_points`` may be below 12 (but not below ``min_points_for_limits``): the
  improvement-fund feature chooses its own baseline length; ``XmrSegment.trial_limits`` marks
  limits from fewer than 12 points, as the package's warning does.
* A constant baseline (mR̄ = 0) is not screened: the package would drop every mR (0 < 0 is
  false) and produce NaN limits; we keep zero-width limits, so any later change is astronomical.
* Trend direction: each trend point takes the direction of the run it belongs to; where an
  increasing and a decreasing run share their turning point the later run wins (as the
  package's right-hand rule does). The package takes a trend point's direction from the step
  to its right when that neighbour is also in a trend, so the last point of a rising trend
  followed by an equal value that starts a falling trend gets sign(0) and is labelled
  "Decreasing"; we label it by its own run (rising).
* Improvement projects (``project_status``): see its docstring; the package has no equivalent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

Variation = Literal["common_cause", "special_cause_improvement", "special_cause_concern", "special_cause_neither"]
Assurance = Literal["pass", "fail", "hit_or_miss"]
ImprovementDirection = Literal["increase", "decrease", "neutral"]
SignalDirection = Literal["up", "down"]
ProjectStatus = Literal["improving", "no_change", "worse", "too_few_responses"]

IMPROVEMENT_DIRECTIONS: tuple[str, ...] = ("increase", "decrease", "neutral")

PROCESS_LIMIT_FACTOR = 2.66  # 3 / d2 with d2 = 1.128 for moving ranges of two points
NEAR_LIMIT_FACTOR = 2.0 * PROCESS_LIMIT_FACTOR / 3.0  # the package's 2σ
MOVING_RANGE_SCREEN_FACTOR = 3.267  # D4 for n = 2: upper limit of the moving-range chart
SHIFT_LENGTH = 7
TREND_LENGTH = 7
TWO_OF_THREE_WINDOW = 3
TWO_OF_THREE_NEEDED = 2
TRIAL_LIMITS_BELOW_POINTS = 12
DEFAULT_MIN_POINTS_FOR_LIMITS = 6
ABSOLUTE_MIN_POINTS_FOR_LIMITS = 2  # one moving range needs two points
MAX_POINTS = 100_000  # a chart is read by people; a bigger series is a caller bug


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class XmrSegment:
    """One stretch of the chart with one set of limits.

    Points ``start``..``stop - 1`` are judged against limits computed from points
    ``limits_from_start``..``limits_from_stop - 1`` (the same segment's first points, or a
    project's baseline). All limit fields are None when too few points were available.
    """

    start: int
    stop: int
    limits_from_start: int
    limits_from_stop: int
    mean: float | None
    mean_moving_range: float | None
    lower_process_limit: float | None
    upper_process_limit: float | None
    lower_two_sigma: float | None
    upper_two_sigma: float | None
    moving_ranges_screened_out: int
    trial_limits: bool

    @property
    def has_limits(self) -> bool:
        return self.mean is not None

    @property
    def limit_points(self) -> int:
        return self.limits_from_stop - self.limits_from_start


@dataclass(frozen=True)
class XmrPoint:
    """One value with its limits, the rules it triggers and its classification.

    ``variation`` is None when its segment has no limits (not assessed). ``signal_direction``
    is the direction of the rule that decided ``variation`` (None for common cause).
    """

    index: int
    value: float
    segment: int
    moving_range: float | None
    mean: float | None
    lower_process_limit: float | None
    upper_process_limit: float | None
    lower_two_sigma: float | None
    upper_two_sigma: float | None
    astronomical: bool
    shift: bool
    trend: bool
    two_of_three: bool
    signal_direction: SignalDirection | None
    variation: Variation | None

    @property
    def special_cause(self) -> bool:
        return self.variation is not None and self.variation != "common_cause"


@dataclass(frozen=True)
class XmrChart:
    points: tuple[XmrPoint, ...]
    segments: tuple[XmrSegment, ...]
    improvement_direction: ImprovementDirection
    target: float | None
    latest_variation: Variation | None
    assurance: Assurance | None


@dataclass(frozen=True)
class ProjectAssessment:
    """``project_status`` with its evidence: the chart and the points that decided it.

    Indices refer to ``chart.points`` (baseline first, then the points after the start).
    """

    status: ProjectStatus
    chart: XmrChart
    baseline_points: int
    after_points: int
    improvement_signals: tuple[int, ...]
    concern_signals: tuple[int, ...]
    baseline_signals: tuple[int, ...]
    reason: str


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
def _require_values(values: Sequence[float]) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)):
        raise ValueError("values must be a sequence of numbers")
    checked: list[float] = []
    for position, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"values[{position}] must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"values[{position}] must be finite, got {value!r}")
        checked.append(float(value))
    if len(checked) > MAX_POINTS:
        raise ValueError(f"at most {MAX_POINTS} values, got {len(checked)}")
    return tuple(checked)


def _require_direction(improvement_direction: object) -> ImprovementDirection:
    if improvement_direction not in IMPROVEMENT_DIRECTIONS:
        raise ValueError(
            f"improvement_direction must be one of {IMPROVEMENT_DIRECTIONS}, got {improvement_direction!r}"
        )
    return improvement_direction  # type: ignore[return-value]


def _require_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _require_target(target: object) -> float | None:
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target):
        raise ValueError(f"target must be a finite number or None, got {target!r}")
    return float(target)


def _require_rebase_points(rebase_at: Sequence[int], length: int) -> tuple[int, ...]:
    starts: list[int] = []
    for position in rebase_at:
        position = _require_int("rebase_at entries", position, 1)
        if position >= length:
            raise ValueError(f"rebase_at entries must be < len(values) = {length}, got {position}")
        if starts and position <= starts[-1]:
            raise ValueError(f"rebase_at must be strictly increasing, got {tuple(rebase_at)}")
        starts.append(position)
    return tuple(starts)


# ---------------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Limits:
    mean: float
    mean_moving_range: float
    lower_process_limit: float
    upper_process_limit: float
    lower_two_sigma: float
    upper_two_sigma: float
    moving_ranges_screened_out: int


def _mean(numbers: Sequence[float]) -> float:
    # Correctly rounded (exact rational sum, one rounding): a constant series has exactly its
    # value as mean, so it sits on its zero-width limits instead of a rounding error away.
    return float(sum(map(Fraction, numbers), Fraction(0)) / len(numbers))


def _limits_from(baseline: Sequence[float], *, screen_outliers: bool) -> _Limits:
    """Mean and limits from ``baseline`` (at least two values) as ptd_spc_standard does."""
    moving_ranges = [abs(current - previous) for previous, current in zip(baseline, baseline[1:])]
    mean_moving_range = _mean(moving_ranges)
    screened_out = 0
    # With mR̄ = 0 there is nothing to screen (and screening would drop every range).
    if screen_outliers and mean_moving_range > 0.0:
        ceiling = MOVING_RANGE_SCREEN_FACTOR * mean_moving_range
        kept = [moving_range for moving_range in moving_ranges if moving_range < ceiling]
        screened_out = len(moving_ranges) - len(kept)
        # kept is never empty: at least one range is <= the mean < 3.267 × the mean.
        mean_moving_range = _mean(kept)
    centre = _mean(baseline)
    return _Limits(
        mean=centre,
        mean_moving_range=mean_moving_range,
        lower_process_limit=centre - PROCESS_LIMIT_FACTOR * mean_moving_range,
        upper_process_limit=centre + PROCESS_LIMIT_FACTOR * mean_moving_range,
        lower_two_sigma=centre - NEAR_LIMIT_FACTOR * mean_moving_range,
        upper_two_sigma=centre + NEAR_LIMIT_FACTOR * mean_moving_range,
        moving_ranges_screened_out=screened_out,
    )


# ---------------------------------------------------------------------------------------------
# Special-cause rules (each over one stretch of values judged against one set of limits)
# ---------------------------------------------------------------------------------------------
def _side_of_mean(values: Sequence[float], mean: float) -> list[int]:
    return [(value > mean) - (value < mean) for value in values]


def _runs(labels: Sequence[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of equal non-zero labels as (start, stop, label)."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for position in range(1, len(labels) + 1):
        if position == len(labels) or labels[position] != labels[start]:
            if labels[start] != 0:
                runs.append((start, position, labels[start]))
            start = position
    return runs


def _shift_flags(sides: Sequence[int]) -> list[int]:
    """+1/-1 for points in a run of SHIFT_LENGTH or more on one side of the mean, else 0."""
    flags = [0] * len(sides)
    for start, stop, side in _runs(sides):
        if stop - start >= SHIFT_LENGTH:
            flags[start:stop] = [side] * (stop - start)
    return flags


def _trend_flags(values: Sequence[float]) -> list[int]:
    """+1/-1 for points in TREND_LENGTH or more consecutive strict increases/decreases, else 0.

    A run of k steps covers k + 1 points. Runs are applied in order, so a turning point shared
    by an increasing and a decreasing run takes the later run's direction.
    """
    flags = [0] * len(values)
    steps = [(current > previous) - (current < previous) for previous, current in zip(values, values[1:])]
    for start, stop, direction in _runs(steps):
        points_in_run = stop - start + 1
        if points_in_run >= TREND_LENGTH:
            flags[start : stop + 1] = [direction] * points_in_run
    return flags


def _two_of_three_flags(values: Sequence[float], sides: Sequence[int], limits: _Limits) -> list[int]:
    """+1/-1 for near-limit points in a window of 3 on one side with at least 2 near the limits."""
    near = [
        limits.lower_process_limit <= value <= limits.upper_process_limit
        and (value > limits.upper_two_sigma or value < limits.lower_two_sigma)
        for value in values
    ]
    flags = [0] * len(values)
    for start in range(len(values) - TWO_OF_THREE_WINDOW + 1):
        window = range(start, start + TWO_OF_THREE_WINDOW)
        window_sides = {sides[position] for position in window}
        if len(window_sides) != 1 or 0 in window_sides:
            continue
        if sum(near[position] for position in window) >= TWO_OF_THREE_NEEDED:
            for position in window:
                if near[position]:
                    flags[position] = sides[position]
    return flags


def _classify(direction: int, improvement_direction: ImprovementDirection) -> Variation:
    if direction == 0:
        return "common_cause"
    if improvement_direction == "neutral":
        return "special_cause_neither"
    improving = direction > 0 if improvement_direction == "increase" else direction < 0
    return "special_cause_improvement" if improving else "special_cause_concern"


def _judge_stretch(
    values: Sequence[float], limits: _Limits, improvement_direction: ImprovementDirection
) -> list[tuple[bool, bool, bool, bool, int, Variation]]:
    """Per value: (astronomical, shift, trend, two_of_three, deciding direction, variation)."""
    sides = _side_of_mean(values, limits.mean)
    shifts = _shift_flags(sides)
    trends = _trend_flags(values)
    two_of_threes = _two_of_three_flags(values, sides, limits)
    judged = []
    for position, value in enumerate(values):
        astronomical = value > limits.upper_process_limit or value < limits.lower_process_limit
        # Precedence as in ptd_special_cause_type: astronomical, trend, two of three, shift.
        if astronomical:
            deciding = sides[position]
        elif trends[position]:
            deciding = trends[position]
        elif two_of_threes[position]:
            deciding = two_of_threes[position]
        else:
            deciding = shifts[position]
        judged.append(
            (
                astronomical,
                shifts[position] != 0,
                trends[position] != 0,
                two_of_threes[position] != 0,
                deciding,
                _classify(deciding, improvement_direction),
            )
        )
    return judged


# ---------------------------------------------------------------------------------------------
# Building a chart
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Stretch:
    """Points [start, stop) judged against limits from points [limits_start, limits_stop)."""

    start: int
    stop: int
    limits_start: int
    limits_stop: int


def _moving_ranges(values: Sequence[float], breaks: set[int]) -> list[float | None]:
    return [
        None if position == 0 or position in breaks else abs(values[position] - values[position - 1])
        for position in range(len(values))
    ]


def _build_chart(
    values: tuple[float, ...],
    stretches: Sequence[_Stretch],
    moving_range_breaks: set[int],
    *,
    improvement_direction: ImprovementDirection,
    target: float | None,
    screen_outliers: bool,
    min_points_for_limits: int,
) -> XmrChart:
    moving_ranges = _moving_ranges(values, moving_range_breaks)
    segments: list[XmrSegment] = []
    points: list[XmrPoint] = []
    for segment_number, stretch in enumerate(stretches):
        baseline = values[stretch.limits_start : stretch.limits_stop]
        enough = len(baseline) >= min_points_for_limits
        limits = _limits_from(baseline, screen_outliers=screen_outliers) if enough else None
        segments.append(_segment(stretch, limits))
        stretch_values = values[stretch.start : stretch.stop]
        if limits is None:
            points.extend(
                _unassessed_point(stretch.start + offset, value, segment_number, moving_ranges[stretch.start + offset])
                for offset, value in enumerate(stretch_values)
            )
            continue
        judgements = _judge_stretch(stretch_values, limits, improvement_direction)
        for offset, (value, judged) in enumerate(zip(stretch_values, judgements)):
            index = stretch.start + offset
            astronomical, shift, trend, two_of_three, deciding, variation = judged
            points.append(
                XmrPoint(
                    index=index,
                    value=value,
                    segment=segment_number,
                    moving_range=moving_ranges[index],
                    mean=limits.mean,
                    lower_process_limit=limits.lower_process_limit,
                    upper_process_limit=limits.upper_process_limit,
                    lower_two_sigma=limits.lower_two_sigma,
                    upper_two_sigma=limits.upper_two_sigma,
                    astronomical=astronomical,
                    shift=shift,
                    trend=trend,
                    two_of_three=two_of_three,
                    signal_direction=None if deciding == 0 else ("up" if deciding > 0 else "down"),
                    variation=variation,
                )
            )
    latest_variation = points[-1].variation if points else None
    assurance = _assurance(segments[-1] if segments else None, improvement_direction, target)
    return XmrChart(
        points=tuple(points),
        segments=tuple(segments),
        improvement_direction=improvement_direction,
        target=target,
        latest_variation=latest_variation,
        assurance=assurance,
    )


def _segment(stretch: _Stretch, limits: _Limits | None) -> XmrSegment:
    limit_points = stretch.limits_stop - stretch.limits_start
    return XmrSegment(
        start=stretch.start,
        stop=stretch.stop,
        limits_from_start=stretch.limits_start,
        limits_from_stop=stretch.limits_stop,
        mean=None if limits is None else limits.mean,
        mean_moving_range=None if limits is None else limits.mean_moving_range,
        lower_process_limit=None if limits is None else limits.lower_process_limit,
        upper_process_limit=None if limits is None else limits.upper_process_limit,
        lower_two_sigma=None if limits is None else limits.lower_two_sigma,
        upper_two_sigma=None if limits is None else limits.upper_two_sigma,
        moving_ranges_screened_out=0 if limits is None else limits.moving_ranges_screened_out,
        trial_limits=limits is not None and limit_points < TRIAL_LIMITS_BELOW_POINTS,
    )


def _unassessed_point(index: int, value: float, segment: int, moving_range: float | None) -> XmrPoint:
    return XmrPoint(
        index=index,
        value=value,
        segment=segment,
        moving_range=moving_range,
        mean=None,
        lower_process_limit=None,
        upper_process_limit=None,
        lower_two_sigma=None,
        upper_two_sigma=None,
        astronomical=False,
        shift=False,
        trend=False,
        two_of_three=False,
        signal_direction=None,
        variation=None,
    )


def _assurance(
    latest_segment: XmrSegment | None, improvement_direction: ImprovementDirection, target: float | None
) -> Assurance | None:
    """ptd_calculate_assurance_type against the latest segment's process limits."""
    if target is None or improvement_direction == "neutral" or latest_segment is None or not latest_segment.has_limits:
        return None
    increase_is_better = improvement_direction == "increase"
    # has_limits guarantees both limits; the checks keep the type checker honest.
    upper = latest_segment.upper_process_limit
    lower = latest_segment.lower_process_limit
    if upper is not None and target > upper:
        return "fail" if increase_is_better else "pass"
    if lower is not None and target < lower:
        return "pass" if increase_is_better else "fail"
    return "hit_or_miss"


def xmr(
    values: Sequence[float],
    *,
    improvement_direction: ImprovementDirection = "increase",
    fix_after_n_points: int | None = None,
    rebase_at: Sequence[int] = (),
    target: float | None = None,
    screen_outliers: bool = True,
    min_points_for_limits: int = DEFAULT_MIN_POINTS_FOR_LIMITS,
) -> XmrChart:
    """An XmR chart of ``values`` (in time order) with Making Data Count's rules.

    ``rebase_at``: indices where a new segment starts (fresh mean, limits and rules), as
    NHSRplotthedots' rebase dates. ``fix_after_n_points``: each segment's limits use only its
    first n points. Segments with fewer than ``min_points_for_limits`` limit points get no
    limits and their points ``variation=None``. An empty series gives an empty chart.
    """
    checked_values = _require_values(values)
    direction = _require_direction(improvement_direction)
    minimum = _require_int("min_points_for_limits", min_points_for_limits, ABSOLUTE_MIN_POINTS_FOR_LIMITS)
    if fix_after_n_points is not None:
        _require_int("fix_after_n_points", fix_after_n_points, minimum)
    if not isinstance(screen_outliers, bool):
        raise ValueError(f"screen_outliers must be a bool, got {screen_outliers!r}")
    checked_target = _require_target(target)
    starts = _require_rebase_points(rebase_at, len(checked_values))
    boundaries = (0, *starts, len(checked_values))
    stretches = [
        _Stretch(
            start=start,
            stop=stop,
            limits_start=start,
            limits_stop=stop if fix_after_n_points is None else min(stop, start + fix_after_n_points),
        )
        for start, stop in zip(boundaries, boundaries[1:])
        if stop > start
    ]
    return _build_chart(
        checked_values,
        stretches,
        set(starts),
        improvement_direction=direction,
        target=checked_target,
        screen_outliers=screen_outliers,
        min_points_for_limits=minimum,
    )


# ---------------------------------------------------------------------------------------------
# Did an improvement project improve?
# ---------------------------------------------------------------------------------------------
def project_assessment(
    baseline: Sequence[float],
    after: Sequence[float],
    *,
    improvement_direction: Literal["increase", "decrease"],
    min_points_baseline: int,
    min_points_after: int,
    screen_outliers: bool = True,
) -> ProjectAssessment:
    """Judge the points after a project started against limits fixed on its baseline.

    * Limits (mean, mR̄, 3σ and 2σ) come from the baseline only, as ``fix_after_n_points``
      would fix them, and do not move with the results.
    * The rules are run over the baseline and over the after period *separately*: a run of 7
      or a trend must lie wholly after the start to count, so a project cannot take credit
      for (or blame from) a drift that was already under way. The moving range is continuous
      across the start (one process, fixed limits); it is shown, never used for the limits.
    * too_few_responses: fewer than ``min_points_baseline`` baseline points or fewer than
      ``min_points_after`` after points. Nothing else is judged.
    * improving: at least one special-cause improvement after the start and no concern.
    * worse: any special-cause concern after the start, **even alongside improvement
      signals**. Mixed signals are resolved towards "worse" on purpose: the fund pays out of
      public money, one good month (or a cherry-picked run) must not outweigh evidence of
      deterioration, and a concern must never be hidden as "no change". Both kinds are listed
      in the result so a reviewer sees the mix (``improvement_signals``/``concern_signals``).
    * no_change: only common-cause variation after the start.

    Special causes inside the baseline do not decide anything, but are listed in
    ``baseline_signals``: an unstable baseline makes the limits themselves doubtful.
    """
    if improvement_direction not in ("increase", "decrease"):
        raise ValueError(
            f"a project needs improvement_direction 'increase' or 'decrease', got {improvement_direction!r}"
        )
    minimum_baseline = _require_int("min_points_baseline", min_points_baseline, ABSOLUTE_MIN_POINTS_FOR_LIMITS)
    minimum_after = _require_int("min_points_after", min_points_after, 1)
    baseline_values = _require_values(baseline)
    after_values = _require_values(after)
    values = baseline_values + after_values
    if len(values) > MAX_POINTS:
        raise ValueError(f"at most {MAX_POINTS} values in baseline and after together, got {len(values)}")
    start = len(baseline_values)
    stretches = [_Stretch(0, start, 0, start)] if start else []
    if after_values:
        stretches.append(_Stretch(start, len(values), 0, start))
    chart = _build_chart(
        values,
        stretches,
        set(),
        improvement_direction=improvement_direction,
        target=None,
        screen_outliers=screen_outliers,
        min_points_for_limits=minimum_baseline,
    )
    baseline_signals = tuple(point.index for point in chart.points[:start] if point.special_cause)
    improvement_signals = tuple(
        point.index for point in chart.points[start:] if point.variation == "special_cause_improvement"
    )
    concern_signals = tuple(point.index for point in chart.points[start:] if point.variation == "special_cause_concern")
    status, reason = _decide(
        len(baseline_values), len(after_values), minimum_baseline, minimum_after, improvement_signals, concern_signals
    )
    return ProjectAssessment(
        status=status,
        chart=chart,
        baseline_points=len(baseline_values),
        after_points=len(after_values),
        improvement_signals=improvement_signals,
        concern_signals=concern_signals,
        baseline_signals=baseline_signals,
        reason=reason,
    )


def _decide(
    baseline_points: int,
    after_points: int,
    minimum_baseline: int,
    minimum_after: int,
    improvement_signals: tuple[int, ...],
    concern_signals: tuple[int, ...],
) -> tuple[ProjectStatus, str]:
    if baseline_points < minimum_baseline:
        return "too_few_responses", f"baseline has {baseline_points} points; at least {minimum_baseline} needed"
    if after_points < minimum_after:
        return "too_few_responses", f"{after_points} points since the start; at least {minimum_after} needed"
    if concern_signals:
        mixed = f" (and {len(improvement_signals)} improvement)" if improvement_signals else ""
        return "worse", f"{len(concern_signals)} special-cause concern point(s) since the start{mixed}"
    if improvement_signals:
        return "improving", f"{len(improvement_signals)} special-cause improvement point(s) since the start"
    return "no_change", "only common-cause variation since the start"


def project_status(
    baseline: Sequence[float],
    after: Sequence[float],
    *,
    improvement_direction: Literal["increase", "decrease"],
    min_points_baseline: int,
    min_points_after: int,
) -> ProjectStatus:
    """The status from ``project_assessment`` (which also returns the chart it is computed from)."""
    return project_assessment(
        baseline,
        after,
        improvement_direction=improvement_direction,
        min_points_baseline=min_points_baseline,
        min_points_after=min_points_after,
    ).status
