"""The feedback service's HTTP API for app backends: JSON (single and batch), FHIR, reports.

The write routes are adapters: they parse, admit (``admit``: 422 for what no channel accepts, 403
for another trust's feedback) and hand commands to ``handlers.AcceptSubmissions``, the one write
path; they turn its outcomes into statuses (202 created, 200 duplicate, 409 conflict)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Body, Header, Query, Request, Response
from pydantic import BaseModel, ValidationError

from services.feedback import admission, domain, fhir, queries
from services.feedback.decisions import Accepted, Channel, Conflict, Outcome
from services.feedback.handlers import AcceptSubmissions, SubmitFeedback
from shared.auth import principal_of
from shared.consumer import TRANSIENT_ERRORS
from shared.contracts import PeriodCode
from shared.http import PROBLEM_RESPONSES, Problem, clean_message, problem
from shared.logging import correlation_id_var
from shared.periods import period_utc_bounds
from shared.reach import Reach, reach_of
from shared.uow import Raced

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)

FHIR_JSON = "application/fhir+json"
MAX_FHIR_BODY_BYTES = 1_000_000
CONFLICT_MESSAGE = "already used with different content"


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


# ---------------------------------------------------------------------------------------------
# Parsing and admission
# ---------------------------------------------------------------------------------------------
def _errors(exc: ValidationError, field_name: Callable[[tuple[Any, ...]], str] | None = None) -> list[dict[str, str]]:
    # Never echo input values back: they may hold an NHS number (messages are redacted too).
    # An unexpected key is named in loc, so the field is redacted as well as the message.
    def name(loc: tuple[Any, ...]) -> str:
        return field_name(loc) if field_name is not None else ".".join(str(p) for p in loc) or "(body)"

    return [{"field": domain.redact(name(e["loc"])), "message": domain.redact(clean_message(str(e["msg"])))}
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
    refused = admission.refusal(sub, request.app.state.runtime.settings, request.app.state.reference)
    if refused is not None:
        field, why = field_name(refused[0]), refused[1]
        raise Problem(422, "Invalid submission", f"{field}: {why}", errors=[{"field": field, "message": why}])
    reach = _reach(request)
    if not reach.acts_for_provider(sub.provider_code):
        raise reach.refuse(field_name("provider_code"), f"provider {sub.provider_code}")


# ---------------------------------------------------------------------------------------------
# Calling the handler
# ---------------------------------------------------------------------------------------------
def _handler(request: Request) -> AcceptSubmissions:
    return request.app.state.accept_submissions


def _correlation_id() -> str:
    # The middleware has made the request's correlation id safe (or minted one).
    return correlation_id_var.get() or str(uuid.uuid4())


async def _accept(request: Request, commands: Sequence[SubmitFeedback]) -> list[Outcome]:
    """The handler's outcomes; a batch that kept meeting concurrent inserts (after the unit of
    work's reruns) wrote nothing and may simply be sent again: 503 with Retry-After."""
    try:
        return await _handler(request)(commands)
    except Raced as exc:
        raise Problem(503, "Service unavailable", "concurrent requests stored the same submissions; retry the same request",
                      headers={"Retry-After": "1"}) from exc


def _conflict(outcome: Conflict, field: str) -> Problem:
    return Problem(409, "Conflict", outcome.detail, errors=[{"field": field, "message": CONFLICT_MESSAGE}])


async def _accept_one(request: Request, sub: domain.Submission, channel: Channel, id_field: str = "submission_id") -> AcceptedView:
    """One submission, a batch of one; ``id_field`` names the id as the client sent it (409)."""
    [outcome] = await _accept(request, [SubmitFeedback(sub, channel, _correlation_id())])
    if isinstance(outcome, Conflict):
        raise _conflict(outcome, id_field)
    return _view(outcome)


def _view(outcome: Accepted) -> AcceptedView:
    return AcceptedView(submission_id=outcome.submission_id, status=outcome.status, is_amendment=outcome.is_amendment,
                        scores=dict(outcome.scores))


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
    view = await _accept_one(request, sub, "http")
    if view.status == "duplicate":
        response.status_code = 200
    return view


