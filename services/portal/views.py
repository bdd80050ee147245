"""View models: the plain, immutable values each page template renders from.

Pure: no HTTP, no FastAPI, no Jinja. The routes (later) fill them from the services' APIs and
``shared.stats``; tests fill them by hand. Each checks its own invariants when built (explicit
checks that survive ``python -O``), so a template never has to decide whether a figure is sane.

Rules that hold everywhere:
- Money is integer pence (``*_pence: int``), never float.
- A figure withheld by FFT suppression is the value ``SUPPRESSED`` (type ``Suppressed``), never a
  number with a flag beside it: the template filters render it as the word "suppressed" with a
  link to the explanation, and there is no number to leak. Suppressed points are left out of
  charts (a gap), and a suppressed provider gets no rank.
- Proportions are floats in [0, 1] (``positive_proportion``); the templates show percentages.
- Every list a page shows has a limit (``MAX_ROWS``): a longer one is paged by the route.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.portal import charts
from services.portal.charts import FunnelBand, Signal

MAX_ROWS = 1000
# How a league table row names where its provider sits on the funnel plot.
FUNNEL_BAND_TABLE_LABELS: dict[str, str] = {
    "within": "Within the limits",
    "high_95": "Above 95% limit",
    "high_998": "Above 99.8% limit",
    "low_95": "Below 95% limit",
    "low_998": "Below 99.8% limit",
}
MAX_EPISODES_PER_PAGE = 500
# Money axes carry labels like "£150,000": a wider left margin keeps the axis title clear of them.
MONEY_GEOMETRY = charts.Geometry(margin_left=96)
SUPPRESSION_HREF = "/#suppression"

_PERIOD = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
_QUARTER = re.compile(r"(\d{4})-Q([1-4])")
_WEEK = re.compile(r"(\d{4})-W(0[1-9]|[1-4]\d|5[0-3])")
_ODS_TRUST = re.compile(r"[A-Z0-9]{3,5}")
_REGION = re.compile(r"Y\d{2}")
_ICB = re.compile(r"Q[A-Z0-9]{2}")
_MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
                "October", "November", "December")


class ViewModelError(ValueError):
    """A view model was built from values that break its invariants (an upstream defect)."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ViewModelError(message)


@dataclass(frozen=True, slots=True)
class Suppressed:
    """A figure withheld from publication: 1-4 responses (primary) or to stop a hidden count
    being recovered by subtraction (secondary), as NHS England's FFT publication does."""

    reason: str = "primary"

    def __post_init__(self) -> None:
        _require(self.reason in ("primary", "secondary"), f"unknown suppression reason {self.reason!r}")

    def __str__(self) -> str:  # never a number, even by accident
        return "suppressed"


SUPPRESSED = Suppressed()
SUPPRESSED_SECONDARY = Suppressed("secondary")

Count = int | Suppressed
Proportion = float | Suppressed


def is_suppressed(value: object) -> bool:
    return isinstance(value, Suppressed)


# ---------------------------------------------------------------------------------------------
# Periods


def parse_quarter(text: str) -> tuple[int, int]:
    """'2026-Q3' -> (2026, 3); ViewModelError for anything else."""
    m = _QUARTER.fullmatch(text or "")
    _require(m is not None, f"a quarter is written YYYY-Qn, got {text!r}")
    assert m is not None  # for the type checker; _require has checked
    return int(m.group(1)), int(m.group(2))


def quarter_months(text: str) -> tuple[str, str, str]:
    """The three periods (YYYY-MM) of a quarter: '2026-Q3' -> ('2026-07', '2026-08', '2026-09')."""
    year, q = parse_quarter(text)
    first = 3 * (q - 1) + 1
    return tuple(f"{year}-{m:02d}" for m in range(first, first + 3))  # type: ignore[return-value]


def period_label(period: str) -> str:
    """'2026-10' -> 'October 2026'; '2026-Q3' -> 'July to September 2026'; '2026-W05' -> 'Week 5 of 2026'."""
    m = _PERIOD.fullmatch(period)
    if m:
        return f"{_MONTH_NAMES[int(m.group(2)) - 1]} {m.group(1)}"
    w = _WEEK.fullmatch(period)
    if w:
        return f"Week {int(w.group(2))} of {w.group(1)}"
    year, q = parse_quarter(period)
    return f"{_MONTH_NAMES[3 * q - 3]} to {_MONTH_NAMES[3 * q - 1]} {year}"


def short_period_label(period: str) -> str:
    """'2026-10' -> 'Oct 2026', '2026-W05' -> 'W5 2026' (chart axes)."""
    m = _PERIOD.fullmatch(period)
    if m is None:
        w = _WEEK.fullmatch(period)
        _require(w is not None, f"a period is written YYYY-MM or YYYY-Www, got {period!r}")
        assert w is not None
        return f"W{int(w.group(2))} {w.group(1)}"
    return f"{_MONTH_NAMES[int(m.group(2)) - 1][:3]} {m.group(1)}"


