"""Kafka intake for backends that publish submissions directly (feedback.submitted.v1).

Privacy: the intake topic carries what backends send, NHS numbers and free text included, so it
is identifiable data (short retention, ACLs limited to the backends and this service; see
services/feedback/README.md). Nothing identifiable leaves this consumer: the stored row and the
``feedback.received.v1`` event carry the pseudonym, and a dead letter has its free text blanked and every
10-digit run in its value, key, headers and reason redacted before it is published.
"""

from __future__ import annotations

import logging
from typing import Any

from faststream.kafka import KafkaMessage

from services.feedback import domain, store
from shared.consumer import DEAD_LETTERS, BadEvent, dead_letter_headers
from shared.contracts import Envelope
from shared.service import CONSUMER_DEFAULTS, Runtime
from shared.topics import FEEDBACK_SUBMITTED, FEEDBACK_SUBMITTED_DLQ

log = logging.getLogger(__name__)


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


def register(runtime: Runtime, settings: Any) -> None:
    rt = runtime
    keys = settings.keyring()

    @rt.broker.subscriber(FEEDBACK_SUBMITTED.name, group_id=settings.consumer_group, **CONSUMER_DEFAULTS)
    async def on_submitted(body: bytes, msg: KafkaMessage) -> None:
        async def process(value: bytes) -> None:
            env = Envelope[domain.Submission].model_validate_json(value)  # type: ignore[type-var]
            try:
                async with rt.pool.acquire() as conn:
                    async with conn.transaction():
                        await store.accept(
                            conn, env.data, keys=keys, channel="kafka",
                            correlation_id=env.correlation_id, causation_id=str(env.event_id),
                        )
            except store.Conflict as exc:
                raise BadEvent(str(exc)) from exc

        await rt.handle_one(msg.raw_message, FEEDBACK_SUBMITTED_DLQ.name, process)