# ---------------------------------------------------------------------------------------------
# Batch
# ---------------------------------------------------------------------------------------------
Valid = list[tuple[int, domain.Submission]]  # (index in the request body, submission)


@dataclass(frozen=True)
class FailedInDatabase:
    """An item that failed in the database when stored on its own: that item's 500, nobody else's."""

    submission_id: str
    sqlstate: str | None


def _item_result(i: int, sub: domain.Submission, outcome: Outcome | FailedInDatabase) -> BatchItemResult:
    """An item's result from what the handler made of it."""
    sid = sub.submission_id
    if isinstance(outcome, FailedInDatabase):
        # The database's message may quote stored values: the SQLSTATE only.
        return BatchItemResult(index=i, submission_id=sid, outcome="error", status=500,
                               detail=f"could not be stored (SQLSTATE {outcome.sqlstate}); retry this item")
    if isinstance(outcome, Conflict):
        return BatchItemResult(index=i, submission_id=sid, outcome="conflict", status=409, detail=outcome.detail,
                               errors=[{"field": "submission_id", "message": CONFLICT_MESSAGE}])
    return BatchItemResult(index=i, submission_id=sid, outcome=outcome.status,
                           status=202 if outcome.status == "created" else 200, result=_view(outcome))


def _failed_in_database(exc: asyncpg.PostgresError) -> bool:
    """Neither an outage nor a race (the unit of work retried those; then they are a 503)."""
    return not isinstance(exc, TRANSIENT_ERRORS)


async def _accept_batch(request: Request, commands: list[SubmitFeedback]) -> list[Outcome | FailedInDatabase]:
    """The batch in one unit of work. Should it fail in the database for another reason (one item
    breaks a constraint or a trigger), nothing of it was written: each item is then stored as a
    batch of one, in order, in its own unit of work, so only the failing item fails."""
    try:
        return list(await _accept(request, commands))
    except asyncpg.PostgresError as exc:
        if not _failed_in_database(exc):
            raise
        # (SQLSTATE only: the message may quote submitted values.)
        log.warning("a batch of %d failed in the database (SQLSTATE %s); storing its items one at a time",
                    len(commands), exc.sqlstate)
    return [await _accept_alone(request, command) for command in commands]


async def _accept_alone(request: Request, command: SubmitFeedback) -> Outcome | FailedInDatabase:
    try:
        [outcome] = await _accept(request, [command])
    except asyncpg.PostgresError as exc:
        if not _failed_in_database(exc):
            raise
        return FailedInDatabase(command.submission.submission_id, exc.sqlstate)
    return outcome


@router.post("/submissions/batch", response_model=BatchResult, tags=["submissions"], max_body_size=4 * 1024 * 1024,
             summary="Up to FEEDBACK_BATCH_MAX_ITEMS (default 500) submissions; each succeeds or fails on its own")
async def submit_batch(request: Request, body: Annotated[Any, Body()]) -> BatchResult:
    """A JSON array of submissions. The response lists one result per item, in order, each with
    the status it would have had sent on its own in that order.

    Valid items are stored in one transaction; an invalid, forbidden or conflicting item is
    reported and does not block the others. Should the batch fail in the database for a reason
    that is neither an outage nor a race, each valid item is stored again on its own, so only the
    failing item fails (outcome ``error``, status 500).
    """
    # (This docstring is the route's OpenAPI description.) Items are stored in array order, each
    # with its own received_at: of two answers to one question, the earlier in the array is the
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
        cid = _correlation_id()
        outcomes = await _accept_batch(request, [SubmitFeedback(sub, "http-batch", cid) for _, sub in valid])
        results.update({i: _item_result(i, sub, outcome) for (i, sub), outcome in zip(valid, outcomes)})
    items = [results[i] for i in range(len(body))]
    ok = sum(1 for it in items if it.outcome in ("created", "duplicate"))
    return BatchResult(accepted=ok, rejected=len(items) - ok, items=items)


