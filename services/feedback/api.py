"""The feedback service's HTTP API for app backends: JSON (single and batch), FHIR, reports."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Body, Header, Query, Request, Response
from pydantic import BaseModel, ValidationError

from services.feedback import domain, fhir, store
from shared.auth import principal_of
from shared.contracts import PeriodCode
from shared.http import PROBLEM_RESPONSES, Problem, clean_message, problem
from shared.logging import correlation_id_var
from shared.outbox import enqueue
from shared.reach import Reach, reach_of
from shared.service import BATCH_RACE_RETRIES

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)

FHIR_JSON = "application/fhir+json"
MAX_FHIR_BODY_BYTES = 1_000_000
BATCH_DEADLOCK_RETRIES = 3


class AcceptedView(BaseModel):
    submission_id: str
    status: Literal["created", "duplicate"]
    is_amendment: bool
    scores: dict[str, Any]


class BatchItemResult(BaseModel):
    index: int
    submission_id: str | None = None
    outcome: Literal["created", "duplicate", "invalid", "forbidden", "conflict", "error"]
    status: int  # the status this item would have had on its own: 202, 200, 422, 403, 409 (500 for "error")
    result: AcceptedView | None = None
    detail: str | None = None
    errors: list[dict[str, str]] | None = None


class BatchResult(BaseModel):
    accepted: int
    rejected: int
    items: list[BatchItemResult]


# The report rows are the core's own dataclasses (domain.FftRow, domain.PromGroup): pydantic
# validates and documents them as they are, so the API cannot drift from the rules.
class FftReport(BaseModel):
    period: str
    rule: str
    providers: list[domain.FftRow]
    total: domain.FftRow


class PromReport(BaseModel):
    procedure: str | None
    min_count: int
    rule: str
    groups: list[domain.PromGroup]


def _errors(exc: ValidationError) -> list[dict[str, str]]:
    # Never echo input values back: they may hold an NHS number (messages are redacted too).
    # An unexpected key is named in loc, so the field is redacted as well as the message.
    return [{"field": domain.redact(".".join(str(p) for p in e["loc"])) or "(body)",
             "message": domain.redact(clean_message(str(e["msg"])))}
            for e in exc.errors()[:20]]


def _invalid(errors: list[dict[str, str]], title: str = "Invalid submission") -> Problem:
    return Problem(422, title, "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]), errors=errors)


def parse_submission(body: Any, idempotency_key: str | None = None) -> domain.Submission:
    if not isinstance(body, dict):
        raise Problem(422, "Invalid request", "body must be a JSON object", errors=[{"field": "(body)", "message": "must be a JSON object"}])
    if idempotency_key is not None:
        if body.get("submission_id") not in (None, idempotency_key):
            raise Problem(422, "Invalid request", "Idempotency-Key differs from submission_id",
                          errors=[{"field": "submission_id", "message": "differs from the Idempotency-Key header"}])
        body = {**body, "submission_id": idempotency_key}
    try:
        return domain.Submission.model_validate(body)
    except ValidationError as exc:
        raise _invalid(_errors(exc)) from exc


def _reach(request: Request) -> Reach:
    return reach_of(principal_of(request), request.app.state.reference)


def admit(request: Request, sub: domain.Submission, field_name: Callable[[str], str] = lambda f: f) -> None:
    """Refuse what no channel accepts (an unknown provider, an implausible authored_at: 422) and
    what this token may not send (another trust's feedback: 403). ``field_name`` maps a
    submission field to the name the client used (the FHIR element)."""
    rt = request.app.state.runtime
    window = domain.authored_window(datetime.now(timezone.utc), rt.settings.authored_at_max_age_days,
                                    rt.settings.authored_at_max_skew_s)
    refused = domain.admission_refusal(sub, request.app.state.reference, window)
    if refused is not None:
        field, why = field_name(refused[0]), refused[1]
        raise Problem(422, "Invalid submission", f"{field}: {why}", errors=[{"field": field, "message": why}])
    reach = _reach(request)
    if not reach.acts_for_provider(sub.provider_code):
        raise reach.refuse(field_name("provider_code"), f"provider {sub.provider_code}")


async def _accept_one(request: Request, sub: domain.Submission, channel: str) -> store.Accepted:
    rt = request.app.state.runtime
    try:
        async with rt.pool.acquire() as conn:
            async with conn.transaction():
                return await store.accept(
                    conn, sub, keys=request.app.state.keyring, channel=channel,
                    correlation_id=correlation_id_var.get() or str(uuid.uuid4()),
                )
    except store.Conflict as exc:
        raise Problem(409, "Conflict", str(exc), errors=[{"field": "submission_id", "message": "already used with different content"}]) from exc


DUPLICATE = {200: {"model": AcceptedView, "description": "Duplicate: this submission was already accepted; nothing changed"}}


@router.post("/submissions", response_model=AcceptedView, status_code=202, tags=["submissions"], responses=DUPLICATE,
             summary="Submit one patient answer (idempotent on submission_id / Idempotency-Key)")
async def submit(
    request: Request,
    response: Response,
    body: Annotated[Any, Body(openapi_examples={"fft": {"value": {
        "submission_id": "sub-1", "episode_id": "ep-1", "provider_code": "RJ1", "nhs_number": "9990000018",
        "authored_at": "2026-11-21T10:00:00Z", "answers": {"instrument": "fft", "fft_answer": 1}}}})],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=100)] = None,
) -> AcceptedView:
    sub = parse_submission(body, idempotency_key)
    admit(request, sub)
    accepted = await _accept_one(request, sub, "http")
    if accepted.status == "duplicate":
        response.status_code = 200
    return AcceptedView(**accepted.__dict__)


Valid = list[tuple[int, domain.Submission]]  # (index in the request body, submission)


def _stored(i: int, sub: domain.Submission, outcome: store.Accepted | store.Conflict) -> BatchItemResult:
    """An item's result from what the store made of it."""
    if isinstance(outcome, store.Conflict):
        return BatchItemResult(index=i, submission_id=sub.submission_id, outcome="conflict", status=409, detail=str(outcome))
    return BatchItemResult(index=i, submission_id=sub.submission_id, outcome=outcome.status,
                           status=202 if outcome.status == "created" else 200, result=AcceptedView(**outcome.__dict__))


async def _store_set_based(conn: asyncpg.Connection, valid: Valid, keys: domain.Keyring, cid: str) -> dict[int, BatchItemResult]:
    """Store a batch's valid items in the caller's transaction with ``store.accept_batch`` (a few
    statements for the whole batch; items in batch order, each with its own ``received_at``)."""
    items = [store.Incoming(sub, cid) for _, sub in valid]
    outcomes = await store.accept_batch(conn, items, keys=keys, channel="http-batch")
    return {i: _stored(i, sub, outcome) for (i, sub), outcome in zip(valid, outcomes)}


async def _store_item_by_item(conn: asyncpg.Connection, valid: Valid, keys: domain.Keyring,
                              cid: str) -> dict[int, BatchItemResult]:
    """Store a batch's valid items in the caller's transaction, each in its own savepoint, so an item
    that fails in the database fails alone (outcome ``error``) and the others are stored."""
    stored: dict[int, BatchItemResult] = {}
    rows: list[tuple[str, bytes, bytes, str]] = []
    known = await store.known_submissions(conn, [sub.submission_id for _, sub in valid])
    # All the batch's locks first, then one clock: received_at in batch order, as on the set path.
    base = await store.lock_batch(conn, [sub for _, sub in valid], keys)
    for n, (i, sub) in enumerate(valid):
        mine: list[tuple[str, bytes, bytes, str]] = []
        try:
            async with conn.transaction():
                a = await store.accept(conn, sub, keys=keys, channel="http-batch", correlation_id=cid, known=known,
                                       outbox=mine, received_at=base + timedelta(microseconds=n))
        except store.Conflict as exc:
            stored[i] = _stored(i, sub, exc)
            continue
        except asyncpg.PostgresError as exc:
            if isinstance(exc, (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)):
                raise  # the whole transaction is lost: the caller runs it again
            # The message may quote stored values: report the SQLSTATE only.
            stored[i] = BatchItemResult(index=i, submission_id=sub.submission_id, outcome="error", status=500,
                                        detail=f"could not be stored (SQLSTATE {exc.sqlstate}); retry this item")
            continue
        rows.extend(mine)
        stored[i] = _stored(i, sub, a)
    await enqueue(conn, rows)
    return stored


StoreFn = Callable[[asyncpg.Connection, Valid, domain.Keyring, str], Awaitable[dict[int, BatchItemResult]]]


async def _in_transaction(pool: asyncpg.Pool, how: StoreFn, valid: Valid, keys: domain.Keyring,
                          cid: str) -> dict[int, BatchItemResult]:
    """Run ``how`` in one transaction, again on a deadlock (up to BATCH_DEADLOCK_RETRIES tries)."""
    for attempt in range(1, BATCH_DEADLOCK_RETRIES + 1):
        try:
            async with pool.acquire() as conn:
                async with conn.transaction():
                    return await how(conn, valid, keys, cid)
        except asyncpg.DeadlockDetectedError:
            if attempt >= BATCH_DEADLOCK_RETRIES:
                raise
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


async def _store_valid(pool: asyncpg.Pool, valid: Valid, keys: domain.Keyring, cid: str) -> dict[int, BatchItemResult]:
    """Store the valid items: set-based, else (nothing of the batch committed) item by item."""
    for _ in range(BATCH_RACE_RETRIES):
        try:
            return await _in_transaction(pool, _store_set_based, valid, keys, cid)
        except store.Raced as exc:
            # Another request or the intake stored one of these ids meanwhile: the next pass sees
            # it (a duplicate or a conflict). Item by item, accept settles such races itself.
            log.info("batch met a concurrent insert (%s); running it again", exc)
        except asyncpg.DeadlockDetectedError:
            raise  # already tried BATCH_DEADLOCK_RETRIES times: not one item's fault
        except asyncpg.PostgresError as exc:
            # One item failed in the database (not validation): nothing was committed. Store the
            # batch again with a savepoint per item so that item is reported and the rest stored.
            # (SQLSTATE only: the message may quote submitted values.)
            log.warning("batch failed in the database (SQLSTATE %s); storing it again item by item", exc.sqlstate)
            return await _in_transaction(pool, _store_item_by_item, valid, keys, cid)
    log.warning("batch kept meeting concurrent inserts; storing it item by item")
    return await _in_transaction(pool, _store_item_by_item, valid, keys, cid)


@router.post("/submissions/batch", response_model=BatchResult, tags=["submissions"], max_body_size=4 * 1024 * 1024,
             summary="Up to FEEDBACK_BATCH_MAX_ITEMS (default 500) submissions; each succeeds or fails on its own")
async def submit_batch(request: Request, body: Annotated[Any, Body()]) -> BatchResult:
    """A JSON array of submissions. The response lists one result per item, in order.

    Valid items are stored in one transaction; an invalid or conflicting item is reported and does
    not block the others. Should an item fail in the database, the batch is stored again with a
    savepoint per item, so only that item fails (outcome ``error``).
    """
    # (This docstring is the route's OpenAPI description.) Items are stored in array order, each
    # with its own received_at: of two answers for one episode, the earlier in the array is the
    # first answer, as if they had been sent one request each in that order.
    limit = request.app.state.runtime.settings.batch_max_items
    if not isinstance(body, list):
        raise Problem(422, "Invalid request", "body must be a JSON array of submissions",
                      errors=[{"field": "(body)", "message": "must be a JSON array"}])
    if not body or len(body) > limit:
        raise Problem(422, "Invalid request", f"a batch holds 1 to {limit} submissions, not {len(body)}",
                      errors=[{"field": "(body)", "message": f"must hold 1 to {limit} items"}])
    results: dict[int, BatchItemResult] = {}
    valid: Valid = []
    for i, raw in enumerate(body):
        sid = raw.get("submission_id") if isinstance(raw, dict) else None
        sid = sid if isinstance(sid, str) and len(sid) <= 100 else None
        try:
            sub = parse_submission(raw)
            admit(request, sub)
            valid.append((i, sub))
        except Problem as p:
            results[i] = BatchItemResult(index=i, submission_id=sid, outcome="forbidden" if p.status == 403 else "invalid",
                                         status=p.status, detail=p.detail, errors=p.extra.get("errors"))
    if valid:
        cid = correlation_id_var.get() or str(uuid.uuid4())
        results.update(await _store_valid(request.app.state.runtime.pool, valid, request.app.state.keyring, cid))
    items = [results[i] for i in range(len(body))]
    ok = sum(1 for it in items if it.outcome in ("created", "duplicate"))
    return BatchResult(accepted=ok, rejected=len(items) - ok, items=items)


@router.post("/fhir/QuestionnaireResponse", response_model=AcceptedView, status_code=202, tags=["fhir"],
             max_body_size=MAX_FHIR_BODY_BYTES,
             summary="Submit a FHIR R4 (UK Core) QuestionnaireResponse, application/fhir+json",
             responses={**DUPLICATE, 413: problem("Body larger than 1 MB (problem details)"),
                        415: problem("Content-Type is not application/fhir+json or application/json (problem details)")},
             openapi_extra={"requestBody": {"required": True, "content": {FHIR_JSON: {"schema": {"type": "object"}, "examples": {
                 "fft": {"value": {
                     "resourceType": "QuestionnaireResponse", "identifier": {"value": "qr-1"},
                     "questionnaire": fhir.QUESTIONNAIRE_BASE + "fft", "status": "completed",
                     "subject": {"identifier": {"system": fhir.NHS_NUMBER_SYSTEM, "value": "9990000018"}},
                     "encounter": {"identifier": {"system": fhir.EPISODE_SYSTEM, "value": "ep-1"}},
                     "authored": "2026-11-01T09:30:00+00:00",
                     "extension": [{"url": fhir.PROVIDER_EXTENSION,
                                    "valueReference": {"identifier": {"system": fhir.ODS_SYSTEM, "value": "RJ1"}}}],
                     "item": [{"linkId": "fft", "answer": [{"valueCoding": {"code": "1"}}]}]}}}}}}})
async def submit_fhir(
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=100)] = None,
) -> AcceptedView:
    """Status ``completed`` is a new submission (id = ``identifier.value``); ``amended`` is recorded
    as an amendment of it (id ``<identifier.value>:amended:<meta.versionId or 1>``). Any other
    status is refused. See services/feedback/README.md for the linkId mapping."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in (FHIR_JSON, "application/json"):
        raise Problem(415, "Unsupported media type", f"send {FHIR_JSON}",
                      errors=[{"field": "content-type", "message": f"must be {FHIR_JSON}"}])
    raw = await request.body()
    if len(raw) > MAX_FHIR_BODY_BYTES:
        raise Problem(413, "Content too large", f"at most {MAX_FHIR_BODY_BYTES} bytes",
                      errors=[{"field": "(body)", "message": "too large"}])
    try:
        resource = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays or objects nested thousands deep
        raise Problem(400, "Bad request", "body is not JSON", errors=[{"field": "(body)", "message": "not JSON"}]) from exc
    try:
        body, paths = fhir.to_submission(resource)
    except fhir.FhirError as exc:
        raise _invalid(exc.errors, "Invalid QuestionnaireResponse") from exc
    if idempotency_key is not None and idempotency_key != body["submission_id"]:
        raise Problem(422, "Invalid request", "Idempotency-Key differs from identifier.value",
                      errors=[{"field": "identifier.value", "message": "differs from the Idempotency-Key header"}])
    try:
        sub = domain.Submission.model_validate(body)
    except ValidationError as exc:
        errors = [{"field": domain.redact(fhir.fhir_field(e["loc"], paths)), "message": domain.redact(str(e["msg"]))}
                  for e in exc.errors()[:20]]
        raise _invalid(errors, "Invalid QuestionnaireResponse") from exc
    admit(request, sub, lambda f: fhir.fhir_field((f,), paths))
    accepted = await _accept_one(request, sub, "fhir")
    if accepted.status == "duplicate":
        response.status_code = 200
    return AcceptedView(**accepted.__dict__)


def _visible(request: Request, provider_code: str) -> bool:
    """A bound token sees only the providers its binding reaches (unknown providers: national tokens only)."""
    return _reach(request).sees_provider(provider_code)


FFT_RULE = ("First FFT answer per episode and patient, authored in the month (UTC). Providers with 1-4 responses "
            "are suppressed (primary); zero is shown; when exactly one provider is suppressed, the next smallest also "
            "hides its counts (secondary). Percentages are whole numbers, rounded half up.")


@router.get("/reports/fft", response_model=FftReport, tags=["reports"],
            summary="FFT % positive and % negative per provider for a month, with NHS-style suppression")
async def fft_report(request: Request, period: Annotated[PeriodCode, Query(description="YYYY-MM")]) -> FftReport:
    try:
        store.month_bounds(period)
    except ValueError as exc:  # matches the pattern but is no calendar month (0000-01, 9999-12): 422, not 500
        raise Problem(422, "Invalid request", f"period {period} is out of range",
                      errors=[{"field": "period", "message": "year out of range"}]) from exc
    async with request.app.state.runtime.pool.acquire() as conn:
        counts = await store.fft_counts(conn, period)
    # A region-scoped token gets the report computed over its region's providers only, so both
    # suppression rules (and the total) hold within what it can see.
    counts = {code: c for code, c in counts.items() if _visible(request, code)}
    rows, total = domain.fft_report(counts)
    return FftReport(period=period, rule=FFT_RULE, providers=rows, total=total)


@router.get("/reports/proms", response_model=PromReport, tags=["reports"],
            summary="PROM average health gain (post − pre) per provider, instrument and procedure")
async def prom_report(
    request: Request,
    procedure: Annotated[str | None, Query(pattern=r"^[a-z0-9_]{1,40}$")] = None,
    min_count: Annotated[int | None, Query(ge=1, le=10_000)] = None,
) -> PromReport:
    settings = request.app.state.runtime.settings
    n = settings.prom_min_count if min_count is None else min_count
    if n < settings.prom_min_count_floor:
        raise Problem(422, "Invalid request", f"min_count must be at least {settings.prom_min_count_floor}",
                      errors=[{"field": "min_count", "message": f"must be at least {settings.prom_min_count_floor}"}])
    async with request.app.state.runtime.pool.acquire() as conn:
        rows = await store.prom_pairs(conn, procedure)
    rows = [r for r in rows if _visible(request, r[0])]
    groups = domain.prom_report(rows, n)
    rule = (f"Each patient's first pre_op and first post_op answer per instrument and procedure; health gain = post − pre "
            f"(Oxford total 0-48, EQ VAS 0-100; higher is better). Groups with fewer than {n} pairs show no averages.")
    return PromReport(procedure=procedure, min_count=n, rule=rule, groups=groups)