def quarter_of_month(period: str) -> str:
    """'2026-08' -> '2026-Q3'."""
    m = _PERIOD.fullmatch(period)
    _require(m is not None, f"a period is written YYYY-MM, got {period!r}")
    assert m is not None
    return f"{m.group(1)}-Q{(int(m.group(2)) - 1) // 3 + 1}"


def shift_quarter(quarter: str, by: int) -> str:
    """'2026-Q1' shifted by -1 -> '2025-Q4'."""
    year, q = parse_quarter(quarter)
    index = year * 4 + (q - 1) + by
    return f"{index // 4}-Q{index % 4 + 1}"


# ---------------------------------------------------------------------------------------------
# Layout


@dataclass(frozen=True, slots=True)
class NavItem:
    key: str
    text: str
    href: str


NAVIGATION: tuple[NavItem, ...] = (
    NavItem("home", "About the trial", "/"),
    NavItem("league-table", "League table", "/league-table"),
    NavItem("finance", "Finance", "/finance"),
)


@dataclass(frozen=True, slots=True)
class Breadcrumb:
    text: str
    href: str


@dataclass(frozen=True, slots=True)
class Layout:
    """What the base layout needs besides the page: the current navigation item, sign-in state."""

    current_nav: str | None = None
    signed_in: bool = False
    development_mode: bool = False
    breadcrumbs: tuple[Breadcrumb, ...] = ()
    navigation: tuple[NavItem, ...] = NAVIGATION
    wide: bool = False  # the full width of the window (the league table: a table beside a chart)
    csrf_token: str = ""  # for the sign-out form (development)

    def __post_init__(self) -> None:
        keys = {item.key for item in self.navigation}
        _require(self.current_nav is None or self.current_nav in keys, f"unknown navigation item {self.current_nav!r}")


# ---------------------------------------------------------------------------------------------
# Public pages


@dataclass(frozen=True, slots=True)
class RegionLink:
    code: str
    name: str

    def __post_init__(self) -> None:
        _require(bool(_REGION.fullmatch(self.code)), f"a region code is Y and two digits, got {self.code!r}")


@dataclass(frozen=True, slots=True)
class HomePage:
    title: str = "Patient power payments: how providers are doing"
    latest_quarter: str | None = None
    regions: tuple[RegionLink, ...] = ()
    at_risk_bps: int = 1000  # the default share of a payment at risk (10%)
    min_responses_per_period: int = 30

    def __post_init__(self) -> None:
        if self.latest_quarter is not None:
            parse_quarter(self.latest_quarter)
        _require(0 <= self.at_risk_bps <= 10_000, "at_risk_bps must be 0..10000")

    @property
    def at_risk_percent_text(self) -> str:
        return charts.format_percent(self.at_risk_bps / 10_000)


