"""The unit of work every command handler writes through.

A handler takes a batch of commands (an HTTP request is a batch of one), asks ``UnitOfWork.run``
for one transaction, and inside it reads what it needs through the service's store (a ``Tx``
bound to that transaction), lets the pure core decide, and writes rows and outbox events. ``run``
commits, or rolls back and runs the work again when it met a race it can resolve by looking again
(another writer inserted one of the batch's ids meanwhile, a deadlock, a serialisation failure):
the next pass sees the other writer's rows. Metrics move after ``run`` returns, i.e. after commit.

``PgUnitOfWork`` is the PostgreSQL adapter; tests of handlers use ``FakeUnitOfWork`` with an
in-memory store, which keeps a transaction's changes apart until the work returns (and drops them
when it raises), so a fake behaves like the real thing where handlers can tell.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import asyncpg

from shared.retry import RACE, RACE_ATTEMPTS, retry

T = TypeVar("T")
TxT = TypeVar("TxT")


class Raced(Exception):
    """Another writer inserted one of this batch's ids after the batch looked: roll back and run
    the batch again (it then sees that row). Nothing was decided on a stale view."""


RETRY_ON: tuple[type[BaseException], ...] = (Raced, asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


class UnitOfWork(Protocol[TxT]):
    async def run(self, work: Callable[[TxT], Awaitable[T]], *, attempts: int = RACE_ATTEMPTS) -> T: ...


class PgUnitOfWork(Generic[TxT]):
    """One PostgreSQL transaction per ``run``; ``tx_of(conn)`` binds the service's store to it."""

    def __init__(self, pool: asyncpg.Pool | Callable[[], asyncpg.Pool], tx_of: Callable[[asyncpg.Connection], TxT]) -> None:
        self._pool = pool
        self._tx_of = tx_of

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool() if callable(self._pool) and not isinstance(self._pool, asyncpg.Pool) else self._pool  # type: ignore[return-value]

    async def run(self, work: Callable[[TxT], Awaitable[T]], *, attempts: int = RACE_ATTEMPTS) -> T:
        async def once() -> T:
            async with self.pool.acquire() as conn:
                async with conn.transaction():
                    return await work(self._tx_of(conn))

        return await retry(once, on=RETRY_ON, attempts=attempts, policy=RACE)


class FakeUnitOfWork(Generic[TxT]):
    """In-memory unit of work for handler tests: ``state`` is the committed store; each ``run``
    works on a deep copy and replaces ``state`` only when the work returns."""

    def __init__(self, state: Any, tx_of: Callable[[Any], TxT]) -> None:
        self.state = state
        self._tx_of = tx_of
        self.commits = 0
        self.rollbacks = 0

    async def run(self, work: Callable[[TxT], Awaitable[T]], *, attempts: int = RACE_ATTEMPTS) -> T:
        for attempt in range(1, attempts + 1):
            draft = copy.deepcopy(self.state)
            try:
                result = await work(self._tx_of(draft))
            except Raced:
                self.rollbacks += 1
                if attempt == attempts:
                    raise
                continue
            except BaseException:
                self.rollbacks += 1
                raise
            self.state = draft
            self.commits += 1
            return result
        raise AssertionError("unreachable")  # pragma: no cover
