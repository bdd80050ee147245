"""Charts drawn on the server as SVG text. Pure functions: already-computed numbers in, SVG out.

No statistics here: means, process limits, special-cause signals, funnel limits and intervals
are computed elsewhere (``shared.stats``) and handed in as plain numbers, so these functions
only do geometry. Every chart:
- is an ``<svg role="img">`` named by its ``<title>`` and described by its ``<desc>``
  (``aria-labelledby``); pages put a data table beside it with the same numbers;
- escapes every piece of text it is given (labels, titles, formatted values);
- marks what matters by shape as well as colour (WCAG 1.4.1), with a legend drawn in the SVG;
- uses presentation attributes only (no ``style`` attributes, no script), so it renders under the
  portal's Content-Security-Policy and parses as standalone XML;
- draws in a fixed coordinate system (``Geometry``): the plot area's pixel bounds are known, so
  tests can check where a value lands. The page's CSS scales the SVG to the width available.

A limit on everything: at most ``MAX_POINTS`` points, ``MAX_SERIES`` series, ``MAX_TEXT_CHARS``
characters of any label.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

SVG_NS = "http://www.w3.org/2000/svg"
MAX_POINTS = 2000
MAX_SERIES = 8
MAX_TEXT_CHARS = 200

# NHS identity colours (service-manual.nhs.uk/design-system/styles/colour).
NHS_BLUE = "#005eb8"
NHS_DARK_BLUE = "#003087"
NHS_BLACK = "#212b32"
NHS_DARK_GREY = "#425563"
NHS_MID_GREY = "#768692"
NHS_PALE_GREY = "#d8dde0"
NHS_WHITE = "#ffffff"
NHS_ORANGE = "#ed8b00"
NHS_PURPLE = "#330072"
NHS_GREEN = "#007f3b"
NHS_WARM_YELLOW = "#ffb81c"

Signal = Literal["improvement", "concern", "neutral"]
SIGNALS: tuple[Signal, ...] = ("improvement", "concern", "neutral")
SIGNAL_LABELS: dict[str, str] = {
    "improvement": "Special cause: improvement",
    "concern": "Special cause: concern",
    "neutral": "Special cause: neither improvement nor concern",
}
FunnelBand = Literal["within", "high_95", "high_998", "low_95", "low_998"]
FUNNEL_BANDS: tuple[FunnelBand, ...] = ("within", "high_95", "high_998", "low_95", "low_998")
FUNNEL_BAND_LABELS: dict[str, str] = {
    "within": "Within the 95% limits",
    "high_95": "Above the upper 95% limit",
    "high_998": "Above the upper 99.8% limit",
    "low_95": "Below the lower 95% limit",
    "low_998": "Below the lower 99.8% limit",
}
Pattern = Literal["solid", "hatch", "dots"]

_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
ValueFormat = Callable[[float], str]


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True, slots=True)
class XmrPoint:
    """One point of an XmR (individuals) chart with the limits in force at it.

    Limits are per point so that a rebased chart (new limits from some point on) draws as steps.
    ``value`` None: nothing to plot here (no data, or a suppressed figure); the limits still show.
    """

    label: str
    value: float | None
    mean: float | None
    lower_limit: float | None
    upper_limit: float | None
    lower_2sigma: float | None = None
    upper_2sigma: float | None = None
    signal: Signal | None = None

    def __post_init__(self) -> None:
        _check_text(self.label, "label")
        if self.value is not None:
            _check_finite(self.value, "value")
        limits = (self.mean, self.lower_limit, self.upper_limit)
        if all(v is None for v in limits):  # too few points for limits yet: the values only
            if self.lower_2sigma is not None or self.upper_2sigma is not None:
                raise ValueError(f"2-sigma lines need process limits at {self.label!r}")
        else:
            for name in ("mean", "lower_limit", "upper_limit"):
                _check_finite(getattr(self, name), name)
            if not self.lower_limit <= self.mean <= self.upper_limit:  # type: ignore[operator]
                raise ValueError(f"limits out of order at {self.label!r}: {self.lower_limit} <= {self.mean} <= {self.upper_limit}")
        if (self.lower_2sigma is None) != (self.upper_2sigma is None):
            raise ValueError(f"give both 2-sigma lines or neither at {self.label!r}")
        if self.lower_2sigma is not None and self.upper_2sigma is not None:
            _check_finite(self.lower_2sigma, "lower_2sigma")
            _check_finite(self.upper_2sigma, "upper_2sigma")
            if not self.lower_limit <= self.lower_2sigma <= self.mean <= self.upper_2sigma <= self.upper_limit:  # type: ignore[operator]
                raise ValueError(f"2-sigma lines must lie between the mean and the process limits at {self.label!r}")
        if self.signal is not None:
            if self.signal not in SIGNALS:
                raise ValueError(f"unknown signal {self.signal!r}")
            if self.value is None:
                raise ValueError(f"a signal needs a value at {self.label!r}")


@dataclass(frozen=True, slots=True)
class FunnelPoint:
    """A provider on a funnel plot: its number of responses (x) and its proportion (y)."""

    label: str
    responses: int
    proportion: float
    band: FunnelBand = "within"

    def __post_init__(self) -> None:
        _check_text(self.label, "label")
        if isinstance(self.responses, bool) or not isinstance(self.responses, int) or self.responses < 0:
            raise ValueError(f"responses must be a whole number >= 0, got {self.responses!r}")
        _check_finite(self.proportion, "proportion")
        if self.band not in FUNNEL_BANDS:
            raise ValueError(f"unknown funnel band {self.band!r}")


@dataclass(frozen=True, slots=True)
class FunnelLimit:
    """The control limits around the benchmark at one number of responses."""

    responses: float
    lower_95: float
    upper_95: float
    lower_998: float
    upper_998: float

    def __post_init__(self) -> None:
        for name in ("responses", "lower_95", "upper_95", "lower_998", "upper_998"):
            _check_finite(getattr(self, name), name)
        if self.responses < 0:
            raise ValueError("responses must be >= 0")
        if not self.lower_998 <= self.lower_95 <= self.upper_95 <= self.upper_998:
            raise ValueError(f"funnel limits out of order at n={self.responses}")


@dataclass(frozen=True, slots=True)
class BarSeries:
    """One layer of a stacked bar chart: a value per category, a colour and a fill pattern."""

    name: str
    values: Sequence[float]
    colour: str = NHS_BLUE
    pattern: Pattern = "solid"

    def __post_init__(self) -> None:
        _check_text(self.name, "name")
        if not _COLOUR.fullmatch(self.colour):
            raise ValueError(f"colour must be #rrggbb, got {self.colour!r}")
        if self.pattern not in ("solid", "hatch", "dots"):
            raise ValueError(f"unknown pattern {self.pattern!r}")
        for v in self.values:
            _check_finite(v, "value")
            if v < 0:
                raise ValueError(f"stacked bars take values >= 0, got {v} in {self.name!r}")


@dataclass(frozen=True, slots=True)
class Geometry:
    """Where the plot area sits in the SVG's coordinates (pixels of the viewBox)."""

    width: int = 640
    height: int = 320
    margin_left: int = 72
    margin_right: int = 24
    margin_top: int = 20
    margin_bottom: int = 56
    legend_row_height: int = 24

    def __post_init__(self) -> None:
        if self.plot_width < 50 or self.plot_height < 50:
            raise ValueError("the plot area must be at least 50 x 50")

    @property
    def plot_left(self) -> float:
        return float(self.margin_left)

    @property
    def plot_right(self) -> float:
        return float(self.width - self.margin_right)

    @property
    def plot_top(self) -> float:
        return float(self.margin_top)

    @property
    def plot_bottom(self) -> float:
        return float(self.height - self.margin_bottom)

    @property
    def plot_width(self) -> float:
        return float(self.width - self.margin_left - self.margin_right)

    @property
    def plot_height(self) -> float:
        return float(self.height - self.margin_top - self.margin_bottom)


