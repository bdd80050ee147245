"""Feedback's publication routes (scope ``reports:read``): the suppressed FFT figures the portal's
public pages show, as NHS England publishes the FFT (setting, mode of collection, site,
previous-period comparison, CSV), a provider's FFT series by month or ISO week, and PROM health
gain. Every figure is suppressed as ``read_models`` describes, over the providers the token's
binding sees. Response rates need eligible episodes, which the payments service holds
(``GET /v1/publication/eligible-episodes`` there); the portal puts the two together.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable
from datetime import date, datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from services.feedback import domain
from services.feedback import read_models as rm
from shared.auth import principal_of
from shared.contracts import ServiceType
from shared.http import PROBLEM_RESPONSES, Problem
from shared.periods import period_of
from shared.reach import Reach, reach_of

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)

PAGE_MAX = 1000
PUBLICATION_RULE = (
    "Each patient's first FFT answer per episode, in the period its authored_at (UTC) falls in. Figures from 1-4"
    " responses are withheld (primary; zero is shown); when a table with a published total would have exactly one"
    " withheld figure, the next smallest is withheld too (secondary, repeated over each quarter's providers-by-months"
    " grid so that quarter and month tables cannot be subtracted from each other). Secondary suppression withholds"
    " counts and keeps whole-number percentages. Computed over the providers this token sees.")
TrustCode = Annotated[str, Path(pattern=r"^[A-Z0-9]{3}$", description="A trust's ODS code")]


class FftPublicationPage(BaseModel):
    period: str = Field(description="YYYY-MM or YYYY-Qn")
    kind: Literal["month", "quarter"]
    previous_period: str
    level: Literal["trust", "site"]
    setting: str | None = Field(description="The care setting the figures are for; null: every setting")
    rule: str
    providers: list[rm.ProviderFigures] = Field(description="One page, by provider code (see next_cursor)")
    total: rm.FftFigures = Field(description="Over every provider the token sees (all pages); never suppressed")
    total_by_setting: list[rm.Part]
    total_by_mode: list[rm.Part]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end")


class FftSeries(BaseModel):
    provider_code: str
    interval: Literal["month", "week"]
    from_: str = Field(alias="from")
    to: str
    rule: str
    points: list[rm.SeriesPoint]

    model_config = {"populate_by_name": True}


class FftPeriods(BaseModel):
    first_month: str | None = Field(description="The first month (UTC) with an FFT answer from a provider the token sees")
    latest_month: str | None


class PromPublication(BaseModel):
    period: str
    min_count: int
    rule: str
    groups: list[domain.PromGroup]


def _reach(request: Request) -> Reach:
    return reach_of(principal_of(request), request.app.state.reference)


def _organisation(request: Request) -> Callable[[str], rm.Organisation]:
    ref = request.app.state.reference

    def of(code: str) -> rm.Organisation:
        return rm.Organisation(ref.trust_of(code) or code, ref.region_of_provider(code))

    return of


def _period(field: str, value: str, *kinds: str) -> rm.Period:
    try:
        period = rm.parse_period(value)
    except ValueError as exc:
        raise Problem(422, "Invalid request", f"{field}: {exc}", errors=[{"field": field, "message": str(exc)}]) from exc
    if period.kind not in kinds:
        message = f"must be a {' or '.join(kinds)}"
        raise Problem(422, "Invalid request", f"{field} {message}", errors=[{"field": field, "message": message}])
    return period


async def _publication(request: Request, period: rm.Period, level: rm.Level, setting: str | None) -> rm.Publication:
    """The period's publication with the previous period beside it, from one query over the
    quarters both fall in (each quarter's grid decides its months: read_models.publish)."""
    previous = rm.previous_period(period)
    start = rm.parse_period(rm.quarter_of(previous.code)).start
    end = rm.parse_period(rm.quarter_of(period_of(period.end - timedelta(days=1)))).end
    async with request.app.state.runtime.pool.acquire() as conn:
        rows = await rm.first_fft_counts(conn, start, end, bucket="month", setting=setting)
    visible, organisation = _reach(request).sees_provider, _organisation(request)
    current = rm.publish(rows, period, level=level, setting=setting, organisation=organisation, visible=visible)
    before = rm.publish(rows, previous, level=level, setting=setting, organisation=organisation, visible=visible)
    return rm.with_previous(current, before)


@router.get("/publication/fft", response_model=FftPublicationPage, tags=["publication"],
            summary="FFT results per provider for a month or a quarter: counts, % positive and negative, by setting and"
                    " mode, previous period; suppressed")
async def fft_publication(
    request: Request,
    period: Annotated[str, Query(pattern=rm.MONTH_OR_QUARTER_PATTERN, description="YYYY-MM or YYYY-Qn")],
    level: Annotated[Literal["trust", "site"], Query(description="trust: one row per trust; site: its sites")] = "trust",
    setting: Annotated[ServiceType | None, Query(description="Only answers about this care setting")] = None,
    trust: Annotated[str | None, Query(pattern=r"^[A-Z0-9]{3}$", description="Only this trust's rows (suppression is"
                                                                              " still computed over every provider)")] = None,
    cursor: Annotated[str | None, Query(pattern=r"^[A-Z0-9]{3,5}$", description="The last provider code of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 500,
) -> FftPublicationPage:
    p = _period("period", period, "month", "quarter")
    publication = await _publication(request, p, level, setting)
    rows = [r for r in publication.providers
            if (cursor is None or r.provider_code > cursor) and (trust is None or r.trust_code == trust)]
    page = rows[:limit]
    return FftPublicationPage(
        period=p.code, kind=p.kind, previous_period=rm.previous_period(p).code, level=level, setting=setting,  # type: ignore[arg-type]
        rule=PUBLICATION_RULE, providers=page, total=publication.total, total_by_setting=publication.total_by_setting,
        total_by_mode=publication.total_by_mode, next_cursor=page[-1].provider_code if len(rows) > limit else None)


# The national FFT publication's layout (NHS England's FFT data files, as nhsengland/fft_pipeline
# src/fft/config.py writes its "Trusts" and "Sites" sheets). Matched: the order and names of the
# totals, percentage, answer and mode-of-collection columns; "*" for a withheld figure; 0 shown.
# Not matched, and why: the publication's parent columns (ICB Code, ICB Name) become Region Code
# and Region Name (a trust here belongs to one region but is paid by several ICBs); Period and
# Setting lead each row (the publication is one file per month and setting); percentages are the
# whole-number percentages of the FFT report as decimals (0.87), not four decimal places;
# "Total Eligible" is left empty (eligible episodes are the payments service's; the portal's CSV
# fills it); modes: app is "Electronic Home", tablet "Electronic Discharge", all paper is "Paper
# Discharge" (paper at home is not told apart, so "Mode Paper Home" is empty); a final ALL row is
# the total over the providers the token sees.
CSV_LEAD = ["Period", "Setting", "Region Code", "Region Name"]
CSV_TRUST = ["Trust Code", "Trust Name"]
CSV_SITE = ["Site Code", "Site Name"]
CSV_FIGURES = ["Total Responses", "Total Eligible", "Percentage Positive", "Percentage Negative", "Very Good", "Good",
               "Neither Good nor Poor", "Poor", "Very Poor", "Don't Know"]
CSV_MODES = {"Mode SMS": "sms", "Mode Electronic Discharge": "tablet", "Mode Electronic Home": "app",
             "Mode Paper Discharge": "paper", "Mode Paper Home": None, "Mode Telephone": "telephone",
             "Mode Online": "online", "Mode Other": "other"}
WITHHELD = "*"


def _cell(value: int | None, suppressed: bool) -> str:
    return WITHHELD if suppressed or value is None else str(value)


def _pct(value: int | None) -> str:
    return "" if value is None else f"{value / 100:.2f}"  # None here: no responses, nothing to divide


def csv_figures(f: rm.FftFigures) -> list[str]:
    """Total Responses .. Don't Know for one row; "*" where withheld (secondary keeps the percentages)."""
    hidden = f.suppression != "none"
    counts = f.counts or {}
    pcts = [WITHHELD, WITHHELD] if f.suppression == "primary" else [_pct(f.pct_positive), _pct(f.pct_negative)]
    answers = [_cell(counts.get(name), hidden) for name in ("very_good", "good", "neither", "poor", "very_poor", "dont_know")]
    return [_cell(f.responses, hidden), "", *pcts, *answers]


def csv_modes(parts: list[rm.Part], parent_hidden: bool) -> list[str]:
    by_key = {p.key: p.figures for p in parts}
    out = []
    for mode in CSV_MODES.values():
        if mode is None:
            out.append("")
            continue
        f = by_key.get(mode)
        out.append(WITHHELD if parent_hidden or (f is not None and f.suppression != "none") else str(f.responses if f else 0))
    return out


def _csv_line(values: list[Any]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(values)
    return out.getvalue()


@router.get("/publication/fft.csv", tags=["publication"], response_class=Response,
            responses={200: {"content": {"text/csv": {}}}},
            summary="The FFT publication for a month or a quarter as CSV in the national publication's layout (streamed)")
async def fft_publication_csv(
    request: Request,
    period: Annotated[str, Query(pattern=rm.MONTH_OR_QUARTER_PATTERN, description="YYYY-MM or YYYY-Qn")],
    level: Annotated[Literal["trust", "site"], Query()] = "trust",
    setting: Annotated[ServiceType | None, Query()] = None,
) -> Response:
    p = _period("period", period, "month", "quarter")
    publication = await _publication(request, p, level, setting)  # before streaming: a refusal is still a problem
    ref = request.app.state.reference

    async def lines() -> AsyncIterator[str]:
        head = CSV_LEAD + CSV_TRUST + (CSV_SITE if level == "site" else []) + CSV_FIGURES
        yield _csv_line(head + (list(CSV_MODES) if level == "trust" else []))
        lead = [p.code, setting or "all"]
        for row in publication.providers:
            region = [row.region_code or "", ref.regions.get(row.region_code or "", "")]
            trust = [row.trust_code, ref.providers[row.trust_code].name if row.trust_code in ref.providers else ""]
            if level == "site":
                site = ref.sites.get(row.provider_code)
                place = [row.provider_code if site else "", site.name if site else "(the trust itself)"]
                yield _csv_line(lead + region + trust + place + csv_figures(row.figures))
            else:
                yield _csv_line(lead + region + trust + csv_figures(row.figures)
                                + csv_modes(row.by_mode, row.figures.suppression != "none"))
        total = lead + ["", "", "ALL", "Total (providers this token sees)"] + (["", ""] if level == "site" else [])
        yield _csv_line(total + csv_figures(publication.total) + (csv_modes(publication.total_by_mode, False) if level == "trust" else []))

    name = f"fft-{level}-{p.code}{'-' + setting if setting else ''}.csv"
    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8",
                             headers={"content-disposition": f'attachment; filename="{name}"'})


def _weeks_of_quarter(quarter: str) -> list[str]:
    """The ISO weeks whose Thursday falls in the quarter."""
    q = rm.parse_period(quarter)
    monday = q.start - timedelta(days=q.start.weekday())
    out = []
    while monday < q.end:
        code = rm.week_code(monday)
        if rm.quarter_of(code) == quarter:
            out.append(code)
        monday += timedelta(days=7)
    return out


def _default_range(interval: str, today: date) -> tuple[str, str]:
    if interval == "month":
        to = rm.parse_period(period_of(today))
        start = to.start
        for _ in range(23):
            start = rm.parse_period(period_of(start - timedelta(days=1))).start
        return period_of(start), to.code
    return rm.week_code(today - timedelta(weeks=51)), rm.week_code(today)


@router.get("/publication/fft/providers/{provider_code}/series", response_model=FftSeries, response_model_by_alias=True,
            tags=["publication"], summary="A trust's FFT figures by month or ISO week (for its XmR chart); suppressed")
async def fft_series(
    request: Request,
    provider_code: TrustCode,
    interval: Annotated[Literal["month", "week"], Query()] = "month",
    from_: Annotated[str | None, Query(alias="from", pattern=rm.MONTH_OR_WEEK_PATTERN,
                                       description="YYYY-MM (interval=month) or YYYY-Www (week); default: 24 months or 52 weeks back")] = None,
    to: Annotated[str | None, Query(pattern=rm.MONTH_OR_WEEK_PATTERN, description="Inclusive; default: now")] = None,
) -> FftSeries:
    ref = request.app.state.reference
    if provider_code not in ref.providers:
        raise Problem(404, "Not found", f"{provider_code} is not a known trust")
    reach = _reach(request)
    reach.require(reach.sees_provider(provider_code), "provider_code", f"provider {provider_code}")
    default_from, default_to = _default_range(interval, datetime.now(timezone.utc).date())
    first = _period("from", from_ or default_from, interval)
    last = _period("to", to or default_to, interval)
    if last.start < first.start:
        raise Problem(422, "Invalid request", "to is before from", errors=[{"field": "to", "message": "before from"}])
    wanted = rm.series_periods(first, last)
    most = rm.MAX_SERIES_MONTHS if interval == "month" else rm.MAX_SERIES_WEEKS
    if len(wanted) > most:
        raise Problem(422, "Invalid request", f"at most {most} {interval}s", errors=[{"field": "from", "message": f"at most {most} {interval}s"}])
    # Whole quarters, so each period's verdict does not depend on where the range was cut.
    quarters = sorted({rm.quarter_of(code) for code in wanted})
    if interval == "month":
        periods = [m for q in quarters for m in rm.months_of(rm.parse_period(q))]
    else:
        periods = [w for q in quarters for w in _weeks_of_quarter(q)]
    start, end = rm.parse_period(periods[0]).start, rm.parse_period(periods[-1]).end
    async with request.app.state.runtime.pool.acquire() as conn:
        rows = await rm.first_fft_counts(conn, start, end, bucket=interval)
    points = rm.provider_series(rows, provider_code, periods, organisation=_organisation(request), visible=reach.sees_provider)
    keep = set(wanted)
    return FftSeries(provider_code=provider_code, interval=interval, from_=first.code, to=last.code, rule=PUBLICATION_RULE,
                     points=[pt for pt in points if pt.period in keep])


@router.get("/publication/fft/periods", response_model=FftPeriods, tags=["publication"],
            summary="The first and latest month with FFT answers from the providers the token sees")
async def fft_periods(request: Request) -> FftPeriods:
    reach = _reach(request)
    ref = request.app.state.reference
    codes = None if reach.national else sorted(c for c in (*ref.providers, *ref.sites) if reach.sees_provider(c))
    async with request.app.state.runtime.pool.acquire() as conn:
        first, latest = await rm.fft_month_bounds(conn, codes)
    return FftPeriods(first_month=first, latest_month=latest)


@router.get("/publication/proms", response_model=PromPublication, tags=["publication"],
            summary="PROM average health gain per provider, instrument and procedure for pairs completed in a period")
async def prom_publication(
    request: Request,
    period: Annotated[str, Query(pattern=rm.MONTH_OR_QUARTER_PATTERN, description="YYYY-MM or YYYY-Qn")],
) -> PromPublication:
    p = _period("period", period, "month", "quarter")
    n = request.app.state.runtime.settings.prom_min_count
    async with request.app.state.runtime.pool.acquire() as conn:
        rows = await rm.prom_pairs_in(conn, p.start, p.end)
    reach = _reach(request)
    value_set = request.app.state.eq5d_value_set
    groups = domain.prom_report([r for r in rows if reach.sees_provider(r[0])], n, value_set)
    rule = (f"Pairs whose post-operative answer was authored in {p.code} (UTC); health gain = post − pre (Oxford total"
            f" 0-48, EQ VAS 0-100; higher is better); pct_improved: pairs with a gain above 0. {domain.prom_index_rule(value_set)}"
            f" Groups with fewer than {n} pairs show the count, not the averages.")
    return PromPublication(period=p.code, min_count=n, rule=rule, groups=groups)
