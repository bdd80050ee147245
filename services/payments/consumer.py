"""Kafka → payments: payment requests, patients' answers, and the ledger's answers.

Payment requests and feedback are keyed by episode id on co-partitioned topics and read by ONE
consumer subscribed to both, in one group with the range assignor: partition N of both topics
goes to the same instance, so one instance sees both halves of an episode.

The subscribers are adapters: they parse each record and hand the batch's commands to a command
handler (``handlers.py``), which applies the batch in ONE unit of work with the same outcome per
record as handling the records one at a time in offset order. Offsets are committed only after
that transaction commits (``AckPolicy.NACK_ON_ERROR``: raising makes the whole batch come again;
a redelivered batch finds its payments and answers already stored and changes nothing).

Error policy, per record, the shared one (``Runtime.run_batch``, ``Runtime.handle_one``):
- a record that does not validate, or that the handler rejects (unknown code, same id with other
  content), goes to its topic's dead-letter topic with the reason, after the batch's transaction
  has committed, and does not hold the other records back: the handler decides those rejections
  before it writes anything, so there is nothing to undo;
- a database or broker outage backs off and raises: the batch is delivered again, as long as it
  takes, and nothing is dead-lettered for it;
- a concurrent insert of one of the batch's ids is the unit of work's to resolve (it runs the
  batch again on a fresh view);
- anything else rolls the batch back and the batch is handled again one record per transaction
  through ``Runtime.handle_one``, calling the same handler with a batch of one, so the failing
  record is retried ``consumer_max_attempts`` times and then dead-lettered while the others go
  through.
An answer may come before its payment, in another batch or in the same one.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from faststream.kafka import KafkaMessage
from prometheus_client import Histogram
from pydantic import ValidationError

from services.payments.handlers import AcceptPayment, PaymentsHandlers
from services.payments.intake import Accepted
from shared.consumer import BadEvent, DeadRecord, validation_reason
from shared.contracts import Envelope, FeedbackReceived, PaymentRequested, TransferPosted
from shared.service import CONSUMER_DEFAULTS, batch_records
from shared.tracing import safe_correlation_id
from shared.topics import (
    FEEDBACK_RECEIVED,
    FEEDBACK_RECEIVED_DLQ,
    LEDGER_POSTED,
    LEDGER_POSTED_DLQ,
    PAYMENTS_REQUESTED,
    PAYMENTS_REQUESTED_DLQ,
)

log = logging.getLogger(__name__)

# Parametrised once: the generic lookup costs on every message otherwise.
_PAYMENT = Envelope[PaymentRequested]
_FEEDBACK = Envelope[FeedbackReceived]
_POSTED = Envelope[TransferPosted]
DLQ = {
    PAYMENTS_REQUESTED.name: PAYMENTS_REQUESTED_DLQ.name,
    FEEDBACK_RECEIVED.name: FEEDBACK_RECEIVED_DLQ.name,
    LEDGER_POSTED.name: LEDGER_POSTED_DLQ.name,
}

BATCH_SIZE = Histogram("payments_consumer_batch_size", "Records per payments consumer batch", ["subscriber"],
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
BATCH_SECONDS = Histogram("payments_consumer_batch_seconds", "Time to apply one consumer batch (one transaction)",
                          ["subscriber"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))



def payment_command(env: Envelope[PaymentRequested]) -> AcceptPayment:
    # A commissioner's correlation id travels into the append-only ledger: only a safe one does.
    return AcceptPayment(env.data, safe_correlation_id(env.correlation_id), str(env.event_id))


class EpisodeEvents:
    """payments.requested.v1 + feedback.received.v1: batches, and the per-record fallback."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime
        self.routes: dict[str, Callable[[bytes], Awaitable[None]]] = {
            PAYMENTS_REQUESTED.name: self.on_payment_requested,
            FEEDBACK_RECEIVED.name: self.on_feedback_received,
        }

    @property
    def handlers(self) -> PaymentsHandlers:
        return self.rt.handlers

    # -- one record: a batch of one (the fallback) ----------------------------------------------
    async def on_payment_requested(self, value: bytes) -> None:
        (outcome,) = await self.handlers.accept_payments([payment_command(_PAYMENT.model_validate_json(value))])
        if not isinstance(outcome, Accepted):
            raise BadEvent(str(outcome))

    async def on_feedback_received(self, value: bytes) -> None:
        await self.handlers.record_answers([_FEEDBACK.model_validate_json(value).data])

    async def handle_one(self, raw: Any) -> None:
        await self.rt.handle_one(raw, DLQ[raw.topic], self.routes[raw.topic])

    # -- a batch, one unit of work ------------------------------------------------------------
    async def handle_batch(self, records: list[Any]) -> None:
        if not records:
            return
        rt = self.rt
        BATCH_SIZE.labels("episodes").observe(len(records))
        payments: list[tuple[int, Any, Envelope[PaymentRequested]]] = []
        answers: list[tuple[int, Any, Envelope[FeedbackReceived]]] = []
        dead: list[DeadRecord] = []
        for i, raw in enumerate(records):
            try:
                if raw.topic == PAYMENTS_REQUESTED.name:
                    payments.append((i, raw, _PAYMENT.model_validate_json(raw.value)))
                else:
                    answers.append((i, raw, _FEEDBACK.model_validate_json(raw.value)))
            except ValidationError as exc:
                dead.append((i, raw, validation_reason(exc), "invalid"))
        commands = [payment_command(env) for _, _, env in payments]
        feedback = [env.data for _, _, env in answers]
        result = await rt.run_batch(records, lambda: self.handlers.record_episode_events(commands, feedback),
                                    timer=BATCH_SECONDS.labels("episodes"), what="payments batch")
        if result is None:  # rolled back: nothing of the batch was written
            for raw in records:
                await self.handle_one(raw)
            return
        outcomes, _recorded = result
        handled: Counter[str] = Counter()
        for (i, raw, _env), outcome in zip(payments, outcomes):
            if isinstance(outcome, Accepted):
                handled[raw.topic] += 1
            else:
                dead.append((i, raw, str(outcome), "rejected"))
        handled[FEEDBACK_RECEIVED.name] += len(answers)
        await rt.finish_batch(records, handled, dead, DLQ)


