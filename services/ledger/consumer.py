"""Kafka → ledger: batches of transfer requests, one database transaction per batch; and the
expiry task that voids pending transfers whose timeout has passed.

Offsets are committed only after the batch's transaction commits. A redelivered batch finds its
transfer ids already decided and turns into duplicates (the original answer), so nothing is
doubled; a crash mid-batch rolls the whole batch back and it is delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from faststream.kafka import KafkaMessage
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from services.ledger import store
from shared.consumer import TRANSIENT_ERRORS, backoff, raw_headers, validation_reason
from shared.contracts import Envelope, TransferRequested
from shared.service import CONSUMER_DEFAULTS, Runtime, batch_records
from shared.topics import LEDGER_TRANSFER_REQUESTS, LEDGER_TRANSFER_REQUESTS_DLQ

log = logging.getLogger(__name__)
_ENVELOPE = Envelope[TransferRequested]  # parametrised once: the lookup costs on every message otherwise

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


async def handle_batch(runtime: Runtime, records: list[Any]) -> None:
    batch: list[store.Submitted] = []
    for raw in records:
        try:
            env = _ENVELOPE.model_validate_json(raw.value)
        except ValidationError as exc:
            await runtime.dead_letter(raw, LEDGER_TRANSFER_REQUESTS_DLQ.name, validation_reason(exc), "invalid")
            TRANSFERS.labels("invalid").inc()
            continue
        batch.append(store.Submitted(env.data, env.correlation_id, str(env.event_id)))
    if not batch:
        return
    BATCH_SIZE.observe(len(batch))
    attempt = 0
    while True:
        try:
            with BATCH_SECONDS.time():
                outcomes = await store.post_batch(runtime.pool, batch)
            break
        except TRANSIENT_ERRORS as exc:
            # Database briefly down: keep the batch, back off, try again. Not acknowledging
            # would also work, but retrying here keeps the partition's position simple.
            attempt += 1
            log.warning("ledger batch failed transiently (%s); retry %d", exc, attempt)
            await backoff(attempt)
            if attempt >= 1000:  # ~80 minutes of backoff at the cap: let the process restart
                raise
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
