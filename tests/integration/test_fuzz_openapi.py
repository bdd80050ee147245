"""Fuzz every operation of each service's OpenAPI with schemathesis, on real PostgreSQL and the broker.

For each service (feedback, payments, ledger) the app runs in-process with its lifespan
(migrations, database pool, Kafka consumers, outbox relay) via ``tests.conftest.running``, on a
fresh database of its own and a unique consumer group. Its OpenAPI document (``app.openapi()``,
what ``/openapi.json`` serves) is loaded with ``schemathesis.openapi.from_dict`` and every
operation is one test here: schemathesis generates cases for it (positive, i.e. valid per the
schema, and negative, i.e. violating it) and each response must pass

- ``not_a_server_error``: no 5xx;
- ``status_code_conformance``: the status code is documented for the operation;
- ``content_type_conformance``: the content type is one documented for that status;
- ``response_schema_conformance``: the body matches the documented schema.

How it is driven, and why: schemathesis's ASGI transport (``case.call()`` with an app) is
synchronous. It runs the app through Starlette's TestClient on an event loop of its own, but the
lifespan (asyncpg pool, FastStream consumers) must run on the test's event loop, where
``running(app)`` started it. So cases come from the operation's hypothesis strategy
(``operation.as_strategy(mode)``) under a plain ``@given`` test run in a worker thread
(``asyncio.to_thread``). The thread serialises each case with ``case.as_transport_kwargs``,
sends it through the async httpx client of ``running(app)`` on the test's loop
(``asyncio.run_coroutine_threadsafe``) and checks the response with
``case.validate_response(response, checks=CHECKS)``. Hypothesis keeps its shrinking; a failure
reports schemathesis's message with a curl reproduction, and hypothesis's seed.

Explicit examples in the OpenAPI (``openapi_examples`` of POST /v1/submissions, the FHIR endpoint
and POST /v1/payment-requests) are sent first, so the happy path and its idempotent replay
(documented 200) are exercised, not only the 422s that random bodies get.

Bounds: MAX_EXAMPLES per operation and generation mode, and a wall-clock BUDGET_S per
operation, after which the remaining examples are drawn but not sent. The whole file runs in
well under three minutes on two cores.

Nothing is excluded: every operation in each schema (including /health) is fuzzed. Writes
(payments, transfers, settlements, appeals) land in the module's own throwaway database.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.feedback.app import create_app as create_feedback
from services.feedback.settings import FeedbackSettings
from services.ledger.app import create_app as create_ledger
from services.ledger.settings import LedgerSettings
from services.payments.app import create_app as create_payments
from services.payments.settings import PaymentsSettings
from shared.db import ensure_database
from shared.auth import SCOPES, mint
from tests.conftest import ALL_SCOPES_TOKEN, running

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    # schemathesis's own strategies use `random`; not something this project can act on.
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
]

MAX_EXAMPLES = 20  # per operation and generation mode
BUDGET_S = 6.0  # per operation (both modes); the rest of the examples are drawn but not sent
REGION_BUDGET_S = 3.0  # the same operation again with a region-scoped token
REQUEST_TIMEOUT_S = 30.0
BASE_URL = "http://test"
AUTH = {"Authorization": f"Bearer {ALL_SCOPES_TOKEN}"}
# Every scope, bound to London: reads filter, writes outside London are refused; still never a 5xx.
REGION_AUTH = {"Authorization": f"Bearer {mint(sorted(SCOPES), subject='london-fuzz', regions=['Y56'], ttl_s=6 * 3600)}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


@dataclass(frozen=True)
class Service:
    name: str
    settings: Callable[..., Any]
    create_app: Callable[[Any], Any]


SERVICES = {
    "feedback": Service("feedback", FeedbackSettings, create_feedback),
    "payments": Service("payments", PaymentsSettings, create_payments),
    "ledger": Service("ledger", LedgerSettings, create_ledger),
}


def _operations(service: Service) -> list[tuple[str, str]]:
    """(METHOD, path) of every operation in the service's OpenAPI, read at collection time.

    The app is only built (no I/O: nothing connects before the lifespan starts) to read its schema,
    so an operation added later is fuzzed without touching this file."""
    document = service.create_app(service.settings()).openapi()
    return [(method.upper(), path) for path, ops in document["paths"].items() for method in ops]


CASES = [pytest.param(name, op, id=f"{name}:{op[0]} {op[1]}") for name, svc in SERVICES.items() for op in _operations(svc)]


@dataclass
class Target:
    schema: Any  # schemathesis OpenApiSchema
    client: httpx.AsyncClient
    loop: asyncio.AbstractEventLoop


@pytest.fixture(scope="module")
async def service(request, infra, kafka_bootstrap) -> AsyncIterator[Target]:
    """One service running in-process on a fresh database of its own, for all its operations' tests."""
    svc = SERVICES[request.param]
    name = f"t_fuzz_{svc.name}_{uuid.uuid4().hex[:8]}"
    dsn = await ensure_database(infra.postgres_dsn, name)
    settings = svc.settings(database_url=dsn, kafka_bootstrap_servers=kafka_bootstrap,
                            consumer_group=f"{svc.name}-fuzz-{uuid.uuid4().hex[:8]}")
    app = svc.create_app(settings)
    try:
        async with running(app) as client:
            schema = schemathesis.openapi.from_dict(app.openapi())
            yield Target(schema, client, asyncio.get_running_loop())
    finally:
        conn = await asyncpg.connect(infra.postgres_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def _send(client: httpx.AsyncClient, kwargs: dict[str, Any]) -> httpx.Response:
    """Send requests-style transport kwargs (what schemathesis serialises a case to) with httpx."""
    body: dict[str, Any] = {}
    if "json" in kwargs:
        body["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        body["content" if isinstance(data, (bytes, str)) else "data"] = data
    return await client.request(
        kwargs["method"], kwargs["url"], headers=kwargs.get("headers"), params=kwargs.get("params") or None,
        cookies=kwargs.get("cookies") or None, **body,
    )


def _fuzz(target: Target, method: str, path: str, mode: schemathesis.GenerationMode, deadline: float,
          auth: dict[str, str] = AUTH) -> int:
    """Run one operation's hypothesis test in this (worker) thread; returns how many cases were sent."""
    operation = target.schema[path][method]
    sent = 0

    # database=None: every operation's test is this one closure, so a shared example database would
    # replay one operation's failures against another; a failure prints its seed and blob instead.
    @settings(max_examples=MAX_EXAMPLES, deadline=None, print_blob=True, database=None,
              phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        nonlocal sent
        if time.monotonic() > deadline:
            return
        kwargs = case.as_transport_kwargs(base_url=BASE_URL, headers=auth)
        future = asyncio.run_coroutine_threadsafe(_send(target.client, kwargs), target.loop)
        response = future.result(timeout=REQUEST_TIMEOUT_S)
        sent += 1
        case.validate_response(response, checks=CHECKS, headers=kwargs["headers"])

    check()
    return sent


@pytest.mark.parametrize(("service", "operation"), CASES, indirect=["service"], scope="module")
async def test_operation_conforms_to_its_schema(service: Target, operation: tuple[str, str]) -> None:
    method, path = operation
    deadline = time.monotonic() + BUDGET_S
    sent = 0
    for mode in MODES:
        if mode is schemathesis.GenerationMode.NEGATIVE and not _negatable(service.schema[path][method]):
            continue  # nothing in the request can be made invalid (no parameters, no body)
        sent += await asyncio.to_thread(_fuzz, service, method, path, mode, deadline)
    assert sent > 0, f"{method} {path}: no case was sent within {BUDGET_S}s"
    deadline = time.monotonic() + REGION_BUDGET_S
    regional = 0
    for mode in MODES:
        if mode is schemathesis.GenerationMode.NEGATIVE and not _negatable(service.schema[path][method]):
            continue
        regional += await asyncio.to_thread(_fuzz, service, method, path, mode, deadline, REGION_AUTH)
    assert regional > 0, f"{method} {path}: no case was sent with the region-scoped token"


def _negatable(operation: Any) -> bool:
    definition = operation.definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody"))


@pytest.mark.parametrize("service", ["feedback"], indirect=True, scope="module")
async def test_fhir_body_nested_too_deeply_is_a_400(service: Target) -> None:
    """Found while fuzzing the FHIR parser: json.loads raises RecursionError (not ValueError) for a
    deeply nested body, which schemathesis does not generate (it stays far below 1 MB of brackets)."""
    r = await service.client.post("/v1/fhir/QuestionnaireResponse", content=b"[" * 100_000,
                                  headers={"content-type": "application/fhir+json"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
