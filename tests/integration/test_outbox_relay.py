"""The outbox relay against the real broker and PostgreSQL: inline in a service, or as its own
process (``OUTBOX_RELAY=external``, ``python -m services.<name> relay``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from services.ledger.app import create_app
from services.ledger.settings import LedgerSettings
from shared import db
from devtools.stack import EmbeddedKafka
from shared.kafka import ensure_topics, make_producer
from shared.outbox import OUTBOX_PUBLISHED, OUTBOX_VACUUMS, OutboxRelay, enqueue, run_relay
from shared.topics import LEDGER_POSTED, TopicSpec
from tests.conftest import running
from tests.helpers import eventually, read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(database, kafka_bootstrap) -> LedgerSettings:
    return LedgerSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                          consumer_group=f"ledger-{uuid.uuid4().hex[:8]}", outbox_relay="external")


def transfer(tid: str) -> dict:
    return {"transfer_id": f"manual:{tid}", "legs": [{"account_id": "commissioner:QWE", "amount_pence": -500},
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
    return [r.key for r in records if r.key.startswith(f"manual:{run}".encode())]


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
    assert sorted(keys) == [f"manual:{run}-{i}".encode() for i in range(4)]  # each once: published rows are deleted


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
    assert await answers(settings.kafka_bootstrap_servers, run) == [f"manual:{run}-0".encode()]


# ---------------------------------------------------------------------------------------------
# The relay on its own: batches, partitions, order, failures
# ---------------------------------------------------------------------------------------------
ODD = TopicSpec("outbox-test.odd.v1", 5, "k")  # a partition count unlike the project's 8


@pytest.fixture
async def pool(database) -> asyncpg.Pool:  # type: ignore[misc]
    pool = await db.create_pool(database, min_size=1, max_size=2)
    async with pool.acquire() as conn:
        await db.migrate(conn, "shared")
    yield pool
    await pool.close()


def default_partition(key: bytes, partition_count: int) -> int:
    """What aiokafka's own DefaultPartitioner (its murmur2) picks: the choice before this change."""
    ids = list(range(partition_count))
    return DefaultPartitioner()(key, ids, ids)


