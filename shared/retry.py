"""The one retry policy: bounded, exponential, with added jitter (tenacity does the work).

Every wait between tries in the services comes from here: start-up connections (PostgreSQL, the
broker), a consumer batch that met an outage (the batch is delivered again after ``pause``), the
outbox relay after a failed pass, and a unit of work that met a concurrent insert or a deadlock.
Jitter matters because many instances meet the same outage at the same moment: without it they all
come back in lock-step and meet it again together.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Exponential from ``first_s``, capped at ``max_s``, plus up to ``jitter_s`` of random wait."""

    first_s: float
    max_s: float
    jitter_s: float

    def wait(self) -> wait_exponential_jitter:
        return wait_exponential_jitter(multiplier=self.first_s, max=self.max_s, jitter=self.jitter_s)

    def delay_s(self, attempt: int) -> float:
        """The wait before try number ``attempt + 1`` (attempt >= 1), as tenacity computes it."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = max(1, min(attempt, 64))
        return float(self.wait()(state))


# An outage (database restart, broker pause): back off to a few seconds between tries, forever
# where nothing is lost by waiting (a consumer keeps its offsets), bounded where a caller waits.
OUTAGE = Backoff(first_s=0.05, max_s=5.0, jitter_s=0.25)
# A race with another writer (a concurrent insert of the same ids, a deadlock): try again at once,
# a few times, with a little jitter so two racers do not collide again.
RACE = Backoff(first_s=0.005, max_s=0.1, jitter_s=0.02)
RACE_ATTEMPTS = 3
# Start-up: wait for PostgreSQL or the broker to come up, about two minutes in all.
STARTUP = Backoff(first_s=0.1, max_s=2.0, jitter_s=0.2)
STARTUP_ATTEMPTS = 60


async def pause(attempt: int, policy: Backoff = OUTAGE) -> None:
    """Wait before the next delivery of something that failed ``attempt`` times."""
    await asyncio.sleep(policy.delay_s(attempt))


async def retry(fn: Callable[[], Awaitable[T]], *, on: type[BaseException] | tuple[type[BaseException], ...], attempts: int,
                policy: Backoff, before_sleep: Callable[[RetryCallState], None] | None = None) -> T:
    """``await fn()``, again after a jittered wait whenever it raises ``on``, at most ``attempts``
    times in all; the last failure is raised as it is."""
    async for attempt in AsyncRetrying(stop=stop_after_attempt(attempts), wait=policy.wait(),
                                       retry=retry_if_exception_type(on), reraise=True, before_sleep=before_sleep):
        with attempt:
            return await fn()
    raise AssertionError("unreachable")  # pragma: no cover - AsyncRetrying returns or raises


def jitter(seconds: float, fraction: float = 0.1) -> float:
    """``seconds`` give or take ``fraction`` (periodic tasks: instances do not poll in step)."""
    return seconds * (1 + random.uniform(-fraction, fraction))
