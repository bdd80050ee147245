"""In memory: ``services.funds.ports.FundsStore`` for handler tests (with shared.uow.FakeUnitOfWork),
and a ledger made of the real ledger's pure core (``services.ledger.domain.plan_batch``), so the
funds service's requests meet the real floors, idempotency and two-phase rules in milliseconds."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from services.funds.domain import Grant, Step
from services.funds.tally import Counted, TallyPlan
from services.ledger import chain
from services.ledger import domain as ledger
from shared.contracts import Envelope, Leg, TransferCause, TransferPosted, TransferRequested
from shared.events import Row
from shared.reference import load_reference
from shared.topics import FUNDS_GRANTS, LEDGER_TRANSFER_REQUESTS

REF = load_reference(None)
T0 = datetime(2026, 11, 2, 9, tzinfo=timezone.utc)  # a Monday
TODAY = T0.date()


@dataclass
class FundsState:
    grants: dict[str, Grant] = field(default_factory=dict)
    correlation: dict[str, str] = field(default_factory=dict)
    steps: dict[str, list[Step]] = field(default_factory=dict)
    discrepancies: list[tuple[str, str, str]] = field(default_factory=list)
    outbox: list[Row] = field(default_factory=list)
    counted: dict[str, Counted] = field(default_factory=dict)
    current: dict[str, str] = field(default_factory=dict)  # root id -> submission id
    fft: dict[tuple, list[int]] = field(default_factory=dict)
    prom: dict[tuple, list[int]] = field(default_factory=dict)


class FakeFundsTx:
    def __init__(self, state: FundsState) -> None:
        self.s = state

    async def grants(self, grant_ids: Sequence[str], *, lock: bool) -> dict[str, Grant]:
        return {g: self.s.grants[g] for g in grant_ids if g in self.s.grants}

    async def insert_grant(self, g: Grant, correlation_id: str) -> bool:
        if g.grant_id in self.s.grants:
            return False
        self.s.grants[g.grant_id] = g
        self.s.correlation[g.grant_id] = correlation_id
        return True

    async def save(self, g: Grant) -> None:
        self.s.grants[g.grant_id] = g

    async def add_steps(self, grant_id: str, steps: Sequence[Step]) -> None:
        self.s.steps.setdefault(grant_id, []).extend(steps)

    async def add_discrepancies(self, grant_id: str, found: Sequence[tuple[str, str]], at: datetime) -> None:
        self.s.discrepancies.extend((grant_id, tid, what) for tid, what in found)

    async def enqueue(self, rows: Sequence[Row]) -> None:
        self.s.outbox.extend(rows)

    async def counted(self, submission_ids: Sequence[str]) -> dict[str, Counted]:
        return {s: self.s.counted[s] for s in submission_ids if s in self.s.counted}

    async def current(self, root_ids: Sequence[str]) -> dict[str, Counted]:
        return {r: self.s.counted[self.s.current[r]] for r in root_ids if r in self.s.current}

    async def apply_tally(self, plan: TallyPlan) -> None:
        for sid in plan.superseded:
            root = self.s.counted[sid].root_id
            if self.s.current.get(root) == sid:
                del self.s.current[root]
        for c in plan.new:
            if c.submission_id in self.s.counted:
                raise AssertionError("a counted answer counted again")
            self.s.counted[c.submission_id] = c
            if c.submission_id in plan.current:
                if c.root_id in self.s.current:
                    raise AssertionError("two current answers to one question")
                self.s.current[c.root_id] = c.submission_id
        for table, deltas in ((self.s.fft, plan.fft), (self.s.prom, plan.prom)):
            for key, delta in deltas.items():
                row = table.setdefault(key, [0] * len(delta))
                for i, d in enumerate(delta):
                    row[i] += d


def transfers_in(rows: Iterable[Row]) -> list[tuple[TransferRequested, str]]:
    """The transfer requests among outbox rows, with the producer that sent them."""
    out = []
    for topic, _key, payload, _headers in rows:
        if topic == LEDGER_TRANSFER_REQUESTS.name:
            env = Envelope[TransferRequested].model_validate_json(payload)
            out.append((env.data, env.producer))
    return out


def grant_events(rows: Iterable[Row]) -> list[tuple[str, dict]]:
    return [(json.loads(payload)["type"], json.loads(payload)["data"]) for topic, _k, payload, _h in rows
            if topic == FUNDS_GRANTS.name]


class LedgerModel:
    """The ledger's decisions from its own pure core, kept in memory between batches."""

    def __init__(self) -> None:
        self.balances: dict[str, ledger.AccountState] = {}
        self.existing: dict[str, ledger.ExistingEntry] = {}
        self.pendings: dict[str, ledger.PendingState] = {}
        self.seq = 0
        self.head = chain.GENESIS_HASH
        self.now = T0

    def fund(self, region: str, pence: int, tid: str) -> None:
        """Money diverted into a fund (as payments' settlement does)."""
        req = TransferRequested(transfer_id=tid, legs=(Leg(account_id="commissioner:QWE", amount_pence=-pence),
                                                       Leg(account_id=f"fund:{region}", amount_pence=pence)),
                                cause=TransferCause(kind="diversion"))
        [answer] = self.post([req])
        assert answer.status == "posted", answer

    def post(self, requests: Sequence[TransferRequested], *, at: datetime | None = None) -> list[TransferPosted]:
        if at is not None:
            self.now = max(self.now, at)
        pending_ids = {r.pending_id for r in requests if r.pending_id}
        plan = ledger.plan_batch(list(requests), balances=dict(self.balances), existing=dict(self.existing),
                                 pendings={p: self.pendings[p] for p in pending_ids if p in self.pendings},
                                 head_seq=self.seq, head_hash=self.head, now=self.now)
        self._apply(plan)
        answers = [TransferPosted(transfer_id=pid, status="voided", entry_seq=seq, entry_hash=h, reason="pending expired")
                   for pid, seq, h in plan.expiries]
        for o in plan.outcomes[len(plan.outcomes) - len(requests):]:
            answers.append(TransferPosted(transfer_id=o.transfer_id, status=o.event_status, entry_seq=o.entry_seq,
                                          entry_hash=o.entry_hash if o.event_status != "rejected" else None, reason=o.reason))
        return answers

    def expire(self, at: datetime) -> list[TransferPosted]:
        self.now = max(self.now, at)
        due = [p for p in self.pendings.values() if p.status == "pending" and p.expires_at is not None and p.expires_at <= at]
        if not due:
            return []
        plan = ledger.plan_batch([ledger.Expire(p.transfer_id) for p in due], balances=dict(self.balances), existing={},
                                 pendings={p.transfer_id: p for p in due}, head_seq=self.seq, head_hash=self.head, now=self.now)
        self._apply(plan)
        return [TransferPosted(transfer_id=o.transfer_id, status="voided", entry_seq=o.entry_seq, entry_hash=o.entry_hash,
                               reason=o.reason) for o in plan.outcomes]

    def _apply(self, plan: ledger.BatchPlan) -> None:
        for e in plan.entries:
            self.existing[e.transfer_id] = ledger.ExistingEntry(e.seq, e.fingerprint, e.hash, e.request_json,
                                                                ledger.STATUS_OF_KIND[e.kind])
        for r in plan.rejections:
            self.existing[r.transfer_id] = ledger.ExistingEntry(None, r.fingerprint, None, r.request_json, "rejected", r.reason)
        for account, (p, pd, pc) in plan.deltas.items():
            b = self.balances.get(account, ledger.AccountState())
            self.balances[account] = ledger.AccountState(b.posted_pence + p, b.pending_debits_pence + pd,
                                                         b.pending_credits_pence + pc)
        for p in plan.new_pendings:
            self.pendings[p.transfer_id] = p
        for pid, (status, _seq) in plan.resolved_pendings.items():
            p = self.pendings[pid]
            self.pendings[pid] = ledger.PendingState(p.transfer_id, p.legs, p.expires_at, status)  # type: ignore[arg-type]
        if plan.entries:
            self.seq, self.head = plan.head_seq, plan.head_hash

    def balance(self, account: str) -> ledger.AccountState:
        return self.balances.get(account, ledger.AccountState())

    def available(self, account: str) -> int:
        b = self.balance(account)
        return b.posted_pence - b.pending_debits_pence

    def total(self) -> int:
        return sum(b.posted_pence for b in self.balances.values())


def later(days: int) -> date:
    return TODAY + timedelta(days=days)
