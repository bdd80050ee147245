"""HTTP plumbing shared by the services: RFC 9457 problem details, liveness and readiness,
protected metrics, correlation ids, request body limits and 5xx accounting."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.logging import correlation_id_var
from shared.tracing import safe_correlation_id

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# Request bodies larger than this are refused with 413 before they are parsed (per-route limits,
# e.g. the batch endpoints', are set on the route with ``max_body_size``).
DEFAULT_MAX_BODY_BYTES = 64 * 1024

HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
HTTP_SERVER_ERRORS = Counter("http_server_errors_total", "Requests answered with a 5xx status", ["route", "status"])


class Problem(Exception):
    """An error the client can act on, rendered as application/problem+json (RFC 9457)."""

    def __init__(self, status: int, title: str, detail: str, *, type_: str = "about:blank",
                 headers: Mapping[str, str] | None = None, **extra: Any):
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_
        self.headers = dict(headers or {})
        self.extra = extra


def problem_response(status: int, title: str, detail: str, *, type_: str = "about:blank",
                     headers: Mapping[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"type": type_, "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=dict(headers or {}))


# pydantic's error messages carry a prefix naming the Python exception ("Value error, ...",
# "Assertion failed, ..."): the client needs the sentence after it.
_MESSAGE_PREFIX = re.compile(r"^(Value error|Assertion failed), ")


def clean_message(message: str) -> str:
    return _MESSAGE_PREFIX.sub("", message)


def validation_errors(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for err in errors[:50]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        out.append({"field": ".".join(loc) or "(body)", "message": clean_message(str(err.get("msg")))})
    return out


class ServiceAPI(FastAPI):
    """FastAPI with its request-body limit answered as problem details too.

    The body limits (``max_body_size`` on the app and on routes) are Starlette's, which answer a
    too-large body with ``text/plain`` from outside every handler; the outermost layer here
    rewrites exactly that response, so every refusal a client gets is problem details."""

    def build_middleware_stack(self):  # type: ignore[no-untyped-def]
        return _ProblemFor413(super().build_middleware_stack())


class _ProblemFor413:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rewriting = False

        async def send_wrapper(message: Any) -> None:
            nonlocal rewriting
            if message["type"] == "http.response.start" and message["status"] == 413:
                ctype = dict(message.get("headers") or []).get(b"content-type", b"")
                if ctype.startswith(b"text/plain"):
                    rewriting = True
                    return
            if rewriting:
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    response = problem_response(413, "Content too large", "the request body is larger than this route accepts",
                                                errors=[{"field": "(body)", "message": "too large"}])
                    await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
                    await send({"type": "http.response.body", "body": response.body})
                return
            await send(message)

        await self.app(scope, receive, send_wrapper)


class _Observed:
    """Correlation id in (a safe one, else a new one: shared/tracing.py) and out (the response's
    ``X-Correlation-ID``), request latency by route and status, and 5xx counted. A plain ASGI
    middleware: Starlette's ``BaseHTTPMiddleware`` runs every request in a task group and streams
    the response through a queue, a cost per request the ledger's HTTP writes measured."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = next((v for k, v in scope["headers"] if k == b"x-correlation-id"), None)
        cid = safe_correlation_id(raw.decode("latin-1") if raw is not None else None)
        status = {"code": 500}

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-correlation-id", cid.encode())]}
            await send(message)

        token = correlation_id_var.set(cid)
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            correlation_id_var.reset(token)
            route = getattr(scope.get("route"), "path", "unmatched")
            code = status["code"]
            HTTP_LATENCY.labels(scope["method"], route, str(code)).observe(time.perf_counter() - start)
            if code >= 500 and code not in (500, 503):  # 500/503 are counted by the exception handler
                HTTP_SERVER_ERRORS.labels(route, str(code)).inc()


Readiness = Callable[[], Awaitable[dict[str, str]]]
MetricsAuth = Callable[[str], Awaitable[bool]]


