"""An in-memory ``services.ledger.ports.LedgerStore`` for handler tests (with shared.uow.FakeUnitOfWork)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from services.ledger import chain, domain
from services.ledger.ports import Head, Loaded, Submitted
from services.ledger.store import posted_rows
from shared.contracts import TransferRequested


@dataclass
class LedgerState:
    head: Head = field(default_factory=lambda: Head(0, chain.GENESIS_HASH, None))
    existing: dict[str, domain.ExistingEntry] = field(default_factory=dict)
    pendings: dict[str, domain.PendingState] = field(default_factory=dict)
    balances: dict[str, domain.AccountState] = field(default_factory=dict)
    entries: list[domain.PlannedEntry] = field(default_factory=list)
    outbox: list[tuple[str, bytes, bytes, str]] = field(default_factory=list)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    partitions_through: date | None = None


class FakeLedgerTx:
    def __init__(self, state: LedgerState) -> None:
        self.s = state

    async def lock_head(self) -> Head:
        return self.s.head

    async def ensure_partitions(self, first: date, through: date) -> None:
        self.s.partitions_through = through
        h = self.s.head
        self.s.head = Head(h.seq, h.hash, h.posted_at, through, h.closed_through,
                           min(h.partitions_from or first.replace(day=1), first.replace(day=1)))

    async def due_expiries(self, at: datetime, limit: int) -> list[str]:
        due = sorted((p.expires_at, p.transfer_id) for p in self.s.pendings.values()
                     if p.status == "pending" and p.expires_at is not None and p.expires_at <= at)
        return [t for _, t in due[:limit]]

    async def load(self, requests: Sequence[TransferRequested], expiries: Sequence[domain.Expire]) -> Loaded:
        loaded = Loaded(existing={r.transfer_id: self.s.existing[r.transfer_id] for r in requests if r.transfer_id in self.s.existing})
        for pid in {r.pending_id for r in requests if r.pending_id} | {e.pending_id for e in expiries}:
            if pid in self.s.pendings:
                loaded.pendings[pid] = self.s.pendings[pid]
        for account in {leg.account_id for r in requests for leg in r.legs} | {a for p in loaded.pendings.values() for a, _ in p.legs}:
            loaded.balances[account] = self.s.balances.setdefault(account, domain.AccountState())
        return loaded

    async def write(self, plan: domain.BatchPlan, batch: Sequence[Submitted], loaded: Loaded, stamp: datetime) -> None:
        for e in plan.entries:
            self.s.existing[e.transfer_id] = domain.ExistingEntry(e.seq, e.fingerprint, e.hash, e.request_json,
                                                                  domain.STATUS_OF_KIND[e.kind])
            self.s.entries.append(e)
        for r in plan.rejections:
            self.s.existing[r.transfer_id] = domain.ExistingEntry(None, r.fingerprint, None, r.request_json, "rejected", r.reason)
        for account, (p, pd, pc) in plan.deltas.items():
            b = self.s.balances.get(account, domain.AccountState())
            self.s.balances[account] = domain.AccountState(b.posted_pence + p, b.pending_debits_pence + pd, b.pending_credits_pence + pc)
        for p in plan.new_pendings:
            self.s.pendings[p.transfer_id] = p
        for pid, (status, _seq) in plan.resolved_pendings.items():
            p = self.s.pendings[pid]
            self.s.pendings[pid] = domain.PendingState(p.transfer_id, p.legs, p.expires_at, status)  # type: ignore[arg-type]
        if plan.entries:
            h = self.s.head
            self.s.head = Head(plan.head_seq, plan.head_hash, stamp, h.partitions_through, h.closed_through, h.partitions_from)
        self.s.outbox.extend(posted_rows(plan, batch))

    async def declare_account(self, account_id: str, metadata: dict[str, Any]) -> None:
        self.s.balances.setdefault(account_id, domain.AccountState())
        self.s.metadata[account_id] = metadata
