"""Kafka plumbing: connection options, topic creation, producers, dead-lettering.

Broker specifics (security, replication) come from settings only, so the same code runs on the
embedded Tansu broker, on Apache Kafka in docker-compose and in production.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from shared.retry import STARTUP, retry
from shared.settings import ServiceSettings
from shared.topics import ALL_TOPICS, TopicSpec

log = logging.getLogger(__name__)


def client_options(settings: ServiceSettings) -> dict[str, Any]:
    """aiokafka connection keyword arguments (bootstrap + TLS/SASL) from settings."""
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        opts["ssl_context"] = create_ssl_context()
    if settings.kafka_sasl_mechanism:
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        opts["sasl_plain_password"] = settings.kafka_sasl_password
    return opts


async def ensure_topics(
    settings: ServiceSettings, specs: tuple[TopicSpec, ...] = ALL_TOPICS, *, attempts: int = 30
) -> None:
    """Create the topics if missing, with explicit partition counts. Retries while the broker starts."""

    async def create() -> None:
        admin = AIOKafkaAdminClient(**client_options(settings))
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [NewTopic(s.name, s.partitions, settings.kafka_replication_factor) for s in specs if s.name not in existing]
            if missing:
                try:
                    await admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    pass  # another service created it first: same spec, success
        finally:
            await admin.close()

    def waiting(state: Any) -> None:
        log.warning("broker not ready (%s), retry %d/%d", type(state.outcome.exception()).__name__, state.attempt_number, attempts)

    await retry(create, on=(KafkaError, OSError), attempts=attempts, policy=STARTUP, before_sleep=waiting)


def make_producer(settings: ServiceSettings, *, client_id: str) -> AIOKafkaProducer:
    # Idempotent producers and transactions are not used: the embedded broker lacks them and the
    # design is at-least-once with idempotent consumers, which is exactly-once in effect.
    return AIOKafkaProducer(
        **client_options(settings),
        client_id=client_id,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=15_000,
    )