DEFAULT_GEOMETRY = Geometry()


# ---------------------------------------------------------------------------------------------
# Scales


@dataclass(frozen=True, slots=True)
class LinearScale:
    """Maps a data interval onto a pixel interval; values outside are clamped to its ends."""

    domain_min: float
    domain_max: float
    range_min: float
    range_max: float

    def __post_init__(self) -> None:
        for v in (self.domain_min, self.domain_max, self.range_min, self.range_max):
            _check_finite(v, "scale bound")
        if not self.domain_max > self.domain_min:
            raise ValueError(f"empty domain [{self.domain_min}, {self.domain_max}]")

    def __call__(self, value: float) -> float:
        t = (value - self.domain_min) / (self.domain_max - self.domain_min)
        t = min(max(t, 0.0), 1.0)
        return self.range_min + t * (self.range_max - self.range_min)


@dataclass(frozen=True, slots=True)
class BandScale:
    """``count`` equal bands across a pixel interval (categories: months, periods)."""

    count: int
    range_min: float
    range_max: float

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("a band scale needs at least one band")

    @property
    def bandwidth(self) -> float:
        return (self.range_max - self.range_min) / self.count

    def start(self, index: int) -> float:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.range_min + index * self.bandwidth

    def centre(self, index: int) -> float:
        return self.start(index) + self.bandwidth / 2


