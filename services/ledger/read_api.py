"""The ledger's read routes for the portal: an account's balance history by day or by month.

``GET /v1/publication/funds/{region_code}/balance-history`` (scope ``reports:read``) is public:
a regional improvement fund's balance, for the portal's region page. ``GET
/v1/accounts/{account_id}/balance-history`` (scope ``ledger:read``) is any account the token's
binding sees. An organisation outside the binding is a 403 naming the field.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from services.ledger import admission
from services.ledger import read_models as rm
from shared.auth import principal_of
from shared.contracts import AccountId, RegionCode
from shared.http import PROBLEM_RESPONSES, Problem
from shared.reach import Reach, not_found, reach_of

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)

DEFAULT_MONTHS = 12
EARLIEST = date(2000, 1, 1)  # the trial's periods are 2000-2099 (PeriodCode); nothing is posted before


class BalancePoint(BaseModel):
    period: str = Field(description="YYYY-MM-DD (interval=day) or YYYY-MM (interval=month)")
    at: datetime = Field(description="The balance is the posted balance just before this instant (the period's end)")
    closing_balance_pence: int


class BalanceHistory(BaseModel):
    account_id: str
    interval: Literal["day", "month"]
    from_: date = Field(alias="from")
    to: date
    opening_balance_pence: int = Field(description="Posted balance just before `from`")
    points: list[BalancePoint]

    model_config = {"populate_by_name": True}


def _reach(request: Request) -> Reach:
    return reach_of(principal_of(request), request.app.state.reference)


def _window(first: date | None, last: date | None, interval: rm.Interval) -> tuple[date, date, list[rm.Bucket]]:
    today = datetime.now(timezone.utc).date()
    last = last or today
    if first is None:
        first = last - timedelta(days=29) if interval == "day" else date(last.year - 1 + (last.month == 12), last.month % 12 + 1, 1)
    if first < EARLIEST or last > date(2099, 12, 31):
        raise Problem(422, "Invalid request", "dates must be in 2000-2099", errors=[{"field": "from", "message": "out of range"}])
    if last < first:
        raise Problem(422, "Invalid request", "to is before from", errors=[{"field": "to", "message": "before from"}])
    if (last - first).days >= rm.MAX_HISTORY_POINTS * (31 if interval == "month" else 1):
        raise Problem(422, "Invalid request", f"at most {rm.MAX_HISTORY_POINTS} points",
                      errors=[{"field": "from", "message": f"at most {rm.MAX_HISTORY_POINTS} points"}])
    points = rm.buckets(first, last, interval)
    if len(points) > rm.MAX_HISTORY_POINTS:
        raise Problem(422, "Invalid request", f"at most {rm.MAX_HISTORY_POINTS} points",
                      errors=[{"field": "from", "message": f"at most {rm.MAX_HISTORY_POINTS} points"}])
    return first, last, points


async def _history(request: Request, account_id: str, first: date | None, last: date | None,
                   interval: rm.Interval) -> BalanceHistory:
    first, last, points = _window(first, last, interval)
    opening_at = datetime(first.year, first.month, first.day, tzinfo=timezone.utc)
    async with request.app.state.runtime.pool.acquire() as conn:
        balances = await rm.balances_before(conn, account_id, [opening_at, *(b.end for b in points)])
    return BalanceHistory(
        account_id=account_id, interval=interval, from_=first, to=last, opening_balance_pence=balances[0],
        points=[BalancePoint(period=b.label, at=b.end, closing_balance_pence=v) for b, v in zip(points, balances[1:])])


FromDate = Annotated[date | None, Query(alias="from", description="First day (UTC), inclusive; default: a year (30 days) back")]
ToDate = Annotated[date | None, Query(description="Last day (UTC), inclusive; default: today")]
IntervalQuery = Annotated[Literal["day", "month"], Query(description="One point per day, or per month (at its end)")]


@router.get("/publication/funds/{region_code}/balance-history", response_model=BalanceHistory, response_model_by_alias=True,
            tags=["publication"], summary="A regional improvement fund's balance at the end of each day or month (public)")
async def fund_balance_history(request: Request, region_code: Annotated[RegionCode, Path()], from_: FromDate = None,
                               to: ToDate = None, interval: IntervalQuery = "month") -> BalanceHistory:
    if region_code not in request.app.state.reference.regions:
        raise Problem(404, "Not found", f"{region_code} is not a known region")
    reach = _reach(request)
    reach.require(reach.sees_region(region_code), "region_code", f"region {region_code}")
    return await _history(request, f"fund:{region_code}", from_, to, interval)


@router.get("/accounts/{account_id}/balance-history", response_model=BalanceHistory, response_model_by_alias=True,
            tags=["balances"], summary="An account's posted balance at the end of each day or month")
async def account_balance_history(request: Request, account_id: Annotated[AccountId, Path()], from_: FromDate = None,
                                  to: ToDate = None, interval: IntervalQuery = "month") -> BalanceHistory:
    if admission.unknown_account(account_id, request.app.state.reference):
        raise not_found(f"account {account_id}")  # no organisation of that code: no such account
    reach = _reach(request)
    reach.require(reach.sees_account(account_id), "account_id", account_id)
    return await _history(request, account_id, from_, to, interval)
