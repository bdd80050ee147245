"""HTTP plumbing shared by the services: RFC 9457 problem details, health, metrics, correlation ids."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.logging import correlation_id_var

PROBLEM_JSON = "application/problem+json"

HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class Problem(Exception):
    """An error the client can act on, rendered as application/problem+json (RFC 9457)."""

    def __init__(self, status: int, title: str, detail: str, *, type_: str = "about:blank", **extra: Any):
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_
        self.extra = extra


def problem_response(status: int, title: str, detail: str, *, type_: str = "about:blank", **extra: Any) -> JSONResponse:
    body = {"type": type_, "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def _validation_errors(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for err in errors[:50]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        out.append({"field": ".".join(loc) or "(body)", "message": str(err.get("msg"))})
    return out


def install(app: FastAPI, service: str) -> None:
    """Problem handlers, /health, /metrics and correlation-id + latency middleware."""

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail, type_=exc.type, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(list(exc.errors()))
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem_response(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(Exception)
    async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
        # Database or broker briefly unreachable: nothing was written (the transaction rolled
        # back), so the client can safely retry the same request (it is idempotent).
        from shared.consumer import TRANSIENT_ERRORS

        if isinstance(exc, TRANSIENT_ERRORS):
            response = problem_response(503, "Service unavailable", "a dependency is briefly unavailable; retry the same request")
            response.headers["Retry-After"] = "1"
            return response
        return problem_response(500, "Internal error", "unexpected error; it has been logged")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed", 401: "Unauthorized", 403: "Forbidden"}
        return problem_response(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail))

    @app.middleware("http")
    async def _correlation(request: Request, call_next):  # type: ignore[no-untyped-def]
        cid = request.headers.get("x-correlation-id") or str(uuid.uuid4())
        token = correlation_id_var.set(cid[:200])
        start = time.perf_counter()
        try:
            response = await call_next(request)
        finally:
            correlation_id_var.reset(token)
        route = request.scope.get("route")
        HTTP_LATENCY.labels(request.method, getattr(route, "path", "unmatched"), str(response.status_code)).observe(
            time.perf_counter() - start
        )
        response.headers["x-correlation-id"] = cid[:200]
        return response

    @app.get("/health", tags=["ops"], summary="Liveness and readiness")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details; some problems add members (e.g. required_scope, transfer_id)",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "Each failing field",
            "items": {"type": "object", "required": ["field", "message"],
                      "properties": {"field": {"type": "string"}, "message": {"type": "string"}}},
        },
    },
}


def problem(description: str) -> dict[str, Any]:
    """An OpenAPI response entry whose body is problem details (application/problem+json)."""
    return {"description": description, "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}}}


# Every route behind the auth policy can answer these (401/403 from shared/auth.py, 503 from the
# transient-error handler above), so each service's router documents them for all its routes.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: problem("Bad request (problem details)"),
    401: problem("No bearer token, or an invalid one (problem details)"),
    403: problem("The token lacks the scope this route needs, or its region limit excludes it (problem details)"),
    404: problem("Not found (problem details)"),
    409: problem("Conflict: same id, different content (problem details)"),
    422: problem("Validation failed; `errors` names each failing field (problem details)"),
    503: problem("A dependency (database, broker) is briefly unavailable; retry the same request (problem details)"),
}
