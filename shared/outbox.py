"""Transactional outbox: enqueue events inside the caller's transaction; a relay publishes them.

The state change and the event commit together or not at all, so nothing is half-written.
The relay publishes at least once (a crash between the broker's ack and marking the row can
resend); every consumer is idempotent, so a resend has no effect.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable

import asyncpg
from aiokafka import AIOKafkaProducer
from prometheus_client import Counter, Gauge

from shared.contracts import Envelope

log = logging.getLogger(__name__)

OUTBOX_PUBLISHED = Counter("outbox_published_total", "Events published from the outbox", ["topic"])
OUTBOX_BACKLOG = Gauge("outbox_backlog", "Unpublished outbox rows at the last relay pass")
OUTBOX_OLDEST_AGE = Gauge("outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row")
OUTBOX_ERRORS = Counter("outbox_publish_errors_total", "Relay passes that failed to publish")

_INSERT = "INSERT INTO outbox(topic, key, payload, headers) VALUES ($1, $2, $3, $4::jsonb)"


def event_headers(env: Envelope) -> dict[str, str]:
    headers = {"event_type": env.type, "event_id": str(env.event_id), "correlation_id": env.correlation_id}
    if env.causation_id:
        headers["causation_id"] = env.causation_id
    return headers


def outbox_row(topic: str, key: str, env: Envelope) -> tuple[str, bytes, bytes, str]:
    return (topic, key.encode(), env.model_dump_json().encode(), json.dumps(event_headers(env)))


async def enqueue(conn: asyncpg.Connection, rows: Iterable[tuple[str, bytes, bytes, str]]) -> None:
    """Add events to the outbox in the caller's transaction."""
    batch = list(rows)
    if batch:
        await conn.executemany(_INSERT, batch)


class OutboxRelay:
    """Publishes unpublished outbox rows in id order, in bounded batches, with bounded backoff."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        *,
        batch_limit: int = 500,
        poll_interval_ms: int = 200,
        max_backoff_s: float = 5.0,
        retention_hours: int = 24,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._batch_limit = batch_limit
        self._poll_s = poll_interval_ms / 1000
        self._max_backoff_s = max_backoff_s
        self._retention_hours = retention_hours
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._listen_conn: asyncpg.Connection | None = None
        self._stopping = False

    async def start(self) -> None:
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
                rows = await conn.fetch(
                    "SELECT id, topic, key, payload, headers, created_at FROM outbox"
                    " WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                    self._batch_limit,
                )
                if not rows:
                    OUTBOX_BACKLOG.set(0)
                    OUTBOX_OLDEST_AGE.set(0)
                    return 0
                futures = []
                for r in rows:
                    headers = [(k, str(v).encode()) for k, v in json.loads(r["headers"]).items()]
                    futures.append(
                        await self._producer.send(r["topic"], r["payload"], key=r["key"], headers=headers)
                    )
                await asyncio.gather(*futures)
                await conn.execute(
                    "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1::bigint[])",
                    [r["id"] for r in rows],
                )
                for r in rows:
                    OUTBOX_PUBLISHED.labels(r["topic"]).inc()
                backlog = await conn.fetchrow(
                    "SELECT count(*) AS n, extract(epoch FROM clock_timestamp() - min(created_at)) AS age"
                    " FROM outbox WHERE published_at IS NULL"
                )
                OUTBOX_BACKLOG.set(max(0, backlog["n"] - len(rows)))
                OUTBOX_OLDEST_AGE.set(float(backlog["age"] or 0))
                return len(rows)

    async def purge_published(self) -> int:
        async with self._pool.acquire() as conn:
            status = await conn.execute(
                "DELETE FROM outbox WHERE published_at < now() - make_interval(hours => $1)",
                self._retention_hours,
            )
        return int(status.split()[-1])

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Publish until the outbox is empty (used at shutdown and in tests)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while await self.publish_once():
            if loop.time() > deadline:
                raise TimeoutError("outbox did not drain")

    async def _run(self) -> None:
        backoff_s = 0.05
        passes = 0
        while not self._stopping:
            try:
                await self._listen()
                published = await self.publish_once()
                backoff_s = 0.05
                passes += 1
                if passes % 1000 == 0:
                    await self.purge_published()
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
                log.warning("outbox relay pass failed (%s: %s); retry in %.2fs", type(exc).__name__, exc, backoff_s)
                await self._unlisten()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._max_backoff_s)
