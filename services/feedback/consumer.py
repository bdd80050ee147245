"""Kafka intake for backends that publish submissions directly (feedback.submitted.v1).

Privacy: the intake topic carries what backends send, NHS numbers and free text included, so it
is identifiable data (short retention, ACLs limited to the backends and this service; see
services/feedback/README.md). Nothing identifiable leaves this consumer: the stored row and the
``feedback.received.v1`` event carry the pseudonym, and a dead letter has its free text blanked and every
10-digit run in its value, key, headers and reason redacted before it is published. Logs name
records by topic, partition and offset and errors by type (and SQLSTATE), never by content.

The intake reads batches (``FEEDBACK_INTAKE_BATCH_MAX_RECORDS``, ``FEEDBACK_INTAKE_BATCH_TIMEOUT_MS``)
and stores each batch in ONE database transaction, with the same outcome per record as handling
the records one at a time in offset order (``store.accept_batch``: later records see earlier ones,
``received_at`` is taken per row). The ``feedback.received.v1`` events go into the outbox in that
transaction. Offsets are committed only after it commits (``AckPolicy.NACK_ON_ERROR``: raising
makes the whole batch come again; a redelivered batch finds its submissions stored, as
duplicates, and changes nothing).

Error policy, per record, as ``Runtime.handle_one`` (shared/service.py) on the per-record path:
- a record that does not validate (``invalid``), or whose submission id was used before with
  other content (``rejected``), goes to ``feedback.submitted.dlq.v1`` with the reason, redacted,
  after the batch's transaction has committed, and does not hold the other records back; the
  store decides a conflict before it writes anything for that record, so there is nothing to undo;
- a database or broker outage (``TRANSIENT_ERRORS``) backs off and raises: the batch is delivered
  again, as long as it takes, and nothing is dead-lettered for it;
- another transaction (an HTTP request) storing one of the batch's submission ids meanwhile
  (``store.Raced``) rolls the batch back and runs it again (then the id is a duplicate or a
  conflict), up to ``BATCH_RACE_RETRIES`` times (``Runtime.write_batch``), then as below;
- anything else rolls the batch back and the batch is handled again one record per transaction
  through ``Runtime.handle_one``, so the failing record is retried ``consumer_max_attempts`` times
  and then dead-lettered while the others go through.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from faststream.kafka import KafkaMessage
from prometheus_client import Histogram
from pydantic import ValidationError

from services.feedback import domain, store
from shared.consumer import (
    DEAD_LETTERS,
    BadEvent,
    DeadRecord,
    dead_letter_headers,
    validation_reason,
)
from shared.contracts import Envelope
from shared.service import CONSUMER_DEFAULTS, Runtime, batch_records
from shared.topics import FEEDBACK_SUBMITTED, FEEDBACK_SUBMITTED_DLQ
from shared.tracing import safe_correlation_id

log = logging.getLogger(__name__)

# Parametrised once: the generic lookup costs on every message otherwise.
_SUBMITTED = Envelope[domain.Submission]  # type: ignore[type-var]

BATCH_SIZE = Histogram("feedback_intake_batch_size", "Records per feedback intake batch",
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
BATCH_SECONDS = Histogram("feedback_intake_batch_seconds", "Time to store one intake batch (one transaction)",
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))

DLQ = {FEEDBACK_SUBMITTED.name: FEEDBACK_SUBMITTED_DLQ.name}


class FeedbackRuntime(Runtime):
    """The shared runtime, with dead letters redacted: the intake's raw messages hold NHS numbers."""

    async def dead_letter(self, raw: Any, dlq_topic: str, reason: str, kind: str) -> None:
        reason = domain.redact(reason)
        headers = {k: domain.redact(v) for k, v in dead_letter_headers(raw, reason, kind).items()}
        await self.producer.send_and_wait(
            dlq_topic, domain.redact_dead_letter(raw.value), key=domain.redact_bytes(raw.key),
            headers=[(k, v.encode()) for k, v in headers.items()],
        )
        DEAD_LETTERS.labels(raw.topic, kind).inc()
        log.warning("dead-lettered %s[%d]@%d to %s: %s", raw.topic, raw.partition, raw.offset, dlq_topic, reason)


