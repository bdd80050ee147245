"""Did it work? A project's measure as an XmR chart, and its status: pure (no I/O).

This is the one computation of a project's status, for the funds service and for the portal
(``from services.funds.measure import assess``): it depends only on the standard library,
``shared.contracts.GrantMeasure`` and ``shared.stats.spc``, so any caller with the same
per-period tallies gets the same answer.

- **Points.** The measure is tallied per period (ISO week, Monday to Sunday, or calendar month,
  by the day the patient answered, UTC) over the grant's providers: for an FFT measure the
  answers (all of them, "Don't know" included: NHS England's denominator) and the positive
  (Very good, Good) or negative (Poor, Very poor) ones, as a percentage; for a PROM the mean
  post-operative score or the mean health gain (post - pre) on the instrument's own scale.
- **Which points.** Baseline: the whole periods inside ``[baseline_from, baseline_to]``.
  After: the whole periods from the project's start that have ended (the current period is
  partial, so it waits). A period with fewer than ``min_responses_per_point`` answers is left off
  the chart (shown, marked not included): one or two answers make a point of noise.
- **Status** (``shared.stats.spc.project_assessment``): limits (mean ± 2.66 × mean moving range)
  from the baseline only; Making Data Count's special-cause rules (a point outside the limits, a
  run of 7 on one side of the mean, a trend of 7, two of three beyond 2 sigma) judged over the
  after period alone, so a change already under way before the start is never credited.
  ``too_few_responses`` below ``min_points_baseline`` baseline or ``min_points_after`` after
  points; ``worse`` on any special-cause concern after the start (even beside improvement: public
  money must not hide a deterioration); ``improving`` on special-cause improvement alone;
  ``no_change`` otherwise. Nobody types a status in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from shared.contracts import FFT_MEASURES, GrantMeasure
from shared.periods import first_of_next_month, period_of
from shared.stats import spc

Interval = Literal["week", "month"]
Phase = Literal["baseline", "after"]

IMPROVEMENT_DIRECTION: dict[str, Literal["increase", "decrease"]] = {
    "fft_positive": "increase",
    "fft_negative": "decrease",
    "prom_health_gain": "increase",
    "prom_post_op_score": "increase",
}
MAX_PERIODS = 520  # ten years of weeks: a chart for people to read, and a bound on every series


# ---------------------------------------------------------------------------------------------
# Periods
# ---------------------------------------------------------------------------------------------
def period_start(interval: Interval, day: date) -> date:
    """The first day of the ISO week (Monday) or calendar month holding ``day``."""
    if interval == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def next_period(interval: Interval, start: date) -> date:
    if interval == "week":
        return start + timedelta(days=7)
    return first_of_next_month(start)


def period_label(interval: Interval, start: date) -> str:
    """``2026-W07`` (ISO week) or ``2026-02``."""
    if interval == "week":
        year, week, _ = start.isocalendar()
        return f"{year:04d}-W{week:02d}"
    return period_of(start)


def whole_periods(interval: Interval, first: date, last: date) -> list[date]:
    """The starts of the periods lying wholly inside ``[first, last]`` (days, inclusive)."""
    out: list[date] = []
    start = period_start(interval, first)
    if start < first:
        start = next_period(interval, start)
    while next_period(interval, start) - timedelta(days=1) <= last:
        out.append(start)
        if len(out) > MAX_PERIODS:
            raise ValueError(f"more than {MAX_PERIODS} periods between {first} and {last}")
        start = next_period(interval, start)
    return out


# ---------------------------------------------------------------------------------------------
# Tallies and the assessment
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tally:
    """One period's figures over the project's providers.

    FFT: ``responses`` answers, ``total`` of them positive (or negative); PROM: ``responses``
    scores (or gains) adding up to ``total``. Integers, so every caller sums them the same way.
    """

    period_start: date
    responses: int
    total: int


@dataclass(frozen=True)
class Thresholds:
    min_responses_per_point: int = 5
    min_points_baseline: int = 12
    min_points_after: int = 6


@dataclass(frozen=True)
class Point:
    period: str
    period_start: date
    phase: Phase
    responses: int
    value: float | None  # None: no answers at all
    included: bool  # False: fewer answers than min_responses_per_point, left off the chart
    variation: spc.Variation | None = None
    astronomical: bool = False
    shift: bool = False
    trend: bool = False
    two_of_three: bool = False


@dataclass(frozen=True)
class Assessment:
    status: spc.ProjectStatus
    reason: str
    improvement_direction: Literal["increase", "decrease"]
    unit: Literal["percent", "score"]
    baseline_points: int
    after_points: int
    excluded_points: int
    points: tuple[Point, ...]
    mean: float | None
    lower_process_limit: float | None
    upper_process_limit: float | None
    lower_two_sigma: float | None
    upper_two_sigma: float | None
    trial_limits: bool
    improvement_signals: int
    concern_signals: int
    baseline_signals: int
    thresholds: Thresholds


def value_of(measure_kind: str, responses: int, total: int) -> float | None:
    """A period's value: a percentage for an FFT share, a mean for a PROM."""
    if responses <= 0:
        return None
    if measure_kind in FFT_MEASURES:
        return 100.0 * total / responses
    return total / responses