async def add(pool: asyncpg.Pool, rows: list[tuple[str, bytes | None, bytes]]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await enqueue(conn, [(topic, key, value, '{"event_type": "test"}') for topic, key, value in rows])


async def outbox_count(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM outbox")


async def test_relay_batches_land_on_the_default_partition_in_id_order_per_key(pool, kafka_bootstrap) -> None:
    settings = LedgerSettings(kafka_bootstrap_servers=kafka_bootstrap)
    await ensure_topics(settings, (LEDGER_POSTED, ODD))
    run = uuid.uuid4().hex[:6]
    per_key = 60
    keys = {LEDGER_POSTED.name: [f"{run}-p{k}".encode() for k in range(17)],
            ODD.name: [f"{run}-o{k}".encode() for k in range(11)]}
    rows = [(topic, key, f"{run}:{seq}:{'x' * 400}".encode())
            for seq in range(per_key) for topic, ks in keys.items() for key in ks]
    rows += [(ODD.name, None, f"{run}:null:{i}".encode()) for i in range(5)]
    await add(pool, rows)
    # Small batches, so each partition gets several batches in flight in one pass; 5 passes.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5, max_batch_size=8 * 1024)
    await producer.start()
    published_before = OUTBOX_PUBLISHED.labels(ODD.name)._value.get()
    try:
        relay = OutboxRelay(pool, producer, batch_limit=len(rows) // 5 + 1)
        await relay.drain()
    finally:
        await producer.stop()
    assert await outbox_count(pool) == 0
    assert OUTBOX_PUBLISHED.labels(ODD.name)._value.get() - published_before == len(keys[ODD.name]) * per_key + 5

    for spec in (LEDGER_POSTED, ODD):
        records = await read_topic(kafka_bootstrap, spec.name, expect=10**6, timeout_s=5)
        mine = [r for r in records if r.value.startswith(run.encode())]
        assert len(mine) == len(keys[spec.name]) * per_key + (5 if spec is ODD else 0)
        seen: dict[bytes, list[int]] = {}
        for r in sorted(mine, key=lambda r: (r.partition, r.offset)):
            if r.key is None:
                continue
            assert r.partition == default_partition(r.key, spec.partitions), r.key
            seen.setdefault(r.key, []).append(int(r.value.split(b":")[1]))
            assert r.headers == (("event_type", b"test"),)
        assert seen == {k: list(range(per_key)) for k in keys[spec.name]}  # each once, in id order
        assert len({r.partition for r in mine}) >= spec.partitions // 2  # the keys spread: several batches per pass


async def test_broker_failure_mid_publish_leaves_the_rows_and_a_later_pass_publishes_them(pool) -> None:
    broker = EmbeddedKafka()
    broker.start()
    try:
        await ensure_topics(LedgerSettings(kafka_bootstrap_servers=broker.bootstrap), (LEDGER_POSTED,))
        run = uuid.uuid4().hex[:6]
        await add(pool, [(LEDGER_POSTED.name, f"{run}-{i}".encode(), f"{run}:{i}".encode()) for i in range(200)])
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5,
                                    max_batch_size=4 * 1024, request_timeout_ms=2_000)
        await producer.start()
        try:
            await producer.partitions_for(LEDGER_POSTED.name)  # metadata known: the pass gets as far as sending
            relay = OutboxRelay(pool, producer, batch_limit=500)
            broker.pause()
            try:
                with pytest.raises(KafkaError):
                    await asyncio.wait_for(relay.publish_once(), timeout=30)
                assert await outbox_count(pool) == 200  # nothing acked is deleted
            finally:
                broker.resume()
            await eventually(lambda: _published_all(relay), timeout_s=60)
        finally:
            await producer.stop()
        records = await read_topic(broker.bootstrap, LEDGER_POSTED.name, expect=200, timeout_s=10)
        assert {r.key for r in records} == {f"{run}-{i}".encode() for i in range(200)}  # at least once
    finally:
        broker.stop()


async def _published_all(relay: OutboxRelay) -> bool:
    try:
        await relay.publish_once()
    except KafkaError:
        return False  # the broker is still catching up after SIGCONT
    return await outbox_count(relay._pool) == 0


async def test_oversized_row_is_quarantined_and_large_rows_still_publish_in_order(pool, kafka_bootstrap) -> None:
    settings = LedgerSettings(kafka_bootstrap_servers=kafka_bootstrap)
    await ensure_topics(settings, (LEDGER_POSTED,))
    run = uuid.uuid4().hex[:6]
    key = f"{run}-big".encode()
    large = f"{run}:1:".encode() + b"l" * (300 * 1024)  # over the 256 KiB batch: sent on its own
    await add(pool, [(LEDGER_POSTED.name, key, f"{run}:0".encode()), (LEDGER_POSTED.name, key, large),
                     (LEDGER_POSTED.name, key, f"{run}:2".encode()),
                     (LEDGER_POSTED.name, key, b"o" * (2 * 1024 * 1024)),  # over the 1 MiB request limit
                     (LEDGER_POSTED.name, key, f"{run}:4".encode())])
    producer = make_producer(settings, client_id="outbox-test")  # the relay's real configuration
    await producer.start()
    try:
        relay = OutboxRelay(pool, producer)
        # The row the broker can never take is moved aside with its reason; the rest keep flowing.
        assert await relay.publish_once() == 4
        quarantined = await pool.fetch("SELECT key, reason, length(payload) AS n FROM outbox_quarantine")
        assert [(q["key"], q["n"]) for q in quarantined] == [(key, 2 * 1024 * 1024)]
        assert quarantined[0]["reason"].startswith("MessageSizeTooLargeError")
        await relay.drain()
    finally:
        await producer.stop()
    assert await outbox_count(pool) == 0
    records = await read_topic(kafka_bootstrap, LEDGER_POSTED.name, expect=10**6, timeout_s=5)
    mine = sorted((r for r in records if r.key == key), key=lambda r: r.offset)
    assert {r.partition for r in mine} == {default_partition(key, LEDGER_POSTED.partitions)}
    # The earlier failed passes may have published some rows already (at least once); the last
    # pass publishes all four, in id order, large one included.
    assert [r.value.split(b":")[1] for r in mine][-4:] == [b"0", b"1", b"2", b"4"]
    assert mine[-3].value == large


async def _is_zero(value) -> bool:  # type: ignore[no-untyped-def]
    return (await value) == 0


async def pages_read_by_an_empty_pass(pool: asyncpg.Pool) -> int:
    """Buffers an (empty) relay pass touches: what dead rows cost every pass until vacuumed."""
    plan = await pool.fetchval(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT id, topic, key, payload, headers FROM outbox"
        " WHERE published_at IS NULL ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED")
    top = json.loads(plan)[0]["Plan"]
    return top["Shared Hit Blocks"] + top["Shared Read Blocks"]


async def test_relay_vacuums_its_outbox_so_deleted_rows_stop_costing_every_pass(pool, kafka_bootstrap) -> None:
    settings = LedgerSettings(kafka_bootstrap_servers=kafka_bootstrap)
    await ensure_topics(settings)
    run = uuid.uuid4().hex[:6]
    producer = make_producer(settings, client_id="outbox-test")
    await producer.start()
    try:
        # Without the relay's vacuum: 20,000 published (deleted) rows, and an empty pass walks them.
        quiet = OutboxRelay(pool, producer, batch_limit=2_000, vacuum_every_rows=0)
        for chunk in range(10):
            await add(pool, [(LEDGER_POSTED.name, f"{run}-{chunk}-{i}".encode(), b"{}") for i in range(2_000)])
        await quiet.drain()
        assert await outbox_count(pool) == 0
        walked = await pages_read_by_an_empty_pass(pool)
        assert walked > 20, walked  # the dead rows' index entries, page after page

        # The relay loop vacuums once it has deleted vacuum_every_rows rows.
        vacuums_before = OUTBOX_VACUUMS.labels("ok")._value.get()
        relay = OutboxRelay(pool, producer, batch_limit=2_000, poll_interval_ms=20, vacuum_every_rows=5_000)
        await relay.start()
        try:
            for chunk in range(3):
                await add(pool, [(LEDGER_POSTED.name, f"{run}-v{chunk}-{i}".encode(), b"{}") for i in range(2_000)])
            await eventually(lambda: _is_zero(outbox_count(pool)))
            await eventually(lambda: _true(OUTBOX_VACUUMS.labels("ok")._value.get() > vacuums_before))
        finally:
            await relay.stop()
    finally:
        await producer.stop()
    after = await pages_read_by_an_empty_pass(pool)
    assert after < 5 and after < walked, (after, walked)


async def _true(value: bool) -> bool:
    return value
