"""Group commit for the ledger's HTTP writes.

Every write takes the chain head's lock, so one transfer per request and transaction serialises
the clients behind it (measured: 20 clients posting one transfer each got 89 transfers/s). Here
concurrent requests join the batch being formed instead, as TigerBeetle batches its clients'
requests: one writer task takes whatever has queued while the previous batch was in its
transaction (plus what arrives within ``max_wait_ms`` of the first), writes it as ONE batch through
the same handler as the Kafka consumer, and answers each request with its own outcome. A request
waits at most for the batch in flight plus ``max_wait_ms``. The queue is bounded: when it is full
a request is refused at once (503) rather than queued without limit.

If a whole batch fails for a reason that is neither an outage nor a race (a bug one request
triggers), its requests are written again one at a time, so only that request fails; an outage
fails the batch's requests with the outage (503: retry the same request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from prometheus_client import Histogram

from services.ledger import domain
from services.ledger.ports import Submitted
from shared.consumer import TRANSIENT_ERRORS
from shared.money import InvariantError

log = logging.getLogger(__name__)

GROUP_SIZE = Histogram("ledger_http_group_size", "HTTP transfer requests written in one transaction",
                       buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
GROUP_SECONDS = Histogram("ledger_http_group_seconds", "Time to write one group of HTTP transfer requests (one transaction)",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))


class Overloaded(Exception):
    """The group-commit queue is full: answer 503 at once instead of queueing without bound."""


@dataclass
class _Waiting:
    submitted: Submitted
    future: asyncio.Future[domain.Outcome]


Post = Callable[[Sequence[Submitted]], Awaitable[list[domain.Outcome]]]


class GroupCommit:
    def __init__(self, post: Post, *, max_batch: int, max_wait_ms: float, queue_max: int) -> None:
        self._post = post
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue(maxsize=queue_max)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-group-commit")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        while not self._queue.empty():  # nobody will write these: their clients retry
            w = self._queue.get_nowait()
            if not w.future.done():
                w.future.set_exception(ConnectionError("the ledger is stopping"))

    async def submit(self, submitted: Submitted) -> domain.Outcome:
        """Join the next batch; the request's own outcome once its batch has committed."""
        future: asyncio.Future[domain.Outcome] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Waiting(submitted, future))
        except asyncio.QueueFull:
            raise Overloaded(f"{self._queue.maxsize} transfer requests are already waiting") from None
        return await future

    async def _take(self) -> list[_Waiting]:
        """The next batch: the first request waiting, then every other one that is there already or
        arrives within ``max_wait_ms``, up to ``max_batch``."""
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait_s
        while len(batch) < self._max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout=remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._take()
            GROUP_SIZE.observe(len(batch))
            with GROUP_SECONDS.time():
                await self._write(batch)

    async def _write(self, batch: list[_Waiting]) -> None:
        try:
            outcomes = await self._post([w.submitted for w in batch])
        except asyncio.CancelledError:
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(ConnectionError("the ledger is stopping"))
            raise
        except (TRANSIENT_ERRORS + (InvariantError,)) as exc:
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc)
            return
        except Exception as exc:  # one request's fault: write each alone, so only it fails
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            log.warning("a group of %d transfers failed (%s); writing them one at a time", len(batch), type(exc).__name__)
            for w in batch:
                await self._write([w])
            return
        for w, outcome in zip(batch, outcomes, strict=True):
            if not w.future.done():
                w.future.set_result(outcome)