def phases(measure: GrantMeasure, start_date: date, today: date) -> tuple[list[date], list[date]]:
    """(baseline period starts, after period starts): whole periods only, the after ones ended."""
    baseline = whole_periods(measure.interval, measure.baseline_from, measure.baseline_to)
    after = whole_periods(measure.interval, start_date, today - timedelta(days=1)) if start_date < today else []
    return baseline, after


def assess(measure: GrantMeasure, start_date: date, tallies: Iterable[Tally], *, today: date,
           thresholds: Thresholds = Thresholds()) -> Assessment:
    """The project's chart and status from its per-period tallies (periods outside its baseline
    and after windows are ignored; a period with no tally has no answers)."""
    by_start: dict[date, Tally] = {}
    for t in tallies:
        if t.responses < 0 or (t.total < 0 and measure.kind in FFT_MEASURES) or len(by_start) > 10 * MAX_PERIODS:
            raise ValueError(f"implausible tally {t}")
        by_start[t.period_start] = t
    baseline, after = phases(measure, start_date, today)
    if baseline and after and after[0] <= baseline[-1]:
        raise ValueError("the baseline must end before the project starts")
    rows: list[tuple[Phase, date, int, float | None, bool]] = []
    for phase, starts in (("baseline", baseline), ("after", after)):
        for s in starts:
            t = by_start.get(s)
            responses = t.responses if t else 0
            value = value_of(measure.kind, responses, t.total) if t else None
            rows.append((phase, s, responses, value, value is not None and responses >= thresholds.min_responses_per_point))  # type: ignore[arg-type]
    base_values = [v for phase, _, _, v, ok in rows if ok and phase == "baseline" and v is not None]
    after_values = [v for phase, _, _, v, ok in rows if ok and phase == "after" and v is not None]
    direction = IMPROVEMENT_DIRECTION[measure.kind]
    judged = spc.project_assessment(base_values, after_values, improvement_direction=direction,
                                    min_points_baseline=thresholds.min_points_baseline,
                                    min_points_after=thresholds.min_points_after)
    chart_points = iter(judged.chart.points)
    points: list[Point] = []
    for phase, s, responses, value, ok in rows:
        label = period_label(measure.interval, s)
        if not ok:
            points.append(Point(label, s, phase, responses, value, False))
            continue
        cp = next(chart_points)
        points.append(Point(label, s, phase, responses, value, True, cp.variation, cp.astronomical, cp.shift, cp.trend,
                            cp.two_of_three))
    limits = judged.chart.segments[0] if judged.chart.segments else None
    excluded = sum(1 for p in points if not p.included)
    reason = judged.reason + (f"; {excluded} period(s) left off with fewer than {thresholds.min_responses_per_point} answers"
                              if excluded else "")
    return Assessment(
        status=judged.status, reason=reason, improvement_direction=direction,
        unit="percent" if measure.kind in FFT_MEASURES else "score",
        baseline_points=judged.baseline_points, after_points=judged.after_points, excluded_points=excluded,
        points=tuple(points),
        mean=limits.mean if limits else None,
        lower_process_limit=limits.lower_process_limit if limits else None,
        upper_process_limit=limits.upper_process_limit if limits else None,
        lower_two_sigma=limits.lower_two_sigma if limits else None,
        upper_two_sigma=limits.upper_two_sigma if limits else None,
        trial_limits=bool(limits and limits.trial_limits),
        improvement_signals=len(judged.improvement_signals), concern_signals=len(judged.concern_signals),
        baseline_signals=len(judged.baseline_signals), thresholds=thresholds,
    )
