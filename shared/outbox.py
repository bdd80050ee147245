"""Transactional outbox: enqueue events inside the caller's transaction; a relay publishes them.

The state change and the event commit together or not at all, so nothing is half-written.
The relay publishes at least once (a crash between the broker's ack and deleting the row can
resend); every consumer is idempotent, so a resend has no effect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import CorruptRecordException, InvalidTopicError, MessageSizeTooLargeError, RecordTooLargeError
from aiokafka.producer.message_accumulator import BatchBuilder
from prometheus_client import Counter, Gauge

from shared.partitioning import partition_for_key
from shared.retry import pause

if TYPE_CHECKING:
    from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

OUTBOX_PUBLISHED = Counter("outbox_published_total", "Events published from the outbox", ["topic"])
OUTBOX_BACKLOG = Gauge("outbox_backlog", "Unpublished outbox rows at the last relay pass")
OUTBOX_OLDEST_AGE = Gauge("outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row")
OUTBOX_ERRORS = Counter("outbox_publish_errors_total", "Relay passes that failed to publish")
OUTBOX_VACUUMS = Counter("outbox_vacuums_total", "VACUUMs of the outbox run by the relay", ["result"])
OUTBOX_QUARANTINED = Counter("outbox_quarantined_total", "Outbox rows moved to outbox_quarantine: never publishable", ["topic"])
OUTBOX_QUARANTINE_ROWS = Gauge("outbox_quarantine_rows", "Rows waiting in outbox_quarantine for an operator (alert while > 0)")

# Errors that say this row can never be published, whatever the retries: it is quarantined, not
# retried forever (one such row would otherwise block its whole relay). Anything else (the broker
# down, a leader moving, an authorisation failure that a configuration change will fix) is retried.
PERMANENT_ROW_ERRORS: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError, RecordTooLargeError, InvalidTopicError, CorruptRecordException, ValueError, TypeError,
    AttributeError,
)

# Rows larger than this (payload plus headers) go through ``producer.send`` on their own, which
# checks them against the producer's max_request_size (1 MiB by default) as the relay always did.
# Well under the producer's 256 KiB max_batch_size, so normal events (~0.5 KiB) always batch.
_SEND_ALONE_BYTES = 64 * 1024

# A pass takes the oldest unpublished rows: walk the partial index in id order and stop at the
# limit. The planner, judging a table whose contents turn over every second by stale statistics,
# otherwise picks a bitmap or sequential scan of the whole backlog plus a sort (measured with a
# 10,000-row backlog: 11-26 ms a pass, spilling to disk, against 2 ms), so a growing backlog made
# every pass slower. For this transaction only.
_INDEX_ORDER_ONLY = "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off"
_INSERT = "INSERT INTO outbox(topic, key, payload, headers) VALUES ($1, $2, $3, $4::jsonb)"


def event_headers(env: Any) -> dict[str, str]:
    """Transitional: the headers ``shared.events.row`` writes (removed with ``outbox_row``)."""
    headers = {"event_type": env.type, "event_id": str(env.event_id), "correlation_id": env.correlation_id}
    if env.causation_id:
        headers["causation_id"] = env.causation_id
    return headers


def outbox_row(topic: str, key: str, env: Any) -> tuple[str, bytes, bytes, str]:
    """Transitional: ``shared.events.envelope_row`` (removed once every service uses it)."""
    from shared.events import envelope_row

    return envelope_row(topic, key, env)


async def enqueue(conn: asyncpg.Connection, rows: Iterable[tuple[str, bytes, bytes, str]]) -> None:
    """The one outbox writer: add rows (``shared.events``) in the caller's transaction, in the
    given order (ids follow it, and the relay publishes in id order: a hold before its release).
    One row is an INSERT; more are one COPY, whatever their number."""
    rows = list(rows)
    if len(rows) == 1:
        await conn.execute(_INSERT, *rows[0])
    elif rows:
        await conn.copy_records_to_table("outbox", records=rows, columns=["topic", "key", "payload", "headers"])


class OutboxRelay:
    """Publishes unpublished outbox rows in id order, in bounded batches, with bounded backoff."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        *,
        batch_limit: int = 500,
        poll_interval_ms: int = 200,
        vacuum_every_rows: int = 20_000,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._batch_limit = batch_limit
        self._poll_s = poll_interval_ms / 1000
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._listen_conn: asyncpg.Connection | None = None
        self._stopping = False
        self._backlog_measured_at = 0.0
        # Deleted rows stay in the table and its index until vacuumed, and every pass walks them
        # from the lowest id: measured after a minute of the e2e benchmark (190,000 dead rows, no
        # autovacuum yet), an empty pass read 500 index pages and took 10 ms instead of 0.03, and
        # PostgreSQL's CPU grew with the run. So the relay vacuums its own table every
        # ``vacuum_every_rows`` deletions (0: leave it to autovacuum).
        self._vacuum_every_rows = vacuum_every_rows
        self._deleted_since_vacuum = 0

    async def start(self) -> None:
        try:
            async with self._pool.acquire() as conn:
                OUTBOX_QUARANTINE_ROWS.set(await conn.fetchval("SELECT count(*) FROM outbox_quarantine"))
        except (asyncpg.PostgresError, OSError):  # measured again at the next quarantine
            pass
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self._unlisten()

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        if self._listen_conn is None or self._listen_conn.is_closed():
            self._listen_conn = await self._pool.acquire()
            await self._listen_conn.add_listener("outbox", self._on_notify)

    async def _unlisten(self) -> None:
        conn, self._listen_conn = self._listen_conn, None
        if conn is not None:
            try:
                if not conn.is_closed():
                    await conn.remove_listener("outbox", self._on_notify)
                await self._pool.release(conn)
            except Exception:  # pragma: no cover - shutting down
                pass

    async def publish_once(self) -> int:
        """One pass: publish up to ``batch_limit`` rows. Returns how many were published."""
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute(_INDEX_ORDER_ONLY)
                rows = await conn.fetch(
                    "SELECT id, topic, key, payload, headers FROM outbox"
                    " WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                    self._batch_limit,
                )
                if not rows:
                    OUTBOX_BACKLOG.set(0)
                    OUTBOX_OLDEST_AGE.set(0)
                    return 0
                try:
                    await asyncio.gather(*await self._send_batches(rows))
                except PERMANENT_ROW_ERRORS as exc:
                    # Some row of the pass can never be published: find it, one row at a time (the
                    # rows already acknowledged go again: at least once, and consumers are idempotent).
                    log.warning("outbox pass failed permanently (%s); publishing its %d rows one by one",
                                type(exc).__name__, len(rows))
                    rows = await self._publish_one_by_one(conn, rows)
                # Published rows are deleted, not marked: an UPDATE writes a new version of every
                # row (payload included), a DELETE only flags the old one. The broker keeps the
                # events; the journal of each service is its own record.
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
                per_topic: dict[str, int] = {}
                for r in rows:
                    per_topic[r["topic"]] = per_topic.get(r["topic"], 0) + 1
                for topic, n in per_topic.items():
                    OUTBOX_PUBLISHED.labels(topic).inc(n)
                await self._measure_backlog(conn, full=len(rows) >= self._batch_limit)
                return len(rows)

    async def _send_batches(self, rows: list[asyncpg.Record]) -> list[asyncio.Future]:
        """Hand ``rows`` (in id order) to the producer as whole record batches; the futures of
        their acks. One batch per partition at a time, appended in id order, so each key's events
        keep their order: the partition is the default partitioner's, and aiokafka sends a
        partition's batches one after another (the sender mutes a partition while a batch of it is
        in flight, retries go back to the head of its queue, and ``send_batch`` waits for the
        partition's previous batch to be taken). Batches skip aiokafka's per-message coroutine,
        future and murmur2, most of the relay's CPU."""
        producer = self._producer
        partition_ids: dict[str, list[int]] = {}  # per topic, sorted, as the default partitioner sees them
        null_key_partition: dict[str, int] = {}
        open_batches: dict[tuple[str, int], BatchBuilder] = {}  # each bounded by the producer's max_batch_size
        futures: list[asyncio.Future] = []

        async def submit(tp: tuple[str, int]) -> None:
            batch = open_batches.pop(tp)
            batch.close()  # nothing else goes in, and the sender need not linger for more
            futures.append(await producer.send_batch(batch, tp[0], partition=tp[1]))

        for r in rows:
            topic, key, value = r["topic"], r["key"], r["payload"]
            ids = partition_ids.get(topic)
            if ids is None:
                ids = partition_ids[topic] = sorted(await producer.partitions_for(topic))
            if key is not None:
                partition = partition_for_key(key, ids)
            elif topic in null_key_partition:
                partition = null_key_partition[topic]
            else:  # as the default partitioner: any available partition (all of a pass's go together)
                available = producer.client.cluster.available_partitions_for_topic(topic)
                partition = null_key_partition[topic] = random.choice(sorted(available or ()) or ids)
            headers = [(k, str(v).encode()) for k, v in json.loads(r["headers"]).items()]
            tp = (topic, partition)
            if len(value) + len(r["headers"]) > _SEND_ALONE_BYTES:
                # A batch takes its first record whatever its size, so a row over the broker's
                # request limit would reach the broker; ``send`` refuses it here, loudly, as
                # before (the pass fails and the row stays). It goes after the partition's earlier rows.
                if tp in open_batches:
                    await submit(tp)
                futures.append(await producer.send(topic, value, key=key, partition=partition, headers=headers))
                continue
            batch = open_batches.get(tp)
            if batch is None or batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                if batch is not None:  # full
                    await submit(tp)
                batch = open_batches[tp] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None, headers=headers)  # an empty batch takes any record
        for tp in list(open_batches):
            await submit(tp)
        return futures

    async def _publish_one_by_one(self, conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> list[asyncpg.Record]:
        """Publish each row alone, in id order; quarantine the ones that fail permanently (in the
        caller's transaction) and return the ones published. A transient failure raises: the
        whole pass is rolled back and retried."""
        published = []
        for r in rows:
            try:
                await asyncio.gather(*await self._send_batches([r]))
            except PERMANENT_ROW_ERRORS as exc:
                reason = f"{type(exc).__name__}: {str(exc)[:500]}"
                await conn.execute(
                    "INSERT INTO outbox_quarantine(id, topic, key, payload, headers, created_at, reason)"
                    " SELECT id, topic, key, payload, headers, created_at, $2 FROM outbox WHERE id = $1"
                    " ON CONFLICT (id) DO NOTHING", r["id"], reason)
                await conn.execute("DELETE FROM outbox WHERE id = $1", r["id"])
                OUTBOX_QUARANTINED.labels(r["topic"]).inc()
                log.error("outbox row %d for %s quarantined: %s", r["id"], r["topic"], reason)
                continue
            published.append(r)
        OUTBOX_QUARANTINE_ROWS.set(await conn.fetchval("SELECT count(*) FROM outbox_quarantine"))
        return published

    async def _measure_backlog(self, conn: asyncpg.Connection, *, full: bool) -> None:
        """Backlog gauges. A pass that did not fill its batch left nothing behind (as of its
        snapshot), so only full passes count, and at most once a second: counting a large backlog
        on every pass would cost more than publishing it."""
        now = time.monotonic()
        if not full:
            OUTBOX_BACKLOG.set(0)
            OUTBOX_OLDEST_AGE.set(0)
            return
        if now - self._backlog_measured_at < 1.0:
            return
        self._backlog_measured_at = now
        backlog = await conn.fetchrow(
            "SELECT count(*) AS n, extract(epoch FROM clock_timestamp() - min(created_at)) AS age"
            " FROM outbox WHERE published_at IS NULL"
        )
        OUTBOX_BACKLOG.set(backlog["n"])  # this pass's rows are already deleted in its snapshot
        OUTBOX_OLDEST_AGE.set(float(backlog["age"] or 0))

    async def vacuum(self) -> None:
        """VACUUM the outbox (outside any transaction, as VACUUM must be). SKIP_LOCKED: when another
        relay or autovacuum is already at it, that one does the work. A failure (e.g. the service's
        role does not own the table) is logged and counted, not fatal: autovacuum still runs."""
        self._deleted_since_vacuum = 0
        try:
            async with self._pool.acquire() as conn:
                await conn.execute("VACUUM (SKIP_LOCKED) outbox")
            OUTBOX_VACUUMS.labels("ok").inc()
        except (asyncpg.PostgresError, OSError) as exc:
            OUTBOX_VACUUMS.labels("failed").inc()
            log.warning("outbox vacuum failed (%s: %s); autovacuum will have to do", type(exc).__name__, exc)

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Publish until the outbox is empty (used at shutdown and in tests)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while await self.publish_once():
            if loop.time() > deadline:
                raise TimeoutError("outbox did not drain")

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                await self._listen()
                published = await self.publish_once()
                failures = 0
                self._deleted_since_vacuum += published
                if self._vacuum_every_rows and self._deleted_since_vacuum >= self._vacuum_every_rows:
                    await self.vacuum()
                if published >= self._batch_limit:
                    continue  # more waiting: go again at once
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self._poll_s)
                except asyncio.TimeoutError:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or database down: keep the rows, retry later
                OUTBOX_ERRORS.inc()
                failures += 1
                log.warning("outbox relay pass failed (%s: %s); retry %d", type(exc).__name__, exc, failures)
                await self._unlisten()
                await pause(failures)