# ---------------------------------------------------------------------------------------------
# FHIR
# ---------------------------------------------------------------------------------------------
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
        # The FHIR model's own messages come from pydantic: without its "Value error, " prefix.
        errors = [{**e, "message": clean_message(e["message"])} for e in exc.errors]
        raise _invalid(errors, "Invalid QuestionnaireResponse") from exc
    if idempotency_key is not None and idempotency_key != body["submission_id"]:
        raise Problem(422, "Invalid request", "Idempotency-Key differs from identifier.value",
                      errors=[{"field": "identifier.value", "message": "differs from the Idempotency-Key header"}])
    try:
        sub = domain.Submission.model_validate(body)
    except ValidationError as exc:
        raise _invalid(_errors(exc, lambda loc: fhir.fhir_field(loc, paths)), "Invalid QuestionnaireResponse") from exc
    admit(request, sub, lambda f: fhir.fhir_field((f,), paths))
    view = await _accept_one(request, sub, "fhir", id_field=fhir.fhir_field(("submission_id",), paths))
    if view.status == "duplicate":
        response.status_code = 200
    return view


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------
def _visible(request: Request, provider_code: str) -> bool:
    """A bound token sees only the providers its binding reaches (unknown providers: national tokens only)."""
    return _reach(request).sees_provider(provider_code)


FFT_RULE = ("First FFT answer per episode and patient, authored in the month (UTC). Providers with 1-4 responses "
            "are suppressed (primary); zero is shown; when exactly one provider is suppressed, the next smallest also "
            "hides its counts (secondary). A trust withheld in the quarter's publication (GET /v1/publication/fft) is "
            "withheld here too. Percentages are whole numbers, rounded half up.")


@router.get("/reports/fft", response_model=FftReport, tags=["reports"],
            summary="FFT % positive and % negative per provider for a month, with NHS-style suppression")
async def fft_report(request: Request, period: Annotated[PeriodCode, Query(description="YYYY-MM")]) -> FftReport:
    try:
        period_utc_bounds(period)
    except ValueError as exc:  # matches the pattern but is no calendar month (0000-01, 9999-12): 422, not 500
        raise Problem(422, "Invalid request", f"period {period} is out of range",
                      errors=[{"field": "period", "message": "year out of range"}]) from exc
    from services.feedback import read_api
    from services.feedback import read_models as rm

    month = rm.parse_period(period)
    quarter = rm.parse_period(rm.quarter_of(period))
    async with request.app.state.runtime.pool.acquire() as conn:
        counts = await queries.fft_counts(conn, period)
        quarter_rows = await rm.first_fft_counts(conn, quarter.start, quarter.end, bucket="month", setting=None)
    # A region-scoped token gets the report computed over its region's providers only, so both
    # suppression rules (and the total) hold within what it can see.
    counts = {code: c for code, c in counts.items() if _visible(request, code)}
    rows, total = domain.fft_report(counts)
    # The same month is published by quarter (read_models.publish): a trust withheld there is
    # withheld here too, or this month's figures less the quarter's total would give it away.
    published = rm.publish(quarter_rows, month, level="trust", setting=None, organisation=read_api._organisation(request),
                           visible=lambda code: _visible(request, code))
    withheld = {p.trust_code: p.figures.suppression for p in published.providers if p.figures.suppression != "none"}
    ref = request.app.state.reference
    for i, row in enumerate(rows):
        why = withheld.get(ref.trust_of(row.provider_code) or row.provider_code)
        if why is not None and row.suppression == "none":
            keep = why == "secondary"  # secondary keeps the percentages, as published
            rows[i] = domain.FftRow(row.provider_code, None, None, row.pct_positive if keep else None,
                                    row.pct_negative if keep else None, why)
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
        rows = await queries.prom_pairs(conn, procedure)
    rows = [r for r in rows if _visible(request, r[0])]
    value_set = request.app.state.eq5d_value_set
    groups = domain.prom_report(rows, n, value_set)
    rule = (f"Each patient's first pre_op and first post_op answer per instrument and procedure; health gain = post − pre "
            f"(Oxford total 0-48, EQ VAS 0-100; higher is better); pct_improved: pairs with a gain above 0. "
            + domain.prom_index_rule(value_set) + f" Groups with fewer than {n} pairs show no averages.")
    return PromReport(procedure=procedure, min_count=n, rule=rule, groups=groups)
