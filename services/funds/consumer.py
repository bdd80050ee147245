"""Kafka → funds: thin adapters over the one write path (``handlers.FundsHandlers``).

Two subscribers, each its own consumer group so one topic's backlog never holds the other back:

- ``feedback.received.v1`` (group ``<group>-feedback``): every answer, tallied for the projects'
  measures (``record_feedback``), one transaction per batch.
- ``ledger.posted.v1`` (group ``<group>-ledger-answers``): the ledger's answers; only those about
  ``grant:`` transfers are the funds service's (``record_ledger_answers``). The topic carries every
  payment's answers too, so a record whose bytes do not mention ``grant:`` is passed over
  without parsing (neither handled nor dead-lettered: it is payments' to judge); an answer about
  a grant must come from the ledger (``producer``), or it is dead-lettered.

The consumer policy is the shared one (``Runtime.run_batch`` / ``handle_one``): offsets after the
commit; a redelivered batch changes nothing (answers and tallies are idempotent); an outage backs
off and the batch comes again; a batch that fails otherwise is handled one record at a time, and a
record that keeps failing is dead-lettered after ``FUNDS_CONSUMER_MAX_ATTEMPTS``; a broken money
invariant stops the partition loudly.
"""

from __future__ import annotations

import logging
from typing import Any

from faststream.kafka import KafkaMessage
from prometheus_client import Histogram
from pydantic import ValidationError

from services.funds.handlers import ANSWERS, Answered
from shared.consumer import BadEvent, DeadRecord, validation_reason
from shared.contracts import Envelope, FeedbackReceived, TransferPosted
from shared.service import CONSUMER_DEFAULTS, batch_records
from shared.topics import FEEDBACK_RECEIVED, FEEDBACK_RECEIVED_DLQ, LEDGER_POSTED, LEDGER_POSTED_DLQ
from shared.tracing import safe_correlation_id

log = logging.getLogger(__name__)

_FEEDBACK = Envelope[FeedbackReceived]
_POSTED = Envelope[TransferPosted]
DLQ = {FEEDBACK_RECEIVED.name: FEEDBACK_RECEIVED_DLQ.name, LEDGER_POSTED.name: LEDGER_POSTED_DLQ.name}
OURS = b"grant:"  # every funds transfer id starts so (shared/namespaces.py: funds owns grant:)
LEDGER_PRODUCER = "ledger"

BATCH_SECONDS = Histogram("funds_consumer_batch_seconds", "Time to apply one consumer batch (one transaction)", ["subscriber"],
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


def parse_feedback(runtime: Any, value: bytes) -> FeedbackReceived:
    ev = _FEEDBACK.model_validate_json(value).data
    if runtime.reference.trust_of(ev.provider_code) is None:
        raise BadEvent(f"provider_code {ev.provider_code} is not in the reference data")
    return ev


def parse_answer(value: bytes) -> Answered | None:
    """The answer, if it is about one of the funds service's transfers; else None (not ours)."""
    if OURS not in value:
        return None
    env = _POSTED.model_validate_json(value)
    if not env.data.transfer_id.startswith("grant:"):
        return None
    if env.producer != LEDGER_PRODUCER:
        raise BadEvent(f"an answer about {env.data.transfer_id} from {env.producer!r}, not the ledger")
    return Answered(env.data, safe_correlation_id(env.correlation_id), str(env.event_id))


async def handle_feedback(runtime: Any, records: list[Any]) -> None:
    if not records:
        return
    answers: list[FeedbackReceived] = []
    dead: list[DeadRecord] = []
    for i, raw in enumerate(records):
        try:
            answers.append(parse_feedback(runtime, raw.value))
        except ValidationError as exc:
            dead.append((i, raw, validation_reason(exc), "invalid"))
        except BadEvent as exc:
            dead.append((i, raw, str(exc), "rejected"))
    done = await runtime.run_batch(records, lambda: runtime.handlers.record_feedback(answers),
                                   timer=BATCH_SECONDS.labels("feedback"), what="funds feedback batch")
    if done is None:
        for raw in records:
            await runtime.handle_one(raw, FEEDBACK_RECEIVED_DLQ.name, lambda value: _feedback_one(runtime, value))
        return
    await runtime.finish_batch(records, {FEEDBACK_RECEIVED.name: len(answers)}, dead, DLQ)
    ANSWERS.labels("dead_lettered").inc(len(dead))


async def _feedback_one(runtime: Any, value: bytes) -> None:
    await runtime.handlers.record_feedback([parse_feedback(runtime, value)])


async def handle_answers(runtime: Any, records: list[Any]) -> None:
    if not records:
        return
    ours: list[Answered] = []
    dead: list[DeadRecord] = []
    for i, raw in enumerate(records):
        try:
            found = parse_answer(raw.value)
        except ValidationError as exc:
            dead.append((i, raw, validation_reason(exc), "invalid"))
            continue
        except BadEvent as exc:
            dead.append((i, raw, str(exc), "rejected"))
            continue
        if found is not None:
            ours.append(found)
    if ours:
        done = await runtime.run_batch(records, lambda: runtime.handlers.record_ledger_answers(ours),
                                       timer=BATCH_SECONDS.labels("ledger-answers"), what="funds ledger answers batch")
        if done is None:
            for raw in records:
                await runtime.handle_one(raw, LEDGER_POSTED_DLQ.name, lambda value: _answer_one(runtime, value))
            return
    await runtime.finish_batch(records, {LEDGER_POSTED.name: len(ours)}, dead, DLQ)


async def _answer_one(runtime: Any, value: bytes) -> None:
    found = parse_answer(value)
    if found is not None:
        await runtime.handlers.record_ledger_answers([found])


def register(runtime: Any, settings: Any) -> None:
    batch: dict[str, Any] = {"batch": True, "max_records": settings.batch_max_records, "batch_timeout_ms": settings.batch_timeout_ms}

    @runtime.broker.subscriber(FEEDBACK_RECEIVED.name, group_id=f"{settings.consumer_group}-feedback", **batch,
                               **CONSUMER_DEFAULTS)
    async def on_feedback_received(bodies: list[bytes], msg: KafkaMessage) -> None:
        await handle_feedback(runtime, batch_records(msg))

    @runtime.broker.subscriber(LEDGER_POSTED.name, group_id=f"{settings.consumer_group}-ledger-answers", **batch,
                               **CONSUMER_DEFAULTS)
    async def on_ledger_posted(bodies: list[bytes], msg: KafkaMessage) -> None:
        await handle_answers(runtime, batch_records(msg))
