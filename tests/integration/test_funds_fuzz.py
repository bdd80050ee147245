"""Fuzz every operation of the funds service's OpenAPI with schemathesis, on real PostgreSQL, the
broker and an in-process ledger (its fund reads): no 5xx, documented status codes and content
types, bodies matching their schemas. The same drive as tests/integration/test_fuzz_openapi.py
(cases from each operation's hypothesis strategy in a worker thread, sent through the async
client of ``running(app)`` on the test's loop), with an all-scopes national token and a
London-bound one; bounded per operation in examples and wall-clock time.

The explicit example below is a valid proposal, so the happy path and its replay are sent too.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from services.funds.app import create_app as create_funds
from services.funds.settings import FundsSettings
from services.ledger.app import create_app as create_ledger
from services.ledger.settings import LedgerSettings
from shared.auth import SCOPES, mint
from tests.conftest import ALL_SCOPES_TOKEN, fresh_database, running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300),
              pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")]

MAX_EXAMPLES = 20
BUDGET_S = 5.0
AUTHS = {"national": {"Authorization": f"Bearer {ALL_SCOPES_TOKEN}"},
         "london": {"Authorization": f"Bearer {mint(sorted(SCOPES), subject='london-fuzz', regions=['Y56'], ttl_s=3600)}"}}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
OPERATIONS = [(m.upper(), p) for p, ops in create_funds(FundsSettings(mode="development")).openapi()["paths"].items() for m in ops]


def example() -> dict[str, Any]:
    today = datetime.now(timezone.utc).date()
    return {"grant_id": "fuzz-example", "region_code": "Y56", "title": "Discharge", "aim": "Fewer poor ratings",
            "measure": {"kind": "fft_positive", "interval": "week", "baseline_from": (today - timedelta(days=150)).isoformat(),
                        "baseline_to": (today - timedelta(days=1)).isoformat()},
            "start_date": today.isoformat(), "end_date": (today + timedelta(days=100)).isoformat(), "amount_pence": 1000,
            "milestones": [{"title": "m1", "provider_code": "RJ1", "due_date": (today + timedelta(days=50)).isoformat(),
                            "amount_pence": 1000}]}


@pytest.fixture(scope="module")
async def target(infra, kafka_bootstrap):
    run = uuid.uuid4().hex[:8]
    async with fresh_database(infra.postgres_dsn) as ledger_db, fresh_database(infra.postgres_dsn) as funds_db:
        ledger_app = create_ledger(LedgerSettings(database_url=ledger_db, kafka_bootstrap_servers=kafka_bootstrap,
                                                  consumer_group=f"ledger-fz-{run}"))
        async with running(ledger_app, token=None) as ledger:
            app = create_funds(FundsSettings(database_url=funds_db, kafka_bootstrap_servers=kafka_bootstrap,
                                             consumer_group=f"funds-fz-{run}", ledger_base_url="http://test"), ledger_http=ledger)
            async with running(app, token=None) as client:
                document = app.openapi()
                document["paths"]["/v1/grants"]["post"]["requestBody"]["content"]["application/json"]["example"] = example()
                yield schemathesis.openapi.from_dict(document), client, asyncio.get_running_loop()


def _fuzz(schema: Any, client: httpx.AsyncClient, loop: asyncio.AbstractEventLoop, method: str, path: str,
          mode: schemathesis.GenerationMode, deadline: float, auth: dict[str, str]) -> int:
    operation = schema[path][method]
    sent = 0

    @settings(max_examples=MAX_EXAMPLES, deadline=None, print_blob=True, database=None,
              phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        nonlocal sent
        if time.monotonic() > deadline:
            return
        kw = case.as_transport_kwargs(base_url="http://test", headers=auth)
        body: dict[str, Any] = {"json": kw["json"]} if "json" in kw else {}
        future = asyncio.run_coroutine_threadsafe(
            client.request(kw["method"], kw["url"], headers=kw.get("headers"), params=kw.get("params") or None, **body), loop)
        response = future.result(timeout=30)
        sent += 1
        case.validate_response(response, checks=CHECKS, headers=kw["headers"])

    check()
    return sent


@pytest.mark.parametrize("operation", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
async def test_funds_operation_conforms_to_its_schema(target: Any, operation: tuple[str, str]) -> None:
    schema, client, loop = target
    method, path = operation
    definition = schema[path][method].definition.raw
    negatable = bool(definition.get("parameters") or definition.get("requestBody"))
    for name, auth in AUTHS.items():
        deadline = time.monotonic() + BUDGET_S
        sent = 0
        for mode in MODES:
            if mode is schemathesis.GenerationMode.NEGATIVE and not negatable:
                continue
            sent += await asyncio.to_thread(_fuzz, schema, client, loop, method, path, mode, deadline, auth)
        assert sent > 0, f"{method} {path}: nothing sent with the {name} token"
