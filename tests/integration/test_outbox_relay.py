"""The outbox relay against the real broker and PostgreSQL: inline in a service, or as its own
process (``OUTBOX_RELAY=external``, ``python -m services.<name> relay``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid

import asyncpg
import pytest

from services.ledger.app import create_app
from services.ledger.settings import LedgerSettings
from shared.outbox import run_relay
from shared.topics import LEDGER_POSTED
from tests.conftest import running
from tests.helpers import eventually, read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(database, kafka_bootstrap) -> LedgerSettings:
    return LedgerSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                          consumer_group=f"ledger-{uuid.uuid4().hex[:8]}", outbox_relay="external")


def transfer(tid: str) -> dict:
    return {"transfer_id": tid, "legs": [{"account_id": "commissioner:QWE", "amount_pence": -500},
                                        {"account_id": "provider:RJ1", "amount_pence": 500}],
            "cause": {"kind": "payment"}}


async def unpublished(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM outbox")
    finally:
        await conn.close()


async def answers(bootstrap: str, run: str) -> list[bytes]:
    records = await read_topic(bootstrap, LEDGER_POSTED.name, expect=10_000, timeout_s=3)
    return [r.key for r in records if r.key.startswith(run.encode())]


async def test_external_relay_publishes_what_the_service_only_enqueues(settings) -> None:
    run = uuid.uuid4().hex[:6]
    async with running(create_app(settings)) as http:
        assert http._transport.app.state.runtime.relay is None  # type: ignore[attr-defined]
        for i in range(3):
            r = await http.post("/v1/transfers", json=transfer(f"{run}-{i}"))
            assert r.status_code == 201, r.text
        await asyncio.sleep(0.5)
        assert await unpublished(settings.database_url) == 3  # nobody relays them yet
        assert await answers(settings.kafka_bootstrap_servers, run) == []

        stop = asyncio.Event()
        relay = asyncio.create_task(run_relay(settings, stop))
        try:
            await eventually(lambda: _is_zero(unpublished(settings.database_url)))
            r = await http.post("/v1/transfers", json=transfer(f"{run}-3"))  # published while it runs (LISTEN/NOTIFY)
            assert r.status_code == 201
            await eventually(lambda: _is_zero(unpublished(settings.database_url)))
        finally:
            stop.set()
            await asyncio.wait_for(relay, timeout=30)
    keys = await answers(settings.kafka_bootstrap_servers, run)
    assert sorted(keys) == [f"{run}-{i}".encode() for i in range(4)]  # each once: published rows are deleted


async def test_relay_command_runs_as_its_own_process_and_stops_on_sigterm(settings) -> None:
    run = uuid.uuid4().hex[:6]
    async with running(create_app(settings)) as http:
        r = await http.post("/v1/transfers", json=transfer(f"{run}-0"))
        assert r.status_code == 201
        env = {**os.environ, "LEDGER_DATABASE_URL": settings.database_url,
               "LEDGER_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers}
        proc = subprocess.Popen([sys.executable, "-m", "services.ledger", "relay"], env=env)
        try:
            await eventually(lambda: _is_zero(unpublished(settings.database_url)))
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 30)
        assert code == 0
    assert await answers(settings.kafka_bootstrap_servers, run) == [f"{run}-0".encode()]


async def _is_zero(value) -> bool:  # type: ignore[no-untyped-def]
    return (await value) == 0
