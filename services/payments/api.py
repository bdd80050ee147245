"""The payments service's HTTP API: payment requests, episodes, schemes, settlements, appeals,
figures and the reconciliation report. Every route checks the token's binding (shared/reach.py);
the acting person is always the token's subject.

Routes are adapters: they parse, authorise and call a command handler (``handlers.py``, the one
write path: a single payment request is a batch of one) or a read model (``queries.py``), and
turn outcomes into status codes and problem bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request, Response
from pydantic import AfterValidator, BaseModel, Field, ValidationError

from services.payments import domain, jobs, queries
from services.payments.handlers import AcceptPayment, DecideAppeal, OpenAppeal, PaymentsHandlers
from services.payments.intake import Accepted, Conflict, Outcome
from services.payments.schemes import Scheme
from shared.auth import principal_of
from shared.contracts import ExternalId, OdsCode, PaymentRequested, PeriodCode, RegionCode, no_nul
from shared.http import PROBLEM_RESPONSES, Problem, validation_errors
from shared.logging import correlation_id_var
from shared.reach import Reach, not_found, reach_of
from shared.tracing import new_correlation_id
from shared.uow import Raced

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)


class AcceptedView(BaseModel):
    payment_id: str
    episode_id: str
    status: Literal["created", "duplicate"]
    episode_status: str
    at_risk_pence: int
    scheme_id: str | None
    scheme_version: int | None
    hold_transfer_id: str
    transfer_ids: tuple[str, ...] = ()


class BatchItemResult(BaseModel):
    index: int
    payment_id: str | None
    outcome: Literal["created", "duplicate", "conflict", "invalid", "forbidden"]
    status: int = Field(description="The status this item would have had on its own: 201, 200, 409, 422 or 403")
    detail: str | None = None
    errors: list[dict[str, str]] | None = None
    result: AcceptedView | None = None


class BatchResult(BaseModel):
    accepted: int
    rejected: int
    items: list[BatchItemResult]


class SettlementRun(BaseModel):
    model_config = {"extra": "forbid"}
    period: PeriodCode = Field(description="Settlement period, YYYY-MM; refused (409) until its decision windows have closed")
    provider_code: OdsCode | None = Field(default=None, description="Settle one provider only")
    region_code: RegionCode | None = Field(default=None, description="Settle one region's providers only")


class SettlementView(BaseModel):
    settlement_id: str
    provider_code: str
    region_code: str
    period: str
    scheme: str
    billed_pence: int
    held_pence: int
    released_pence: int
    diverted_pence: int
    responses: int
    episodes: int
    min_sample_applied: bool
    cap_applied: bool
    cap_pence: int


def _rt(request: Request):  # type: ignore[no-untyped-def]
    return request.app.state.runtime


def _handlers(request: Request) -> PaymentsHandlers:
    return _rt(request).handlers


def _cid() -> str:
    return correlation_id_var.get() or new_correlation_id()


# ---------------------------------------------------------------------------------------------
# Authorisation: scopes are enforced for every route by the router-level policy (policy.py);
# these apply the token's binding (shared/reach.py) and record who acted (the token's subject).
# ---------------------------------------------------------------------------------------------
def _reach(request: Request) -> Reach:
    return reach_of(principal_of(request), _rt(request).reference)


def _actor(request: Request) -> str:
    """Who acts: the token's subject, never a name from the request body."""
    return principal_of(request).subject


def _invalid(exc: domain.InputError) -> Problem:
    return Problem(422, "Invalid request", exc.message, errors=[{"field": exc.field, "message": exc.message}])


def _conflict(exc: Exception) -> Problem:
    return Problem(409, "Conflict", str(exc), errors=[{"field": "payment_id", "message": str(exc)}])