@dataclass(frozen=True, slots=True)
class Interval:
    """A 95% confidence interval of a proportion (Wilson), both ends in [0, 1]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        _require(_is_proportion(self.low) and _is_proportion(self.high) and self.low <= self.high,
                 f"an interval is 0 <= low <= high <= 1, got {self.low}..{self.high}")


@dataclass(frozen=True, slots=True)
class HealthGain:
    """A provider's PROM average health gain for one instrument and procedure (None: too few
    pairs to publish the average; the count of pairs is published)."""

    instrument: str  # e.g. "Oxford Hip Score"
    procedure: str  # e.g. "primary hip replacement"
    pairs: int
    average: float | None
    scale: str  # e.g. "0 to 48, higher is better"

    def __post_init__(self) -> None:
        _require(_is_count(self.pairs), "pairs must be a count")
        _require(self.average is None or (isinstance(self.average, int | float) and math.isfinite(self.average)),
                 "an average health gain is a finite number")

    @property
    def text(self) -> str:
        what = f"{self.instrument}, {self.procedure}"
        if self.average is None:
            return f"{what}: not published, {self.pairs} {'pair' if self.pairs == 1 else 'pairs'} (too few)"
        return f"{what}: {self.average:+.1f} ({self.pairs} pairs; {self.scale})"


@dataclass(frozen=True, slots=True)
class LeagueTableRow:
    """One provider in a quarter's league table. Suppressed: responses and % positive both are
    (a provider whose count is hidden cannot show a percentage of it), with no rank, interval or
    funnel band."""

    ods_code: str
    provider_name: str
    responses: Count
    positive_proportion: Proportion
    interval_95: Interval | None
    funnel_band: FunnelBand | None
    rank: int | None
    eligible_episodes: int | None = None  # episodes of care in the quarter (payments); None: not known
    response_rate: float | Suppressed | None = None  # responses / eligible episodes; None: no eligible episodes
    health_gain: tuple[HealthGain, ...] = ()

    def __post_init__(self) -> None:
        _check_ods(self.ods_code)
        _require(self.eligible_episodes is None or _is_count(self.eligible_episodes), "eligible episodes must be a count")
        if self.response_rate is not None and not is_suppressed(self.response_rate):
            _require(isinstance(self.response_rate, int | float) and math.isfinite(self.response_rate)
                     and self.response_rate >= 0, f"{self.ods_code}: a response rate is a number >= 0")
        if is_suppressed(self.responses) or is_suppressed(self.positive_proportion):
            _require(is_suppressed(self.responses) and is_suppressed(self.positive_proportion),
                     f"{self.ods_code}: suppress responses and % positive together")
            _require(self.rank is None and self.interval_95 is None and self.funnel_band is None,
                     f"{self.ods_code}: a suppressed provider has no rank, interval or funnel band")
            # a rate of a hidden count, times the published eligible episodes, would give it away
            _require(self.response_rate is None or is_suppressed(self.response_rate),
                     f"{self.ods_code}: a suppressed provider's response rate is suppressed")
            return
        _require(_is_count(self.responses) and self.responses > 0, f"{self.ods_code}: responses must be a count > 0")
        _require(_is_proportion(self.positive_proportion), f"{self.ods_code}: % positive must be a proportion")
        _require(self.interval_95 is not None and self.funnel_band is not None and self.rank is not None,
                 f"{self.ods_code}: a published provider has a rank, an interval and a funnel band")
        assert self.interval_95 is not None and self.rank is not None
        _require(self.interval_95.low <= self.positive_proportion <= self.interval_95.high,
                 f"{self.ods_code}: % positive lies outside its own interval")
        _require(self.rank >= 1, f"{self.ods_code}: ranks start at 1")

    @property
    def suppressed(self) -> bool:
        return is_suppressed(self.responses)

    @property
    def href(self) -> str:
        return f"/providers/{self.ods_code}"


@dataclass(frozen=True, slots=True)
class LeagueTablePage:
    quarter: str
    benchmark_proportion: float
    rows: tuple[LeagueTableRow, ...]
    funnel_limits: tuple[charts.FunnelLimit, ...]
    setting: str = "all settings"
    previous_quarter: str | None = None
    next_quarter: str | None = None
    csv_href: str | None = None
    prom_min_pairs: int | None = None  # the PROM publication's minimum pairs; None: no PROM column

    def __post_init__(self) -> None:
        parse_quarter(self.quarter)
        for q in (self.previous_quarter, self.next_quarter):
            if q is not None:
                parse_quarter(q)
        _require(_is_proportion(self.benchmark_proportion), "the benchmark must be a proportion")
        _require(len(self.rows) <= MAX_ROWS, f"at most {MAX_ROWS} rows")
        codes = [r.ods_code for r in self.rows]
        _require(len(codes) == len(set(codes)), "a provider appears twice in the league table")
        ranks = [r.rank for r in self.rows if r.rank is not None]
        _require(ranks == sorted(ranks), "rows must be in rank order")
        seen_suppressed = False
        for r in self.rows:
            seen_suppressed = seen_suppressed or r.suppressed
            _require(not (seen_suppressed and not r.suppressed), "suppressed providers come after the ranked ones")

    @property
    def title(self) -> str:
        return f"League table: {period_label(self.quarter)}"

    @property
    def published_rows(self) -> tuple[LeagueTableRow, ...]:
        return tuple(r for r in self.rows if not r.suppressed)

    @property
    def suppressed_count(self) -> int:
        return sum(1 for r in self.rows if r.suppressed)

    def funnel_points(self) -> list[charts.FunnelPoint]:
        return [
            charts.FunnelPoint(label=r.ods_code, responses=int(r.responses), proportion=float(r.positive_proportion),
                               band=r.funnel_band or "within")
            for r in self.published_rows
        ]

    def funnel_description(self) -> str:
        rows = self.published_rows
        if not rows:
            return f"No provider has published figures for {period_label(self.quarter)}."
        outside = [r for r in rows if r.funnel_band in ("high_998", "low_998")]
        text = (
            f"Funnel plot of % positive against number of responses for {len(rows)} providers, "
            f"{period_label(self.quarter)}, around the benchmark of {charts.format_percent(self.benchmark_proportion)} "
            f"with 95% and 99.8% control limits."
        )
        if outside:
            named = ", ".join(
                f"{r.provider_name} ({'above' if r.funnel_band == 'high_998' else 'below'})" for r in outside[:10])
            more = f" and {len(outside) - 10} more (see the table)" if len(outside) > 10 else ""
            text += f" Outside the 99.8% limits: {named}{more}."
        else:
            text += " No provider is outside the 99.8% limits."
        if self.suppressed_count:
            n = self.suppressed_count
            text += f" {n} suppressed {'provider is' if n == 1 else 'providers are'} not plotted."
        return text

    def funnel_chart(self) -> str:
        return charts.funnel_plot(
            self.funnel_points(), self.funnel_limits, benchmark=self.benchmark_proportion,
            title=f"Funnel plot: % positive by number of responses, {period_label(self.quarter)}",
            description=self.funnel_description(), chart_id="league-funnel", y_label="% positive",
            value_format=charts.format_percent, y_bounds=(0.0, 1.0),
        )


@dataclass(frozen=True, slots=True)
class SpecialCause:
    """A special-cause signal on one month: its kind and the rule that found it."""

    kind: Signal
    rule: str  # e.g. "point outside the process limits", "run of 7 above the mean"

    def __post_init__(self) -> None:
        _require(self.kind in charts.SIGNALS, f"unknown signal {self.kind!r}")
        _require(bool(self.rule), "a signal names its rule")

    @property
    def label(self) -> str:
        return charts.SIGNAL_LABELS[self.kind]


@dataclass(frozen=True, slots=True)
class FftMonth:
    """One month (or ISO week) of a provider's FFT % positive, with the XmR limits in force then.

    ``positive_proportion`` None: no responses that period (nothing to plot, not suppressed).
    ``mean`` and the limits None: too few periods for limits yet (the chart shows the points only)."""

    period: str
    responses: Count
    positive_proportion: Proportion | None
    mean: float | None
    lower_limit: float | None
    upper_limit: float | None
    lower_2sigma: float | None = None
    upper_2sigma: float | None = None
    special_cause: SpecialCause | None = None

    def __post_init__(self) -> None:
        _check_period_or_week(self.period)
        limits = (self.mean, self.lower_limit, self.upper_limit)
        _require(all(v is None for v in limits) or all(isinstance(v, int | float) and math.isfinite(v) for v in limits),
                 f"{self.period}: the mean and both process limits, or none of them")
        if is_suppressed(self.responses) or is_suppressed(self.positive_proportion):
            _require(is_suppressed(self.responses) and is_suppressed(self.positive_proportion),
                     f"{self.period}: suppress responses and % positive together")
            _require(self.special_cause is None, f"{self.period}: a suppressed month cannot carry a signal")
        else:
            _require(_is_count(self.responses), f"{self.period}: responses must be a count")
            if self.positive_proportion is None:
                _require(self.responses == 0 and self.special_cause is None, f"{self.period}: % positive is missing")
            else:
                _require(_is_proportion(self.positive_proportion), f"{self.period}: % positive must be a proportion")
                _require(self.responses > 0, f"{self.period}: a % positive needs responses")

    @property
    def suppressed(self) -> bool:
        return is_suppressed(self.responses)

    @property
    def plotted(self) -> bool:
        return not self.suppressed and self.positive_proportion is not None

    @property
    def has_limits(self) -> bool:
        return self.mean is not None

    def xmr_point(self) -> charts.XmrPoint:
        return charts.XmrPoint(
            label=short_period_label(self.period),
            value=float(self.positive_proportion) if self.plotted else None,  # type: ignore[arg-type]
            mean=self.mean, lower_limit=self.lower_limit, upper_limit=self.upper_limit,
            lower_2sigma=self.lower_2sigma if self.has_limits else None,
            upper_2sigma=self.upper_2sigma if self.has_limits else None,
            signal=self.special_cause.kind if self.special_cause else None,
        )


@dataclass(frozen=True, slots=True)
class BreakdownRow:
    """One part of a provider's quarter (a care setting, a mode of collection, a site)."""

    label: str
    responses: Count
    positive_percent: int | Suppressed | None  # whole percent as published; None: no responses

    def __post_init__(self) -> None:
        _require(bool(self.label), "a breakdown row has a label")
        if is_suppressed(self.responses):
            return  # a secondary-suppressed part keeps its whole-number percentage, as NHS England publishes
        _require(_is_count(self.responses), f"{self.label}: responses must be a count")
        _require(self.positive_percent is None or is_suppressed(self.positive_percent)
                 or (_is_count(self.positive_percent) and self.positive_percent <= 100), f"{self.label}: a whole percent")