class Intake:
    """feedback.submitted.v1: batches, and the per-record path they fall back to."""

    def __init__(self, runtime: Runtime, settings: Any) -> None:
        self.rt = runtime
        self.settings = settings
        self.keys = settings.keyring()

    def _refusal(self, sub: domain.Submission) -> str | None:
        """Why the intake refuses a well-formed submission (an unknown provider, an implausible
        authored_at): the same rule as the HTTP channels (domain.admission_refusal)."""
        window = domain.authored_window(datetime.now(timezone.utc), self.settings.authored_at_max_age_days,
                                        self.settings.authored_at_max_skew_s)
        refused = domain.admission_refusal(sub, self.rt.reference, window)
        return None if refused is None else f"data.{refused[0]}: {refused[1]}"

    # -- one record, one transaction (the fallback, and what a batch must be equivalent to) ----
    async def process(self, value: bytes) -> None:
        env = _SUBMITTED.model_validate_json(value)
        why = self._refusal(env.data)
        if why is not None:
            raise BadEvent(why)
        try:
            async with self.rt.pool.acquire() as conn:
                async with conn.transaction():
                    await store.accept(
                        conn, env.data, keys=self.keys, channel="kafka",
                        correlation_id=safe_correlation_id(env.correlation_id), causation_id=str(env.event_id),
                    )
        except store.Conflict as exc:
            raise BadEvent(str(exc)) from exc

    async def handle_one_by_one(self, records: list[Any]) -> None:
        for raw in records:
            await self.rt.handle_one(raw, FEEDBACK_SUBMITTED_DLQ.name, self.process)

    # -- a batch, one transaction -------------------------------------------------------------
    async def handle_batch(self, records: list[Any]) -> None:
        if not records:
            return
        rt = self.rt
        BATCH_SIZE.observe(len(records))
        parsed: list[tuple[int, Any]] = []
        items: list[store.Incoming] = []
        dead: list[DeadRecord] = []
        for i, raw in enumerate(records):
            try:
                env = _SUBMITTED.model_validate_json(raw.value)
            except ValidationError as exc:
                dead.append((i, raw, validation_reason(exc), "invalid"))
                continue
            why = self._refusal(env.data)
            if why is not None:
                dead.append((i, raw, why, "rejected"))
                continue
            parsed.append((i, raw))
            # An app backend's correlation id travels into events and logs: only a safe one does.
            items.append(store.Incoming(env.data, safe_correlation_id(env.correlation_id), str(env.event_id)))
        async def write(conn: Any) -> list[store.Accepted | store.Conflict]:
            return await store.accept_batch(conn, items, keys=self.keys, channel="kafka")

        outcomes = await rt.write_batch(records, write, raced=store.Raced, timer=BATCH_SECONDS, what="intake batch")
        if outcomes is None:  # rolled back: nothing of the batch was written
            await self.handle_one_by_one(records)
            return
        # Committed.
        handled = 0
        for (i, raw), outcome in zip(parsed, outcomes):
            if isinstance(outcome, store.Conflict):
                dead.append((i, raw, str(outcome), "rejected"))
            else:
                handled += 1
        await rt.finish_batch(records, {FEEDBACK_SUBMITTED.name: handled}, dead, DLQ)


def register(runtime: Runtime, settings: Any) -> Intake:
    intake = Intake(runtime, settings)

    @runtime.broker.subscriber(
        FEEDBACK_SUBMITTED.name,
        group_id=settings.consumer_group,
        batch=True,
        max_records=settings.intake_batch_max_records,
        batch_timeout_ms=settings.intake_batch_timeout_ms,
        **CONSUMER_DEFAULTS,
    )
    async def on_submitted(bodies: list[bytes], msg: KafkaMessage) -> None:
        await intake.handle_batch(batch_records(msg))

    return intake
