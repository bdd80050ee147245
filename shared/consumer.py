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

from shared.http import clean_message
from shared.retry import pause

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
        parts.append(f"{loc}: {clean_message(str(err['msg']))}")
    return "; ".join(parts)


# A dead letter's own headers. A record dead-lettered again after a replay keeps the trace of the
# replay (``dlq_replayed_from``, written by shared/dlq.py); the rest are this dead letter's.
_KEPT_DLQ_HEADERS = ("dlq_replayed_from",)


def _dlq_fields(raw: Any, reason: str, kind: str) -> dict[str, str]:
    return {
        "dlq_reason": reason[:2000],
        "dlq_kind": kind,
        "dlq_source_topic": raw.topic,
        "dlq_source_partition": str(raw.partition),
        "dlq_source_offset": str(raw.offset),
        "dlq_source_timestamp": str(raw.timestamp),
    }


def dead_letter_headers(raw: Any, reason: str, kind: str) -> dict[str, str]:
    """The headers of a dead letter as text (for a writer that rewrites them, e.g. redacting)."""
    headers = {k: v for k, v in (raw_headers(raw)).items() if not k.startswith("dlq_") or k in _KEPT_DLQ_HEADERS}
    headers.update(_dlq_fields(raw, reason, kind))
    return headers


def dead_letter_record_headers(raw: Any, reason: str, kind: str) -> list[tuple[str, bytes | None]]:
    """The headers of a dead letter as Kafka sends them: the original record's exactly (bytes as
    they came, in order, repeats and empty values included), then the dlq_* fields."""
    kept = [(k, v) for k, v in (raw.headers or ()) if not k.startswith("dlq_") or k in _KEPT_DLQ_HEADERS]
    return kept + [(k, v.encode()) for k, v in _dlq_fields(raw, reason, kind).items()]


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


async def backoff(attempt: int) -> None:
    """Wait before a record that failed ``attempt`` times comes again (the one retry policy)."""
    await pause(attempt)