@dataclass(frozen=True, slots=True)
class ProviderQuarter:
    """A provider's FFT figures for one quarter as the national publication gives them: against
    the previous quarter, with its response rate and its parts."""

    quarter: str
    responses: Count
    positive_percent: int | Suppressed | None
    previous_quarter: str
    previous_responses: Count
    previous_positive_percent: int | Suppressed | None
    eligible_episodes: int | None
    response_rate: float | Suppressed | None
    by_setting: tuple[BreakdownRow, ...] = ()
    by_mode: tuple[BreakdownRow, ...] = ()
    by_site: tuple[BreakdownRow, ...] = ()

    def __post_init__(self) -> None:
        parse_quarter(self.quarter)
        parse_quarter(self.previous_quarter)
        if is_suppressed(self.responses):
            _require(self.response_rate is None or is_suppressed(self.response_rate),
                     "a suppressed quarter's response rate is suppressed")
        _require(self.eligible_episodes is None or _is_count(self.eligible_episodes), "eligible episodes must be a count")

    @property
    def change_text(self) -> str:
        """The change in % positive from the previous quarter, in words (never from a withheld figure)."""
        now, before = self.positive_percent, self.previous_positive_percent
        if not isinstance(now, int) or not isinstance(before, int) or isinstance(now, bool) or isinstance(before, bool):
            return "No comparison"
        diff = now - before
        if diff == 0:
            return "No change"
        return f"{'Up' if diff > 0 else 'Down'} {abs(diff)} percentage {'point' if abs(diff) == 1 else 'points'}"