# ---------------------------------------------------------------------------------------------
# Payment requests
# ---------------------------------------------------------------------------------------------
async def _accept_all(request: Request, reqs: list[PaymentRequested], *, what: str) -> list[Outcome]:
    """The requests in ONE unit of work, each with the outcome it would get alone in that order."""
    cid = _cid()
    try:
        return await _handlers(request).accept_payments([AcceptPayment(req, cid) for req in reqs])
    except Raced as exc:  # the unit of work met concurrent inserts of the same ids on every try
        raise Problem(409, "Conflict", f"the {what} kept meeting concurrent writes of the same payments; send it again",
                      errors=[{"field": "(body)", "message": "concurrent writes of the same payments"}]) from exc


@router.post("/payment-requests", response_model=AcceptedView, status_code=201, tags=["payments"],
             responses={200: {"model": AcceptedView, "description": "Duplicate: this payment_id was already accepted; nothing changed"}},
             summary="Request payment for one care episode (idempotent on payment_id)")
async def create_payment_request(
    request: Request,
    response: Response,
    body: Annotated[PaymentRequested, Body(openapi_examples={"maternity": {"value": {
        "payment_id": "pay-1", "episode_id": "ep-1", "commissioner_code": "QWE", "provider_code": "RJ1",
        "service_type": "maternity", "activity_date": "2026-11-01", "amount_pence": 123457}}})],
) -> AcceptedView:
    reach = _reach(request)
    reach.require(reach.pays_for(body.commissioner_code), "commissioner_code", f"commissioner {body.commissioner_code}")
    (outcome,) = await _accept_all(request, [body], what="request")  # a batch of one
    if isinstance(outcome, domain.InputError):
        raise _invalid(outcome)
    if isinstance(outcome, Conflict):
        raise _conflict(outcome)
    if outcome.status == "duplicate":
        response.status_code = 200
    return _accepted_view(outcome)


def _accepted_view(a: Accepted) -> AcceptedView:
    return AcceptedView(payment_id=a.payment_id, episode_id=a.episode_id, status=a.status, episode_status=a.episode_status,
                        at_risk_pence=a.at_risk_pence, scheme_id=a.scheme_id, scheme_version=a.scheme_version,
                        hold_transfer_id=a.hold_transfer_id, transfer_ids=a.transfer_ids)


@router.post("/payment-requests/batch", response_model=BatchResult, tags=["payments"], max_body_size=2 * 1024 * 1024,
             summary="Up to PAYMENTS_BATCH_MAX_ITEMS (default 1,000) payment requests; each item succeeds or fails on its own")
