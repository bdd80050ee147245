"""Kafka → ledger: batches of transfer requests, one database transaction per batch; and the
expiry task that voids pending transfers whose timeout has passed.

Offsets are committed only after the batch's transaction commits. A redelivered batch finds its
transfer ids already decided and turns into duplicates (the original answer), so nothing is
doubled; a crash mid-batch rolls the whole batch back and it is delivered again. A record that
keeps failing is dead-lettered after ``LEDGER_CONSUMER_MAX_ATTEMPTS``, so one bad record never
stalls the partition; a broken money invariant is never dead-lettered: it stops the batch loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from faststream.kafka import KafkaMessage
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from services.ledger import admission, store
from shared.consumer import BadEvent, DeadRecord, raw_headers, validation_reason
from shared.contracts import Envelope, TransferRequested
from shared.service import CONSUMER_DEFAULTS, Runtime, batch_records
from shared.topics import LEDGER_TRANSFER_REQUESTS, LEDGER_TRANSFER_REQUESTS_DLQ
from shared.tracing import safe_correlation_id

log = logging.getLogger(__name__)
_ENVELOPE = Envelope[TransferRequested]  # parametrised once: the lookup costs on every message otherwise

DLQ = {LEDGER_TRANSFER_REQUESTS.name: LEDGER_TRANSFER_REQUESTS_DLQ.name}
TRANSFERS = Counter("ledger_transfers_total", "Transfer requests handled", ["outcome"])
BATCH_SECONDS = Histogram("ledger_batch_seconds", "Time to post one consumer batch",
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
BATCH_SIZE = Histogram("ledger_batch_size", "Records per consumer batch", buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
CHAIN_HEAD = Gauge("ledger_chain_head_seq", "Sequence number of the last journal entry this process wrote")
EXPIRED = Counter("ledger_pending_expired_total", "Pending transfers voided by the expiry task after their timeout")
EXPIRY_ERRORS = Counter("ledger_expiry_errors_total", "Expiry passes that failed (retried next interval)")


def register(runtime: Runtime, settings: Any) -> None:
    @runtime.broker.subscriber(
        LEDGER_TRANSFER_REQUESTS.name,
        group_id=settings.consumer_group,
        batch=True,
        max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
        fetch_max_bytes=settings.fetch_max_bytes,
        max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
        **CONSUMER_DEFAULTS,
    )
    async def on_transfer_requests(bodies: list[bytes], msg: KafkaMessage) -> None:
        await handle_batch(runtime, batch_records(msg))

    task: dict[str, asyncio.Task] = {}

    @runtime.on_start
    async def _start_expiry() -> None:
        task["expiry"] = asyncio.create_task(expiry_loop(runtime, settings), name="ledger-expiry")

    @runtime.on_stop
    async def _stop_expiry() -> None:
        t = task.pop("expiry", None)
        if t is not None:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


async def expiry_loop(runtime: Runtime, settings: Any) -> None:
    """Void expired pending transfers in bounded passes; a full pass goes again at once."""
    while True:
        try:
            expired = await store.expire_due(runtime.pool, limit=settings.expiry_batch_max)
            EXPIRED.inc(len(expired))
            if len(expired) >= settings.expiry_batch_max:
                continue
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # database briefly down: try again next interval
            EXPIRY_ERRORS.inc()
            log.warning("expiry pass failed (%s: %s)", type(exc).__name__, exc)
        await asyncio.sleep(settings.expiry_interval_ms / 1000)


def _parse(runtime: Runtime, raw: Any) -> store.Submitted:
    """A record as the ledger keeps it, or BadEvent / ValidationError (dead-lettered)."""
    env = _ENVELOPE.model_validate_json(raw.value)
    refused = admission.refusal(env.data, env.producer, runtime.reference)
    if refused is not None:
        raise BadEvent(refused[1])
    return store.Submitted(env.data, safe_correlation_id(env.correlation_id), str(env.event_id))


async def handle_batch(runtime: Runtime, records: list[Any]) -> None:
    """One transaction for the batch, under the shared consumer policy (shared/service.py): an
    event that does not validate, or that the ledger does not admit (another producer's id, an
    unknown organisation), is dead-lettered and never recorded; an outage backs off and the batch
    comes again; any other failure is retried one record at a time, then dead-lettered."""
    batch: list[store.Submitted] = []
    dead: list[DeadRecord] = []
    for i, raw in enumerate(records):
        try:
            batch.append(_parse(runtime, raw))
        except ValidationError as exc:
            dead.append((i, raw, validation_reason(exc), "invalid"))
            TRANSFERS.labels("invalid").inc()
        except BadEvent as exc:
            dead.append((i, raw, str(exc), "rejected"))
            TRANSFERS.labels("refused").inc()
    if batch:
        BATCH_SIZE.observe(len(batch))

        async def write(conn: Any) -> list[Any]:
            return await store.post(conn, batch)

        outcomes = await runtime.write_batch(records, write, timer=BATCH_SECONDS, what="ledger batch")
        if outcomes is None:  # rolled back: one record per transaction finds the one that fails
            for raw in records:
                await runtime.handle_one(raw, LEDGER_TRANSFER_REQUESTS_DLQ.name, lambda value, raw=raw: _post_one(runtime, raw))
            return
        _count(outcomes, records)
    await runtime.finish_batch(records, {LEDGER_TRANSFER_REQUESTS.name: len(batch)}, dead, DLQ)


async def _post_one(runtime: Runtime, raw: Any) -> None:
    submitted = _parse(runtime, raw)
    async with runtime.pool.acquire() as conn:
        async with conn.transaction():
            outcomes = await store.post(conn, [submitted])
    _count(outcomes, [raw])


def _count(outcomes: list[Any], records: list[Any]) -> None:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
        if o.status in ("conflict", "rejected"):
            log.warning("transfer %s %s: %s", o.transfer_id, o.status, o.reason,
                        extra={"correlation_id": raw_headers(records[0]).get("correlation_id")})
    for status, n in counts.items():
        TRANSFERS.labels(status).inc(n)
    head = max((o.entry_seq or 0 for o in outcomes if o.status in ("posted", "pending", "voided")), default=0)
    if head:
        CHAIN_HEAD.set(head)