@dataclass(frozen=True, slots=True)
class MoneyMonth:
    """A provider's at-risk money for one month: released, diverted, and what is still held
    (a month not settled yet). Released + diverted never exceeds what was put at risk."""

    period: str
    at_risk_pence: int
    released_pence: int
    diverted_pence: int

    def __post_init__(self) -> None:
        _check_period(self.period)
        for name in ("at_risk_pence", "released_pence", "diverted_pence"):
            _check_pence(getattr(self, name), name, minimum=0)
        _require(self.released_pence + self.diverted_pence <= self.at_risk_pence,
                 f"{self.period}: released + diverted exceeds what was held")

    @property
    def still_held_pence(self) -> int:
        return self.at_risk_pence - self.released_pence - self.diverted_pence


@dataclass(frozen=True, slots=True)
class AppealMonth:
    """Appeals against one month's diversions (counts only: no episode is named in public)."""

    period: str
    lodged: int
    upheld: int
    rejected: int
    returned_pence: int

    def __post_init__(self) -> None:
        _check_period(self.period)
        for name in ("lodged", "upheld", "rejected"):
            _require(_is_count(getattr(self, name)), f"{name} must be a count >= 0")
        _check_pence(self.returned_pence, "returned_pence", minimum=0)
        _require(self.upheld + self.rejected <= self.lodged, f"{self.period}: more appeals decided than lodged")

    @property
    def pending(self) -> int:
        return self.lodged - self.upheld - self.rejected


@dataclass(frozen=True, slots=True)
class ProviderPage:
    ods_code: str
    provider_name: str
    region_code: str
    region_name: str
    fft_months: tuple[FftMonth, ...]
    money_months: tuple[MoneyMonth, ...]
    appeals: tuple[AppealMonth, ...] = ()
    interval: str = "month"  # the FFT chart's periods: "month" or "week"
    quarter: ProviderQuarter | None = None

    def __post_init__(self) -> None:
        _require(self.interval in ("month", "week"), "the interval is month or week")
        _check_ods(self.ods_code)
        _require(bool(_REGION.fullmatch(self.region_code)), f"bad region code {self.region_code!r}")
        for months in (self.fft_months, self.money_months, self.appeals):
            _require(len(months) <= MAX_ROWS, f"at most {MAX_ROWS} months")
            periods = [m.period for m in months]
            _require(periods == sorted(set(periods)), "months must be in order, each once")

    @property
    def title(self) -> str:
        return f"{self.provider_name} ({self.ods_code})"

    @property
    def other_interval(self) -> str:
        return "week" if self.interval == "month" else "month"

    def fft_description(self) -> str:
        months = self.fft_months
        if not months:
            return f"No Friends and Family Test results for {self.provider_name} yet."
        plotted = [m for m in months if m.plotted]
        text = (f"XmR chart of Friends and Family Test % positive for {self.provider_name} by {self.interval}, "
                f"{period_label(months[0].period)} to {period_label(months[-1].period)}.")
        last = months[-1]
        if last.has_limits:
            text += (f" Mean {charts.format_percent(last.mean)}, process limits {charts.format_percent(last.lower_limit)} "  # type: ignore[arg-type]
                     f"to {charts.format_percent(last.upper_limit)}.")  # type: ignore[arg-type]
        else:
            text += " Too few results yet for process limits."
        signals = [m for m in plotted if m.special_cause][-12:]  # the latest twelve; the table has all
        if signals:
            text += " Special cause variation: " + "; ".join(
                f"{period_label(m.period)} ({m.special_cause.label.lower()}, {m.special_cause.rule})"  # type: ignore[union-attr]
                for m in signals) + "."
        else:
            text += " No special cause variation."
        hidden = sum(1 for m in months if m.suppressed)
        if hidden:
            text += f" {hidden} suppressed {self.interval}{' is' if hidden == 1 else 's are'} not plotted."
        return text

    def fft_chart(self) -> str:
        return charts.xmr_chart(
            [m.xmr_point() for m in self.fft_months],
            title=f"Friends and Family Test % positive by {self.interval}: {self.provider_name}",
            description=self.fft_description(), chart_id="provider-fft-xmr", y_label="% positive",
            value_format=charts.format_percent, y_bounds=(0.0, 1.0),
        )

    def money_description(self) -> str:
        if not self.money_months:
            return f"No payments held for {self.provider_name} yet."
        released = sum(m.released_pence for m in self.money_months)
        diverted = sum(m.diverted_pence for m in self.money_months)
        held = sum(m.still_held_pence for m in self.money_months)
        return (f"Stacked bars of the money held back from {self.provider_name} each month, "
                f"{period_label(self.money_months[0].period)} to {period_label(self.money_months[-1].period)}: "
                f"released to the provider {format_pence_text(released)}, diverted to the improvement fund "
                f"{format_pence_text(diverted)}, still held {format_pence_text(held)}.")

    def money_chart(self) -> str:
        months = self.money_months
        return charts.stacked_bar_chart(
            [short_period_label(m.period) for m in months],
            money_series(months),
            title=f"Money held, released and diverted by month: {self.provider_name}",
            description=self.money_description(), chart_id="provider-money", y_label="Pounds",
            value_format=charts.format_pounds, geometry=MONEY_GEOMETRY,
        )