async def create_payment_requests(request: Request, body: Annotated[Any, Body()]) -> BatchResult:
    """A JSON array of payment requests (at most 2 MiB). One result per item, in order; valid items
    are stored in one transaction, each with the outcome it would have had on its own."""
    limit = _rt(request).settings.batch_max_items
    if not isinstance(body, list):
        raise Problem(422, "Invalid request", "body must be a JSON array of payment requests",
                      errors=[{"field": "(body)", "message": "must be a JSON array"}])
    if not body or len(body) > limit:  # counted before any item is validated
        raise Problem(422, "Invalid request", f"a batch holds 1 to {limit} payment requests, not {len(body)}",
                      errors=[{"field": "(body)", "message": f"must hold 1 to {limit} items"}])
    reach = _reach(request)
    results: dict[int, BatchItemResult] = {}
    valid: list[tuple[int, PaymentRequested]] = []
    for i, raw in enumerate(body):
        pid = raw.get("payment_id") if isinstance(raw, dict) else None
        pid = pid if isinstance(pid, str) and len(pid) <= 100 else None
        try:
            req = PaymentRequested.model_validate(raw)
        except ValidationError as exc:  # report, do not fail the batch
            errors = validation_errors(list(exc.errors()))
            results[i] = BatchItemResult(index=i, payment_id=pid, outcome="invalid", status=422, errors=errors,
                                         detail="; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]))
            continue
        if not reach.pays_for(req.commissioner_code):
            refused = reach.refuse("commissioner_code", f"commissioner {req.commissioner_code}")
            results[i] = BatchItemResult(index=i, payment_id=req.payment_id, outcome="forbidden", status=403,
                                         detail=refused.detail, errors=refused.extra["errors"])
            continue
        valid.append((i, req))
    # The valid items in ONE unit of work, each with the outcome it would get alone in that order
    # (the handler the Kafka consumer calls too): a 1,000-item batch is a handful of statements,
    # not 1,000 commits.
    outcomes = await _accept_all(request, [req for _, req in valid], what="batch") if valid else []
    for (i, req), outcome in zip(valid, outcomes):
        if isinstance(outcome, domain.InputError):
            results[i] = BatchItemResult(index=i, payment_id=req.payment_id, outcome="invalid", status=422, detail=str(outcome),
                                         errors=[{"field": outcome.field, "message": outcome.message}])
        elif isinstance(outcome, Conflict):
            results[i] = BatchItemResult(index=i, payment_id=req.payment_id, outcome="conflict", status=409, detail=str(outcome),
                                         errors=[{"field": "payment_id", "message": str(outcome)}])
        else:
            results[i] = BatchItemResult(index=i, payment_id=req.payment_id, outcome=outcome.status,
                                         status=201 if outcome.status == "created" else 200,
                                         result=_accepted_view(outcome))
    items = [results[i] for i in range(len(body))]
    ok = sum(1 for it in items if it.outcome in ("created", "duplicate"))
    return BatchResult(accepted=ok, rejected=len(items) - ok, items=items)


# ---------------------------------------------------------------------------------------------
# Episodes, schemes, settlements
# ---------------------------------------------------------------------------------------------
EpisodeId = Annotated[ExternalId, Path(description="The episode id the commissioner sent")]


@router.get("/episodes/{episode_id}", tags=["episodes"], summary="An episode: amounts, answers, decision steps, transfers")
async def get_episode(request: Request, episode_id: EpisodeId) -> dict[str, Any]:
    rt = _rt(request)
    async with rt.pool.acquire() as conn:
        view = await queries.episode_view(conn, episode_id, rt.book)
    reach = _reach(request)
    if view is None or not (reach.sees_provider(view["provider_code"]) or reach.sees_commissioner(view["commissioner_code"])):
        raise not_found(f"episode {episode_id}")
    return view


@router.get("/schemes", response_model=list[Scheme], tags=["schemes"], summary="Every loaded trial scheme version")
async def list_schemes(request: Request) -> list[Scheme]:
    return list(_rt(request).book.schemes)


class JobProgress(BaseModel):
    units_total: int | None = Field(description="Units (provider x scheme version) to settle; null until the job has started")
    units_done: int
    units_failed: int
    providers_total: int | None = None
    providers_done: int | None = None


class JobCounts(BaseModel):
    reports: int = Field(description="Settlement reports written (units that had episodes held)")
    episodes: int
    held_pence: int
    released_pence: int
    diverted_pence: int


class JobUnit(BaseModel):
    scheme_id: str
    scheme_version: int
    state: Literal["pending", "done", "failed"]
    settlement_id: str | None = None
    episodes: int | None = None
    error: str | None = None
    done_at: datetime | None = None


class JobProvider(BaseModel):
    provider_code: str
    state: Literal["pending", "done", "failed"]
    episodes: int
    released_pence: int
    diverted_pence: int
    units: list[JobUnit]


class SettlementJob(BaseModel):
    job_id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    period: str
    provider_code: str | None = None
    region_code: str | None = None
    trigger: Literal["api", "scheduler"]
    requested_by: str = Field(description="The token's subject, or scheduler")
    requested_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = Field(description="How many times a runner has taken the job up (more than 1: it resumed after a restart)")
    progress: JobProgress
    counts: JobCounts
    errors: list[dict[str, Any]] = Field(default_factory=list)
    cancelled_by: str | None = None
    providers: list[JobProvider] | None = Field(None, description="Progress by provider (on GET of one job)")
    reports: list[SettlementView] | None = Field(None, description="The settlement reports this job wrote (on GET of one job)")
    url: str


class JobPage(BaseModel):
    items: list[SettlementJob]


JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]


