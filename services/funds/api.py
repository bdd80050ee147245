"""The funds service's HTTP API: propose, decide, pay and cancel grants; read them, their
measure's chart and status, and each region's fund report (JSON and streamed CSV).

Routes are adapters: they parse, apply the token's binding (shared/reach.py) and call the one
write path (``handlers.py``) or a read (``queries.py``). The actor of every step is the token's
subject, never a name in a body. Errors are problem details.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from datetime import date, datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from services.funds import domain, queries
from services.funds.domain import GrantProposal, LongText
from services.funds.handlers import Cancel, Decide, FundsHandlers, MarkMet, Propose
from services.funds.ledger_client import LedgerUnavailable
from services.funds.measure import Assessment, Thresholds, assess, next_period
from shared.auth import principal_of
from shared.contracts import MAX_GRANT_MILESTONES, GrantId, GrantMeasure, GrantStatus, RegionCode
from shared.http import PROBLEM_RESPONSES, Problem
from shared.logging import correlation_id_var
from shared.reach import Reach, reach_of
from shared.tracing import new_correlation_id
from shared.uow import Raced

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)


# ---------------------------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------------------------
class MoneyView(BaseModel):
    amount_pence: int
    unreserved_pence: int = Field(description="Not asked of the ledger (proposed, or refused by it)")
    awaiting_ledger_pence: int = Field(description="Reservation asked, not yet answered")
    committed_pence: int = Field(description="Reserved in the fund, to be paid when met")
    releasing_pence: int = Field(description="Reserved, on its way back to the fund (a void asked for, or past its lapse time)")
    paid_pence: int = Field(description="Paid fund -> provider")
    released_pence: int = Field(description="Back in the fund: cancelled, refused or lapsed")
    discrepancy_pence: int = Field(description="An answer from the ledger nobody expected: an operator looks")


class MilestoneView(BaseModel):
    n: int
    title: str
    provider_code: str
    amount_pence: int
    due_date: date
    status: domain.MilestoneStatus
    transfer_id: str = Field(description="The ledger's pending transfer reserving this milestone")
    lapses_at: datetime | None = Field(None, description="The reservation goes back to the fund then if not met (due date + grace)")
    met_by: str | None = None
    met_at: datetime | None = None
    met_note: str | None = None
    ledger_reason: str | None = Field(None, description="The ledger's reason, for a refusal or a lapse")


class StepView(BaseModel):
    at: datetime
    step: str
    actor: str = Field(description="The token's subject, or 'ledger' for what its answers caused")
    milestone: int | None = None
    reason: str | None = None


class GrantView(BaseModel):
    grant_id: str
    region_code: str
    title: str
    aim: str
    status: GrantStatus
    measure: GrantMeasure
    start_date: date
    end_date: date
    amount_pence: int
    providers: list[str]
    proposed_by: str
    proposed_at: datetime
    decision: Literal["approved", "refused"] | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_reason: str | None = None
    cancelled_by: str | None = None
    cancelled_at: datetime | None = None
    cancel_reason: str | None = None
    money: MoneyView
    milestones: list[MilestoneView]
    steps: list[StepView] = Field(default_factory=list)
    discrepancies: list[dict[str, Any]] = Field(default_factory=list)


class GrantPage(BaseModel):
    items: list[GrantView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end")


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: Literal["approved", "refused"]
    reason: LongText


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: LongText = Field(description="What shows the milestone was met (kept in the grant's history)")


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: LongText


class PointView(BaseModel):
    period: str
    period_start: date
    phase: Literal["baseline", "after"]
    responses: int
    value: float | None
    included: bool = Field(description="False: fewer answers than the minimum per point, left off the chart")
    variation: str | None = None
    astronomical: bool = False
    shift: bool = False
    trend: bool = False
    two_of_three: bool = False
    paid_to_date_pence: int = Field(0, description="What the grant had paid its providers by the end of this period")


class AssessmentView(BaseModel):
    grant_id: str
    measure: GrantMeasure
    start_date: date
    providers: list[str]
    status: Literal["improving", "no_change", "worse", "too_few_responses"]
    reason: str
    improvement_direction: Literal["increase", "decrease"]
    unit: Literal["percent", "score"]
    baseline_points: int
    after_points: int
    excluded_points: int
    min_responses_per_point: int
    min_points_baseline: int
    min_points_after: int
    mean: float | None
    lower_process_limit: float | None
    upper_process_limit: float | None
    lower_two_sigma: float | None
    upper_two_sigma: float | None
    trial_limits: bool
    improvement_signals: int
    concern_signals: int
    baseline_signals: int
    money: MoneyView
    points: list[PointView]


class FundView(BaseModel):
    region_code: str
    as_of: datetime
    ledger_posted_pence: int = Field(description="What the fund holds in the ledger now")
    ledger_reserved_pence: int = Field(description="Reserved from it in the ledger (pending debits)")
    remaining_pence: int = Field(description="Available in the ledger: posted - reserved; what new grants may take")
    received_pence: int = Field(description="What the fund has received, net of appeals paid back out of it: the ledger's"
                                            " posted balance plus what grants have paid out of it")
    committed_pence: int = Field(description="Reserved by approved grants, to be paid when met")
    releasing_pence: int = Field(description="Reserved, on its way back to the fund (voided, or past its lapse time)")
    awaiting_ledger_pence: int = Field(description="Asked of the ledger, not yet answered")
    paid_pence: int = Field(description="Paid to providers by grants")
    released_pence: int = Field(description="Reserved once, back in the fund (cancelled, refused, lapsed)")
    in_flight: bool = Field(description="True while the ledger's reservations and the grants' records differ, or a"
                                        " reservation or release awaits the ledger's answer (they agree within seconds)")
    grants_by_status: dict[str, int]


class ProjectLine(BaseModel):
    grant_id: str
    title: str
    status: GrantStatus
    providers: list[str]
    amount_pence: int
    committed_pence: int
    releasing_pence: int
    paid_pence: int
    released_pence: int
    awaiting_ledger_pence: int
    measure_kind: str
    measure_interval: str
    measure_status: str
    measure_reason: str
    baseline_points: int
    after_points: int


class FundReport(BaseModel):
    fund: FundView
    projects: list[ProjectLine]
    next_cursor: str | None


class PublishedGrant(BaseModel):
    """A grant as the public sees it: who proposed and approved it are staff, not published."""
    grant_id: str
    title: str
    status: GrantStatus
    providers: list[str]
    amount_pence: int
    paid_pence: int
    measure_kind: str
    measure_status: str


class PublishedGrants(BaseModel):
    region_code: str
    grants: list[PublishedGrant]
    next_cursor: str | None


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _rt(request: Request):  # type: ignore[no-untyped-def]
    return request.app.state.runtime


def _handlers(request: Request) -> FundsHandlers:
    return _rt(request).handlers


def _reach(request: Request) -> Reach:
    return reach_of(principal_of(request), _rt(request).reference)


def _actor(request: Request) -> str:
    return principal_of(request).subject


def _cid() -> str:
    return correlation_id_var.get() or new_correlation_id()


def _sees(reach: Reach):  # type: ignore[no-untyped-def]
    return lambda g: reach.sees_region(g.region_code) or any(reach.sees_provider(p) for p in g.providers)


def _acts(reach: Reach):  # type: ignore[no-untyped-def]
    return lambda g: reach.acts_for_region(g.region_code)


def _scope(request: Request, reach: Reach) -> queries.Scope:
    if reach.national:
        return queries.Scope(None)
    trusts = sorted(p for p in _rt(request).reference.providers if reach.sees_provider(p))
    return queries.Scope(sorted(reach.binding.regions), trusts)


def _problem(exc: domain.GrantError) -> Problem:
    if isinstance(exc, domain.InputError):
        return Problem(422, "Invalid request", exc.message, errors=[{"field": f, "message": m} for f, m in exc.errors])
    status, title = {domain.NotFound: (404, "Not found"), domain.SameActor: (403, "Forbidden"), domain.Refused: (409, "Conflict"),
                     domain.Conflict: (409, "Conflict")}.get(type(exc), (409, "Conflict"))
    return Problem(status, title, exc.message, errors=[{"field": exc.field, "message": exc.message}])


def _money(m: domain.Money) -> MoneyView:
    return MoneyView(amount_pence=m.amount_pence, unreserved_pence=m.unreserved_pence, awaiting_ledger_pence=m.awaiting_ledger_pence,
                     committed_pence=m.committed_pence, releasing_pence=m.releasing_pence, paid_pence=m.paid_pence,
                     released_pence=m.released_pence, discrepancy_pence=m.discrepancy_pence)


def grant_view(g: domain.Grant, steps: list[dict[str, Any]] | None = None,
               discrepancies: list[dict[str, Any]] | None = None) -> GrantView:
    def reason(m: domain.Milestone) -> str | None:
        for a in (m.reserve, m.pay, m.release):
            if a is not None and a.status == "rejected":
                return a.reason
        return "the hold's timeout passed" if m.expired else None

    return GrantView(
        grant_id=g.grant_id, region_code=g.region_code, title=g.title, aim=g.aim, status=g.status, measure=g.measure,
        start_date=g.start_date, end_date=g.end_date, amount_pence=g.amount_pence, providers=list(g.providers),
        proposed_by=g.proposed_by, proposed_at=g.proposed_at, decision=g.decision, decided_by=g.decided_by,
        decided_at=g.decided_at, decision_reason=g.decision_reason, cancelled_by=g.cancelled_by, cancelled_at=g.cancelled_at,
        cancel_reason=g.cancel_reason, money=_money(domain.money(g, datetime.now(timezone.utc))),
        milestones=[MilestoneView(n=m.n, title=m.title, provider_code=m.provider_code, amount_pence=m.amount_pence,
                                  due_date=m.due_date, status=m.status, transfer_id=domain.reserve_id(g.grant_id, m.n),
                                  lapses_at=domain.lapses_at(g, m), met_by=m.met_by, met_at=m.met_at, met_note=m.met_note,
                                  ledger_reason=reason(m)) for m in g.milestones],
        steps=[StepView(**s) for s in steps or []], discrepancies=discrepancies or [])


async def _full_view(request: Request, g: domain.Grant) -> GrantView:
    async with _rt(request).pool.acquire() as conn:
        return grant_view(g, await queries.steps(conn, g.grant_id), await queries.discrepancies(conn, g.grant_id))


async def _visible_grant(request: Request, grant_id: str) -> domain.Grant:
    async with _rt(request).pool.acquire() as conn:
        found = await queries.grants(conn, [grant_id])
    if not found or not _sees(_reach(request))(found[0]):
        raise Problem(404, "Not found", f"no grant {grant_id}", errors=[{"field": "grant_id", "message": "no such grant"}])
    return found[0]


def _csv_line(values: list[Any]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(["" if v is None else (v.isoformat() if isinstance(v, (date, datetime)) else v) for v in values])
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# Writes
# ---------------------------------------------------------------------------------------------
@router.post("/grants", response_model=GrantView, status_code=201, tags=["grants"],
             responses={200: {"model": GrantView, "description": "The same proposal by the same person again: nothing changed"}},
             summary="Propose a grant from a region's fund (idempotent on grant_id)")
async def propose_grant(request: Request, response: Response, body: Annotated[GrantProposal, Body()]) -> GrantView:
    reach = _reach(request)
    reach.require(reach.acts_for_region(body.region_code), "region_code", f"region {body.region_code}")
    try:
        g, created = await _handlers(request).propose(Propose(body, _actor(request), _cid()))
    except domain.GrantError as exc:
        raise _problem(exc) from exc
    except Raced as exc:
        raise Problem(409, "Conflict", "the proposal kept meeting concurrent writes of the same grant_id; send it again",
                      errors=[{"field": "grant_id", "message": "concurrent writes"}]) from exc
    if not created:
        response.status_code = 200
    return await _full_view(request, g)


async def _step(request: Request, run: Any) -> GrantView:
    try:
        change = await run
    except domain.GrantError as exc:
        raise _problem(exc) from exc
    return await _full_view(request, change.grant)


@router.post("/grants/{grant_id}/decision", response_model=GrantView, tags=["grants"],
             summary="Approve (reserve it in the ledger) or refuse a proposed grant; never one's own proposal")
async def decide_grant(request: Request, grant_id: Annotated[GrantId, Path()], body: Annotated[DecisionIn, Body()]) -> GrantView:
    reach = _reach(request)
    return await _step(request, _handlers(request).decide(
        Decide(grant_id, body.outcome, body.reason, _actor(request), _acts(reach), _cid())))


@router.post("/grants/{grant_id}/milestones/{n}/met", response_model=GrantView, tags=["grants"],
             summary="Record a milestone met: its reservation is paid to the provider (never by the proposer)")
async def milestone_met(request: Request, grant_id: Annotated[GrantId, Path()],
                        n: Annotated[int, Path(ge=1, le=MAX_GRANT_MILESTONES)], body: Annotated[NoteIn, Body()]) -> GrantView:
    reach = _reach(request)
    return await _step(request, _handlers(request).mark_met(
        MarkMet(grant_id, n, body.note, _actor(request), _acts(reach), _cid())))


@router.post("/grants/{grant_id}/cancel", response_model=GrantView, tags=["grants"],
             summary="Withdraw a proposal, or cancel a grant: the unpaid rest goes back to the fund")
async def cancel_grant(request: Request, grant_id: Annotated[GrantId, Path()], body: Annotated[ReasonIn, Body()]) -> GrantView:
    reach = _reach(request)
    return await _step(request, _handlers(request).cancel(Cancel(grant_id, body.reason, _actor(request), _acts(reach), _cid())))


# ---------------------------------------------------------------------------------------------
# Reads
# ---------------------------------------------------------------------------------------------
@router.get("/grants", response_model=GrantPage, tags=["grants"], summary="Grants the token's binding sees")
async def list_grants(
    request: Request,
    region_code: Annotated[RegionCode | None, Query()] = None,
    status: Annotated[GrantStatus | None, Query()] = None,
    cursor: Annotated[GrantId | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> GrantPage:
    scope = _scope(request, _reach(request))
    async with _rt(request).pool.acquire() as conn:
        ids = await queries.grant_ids(conn, scope, region_code=region_code, status=status, after=cursor, limit=limit + 1)
        page = await queries.grants(conn, ids[:limit])
    return GrantPage(items=[grant_view(g) for g in page], next_cursor=ids[limit - 1] if len(ids) > limit else None)


@router.get("/grants/{grant_id}", response_model=GrantView, tags=["grants"], summary="A grant, its milestones and history")
async def get_grant(request: Request, grant_id: Annotated[GrantId, Path()]) -> GrantView:
    return await _full_view(request, await _visible_grant(request, grant_id))


def _today() -> date:
    return datetime.now(timezone.utc).date()


def _thresholds(request: Request) -> Thresholds:
    s = _rt(request).settings
    return Thresholds(s.min_responses_per_point, s.min_points_baseline, s.min_points_after)


async def _assessment(conn: Any, g: domain.Grant, thresholds: Thresholds, today: date) -> Assessment:
    tallies = await queries.tallies(conn, g.measure, g.providers, g.start_date, today)
    return assess(g.measure, g.start_date, tallies, today=today, thresholds=thresholds)


def _paid_by(g: domain.Grant, paid_at: dict[int, Any], until: date) -> int:
    """What the grant had paid by the end of ``until`` (a period's last day)."""
    amounts = {m.n: m.amount_pence for m in g.milestones}
    return sum(amounts[n] for n, at in paid_at.items() if at.date() <= until)


def _assessment_view(g: domain.Grant, a: Assessment, paid_at: dict[int, Any]) -> AssessmentView:
    points = []
    for p in a.points:
        last_day = date.fromordinal(next_period(g.measure.interval, p.period_start).toordinal() - 1)
        points.append(PointView(period=p.period, period_start=p.period_start, phase=p.phase, responses=p.responses, value=p.value,
                                included=p.included, variation=p.variation, astronomical=p.astronomical, shift=p.shift,
                                trend=p.trend, two_of_three=p.two_of_three, paid_to_date_pence=_paid_by(g, paid_at, last_day)))
    t = a.thresholds
    return AssessmentView(
        grant_id=g.grant_id, measure=g.measure, start_date=g.start_date, providers=list(g.providers), status=a.status,
        reason=a.reason, improvement_direction=a.improvement_direction, unit=a.unit, baseline_points=a.baseline_points,
        after_points=a.after_points, excluded_points=a.excluded_points, min_responses_per_point=t.min_responses_per_point,
        min_points_baseline=t.min_points_baseline, min_points_after=t.min_points_after, mean=a.mean,
        lower_process_limit=a.lower_process_limit, upper_process_limit=a.upper_process_limit, lower_two_sigma=a.lower_two_sigma,
        upper_two_sigma=a.upper_two_sigma, trial_limits=a.trial_limits, improvement_signals=a.improvement_signals,
        concern_signals=a.concern_signals, baseline_signals=a.baseline_signals, money=_money(domain.money(g, datetime.now(timezone.utc))), points=points)


async def _load_assessment(request: Request, grant_id: str) -> AssessmentView:
    g = await _visible_grant(request, grant_id)
    async with _rt(request).pool.acquire() as conn:
        a = await _assessment(conn, g, _thresholds(request), _today())
        paid_at = await queries.paid_on(conn, g.grant_id)
    return _assessment_view(g, a, paid_at)


@router.get("/grants/{grant_id}/assessment", response_model=AssessmentView, tags=["measures"],
            summary="The project's measure as an XmR chart (limits from the baseline) and its computed status, beside its money")
async def grant_assessment(request: Request, grant_id: Annotated[GrantId, Path()]) -> AssessmentView:
    return await _load_assessment(request, grant_id)


ASSESSMENT_COLUMNS = ["period", "period_start", "phase", "responses", "value", "included", "mean", "lower_process_limit",
                      "upper_process_limit", "variation", "astronomical", "shift", "trend", "two_of_three", "paid_to_date_pence"]


@router.get("/grants/{grant_id}/assessment.csv", tags=["measures"], response_class=Response,
            responses={200: {"content": {"text/csv": {}}}},
            summary="The project's chart as CSV: one row per period, measure and money side by side")
async def grant_assessment_csv(request: Request, grant_id: Annotated[GrantId, Path()]) -> Response:
    view = await _load_assessment(request, grant_id)  # refusals before streaming starts

    async def lines() -> AsyncIterator[str]:
        yield _csv_line(ASSESSMENT_COLUMNS)
        for p in view.points:
            yield _csv_line([p.period, p.period_start, p.phase, p.responses, None if p.value is None else round(p.value, 4),
                             p.included, view.mean, view.lower_process_limit, view.upper_process_limit, p.variation,
                             p.astronomical, p.shift, p.trend, p.two_of_three, p.paid_to_date_pence])
        yield _csv_line(["STATUS", None, None, None, None, None, None, None, None, view.status, None, None, None, None,
                         view.money.paid_pence])

    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8",
                             headers={"content-disposition": f'attachment; filename="assessment-{grant_id}.csv"'})


