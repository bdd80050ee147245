"""What the ledger's command handlers need from storage, bound to one transaction.

``store.LedgerTx`` is the PostgreSQL adapter; ``tests/unit/fakes_ledger.py`` keeps the same in
memory so handler tests run in milliseconds. The chain head is the single writer's lock: the
handler takes it first, so everything it then reads is the state its plan is made against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol

from services.ledger import domain
from services.ledger import remittance
from services.ledger.periods import Movement
from shared.contracts import TransferRequested


@dataclass(frozen=True)
class Submitted:
    """A transfer request with the envelope fields the ledger keeps for tracing."""

    request: TransferRequested
    correlation_id: str
    causation_id: str | None


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str
    posted_at: datetime | None
    # the last month (its first day, UTC) the journal has partitions for; None: none made yet
    partitions_through: date | None = None
    # the last closed accounting period (YYYY-MM); None: none closed
    closed_through: str | None = None
    # the first month with partitions (a clock set back before it needs more)
    partitions_from: date | None = None


@dataclass(frozen=True)
class ClosedMark:
    """The last closed period and the chain head when it closed (step 1 of a close)."""

    period: str
    head_seq: int
    head_hash: str
    closed_at: datetime
    closed_by: str


@dataclass(frozen=True)
class StoredStatement:
    period: str
    body: bytes  # the canonical JSON, exactly as signed
    sha256: str
    signature: bytes
    key_id: str


@dataclass(frozen=True)
class RemittanceRun:
    run_id: str
    commissioner: str
    period: str
    imported_at: datetime
    imported_by: str
    file_name: str | None
    file_sha256: str
    file_rows: int
    head_seq: int


@dataclass
class Loaded:
    """Everything a batch's plan is made against (see ``domain.plan_batch``)."""

    balances: dict[str, domain.AccountState] = field(default_factory=dict)
    existing: dict[str, domain.ExistingEntry] = field(default_factory=dict)
    pendings: dict[str, domain.PendingState] = field(default_factory=dict)
    originals: dict[str, domain.PostedOriginal] = field(default_factory=dict)
    # an expiry entry carries the correlation id of the pending transfer it voids
    pending_correlation_ids: dict[str, str | None] = field(default_factory=dict)


class LedgerStore(Protocol):
    async def lock_head(self) -> Head:
        """The chain head, locked to the end of the transaction (the single writer's lock)."""

    async def ensure_partitions(self, first: date, through: date) -> None:
        """Create the journal's monthly partitions from the month of ``first`` to that of ``through``."""

    async def due_expiries(self, at: datetime, limit: int) -> list[str]:
        """Pending transfers whose timeout has passed by ``at``, oldest deadline first."""

    async def load(self, requests: Sequence[TransferRequested], expiries: Sequence[domain.Expire]) -> Loaded:
        """What the plan needs; accounts a request names for the first time are opened."""

    async def write(self, plan: domain.BatchPlan, batch: Sequence[Submitted], loaded: Loaded, stamp: datetime) -> None:
        """The plan's entries, legs, balances, chain head, pending transfers, kept rejections and
        the ``ledger.posted.v1`` events, in the caller's transaction."""

    async def declare_account(self, account_id: str, metadata: dict[str, Any]) -> None:
        """Open the account if needed and replace its metadata (not part of the journal)."""

    async def mark_closed(self, period: str, head: Head, at: datetime, by: str) -> None:
        """Step 1 of a close, under the head's lock: the books are closed through ``period``."""

    async def close_mark(self) -> ClosedMark | None:
        """The last period marked closed, with the chain head recorded then."""

    async def statement_of(self, period: str) -> StoredStatement | None:
        """A closed period's signed statement, if written."""

    async def close_mark_before(self, period: str) -> str | None:
        """The latest period before ``period`` with a statement (None: ``period`` is the first)."""

    async def period_movements(self, first_day: date | None, end_day: date, through_seq: int) -> tuple[int, list[Movement]]:
        """(entries, each account's debits and credits) of the entries dated in the period."""

    async def record_statement(self, period: str, mark: ClosedMark, body: bytes, sha256: str, signature: bytes,
                               key_id: str) -> bool:
        """Store the signed statement once; False if it was already there."""

    async def payments_paid(self, commissioner: str, period: str) -> tuple[int, dict[str, remittance.LedgerPayment]]:
        """(the chain head's seq, what the ledger shows the commissioner paid per payment of the period)."""

    async def record_remittance(self, run: RemittanceRun, result: remittance.Result) -> None:
        """Store a reconciliation run and its lines."""