def money_series(months: Sequence[MoneyMonth]) -> list[charts.BarSeries]:
    """Released (solid blue), diverted (hatched orange), still held (dotted grey), bottom-up."""
    return [
        charts.BarSeries("Released to provider", [float(m.released_pence) for m in months], charts.NHS_BLUE, "solid"),
        charts.BarSeries("Diverted to fund", [float(m.diverted_pence) for m in months], charts.NHS_ORANGE, "hatch"),
        charts.BarSeries("Still held", [float(m.still_held_pence) for m in months], charts.NHS_DARK_GREY, "dots"),
    ]


@dataclass(frozen=True, slots=True)
class BalancePoint:
    period: str
    balance_pence: int

    def __post_init__(self) -> None:
        _check_period(self.period)
        _check_pence(self.balance_pence, "balance_pence", minimum=0)  # a fund never goes below zero


GRANT_STATUS_LABELS: dict[str, str] = {
    "reserving": "Approved, money being reserved", "reserved": "Approved, money reserved", "completed": "Completed",
    "cancelled": "Cancelled (the unpaid rest returned to the fund)"}
MEASURE_STATUS_LABELS: dict[str, str] = {
    "improving": "Improving", "no_change": "No change yet", "worse": "Worse", "too_few_responses": "Too few responses to say"}


@dataclass(frozen=True, slots=True)
class GrantRow:
    """One approved improvement grant from the region's fund: its money and what its measure shows
    (computed by the funds service from live feedback, never typed in)."""

    grant_id: str
    title: str
    providers: tuple[tuple[str, str], ...]  # (ODS code, name)
    status: str
    amount_pence: int
    paid_pence: int
    measure_status: str

    def __post_init__(self) -> None:
        _require(self.status in GRANT_STATUS_LABELS, f"unknown grant status {self.status!r}")
        _require(self.measure_status in MEASURE_STATUS_LABELS, f"unknown measure status {self.measure_status!r}")
        _check_pence(self.amount_pence, "amount_pence", minimum=1)
        _check_pence(self.paid_pence, "paid_pence", minimum=0)
        _require(self.paid_pence <= self.amount_pence, f"{self.grant_id}: paid more than the grant")
        for ods, _ in self.providers:
            _check_ods(ods)

    @property
    def status_label(self) -> str:
        return GRANT_STATUS_LABELS[self.status]

    @property
    def measure_label(self) -> str:
        return MEASURE_STATUS_LABELS[self.measure_status]


@dataclass(frozen=True, slots=True)
class InflowRow:
    """What one provider's patients diverted into the region's fund, and what appeals returned."""

    ods_code: str
    provider_name: str
    diverted_pence: int
    returned_pence: int = 0

    def __post_init__(self) -> None:
        _check_ods(self.ods_code)
        _check_pence(self.diverted_pence, "diverted_pence", minimum=0)
        _check_pence(self.returned_pence, "returned_pence", minimum=0)
        _require(self.returned_pence <= self.diverted_pence, f"{self.ods_code}: returned more than was diverted")

    @property
    def net_pence(self) -> int:
        return self.diverted_pence - self.returned_pence


@dataclass(frozen=True, slots=True)
class RegionPage:
    region_code: str
    region_name: str
    balances: tuple[BalancePoint, ...]  # the fund's balance at each month end
    inflows: tuple[InflowRow, ...]
    period_from: str
    period_to: str
    grants: tuple[GrantRow, ...] | None = ()  # None: the funds service did not answer
    more_grants: bool = False  # more approved grants than the page shows

    def __post_init__(self) -> None:
        _require(bool(_REGION.fullmatch(self.region_code)), f"bad region code {self.region_code!r}")
        _require(self.grants is None or len(self.grants) <= MAX_ROWS, f"at most {MAX_ROWS} grants")
        _check_period(self.period_from)
        _check_period(self.period_to)
        _require(self.period_from <= self.period_to, "period_from is after period_to")
        _require(len(self.balances) <= MAX_ROWS and len(self.inflows) <= MAX_ROWS, f"at most {MAX_ROWS} rows")
        periods = [b.period for b in self.balances]
        _require(periods == sorted(set(periods)), "balances must be in order, one per month")

    @property
    def title(self) -> str:
        return f"{self.region_name} improvement fund"

    @property
    def total_net_pence(self) -> int:
        return sum(r.net_pence for r in self.inflows)

    def balance_description(self) -> str:
        if not self.balances:
            return f"The {self.region_name} improvement fund has no balance history yet."
        first, last = self.balances[0], self.balances[-1]
        return (f"Line chart of the {self.region_name} improvement fund's balance at each month end, "
                f"{period_label(first.period)} to {period_label(last.period)}: from "
                f"{format_pence_text(first.balance_pence)} to {format_pence_text(last.balance_pence)}.")

    def balance_chart(self) -> str:
        return charts.line_chart(
            [short_period_label(b.period) for b in self.balances],
            [float(b.balance_pence) for b in self.balances],
            title=f"Balance of the {self.region_name} improvement fund by month end",
            description=self.balance_description(), chart_id="region-balance", y_label="Pounds",
            series_label="Fund balance at month end", value_format=charts.format_pounds, geometry=MONEY_GEOMETRY,
        )