def nice_step(span: float, target_ticks: int = 5) -> float:
    """A tick step of 1, 2, 2.5 or 5 times a power of ten giving about ``target_ticks`` ticks."""
    if span <= 0 or not math.isfinite(span):
        raise ValueError("span must be positive")
    raw = span / max(target_ticks, 1)
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * power * (1 + 1e-9):
            return m * power
    return 10 * power  # pragma: no cover - the loop always returns


def nice_domain(
    low: float, high: float, *, include_zero: bool = False, bounds: tuple[float, float] | None = None, target_ticks: int = 5
) -> tuple[float, float, list[float]]:
    """Round ``[low, high]`` out to whole tick steps; return (domain_min, domain_max, ticks).

    A zero-width interval is widened (10% of its value, or 1). ``bounds`` caps the result (for
    proportions, ``(0, 1)``).
    """
    _check_finite(low, "low")
    _check_finite(high, "high")
    if low > high:
        low, high = high, low
    if include_zero:
        low, high = min(low, 0.0), max(high, 0.0)
    if high == low:
        pad = abs(high) * 0.1 or 1.0
        low, high = low - pad, high + pad
        if bounds is not None:  # keep the widened interval inside the bounds
            if low < bounds[0]:
                low, high = bounds[0], min(high + bounds[0] - low, bounds[1])
            if high > bounds[1]:
                low, high = max(low - (high - bounds[1]), bounds[0]), bounds[1]
    step = nice_step(high - low, target_ticks)
    dmin = math.floor(low / step + 1e-9) * step
    dmax = math.ceil(high / step - 1e-9) * step
    if bounds is not None:
        dmin, dmax = max(dmin, bounds[0]), min(dmax, bounds[1])
    if dmax <= dmin:
        dmax = dmin + step
    ticks = []
    k = math.ceil(dmin / step - 1e-9)
    while k * step <= dmax + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(k * step, 10))
        k += 1
    return dmin, dmax, ticks


# ---------------------------------------------------------------------------------------------
# The four charts


def xmr_chart(
    points: Sequence[XmrPoint],
    *,
    title: str,
    description: str,
    chart_id: str = "xmr",
    y_label: str = "",
    value_format: ValueFormat | None = None,
    y_min: float | None = None,
    y_max: float | None = None,
    y_bounds: tuple[float, float] | None = None,
    show_2sigma: bool = True,
    geometry: Geometry = DEFAULT_GEOMETRY,
) -> str:
    """An XmR chart: the values joined by a line, the mean, the process limits (dashed), the
    2-sigma lines (dotted, if given and ``show_2sigma``), and each point marked by its signal:
    common cause a small grey circle; improvement a blue square; concern an orange diamond;
    neither a purple triangle. Points whose value is None are gaps."""
    fmt = value_format or format_number
    _check_count(points, "points")
    g = geometry
    svg = _Svg(chart_id, title, description, g)
    if not points:
        return svg.empty("No data to show")
    has_2sigma = show_2sigma and any(p.upper_2sigma is not None for p in points)
    numbers = [v for p in points for v in (p.value, p.mean, p.lower_limit, p.upper_limit) if v is not None]
    if has_2sigma:
        numbers += [v for p in points for v in (p.lower_2sigma, p.upper_2sigma) if v is not None]
    if not numbers:  # every point a gap (suppressed or no responses) and no limits yet
        return svg.empty("No figures to show")
    y = _y_scale(numbers, g, y_min=y_min, y_max=y_max, bounds=y_bounds, svg=svg, fmt=fmt)
    x = BandScale(len(points), g.plot_left, g.plot_right)
    svg.y_axis_title(y_label)
    svg.x_labels([p.label for p in points], x)

    def steps(values: list[float | None], css: str, dash: str | None, colour: str, width: float) -> None:
        segments = []
        i = 0
        while i < len(values):
            v = values[i]
            j = i
            while j + 1 < len(values) and values[j + 1] == v:
                j += 1
            if v is not None:
                left = g.plot_left if i == 0 else x.start(i)
                right = g.plot_right if j == len(values) - 1 else x.start(j) + x.bandwidth
                segments.append(f"M{_n(left)} {_n(y(v))}H{_n(right)}")
            i = j + 1
        svg.path("".join(segments), css, colour, width, dash)

    steps([p.upper_limit for p in points], "pp-xmr-upper-limit", "6 4", NHS_DARK_GREY, 1.5)
    steps([p.lower_limit for p in points], "pp-xmr-lower-limit", "6 4", NHS_DARK_GREY, 1.5)
    if has_2sigma:
        steps([p.upper_2sigma for p in points], "pp-xmr-upper-2sigma", "2 3", NHS_MID_GREY, 1)
        steps([p.lower_2sigma for p in points], "pp-xmr-lower-2sigma", "2 3", NHS_MID_GREY, 1)
    steps([p.mean for p in points], "pp-xmr-mean", None, NHS_BLACK, 1.5)
    svg.path(_polyline([(x.centre(i), None if p.value is None else y(p.value)) for i, p in enumerate(points)]),
             "pp-xmr-line", NHS_DARK_GREY, 1.5)
    for i, p in enumerate(points):
        if p.value is not None:
            svg.raw(_marker(p.signal or "common", x.centre(i), y(p.value), index=i))

    has_limits = any(p.mean is not None for p in points)
    legend: list[tuple[str, str]] = [
        (_line_swatch(NHS_BLACK, None, 1.5), "Mean"),
        (_line_swatch(NHS_DARK_GREY, "6 4", 1.5), "Process limits"),
    ] if has_limits else []
    if has_2sigma:
        legend.append((_line_swatch(NHS_MID_GREY, "2 3", 1), "2-sigma lines"))
    legend.append((_marker("common", 10, 0, legend=True), "Common cause variation"))
    present = {p.signal for p in points if p.signal}
    legend += [(_marker(s, 10, 0, legend=True), SIGNAL_LABELS[s]) for s in SIGNALS if s in present]
    svg.legend(legend)
    return svg.close()


