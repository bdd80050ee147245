"""The Jinja2 environment: templates, autoescape, and the filters that format figures.

Every figure on a page goes through one of these filters, and each renders a ``Suppressed``
value as the word "suppressed" linked to the explanation: a template cannot format a hidden
figure as a number, because there is no number to format.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from services.portal import views
from services.portal.views import Suppressed

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"
NHSUK_CSS = "nhsuk/nhsuk-frontend.min.css"
PORTAL_CSS = "portal.css"

SUPPRESSED_HTML = Markup(
    '<a class="pp-suppressed" href="{href}">suppressed'
    '<span class="nhsuk-u-visually-hidden"> (why figures are suppressed)</span></a>'
).format(href=views.SUPPRESSION_HREF)


def suppressed_markup(_: Suppressed | None = None) -> Markup:
    return SUPPRESSED_HTML


def format_count(value: int | Suppressed) -> Markup | str:
    if isinstance(value, Suppressed):
        return SUPPRESSED_HTML
    _require_int(value, "a count")
    return f"{value:,}"


def format_percent(value: float | Suppressed, decimals: int = 1) -> Markup | str:
    """A proportion in [0, 1] as a percentage: 0.8734 -> '87.3%'."""
    if isinstance(value, Suppressed):
        return SUPPRESSED_HTML
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"a proportion must be a number, got {value!r}")
    return f"{value * 100:.{decimals}f}%"


def format_interval(value: views.Interval | Suppressed | None) -> Markup | str:
    if isinstance(value, Suppressed):
        return SUPPRESSED_HTML
    if value is None:
        return ""
    return f"{format_percent(value.low)} to {format_percent(value.high)}"


def format_pence(value: int | Suppressed) -> Markup | str:
    """Integer pence as pounds: 123456 -> '£1,234.56'; negative with a minus sign (U+2212)."""
    if isinstance(value, Suppressed):
        return SUPPRESSED_HTML
    _require_int(value, "money (integer pence)")
    sign = "\u2212" if value < 0 else ""
    pounds, pence = divmod(abs(value), 100)
    return f"{sign}£{pounds:,}.{pence:02d}"


def format_bps(value: int) -> str:
    _require_int(value, "basis points")
    return f"{value / 100:g}%"


def svg_markup(svg: str) -> Markup:
    """Mark a chart from ``services.portal.charts`` safe to include: those escape their own text.
    Anything that is not one of their SVG documents is refused rather than trusted."""
    if not isinstance(svg, str) or not svg.startswith('<svg xmlns="http://www.w3.org/2000/svg" ') or not svg.endswith("</svg>"):
        raise ValueError("svg_markup takes an SVG made by services.portal.charts")
    return Markup(svg)


def _require_int(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {value!r}")


def make_environment(templates_dir: Path = TEMPLATES_DIR) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,  # a missing value is a bug, not an empty string
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(
        count=format_count,
        percent=format_percent,
        interval=format_interval,
        pence=format_pence,
        bps=format_bps,
        svg=svg_markup,
        period=views.period_label,
    )
    env.tests["suppressed"] = views.is_suppressed
    env.globals.update(
        suppressed_html=SUPPRESSED_HTML,
        suppression_href=views.SUPPRESSION_HREF,
        nhsuk_css=NHSUK_CSS,
        portal_css=PORTAL_CSS,
        funnel_band_labels=views.FUNNEL_BAND_TABLE_LABELS,
    )
    return env


def render(env: jinja2.Environment, template: str, **context: Any) -> str:
    context.setdefault("layout", views.Layout())
    return env.get_template(template).render(**context)


__all__ = ["make_environment", "render"]