async def _fund(request: Request, region_code: str) -> FundView:
    if region_code not in _rt(request).reference.regions:
        raise Problem(404, "Not found", f"{region_code} is not a known region",
                      errors=[{"field": "region_code", "message": "unknown region"}])
    reach = _reach(request)
    reach.require(reach.sees_region(region_code), "region_code", f"region {region_code}")
    try:
        balance = await _rt(request).ledger.fund_balance(region_code)
    except LedgerUnavailable as exc:
        raise Problem(503, "Service unavailable", f"the fund's balance could not be read from the ledger: {exc}",
                      headers={"Retry-After": "5"}) from exc
    async with _rt(request).pool.acquire() as conn:
        _total, parts, statuses = await queries.fund_money(conn, region_code)
    committed, paid = parts.get("committed", 0), parts.get("paid", 0)
    return FundView(
        region_code=region_code, as_of=datetime.now(timezone.utc), ledger_posted_pence=balance.posted_pence,
        ledger_reserved_pence=balance.pending_debits_pence, remaining_pence=balance.available_pence,
        received_pence=balance.posted_pence + paid, committed_pence=committed, releasing_pence=parts.get("releasing", 0),
        awaiting_ledger_pence=parts.get("awaiting", 0), paid_pence=paid, released_pence=parts.get("released", 0),
        in_flight=(balance.pending_debits_pence != committed or parts.get("awaiting", 0) > 0 or parts.get("releasing", 0) > 0),
        grants_by_status=statuses)


