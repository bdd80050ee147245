"""The ledger's pure core: accounts, balanced journal entries, two-phase transfers, reversals,
idempotency, floors and the hash chain.

No I/O here. The store (store.py) loads what a batch needs (the balances of the accounts it
touches, the chain head, earlier decisions on the same transfer ids, the pending transfers and
originals it names), calls :func:`plan_batch` with the time to stamp, and writes what it returns
in one database transaction.

Representation
--------------
Every accepted request becomes exactly one **journal entry**, the next link in the hash chain.
An entry has a ``kind``:

- ``posted``: moves money now. Its legs change posted balances.
- ``pending``: reserves money. Its legs change only the accounts' *pending* columns: a negative
  leg adds to ``pending_debits_pence``, a positive one to ``pending_credits_pence``.
- ``post_pending``: posts a pending transfer in full or in part. Its legs carry the posted
  amounts *and* release the whole reservation (the part not posted goes back).
- ``void_pending``: releases a pending transfer's whole reservation, moving nothing.
- ``expire``: the same as ``void_pending``, written by the ledger itself when a pending
  transfer's ``timeout_s`` has passed (transfer id ``<pending_id>~expired``, which no client
  can send because ``~`` is not allowed in client ids).

So each leg is a triple ``[account_id, amount_pence, pending_pence]``: ``amount_pence`` is the
change to the posted balance (+ credit, - debit; the amounts of an entry sum to zero) and
``pending_pence`` is the change to the reservation, signed like the reserved leg when reserving
and negated when releasing (the pending amounts of a pending transfer and of its resolution sum
to zero). Together with the entry kind this gives each account's three balances exactly:
posted, pending debits, pending credits. Each leg also records the account's balances *after*
it (``balance_after_pence``, ``pending_debits_after_pence``, ``pending_credits_after_pence``),
computed here in chain order, so "balance as of T" is one index lookup and a statement's
running balance is read, not summed.

A correction is a ``posted`` entry with ``reverses`` naming the original (a ``posted`` or
``post_pending`` entry): its legs must be the exact negation of the original's posted amounts,
and an original can be reversed once.

Floors: an account with a floor (held, fund: 0) must keep ``posted - pending_debits`` at or above
it, so a pending debit reduces what is available; posting or voiding a reservation never can
break a floor.

Idempotency: the transfer id is the key. A request whose id was seen before with the same fields
(its fingerprint) gets the original decision back, including a rejection (rejections are kept,
like TigerBeetle's ``id_already_failed``, so replaying a stream can never change its outcome);
the same id with different fields is a conflict that names the fields that differ.

The canonical form of requests and entries, the hash chain and its verification live in
``chain.py``; this module decides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Literal, NamedTuple
from zoneinfo import ZoneInfo

from services.ledger.chain import (
    EXPIRY_SUFFIX,
    GENESIS_HASH,
    ChainRow,
    Command,
    Expire,
    differing_fields,
    entry_text,
    fingerprint_of,
    link,
    request_json,
    reservation_change,
)
from shared.contracts import TransferRequested
from shared.money import check
from shared.periods import period_of

__all__ = ["EXPIRY_SUFFIX", "GENESIS_HASH", "Command", "Expire"]  # re-exported: callers name commands from here

AccountType = Literal["commissioner", "provider", "held", "fund"]
EntryKind = Literal["posted", "pending", "post_pending", "void_pending", "expire"]
Status = Literal["posted", "pending", "voided", "rejected"]

# Accounts that must never go below zero: a regional fund cannot pay out money it does not hold,
# and a held account cannot release more than was held. Commissioners pay out (negative balance
# is normal: it is what they have spent); providers can be reversed below zero by an appeal
# correction only if they received the money first, so no floor is needed there.
FLOOR_PENCE: dict[str, int | None] = {"commissioner": None, "provider": None, "held": 0, "fund": 0}


# Bounds that keep every balance inside PostgreSQL's bigint: a leg moves at most £10 trillion,
# and no balance may pass ±£90 trillion (bigint holds ±£92,233 trillion).
MAX_LEG_PENCE = 10**15
MAX_BALANCE_PENCE = 9 * 10**15

# What a ledger.posted.v1 event says for an entry of each kind.
STATUS_OF_KIND: dict[str, Status] = {
    "posted": "posted",
    "pending": "pending",
    "post_pending": "posted",
    "void_pending": "voided",
    "expire": "voided",
}

# Accounting periods are calendar months in UK time: NHS finance closes its books by the month,
# and a posting at 00:30 BST on 1 November belongs to November, not to October (UTC's date).
UK = ZoneInfo("Europe/London")


def accounting_date(posted_at: datetime, value_date: date | None = None) -> date:
    """The day an entry counts in the books: its ``value_date`` when given, else the UK date it was posted."""
    return value_date if value_date is not None else posted_at.astimezone(UK).date()


def account_type(account_id: str) -> AccountType:
    kind = account_id.split(":", 1)[0]
    check(kind in FLOOR_PENCE, f"unknown account type in {account_id!r}")
    return kind  # type: ignore[return-value]


def account_floor(account_id: str) -> int | None:
    return FLOOR_PENCE[account_type(account_id)]



# ---------------------------------------------------------------------------------------------
# Inputs and outputs of plan_batch
# ---------------------------------------------------------------------------------------------
class AccountState(NamedTuple):
    posted_pence: int = 0
    pending_debits_pence: int = 0
    pending_credits_pence: int = 0


class ExistingEntry(NamedTuple):
    """An earlier decision on a transfer id: an entry (seq set) or a kept rejection (seq None)."""

    seq: int | None
    fingerprint: str
    hash: str | None
    request_json: str  # canonical request, to name the fields that differ in a conflict
    status: Status = "posted"
    reason: str | None = None


@dataclass(frozen=True)
class PendingState:
    """A pending transfer: its reserved legs, deadline and fate."""

    transfer_id: str
    legs: tuple[tuple[str, int], ...]  # the reserved (account, signed amount) pairs
    expires_at: datetime | None
    status: Literal["pending", "posted", "voided", "expired"] = "pending"


@dataclass(frozen=True)
class PostedOriginal:
    """An entry a reversal may name: its kind, posted amounts, and who reversed it (if anyone)."""

    transfer_id: str
    kind: str
    posted_legs: tuple[tuple[str, int], ...]
    reversed_by: str | None = None


class PlannedLeg(NamedTuple):
    account_id: str
    amount_pence: int
    pending_pence: int
    balance_after_pence: int
    pending_debits_after_pence: int
    pending_credits_after_pence: int


class PlannedEntry(NamedTuple):
    seq: int
    transfer_id: str
    kind: EntryKind
    fingerprint: str
    request_json: str
    legs: tuple[PlannedLeg, ...]
    posted_at: datetime
    expires_at: datetime | None
    pending_id: str | None
    reverses: str | None
    prev_hash: str
    hash: str
    accounting_date: date
    value_date: date | None = None


@dataclass(frozen=True)
class Rejection:
    transfer_id: str
    fingerprint: str
    request_json: str
    reason: str


class Outcome(NamedTuple):
    """What happened to one request.

    ``status`` is the decision now: posted, pending, voided (a new entry), rejected (refused now
    and kept), duplicate (same id, same fields: ``original_status`` says what it was), conflict
    (same id, different fields; nothing written). ``event_status`` is what ledger.posted.v1 says.
    """

    transfer_id: str
    status: Literal["posted", "pending", "voided", "duplicate", "conflict", "rejected"]
    entry_seq: int | None = None
    entry_hash: str | None = None
    reason: str | None = None
    original_status: Status | None = None

    @property
    def event_status(self) -> Status:
        if self.status == "duplicate":
            return self.original_status or "posted"
        if self.status == "conflict":
            return "rejected"
        return self.status  # type: ignore[return-value]


@dataclass
class BatchPlan:
    entries: list[PlannedEntry] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    # per account: [posted, pending debits, pending credits] changes over the whole batch
    deltas: dict[str, list[int]] = field(default_factory=dict)
    new_pendings: list[PendingState] = field(default_factory=list)
    # pending id -> (new status, seq of the entry that resolved it)
    resolved_pendings: dict[str, tuple[str, int]] = field(default_factory=dict)
    # original transfer id -> transfer id of its reversal
    reversals: dict[str, str] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    # ledger-initiated voids (lazy expiry) to announce as events: (pending_id, seq, hash)
    expiries: list[tuple[str, int, str]] = field(default_factory=list)
    head_seq: int = 0
    head_hash: str = GENESIS_HASH


class _Refused(Exception):
    pass


class _Planner:
    """The state of one ``plan_batch``: balances as the batch goes, the ids seen (stored and
    earlier in the batch), pending transfers, originals, and the plan being built."""

    def __init__(self, *, balances: Mapping[str, AccountState], existing: Mapping[str, ExistingEntry],
                 pendings: Mapping[str, PendingState], originals: Mapping[str, PostedOriginal], head_seq: int,
                 head_hash: str, stamp: datetime, closed_through: str | None) -> None:
        self.plan = BatchPlan(head_seq=head_seq, head_hash=head_hash)
        self.state: dict[str, list[int]] = {a: [s.posted_pence, s.pending_debits_pence, s.pending_credits_pence]
                                             for a, s in balances.items()}
        self.seen: dict[str, ExistingEntry] = dict(existing)
        self.pend: dict[str, PendingState] = dict(pendings)
        self.origs = originals
        self.written: dict[str, PlannedEntry] = {}  # posted and post_pending entries of this batch, for reversals
        self.stamp = stamp
        self.stamp_iso = stamp.isoformat()
        self.today = accounting_date(stamp)
        self.closed_through = closed_through

    # -- writing an entry ---------------------------------------------------------------------
    def write(self, transfer_id: str, kind: EntryKind, pending_id: str | None, reverses: str | None, body_json: str,
              fp: str, legs: list[tuple[str, int, int]], expires_at: datetime | None,
              value_date: date | None = None) -> PlannedEntry:
        plan = self.plan
        seq = plan.head_seq + 1
        legs = sorted(legs)
        reserve = kind == "pending"
        planned_legs = []
        for account, amount, pending in legs:
            s = self.state.get(account)
            if s is None:
                s = self.state[account] = [0, 0, 0]
            d = plan.deltas.get(account)
            if d is None:
                d = plan.deltas[account] = [0, 0, 0]
            d_deb, d_cred = reservation_change(reserve, pending)
            s[0] += amount
            s[1] += d_deb
            s[2] += d_cred
            d[0] += amount
            d[1] += d_deb
            d[2] += d_cred
            planned_legs.append(PlannedLeg(account, amount, pending, s[0], s[1], s[2]))
        text = entry_text(seq, transfer_id, kind, body_json, legs, self.stamp_iso, expires_at.isoformat() if expires_at else None)
        digest = link(plan.head_hash, text)
        entry = PlannedEntry(seq, transfer_id, kind, fp, body_json, tuple(planned_legs), self.stamp, expires_at,
                             pending_id, reverses, plan.head_hash, digest, value_date or self.today, value_date)
        plan.entries.append(entry)
        plan.head_seq, plan.head_hash = seq, digest
        self.seen[transfer_id] = ExistingEntry(seq, fp, digest, body_json, STATUS_OF_KIND[kind])
        return entry

    def expire(self, p: PendingState) -> PlannedEntry:
        cmd = Expire(p.transfer_id)
        body_json = request_json(cmd)
        entry = self.write(cmd.transfer_id, "expire", p.transfer_id, None, body_json, fingerprint_of(body_json),
                           [(a, 0, -amt) for a, amt in p.legs], None)
        self.pend[p.transfer_id] = PendingState(p.transfer_id, p.legs, p.expires_at, "expired")
        self.plan.resolved_pendings[p.transfer_id] = ("expired", entry.seq)
        return entry

    # -- one command each ---------------------------------------------------------------------
    def expiry(self, cmd: Expire) -> None:
        p = self.pend.get(cmd.pending_id)
        if p is not None and p.status == "pending":  # else resolved in time, or expired lazily
            entry = self.expire(p)
            self.plan.outcomes.append(Outcome(cmd.pending_id, "voided", entry.seq, entry.hash, "pending expired"))

    def request(self, req: TransferRequested) -> None:
        body_json = request_json(req)
        fp = fingerprint_of(body_json)
        tid = req.transfer_id
        prior = self.seen.get(tid)
        if prior is not None:
            self.plan.outcomes.append(_repeat(tid, prior, fp, body_json))
            return
        try:
            self.check_dated(req)
            _check_range(req, self.state)
            if req.kind == "posted":
                self.posted(req, body_json, fp)
            elif req.kind == "pending":
                self.pending(req, body_json, fp)
            else:
                self.resolve(req, body_json, fp)
        except _Refused as why:
            reason = str(why)
            self.plan.rejections.append(Rejection(tid, fp, body_json, reason))
            self.seen[tid] = ExistingEntry(None, fp, None, body_json, "rejected", reason)
            self.plan.outcomes.append(Outcome(tid, "rejected", reason=reason))

    def check_dated(self, req: TransferRequested) -> None:
        """An entry counts in the period of its accounting date, which must be open: a closed
        period's books are signed and final, so a correction posts in an open period and names
        the original (``reverses``, or the cause's note)."""
        day = accounting_date(self.stamp, req.value_date)
        if day > self.today:
            raise _Refused(f"value_date {day.isoformat()} is in the future (today is {self.today.isoformat()} in the UK)")
        if self.closed_through is not None and period_of(day) <= self.closed_through:
            raise _Refused(f"period {period_of(day)} is closed (the books are closed through {self.closed_through});"
                           " post the correction in an open period and reference the original")

    def posted(self, req: TransferRequested, body_json: str, fp: str) -> None:
        legs = [(leg.account_id, leg.amount_pence, 0) for leg in req.legs]
        if req.reverses is not None:
            _check_reversal(req, self.origs, self.written, self.plan.reversals)
        _check_floors(legs, self.state, reserve=False)
        entry = self.write(req.transfer_id, "posted", None, req.reverses, body_json, fp, legs, None, req.value_date)
        self.written[req.transfer_id] = entry
        if req.reverses is not None:
            self.plan.reversals[req.reverses] = req.transfer_id
        self.plan.outcomes.append(Outcome(req.transfer_id, "posted", entry.seq, entry.hash))

    def pending(self, req: TransferRequested, body_json: str, fp: str) -> None:
        legs = [(leg.account_id, 0, leg.amount_pence) for leg in req.legs]
        _check_floors(legs, self.state, reserve=True)
        expires_at = self.stamp + timedelta(seconds=req.timeout_s) if req.timeout_s else None
        entry = self.write(req.transfer_id, "pending", None, None, body_json, fp, legs, expires_at, req.value_date)
        p = PendingState(req.transfer_id, tuple((leg.account_id, leg.amount_pence) for leg in req.legs), expires_at)
        self.pend[req.transfer_id] = p
        self.plan.new_pendings.append(p)
        self.plan.outcomes.append(Outcome(req.transfer_id, "pending", entry.seq, entry.hash))

    def resolve(self, req: TransferRequested, body_json: str, fp: str) -> None:
        """post_pending or void_pending: resolves a pending transfer once, unless it expired."""
        check(req.pending_id is not None, "the contract requires pending_id for post_pending and void_pending")
        assert req.pending_id is not None
        p = self.pend.get(req.pending_id)
        if p is None:
            raise _Refused(f"no pending transfer {req.pending_id}")
        if p.status == "pending" and p.expires_at is not None and p.expires_at <= self.stamp:
            exp = self.expire(p)
            self.plan.expiries.append((p.transfer_id, exp.seq, exp.hash))
            p = self.pend[req.pending_id]
        if p.status == "expired":
            raise _Refused("pending expired")
        if p.status != "pending":
            raise _Refused(f"pending transfer {req.pending_id} is already {p.status}")
        if req.kind == "void_pending":
            legs = [(a, 0, -amt) for a, amt in p.legs]
            new_status = "voided"
        else:
            posted = _partial_amounts(req, p) if req.legs else dict(p.legs)
            legs = [(a, posted.get(a, 0), -amt) for a, amt in p.legs]
            new_status = "posted"
        entry = self.write(req.transfer_id, req.kind, req.pending_id, None, body_json, fp, legs, None, req.value_date)
        self.pend[p.transfer_id] = PendingState(p.transfer_id, p.legs, p.expires_at, new_status)  # type: ignore[arg-type]
        self.plan.resolved_pendings[p.transfer_id] = (new_status, entry.seq)
        if req.kind == "post_pending":
            self.written[req.transfer_id] = entry
        self.plan.outcomes.append(Outcome(req.transfer_id, STATUS_OF_KIND[req.kind], entry.seq, entry.hash))

    def finish(self) -> BatchPlan:
        plan = self.plan
        for account in plan.deltas:
            s = self.state[account]
            check(s[1] >= 0 and s[2] >= 0, f"{account}: pending amounts must never be negative")
        check(sum(d[0] for d in plan.deltas.values()) == 0, "a batch's posted changes must sum to zero")
        check(sum(d[2] - d[1] for d in plan.deltas.values()) == 0, "a batch's pending changes must sum to zero")
        return plan


def _repeat(tid: str, prior: ExistingEntry, fp: str, body_json: str) -> Outcome:
    """The same id again: the original decision when the fields match, else a conflict naming them."""
    if prior.fingerprint == fp:
        return Outcome(tid, "duplicate", prior.seq, prior.hash, prior.reason, prior.status)
    fields = differing_fields(json.loads(prior.request_json), json.loads(body_json))
    return Outcome(tid, "conflict", prior.seq, prior.hash, f"transfer_id already used with different {', '.join(fields) or 'fields'}",
                   prior.status)


def plan_batch(
    requests: Sequence[Command],
    *,
    balances: Mapping[str, AccountState],
    existing: Mapping[str, ExistingEntry],
    pendings: Mapping[str, PendingState] | None = None,
    originals: Mapping[str, PostedOriginal] | None = None,
    head_seq: int,
    head_hash: str,
    now: datetime,
    closed_through: str | None = None,
) -> BatchPlan:
    """Decide the outcome of each request in order and the entries and balance changes to write.

    - same id, same fields as an earlier decision: ``duplicate`` (the original decision);
    - same id, different fields: ``conflict`` naming the fields, nothing written;
    - a request that breaks a rule (floor, unknown or resolved pending, bad partial post, bad
      reversal): ``rejected`` with the reason, kept so a retry gets the same answer;
    - a request dated (``value_date``, else today in the UK) in the future or in a period closed
      through ``closed_through`` is ``rejected`` too;
    - otherwise the next entry in the hash chain, stamped ``now``.
    A post or void naming an expired pending first writes its expiry entry, then is refused with
    "pending expired". Balance changes are aggregated per account over the batch, so a hot
    account (a regional fund) gets one update per batch however many transfers land in it.
    """
    check(now.tzinfo is not None, "entry times must be time-zone aware")
    planner = _Planner(balances=balances, existing=existing, pendings=pendings or {}, originals=originals or {},
                       head_seq=head_seq, head_hash=head_hash, stamp=now.astimezone(timezone.utc),
                       closed_through=closed_through)
    for req in requests:
        if isinstance(req, Expire):
            planner.expiry(req)
        else:
            planner.request(req)
    return planner.finish()


def _check_range(req: TransferRequested, state: Mapping[str, list[int]]) -> None:
    for leg in req.legs:
        if abs(leg.amount_pence) > MAX_LEG_PENCE:
            raise _Refused(f"{leg.account_id}: {leg.amount_pence} pence is more than a leg may move ({MAX_LEG_PENCE})")
        s = state.get(leg.account_id)
        if s is not None and abs(s[0]) + abs(leg.amount_pence) + s[1] + s[2] > MAX_BALANCE_PENCE:
            raise _Refused(f"{leg.account_id}: the balance would leave the ledger's range (±{MAX_BALANCE_PENCE} pence)")


def _check_floors(legs: Sequence[tuple[str, int, int]], state: Mapping[str, list[int]], *, reserve: bool) -> None:
    for account, amount, pending in legs:
        reduces = amount < 0 or (reserve and pending < 0)
        if not reduces:
            continue
        floor = account_floor(account)
        if floor is None:
            continue
        s = state.get(account) or [0, 0, 0]
        available_after = s[0] + amount - s[1] + (pending if reserve and pending < 0 else 0)
        if available_after < floor:
            if reserve:
                raise _Refused(f"{account} would have {available_after} pence available, below its floor of {floor}")
            raise _Refused(f"{account} would fall to {available_after} pence, below its floor of {floor}")


def _partial_amounts(req: TransferRequested, p: PendingState) -> dict[str, int]:
    reserved = dict(p.legs)
    out: dict[str, int] = {}
    for leg in req.legs:
        r = reserved.get(leg.account_id)
        if r is None:
            raise _Refused(f"{leg.account_id} is not a leg of pending transfer {p.transfer_id}")
        if (leg.amount_pence > 0) != (r > 0):
            raise _Refused(f"{leg.account_id}: a partial post must keep the pending leg's sign")
        if abs(leg.amount_pence) > abs(r):
            raise _Refused(f"{leg.account_id}: {leg.amount_pence} pence is more than the {r} pence pending")
        out[leg.account_id] = leg.amount_pence
    return out


def _check_reversal(req: TransferRequested, origs: Mapping[str, PostedOriginal], written: Mapping[str, PlannedEntry],
                    reversed_here: Mapping[str, str]) -> None:
    assert req.reverses is not None
    here = written.get(req.reverses)
    o = origs.get(req.reverses)
    if here is not None:
        o = PostedOriginal(here.transfer_id, here.kind, tuple((leg.account_id, leg.amount_pence) for leg in here.legs))
    if o is None:
        raise _Refused(f"no posted transfer {req.reverses} to reverse")
    by = o.reversed_by or reversed_here.get(req.reverses)
    if by is not None:
        raise _Refused(f"{req.reverses} is already reversed by {by}")
    want = sorted((a, -m) for a, m in o.posted_legs if m)
    got = sorted((leg.account_id, leg.amount_pence) for leg in req.legs)
    if want != got:
        raise _Refused(f"a reversal's legs must be the exact negation of {req.reverses}'s")


def chain_row_of(e: PlannedEntry) -> ChainRow:
    return ChainRow(e.seq, e.transfer_id, e.kind, e.request_json,
                    [[leg.account_id, leg.amount_pence, leg.pending_pence, leg.balance_after_pence,
                      leg.pending_debits_after_pence, leg.pending_credits_after_pence] for leg in e.legs],
                    e.posted_at, e.expires_at, e.prev_hash, e.hash)