class LedgerAnswers:
    """ledger.posted.v1: what the ledger did with each transfer payments asked for."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime

    @property
    def handlers(self) -> PaymentsHandlers:
        return self.rt.handlers

    async def process(self, value: bytes) -> None:
        await self.handlers.record_ledger_answers([_POSTED.model_validate_json(value).data])

    async def handle_batch(self, records: list[Any]) -> None:
        if not records:
            return
        rt = self.rt
        BATCH_SIZE.labels("ledger-answers").observe(len(records))
        posted: list[TransferPosted] = []
        dead: list[DeadRecord] = []
        for i, raw in enumerate(records):
            try:
                posted.append(_POSTED.model_validate_json(raw.value).data)
            except ValidationError as exc:
                dead.append((i, raw, validation_reason(exc), "invalid"))
        found = await rt.run_batch(records, lambda: self.handlers.record_ledger_answers(posted),
                                   timer=BATCH_SECONDS.labels("ledger-answers"), what="ledger answers batch")
        if found is None:
            for raw in records:  # rolled back: find the record, one by one
                await rt.handle_one(raw, LEDGER_POSTED_DLQ.name, self.process)
            return
        await rt.finish_batch(records, {LEDGER_POSTED.name: len(posted)}, dead, DLQ)


def register(runtime: Any, settings: Any) -> tuple[EpisodeEvents, LedgerAnswers]:
    episodes = EpisodeEvents(runtime)
    ledger_answers = LedgerAnswers(runtime)
    batch: dict[str, Any] = {"batch": True, "max_records": settings.batch_max_records,
                             "batch_timeout_ms": settings.batch_timeout_ms}

    @runtime.broker.subscriber(
        PAYMENTS_REQUESTED.name,
        FEEDBACK_RECEIVED.name,
        group_id=settings.consumer_group,
        partition_assignment_strategy=(RangePartitionAssignor,),
        **batch,
        **CONSUMER_DEFAULTS,
    )
    async def on_episode_events(bodies: list[bytes], msg: KafkaMessage) -> None:
        await episodes.handle_batch(batch_records(msg))

    @runtime.broker.subscriber(LEDGER_POSTED.name, group_id=f"{settings.consumer_group}-ledger-answers",
                               **batch, **CONSUMER_DEFAULTS)
    async def on_ledger_posted(bodies: list[bytes], msg: KafkaMessage) -> None:
        await ledger_answers.handle_batch(batch_records(msg))

    return episodes, ledger_answers