@router.get("/funds/{region_code}", response_model=FundView, tags=["reports"],
            summary="A region's fund: received, committed, paid, remaining (the ledger's figures beside the grants')")
async def get_fund(request: Request, region_code: Annotated[RegionCode, Path()]) -> FundView:
    return await _fund(request, region_code)


async def _project_lines(request: Request, region_code: str, after: str | None, limit: int,
                         statuses: Sequence[str] | None = None) -> tuple[list[ProjectLine], str | None]:
    thresholds, today = _thresholds(request), _today()
    async with _rt(request).pool.acquire() as conn:
        ids = await queries.grant_ids(conn, queries.Scope(None), region_code=region_code, status=statuses, after=after,
                                      limit=limit + 1)
        page = await queries.grants(conn, ids[:limit])
        lines = []
        for g in page:
            a = await _assessment(conn, g, thresholds, today)
            m = domain.money(g, datetime.now(timezone.utc))
            lines.append(ProjectLine(
                grant_id=g.grant_id, title=g.title, status=g.status, providers=list(g.providers), amount_pence=g.amount_pence,
                committed_pence=m.committed_pence, releasing_pence=m.releasing_pence, paid_pence=m.paid_pence,
                released_pence=m.released_pence,
                awaiting_ledger_pence=m.awaiting_ledger_pence, measure_kind=g.measure.kind, measure_interval=g.measure.interval,
                measure_status=a.status, measure_reason=a.reason, baseline_points=a.baseline_points, after_points=a.after_points))
    return lines, (ids[limit - 1] if len(ids) > limit else None)