def funnel_plot(
    points: Sequence[FunnelPoint],
    limits: Sequence[FunnelLimit],
    *,
    benchmark: float,
    title: str,
    description: str,
    chart_id: str = "funnel",
    x_label: str = "Number of responses",
    y_label: str = "",
    value_format: ValueFormat | None = None,
    y_min: float | None = None,
    y_max: float | None = None,
    y_bounds: tuple[float, float] | None = None,
    label_outliers: bool = True,
    geometry: Geometry = DEFAULT_GEOMETRY,
) -> str:
    """A funnel plot: each provider's proportion (y) against its number of responses (x), the
    benchmark line, and the 95% (dashed) and 99.8% (solid) limit curves through ``limits``.
    Providers are marked by band: within the limits a grey circle; above an upper limit a blue
    triangle pointing up, below a lower limit an orange triangle pointing down; hollow beyond
    95%, filled beyond 99.8%. Those beyond 99.8% are labelled when ``label_outliers``."""
    fmt = value_format or format_number
    _check_count(points, "points")
    _check_count(limits, "limits")
    _check_finite(benchmark, "benchmark")
    g = geometry
    svg = _Svg(chart_id, title, description, g)
    if not points and not limits:
        return svg.empty("No data to show")
    numbers = [benchmark] + [p.proportion for p in points]
    numbers += [v for lim in limits for v in (lim.lower_998, lim.upper_998)]
    y = _y_scale(numbers, g, y_min=y_min, y_max=y_max, bounds=y_bounds, svg=svg, fmt=fmt)
    n_max = max([p.responses for p in points] + [lim.responses for lim in limits] + [1])
    xmin, xmax, xticks = nice_domain(0.0, float(n_max), bounds=(0.0, math.inf))
    x = LinearScale(xmin, xmax, g.plot_left, g.plot_right)
    for t in xticks:
        svg.raw(f'<text class="pp-x-tick" x="{_n(x(t))}" y="{_n(g.plot_bottom + 20)}" text-anchor="middle"'
                f' fill="{NHS_BLACK}">{_esc(format_number(t))}</text>')
    svg.raw(f'<text class="pp-x-title" x="{_n(g.plot_left + g.plot_width / 2)}" y="{_n(g.plot_bottom + 44)}"'
            f' text-anchor="middle" fill="{NHS_BLACK}">{_esc(x_label)}</text>')
    svg.y_axis_title(y_label)

    ordered = sorted(limits, key=lambda lim: lim.responses)
    for attr, css, dash, colour, width in (
        ("upper_998", "pp-funnel-upper-998", None, NHS_DARK_GREY, 1.25),
        ("lower_998", "pp-funnel-lower-998", None, NHS_DARK_GREY, 1.25),
        ("upper_95", "pp-funnel-upper-95", "6 4", NHS_DARK_GREY, 1.25),
        ("lower_95", "pp-funnel-lower-95", "6 4", NHS_DARK_GREY, 1.25),
    ):
        svg.path(_polyline([(x(lim.responses), y(getattr(lim, attr))) for lim in ordered]), css, colour, width, dash)
    svg.path(f"M{_n(g.plot_left)} {_n(y(benchmark))}H{_n(g.plot_right)}", "pp-funnel-benchmark", NHS_BLACK, 2.5)
    for i, p in enumerate(points):
        px, py = x(p.responses), y(p.proportion)
        svg.raw(_marker(p.band, px, py, index=i))
        if label_outliers and p.band in ("high_998", "low_998"):
            anchor, dx = ("end", -9) if px > g.plot_left + g.plot_width * 0.75 else ("start", 9)
            svg.raw(f'<text class="pp-point-label" x="{_n(px + dx)}" y="{_n(py + 4)}" text-anchor="{anchor}"'
                    f' font-size="12" fill="{NHS_BLACK}">{_esc(p.label)}</text>')
    legend = [
        (_line_swatch(NHS_BLACK, None, 2.5), "Benchmark"),
        (_line_swatch(NHS_DARK_GREY, "6 4", 1.25), "95% limits"),
        (_line_swatch(NHS_DARK_GREY, None, 1.25), "99.8% limits"),
    ]
    present = {p.band for p in points}
    legend += [(_marker(b, 10, 0, legend=True), FUNNEL_BAND_LABELS[b]) for b in FUNNEL_BANDS if b in present or b == "within"]
    svg.legend(legend)
    return svg.close()


