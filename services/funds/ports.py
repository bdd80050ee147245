"""What the funds service's command handlers need from storage, bound to one transaction.

``store.FundsTx`` is the PostgreSQL adapter; ``tests/unit/fakes_funds.py`` keeps the same in
memory so handler tests run in milliseconds (``shared.uow.FakeUnitOfWork``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from services.funds.domain import Grant, Step
from services.funds.tally import Counted, TallyPlan
from shared.events import Row


class FundsStore(Protocol):
    # -- grants -------------------------------------------------------------------------------
    async def grants(self, grant_ids: Sequence[str], *, lock: bool) -> dict[str, Grant]:
        """The grants that exist among ``grant_ids``; locked to the end of the transaction (in id
        order, so two writers never wait on each other crosswise) when ``lock``."""

    async def insert_grant(self, g: Grant, correlation_id: str) -> bool:
        """A new grant and its milestones; False when another writer inserted the id meanwhile."""

    async def save(self, g: Grant) -> None:
        """The grant's decision, cancellation, status and its milestones' recorded facts."""

    async def add_steps(self, grant_id: str, steps: Sequence[Step]) -> None:
        """Append to the grant's history (never changed afterwards)."""

    async def add_discrepancies(self, grant_id: str, found: Sequence[tuple[str, str]], at: datetime) -> None:
        """Answers from the ledger nobody expected: (transfer id, what)."""

    async def enqueue(self, rows: Sequence[Row]) -> None:
        """Outbox rows (ledger transfer requests, grant events), in order."""

    # -- feedback tallies ---------------------------------------------------------------------
    async def counted(self, submission_ids: Sequence[str]) -> dict[str, Counted]:
        """Answers already counted, by submission id."""

    async def current(self, root_ids: Sequence[str]) -> dict[str, Counted]:
        """The answer counted now for each question, by root id (locked: an amendment replaces it)."""

    async def apply_tally(self, plan: TallyPlan) -> None:
        """The new answers, the replaced ones marked, and every tally row's delta."""
