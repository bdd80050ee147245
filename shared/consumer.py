"""Safe event handling for Kafka consumers: parse, dead-letter bad input, retry the rest.

Policy (the same in every service):
- An event that does not parse or validate goes to the topic's dead-letter topic, with the reason
  in its headers, and is acknowledged so the partition keeps moving.
- Infrastructure errors (database or broker unreachable) are retried with bounded backoff, for
  as long as it takes, and the message is not acknowledged: nothing is lost and nothing skipped.
- Any other error is retried ``max_attempts`` times, then dead-lettered with the reason.
Offsets are committed only after the handler's database transaction has committed
(FastStream ``AckPolicy.NACK_ON_ERROR``), so delivery is at least once and handlers are idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError
from prometheus_client import Counter
from pydantic import ValidationError

log = logging.getLogger(__name__)

# A record a batch consumer will dead-letter once its batch commits:
# (position in the batch, the aiokafka record, reason, kind: invalid | rejected | failed).
DeadRecord = tuple[int, Any, str, str]

DEAD_LETTERS = Counter("dead_letters_total", "Events sent to a dead-letter topic", ["source_topic", "kind"])
CONSUMER_RETRIES = Counter("consumer_retries_total", "Handler attempts that will be retried", ["topic", "kind"])

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    KafkaError,
)


class BadEvent(Exception):
    """Input that will never succeed however often it is retried: it goes to the dead-letter topic."""


def validation_reason(exc: ValidationError) -> str:
    """A compact readable reason: 'data.amount_pence: Input should be greater than 0; ...'."""
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def dead_letter_headers(raw: Any, reason: str, kind: str) -> dict[str, str]:
    headers = {k: v for k, v in (raw_headers(raw)).items() if not k.startswith("dlq_")}
    headers.update(
        {
            "dlq_reason": reason[:2000],
            "dlq_kind": kind,
            "dlq_source_topic": raw.topic,
            "dlq_source_partition": str(raw.partition),
            "dlq_source_offset": str(raw.offset),
        }
    )
    return headers


def raw_headers(raw: Any) -> dict[str, str]:
    out = {}
    for k, v in raw.headers or ():
        try:
            out[k] = v.decode() if isinstance(v, bytes) else str(v)
        except UnicodeDecodeError:
            continue
    return out


class AttemptTracker:
    """Counts attempts per (topic, partition, offset), bounded in size."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._attempts: OrderedDict[tuple[str, int, int], int] = OrderedDict()
        self._max = max_entries

    def bump(self, raw: Any) -> int:
        key = (raw.topic, raw.partition, raw.offset)
        n = self._attempts.pop(key, 0) + 1
        self._attempts[key] = n
        while len(self._attempts) > self._max:
            self._attempts.popitem(last=False)
        return n

    def forget(self, raw: Any) -> None:
        self._attempts.pop((raw.topic, raw.partition, raw.offset), None)


async def backoff(attempt: int, *, base_s: float = 0.05, max_s: float = 5.0) -> None:
    await asyncio.sleep(min(max_s, base_s * 2 ** min(attempt, 20)))
