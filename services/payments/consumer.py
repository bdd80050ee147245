"""Kafka → payments: payment requests, patients' answers, and the ledger's answers.

Payment requests and feedback are keyed by episode id on co-partitioned topics and read by ONE
consumer subscribed to both, in one group with the range assignor: partition N of both topics
goes to the same instance, so one instance sees both halves of an episode.
"""

from __future__ import annotations

from typing import Any

from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from faststream.kafka import KafkaMessage

from services.payments import metrics, store
from shared.consumer import BadEvent
from shared.contracts import FeedbackReceived, PaymentRequested, TransferPosted, parse_envelope
from shared.service import CONSUMER_DEFAULTS
from shared.topics import (
    FEEDBACK_RECEIVED,
    FEEDBACK_RECEIVED_DLQ,
    LEDGER_POSTED,
    LEDGER_POSTED_DLQ,
    PAYMENTS_REQUESTED,
    PAYMENTS_REQUESTED_DLQ,
)


def register(runtime: Any, settings: Any) -> None:
    rt = runtime

    async def on_payment_requested(value: bytes) -> None:
        env = parse_envelope(value, PaymentRequested)
        try:
            async with rt.pool.acquire() as conn:
                async with conn.transaction():
                    accepted = await store.accept_payment(conn, env.data, book=rt.book, ref=rt.reference,
                                                          correlation_id=env.correlation_id, causation_id=str(env.event_id),
                                                          hold_model=rt.hold_model)
        except (store.InputError, store.Conflict) as exc:
            raise BadEvent(str(exc)) from exc
        # Committed; a redelivery comes back "duplicate" and is not counted again.
        metrics.payment_accepted(accepted, env.data.amount_pence, rt.reference.region_of_provider(env.data.provider_code))

    async def on_feedback_received(value: bytes) -> None:
        env = parse_envelope(value, FeedbackReceived)
        async with rt.pool.acquire() as conn:
            await store.record_answer(conn, env.data)

    routes = {
        PAYMENTS_REQUESTED.name: (PAYMENTS_REQUESTED_DLQ.name, on_payment_requested),
        FEEDBACK_RECEIVED.name: (FEEDBACK_RECEIVED_DLQ.name, on_feedback_received),
    }

    @rt.broker.subscriber(
        PAYMENTS_REQUESTED.name,
        FEEDBACK_RECEIVED.name,
        group_id=settings.consumer_group,
        partition_assignment_strategy=(RangePartitionAssignor,),
        **CONSUMER_DEFAULTS,
    )
    async def on_episode_event(body: bytes, msg: KafkaMessage) -> None:
        raw = msg.raw_message
        dlq, process = routes[raw.topic]
        await rt.handle_one(raw, dlq, process)

    @rt.broker.subscriber(LEDGER_POSTED.name, group_id=f"{settings.consumer_group}-ledger-answers", **CONSUMER_DEFAULTS)
    async def on_ledger_posted(body: bytes, msg: KafkaMessage) -> None:
        async def process(value: bytes) -> None:
            env = parse_envelope(value, TransferPosted)
            async with rt.pool.acquire() as conn:
                await store.record_ledger_answer(conn, env.data)

        await rt.handle_one(msg.raw_message, LEDGER_POSTED_DLQ.name, process)