def _route_of(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def install(app: FastAPI, service: str, *, readiness: Readiness | None = None, metrics_auth: MetricsAuth | None = None) -> None:
    """Problem handlers, liveness and readiness probes, protected /metrics, correlation ids,
    latency and 5xx accounting. ``readiness`` returns {check: "ok" | why not}; ``metrics_auth``
    says whether a bearer token may scrape /metrics (no callable: nobody may)."""

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail, type_=exc.type, headers=exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(list(exc.errors()))
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem_response(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Database or broker briefly unreachable: nothing was written (the transaction rolled
        # back), so the client can safely retry the same request (it is idempotent).
        from shared.consumer import TRANSIENT_ERRORS

        route = _route_of(request)
        if isinstance(exc, TRANSIENT_ERRORS):
            HTTP_SERVER_ERRORS.labels(route, "503").inc()
            response = problem_response(503, "Service unavailable", "a dependency is briefly unavailable; retry the same request")
            response.headers["Retry-After"] = "1"
            return response
        HTTP_SERVER_ERRORS.labels(route, "500").inc()
        log.error("unexpected error on %s %s: %s", request.method, route, type(exc).__name__, exc_info=exc)
        return problem_response(500, "Internal error", "unexpected error; it has been logged")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {400: "Bad request", 404: "Not found", 405: "Method not allowed", 401: "Unauthorized", 403: "Forbidden",
                  413: "Content too large"}
        detail = {413: "the request body is larger than this route accepts",
                  400: "the request body could not be read as JSON"}.get(exc.status_code, str(exc.detail))
        extra = {"errors": [{"field": "(body)", "message": detail}]} if exc.status_code in (400, 413) else {}
        return problem_response(exc.status_code, titles.get(exc.status_code, "Error"), detail, **extra)

    app.add_middleware(_Observed)

    @app.get("/health/live", tags=["ops"], summary="Liveness: the process serves HTTP (restart it if not)")
    async def live() -> dict[str, str]:
        return {"status": "ok", "service": service}

    async def ready_body() -> tuple[int, dict[str, Any]]:
        checks = await readiness() if readiness is not None else {}
        ok = all(v == "ok" for v in checks.values())
        return (200 if ok else 503), {"status": "ok" if ok else "unavailable", "service": service, "checks": checks}

    ready_doc = {200: {"description": "Ready: PostgreSQL and the broker answer and every consumer is polling"},
                 503: {"description": "Not ready: `checks` names what is down",
                       "content": {"application/json": {"schema": {"type": "object"}}}}}

    @app.get("/health/ready", tags=["ops"], responses=ready_doc,  # type: ignore[arg-type]
             summary="Readiness: PostgreSQL and the broker answer and every consumer is polling")
    async def ready() -> JSONResponse:
        status, body = await ready_body()
        return JSONResponse(body, status_code=status)

    @app.get("/health", tags=["ops"], responses=ready_doc,  # type: ignore[arg-type]
             summary="Readiness (the same as /health/ready)")
    async def health() -> JSONResponse:
        status, body = await ready_body()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics (bearer token required)", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return problem_response(401, "Unauthorized", "metrics need a bearer token", headers={"WWW-Authenticate": "Bearer"})
        if metrics_auth is None or not await metrics_auth(token.strip()):
            return problem_response(403, "Forbidden", "this token may not read metrics")
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def static_token_matches(expected: str | None, given: str) -> bool:
    """Constant-time comparison of a configured scrape token (None: no static token)."""
    return expected is not None and hmac.compare_digest(expected.encode(), given.encode())


async def bounded(check: Awaitable[Any], timeout_s: float = 2.0) -> str:
    """Run a readiness check; "ok", or why it failed (by type only: no internals)."""
    try:
        await asyncio.wait_for(check, timeout=timeout_s)
        return "ok"
    except asyncio.TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return f"failed ({type(exc).__name__})"


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


# Every route behind the auth policy can answer these (401/403 from shared/auth.py, 413 from the
# body limit, 503 from the transient-error handler above), so each service's router documents them.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: problem("Bad request (problem details)"),
    401: problem("No bearer token, or an invalid one (problem details)"),
    403: problem("The token lacks the scope this route needs, or the request names an organisation outside its binding"
                 " (problem details)"),
    404: problem("Not found, or a record outside the token's binding (problem details)"),
    409: problem("Conflict: same id, different content, or not allowed now (problem details)"),
    413: problem("The request body is larger than this route accepts (problem details)"),
    422: problem("Validation failed; `errors` names each failing field (problem details)"),
    503: problem("A dependency (database, broker) is briefly unavailable; retry the same request (problem details)"),
}
