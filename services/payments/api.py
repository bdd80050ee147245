"""The payments service's HTTP API: payment requests, episodes, schemes, settlements, appeals,
figures and the reconciliation report. Every route checks the token's binding (shared/reach.py);
the acting person is always the token's subject.

Routes are adapters: they parse, authorise and call a command handler (``handlers.py``, the one
write path: a single payment request is a batch of one) or a read model (``queries.py``), and
turn outcomes into status codes and problem bodies."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request, Response
from pydantic import AfterValidator, BaseModel, Field, ValidationError, field_validator

from services.payments import domain, jobs, queries
from services.payments.handlers import (
    AcceptPayment, CorrectStatement, DecideAppeal, DecideReview, OpenAppeal, PaymentsHandlers, QueryStatement, RequestReview,
)
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
    exempted: bool = Field(False, description="The provider-period was exempted (POST /v1/exemptions): nothing diverted")
    exemption_reason: str | None = None
    judgement_steps: list[str] = Field(default_factory=list, description="What the rules found and did, in order")

    @field_validator("judgement_steps", mode="before")
    @classmethod
    def _steps(cls, v: Any) -> Any:
        return json.loads(v) if isinstance(v, str) else v  # the jsonb column as asyncpg reads it


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
    reports: int = Field(description="Settlement reports written (units that had episodes held and moved money)")
    provisional_statements: int = Field(0, description="Provisional statements written (scheme [review]): figures"
                                                       " published for review, no money moved yet")
    episodes: int
    held_pence: int
    released_pence: int
    diverted_pence: int


class JobUnit(BaseModel):
    scheme_id: str
    scheme_version: int
    state: Literal["pending", "done", "failed"]
    settlement_id: str | None = None
    statement_id: str | None = Field(None, description="The provisional statement this unit wrote, or the one it"
                                                       " finalised (GET /v1/statements/{id})")
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
    """An appeal step refused: 404 no such appeal, 403 separation of duties (the token's subject may
    not take this step), 409 not now."""
    if isinstance(exc, domain.NotFound):
        return Problem(404, "Not found", str(exc))
    if isinstance(exc, domain.SameActor):
        return Problem(403, "Forbidden", str(exc), errors=[{"field": "(token)", "message": str(exc)}])
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
    except (domain.NotFound, domain.Refused, domain.SameActor) as exc:
        raise _refused(exc) from exc
    return appeal


class ReviewRequest(BaseModel):
    model_config = {"extra": "forbid"}
    reason: Reason = Field(description="Why the appellant's side asks for an independent review (the requester is the token's subject)")


@router.post("/episodes/{episode_id}/appeal/review-request", tags=["appeals"], status_code=201,
             responses={200: {"description": "This review was already asked for: the appeal, unchanged",
                              "content": {"application/json": {"schema": {"type": "object"}}}}},
             summary="The appellant's side asks, once, for an independent second-level review of a rejected appeal")
async def request_review(request: Request, response: Response, episode_id: EpisodeId, body: ReviewRequest) -> dict[str, Any]:
    await _require_acts_for_episode(request, episode_id)
    try:
        appeal, changed = await _handlers(request).request_review(
            RequestReview(episode_id=episode_id, requested_by=_actor(request), reason=body.reason))
    except (domain.NotFound, domain.Refused) as exc:
        raise _refused(exc) from exc
    if not changed:
        response.status_code = 200
    return appeal


@router.post("/episodes/{episode_id}/appeal/review", tags=["appeals"],
             summary="An independent person decides a requested review: upheld (of a rejected appeal: fund -> provider) or"
                     " rejected, with a reason; never the appellant, the first decider or the requester")
async def decide_review(request: Request, episode_id: EpisodeId, body: AppealDecision) -> dict[str, Any]:
    await _require_acts_for_episode(request, episode_id)
    try:
        appeal, _changed = await _handlers(request).decide_review(
            DecideReview(episode_id=episode_id, outcome=body.outcome, decided_by=_actor(request), reason=body.reason,
                         correlation_id=_cid()))
    except (domain.NotFound, domain.Refused, domain.SameActor) as exc:
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
# Exemptions (judgement.py): a provider-period exempted for extraordinary circumstances
# ---------------------------------------------------------------------------------------------
class ExemptionRequest(BaseModel):
    model_config = {"extra": "forbid"}
    provider_code: OdsCode = Field(description="The trust (ODS code) to exempt")
    period: PeriodCode = Field(description="YYYY-MM, not settled yet")
    reason: Reason = Field(description="The extraordinary circumstances (the person exempting is the token's subject)")


class ExemptionView(BaseModel):
    provider_code: str
    region_code: str | None
    period: str
    reason: str
    exempted_by: str
    exempted_at: datetime


def _exemption_view(request: Request, e: Any) -> ExemptionView:
    provider = _rt(request).reference.providers.get(e["provider_code"] if isinstance(e, dict) else e.provider_code)
    fields = e if isinstance(e, dict) else {k: getattr(e, k) for k in ("provider_code", "period", "reason", "exempted_by",
                                                                      "exempted_at")}
    return ExemptionView(**fields, region_code=provider.region_code if provider is not None else None)


def _require_region_for(request: Request, provider_code: str, field: str) -> None:
    """403 unless the token acts for the trust as its region or nationally (a trust-bound token
    never does: a trust does not waive or correct its own judgement)."""
    reach = _reach(request)
    trust = _rt(request).reference.trust_of(provider_code)
    region = _rt(request).reference.providers[trust].region_code if trust is not None else None
    reach.require(reach.national or (region is not None and reach.acts_for_region(region)), field, f"provider {provider_code}")


@router.post("/exemptions", response_model=ExemptionView, status_code=201, tags=["judgement"],
             responses={200: {"model": ExemptionView, "description": "The same exemption by the same person again: unchanged"}},
             summary="Exempt a provider-period from diversions for extraordinary circumstances, before it settles")
async def create_exemption(request: Request, response: Response, body: ExemptionRequest) -> ExemptionView:
    rt = _rt(request)
    if body.provider_code not in rt.reference.providers:  # public reference data: a 422 naming the field
        raise _invalid(domain.InputError("provider_code", f"{body.provider_code} is not a known provider"))
    _require_region_for(request, body.provider_code, "provider_code")
    try:
        exemption, created = await _handlers(request).exempt(provider_code=body.provider_code, period=body.period,
                                                             reason=body.reason, exempted_by=_actor(request))
    except domain.InputError as exc:
        raise _invalid(exc) from exc
    except domain.Refused as exc:
        raise Problem(409, "Not allowed now", str(exc), errors=[{"field": "period", "message": str(exc)}]) from exc
    except Raced as exc:
        raise Problem(409, "Conflict", "another request is exempting this provider-period; send it again",
                      errors=[{"field": "period", "message": "concurrent exemption"}]) from exc
    if not created:
        response.status_code = 200
    return _exemption_view(request, exemption)


@router.get("/exemptions", response_model=list[ExemptionView], tags=["judgement"],
            summary="Exemptions (of one period), oldest first, for the providers the token sees")
async def list_exemptions(request: Request, period: Annotated[PeriodCode | None, Query(description="YYYY-MM")] = None
                          ) -> list[ExemptionView]:
    async with _rt(request).pool.acquire() as conn:
        rows = await queries.exemptions(conn, period)
    reach = _reach(request)
    return [_exemption_view(request, r) for r in rows if reach.sees_provider(r["provider_code"])]


# ---------------------------------------------------------------------------------------------
# Statements: provisional, then final (scheme option [review], review.py)
# ---------------------------------------------------------------------------------------------
StatementId = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@\-]*$",
                                  description="The statement id: the settlement id it becomes (provider:period:scheme@version)")]


class StatementSummary(BaseModel):
    statement_id: str
    provider_code: str
    region_code: str
    period: str
    scheme: str
    status: Literal["provisional", "final"]
    created_by: str = Field(description="Who ran the settlement that wrote it (a token's subject, or scheduler)")
    created_at: datetime
    window_closes_at: datetime = Field(description="Queries and corrections until then; finalised once it has passed")
    accepted_by: str | None = None
    accepted_at: datetime | None = None
    finalised_by: str | None = None
    finalised_at: datetime | None = None
    settlement_id: str | None = Field(None, description="The settlement report that moved the money, once final")
    episodes: int
    responses: int
    billed_pence: int
    held_pence: int
    released_pence: int = Field(description="Final figures once final, else the provisional ones")
    diverted_pence: int
    min_sample_applied: bool
    cap_applied: bool
    exempted: bool
    gate_opened: bool | None = None
    url: str


class StatementStep(BaseModel):
    step: Literal["provisional", "query", "correction", "accepted", "finalised"]
    actor: str
    reason: str | None = None
    episode_id: str | None = None
    action: Literal["exclude"] | None = None
    at: datetime


class StatementView(StatementSummary):
    provisional_report: dict[str, Any] = Field(description="The report the settlement would produce: figures, rules"
                                                           " applied (judgement_steps) and each episode (lines)")
    final_report: dict[str, Any] | None = Field(None, description="The settlement's report with the corrections applied")
    corrections: list[StatementStep]
    queries: list[StatementStep]
    history: list[StatementStep] = Field(description="Every step, in order: who, what, why, when")


class StatementQueryRequest(BaseModel):
    model_config = {"extra": "forbid"}
    reason: Reason = Field(description="The trust's question (the person asking is the token's subject)")
    episode_id: ExternalId | None = Field(None, description="The episode it is about, if one")


class StatementCorrectionRequest(BaseModel):
    model_config = {"extra": "forbid"}
    episode_id: ExternalId
    action: Literal["exclude"] = Field(description="exclude: the episode is released in full instead of being judged")
    reason: Reason = Field(description="Why (e.g. the answer was attributed to the wrong trust); the reviewer is the token's subject")


class FinalisedStatements(BaseModel):
    finalised: list[SettlementView]


async def _statement_for(request: Request, statement_id: str, *, act: bool) -> str:
    """The statement's provider; 404 unless the token sees it (``act``: acts for it)."""
    async with _rt(request).pool.acquire() as conn:
        provider = await queries.statement_provider(conn, statement_id)
    reach = _reach(request)
    if provider is None or not (reach.acts_for_provider(provider) if act else reach.sees_provider(provider)):
        raise not_found(f"statement {statement_id}")
    return provider


