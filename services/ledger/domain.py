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

Hash chain: ``hash = sha256(prev_hash + canonical JSON of {seq, transfer_id, kind, request,
legs, posted_at, expires_at})`` where ``request`` is the canonical client request (kind, legs,
pending_id, timeout_s, reverses, cause). Timestamps are inputs, so a replay with the same clock
gives the same chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, NamedTuple

from shared.contracts import TransferCause, TransferRequested
from shared.money import check

GENESIS_HASH = "0" * 64
EXPIRY_SUFFIX = "~expired"

AccountType = Literal["commissioner", "provider", "held", "fund"]
EntryKind = Literal["posted", "pending", "post_pending", "void_pending", "expire"]
Status = Literal["posted", "pending", "voided", "rejected"]

# Accounts that must never go below zero: a regional fund cannot pay out money it does not hold,
# and a held account cannot release more than was held. Commissioners pay out (negative balance
# is normal: it is what they have spent); providers can be reversed below zero by an appeal
# correction only if they received the money first, so no floor is needed there.
FLOOR_PENCE: dict[str, int | None] = {"commissioner": None, "provider": None, "held": 0, "fund": 0}

NORMAL_SIDE = {"commissioner": "debit", "provider": "credit", "held": "credit", "fund": "credit"}

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

_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode
_esc = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # C: a JSON string literal, ASCII


def canonical(value: Any) -> str:
    """The one JSON spelling hashed everywhere: sorted keys, no spaces, ASCII."""
    return _dumps(value)


def _legs_json(legs: Sequence[Sequence[Any]]) -> str:
    """canonical() of a list of [account, int, ...] lists, built directly (hot path: twice per entry)."""
    parts = []
    for leg in legs:
        if len(leg) == 2:  # a request's (account, amount)
            parts.append(f"[{_esc(leg[0])},{int(leg[1])}]")
        elif len(leg) == 3:  # an entry's (account, amount, pending)
            parts.append(f"[{_esc(leg[0])},{int(leg[1])},{int(leg[2])}]")
        else:
            parts.append("[" + _esc(leg[0]) + "," + ",".join(str(int(x)) for x in leg[1:]) + "]")
    return "[" + ",".join(parts) + "]"


# TransferCause's fields in canonical (sorted) order, for _cause_json.
_CAUSE_FIELDS = tuple(sorted(TransferCause.model_fields))


def _cause_json(cause: TransferCause) -> str:
    """canonical(cause.model_dump(mode="json", exclude_none=True)), built directly (hot path).

    Strings and ints spell the same in both; any other type takes the general path, so a field
    added to the contract later cannot make the two disagree.
    """
    parts = []
    for name in _CAUSE_FIELDS:
        value = getattr(cause, name)
        if value is None:
            continue
        kind = type(value)
        if kind is str:
            parts.append(f'"{name}":{_esc(value)}')
        elif kind is int:
            parts.append(f'"{name}":{value}')
        else:
            return _dumps(cause.model_dump(mode="json", exclude_none=True))
    return "{" + ",".join(parts) + "}"


def request_json(req: "Command") -> str:
    """canonical(request_body(req)), built directly on the hot path (keys in sorted order).

    A unit test checks it equals the general form for every kind of request.
    """
    if isinstance(req, Expire):
        return canonical(request_body(req))
    legs = sorted((leg.account_id, leg.amount_pence) for leg in req.legs)
    return (
        '{"cause":' + _cause_json(req.cause)
        + ',"kind":"' + req.kind + '","legs":' + _legs_json(legs)
        + ',"pending_id":' + ("null" if req.pending_id is None else _esc(req.pending_id))
        + ',"reverses":' + ("null" if req.reverses is None else _esc(req.reverses))
        + ',"timeout_s":' + ("null" if req.timeout_s is None else str(req.timeout_s)) + "}"
    )


def account_type(account_id: str) -> AccountType:
    kind = account_id.split(":", 1)[0]
    check(kind in FLOOR_PENCE, f"unknown account type in {account_id!r}")
    return kind  # type: ignore[return-value]


def account_floor(account_id: str) -> int | None:
    return FLOOR_PENCE[account_type(account_id)]


# ---------------------------------------------------------------------------------------------
# Requests: canonical form, fingerprint, differing fields
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expire:
    """An internal command: void pending transfer ``pending_id`` because its timeout passed."""

    pending_id: str

    @property
    def transfer_id(self) -> str:
        return self.pending_id + EXPIRY_SUFFIX


Command = TransferRequested | Expire