# ---------------------------------------------------------------------------------------------
# Finance pages (behind sign-in: figures here are not suppressed; the user's token scopes them)


@dataclass(frozen=True, slots=True)
class EpisodeLine:
    """One episode of care in a settlement statement: what was at risk and where it went."""

    episode_id: str
    commissioner_code: str
    amount_pence: int
    at_risk_pence: int
    released_pence: int
    diverted_pence: int
    answer: str | None  # the patient's answer as the scheme read it; None: no answer
    decision: str  # e.g. "released in full", "diverted 50%", "minimum sample: released"

    def __post_init__(self) -> None:
        _require(bool(self.episode_id) and len(self.episode_id) <= 200, "episode_id must be 1-200 characters")
        for name in ("amount_pence", "at_risk_pence", "released_pence", "diverted_pence"):
            _check_pence(getattr(self, name), name, minimum=0)
        _require(self.at_risk_pence <= self.amount_pence, f"{self.episode_id}: more at risk than the payment")
        _require(self.released_pence + self.diverted_pence == self.at_risk_pence,
                 f"{self.episode_id}: released + diverted must equal what was held")


@dataclass(frozen=True, slots=True)
class SettlementStatement:
    """A provider's settled month under one scheme version: every penny held is accounted for."""

    period: str
    scheme_id: str
    scheme_version: int
    billed_pence: int
    at_risk_pence: int
    released_pence: int
    diverted_pence: int
    responses: int
    minimum_sample_applied: bool
    cap_applied: bool
    settled_at: str  # ISO 8601, as the payments service reports it
    episodes: tuple[EpisodeLine, ...] = ()
    episodes_total: int = 0  # all episodes in the statement; more than shown means a next page
    episodes_next_href: str | None = None
    csv_href: str | None = None
    href: str | None = None  # the statement's own page (its episodes), when they are not shown here
    settlement_id: str = ""

    def __post_init__(self) -> None:
        _check_period(self.period)
        for name in ("billed_pence", "at_risk_pence", "released_pence", "diverted_pence"):
            _check_pence(getattr(self, name), name, minimum=0)
        _require(self.at_risk_pence <= self.billed_pence, f"{self.period}: more at risk than billed")
        _require(self.released_pence + self.diverted_pence == self.at_risk_pence,
                 f"{self.period}: released + diverted must equal what was held")
        _require(_is_count(self.responses), "responses must be a count")
        _require(len(self.episodes) <= MAX_EPISODES_PER_PAGE, f"at most {MAX_EPISODES_PER_PAGE} episodes a page")
        _require(self.episodes_total >= len(self.episodes), "episodes_total is less than the episodes shown")
        if self.episodes_total > len(self.episodes):
            _require(self.episodes_next_href is not None, "a statement with more episodes needs a next-page link")
        _require(self.minimum_sample_applied is False or self.diverted_pence == 0,
                 f"{self.period}: nothing is diverted below the minimum sample")


@dataclass(frozen=True, slots=True)
class TrustStatementsPage:
    ods_code: str
    provider_name: str
    statements: tuple[SettlementStatement, ...]
    next_page_href: str | None = None
    single: bool = False  # one statement with its episodes (the statement's own page)

    def __post_init__(self) -> None:
        _check_ods(self.ods_code)
        _require(len(self.statements) <= 24, "at most 24 statements a page")
        _require(not self.single or len(self.statements) == 1, "a statement's page shows one statement")

    @property
    def title(self) -> str:
        if self.single:
            return f"Settlement statement, {period_label(self.statements[0].period)}: {self.provider_name} ({self.ods_code})"
        return f"Settlement statements: {self.provider_name} ({self.ods_code})"


@dataclass(frozen=True, slots=True)
class CommissionerRow:
    ods_code: str
    provider_name: str
    paid_pence: int  # paid to the provider at once (the part not at risk)
    held_pence: int  # at risk, not settled yet
    released_pence: int
    diverted_pence: int

    def __post_init__(self) -> None:
        _check_ods(self.ods_code)
        for name in ("paid_pence", "held_pence", "released_pence", "diverted_pence"):
            _check_pence(getattr(self, name), name, minimum=0)

    @property
    def total_pence(self) -> int:
        return self.paid_pence + self.held_pence + self.released_pence + self.diverted_pence


