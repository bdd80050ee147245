"""Kafka → ledger consumer against the real broker and PostgreSQL: two-phase transfers in order
by ordering key, duplicate delivery, and a restart in the middle of a batch (nothing lost,
nothing doubled)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from services.ledger import store
from services.ledger.settings import LedgerSettings
from shared.contracts import Envelope, Leg, TransferCause, TransferPosted, TransferRequested, envelope
from shared.topics import LEDGER_POSTED, LEDGER_TRANSFER_REQUESTS
from tests.integration.test_ledger import ledger_http
from tests.helpers import eventually, publish, read_topic

pytestmark = pytest.mark.integration
REGIONS = ("Y58", "Y59", "Y60", "Y61", "Y62", "Y63")  # funds the earlier tests of this module leave alone


@pytest.fixture
def settings(database, kafka_bootstrap) -> LedgerSettings:
    return LedgerSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap, consumer_group=f"ledger-{uuid.uuid4().hex[:8]}",
                          batch_timeout_ms=5)


def message(req: TransferRequested, cid: str) -> tuple[bytes, bytes, dict[str, str]]:
    env = envelope(req, "ledger.transfer-requested.v1", producer="payments", correlation_id=cid)
    return req.key.encode(), env.model_dump_json().encode(), {"correlation_id": cid}


def legs(*pairs: tuple[str, int]) -> tuple[Leg, ...]:
    return tuple(Leg(account_id=a, amount_pence=p) for a, p in pairs)


async def posted_events(bootstrap: str, expect: int) -> list[TransferPosted]:
    """Every answer on the topic (other tests in the module add theirs): at least ``expect``."""
    records = await read_topic(bootstrap, LEDGER_POSTED.name, expect=10_000, timeout_s=5)
    assert len(records) >= expect
    return [Envelope[TransferPosted].model_validate_json(r.value).data for r in records]


async def test_two_phase_through_kafka_in_order_with_duplicates(settings, kafka_bootstrap) -> None:
    msgs = [message(TransferRequested(transfer_id="pay:seed", legs=legs(("commissioner:QHM", -10_000), ("held:RTD", 10_000)),
                                      cause=TransferCause(kind="payment_hold")), "c-seed")]
    for i in range(20):
        key = f"episode-{i}"
        hold = TransferRequested(transfer_id=f"hold:res-{i}", kind="pending", legs=legs(("held:RTD", -300), ("fund:Y56", 300)),
                                 ordering_key=key, cause=TransferCause(kind="diversion", episode_id=key))
        if i % 3 == 0:
            fin = TransferRequested(transfer_id=f"release:void-{i}", kind="void_pending", pending_id=hold.transfer_id, ordering_key=key,
                                    cause=TransferCause(kind="release"))
        else:
            fin = TransferRequested(transfer_id=f"release:post-{i}", kind="post_pending", pending_id=hold.transfer_id, ordering_key=key,
                                    legs=legs(("held:RTD", -100), ("fund:Y56", 100)) if i % 3 == 1 else (),
                                    cause=TransferCause(kind="diversion"))
        msgs += [message(hold, f"c-{i}"), message(fin, f"c-{i}")]
        if i % 4 == 0:
            msgs += [message(hold, f"c-{i}"), message(fin, f"c-{i}")]  # redelivered, in order
    await publish(kafka_bootstrap, LEDGER_TRANSFER_REQUESTS.name, msgs[:1])
    await asyncio.sleep(0)
    async with ledger_http(settings) as http:
        async def seeded() -> bool:
            r = await http.get("/v1/accounts/held:RTD/balance")
            return r.status_code == 200 and r.json()["posted_pence"] == 10_000

        await eventually(seeded)  # the seed lands before the episodes (different keys, different partitions)
        await publish(kafka_bootstrap, LEDGER_TRANSFER_REQUESTS.name, msgs[1:])
        # 7 voided (i % 3 == 0), 7 posted in part (100), 6 posted in full (300).
        expected_fund = 7 * 100 + 6 * 300

        async def settled() -> bool:
            r = await http.get("/v1/accounts/fund:Y56/balance")
            return r.status_code == 200 and (r.json()["posted_pence"], r.json()["pending_credits_pence"]) == (expected_fund, 0)

        await eventually(settled)
        held = (await http.get("/v1/accounts/held:RTD/balance")).json()
        assert (held["posted_pence"], held["pending_debits_pence"]) == (10_000 - expected_fund, 0)
        verify = (await http.get("/v1/verify")).json()
        assert verify["ok"] and verify["entries_checked"] == 1 + 20 * 2
        # Every entry keeps the correlation id its request carried and the event that delivered it.
        for transfer_id, cid in (("pay:seed", "c-seed"), ("hold:res-4", "c-4"), ("release:void-3", "c-3"), ("release:post-5", "c-5")):
            t = (await http.get(f"/v1/transfers/{transfer_id}")).json()
            assert t["correlation_id"] == cid, t
            assert uuid.UUID(t["causation_id"]), t
        await http._transport.app.state.runtime.relay.drain()  # type: ignore[attr-defined]
    events = await posted_events(kafka_bootstrap, expect=len(msgs))
    answers = {(e.transfer_id, e.status) for e in events}
    assert {(f"hold:res-{i}", "pending") for i in range(20)} <= answers
    assert {(f"release:void-{i}", "voided") for i in range(0, 20, 3)} <= answers
    assert {(f"release:post-{i}", "posted") for i in range(20) if i % 3} <= answers
    assert not [e for e in events if e.status == "rejected"]


async def test_restart_mid_batch_loses_nothing_and_doubles_nothing(settings, kafka_bootstrap, monkeypatch) -> None:
    n = 600
    msgs = []
    for i in range(n):
        req = TransferRequested(transfer_id=f"pay:r-{i}", legs=legs(("commissioner:QWE", -(i + 1)), (f"fund:{REGIONS[i % len(REGIONS)]}", i + 1)),
                                cause=TransferCause(kind="diversion", payment_id=f"p-{i}"))
        msgs.append(message(req, f"c-{i}"))
        if i % 10 == 0:
            msgs.append(message(req, f"c-{i}"))  # duplicate delivery
    expected_total = sum(range(1, n + 1))

    # First instance: let two batches commit, then hang inside the third batch's transaction
    # (its entries are written but not committed) and shut the instance down there.
    real_enqueue = store.enqueue
    calls = {"n": 0}
    stuck = asyncio.Event()

    async def enqueue_then_hang(conn, rows):  # type: ignore[no-untyped-def]
        await real_enqueue(conn, rows)
        calls["n"] += 1
        if calls["n"] == 3:
            stuck.set()
            await asyncio.Event().wait()  # never returns: the process "dies" here

    monkeypatch.setattr(store, "enqueue", enqueue_then_hang)
    first = settings.model_copy(update={"batch_max_records": 100})
    await publish(kafka_bootstrap, LEDGER_TRANSFER_REQUESTS.name, msgs)
    async with ledger_http(first) as http:
        await asyncio.wait_for(stuck.wait(), timeout=60)
        conn = await asyncpg.connect(settings.database_url)
        try:
            committed = await conn.fetchval("SELECT count(*) FROM entries")
        finally:
            await conn.close()
        assert 0 < committed < n  # some batches committed, the stuck one not
    monkeypatch.setattr(store, "enqueue", real_enqueue)

    # Second instance, same consumer group: resumes from the last committed offsets.
    # (Other tests in this module share the topic; this one's accounts are its own.)
    async with ledger_http(settings) as http:
        async def done() -> bool:
            r = await http.get("/v1/accounts/commissioner:QWE/balance")
            return r.status_code == 200 and r.json()["posted_pence"] == -expected_total

        await eventually(done, timeout_s=60)
        await asyncio.sleep(0.5)  # anything doubled would show up now
        assert (await http.get("/v1/accounts/commissioner:QWE/balance")).json()["posted_pence"] == -expected_total
        funds = (await http.get("/v1/accounts", params={"type": "fund"})).json()["items"]
        assert sum(a["posted_pence"] for a in funds if a["account_id"][5:] in REGIONS) == expected_total
        tb = (await http.get("/v1/trial-balance")).json()
        assert tb["total_pence"] == 0
        verify = (await http.get("/v1/verify")).json()
        assert verify["ok"], verify
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM entries WHERE transfer_id LIKE 'pay:r-%'") == n
        assert await conn.fetchval("SELECT count(*) FROM rejections WHERE transfer_id LIKE 'pay:r-%'") == 0
    finally:
        await conn.close()
