"""Kafka intake for backends that publish submissions directly (feedback.submitted.v1).

An adapter: it parses each record, admits it as the HTTP channels do (``admission.refusal``),
dead-letters what is invalid or refused, and hands the rest to ``handlers.AcceptSubmissions``
(the one write path) as ONE batch: one transaction, the ``feedback.received.v1`` events in its
outbox, the same outcome per record as one at a time in offset order (the handler decides the
items in order; ``received_at`` is taken per row).

Privacy: the intake topic carries what backends send, NHS numbers and free text included, so it
is identifiable data (short retention, ACLs limited to the backends and this service; see
services/feedback/README.md). Nothing identifiable leaves this consumer: the stored row and the
``feedback.received.v1`` event carry the pseudonym, and a dead letter has its free text blanked and every
10-digit run in its value, key, headers and reason redacted before it is published. Logs name
records by topic, partition and offset and errors by type (and SQLSTATE), never by content.

Error policy (``Runtime.run_batch``, ``finish_batch`` and ``handle_one``, shared/service.py):
- offsets are committed only after the batch's transaction commits (``AckPolicy.NACK_ON_ERROR``:
  raising makes the whole batch come again; a redelivered batch finds its submissions stored, as
  duplicates, and changes nothing);
- a record that does not validate (``invalid``), is refused (an unknown provider, an implausible
  authored_at) or whose submission id was used before with other content (``rejected``) goes to
  ``feedback.submitted.dlq.v1`` with the reason, redacted, after the batch has committed, and
  does not hold the other records back (the handler decides a conflict before it writes anything
  for that record, so there is nothing to undo);
- a concurrent insert of one of the batch's ids, a deadlock or a serialisation failure makes the
  handler's unit of work run the batch again (``shared.uow``, a few times);
- a database or broker outage backs off and raises: the batch is delivered again, as long as it
  takes, and nothing is dead-lettered for it;
- anything else rolls the batch back, and the batch is handled again one record per transaction
  (``Runtime.handle_one``, the same handler with a batch of one), so the failing record is retried
  ``consumer_max_attempts`` times and then dead-lettered while the others go through.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from faststream.kafka import KafkaMessage
from prometheus_client import Histogram
from pydantic import ValidationError

from services.feedback import admission, domain
from services.feedback.decisions import Conflict
from services.feedback.handlers import AcceptSubmissions, SubmitFeedback
from services.feedback.settings import FeedbackSettings
from shared.consumer import DEAD_LETTERS, BadEvent, DeadRecord, dead_letter_headers, validation_reason
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
    """feedback.submitted.v1: batches, and the one-record path they fall back to."""

    def __init__(self, runtime: Runtime, settings: FeedbackSettings, accept: AcceptSubmissions) -> None:
        self.rt = runtime
        self.settings = settings
        self.accept = accept

    def command(self, value: bytes) -> SubmitFeedback:
        """The record as a command. ValidationError: it does not validate (``invalid``); BadEvent:
        it is refused as on every channel (``rejected``)."""
        env = _SUBMITTED.model_validate_json(value)
        refused = admission.refusal(env.data, self.settings, self.rt.reference)
        if refused is not None:
            raise BadEvent(f"data.{refused[0]}: {refused[1]}")
        # An app backend's correlation id travels into events and logs: only a safe one does.
        return SubmitFeedback(env.data, "kafka", safe_correlation_id(env.correlation_id), str(env.event_id))

    # -- one record, a batch of one (the fallback) --------------------------------------------
    async def process(self, value: bytes) -> None:
        [outcome] = await self.accept([self.command(value)])
        if isinstance(outcome, Conflict):
            raise BadEvent(outcome.detail)

    async def handle_one_by_one(self, records: Sequence[Any]) -> None:
        for raw in records:
            await self.rt.handle_one(raw, FEEDBACK_SUBMITTED_DLQ.name, self.process)

    # -- a batch, one transaction -------------------------------------------------------------
    async def handle_batch(self, records: Sequence[Any]) -> None:
        if not records:
            return
        BATCH_SIZE.observe(len(records))
        parsed: list[tuple[int, Any]] = []
        commands: list[SubmitFeedback] = []
        dead: list[DeadRecord] = []
        for i, raw in enumerate(records):
            try:
                commands.append(self.command(raw.value))
            except ValidationError as exc:
                dead.append((i, raw, validation_reason(exc), "invalid"))
                continue
            except BadEvent as exc:
                dead.append((i, raw, str(exc), "rejected"))
                continue
            parsed.append((i, raw))
        outcomes = await self.rt.run_batch(records, lambda: self.accept(commands), timer=BATCH_SECONDS, what="intake batch")
        if outcomes is None:  # rolled back: nothing of the batch was written
            await self.handle_one_by_one(records)
            return
        # Committed.
        handled = 0
        for (i, raw), outcome in zip(parsed, outcomes):
            if isinstance(outcome, Conflict):
                dead.append((i, raw, outcome.detail, "rejected"))
            else:
                handled += 1
        await self.rt.finish_batch(records, {FEEDBACK_SUBMITTED.name: handled}, dead, DLQ)


def register(runtime: Runtime, settings: FeedbackSettings, accept: AcceptSubmissions) -> Intake:
    intake = Intake(runtime, settings, accept)

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
