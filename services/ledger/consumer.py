"""Kafka → ledger: batches of transfer requests, one database transaction per batch.

Offsets are committed only after the batch's transaction commits. A redelivered batch finds its
transfer ids already posted and turns into duplicates (successes), so nothing is doubled.
"""

from __future__ import annotations

import logging
from typing import Any

from faststream.kafka import KafkaMessage
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from services.ledger import store
from shared.consumer import TRANSIENT_ERRORS, backoff, raw_headers, validation_reason
from shared.contracts import TransferRequested, parse_envelope
from shared.service import CONSUMER_DEFAULTS, Runtime
from shared.topics import LEDGER_TRANSFER_REQUESTS, LEDGER_TRANSFER_REQUESTS_DLQ

log = logging.getLogger(__name__)

TRANSFERS = Counter("ledger_transfers_total", "Transfer requests handled", ["outcome"])
BATCH_SECONDS = Histogram("ledger_batch_seconds", "Time to post one consumer batch",
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
BATCH_SIZE = Histogram("ledger_batch_size", "Records per consumer batch", buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))


def register(runtime: Runtime, settings: Any) -> None:
    @runtime.broker.subscriber(
        LEDGER_TRANSFER_REQUESTS.name,
        group_id=settings.consumer_group,
        batch=True,
        max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
        **CONSUMER_DEFAULTS,
    )
    async def on_transfer_requests(bodies: list[bytes], msg: KafkaMessage) -> None:
        records = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
        await handle_batch(runtime, list(records))


async def handle_batch(runtime: Runtime, records: list[Any]) -> None:
    batch: list[store.Submitted] = []
    for raw in records:
        try:
            env = parse_envelope(raw.value, TransferRequested)
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
    for o in outcomes:
        TRANSFERS.labels(o.status).inc()
        if o.status in ("conflict", "rejected"):
            log.warning("transfer %s %s: %s", o.transfer_id, o.status, o.reason,
                        extra={"correlation_id": raw_headers(records[0]).get("correlation_id")})