@dataclass(frozen=True, slots=True)
class CommissionerPage:
    icb_code: str
    icb_name: str
    period: str
    rows: tuple[CommissionerRow, ...]
    csv_href: str | None = None

    def __post_init__(self) -> None:
        _require(bool(_ICB.fullmatch(self.icb_code)), f"an ICB code is Q and two characters, got {self.icb_code!r}")
        _check_period(self.period)
        _require(len(self.rows) <= MAX_ROWS, f"at most {MAX_ROWS} rows")

    @property
    def title(self) -> str:
        return f"Payments by provider: {self.icb_name}, {period_label(self.period)}"

    @property
    def totals(self) -> CommissionerRow:
        return CommissionerRow(
            ods_code="ALL", provider_name="All providers",
            paid_pence=sum(r.paid_pence for r in self.rows), held_pence=sum(r.held_pence for r in self.rows),
            released_pence=sum(r.released_pence for r in self.rows),
            diverted_pence=sum(r.diverted_pence for r in self.rows),
        )


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One line of an account statement: a signed amount (credit to the fund positive) and the
    running balance after it."""

    posted_at: str  # ISO 8601
    transfer_id: str
    description: str
    amount_pence: int
    balance_pence: int

    def __post_init__(self) -> None:
        _check_pence(self.amount_pence, "amount_pence")
        _check_pence(self.balance_pence, "balance_pence")
        _require(bool(self.transfer_id) and len(self.transfer_id) <= 200, "transfer_id must be 1-200 characters")


@dataclass(frozen=True, slots=True)
class RegionLedgerPage:
    region_code: str
    region_name: str
    date_from: str
    date_to: str
    opening_balance_pence: int
    entries: tuple[LedgerEntry, ...]
    closing_balance_pence: int
    csv_href: str | None = None
    next_page_href: str | None = None
    account_id: str = field(default="")
    continued: bool = False  # a later page: the opening balance is the one before its first entry

    def __post_init__(self) -> None:
        _require(bool(_REGION.fullmatch(self.region_code)), f"bad region code {self.region_code!r}")
        if not self.account_id:
            object.__setattr__(self, "account_id", f"fund:{self.region_code}")
        _check_pence(self.opening_balance_pence, "opening_balance_pence")
        _check_pence(self.closing_balance_pence, "closing_balance_pence")
        _require(len(self.entries) <= MAX_ROWS, f"at most {MAX_ROWS} entries a page")
        balance = self.opening_balance_pence
        for e in self.entries:
            balance += e.amount_pence
            _require(e.balance_pence == balance, f"running balance breaks at {e.transfer_id}")
        _require(balance == self.closing_balance_pence or self.next_page_href is not None,
                 "opening balance plus the entries must equal the closing balance")

    @property
    def title(self) -> str:
        return f"Ledger statement: {self.region_name} improvement fund"


@dataclass(frozen=True, slots=True)
class Choice:
    value: str
    text: str


@dataclass(frozen=True, slots=True)
class FinanceIndexPage:
    """Where a signed-in finance user chooses what to see; the services decide what their token may."""

    trusts: tuple[Choice, ...]
    commissioners: tuple[Choice, ...]
    regions: tuple[Choice, ...]
    default_period: str
    default_from: str
    default_to: str
    title: str = "Finance"

    def __post_init__(self) -> None:
        _check_period(self.default_period)


@dataclass(frozen=True, slots=True)
class SignInPage:
    """Development only: paste a bearer token (production signs in through the OIDC proxy)."""

    next_path: str = "/finance"
    error: str | None = None
    title: str = "Sign in with a token"
    csrf_token: str = ""

    def __post_init__(self) -> None:
        # only a local path: never an open redirect
        _require(self.next_path.startswith("/") and not self.next_path.startswith("//") and "\\" not in self.next_path,
                 "next_path must be a path on this site")


@dataclass(frozen=True, slots=True)
class ErrorPage:
    status_code: int
    title: str
    detail: str

    def __post_init__(self) -> None:
        _require(400 <= self.status_code <= 599, "an error page has a 4xx or 5xx status")


# ---------------------------------------------------------------------------------------------
# Helpers


def format_pence_text(pence: int) -> str:
    """Plain text money for descriptions: 123456 -> '£1,234.56', -5 -> 'minus £0.05'."""
    _check_pence(pence, "pence")
    sign = "minus " if pence < 0 else ""
    pounds, rest = divmod(abs(pence), 100)
    return f"{sign}£{pounds:,}.{rest:02d}"


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_proportion(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            and 0.0 <= value <= 1.0)


def _check_pence(value: object, name: str, *, minimum: int | None = None) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool), f"{name} must be integer pence, got {value!r}")
    assert isinstance(value, int)
    _require(minimum is None or value >= minimum, f"{name} must be >= {minimum}, got {value}")


def _check_period(period: str) -> None:
    _require(isinstance(period, str) and bool(_PERIOD.fullmatch(period)), f"a period is written YYYY-MM, got {period!r}")


def _check_period_or_week(period: str) -> None:
    _require(isinstance(period, str) and bool(_PERIOD.fullmatch(period) or _WEEK.fullmatch(period)),
             f"a period is written YYYY-MM or YYYY-Www, got {period!r}")


def _check_ods(code: str) -> None:
    _require(isinstance(code, str) and bool(_ODS_TRUST.fullmatch(code)), f"bad ODS code {code!r}")