def request_body(req: Command) -> dict[str, Any]:
    """The fields that define a request (its idempotency identity), canonical and order-free.

    ``ordering_key`` is routing, not content, and is left out.
    """
    if isinstance(req, Expire):
        return {"kind": "expire", "legs": [], "pending_id": req.pending_id, "timeout_s": None, "reverses": None,
                "cause": {"kind": "expiry"}}
    return {
        "kind": req.kind,
        "legs": sorted([leg.account_id, leg.amount_pence] for leg in req.legs),
        "pending_id": req.pending_id,
        "timeout_s": req.timeout_s,
        "reverses": req.reverses,
        "cause": req.cause.model_dump(mode="json", exclude_none=True),
    }


# Kept for callers that only need legs and cause (older name).
transfer_body = request_body


def fingerprint_of(body_json: str) -> str:
    return hashlib.sha256(body_json.encode()).hexdigest()


def fingerprint(req: Command) -> str:
    """Hash of the fields that define a request: legs (order-free), kind, links and cause."""
    return fingerprint_of(request_json(req))


def differing_fields(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Names of top-level fields that differ between two request bodies."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


# ---------------------------------------------------------------------------------------------
# Hash chain
# ---------------------------------------------------------------------------------------------
def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.isoformat()


def entry_canonical(seq: int, transfer_id: str, kind: str, request_json: str, legs: Sequence[Sequence[Any]],
                    posted_at: datetime, expires_at: datetime | None) -> str:
    # Built by hand around the already-canonical request so the request is serialised once.
    return (
        '{"expires_at":' + canonical(_iso(expires_at))
        + ',"kind":' + canonical(kind)
        + ',"legs":' + _legs_json(legs)
        + ',"posted_at":' + canonical(_iso(posted_at))
        + ',"request":' + request_json
        + ',"seq":' + str(seq)
        + ',"transfer_id":' + _esc(transfer_id) + "}"
    )


def entry_hash(prev_hash: str, seq: int, transfer_id: str, kind: str, request_json: str, legs: Sequence[Sequence[Any]],
               posted_at: datetime, expires_at: datetime | None = None) -> str:
    """SHA-256 over the previous hash and this entry's canonical content."""
    text = entry_canonical(seq, transfer_id, kind, request_json, legs, posted_at, expires_at)
    return hashlib.sha256((prev_hash + text).encode()).hexdigest()


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

    @property
    def request(self) -> dict[str, Any]:
        return json.loads(self.request_json)  # type: ignore[no-any-return]

    @property
    def leg_triples(self) -> list[list[Any]]:
        return [[leg.account_id, leg.amount_pence, leg.pending_pence] for leg in self.legs]


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

    @property
    def deltas_pence(self) -> dict[str, int]:
        """Posted balance changes per account touched by the batch's entries."""
        return {a: d[0] for a, d in self.deltas.items()}


class _Refused(Exception):
    pass


def plan_batch(
    requests: Sequence[Command],
    *,
    balances: Mapping[str, AccountState] | None = None,
    balances_pence: Mapping[str, int] | None = None,
    existing: Mapping[str, ExistingEntry],
    pendings: Mapping[str, PendingState] | None = None,
    originals: Mapping[str, PostedOriginal] | None = None,
    head_seq: int,
    head_hash: str,
    now: datetime | None = None,
    posted_at: datetime | None = None,
) -> BatchPlan:
    """Decide the outcome of each request in order and the entries and balance changes to write.

    - same id, same fields as an earlier decision: ``duplicate`` (the original decision);
    - same id, different fields: ``conflict`` naming the fields, nothing written;
    - a request that breaks a rule (floor, unknown or resolved pending, bad partial post, bad
      reversal): ``rejected`` with the reason, kept so a retry gets the same answer;
    - otherwise the next entry in the hash chain, stamped ``now``.
    A post or void naming an expired pending first writes its expiry entry, then is refused with
    "pending expired". Balance changes are aggregated per account over the batch, so a hot
    account (a regional fund) gets one update per batch however many transfers land in it.
    """
    stamp = now if now is not None else posted_at
    check(stamp is not None, "plan_batch needs the time to stamp entries")
    assert stamp is not None
    check(stamp.tzinfo is not None, "entry times must be time-zone aware")
    stamp = stamp.astimezone(timezone.utc)
    plan = BatchPlan(head_seq=head_seq, head_hash=head_hash)
    state: dict[str, list[int]] = {}
    if balances:
        for a, s in balances.items():
            state[a] = [s.posted_pence, s.pending_debits_pence, s.pending_credits_pence]
    if balances_pence:
        for a, p in balances_pence.items():
            state.setdefault(a, [0, 0, 0])[0] = p
    seen: dict[str, ExistingEntry] = dict(existing)
    pend: dict[str, PendingState] = dict(pendings or {})
    origs: Mapping[str, PostedOriginal] = originals or {}
    written: dict[str, PlannedEntry] = {}  # posted and post_pending entries of this batch, for reversals
    stamp_iso = stamp.isoformat()

    def write(transfer_id: str, kind: EntryKind, pending_id: str | None, reverses: str | None, body_json: str, fp: str,
              legs: list[tuple[str, int, int]], expires_at: datetime | None) -> PlannedEntry:
        seq = plan.head_seq + 1
        planned_legs = []
        legs = sorted(legs)
        reserve = kind == "pending"
        for account, amount, pending in legs:
            s = state.get(account)
            if s is None:
                s = state[account] = [0, 0, 0]
            d = plan.deltas.get(account)
            if d is None:
                d = plan.deltas[account] = [0, 0, 0]
            d_deb = (-pending if pending < 0 else 0) if reserve else (-pending if pending > 0 else 0)
            d_cred = (pending if pending > 0 else 0) if reserve else (pending if pending < 0 else 0)
            s[0] += amount
            s[1] += d_deb
            s[2] += d_cred
            d[0] += amount
            d[1] += d_deb
            d[2] += d_cred
            planned_legs.append(PlannedLeg(account, amount, pending, s[0], s[1], s[2]))
        text = (
            '{"expires_at":' + ('"' + expires_at.isoformat() + '"' if expires_at else "null")
            + ',"kind":"' + kind + '","legs":' + _legs_json(legs)
            + ',"posted_at":"' + stamp_iso + '","request":' + body_json
            + ',"seq":' + str(seq) + ',"transfer_id":' + _esc(transfer_id) + "}"
        )
        digest = hashlib.sha256((plan.head_hash + text).encode()).hexdigest()
        entry = PlannedEntry(seq, transfer_id, kind, fp, body_json, tuple(planned_legs), stamp, expires_at,
                             pending_id, reverses, plan.head_hash, digest)
        plan.entries.append(entry)
        plan.head_seq, plan.head_hash = seq, digest
        seen[transfer_id] = ExistingEntry(seq, fp, digest, body_json, STATUS_OF_KIND[kind])
        return entry

    def expire(p: PendingState) -> PlannedEntry:
        cmd = Expire(p.transfer_id)
        body_json = request_json(cmd)
        entry = write(cmd.transfer_id, "expire", p.transfer_id, None, body_json, fingerprint_of(body_json),
                      [(a, 0, -amt) for a, amt in p.legs], None)
        pend[p.transfer_id] = PendingState(p.transfer_id, p.legs, p.expires_at, "expired")
        plan.resolved_pendings[p.transfer_id] = ("expired", entry.seq)
        return entry

    for req in requests:
        if isinstance(req, Expire):
            p = pend.get(req.pending_id)
            if p is not None and p.status == "pending":  # else resolved in time, or expired lazily
                entry = expire(p)
                plan.outcomes.append(Outcome(req.pending_id, "voided", entry.seq, entry.hash, "pending expired"))
            continue
        body_json = request_json(req)
        fp = fingerprint_of(body_json)
        tid = req.transfer_id
        prior = seen.get(tid)
        if prior is not None:
            if prior.fingerprint == fp:
                plan.outcomes.append(Outcome(tid, "duplicate", prior.seq, prior.hash, prior.reason, prior.status))
            else:
                fields = differing_fields(json.loads(prior.request_json), json.loads(body_json))
                plan.outcomes.append(Outcome(tid, "conflict", prior.seq, prior.hash,
                                             f"transfer_id already used with different {', '.join(fields) or 'fields'}",
                                             prior.status))
            continue
        try:
            _check_range(req, state)
            kind = req.kind
            if kind == "posted":
                legs = [(leg.account_id, leg.amount_pence, 0) for leg in req.legs]
                if req.reverses is not None:
                    _check_reversal(req, origs, written, plan.reversals)
                _check_floors(legs, state, reserve=False)
                entry = write(tid, "posted", None, req.reverses, body_json, fp, legs, None)
                written[tid] = entry
                if req.reverses is not None:
                    plan.reversals[req.reverses] = tid
                plan.outcomes.append(Outcome(tid, "posted", entry.seq, entry.hash))
            elif kind == "pending":
                legs = [(leg.account_id, 0, leg.amount_pence) for leg in req.legs]
                _check_floors(legs, state, reserve=True)
                expires_at = stamp + timedelta(seconds=req.timeout_s) if req.timeout_s else None
                entry = write(tid, "pending", None, None, body_json, fp, legs, expires_at)
                p = PendingState(tid, tuple((leg.account_id, leg.amount_pence) for leg in req.legs), expires_at)
                pend[tid] = p
                plan.new_pendings.append(p)
                plan.outcomes.append(Outcome(tid, "pending", entry.seq, entry.hash))
            else:  # post_pending, void_pending
                assert req.pending_id is not None
                p = pend.get(req.pending_id)
                if p is None:
                    raise _Refused(f"no pending transfer {req.pending_id}")
                if p.status == "pending" and p.expires_at is not None and p.expires_at <= stamp:
                    exp = expire(p)
                    plan.expiries.append((p.transfer_id, exp.seq, exp.hash))
                    p = pend[req.pending_id]
                if p.status == "expired":
                    raise _Refused("pending expired")
                if p.status != "pending":
                    raise _Refused(f"pending transfer {req.pending_id} is already {p.status}")
                if kind == "void_pending":
                    legs = [(a, 0, -amt) for a, amt in p.legs]
                    new_status = "voided"
                else:
                    posted = _partial_amounts(req, p) if req.legs else dict(p.legs)
                    legs = [(a, posted.get(a, 0), -amt) for a, amt in p.legs]
                    new_status = "posted"
                entry = write(tid, kind, req.pending_id, None, body_json, fp, legs, None)
                pend[p.transfer_id] = PendingState(p.transfer_id, p.legs, p.expires_at, new_status)  # type: ignore[arg-type]
                plan.resolved_pendings[p.transfer_id] = (new_status, entry.seq)
                if kind == "post_pending":
                    written[tid] = entry
                plan.outcomes.append(Outcome(tid, STATUS_OF_KIND[kind], entry.seq, entry.hash))
        except _Refused as why:
            reason = str(why)
            plan.rejections.append(Rejection(tid, fp, body_json, reason))
            seen[tid] = ExistingEntry(None, fp, None, body_json, "rejected", reason)
            plan.outcomes.append(Outcome(tid, "rejected", reason=reason))
    for account, d in plan.deltas.items():
        s = state[account]
        check(s[1] >= 0 and s[2] >= 0, f"{account}: pending amounts must never be negative")
    check(sum(d[0] for d in plan.deltas.values()) == 0, "a batch's posted changes must sum to zero")
    check(sum(d[2] - d[1] for d in plan.deltas.values()) == 0, "a batch's pending changes must sum to zero")
    return plan


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


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChainRow:
    seq: int
    transfer_id: str
    kind: str
    request_json: str
    legs: Sequence[Sequence[Any]]  # [account_id, amount_pence, pending_pence, balance_after, pdeb_after, pcred_after]
    posted_at: datetime
    expires_at: datetime | None
    prev_hash: str
    hash: str


def chain_row_of(e: PlannedEntry) -> ChainRow:
    return ChainRow(e.seq, e.transfer_id, e.kind, e.request_json,
                    [[leg.account_id, leg.amount_pence, leg.pending_pence, leg.balance_after_pence,
                      leg.pending_debits_after_pence, leg.pending_credits_after_pence] for leg in e.legs],
                    e.posted_at, e.expires_at, e.prev_hash, e.hash)


def verify_chain(rows: Sequence[ChainRow], *, start_hash: str = GENESIS_HASH, start_seq: int = 0,
                 running: dict[str, list[int]] | None = None) -> tuple[bool, int | None, str]:
    """Recompute the chain and the per-leg balances; returns (ok, first bad seq or None, why).

    ``running`` carries each account's [posted, pending debits, pending credits] across pages;
    when given, the stored balances after each leg are checked against the recomputed ones.
    """
    prev_hash, prev_seq = start_hash, start_seq
    for row in rows:
        if row.seq != prev_seq + 1:
            return False, row.seq, f"gap: entry {row.seq} follows {prev_seq}"
        if row.prev_hash != prev_hash:
            return False, row.seq, f"entry {row.seq} does not link to the hash of entry {prev_seq}"
        amount_sum = sum(int(leg[1]) for leg in row.legs)
        if amount_sum != 0:
            return False, row.seq, f"entry {row.seq} does not balance ({amount_sum} pence)"
        triples = [[leg[0], int(leg[1]), int(leg[2])] for leg in row.legs]
        expected = entry_hash(prev_hash, row.seq, row.transfer_id, row.kind, row.request_json, triples,
                              row.posted_at, row.expires_at)
        if expected != row.hash:
            return False, row.seq, f"entry {row.seq} content does not match its hash"
        if running is not None:
            reserve = row.kind == "pending"
            for leg in row.legs:
                account, amount, pending = leg[0], int(leg[1]), int(leg[2])
                s = running.setdefault(account, [0, 0, 0])
                s[0] += amount
                s[1] += (-pending if pending < 0 else 0) if reserve else (-pending if pending > 0 else 0)
                s[2] += (pending if pending > 0 else 0) if reserve else (pending if pending < 0 else 0)
                if len(leg) >= 6 and [int(leg[3]), int(leg[4]), int(leg[5])] != s:
                    return False, row.seq, f"entry {row.seq}: stored balances after the leg on {account} are wrong"
                if s[1] < 0 or s[2] < 0:
                    return False, row.seq, f"entry {row.seq}: pending on {account} goes negative"
        prev_hash, prev_seq = row.hash, row.seq
    return True, None, f"{len(rows)} entries verified"