def _statement_refused(exc: Exception) -> Problem:
    if isinstance(exc, domain.NotFound):
        return not_found(str(exc).removeprefix("no "))
    if isinstance(exc, domain.InputError):
        return _invalid(exc)
    return Problem(409, "Not allowed now", str(exc), errors=[{"field": "(statement)", "message": str(exc)}])


@router.get("/statements", response_model=list[StatementSummary], tags=["statements"],
            summary="Settlement statements (provisional or final), for the providers the token sees")
async def list_statements(
    request: Request,
    period: Annotated[PeriodCode | None, Query(description="YYYY-MM")] = None,
    provider_code: Annotated[OdsCode | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[StatementSummary]:
    async with _rt(request).pool.acquire() as conn:
        rows = await queries.list_statements(conn, period=period, provider_code=provider_code, limit=limit)
    reach = _reach(request)
    return [StatementSummary(**r) for r in rows if reach.sees_provider(r["provider_code"])]


@router.get("/statements/{statement_id}", response_model=StatementView, tags=["statements"],
            summary="A statement: its provisional report, its final report once final, corrections, queries, history")
async def get_statement(request: Request, statement_id: StatementId) -> StatementView:
    await _statement_for(request, statement_id, act=False)
    async with _rt(request).pool.acquire() as conn:
        view = await queries.statement_view(conn, statement_id)
    if view is None:
        raise not_found(f"statement {statement_id}")
    return StatementView(**view)


@router.post("/statements/finalise-due", response_model=FinalisedStatements, tags=["statements"],
             summary="Finalise the due statements (accepted, or past their window) of the providers the token acts for:"
                     " the money moves, corrections applied; idempotent")
async def finalise_due(request: Request) -> FinalisedStatements:
    reach = _reach(request)
    reports = await _handlers(request).finalise_due(run_by=_actor(request), correlation_id=_cid(),
                                                    may_settle=None if reach.national else reach.acts_for_provider)
    return FinalisedStatements(finalised=[SettlementView(**{k: r[k] for k in SettlementView.model_fields if k in r})
                                          for r in reports])


@router.post("/statements/{statement_id}/queries", response_model=StatementView, status_code=201, tags=["statements"],
             responses={200: {"model": StatementView, "description": "The same question by the same person again: unchanged"}},
             summary="The trust queries its provisional statement (or one episode of it) within the correction window")
async def query_statement(request: Request, response: Response, statement_id: StatementId,
                          body: StatementQueryRequest) -> StatementView:
    await _statement_for(request, statement_id, act=True)
    try:
        view, changed = await _handlers(request).query_statement(
            QueryStatement(statement_id, asked_by=_actor(request), reason=body.reason, episode_id=body.episode_id))
    except (domain.NotFound, domain.Refused, domain.InputError) as exc:
        raise _statement_refused(exc) from exc
    if not changed:
        response.status_code = 200
    return StatementView(**view)


@router.post("/statements/{statement_id}/corrections", response_model=StatementView, status_code=201, tags=["statements"],
             responses={200: {"model": StatementView, "description": "The same correction by the same person again: unchanged"}},
             summary="A regional or national reviewer corrects a provisional statement within its window (exclude an episode:"
                     " released in full instead of being judged)")
async def correct_statement(request: Request, response: Response, statement_id: StatementId,
                            body: StatementCorrectionRequest) -> StatementView:
    provider = await _statement_for(request, statement_id, act=False)
    _require_region_for(request, provider, "(token)")
    try:
        view, changed = await _handlers(request).correct_statement(
            CorrectStatement(statement_id, episode_id=body.episode_id, action=body.action, corrected_by=_actor(request),
                             reason=body.reason))
    except (domain.NotFound, domain.Refused, domain.InputError) as exc:
        raise _statement_refused(exc) from exc
    except Raced as exc:
        raise _statement_refused(domain.Refused("another request is correcting this episode; send it again")) from exc
    if not changed:
        response.status_code = 200
    return StatementView(**view)


@router.post("/statements/{statement_id}/accept", response_model=StatementView, tags=["statements"],
             summary="The trust accepts its provisional statement early: it is finalised at the next finalisation")
async def accept_statement(request: Request, statement_id: StatementId) -> StatementView:
    await _statement_for(request, statement_id, act=True)
    try:
        view, _changed = await _handlers(request).accept_statement(statement_id, accepted_by=_actor(request))
    except (domain.NotFound, domain.Refused) as exc:
        raise _statement_refused(exc) from exc
    return StatementView(**view)


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
