"""Ledger service against real PostgreSQL and the real broker."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg
import httpx
import pytest

from services.ledger.app import create_app
from services.ledger.settings import LedgerSettings
from shared.auth import bearer_headers
from shared.contracts import Leg, TransferCause, TransferRequested, envelope
from shared.topics import LEDGER_POSTED, LEDGER_TRANSFER_REQUESTS, LEDGER_TRANSFER_REQUESTS_DLQ
from tests.conftest import running
from tests.helpers import eventually, publish, read_topic

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def ledger_http(settings: LedgerSettings, scopes: Sequence[str] = ("ledger:read", "ledger:admin", "ledger:audit"),
                      regions: list[str] | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The ledger in process (used by every ledger integration module), called with a bearer token."""
    async with running(create_app(settings)) as http:
        http.headers.update(bearer_headers(list(scopes), subject="ledger-tests", regions=regions))
        yield http


def transfer(tid: str, *legs: tuple[str, int], kind: str = "manual") -> dict:
    """A manual transfer body (HTTP transfers live in the manual: namespace)."""
    return {"transfer_id": tid if ":" in tid else f"manual:{tid}", "legs": [{"account_id": a, "amount_pence": p} for a, p in legs], "cause": {"kind": kind}}


@pytest.fixture
def settings(database, kafka_bootstrap) -> LedgerSettings:
    # A group per test: a new member of an old group would wait for the old one's session to expire.
    return LedgerSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap, consumer_group=f"ledger-{uuid.uuid4().hex[:8]}",
                          batch_timeout_ms=5)


async def test_post_is_idempotent_and_conflicts_name_the_fields(settings) -> None:
    async with ledger_http(settings) as http:
        body = transfer("t-1", ("commissioner:QWE", -100_000), ("provider:RJ1", 90_000), ("held:RJ1", 10_000))
        first = await http.post("/v1/transfers", json=body)
        assert first.status_code == 201, first.text
        again = await http.post("/v1/transfers", json=body)
        assert again.status_code == 201
        assert again.json()["status"] == "duplicate"
        assert again.json()["entry_seq"] == first.json()["entry_seq"]
        changed = transfer("t-1", ("commissioner:QWE", -100_000), ("provider:RJ1", 100_000))
        conflict = await http.post("/v1/transfers", json=changed)
        assert conflict.status_code == 409
        assert conflict.headers["content-type"].startswith("application/problem+json")
        assert "legs" in conflict.json()["detail"]
        assert (await http.get("/v1/accounts/provider:RJ1/balance")).json()["posted_pence"] == 90_000
        tb = (await http.get("/v1/trial-balance")).json()
        assert tb["total_pence"] == 0


async def test_unbalanced_and_floor_breaking_transfers_are_refused(settings) -> None:
    async with ledger_http(settings) as http:
        unbalanced = await http.post("/v1/transfers", json=transfer("t-u", ("provider:RJ1", 5), ("fund:Y56", 4)))
        assert unbalanced.status_code == 422
        assert "sum to zero" in unbalanced.json()["detail"]
        overdraw = await http.post("/v1/transfers", json=transfer("t-f", ("fund:Y56", -1), ("provider:RJ1", 1)))
        assert overdraw.status_code == 422
        assert "floor" in overdraw.json()["detail"]
        zero = {"currency": "GBP", "posted_pence": 0, "pending_debits_pence": 0, "pending_credits_pence": 0, "available_pence": 0,
                "metadata": {}, "as_of": None}
        assert (await http.get("/v1/trial-balance")).json()["accounts"] == [
            {"account_id": "fund:Y56", "type": "fund", "floor_pence": 0, **zero},
            {"account_id": "provider:RJ1", "type": "provider", "floor_pence": None, **zero},
        ]
        # The refusal is kept: the same request gets the same answer, even after funds arrive.
        funded = await http.post("/v1/transfers", json=transfer("t-in", ("held:RJ1", -5), ("fund:Y56", 5)))
        assert funded.status_code == 422  # held:RJ1 is empty too
        again = await http.post("/v1/transfers", json=transfer("t-f", ("fund:Y56", -1), ("provider:RJ1", 1)))
        assert again.status_code == 422 and "floor" in again.json()["detail"]
        view = (await http.get("/v1/transfers/manual:t-f")).json()
        assert view["status"] == "rejected" and "floor" in view["reason"]


