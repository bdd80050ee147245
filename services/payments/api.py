"""The payments service's HTTP API: payment requests, episodes, schemes, settlements, appeals, figures."""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request, Response
from pydantic import AfterValidator, BaseModel, Field

from services.payments import metrics, store
from services.payments.schemes import Scheme
from shared.contracts import OdsCode, PaymentRequested, RegionCode, no_nul
from shared.auth import principal_of
from shared.http import PROBLEM_RESPONSES, Problem
from shared.logging import correlation_id_var
from shared.service import BATCH_RACE_RETRIES

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
    outcome: Literal["created", "duplicate", "conflict", "invalid"]
    detail: str | None = None
    result: AcceptedView | None = None


class BatchResult(BaseModel):
    accepted: int
    rejected: int
    items: list[BatchItemResult]


PERIOD_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class SettlementRun(BaseModel):
    period: str = Field(pattern=PERIOD_RE.pattern, description="Settlement period, YYYY-MM")
    provider_code: OdsCode | None = Field(default=None, description="Settle one provider only")


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


def _cid() -> str:
    return correlation_id_var.get() or str(uuid.uuid4())


# ---------------------------------------------------------------------------------------------
# Authorisation: scopes are enforced for every route by the router-level policy (policy.py);
# these helpers apply what a token may see (regions) and who it is (the actor recorded).
# ---------------------------------------------------------------------------------------------
def _actor(request: Request, claimed: str) -> str:
    """The person acting: the token's subject when auth is on, else what the body says."""
    principal = principal_of(request)
    return principal.subject if principal.subject != "anonymous" else claimed


def _check_region(request: Request, region_code: str | None, what: str) -> None:
    """A region-scoped token sees only its regions' providers and funds (404, not 403: no leak)."""
    if not principal_of(request).sees_region(region_code):
        raise Problem(404, "Not found", f"no {what}")


def now() -> datetime:
    return datetime.now(timezone.utc)



async def _accept(request: Request, req: PaymentRequested) -> store.Accepted:
    rt = _rt(request)
    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            accepted = await store.accept_payment(conn, req, book=rt.book, ref=rt.reference, correlation_id=_cid(),
                                                  hold_model=rt.hold_model)
    metrics.payment_accepted(accepted, req.amount_pence, rt.reference.region_of_provider(req.provider_code))  # committed
    return accepted


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
    try:
        accepted = await _accept(request, body)
    except store.InputError as exc:
        raise Problem(422, "Invalid request", exc.message, errors=[{"field": exc.field, "message": exc.message}]) from exc
    except store.Conflict as exc:
        raise Problem(409, "Conflict", str(exc)) from exc
    if accepted.status == "duplicate":
        response.status_code = 200
    return AcceptedView(**accepted.__dict__)


@router.post("/payment-requests/batch", response_model=BatchResult, tags=["payments"],
             summary="Up to 1,000 payment requests; each item succeeds or fails on its own")
async def create_payment_requests(request: Request, body: Annotated[list[dict[str, Any]], Body(max_length=1000)]) -> BatchResult:
    results: dict[int, BatchItemResult] = {}
    valid: list[tuple[int, PaymentRequested]] = []
    for i, raw in enumerate(body):
        pid = raw.get("payment_id") if isinstance(raw, dict) else None
        try:
            valid.append((i, PaymentRequested.model_validate(raw)))
        except Exception as exc:  # pydantic ValidationError: report, do not fail the batch
            errors = getattr(exc, "errors", lambda: [])()
            detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5]) or str(exc)
            results[i] = BatchItemResult(index=i, payment_id=pid if isinstance(pid, str) else None, outcome="invalid", detail=detail)
    # The valid items in ONE transaction, each with the outcome it would get alone in that order
    # (store.accept_payments, as the Kafka consumer does): a 1,000-item batch is a handful of
    # statements, not 1,000 commits.
    outcomes = await _accept_all(request, [req for _, req in valid])
    for (i, req), outcome in zip(valid, outcomes):
        if isinstance(outcome, store.InputError):
            results[i] = BatchItemResult(index=i, payment_id=req.payment_id, outcome="invalid", detail=str(outcome))
        elif isinstance(outcome, store.Conflict):
            results[i] = BatchItemResult(index=i, payment_id=req.payment_id, outcome="conflict", detail=str(outcome))
        else:
            results[i] = BatchItemResult(index=i, payment_id=req.payment_id, outcome=outcome.status,
                                         result=AcceptedView(**outcome.__dict__))
    items = [results[i] for i in range(len(body))]
    ok = sum(1 for it in items if it.outcome in ("created", "duplicate"))
    return BatchResult(accepted=ok, rejected=len(items) - ok, items=items)