async def _job_resource(request: Request, job_id: str) -> SettlementJob | None:
    rt = _rt(request)
    async with rt.pool.acquire() as conn:
        view = await jobs.job_view(conn, uuid.UUID(job_id))
        if view is None:
            return None
        ids = [u["settlement_id"] for p in view["providers"] or [] for u in p["units"] if u["settlement_id"]]
        reports = [r for r in await queries.settlements_by_id(conn, ids)] if ids else []
    return SettlementJob(**view, reports=[SettlementView(**{k: r[k] for k in SettlementView.model_fields}) for r in reports],
                         url=f"/v1/settlements/jobs/{view['job_id']}")


def _may_see_job(request: Request, view: SettlementJob) -> bool:
    reach = _reach(request)
    if reach.national or view.requested_by == _actor(request):
        return True
    if view.provider_code is not None:
        return reach.acts_for_provider(view.provider_code)
    return view.region_code is not None and reach.acts_for_region(view.region_code)


@router.post("/settlements/run", response_model=SettlementJob, status_code=202, tags=["settlements"],
             summary="Settle a period as a job, for the providers the token acts for (202 with the job; poll its url)."
                     " Asking again while it runs answers with the same job; idempotent per provider and period",
             responses={200: {"model": SettlementJob, "description": "The job finished within wait_s"}})
async def run_settlement(
    request: Request, body: SettlementRun,
    wait_s: Annotated[float, Query(ge=0, le=120, description="Wait up to this many seconds for the job to finish"
                                                             " (200 when it has); default 0: answer at once")] = 0,
) -> Any:
    reach = _reach(request)
    if body.provider_code is not None:
        reach.require(reach.acts_for_provider(body.provider_code), "provider_code", f"provider {body.provider_code}")
    if body.region_code is not None:
        reach.require(reach.acts_for_region(body.region_code), "region_code", f"region {body.region_code}")
    rt = _rt(request)
    allowed = None if reach.national else [p for p in rt.reference.providers if reach.acts_for_provider(p)]
    job = jobs.NewJob(period=body.period, provider_code=body.provider_code, region_code=body.region_code,
                      allowed_providers=allowed, requested_by=_actor(request), correlation_id=_cid())
    try:
        row, _created = await rt.job_runner.submit(job)
    except domain.NotYet as exc:
        raise Problem(409, "Not allowed now", str(exc), may_run_from=exc.opens_on.isoformat(),
                      errors=[{"field": "period", "message": str(exc)}]) from exc
    job_id = str(row["job_id"])
    if wait_s:
        await jobs.wait_for(rt.pool, uuid.UUID(job_id), wait_s)
    view = await _job_resource(request, job_id)
    assert view is not None
    finished = view.state not in jobs.ACTIVE
    return Response(view.model_dump_json(), status_code=200 if finished else 202, media_type="application/json",
                    headers={"Location": view.url})