async def test_journal_is_append_only_and_tampering_is_detected(settings) -> None:
    async with ledger_http(settings) as http:
        for i in range(5):
            r = await http.post("/v1/transfers", json=transfer(f"t-{i}", ("commissioner:QWE", -100), ("provider:RJ1", 100)))
            assert r.status_code == 201
        assert (await http.get("/v1/verify")).json()["ok"] is True
        conn = await asyncpg.connect(settings.database_url)
        try:
            with pytest.raises(asyncpg.PostgresError, match="append-only"):
                await conn.execute("UPDATE legs SET amount_pence = 999 WHERE entry_seq = 3 AND account_id = 'provider:RJ1'")
            with pytest.raises(asyncpg.PostgresError, match="append-only"):
                await conn.execute("DELETE FROM entries WHERE seq = 2")
            # A superuser can switch the trigger off; the hash chain still catches the edit.
            await conn.execute("ALTER TABLE legs DISABLE TRIGGER legs_append_only")
            await conn.execute("UPDATE legs SET amount_pence = 999 WHERE entry_seq = 3 AND account_id = 'provider:RJ1'")
            await conn.execute("ALTER TABLE legs ENABLE TRIGGER legs_append_only")
        finally:
            await conn.close()
        result = (await http.get("/v1/verify")).json()
        assert result["ok"] is False
        assert result["first_bad_seq"] == 3
        assert result["first_bad_transfer_id"] == "manual:t-2"
        assert result["verified_through_seq"] == 2 and result["entries_checked"] == 2  # how far it got


async def test_consumer_posts_batches_once_despite_duplicates_and_dead_letters_bad_events(settings, kafka_bootstrap) -> None:
    async with ledger_http(settings) as http:
        msgs = []
        for i in range(50):
            req = TransferRequested(
                transfer_id=f"hold:k-{i}",
                legs=(Leg(account_id="commissioner:QHM", amount_pence=-1000), Leg(account_id="held:RTD", amount_pence=1000)),
                cause=TransferCause(kind="payment_hold", payment_id=f"p-{i}"),
            )
            env = envelope(req, "ledger.transfer-requested.v1", producer="payments", correlation_id=f"c-{i}")
            raw = env.model_dump_json().encode()
            msgs.append((req.transfer_id.encode(), raw, {"correlation_id": f"c-{i}"}))
            if i % 5 == 0:
                msgs.append((req.transfer_id.encode(), raw, {"correlation_id": f"c-{i}"}))  # at-least-once duplicate
        msgs.append((b"bad", b'{"not": "an envelope"}', {"correlation_id": "c-bad"}))
        await publish(kafka_bootstrap, LEDGER_TRANSFER_REQUESTS.name, msgs)

        async def all_posted() -> bool:
            r = await http.get("/v1/accounts/held:RTD/balance")
            return r.status_code == 200 and r.json()["posted_pence"] == 50_000

        await eventually(all_posted)
        dead = await read_topic(kafka_bootstrap, LEDGER_TRANSFER_REQUESTS_DLQ.name, expect=1)
        assert len(dead) == 1
        headers = {k: v.decode() for k, v in dead[0].headers}
        assert "data" in headers["dlq_reason"] and headers["dlq_source_topic"] == LEDGER_TRANSFER_REQUESTS.name
        # The topic also holds the answers to earlier tests in this module: read all of it.
        await http._transport.app.state.runtime.relay.drain()  # type: ignore[attr-defined]
        posted = await read_topic(kafka_bootstrap, LEDGER_POSTED.name, expect=10_000, timeout_s=5)
        events = [json.loads(r.value)["data"] for r in posted]
        statuses = {e["transfer_id"]: e["status"] for e in events if e["transfer_id"].startswith("hold:k-")}
        assert len(statuses) == 50 and set(statuses.values()) == {"posted"}
        verify = (await http.get("/v1/verify")).json()
        assert verify["ok"] and verify["entries_checked"] == 50