def line_chart(
    labels: Sequence[str],
    values: Sequence[float | None],
    *,
    title: str,
    description: str,
    chart_id: str = "line",
    y_label: str = "",
    series_label: str = "Value",
    value_format: ValueFormat | None = None,
    include_zero: bool = True,
    y_min: float | None = None,
    y_max: float | None = None,
    geometry: Geometry = DEFAULT_GEOMETRY,
) -> str:
    """A line through one value per label (a balance at each month end), a marker at each value,
    gaps where a value is None. The y axis includes zero unless ``include_zero`` is False."""
    fmt = value_format or format_number
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} labels but {len(values)} values")
    _check_count(values, "values")
    for label in labels:
        _check_text(label, "label")
    g = geometry
    svg = _Svg(chart_id, title, description, g)
    numbers = [v for v in values if v is not None]
    for v in numbers:
        _check_finite(v, "value")
    if not numbers:
        return svg.empty("No data to show")
    if include_zero:
        numbers.append(0.0)
    y = _y_scale(numbers, g, y_min=y_min, y_max=y_max, bounds=None, svg=svg, fmt=fmt)
    x = BandScale(len(values), g.plot_left, g.plot_right)
    svg.y_axis_title(y_label)
    svg.x_labels(list(labels), x)
    svg.path(_polyline([(x.centre(i), None if v is None else y(v)) for i, v in enumerate(values)]),
             "pp-line", NHS_BLUE, 2.5)
    for i, v in enumerate(values):
        if v is not None:
            svg.raw(f'<circle class="pp-line-point" data-index="{i}" cx="{_n(x.centre(i))}" cy="{_n(y(v))}" r="4"'
                    f' fill="{NHS_BLUE}" stroke="{NHS_WHITE}" stroke-width="1"/>')
    svg.legend([(_line_swatch(NHS_BLUE, None, 2.5), series_label)])
    return svg.close()