@router.get("/funds/{region_code}/report", response_model=FundReport, tags=["reports"],
            summary="A region's fund and its projects: money and measure side by side")
async def fund_report(request: Request, region_code: Annotated[RegionCode, Path()],
                      cursor: Annotated[GrantId | None, Query()] = None,
                      limit: Annotated[int, Query(ge=1, le=200)] = 100) -> FundReport:
    fund = await _fund(request, region_code)
    lines, nxt = await _project_lines(request, region_code, cursor, limit)
    return FundReport(fund=fund, projects=lines, next_cursor=nxt)


# Approved grants only: a proposal is not public until a second person has approved it, and a
# refused or withdrawn one never was a commitment of public money.
PUBLISHED_STATUSES = ("reserving", "reserved", "completed", "cancelled")


@router.get("/publication/funds/{region_code}/grants", response_model=PublishedGrants, tags=["publication"],
            summary="The region's approved improvement grants for the public pages: money and measured status, no names")
async def published_grants(request: Request, region_code: Annotated[RegionCode, Path()],
                           cursor: Annotated[GrantId | None, Query()] = None,
                           limit: Annotated[int, Query(ge=1, le=200)] = 100) -> PublishedGrants:
    if region_code not in _rt(request).reference.regions:
        raise Problem(404, "Not found", f"{region_code} is not a known region",
                      errors=[{"field": "region_code", "message": "unknown region"}])
    reach = _reach(request)
    reach.require(reach.sees_region(region_code), "region_code", f"region {region_code}")
    lines, nxt = await _project_lines(request, region_code, cursor, limit, PUBLISHED_STATUSES)
    return PublishedGrants(region_code=region_code, grants=[
        PublishedGrant(grant_id=p.grant_id, title=p.title, status=p.status, providers=p.providers, amount_pence=p.amount_pence,
                       paid_pence=p.paid_pence, measure_kind=p.measure_kind, measure_status=p.measure_status)
        for p in lines], next_cursor=nxt)