async def run_relay(settings: "ServiceSettings", stop: asyncio.Event | None = None) -> None:
    """Run one service's outbox relay as its own process (``OUTBOX_RELAY=external``).

    Any number may run: rows are claimed with FOR UPDATE SKIP LOCKED. Serves /metrics on
    ``outbox_relay_metrics_port`` when it is not 0. Stops on SIGTERM/SIGINT (or ``stop``), after a drain.
    """
    import signal

    from prometheus_client import start_http_server

    from shared import db
    from shared.kafka import make_producer

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    if settings.outbox_relay_metrics_port:
        start_http_server(settings.outbox_relay_metrics_port, addr=settings.http_host)
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=2)
    producer = make_producer(settings, client_id=f"{settings.service_name}-outbox")
    await producer.start()
    relay = OutboxRelay(pool, producer, batch_limit=settings.outbox_batch_limit,
                        poll_interval_ms=settings.outbox_poll_interval_ms,
                        vacuum_every_rows=settings.outbox_vacuum_every_rows)
    await relay.start()
    log.info("%s outbox relay started", settings.service_name)
    try:
        await stop.wait()
    finally:
        try:
            await asyncio.wait_for(relay.drain(), timeout=5)
        except Exception as exc:  # broker or database down at shutdown: the rows stay for next time
            log.warning("outbox not drained at shutdown (%s)", exc)
        await relay.stop()
        await producer.stop()
        await pool.close()