async def _accept_all(request: Request, reqs: list[PaymentRequested]) -> list[store.Accepted | store.InputError | store.Conflict]:
    rt = _rt(request)
    cid = _cid()
    batch = [store.PaymentItem(req, cid) for req in reqs]
    for _ in range(BATCH_RACE_RETRIES):  # another writer inserting one of the batch's ids meanwhile: look again
        try:
            async with rt.pool.acquire() as conn:
                async with conn.transaction():
                    outcomes = await store.accept_payments(conn, batch, book=rt.book, ref=rt.reference, hold_model=rt.hold_model)
            break
        except store.Raced:
            continue  # rolled back; the next pass sees the other writer's rows
    else:
        raise Problem(409, "Conflict", "the batch kept meeting concurrent writes of the same payments; send it again")
    for req, outcome in zip(reqs, outcomes):  # committed: count new payments only
        if isinstance(outcome, store.Accepted):
            metrics.payment_accepted(outcome, req.amount_pence, rt.reference.region_of_provider(req.provider_code))
    return outcomes


@router.get("/episodes/{episode_id}", tags=["episodes"], summary="An episode: amounts, answers, decision steps, transfers")
async def get_episode(request: Request, episode_id: str) -> dict[str, Any]:
    rt = _rt(request)
    async with rt.pool.acquire() as conn:
        view = await store.episode_view(conn, episode_id, rt.book)
    if view is None:
        raise Problem(404, "Not found", f"no episode {episode_id}")
    _check_region(request, view.get("region_code"), f"episode {episode_id}")
    return view


@router.get("/schemes", response_model=list[Scheme], tags=["schemes"], summary="Every loaded trial scheme version")
async def list_schemes(request: Request) -> list[Scheme]:
    return list(_rt(request).book.schemes)


@router.post("/settlements/run", response_model=list[SettlementView], tags=["settlements"],
             summary="Settle a period now (admin); idempotent per provider and period")
async def run_settlement(request: Request, body: SettlementRun) -> list[SettlementView]:
    rt = _rt(request)
    try:
        reports = await store.run_settlement(rt.pool, rt.book, period=body.period, provider_code=body.provider_code,
                                             run_by="admin-api", correlation_id=_cid())
    except store.InputError as exc:
        raise Problem(422, "Cannot settle", str(exc)) from exc
    return [SettlementView(**r) for r in reports]


@router.get("/settlements", response_model=list[SettlementView], tags=["settlements"], summary="Settlement reports for a period")
async def list_settlements(request: Request, period: Annotated[str, Field(pattern=PERIOD_RE.pattern)]) -> list[SettlementView]:
    if not PERIOD_RE.match(period):
        raise Problem(422, "Invalid request", "period must be YYYY-MM")
    async with _rt(request).pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM settlements WHERE period = $1 ORDER BY settlement_id", period)
    principal = principal_of(request)
    return [
        SettlementView(scheme=f"{r['scheme_id']}@{r['scheme_version']}", **{k: r[k] for k in SettlementView.model_fields if k != "scheme"})
        for r in rows
        if principal.sees_region(r["region_code"])
    ]


def today() -> date:
    return date.today()


# no_nul: stored in PostgreSQL text columns, which cannot hold NUL (a 422, not a 500).
Actor = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^\S(.*\S)?$"), AfterValidator(no_nul)]
Reason = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(no_nul)]


class AppealRequest(BaseModel):
    model_config = {"extra": "forbid"}
    appealed_by: Actor = Field(description="Who at the provider is appealing (recorded)")
    reason: Reason = Field(description="Why the provider believes the diversion is wrong")


class AppealDecision(BaseModel):
    model_config = {"extra": "forbid"}
    outcome: Literal["upheld", "rejected"]
    decided_by: Actor = Field(description="The authorised person deciding (recorded)")
    reason: Reason = Field(description="Why: shown to the provider and auditors")


