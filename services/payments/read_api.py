"""Payments' read routes for the portal.

Public aggregates (scope ``reports:read``, the portal's public pages): eligible episodes for FFT
response rates, a provider's money by month with its appeals (counts only), a regional fund's
inflows by provider. Finance data (scope ``ledger:read``, the signed-in user's own token): a
provider's settlement reports, the episodes behind each (JSON pages and a streamed CSV), a
commissioner's month by provider. Bindings as everywhere (shared/reach.py): an organisation
outside the token's binding is a 403 naming the field, a settlement outside it a 404.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections.abc import AsyncIterator
from datetime import date, datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from services.payments import read_models as rm
from services.payments.equity import equity_rows
from shared.auth import principal_of
from shared.contracts import IcbCode, OdsCode, PeriodCode, RegionCode
from shared.http import PROBLEM_RESPONSES, Problem
from shared.reach import Reach, not_found, reach_of

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)

MONTH_OR_QUARTER = r"^20[0-9]{2}-((0[1-9]|1[0-2])|Q[1-4])$"
# A settlement id names its provider, period and scheme version (store.settle_unit); late ones
# for episodes that arrived after the period closed end in :late-<n>.
SETTLEMENT_ID = r"^[A-Z0-9]{3,5}:20[0-9]{2}-(0[1-9]|1[0-2]):[a-z0-9][a-z0-9\-]{1,62}@[0-9]{1,7}(:late-[0-9]{1,6})?$"
SettlementId = Annotated[str, Path(pattern=SETTLEMENT_ID, max_length=120, description="As GET /v1/settlements lists it")]
DEFAULT_MONTHS = 12
_QUARTER = re.compile(r"^(20\d{2})-Q([1-4])$")


class EligibleRow(BaseModel):
    provider_code: str
    region_code: str
    service_type: str
    episodes: int = Field(description="Episodes of care with activity in the period: everyone who could have answered")


class EligibleEpisodes(BaseModel):
    period: str
    months: list[str]
    items: list[EligibleRow] = Field(description="Per provider and service type; at most providers x service types rows")


class MoneyMonth(BaseModel):
    period: str
    episodes: int
    billed_pence: int
    at_risk_pence: int = Field(description="Held back from the month's payments")
    released_pence: int
    diverted_pence: int
    still_held_pence: int = Field(description="At risk and not settled yet; at_risk = released + diverted + still_held")
    appealed_back_pence: int = Field(description="Diverted, then returned to the provider by an upheld appeal")
    appeals_lodged: int
    appeals_upheld: int
    appeals_rejected: int


class ProviderMoney(BaseModel):
    provider_code: str
    region_code: str
    from_: str = Field(alias="from")
    to: str
    months: list[MoneyMonth]

    model_config = {"populate_by_name": True}


class Inflow(BaseModel):
    provider_code: str
    diverted_pence: int
    appealed_back_pence: int
    net_diverted_pence: int


class FundInflows(BaseModel):
    region_code: str
    from_: str = Field(alias="from")
    to: str
    providers: list[Inflow]
    net_diverted_pence: int

    model_config = {"populate_by_name": True}


class SettlementReport(BaseModel):
    settlement_id: str
    provider_code: str
    region_code: str
    period: str
    scheme_id: str
    scheme_version: int
    run_at: datetime
    run_by: str
    billed_pence: int
    held_pence: int
    released_pence: int
    diverted_pence: int
    responses: int
    episodes: int
    min_sample_applied: bool
    cap_applied: bool
    cap_pence: int


class SettlementPage(BaseModel):
    items: list[SettlementReport]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end")


class EpisodeLine(BaseModel):
    episode_id: str
    payment_id: str
    commissioner_code: str
    service_type: str
    activity_date: date
    amount_pence: int
    at_risk_pence: int
    released_pence: int
    diverted_pence: int
    release_bps: int | None
    basis: str | None = Field(description="Why this share was released (the decision's own words)")
    deciding_submission_id: str | None
    instrument: str | None = Field(description="The deciding answer's instrument (fft or patient_power); null: no answer")
    fft_answer: int | None
    patient_choice: str | None
    appeal_status: Literal["open", "upheld", "rejected"] | None
    appealed_back_pence: int


class SettlementEpisodes(BaseModel):
    settlement: SettlementReport
    episodes: list[EpisodeLine]
    next_cursor: str | None = Field(description="The last episode_id of this page; pass as `cursor`; null at the end")


class CommissionerProvider(BaseModel):
    provider_code: str
    episodes: int
    billed_pence: int
    paid_now_pence: int = Field(description="Paid at once: the part not at risk")
    still_held_pence: int
    released_pence: int
    diverted_pence: int
    appealed_back_pence: int


class CommissionerPeriod(BaseModel):
    commissioner_code: str
    period: str
    providers: list[CommissionerProvider]


class Rate(BaseModel):
    rate: float | None = Field(description="k / n; null when n is 0 or the stratum is suppressed")
    low: float | None = Field(description="Wilson 95% interval, lower end")
    high: float | None = Field(description="Wilson 95% interval, upper end")


class EquityRow(BaseModel):
    dimension: Literal["imd_decile", "age_band", "setting"]
    stratum: str = Field(description="IMD decile 1 (most deprived) to 10, an age band, a setting; `unknown` where the"
                                     " payment request did not say")
    episodes: int = Field(description="Settled episodes in the stratum")
    suppressed: bool = Field(description="Fewer than min_episodes episodes: every figure but the count is withheld")
    responses: int | None = Field(description="Episodes decided by a patient's answer")
    response_rate: Rate
    diverted_episodes: int | None = Field(description="Episodes with any money diverted to the fund")
    diversion_rate: Rate
    held_pence: int | None
    diverted_pence: int | None = Field(description="Diverted at settlement (before any appeal)")
    diverted_share_of_held: float | None


class EquityReport(BaseModel):
    period: str
    months: list[str]
    region_code: str | None = Field(description="null: England")
    min_episodes: int
    rows: list[EquityRow]


def _reach(request: Request) -> Reach:
    return reach_of(principal_of(request), request.app.state.runtime.reference)


def _months(period: str) -> list[str]:
    if m := _QUARTER.fullmatch(period):
        year, q = m.group(1), int(m.group(2))
        return [f"{year}-{month:02d}" for month in range(3 * q - 2, 3 * q + 1)]
    return [period]


def _range(first: str | None, last: str | None) -> list[str]:
    """The months from ``first`` to ``last`` (default: this month, and the 11 months before ``last``)."""
    last = last or rm.months_back(datetime.now(timezone.utc).date(), 1)[1]
    first = first or rm.months_back(date(int(last[:4]), int(last[5:7]), 1), DEFAULT_MONTHS)[0]
    if last < first:
        raise Problem(422, "Invalid request", "to is before from", errors=[{"field": "to", "message": "before from"}])
    months = rm.month_range(first, last)
    if len(months) > rm.MAX_RANGE_MONTHS:
        raise Problem(422, "Invalid request", f"at most {rm.MAX_RANGE_MONTHS} months",
                      errors=[{"field": "from", "message": f"at most {rm.MAX_RANGE_MONTHS} months"}])
    return months


def _known_provider(request: Request, provider_code: str) -> None:
    if provider_code not in request.app.state.runtime.reference.providers:
        raise Problem(404, "Not found", f"{provider_code} is not a known provider")


# ---------------------------------------------------------------------------------------------
# Public aggregates (reports:read)
# ---------------------------------------------------------------------------------------------
@router.get("/publication/eligible-episodes", response_model=EligibleEpisodes, tags=["publication"],
            summary="Episodes of care per provider and service type in a month or quarter (FFT response rates)")
async def eligible_episodes(
    request: Request,
    period: Annotated[str, Query(pattern=MONTH_OR_QUARTER, description="YYYY-MM or YYYY-Qn (by activity date)")],
) -> EligibleEpisodes:
    months = _months(period)
    async with request.app.state.runtime.pool.acquire() as conn:
        rows = await rm.eligible_episodes(conn, months)
    reach = _reach(request)
    return EligibleEpisodes(period=period, months=months,
                            items=[EligibleRow(**r) for r in rows if reach.sees_provider(r["provider_code"])])


@router.get("/publication/providers/{provider_code}/money", response_model=ProviderMoney, response_model_by_alias=True,
            tags=["publication"],
            summary="A provider's money by month: held back, released, diverted, still held; appeals (counts)")
async def provider_money(
    request: Request,
    provider_code: Annotated[OdsCode, Path()],
    from_: Annotated[PeriodCode | None, Query(alias="from", description="YYYY-MM; default: 11 months before `to`")] = None,
    to: Annotated[PeriodCode | None, Query(description="YYYY-MM, inclusive; default: this month")] = None,
) -> ProviderMoney:
    _known_provider(request, provider_code)
    reach = _reach(request)
    reach.require(reach.sees_provider(provider_code), "provider_code", f"provider {provider_code}")
    months = _range(from_, to)
    async with request.app.state.runtime.pool.acquire() as conn:
        rows = await rm.provider_money(conn, provider_code, months)
    region = request.app.state.runtime.reference.providers[provider_code].region_code
    return ProviderMoney(provider_code=provider_code, region_code=region, from_=months[0], to=months[-1],
                         months=[MoneyMonth(**r) for r in rows])


@router.get("/publication/funds/{region_code}/inflows", response_model=FundInflows, response_model_by_alias=True,
            tags=["publication"], summary="What each provider's patients diverted into a regional fund over a range of months")
async def fund_inflows(
    request: Request,
    region_code: Annotated[RegionCode, Path()],
    from_: Annotated[PeriodCode | None, Query(alias="from", description="YYYY-MM; default: 11 months before `to`")] = None,
    to: Annotated[PeriodCode | None, Query(description="YYYY-MM, inclusive; default: this month")] = None,
) -> FundInflows:
    if region_code not in request.app.state.runtime.reference.regions:
        raise Problem(404, "Not found", f"{region_code} is not a known region")
    reach = _reach(request)
    reach.require(reach.sees_region(region_code), "region_code", f"region {region_code}")
    months = _range(from_, to)
    async with request.app.state.runtime.pool.acquire() as conn:
        rows = await rm.fund_inflows(conn, region_code, months)
    return FundInflows(region_code=region_code, from_=months[0], to=months[-1], providers=[Inflow(**r) for r in rows],
                       net_diverted_pence=sum(r["net_diverted_pence"] for r in rows))


EQUITY_MIN_EPISODES = 10  # a published stratum smaller than this shows its count only


@router.get("/publication/equity", response_model=EquityReport, tags=["publication"],
            summary="Equity: diversion and response rates by IMD decile, age band and setting, with 95% intervals,"
                    " for England or one region")
async def equity_report(
    request: Request,
    period: Annotated[str, Query(pattern=MONTH_OR_QUARTER, description="YYYY-MM or YYYY-Qn (the episodes' period)")],
    region_code: Annotated[RegionCode | None, Query(description="One region; absent: England (a national token)")] = None,
) -> EquityReport:
    reach = _reach(request)
    if region_code is None:
        reach.require(reach.binding.national, "region_code", "England (every region)")
    else:
        if region_code not in request.app.state.runtime.reference.regions:
            raise Problem(404, "Not found", f"{region_code} is not a known region",
                          errors=[{"field": "region_code", "message": "unknown region"}])
        reach.require(reach.sees_region(region_code), "region_code", f"region {region_code}")
    months = _months(period)
    async with request.app.state.runtime.pool.acquire() as conn:
        tallies = await rm.equity_tallies(conn, months, region_code)
    return EquityReport(period=period, months=months, region_code=region_code, min_episodes=EQUITY_MIN_EPISODES,
                        rows=[EquityRow(**r) for r in equity_rows(tallies, min_episodes=EQUITY_MIN_EPISODES)])


# ---------------------------------------------------------------------------------------------
# Finance (ledger:read)
# ---------------------------------------------------------------------------------------------
def _encode(*values: str) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


def _decode(cursor: str, parts: int) -> list[str]:
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not (isinstance(value, list) and len(value) == parts and all(isinstance(v, str) and len(v) <= 200 for v in value)):
            raise ValueError("bad cursor")
        return value
    except (ValueError, TypeError):
        raise Problem(400, "Bad request", "cursor is not one this API returned",
                      errors=[{"field": "cursor", "message": "bad cursor"}]) from None


@router.get("/providers/{provider_code}/settlements", response_model=SettlementPage, tags=["settlements"],
            summary="A provider's settlement reports, newest period first")
async def provider_settlements(
    request: Request,
    provider_code: Annotated[OdsCode, Path()],
    from_: Annotated[PeriodCode | None, Query(alias="from")] = None,
    to: Annotated[PeriodCode | None, Query()] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=rm.SETTLEMENT_PAGE_MAX)] = 24,
) -> SettlementPage:
    _known_provider(request, provider_code)
    reach = _reach(request)
    reach.require(reach.sees_provider(provider_code), "provider_code", f"provider {provider_code}")
    after = _decode(cursor, 2) if cursor else None
    async with request.app.state.runtime.pool.acquire() as conn:
        rows = await rm.provider_settlements(conn, provider_code, first=from_, last=to,
                                             after=(after[0], after[1]) if after else None, limit=limit + 1)
    page = rows[:limit]
    nxt = _encode(page[-1]["period"], page[-1]["settlement_id"]) if len(rows) > limit else None
    return SettlementPage(items=[SettlementReport(**r) for r in page], next_cursor=nxt)


async def _visible_settlement(request: Request, settlement_id: str) -> dict[str, Any]:
    async with request.app.state.runtime.pool.acquire() as conn:
        found = await rm.settlement(conn, settlement_id)
    if found is None or not _reach(request).sees_provider(found["provider_code"]):
        raise not_found(f"settlement {settlement_id}")  # a record: not confirmed to strangers
    return found


@router.get("/settlements/{settlement_id}/episodes", response_model=SettlementEpisodes, tags=["settlements"],
            summary="A settlement report with one page of the episodes behind it (split, deciding answer, appeal)")
async def settlement_episodes(
    request: Request,
    settlement_id: SettlementId,
    cursor: Annotated[str | None, Query(max_length=100, description="The last episode_id of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=rm.EPISODE_PAGE_MAX)] = 100,
) -> SettlementEpisodes:
    settled = await _visible_settlement(request, settlement_id)
    async with request.app.state.runtime.pool.acquire() as conn:
        rows = await rm.settlement_episodes(conn, settled, after=cursor or "", limit=limit + 1)
    page = rows[:limit]
    return SettlementEpisodes(settlement=SettlementReport(**settled), episodes=[EpisodeLine(**r) for r in page],
                              next_cursor=page[-1]["episode_id"] if len(rows) > limit else None)


EPISODE_CSV_COLUMNS = ["settlement_id", "period", "provider_code", "episode_id", "payment_id", "commissioner_code",
                       "service_type", "activity_date", "amount_pence", "at_risk_pence", "released_pence", "diverted_pence",
                       "release_bps", "basis", "deciding_submission_id", "instrument", "fft_answer", "patient_choice",
                       "appeal_status", "appealed_back_pence"]


def _csv_line(values: list[Any]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(["" if v is None else (v.isoformat() if isinstance(v, (date, datetime)) else v) for v in values])
    return out.getvalue()


@router.get("/settlements/{settlement_id}/episodes.csv", tags=["settlements"], response_class=Response,
            responses={200: {"content": {"text/csv": {}}}},
            summary="Every episode behind a settlement report as CSV (streamed page by page)")
async def settlement_episodes_csv(request: Request, settlement_id: SettlementId) -> Response:
    settled = await _visible_settlement(request, settlement_id)  # before streaming: a refusal is still a problem
    pool = request.app.state.runtime.pool

    async def lines() -> AsyncIterator[str]:
        yield _csv_line(EPISODE_CSV_COLUMNS)
        after = ""
        while True:  # one query per page: memory stays one page whatever the settlement's size
            async with pool.acquire() as conn:
                rows = await rm.settlement_episodes(conn, settled, after=after, limit=rm.CSV_PAGE_ROWS)
            for r in rows:
                line = {**settled, **r}
                yield _csv_line([line[c] for c in EPISODE_CSV_COLUMNS])
            if len(rows) < rm.CSV_PAGE_ROWS:
                break
            after = rows[-1]["episode_id"]

    name = "settlement-" + re.sub(r"[^A-Za-z0-9.-]+", "-", settlement_id) + ".csv"
    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8",
                             headers={"content-disposition": f'attachment; filename="{name}"'})


@router.get("/commissioners/{commissioner_code}/periods/{period}/providers", response_model=CommissionerPeriod,
            tags=["figures"], summary="A commissioner's month by provider: billed, paid at once, held, released, diverted")
async def commissioner_period(
    request: Request,
    commissioner_code: Annotated[IcbCode, Path()],
    period: Annotated[PeriodCode, Path(description="YYYY-MM")],
) -> CommissionerPeriod:
    ref = request.app.state.runtime.reference
    if commissioner_code not in ref.commissioners:
        raise Problem(404, "Not found", f"{commissioner_code} is not a known integrated care board")
    reach = _reach(request)
    reach.require(reach.sees_commissioner(commissioner_code), "commissioner_code", f"commissioner {commissioner_code}")
    async with request.app.state.runtime.pool.acquire() as conn:
        rows = await rm.commissioner_providers(conn, commissioner_code, period)
    return CommissionerPeriod(commissioner_code=commissioner_code, period=period,
                              providers=[CommissionerProvider(**r) for r in rows])
