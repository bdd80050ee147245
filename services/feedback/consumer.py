"""Kafka intake for backends that publish submissions directly (feedback.submitted.v1)."""

from __future__ import annotations

from typing import Any

from faststream.kafka import KafkaMessage

from services.feedback import domain, store
from shared.consumer import BadEvent
from shared.contracts import Envelope
from shared.service import CONSUMER_DEFAULTS
from shared.topics import FEEDBACK_SUBMITTED, FEEDBACK_SUBMITTED_DLQ




def register(runtime: Any, settings: Any) -> None:
    rt = runtime

    @rt.broker.subscriber(FEEDBACK_SUBMITTED.name, group_id=settings.consumer_group, **CONSUMER_DEFAULTS)
    async def on_submitted(body: bytes, msg: KafkaMessage) -> None:
        async def process(value: bytes) -> None:
            env = Envelope[domain.Submission].model_validate_json(value)  # type: ignore[type-var]
            try:
                async with rt.pool.acquire() as conn:
                    async with conn.transaction():
                        await store.accept(
                            conn, env.data, key=settings.pseudonym_key.get_secret_value().encode(),
                            key_id=settings.pseudonym_key_id, channel="kafka",
                            correlation_id=env.correlation_id, causation_id=str(env.event_id),
                        )
            except store.Conflict as exc:
                raise BadEvent(str(exc)) from exc

        await rt.handle_one(msg.raw_message, FEEDBACK_SUBMITTED_DLQ.name, process)