EpisodeId = Annotated[str, Path(min_length=1, max_length=100)]


def _refused(exc: Exception) -> Problem:
    if isinstance(exc, store.NotFound):
        return Problem(404, "Not found", str(exc))
    return Problem(409, "Not allowed now", str(exc))


@router.post("/episodes/{episode_id}/appeal", tags=["appeals"], status_code=201,
             responses={200: {"description": "This appeal was already open: the existing appeal, unchanged",
                              "content": {"application/json": {"schema": {"type": "object"}}}}},
             summary="A provider appeals an episode's diversion (within the scheme's appeal window after settlement)")
async def open_appeal(request: Request, response: Response, episode_id: EpisodeId, body: AppealRequest) -> dict[str, Any]:
    rt = _rt(request)
    try:
        async with rt.pool.acquire() as conn:
            async with conn.transaction():
                appeal, created = await store.open_appeal(conn, episode_id, appealed_by=_actor(request, body.appealed_by),
                                                          reason=body.reason, book=rt.book, now=now())
    except (store.NotFound, store.Refused) as exc:
        raise _refused(exc) from exc
    if not created:
        response.status_code = 200
    return appeal


@router.post("/episodes/{episode_id}/appeal/decision", tags=["appeals"],
             summary="Uphold (fund -> provider) or reject an open appeal, with a reason")
async def decide_appeal(request: Request, episode_id: EpisodeId, body: AppealDecision) -> dict[str, Any]:
    rt = _rt(request)
    try:
        async with rt.pool.acquire() as conn:
            async with conn.transaction():
                appeal, changed = await store.decide_appeal(conn, episode_id, outcome=body.outcome,
                                                            decided_by=_actor(request, body.decided_by), reason=body.reason,
                                                            now=now(), correlation_id=_cid())
    except (store.NotFound, store.Refused) as exc:
        raise _refused(exc) from exc
    metrics.appeal_decided(appeal, changed)  # committed
    return appeal


@router.get("/episodes/{episode_id}/appeal", tags=["appeals"], summary="An episode's appeal with every step (who, when, why)")
async def get_appeal(request: Request, episode_id: EpisodeId) -> dict[str, Any]:
    rt = _rt(request)
    async with rt.pool.acquire() as conn:
        appeal = await store.appeal_view(conn, episode_id)
    if appeal is None:
        raise Problem(404, "Not found", f"episode {episode_id} has no appeal")
    _check_region(request, rt.reference.region_of_provider(appeal.get("provider_code", "")), f"appeal for {episode_id}")
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
        appeals = await store.list_appeals(conn, status=status, provider_code=provider_code, limit=limit)
    principal = principal_of(request)
    return [a for a in appeals if principal.sees_region(rt.reference.region_of_provider(a.get("provider_code", "")))]


# ---------------------------------------------------------------------------------------------
# Figures per period
# ---------------------------------------------------------------------------------------------
Period = Annotated[str, Path(pattern=PERIOD_RE.pattern, description="YYYY-MM")]


@router.get("/providers/{provider_code}/periods/{period}", tags=["figures"],
            summary="A provider's month: billed, held, released, diverted, appealed back, responses")
async def provider_period(request: Request, provider_code: Annotated[OdsCode, Path()], period: Period) -> dict[str, Any]:
    rt = _rt(request)
    if provider_code not in rt.reference.providers:
        raise Problem(404, "Not found", f"{provider_code} is not a known provider")
    _check_region(request, rt.reference.region_of_provider(provider_code), f"provider {provider_code}")
    async with rt.pool.acquire() as conn:
        return await store.provider_figures(conn, provider_code, period)


@router.get("/funds/{region_code}/periods/{period}", tags=["figures"],
            summary="A regional fund's month: diverted in, appealed back out, by provider")
async def fund_period(request: Request, region_code: Annotated[RegionCode, Path()], period: Period) -> dict[str, Any]:
    rt = _rt(request)
    if region_code not in rt.reference.regions:
        raise Problem(404, "Not found", f"{region_code} is not a known region")
    _check_region(request, region_code, f"fund for {region_code}")
    async with rt.pool.acquire() as conn:
        return await store.fund_figures(conn, region_code, period)
