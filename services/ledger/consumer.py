"""Kafka → ledger: a thin adapter. Batches of transfer requests are parsed, checked for
admission (``admission.refusal``: another producer's ids, unknown organisations; refused without
a trace) and handed to the one write path (``handlers.LedgerHandlers.post``), one transaction per
batch; and the expiry task that voids pending transfers whose timeout has passed.

Offsets are committed only after the batch's transaction commits. A redelivered batch finds its
transfer ids already decided and turns into duplicates (the original answer), so nothing is
doubled; a crash mid-batch rolls the whole batch back and it is delivered again. The consumer
policy is the shared one (``Runtime.run_batch`` / ``handle_one``): an outage backs off and the
batch comes again; a record that keeps failing is dead-lettered after
``LEDGER_CONSUMER_MAX_ATTEMPTS``, so one bad record never stalls the partition; a broken money
invariant is never dead-lettered: it stops the batch loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from faststream.kafka import KafkaMessage
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from services.ledger import admission
from services.ledger.handlers import TRANSFERS
from services.ledger.ports import Submitted
from shared.consumer import BadEvent, DeadRecord, validation_reason
from shared.contracts import Envelope, TransferRequested
from shared.retry import jitter
from shared.service import CONSUMER_DEFAULTS, batch_records
from shared.topics import LEDGER_TRANSFER_REQUESTS, LEDGER_TRANSFER_REQUESTS_DLQ
from shared.tracing import safe_correlation_id

log = logging.getLogger(__name__)
_ENVELOPE = Envelope[TransferRequested]  # parametrised once: the lookup costs on every message otherwise

DLQ = {LEDGER_TRANSFER_REQUESTS.name: LEDGER_TRANSFER_REQUESTS_DLQ.name}
BATCH_SECONDS = Histogram("ledger_batch_seconds", "Time to post one consumer batch",
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
BATCH_SIZE = Histogram("ledger_batch_size", "Records per consumer batch", buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
EXPIRY_ERRORS = Counter("ledger_expiry_errors_total", "Expiry passes that failed (retried next interval)")


def register(runtime: Any, settings: Any) -> None:
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


async def expiry_loop(runtime: Any, settings: Any) -> None:
    """Void expired pending transfers in bounded passes; a full pass goes again at once."""
    while True:
        try:
            expired = await runtime.handlers.expire_due(limit=settings.expiry_batch_max)
            if len(expired) >= settings.expiry_batch_max:
                continue
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # database briefly down: try again next interval
            EXPIRY_ERRORS.inc()
            log.warning("expiry pass failed (%s: %s)", type(exc).__name__, exc)
        await asyncio.sleep(jitter(settings.expiry_interval_ms / 1000))


def parse(runtime: Any, raw: Any) -> Submitted:
    """A record as the ledger keeps it, or BadEvent / ValidationError (dead-lettered)."""
    env = _ENVELOPE.model_validate_json(raw.value)
    refused = admission.refusal(env.data, env.producer, runtime.reference)
    if refused is not None:
        raise BadEvent(refused[1])
    return Submitted(env.data, safe_correlation_id(env.correlation_id), str(env.event_id))


async def handle_batch(runtime: Any, records: list[Any]) -> None:
    batch: list[Submitted] = []
    dead: list[DeadRecord] = []
    for i, raw in enumerate(records):
        try:
            batch.append(parse(runtime, raw))
        except ValidationError as exc:
            dead.append((i, raw, validation_reason(exc), "invalid"))
            TRANSFERS.labels("invalid").inc()
        except BadEvent as exc:
            dead.append((i, raw, str(exc), "rejected"))
            TRANSFERS.labels("refused").inc()
    if batch:
        BATCH_SIZE.observe(len(batch))
        outcomes = await runtime.run_batch(records, lambda: runtime.handlers.post(batch), timer=BATCH_SECONDS,
                                           what="ledger batch")
        if outcomes is None:  # nothing of it was written: one record at a time finds the one that fails
            for raw in records:
                await runtime.handle_one(raw, LEDGER_TRANSFER_REQUESTS_DLQ.name, lambda _value, raw=raw: _post_one(runtime, raw))
            return
        for o in outcomes:
            if o.status in ("conflict", "rejected"):
                log.warning("transfer %s %s: %s", o.transfer_id, o.status, o.reason)
    await runtime.finish_batch(records, {LEDGER_TRANSFER_REQUESTS.name: len(batch)}, dead, DLQ)


async def _post_one(runtime: Any, raw: Any) -> None:
    await runtime.handlers.post([parse(runtime, raw)])
