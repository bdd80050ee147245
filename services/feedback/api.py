"""The feedback service's HTTP API for app backends."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Request, Response
from pydantic import BaseModel, ValidationError

from services.feedback import domain, store
from shared.http import PROBLEM_RESPONSES, Problem
from shared.logging import correlation_id_var

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)


class AcceptedView(BaseModel):
    submission_id: str
    status: Literal["created", "duplicate"]
    is_amendment: bool
    scores: dict[str, Any]


def _errors(exc: ValidationError) -> list[dict[str, str]]:
    # Never echo input values back: they may hold an NHS number.
    return [{"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]} for e in exc.errors()[:20]]


def parse_submission(body: dict[str, Any], idempotency_key: str | None) -> domain.Submission:
    if not isinstance(body, dict):
        raise Problem(422, "Invalid request", "body must be a JSON object")
    if idempotency_key is not None:
        if body.get("submission_id") not in (None, idempotency_key):
            raise Problem(422, "Invalid request", "Idempotency-Key differs from submission_id",
                          errors=[{"field": "submission_id", "message": "differs from the Idempotency-Key header"}])
        body = {**body, "submission_id": idempotency_key}
    try:
        return domain.Submission.model_validate(body)
    except ValidationError as exc:
        errors = _errors(exc)
        raise Problem(422, "Invalid submission", "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]), errors=errors) from exc


@router.post("/submissions", response_model=AcceptedView, status_code=202, tags=["submissions"],
             summary="Submit one patient answer (idempotent on submission_id / Idempotency-Key)")
async def submit(
    request: Request,
    response: Response,
    body: Annotated[dict[str, Any], Body(openapi_examples={"fft": {"value": {
        "submission_id": "sub-1", "episode_id": "ep-1", "provider_code": "RJ1", "nhs_number": "9990000018",
        "authored_at": "2026-11-21T10:00:00Z", "answers": {"instrument": "fft", "fft_answer": 1}}}})],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=100)] = None,
) -> AcceptedView:
    sub = parse_submission(body, idempotency_key)
    rt = request.app.state.runtime
    settings = rt.settings
    try:
        async with rt.pool.acquire() as conn:
            async with conn.transaction():
                accepted = await store.accept(
                    conn, sub, key=settings.pseudonym_key.get_secret_value().encode(), key_id=settings.pseudonym_key_id,
                    channel="http", correlation_id=correlation_id_var.get() or str(uuid.uuid4()),
                )
    except store.Conflict as exc:
        raise Problem(409, "Conflict", str(exc)) from exc
    if accepted.status == "duplicate":
        response.status_code = 200
    return AcceptedView(**accepted.__dict__)
