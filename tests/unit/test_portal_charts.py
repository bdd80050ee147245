"""Geometry of the portal's server-drawn SVG charts (services/portal/charts.py).

Each chart is parsed as XML; element classes (pp-xmr-mean, pp-funnel-upper-95, ...) find what
to measure; positions are checked against the fixed plot area of ``Geometry``.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from services.portal import charts
from services.portal.charts import (
    BandScale,
    BarSeries,
    FunnelLimit,
    FunnelPoint,
    Geometry,
    LinearScale,
    XmrPoint,
)

NS = {"svg": charts.SVG_NS}
G = charts.DEFAULT_GEOMETRY
NASTY = 'R<1> & "quoted" \'x\' </svg><script>alert(1)</script>'


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # raises on anything that is not well-formed XML
    assert root.tag == f"{{{charts.SVG_NS}}}svg"
    return root


def by_class(root: ET.Element, css: str) -> list[ET.Element]:
    return [e for e in root.iter() if css in (e.get("class") or "").split()]


def one(root: ET.Element, css: str) -> ET.Element:
    found = by_class(root, css)
    assert len(found) == 1, f"expected one .{css}, found {len(found)}"
    return found[0]


def path_numbers(d: str) -> list[tuple[str, list[float]]]:
    """Path data as (command, numbers) pairs: 'M1 2H3' -> [('M', [1, 2]), ('H', [3])]."""
    return [(cmd, [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", args)])
            for cmd, args in re.findall(r"([MLHVZ])([^MLHVZ]*)", d)]


def horizontal_segments(d: str) -> list[tuple[float, float, float]]:
    """(x_start, x_end, y) for each 'M x y H x2' in a path."""
    out = []
    parts = path_numbers(d)
    for (c1, n1), (c2, n2) in zip(parts, parts[1:], strict=False):
        if c1 == "M" and c2 == "H":
            out.append((n1[0], n2[0], n1[1]))
    return out


def y_px(value: float, lo: float, hi: float, g: Geometry = G) -> float:
    return g.plot_bottom - (value - lo) / (hi - lo) * g.plot_height


def band_centre(i: int, n: int, g: Geometry = G) -> float:
    return g.plot_left + (i + 0.5) * g.plot_width / n


def approx(a: float, b: float, tol: float = 0.011) -> bool:
    return abs(a - b) <= tol


def xmr_points(values, *, mean=0.8, lcl=0.6, ucl=1.0, signals=None, sigma2=True):
    signals = signals or {}
    return [
        XmrPoint(label=f"M{i + 1}", value=v, mean=mean, lower_limit=lcl, upper_limit=ucl,
                 lower_2sigma=(mean - (mean - lcl) * 2 / 3) if sigma2 else None,
                 upper_2sigma=(mean + (ucl - mean) * 2 / 3) if sigma2 else None,
                 signal=signals.get(i))
        for i, v in enumerate(values)
    ]


# --- scales ---------------------------------------------------------------------------------


def test_linear_scale_maps_ends_and_middle_and_clamps():
    s = LinearScale(0.0, 1.0, 300.0, 20.0)  # y: larger values higher up (smaller pixel y)
    assert s(0.0) == 300.0 and s(1.0) == 20.0 and s(0.5) == 160.0
    assert s(-5) == 300.0 and s(7) == 20.0  # clamped to the plot area
    with pytest.raises(ValueError):
        LinearScale(1.0, 1.0, 0, 10)
    with pytest.raises(ValueError):
        LinearScale(0.0, math.nan, 0, 10)


def test_band_scale_centres_equal_bands():
    b = BandScale(4, 100.0, 500.0)
    assert b.bandwidth == 100.0
    assert [b.centre(i) for i in range(4)] == [150.0, 250.0, 350.0, 450.0]
    assert BandScale(1, 0.0, 10.0).centre(0) == 5.0
    with pytest.raises(IndexError):
        b.centre(4)
    with pytest.raises(ValueError):
        BandScale(0, 0.0, 1.0)


@pytest.mark.parametrize(("low", "high"), [(0.55, 0.97), (0.0, 1.0), (3.0, 3.0), (-7.2, 12.9), (0.0, 1_234_567.0)])
def test_nice_domain_covers_the_data_with_round_ticks(low, high):
    dmin, dmax, ticks = charts.nice_domain(low, high)
    assert dmin <= low and dmax >= high and dmax > dmin
    assert ticks[0] >= dmin - 1e-9 and ticks[-1] <= dmax + 1e-9
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
    assert len(steps) == 1
    assert 3 <= len(ticks) <= 12


def test_nice_domain_respects_bounds_and_widens_a_single_value():
    assert charts.nice_domain(0.0, 0.0, bounds=(0.0, 1.0))[:2] == (0.0, 1.0)
    dmin, dmax, _ = charts.nice_domain(1.0, 1.0, bounds=(0.0, 1.0))
    assert dmin < 1.0 and dmax == 1.0
    assert charts.nice_domain(5.0, 9.0, include_zero=True)[0] == 0.0


# --- XmR ------------------------------------------------------------------------------------


def test_xmr_limits_mean_and_points_are_where_the_numbers_say():
    values = [0.7, 0.8, 0.9, 0.75, 0.85]
    svg = charts.xmr_chart(xmr_points(values), title="t", description="d", y_min=0.5, y_max=1.0)
    root = parse(svg)
    for css, value in (("pp-xmr-mean", 0.8), ("pp-xmr-upper-limit", 1.0), ("pp-xmr-lower-limit", 0.6),
                       ("pp-xmr-upper-2sigma", 0.8 + 0.2 * 2 / 3), ("pp-xmr-lower-2sigma", 0.8 - 0.2 * 2 / 3)):
        segments = horizontal_segments(one(root, css).get("d"))
        assert len(segments) == 1, css
        x0, x1, y = segments[0]
        assert approx(x0, G.plot_left) and approx(x1, G.plot_right), css  # across the whole plot
        assert approx(y, y_px(value, 0.5, 1.0)), css
    points = by_class(root, "pp-point")
    assert len(points) == len(values)
    for p in points:
        i = int(p.get("data-index"))
        assert approx(float(p.get("cx")), band_centre(i, len(values)))
        assert approx(float(p.get("cy")), y_px(values[i], 0.5, 1.0))
    # the line joins the points in order
    line = path_numbers(one(root, "pp-xmr-line").get("d"))
    assert [c for c, _ in line] == ["M", "L", "L", "L", "L"]
    assert approx(line[2][1][1], y_px(0.9, 0.5, 1.0))


def test_xmr_special_causes_differ_in_shape_not_only_colour():
    signals = {1: "improvement", 2: "concern", 3: "neutral"}
    root = parse(charts.xmr_chart(xmr_points([0.8, 0.95, 0.62, 0.9], signals=signals), title="t", description="d"))
    plotted = [e for e in by_class(root, "pp-point") if e.get("data-index") is not None]
    kinds = {int(e.get("data-index")): (e.get("class").split()[1], e.tag.split("}")[1], e.get("fill")) for e in plotted}
    assert kinds[0] == ("pp-point--common", "circle", charts.NHS_MID_GREY)
    assert kinds[1][:2] == ("pp-point--improvement", "rect")
    assert kinds[2][:2] == ("pp-point--concern", "path")
    assert kinds[3][:2] == ("pp-point--neutral", "path")
    shapes = {(tag, len(path_numbers(e.get("d") or ""))) for e in plotted for tag in [e.tag]}
    assert len(shapes) == 4  # circle, square, diamond (4 corners), triangle (3): four distinct shapes
    fills = {k[2] for k in kinds.values()}
    assert len(fills) == 4  # and four colours
    legend = " ".join(t.text or "" for t in root.iter(f"{{{charts.SVG_NS}}}text"))
    for label in ("Mean", "Process limits", "Common cause variation", "Special cause: improvement",
                  "Special cause: concern", "Special cause: neither improvement nor concern"):
        assert label in legend


def test_xmr_gap_for_missing_value_and_no_marker_there():
    root = parse(charts.xmr_chart(xmr_points([0.8, None, 0.85, 0.9]), title="t", description="d"))
    assert {int(e.get("data-index")) for e in by_class(root, "pp-point") if e.get("data-index")} == {0, 2, 3}
    line = path_numbers(one(root, "pp-xmr-line").get("d"))
    assert [c for c, _ in line] == ["M", "M", "L"]  # the pen lifts over the gap


def test_xmr_rebased_limits_draw_as_steps():
    pts = xmr_points([0.8, 0.8], mean=0.8, lcl=0.6, ucl=1.0) + xmr_points([0.7, 0.7], mean=0.7, lcl=0.5, ucl=0.9)
    pts = [XmrPoint(f"M{i}", p.value, p.mean, p.lower_limit, p.upper_limit) for i, p in enumerate(pts)]
    root = parse(charts.xmr_chart(pts, title="t", description="d", y_min=0.4, y_max=1.0))
    segments = horizontal_segments(one(root, "pp-xmr-upper-limit").get("d"))
    assert len(segments) == 2
    (a0, a1, ay), (b0, b1, by) = segments
    assert approx(a0, G.plot_left) and approx(b1, G.plot_right)
    assert approx(a1, b0) and approx(a1, G.plot_left + G.plot_width / 2)  # the step is between M1 and M2
    assert approx(ay, y_px(1.0, 0.4, 1.0)) and approx(by, y_px(0.9, 0.4, 1.0))
    assert not by_class(root, "pp-xmr-upper-2sigma")  # none given: none drawn


def test_xmr_empty_and_single_point():
    root = parse(charts.xmr_chart([], title="Nothing yet", description="No data"))
    assert one(root, "pp-empty-message").text == "No data to show"
    assert not by_class(root, "pp-point")
    root = parse(charts.xmr_chart(xmr_points([0.8]), title="t", description="d"))
    (point,) = by_class(root, "pp-point--common")
    assert approx(float(point.get("cx")), G.plot_left + G.plot_width / 2)
    x0, x1, _ = horizontal_segments(one(root, "pp-xmr-mean").get("d"))[0]
    assert approx(x0, G.plot_left) and approx(x1, G.plot_right)


def test_xmr_auto_domain_keeps_every_limit_inside_the_plot():
    root = parse(charts.xmr_chart(xmr_points([0.2, 0.5, 0.3], mean=0.35, lcl=0.05, ucl=0.65), title="t", description="d"))
    for css in ("pp-xmr-upper-limit", "pp-xmr-lower-limit", "pp-xmr-mean"):
        _, _, y = horizontal_segments(one(root, css).get("d"))[0]
        assert G.plot_top < y < G.plot_bottom  # strictly inside: never drawn on the frame


def test_xmr_rejects_bad_input():
    with pytest.raises(ValueError):
        XmrPoint("m", 0.5, mean=0.5, lower_limit=0.6, upper_limit=0.9)  # limits out of order
    with pytest.raises(ValueError):
        XmrPoint("m", None, 0.5, 0.1, 0.9, signal="concern")  # a signal without a value
    with pytest.raises(ValueError):
        XmrPoint("m", math.inf, 0.5, 0.1, 0.9)
    with pytest.raises(ValueError):
        XmrPoint("m", 0.5, 0.5, 0.1, 0.9, signal="bad")
    with pytest.raises(ValueError):
        charts.xmr_chart(xmr_points([0.5]), title="t", description="d", chart_id='x" onload="alert(1)')
    with pytest.raises(ValueError):
        charts.xmr_chart(xmr_points([0.5] * (charts.MAX_POINTS + 1)), title="t", description="d")


# --- funnel ---------------------------------------------------------------------------------


def funnel_limits(benchmark=0.8, ns=(10, 50, 100, 500, 1000)):
    out = []
    for n in ns:
        s = math.sqrt(benchmark * (1 - benchmark) / n)
        out.append(FunnelLimit(n, max(0, benchmark - 1.96 * s), min(1, benchmark + 1.96 * s),
                               max(0, benchmark - 3.09 * s), min(1, benchmark + 3.09 * s)))
    return out


def test_funnel_limits_benchmark_and_points_where_the_numbers_say():
    limits = funnel_limits()
    points = [FunnelPoint("RA1", 100, 0.85), FunnelPoint("RB2", 1000, 0.95, "high_998"),
              FunnelPoint("RC3", 500, 0.74, "low_95")]
    root = parse(charts.funnel_plot(points, limits, benchmark=0.8, title="t", description="d", y_min=0.0, y_max=1.0))
    x_max = 1000.0  # nice_domain(0, 1000)
    x_px = lambda n: G.plot_left + n / x_max * G.plot_width  # noqa: E731
    bench = horizontal_segments(one(root, "pp-funnel-benchmark").get("d"))[0]
    assert approx(bench[2], y_px(0.8, 0.0, 1.0))
    for css, attr in (("pp-funnel-upper-95", "upper_95"), ("pp-funnel-lower-95", "lower_95"),
                      ("pp-funnel-upper-998", "upper_998"), ("pp-funnel-lower-998", "lower_998")):
        curve = path_numbers(one(root, css).get("d"))
        assert len(curve) == len(limits), css
        for (_, (x, y)), lim in zip(curve, limits, strict=True):
            assert approx(x, x_px(lim.responses)), css
            assert approx(y, y_px(getattr(lim, attr), 0.0, 1.0)), css
    # 99.8% limits lie outside the 95% ones at every n
    up95 = path_numbers(one(root, "pp-funnel-upper-95").get("d"))
    up998 = path_numbers(one(root, "pp-funnel-upper-998").get("d"))
    assert all(b[1][1] <= a[1][1] for a, b in zip(up95, up998, strict=True))
    marks = {int(e.get("data-index")): e for e in by_class(root, "pp-point")}
    assert approx(float(marks[0].get("cx")), x_px(100)) and approx(float(marks[0].get("cy")), y_px(0.85, 0, 1))
    assert marks[1].get("class") == "pp-point pp-point--high_998" and marks[1].get("fill") == charts.NHS_BLUE
    assert marks[2].get("class") == "pp-point pp-point--low_95" and marks[2].get("fill") == charts.NHS_WHITE
    labels = [e.text for e in by_class(root, "pp-point-label")]
    assert labels == ["RB2"]  # only points beyond 99.8% are labelled


def test_funnel_limits_are_sorted_by_responses():
    shuffled = list(reversed(funnel_limits()))
    root = parse(charts.funnel_plot([], shuffled, benchmark=0.8, title="t", description="d"))
    xs = [n[0] for _, n in path_numbers(one(root, "pp-funnel-upper-95").get("d"))]
    assert xs == sorted(xs)


def test_funnel_empty_and_single_point():
    root = parse(charts.funnel_plot([], [], benchmark=0.8, title="t", description="d"))
    assert one(root, "pp-empty-message").text == "No data to show"
    root = parse(charts.funnel_plot([FunnelPoint("RA1", 40, 0.9)], [], benchmark=0.8, title="t", description="d"))
    (p,) = by_class(root, "pp-point")
    assert G.plot_left < float(p.get("cx")) <= G.plot_right
    assert G.plot_top <= float(p.get("cy")) <= G.plot_bottom


def test_funnel_rejects_bad_points():
    with pytest.raises(ValueError):
        FunnelPoint("RA1", -1, 0.5)
    with pytest.raises(ValueError):
        FunnelPoint("RA1", 10, 0.5, "outside")
    with pytest.raises(ValueError):
        FunnelLimit(10, lower_95=0.5, upper_95=0.9, lower_998=0.6, upper_998=0.95)


# --- line and stacked bars --------------------------------------------------------------------


def test_line_chart_points_and_zero_baseline():
    values = [0.0, 5000.0, 25000.0]
    root = parse(charts.line_chart(["Oct", "Nov", "Dec"], values, title="t", description="d", y_max=30000.0))
    pts = sorted(by_class(root, "pp-line-point"), key=lambda e: int(e.get("data-index")))
    for i, p in enumerate(pts):
        assert approx(float(p.get("cx")), band_centre(i, 3))
        assert approx(float(p.get("cy")), y_px(values[i], 0.0, 30000.0))
    assert approx(float(pts[0].get("cy")), G.plot_bottom)  # zero sits on the axis


def test_line_chart_empty_single_and_gaps():
    assert one(parse(charts.line_chart([], [], title="t", description="d")), "pp-empty-message") is not None
    root = parse(charts.line_chart(["Oct"], [100.0], title="t", description="d"))
    (p,) = by_class(root, "pp-line-point")
    assert approx(float(p.get("cx")), G.plot_left + G.plot_width / 2)
    root = parse(charts.line_chart(["a", "b", "c"], [1.0, None, 3.0], title="t", description="d"))
    assert [c for c, _ in path_numbers(one(root, "pp-line").get("d"))] == ["M", "M"]
    with pytest.raises(ValueError):
        charts.line_chart(["a"], [1.0, 2.0], title="t", description="d")


def test_stacked_bars_stack_bottom_up_with_patterns():
    series = [BarSeries("Released", [100.0, 0.0], charts.NHS_BLUE),
              BarSeries("Diverted", [50.0, 20.0], charts.NHS_ORANGE, "hatch"),
              BarSeries("Held", [0.0, 30.0], charts.NHS_DARK_GREY, "dots")]
    dmax = 200.0
    root = parse(charts.stacked_bar_chart(["Oct", "Nov"], series, title="t", description="d", y_max=dmax))
    bars = {(int(e.get("data-index")), int(e.get("data-series"))): e for e in by_class(root, "pp-bar")}
    assert set(bars) == {(0, 0), (0, 1), (1, 1), (1, 2)}  # zero segments are not drawn
    released, diverted = bars[(0, 0)], bars[(0, 1)]
    assert approx(float(released.get("y")) + float(released.get("height")), G.plot_bottom)
    assert approx(float(released.get("y")), y_px(100.0, 0.0, dmax))
    assert approx(float(diverted.get("y")) + float(diverted.get("height")), float(released.get("y")))  # on top
    assert approx(float(diverted.get("y")), y_px(150.0, 0.0, dmax))
    assert approx(float(released.get("x")) + float(released.get("width")) / 2, band_centre(0, 2))
    # segments differ by pattern as well as colour; the patterns are defined in the SVG
    assert released.get("fill") == charts.NHS_BLUE
    assert diverted.get("fill") == "url(#bars-pattern-1)" and bars[(1, 2)].get("fill") == "url(#bars-pattern-2)"
    ids = {e.get("id") for e in root.iter(f"{{{charts.SVG_NS}}}pattern")}
    assert ids == {"bars-pattern-1", "bars-pattern-2"}


def test_stacked_bars_empty_single_and_bad_input():
    assert by_class(parse(charts.stacked_bar_chart([], [], title="t", description="d")), "pp-empty-message")
    root = parse(charts.stacked_bar_chart(["Oct"], [BarSeries("x", [10.0])], title="t", description="d"))
    (bar,) = by_class(root, "pp-bar")
    top = float(bar.get("y"))
    assert G.plot_top < top < G.plot_bottom  # the auto domain leaves headroom above the tallest bar
    assert approx(top + float(bar.get("height")), G.plot_bottom)
    all_zero = parse(charts.stacked_bar_chart(["Oct"], [BarSeries("x", [0.0])], title="t", description="d"))
    assert not by_class(all_zero, "pp-bar")
    with pytest.raises(ValueError):
        BarSeries("x", [-1.0])
    with pytest.raises(ValueError):
        BarSeries("x", [1.0], colour="red; stroke: url(javascript:alert(1))")
    with pytest.raises(ValueError):
        charts.stacked_bar_chart(["a", "b"], [BarSeries("x", [1.0])], title="t", description="d")


# --- text, names and well-formedness, for every chart ----------------------------------------


def all_charts(text: str) -> list[str]:
    return [
        charts.xmr_chart([XmrPoint(text, 0.5, 0.5, 0.1, 0.9, signal="concern")], title=text, description=text,
                         y_label=text, value_format=lambda v: text),
        charts.funnel_plot([FunnelPoint(text, 10, 0.2, "low_998")], funnel_limits(), benchmark=0.8, title=text,
                           description=text, x_label=text, y_label=text),
        charts.line_chart([text], [1.0], title=text, description=text, y_label=text, series_label=text),
        charts.stacked_bar_chart([text], [BarSeries(text, [1.0], pattern="hatch")], title=text, description=text,
                                 y_label=text),
    ]


def test_every_text_is_escaped_and_every_chart_parses():
    for svg in all_charts(NASTY):
        root = parse(svg)
        assert "<script" not in svg and "</svg><" not in svg
        assert not list(root.iter("script")) and not list(root.iter(f"{{{charts.SVG_NS}}}script"))
        texts = [t.text for t in root.iter() if t.text and "alert" in t.text]
        assert texts and all(t == NASTY for t in texts)  # round-trips exactly through the XML parser


def test_every_chart_has_an_accessible_name_and_description():
    for svg in all_charts("Label"):
        root = parse(svg)
        assert root.get("role") == "img"
        title_id, desc_id = root.get("aria-labelledby").split()
        title = root.find("svg:title", NS)
        desc = root.find("svg:desc", NS)
        assert title is not None and title.get("id") == title_id and title.text == "Label"
        assert desc is not None and desc.get("id") == desc_id and desc.text == "Label"
        assert list(root)[0] is title  # first child: what assistive technology reads


def test_charts_use_no_style_attributes_or_event_handlers():
    """The portal's CSP forbids inline styles; SVG presentation attributes are used instead."""
    for svg in all_charts("x"):
        for e in parse(svg).iter():
            assert "style" not in e.attrib
            assert not any(k.startswith("on") for k in e.attrib)


def test_ids_are_prefixed_by_chart_id_so_two_charts_on_a_page_do_not_clash():
    a = charts.stacked_bar_chart(["a"], [BarSeries("x", [1.0], pattern="dots")], title="t", description="d", chart_id="one")
    b = charts.stacked_bar_chart(["a"], [BarSeries("x", [1.0], pattern="dots")], title="t", description="d", chart_id="two")
    ids_a = {e.get("id") for e in parse(a).iter() if e.get("id")}
    ids_b = {e.get("id") for e in parse(b).iter() if e.get("id")}
    assert ids_a and not ids_a & ids_b
    assert all(i.startswith("one") for i in ids_a)


def test_tick_formatters():
    assert charts.format_percent(0.873) == "87.3%" and charts.format_percent(0.9) == "90%"
    assert charts.format_pounds(123456) == "£1,235" and charts.format_pounds(-5000) == "-£50"
    assert charts.format_number(1250000.0) == "1,250,000" and charts.format_number(0.25) == "0.25"
