"""Kafka → payments: payment requests, patients' answers, and the ledger's answers.

Payment requests and feedback are keyed by episode id on co-partitioned topics and read by ONE
consumer subscribed to both, in one group with the range assignor: partition N of both topics
goes to the same instance, so one instance sees both halves of an episode.

Both subscribers read batches (``PAYMENTS_BATCH_MAX_RECORDS``, ``PAYMENTS_BATCH_TIMEOUT_MS``) and
apply each batch in ONE database transaction, with the same outcome per record as handling the
records one at a time in offset order (``store.accept_payments``, ``store.record_answers``,
``store.record_ledger_answers``). Offsets are committed only after that transaction commits
(``AckPolicy.NACK_ON_ERROR``: raising makes the whole batch come again; a redelivered batch finds
its payments and answers already stored and changes nothing).

Error policy, per record, as ``Runtime.handle_one`` (shared/consumer.py):
- a record that does not validate, or that the store rejects (unknown code, same id with other
  content), goes to its topic's dead-letter topic with the reason, after the batch's transaction
  has committed, and does not hold the other records back; the store decides those rejections
  before it writes anything, so there is nothing to undo;
- a database or broker outage (``TRANSIENT_ERRORS``) backs off and raises: the batch is delivered
  again, as long as it takes, and nothing is dead-lettered for it;
- anything else rolls the batch back and the batch is handled again one record per transaction
  through ``Runtime.handle_one`` (the per-event path), so the failing record is retried
  ``consumer_max_attempts`` times and then dead-lettered while the others go through.
Arrival order between the two topics does not matter to the store: accepting a payment never
reads answers and recording an answer never reads episodes (decisions are derived from the
answers table when they are shown or settled), so an answer may come before its payment, in
another batch or in the same one.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timezone
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from faststream.kafka import KafkaMessage
from prometheus_client import Histogram
from pydantic import ValidationError

from services.payments import domain, metrics, store
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



class EpisodeEvents:
    """payments.requested.v1 + feedback.received.v1: batches, and the per-event path."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime
        self.routes: dict[str, Callable[[bytes], Awaitable[None]]] = {
            PAYMENTS_REQUESTED.name: self.on_payment_requested,
            FEEDBACK_RECEIVED.name: self.on_feedback_received,
        }

    def window(self) -> domain.ActivityWindow:
        """The plausible activity dates today (a replayed old event is refused once outside it)."""
        today = datetime.now(timezone.utc).date()
        return domain.activity_window(today, self.rt.settings.activity_date_max_age_days)

    # -- one event, one transaction (the fallback, and what a batch must be equivalent to) -----
    async def on_payment_requested(self, value: bytes) -> None:
        rt = self.rt
        env = _PAYMENT.model_validate_json(value)
        try:
            async with rt.pool.acquire() as conn:
                async with conn.transaction():
                    accepted = await store.accept_payment(conn, env.data, book=rt.book, ref=rt.reference,
                                                          correlation_id=safe_correlation_id(env.correlation_id),
                                                          causation_id=str(env.event_id), hold_model=rt.hold_model,
                                                          window=self.window())
        except (store.InputError, store.Conflict) as exc:
            raise BadEvent(str(exc)) from exc
        # Committed; a redelivery comes back "duplicate" and is not counted again.
        metrics.payment_accepted(accepted, env.data.amount_pence, rt.reference.region_of_provider(env.data.provider_code))

    async def on_feedback_received(self, value: bytes) -> None:
        env = _FEEDBACK.model_validate_json(value)
        async with self.rt.pool.acquire() as conn:
            await store.record_answer(conn, env.data)

    async def handle_one(self, raw: Any) -> None:
        await self.rt.handle_one(raw, DLQ[raw.topic], self.routes[raw.topic])

    async def handle_one_by_one(self, records: list[Any]) -> None:
        for raw in records:
            await self.handle_one(raw)

    # -- a batch, one transaction -------------------------------------------------------------
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
        # A commissioner's correlation id travels into the append-only ledger: only a safe one does.
        items = [store.PaymentItem(env.data, safe_correlation_id(env.correlation_id), str(env.event_id)) for _, _, env in payments]
        feedback = [env.data for _, _, env in answers]
        window = self.window()

        async def write(conn: Any) -> list[Any]:
            result = await store.accept_payments(conn, items, book=rt.book, ref=rt.reference, hold_model=rt.hold_model,
                                                 window=window)
            await store.record_answers(conn, feedback)
            return result

        outcomes = await rt.write_batch(records, write, raced=store.Raced, timer=BATCH_SECONDS.labels("episodes"),
                                        what="payments batch")
        if outcomes is None:  # rolled back: nothing of the batch was written
            await self.handle_one_by_one(records)
            return
        # Committed. Counters move now, and only for new payments (a redelivery finds duplicates).
        handled: Counter[str] = Counter()
        accepted: list[tuple[store.Accepted, int, str | None]] = []
        for (i, raw, env), outcome in zip(payments, outcomes):
            if isinstance(outcome, store.Accepted):
                accepted.append((outcome, env.data.amount_pence, rt.reference.region_of_provider(env.data.provider_code)))
                handled[raw.topic] += 1
            else:
                dead.append((i, raw, str(outcome), "rejected"))
        metrics.payments_accepted(accepted)
        for _, raw, _ in answers:
            handled[raw.topic] += 1
        await rt.finish_batch(records, handled, dead, DLQ)


class LedgerAnswers:
    """ledger.posted.v1: what the ledger did with each transfer payments asked for."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime

    async def process(self, value: bytes) -> None:
        env = _POSTED.model_validate_json(value)
        async with self.rt.pool.acquire() as conn:
            async with conn.transaction():
                found = await store.record_ledger_answers(conn, [env.data])
        metrics.ledger_discrepancies(found)  # committed

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
        async def write(conn: Any) -> list[tuple[str, str]]:
            return await store.record_ledger_answers(conn, posted)

        found = await rt.write_batch(records, write, timer=BATCH_SECONDS.labels("ledger-answers"), what="ledger answers batch")
        if found is None:
            for raw in records:  # rolled back: find the record, one by one
                await rt.handle_one(raw, LEDGER_POSTED_DLQ.name, self.process)
            return
        metrics.ledger_discrepancies(found)  # committed
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