REPORT_COLUMNS = ["grant_id", "title", "status", "providers", "amount_pence", "awaiting_ledger_pence", "committed_pence",
                  "releasing_pence", "paid_pence", "released_pence", "measure_kind", "measure_interval", "measure_status", "baseline_points",
                  "after_points", "measure_reason", "received_pence", "remaining_pence"]
CSV_PAGE = 100


@router.get("/funds/{region_code}/report.csv", tags=["reports"], response_class=Response,
            responses={200: {"content": {"text/csv": {}}}},
            summary="The region's report as CSV (every project, streamed page by page, then a TOTAL row)")
async def fund_report_csv(request: Request, region_code: Annotated[RegionCode, Path()]) -> Response:
    fund = await _fund(request, region_code)  # refusals and the ledger's figures before streaming starts

    async def lines() -> AsyncIterator[str]:
        yield _csv_line(REPORT_COLUMNS)
        after: str | None = None
        while True:
            page, after = await _project_lines(request, region_code, after, CSV_PAGE)
            for p in page:
                yield _csv_line([p.grant_id, p.title, p.status, " ".join(p.providers), p.amount_pence, p.awaiting_ledger_pence,
                                 p.committed_pence, p.releasing_pence, p.paid_pence, p.released_pence, p.measure_kind, p.measure_interval,
                                 p.measure_status, p.baseline_points, p.after_points, p.measure_reason, None, None])
            if after is None:
                break
        yield _csv_line(["TOTAL", None, None, None, None, fund.awaiting_ledger_pence, fund.committed_pence, fund.releasing_pence,
                         fund.paid_pence, fund.released_pence, None, None, None, None, None, None, fund.received_pence, fund.remaining_pence])

    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8",
                             headers={"content-disposition": f'attachment; filename="fund-{region_code}.csv"'})