def stacked_bar_chart(
    categories: Sequence[str],
    series: Sequence[BarSeries],
    *,
    title: str,
    description: str,
    chart_id: str = "bars",
    y_label: str = "",
    value_format: ValueFormat | None = None,
    y_max: float | None = None,
    geometry: Geometry = DEFAULT_GEOMETRY,
) -> str:
    """One bar per category, its segments stacked bottom-up in the order of ``series``. Each
    series has its colour and a fill pattern (solid, hatch, dots) so segments differ by more
    than colour; a white edge separates neighbouring segments."""
    fmt = value_format or format_number
    _check_count(categories, "categories")
    if len(series) > MAX_SERIES:
        raise ValueError(f"at most {MAX_SERIES} series")
    for label in categories:
        _check_text(label, "category")
    for s in series:
        if len(s.values) != len(categories):
            raise ValueError(f"series {s.name!r} has {len(s.values)} values for {len(categories)} categories")
    g = geometry
    svg = _Svg(chart_id, title, description, g)
    if not categories or not series:
        return svg.empty("No data to show")
    totals = [sum(s.values[i] for s in series) for i in range(len(categories))]
    y = _y_scale([0.0, *totals], g, y_min=0.0, y_max=y_max, bounds=None, svg=svg, fmt=fmt)
    x = BandScale(len(categories), g.plot_left, g.plot_right)
    svg.y_axis_title(y_label)
    svg.x_labels(list(categories), x)
    fills = [svg.fill(k, s.colour, s.pattern) for k, s in enumerate(series)]
    bar_width = min(x.bandwidth * 0.6, 64.0)
    for i in range(len(categories)):
        base = 0.0
        left = x.centre(i) - bar_width / 2
        for k, s in enumerate(series):
            v = s.values[i]
            if v > 0:
                top, bottom = y(base + v), y(base)
                svg.raw(f'<rect class="pp-bar pp-bar--s{k}" data-index="{i}" data-series="{k}" x="{_n(left)}"'
                        f' y="{_n(top)}" width="{_n(bar_width)}" height="{_n(bottom - top)}" fill="{fills[k]}"'
                        f' stroke="{NHS_WHITE}" stroke-width="1"/>')
            base += v
    svg.legend([(_rect_swatch(fills[k]), s.name) for k, s in enumerate(series)])
    return svg.close()


# ---------------------------------------------------------------------------------------------
# Formatting (ticks); pages format their own table figures