@router.get("/settlements/jobs", response_model=JobPage, tags=["settlements"], summary="Settlement jobs, newest first")
async def list_settlement_jobs(
    request: Request,
    period: Annotated[PeriodCode | None, Query()] = None,
    state: Annotated[Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobPage:
    async with _rt(request).pool.acquire() as conn:
        rows = await jobs.list_jobs(conn, period=period, state=state, limit=limit)
    items = [SettlementJob(**r, url=f"/v1/settlements/jobs/{r['job_id']}") for r in rows]
    return JobPage(items=[j for j in items if _may_see_job(request, j)])


@router.get("/settlements/jobs/{job_id}", response_model=SettlementJob, tags=["settlements"],
            summary="A settlement job: state, progress by provider, counts, errors, who started it, its reports")
async def get_settlement_job(request: Request, job_id: JobId) -> SettlementJob:
    view = await _job_resource(request, job_id)
    if view is None or not _may_see_job(request, view):
        raise not_found(f"settlement job {job_id}")
    return view


@router.post("/settlements/jobs/{job_id}/cancel", response_model=SettlementJob, tags=["settlements"],
             summary="Cancel a settlement job that has not moved money yet (409 once it has)")
async def cancel_settlement_job(request: Request, job_id: JobId) -> SettlementJob:
    view = await _job_resource(request, job_id)
    if view is None or not _may_see_job(request, view):
        raise not_found(f"settlement job {job_id}")
    try:
        await _rt(request).job_runner.cancel(uuid.UUID(job_id), _actor(request))
    except jobs.CancelRefused as exc:
        raise Problem(409, "Cannot cancel", f"{exc}; the job carries on", errors=[{"field": "job_id", "message": str(exc)}])
    view = await _job_resource(request, job_id)
    assert view is not None
    return view


@router.get("/settlements", response_model=list[SettlementView], tags=["settlements"], summary="Settlement reports for a period")
async def list_settlements(request: Request, period: Annotated[PeriodCode, Query(description="YYYY-MM")]) -> list[SettlementView]:
    async with _rt(request).pool.acquire() as conn:
        rows = await queries.settlements(conn, period)
    reach = _reach(request)
    return [SettlementView(**{k: r[k] for k in SettlementView.model_fields}) for r in rows if reach.sees_provider(r["provider_code"])]


# ---------------------------------------------------------------------------------------------
# Appeals
# ---------------------------------------------------------------------------------------------
# no_nul: stored in PostgreSQL text columns, which cannot hold NUL (a 422, not a 500).
Reason = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(no_nul)]


class AppealRequest(BaseModel):
    model_config = {"extra": "forbid"}
    reason: Reason = Field(description="Why the provider believes the diversion is wrong (the appellant is the token's subject)")


class AppealDecision(BaseModel):
    model_config = {"extra": "forbid"}
    outcome: Literal["upheld", "rejected"]
    reason: Reason = Field(description="Why: shown to the provider and auditors (the decider is the token's subject)")


def _refused(exc: Exception) -> Problem:
    if isinstance(exc, domain.NotFound):
        return Problem(404, "Not found", str(exc))
    return Problem(409, "Not allowed now", str(exc), errors=[{"field": "(episode)", "message": str(exc)}])


async def _require_acts_for_episode(request: Request, episode_id: str) -> None:
    """404 unless the token acts for the episode's provider (as for an episode that does not exist)."""
    async with _rt(request).pool.acquire() as conn:
        provider = await queries.episode_provider(conn, episode_id)
    if provider is None or not _reach(request).acts_for_provider(provider):
        raise not_found(f"episode {episode_id}")


@router.post("/episodes/{episode_id}/appeal", tags=["appeals"], status_code=201,
             responses={200: {"description": "This appeal was already open: the existing appeal, unchanged",
                              "content": {"application/json": {"schema": {"type": "object"}}}}},
             summary="A provider appeals an episode's diversion (within the scheme's appeal window after settlement)")
async def open_appeal(request: Request, response: Response, episode_id: EpisodeId, body: AppealRequest) -> dict[str, Any]:
    await _require_acts_for_episode(request, episode_id)
    try:
        appeal, created = await _handlers(request).open_appeal(
            OpenAppeal(episode_id=episode_id, appealed_by=_actor(request), reason=body.reason))
    except (domain.NotFound, domain.Refused) as exc:
        raise _refused(exc) from exc
    except Raced as exc:  # another request opened this episode's appeal on every try
        raise _refused(domain.Refused("another request is appealing this episode; send it again")) from exc
    if not created:
        response.status_code = 200
    return appeal


@router.post("/episodes/{episode_id}/appeal/decision", tags=["appeals"],
             summary="Uphold (fund -> provider) or reject an open appeal, with a reason; never by the appellant")
async def decide_appeal(request: Request, episode_id: EpisodeId, body: AppealDecision) -> dict[str, Any]:
    await _require_acts_for_episode(request, episode_id)
    try:
        appeal, _changed = await _handlers(request).decide_appeal(
            DecideAppeal(episode_id=episode_id, outcome=body.outcome, decided_by=_actor(request), reason=body.reason,
                         correlation_id=_cid()))
    except domain.SameActor as exc:
        raise Problem(403, "Forbidden", str(exc), errors=[{"field": "(token)", "message": str(exc)}]) from exc
    except (domain.NotFound, domain.Refused) as exc:
        raise _refused(exc) from exc
    return appeal


@router.get("/episodes/{episode_id}/appeal", tags=["appeals"], summary="An episode's appeal with every step (who, when, why)")
async def get_appeal(request: Request, episode_id: EpisodeId) -> dict[str, Any]:
    rt = _rt(request)
    async with rt.pool.acquire() as conn:
        appeal = await queries.appeal_view(conn, episode_id)
    if appeal is None or not _reach(request).sees_provider(appeal.get("provider_code")):
        raise not_found(f"appeal for episode {episode_id}")
    return appeal


@router.get("/appeals", tags=["appeals"], summary="Appeals, oldest first (e.g. the open ones awaiting a decision)")
async def list_appeals(
    request: Request,
    status: Annotated[Literal["open", "upheld", "rejected"] | None, Query()] = None,
    provider_code: Annotated[OdsCode | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    rt = _rt(request)
    async with rt.pool.acquire() as conn:
        appeals = await queries.list_appeals(conn, status=status, provider_code=provider_code, limit=limit)
    reach = _reach(request)
    return [a for a in appeals if reach.sees_provider(a.get("provider_code"))]


# ---------------------------------------------------------------------------------------------
# Reconciliation with the ledger
# ---------------------------------------------------------------------------------------------
@router.get("/ledger-discrepancies", tags=["reconciliation"],
            summary="Transfers the ledger refused or recorded otherwise than asked, and ones it has not answered in time")
async def ledger_discrepancies(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    rt = _rt(request)
    overdue_s = rt.settings.ledger_answer_overdue_s
    async with rt.pool.acquire() as conn:
        rows = await queries.ledger_discrepancies(conn, overdue_s=overdue_s, limit=limit)
    reach = _reach(request)
    return {"overdue_after_s": overdue_s, "items": [r for r in rows if reach.sees_provider(r["provider_code"])]}


# ---------------------------------------------------------------------------------------------
# Figures per period
# ---------------------------------------------------------------------------------------------
Period = Annotated[PeriodCode, Path(description="YYYY-MM")]


@router.get("/providers/{provider_code}/periods/{period}", tags=["figures"],
            summary="A provider's month: billed, held, released, diverted, appealed back, responses")
async def provider_period(request: Request, provider_code: Annotated[OdsCode, Path()], period: Period) -> dict[str, Any]:
    rt = _rt(request)
    if provider_code not in rt.reference.providers:
        raise Problem(404, "Not found", f"{provider_code} is not a known provider")
    reach = _reach(request)
    reach.require(reach.sees_provider(provider_code), "provider_code", f"provider {provider_code}")
    async with rt.pool.acquire() as conn:
        return await queries.provider_figures(conn, provider_code, period)


@router.get("/funds/{region_code}/periods/{period}", tags=["figures"],
            summary="A regional fund's month: diverted in, appealed back out, by provider")
async def fund_period(request: Request, region_code: Annotated[RegionCode, Path()], period: Period) -> dict[str, Any]:
    rt = _rt(request)
    if region_code not in rt.reference.regions:
        raise Problem(404, "Not found", f"{region_code} is not a known region")
    reach = _reach(request)
    reach.require(reach.sees_region(region_code), "region_code", f"region {region_code}")
    async with rt.pool.acquire() as conn:
        return await queries.fund_figures(conn, region_code, period)