def format_number(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def format_percent(proportion: float) -> str:
    """0.873 -> '87.3%'; whole percentages without a decimal (ticks)."""
    pct = proportion * 100
    if abs(pct - round(pct)) < 1e-9:
        return f"{round(pct):d}%"
    return f"{pct:.1f}%"


def format_pounds(pence: float) -> str:
    """Axis ticks for money held as pence: 123456 -> '£1,235' (whole pounds)."""
    pounds = pence / 100
    sign = "-" if pounds < 0 else ""
    return f"{sign}£{abs(pounds):,.0f}"


# ---------------------------------------------------------------------------------------------
# Drawing helpers


class _Svg:
    """Accumulates one chart's elements; legend rows extend the SVG below the fixed geometry."""

    def __init__(self, chart_id: str, title: str, description: str, geometry: Geometry):
        if not _ID.fullmatch(chart_id):
            raise ValueError(f"chart_id must be a letter then letters, digits, '-' or '_': {chart_id!r}")
        _check_text(title, "title")
        _check_text(description, "description", limit=2000)
        self.id = chart_id
        self.title = title
        self.description = description
        self.g = geometry
        self.defs: list[str] = []
        self.body: list[str] = []
        self.legend_rows = 0

    def raw(self, element: str) -> None:
        self.body.append(element)

    def path(self, d: str, css: str, colour: str, width: float, dash: str | None = None) -> None:
        if not d:
            return
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        self.body.append(f'<path class="{css}" d="{d}" fill="none" stroke="{colour}" stroke-width="{_n(width)}"'
                         f'{dash_attr} stroke-linejoin="round"/>')

    def y_ticks(self, ticks: list[float], y: LinearScale, fmt: ValueFormat) -> None:
        g = self.g
        for t in ticks:
            py = _n(y(t))
            self.body.append(f'<line class="pp-grid" x1="{_n(g.plot_left)}" x2="{_n(g.plot_right)}" y1="{py}" y2="{py}"'
                             f' stroke="{NHS_PALE_GREY}" stroke-width="1"/>')
            self.body.append(f'<text class="pp-y-tick" x="{_n(g.plot_left - 8)}" y="{_n(y(t) + 5)}" text-anchor="end"'
                             f' fill="{NHS_BLACK}">{_esc(fmt(t))}</text>')
        self.body.append(f'<path class="pp-axis" d="M{_n(g.plot_left)} {_n(g.plot_top)}V{_n(g.plot_bottom)}'
                         f'H{_n(g.plot_right)}" fill="none" stroke="{NHS_DARK_GREY}" stroke-width="1"/>')

    def y_axis_title(self, text: str) -> None:
        if not text:
            return
        _check_text(text, "y_label")
        cx, cy = 16, self.g.plot_top + self.g.plot_height / 2
        self.body.append(f'<text class="pp-y-title" x="{_n(cx)}" y="{_n(cy)}" text-anchor="middle"'
                         f' transform="rotate(-90 {_n(cx)} {_n(cy)})" fill="{NHS_BLACK}">{_esc(text)}</text>')

    def x_labels(self, labels: list[str], x: BandScale) -> None:
        most = max(1, int(self.g.plot_width // 64))
        every = max(1, math.ceil(len(labels) / most))
        for i, label in enumerate(labels):
            if i % every == 0:
                self.body.append(f'<text class="pp-x-tick" x="{_n(x.centre(i))}" y="{_n(self.g.plot_bottom + 20)}"'
                                 f' text-anchor="middle" fill="{NHS_BLACK}">{_esc(label)}</text>')

    def fill(self, k: int, colour: str, pattern: Pattern) -> str:
        if pattern == "solid":
            return colour
        pid = f"{self.id}-pattern-{k}"
        if pattern == "hatch":
            marks = f'<path d="M-2 2L2 -2M0 8L8 0M6 10L10 6" stroke="{NHS_WHITE}" stroke-width="2"/>'
        else:
            marks = f'<circle cx="4" cy="4" r="1.6" fill="{NHS_WHITE}"/>'
        self.defs.append(f'<pattern id="{pid}" patternUnits="userSpaceOnUse" width="8" height="8">'
                         f'<rect width="8" height="8" fill="{colour}"/>{marks}</pattern>')
        return f"url(#{pid})"

    def legend(self, items: list[tuple[str, str]]) -> None:
        g = self.g
        x0, gap = 8.0, 20.0
        cx, row = x0, 0
        out = []
        for swatch, label in items:
            item_width = 28 + 7.2 * len(label)
            if cx > x0 and cx + item_width > g.width - 8:
                cx, row = x0, row + 1
            ty = g.height + row * g.legend_row_height + 4
            out.append(f'<g class="pp-legend-item" transform="translate({_n(cx)} {_n(ty)})">{swatch}'
                       f'<text x="26" y="5" font-size="13" fill="{NHS_BLACK}">{_esc(label)}</text></g>')
            cx += item_width + gap
        self.legend_rows = row + 1 if items else 0
        self.body.append('<g class="pp-legend">' + "".join(out) + "</g>")

    def empty(self, message: str) -> str:
        g = self.g
        self.body.append(f'<rect class="pp-empty" x="{_n(g.plot_left)}" y="{_n(g.plot_top)}" width="{_n(g.plot_width)}"'
                         f' height="{_n(g.plot_height)}" fill="none" stroke="{NHS_PALE_GREY}"/>')
        self.body.append(f'<text class="pp-empty-message" x="{_n(g.plot_left + g.plot_width / 2)}"'
                         f' y="{_n(g.plot_top + g.plot_height / 2)}" text-anchor="middle" fill="{NHS_BLACK}">'
                         f"{_esc(message)}</text>")
        return self.close()

    def close(self) -> str:
        g = self.g
        height = g.height + self.legend_rows * g.legend_row_height + (8 if self.legend_rows else 0)
        head = (
            f'<svg xmlns="{SVG_NS}" id="{self.id}" class="pp-chart" viewBox="0 0 {g.width} {height}"'
            f' width="{g.width}" height="{height}" role="img" aria-labelledby="{self.id}-title {self.id}-desc"'
            f' font-family="Arial, sans-serif" font-size="14">'
            f'<title id="{self.id}-title">{_esc(self.title)}</title>'
            f'<desc id="{self.id}-desc">{_esc(self.description)}</desc>'
        )
        defs = f"<defs>{''.join(self.defs)}</defs>" if self.defs else ""
        return head + defs + "".join(self.body) + "</svg>"


def _y_scale(
    numbers: list[float],
    g: Geometry,
    *,
    y_min: float | None,
    y_max: float | None,
    bounds: tuple[float, float] | None,
    svg: _Svg,
    fmt: ValueFormat,
) -> LinearScale:
    low = y_min if y_min is not None else min(numbers)
    high = y_max if y_max is not None else max(numbers)
    if y_min is not None and y_max is not None:
        if not y_max > y_min:
            raise ValueError("y_max must be above y_min")
        dmin, dmax = float(y_min), float(y_max)
        step = nice_step(dmax - dmin)
        ticks = [dmin + k * step for k in range(int(round((dmax - dmin) / step)) + 1) if dmin + k * step <= dmax + 1e-9]
    else:
        # 5% headroom so that a limit or a point at the extreme does not sit on the frame
        pad = (high - low) * 0.05
        padded_low = low if y_min is not None else low - pad
        padded_high = high if y_max is not None else high + pad
        if low >= 0 > padded_low:  # headroom never invents negative values (or positive ones)
            padded_low = 0.0
        if high <= 0 < padded_high:
            padded_high = 0.0
        if bounds is not None:
            padded_low, padded_high = max(padded_low, min(low, bounds[0])), min(padded_high, max(high, bounds[1]))
        dmin, dmax, ticks = nice_domain(padded_low, padded_high, bounds=bounds)
        if y_min is not None:
            dmin = float(y_min)
            ticks = [t for t in ticks if t >= dmin - 1e-9]
        if y_max is not None:
            dmax = float(y_max)
            ticks = [t for t in ticks if t <= dmax + 1e-9]
        if not dmax > dmin:
            dmax = dmin + 1.0
    scale = LinearScale(dmin, dmax, g.plot_bottom, g.plot_top)
    svg.y_ticks(ticks, scale, fmt)
    return scale


def _polyline(points: list[tuple[float, float | None]]) -> str:
    """Path data joining consecutive points; a None y breaks the line."""
    parts = []
    pen_down = False
    for px, py in points:
        if py is None:
            pen_down = False
            continue
        parts.append(f"{'L' if pen_down else 'M'}{_n(px)} {_n(py)}")
        pen_down = True
    return "".join(parts)


def _marker(kind: str, x: float, y: float, *, index: int | None = None, legend: bool = False) -> str:
    """A point marker whose shape, not only colour, says what it is (``legend``: its key)."""
    data = f' data-index="{index}"' if index is not None else ""
    css = f'class="pp-legend-marker pp-legend-marker--{kind}"' if legend else f'class="pp-point pp-point--{kind}"{data}'
    if kind == "common" or kind == "within":
        return f'<circle {css} cx="{_n(x)}" cy="{_n(y)}" r="4" fill="{NHS_MID_GREY}" stroke="{NHS_WHITE}" stroke-width="1"/>'
    if kind == "improvement":
        return (f'<rect {css} x="{_n(x - 5.5)}" y="{_n(y - 5.5)}" width="11" height="11" fill="{NHS_BLUE}"'
                f' stroke="{NHS_BLACK}" stroke-width="1"/>')
    if kind == "concern":
        d = f"M{_n(x)} {_n(y - 7)}L{_n(x + 7)} {_n(y)}L{_n(x)} {_n(y + 7)}L{_n(x - 7)} {_n(y)}Z"
        return f'<path {css} d="{d}" fill="{NHS_ORANGE}" stroke="{NHS_BLACK}" stroke-width="1.5"/>'
    if kind == "neutral":
        d = f"M{_n(x)} {_n(y - 7)}L{_n(x + 7)} {_n(y + 5)}L{_n(x - 7)} {_n(y + 5)}Z"
        return f'<path {css} d="{d}" fill="{NHS_PURPLE}" stroke="{NHS_BLACK}" stroke-width="1"/>'
    if kind in ("high_95", "high_998"):
        d = f"M{_n(x)} {_n(y - 7)}L{_n(x + 7)} {_n(y + 5)}L{_n(x - 7)} {_n(y + 5)}Z"
        fill = NHS_BLUE if kind == "high_998" else NHS_WHITE
        return f'<path {css} d="{d}" fill="{fill}" stroke="{NHS_BLUE}" stroke-width="2"/>'
    if kind in ("low_95", "low_998"):
        d = f"M{_n(x)} {_n(y + 7)}L{_n(x + 7)} {_n(y - 5)}L{_n(x - 7)} {_n(y - 5)}Z"
        fill = NHS_ORANGE if kind == "low_998" else NHS_WHITE
        return f'<path {css} d="{d}" fill="{fill}" stroke="{NHS_BLACK}" stroke-width="2"/>'
    raise ValueError(f"unknown marker {kind!r}")


def _line_swatch(colour: str, dash: str | None, width: float) -> str:
    dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<path d="M0 0H20" stroke="{colour}" stroke-width="{_n(width)}"{dash_attr}/>'


def _rect_swatch(fill: str) -> str:
    return f'<rect x="0" y="-8" width="20" height="16" fill="{fill}" stroke="{NHS_BLACK}" stroke-width="1"/>'


def _n(value: float) -> str:
    """A coordinate with at most two decimals, no trailing zeros, never '-0'."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def _check_finite(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_text(value: object, name: str, *, limit: int = MAX_TEXT_CHARS) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"{name} is longer than {limit} characters")


def _check_count(items: Sequence[object], name: str) -> None:
    if len(items) > MAX_POINTS:
        raise ValueError(f"at most {MAX_POINTS} {name} in one chart, got {len(items)}")
