"""The ledger's pure core: accounts, balanced journal entries, idempotency, floors, hash chain.

No I/O here. The store (store.py) loads the current balances, the chain head and any earlier
entries with the same transfer ids, calls :func:`plan_batch`, and writes what it returns in one
database transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from shared.contracts import TransferRequested
from shared.money import check

GENESIS_HASH = "0" * 64

AccountType = Literal["commissioner", "provider", "held", "fund"]

# Accounts that must never go below zero: a regional fund cannot pay out money it does not hold,
# and a held account cannot release more than was held. Commissioners pay out (negative balance
# is normal: it is what they have spent); providers can be reversed below zero by an appeal
# correction only if they received the money first, so no floor is needed there.
FLOOR_PENCE: dict[str, int | None] = {"commissioner": None, "provider": None, "held": 0, "fund": 0}

NORMAL_SIDE = {"commissioner": "debit", "provider": "credit", "held": "credit", "fund": "credit"}


def account_type(account_id: str) -> AccountType:
    kind = account_id.split(":", 1)[0]
    check(kind in FLOOR_PENCE, f"unknown account type in {account_id!r}")
    return kind  # type: ignore[return-value]


def account_floor(account_id: str) -> int | None:
    return FLOOR_PENCE[account_type(account_id)]


def fingerprint(req: TransferRequested) -> str:
    """Hash of the fields that define a transfer: legs (order-free) and cause."""
    body = {
        "legs": sorted((leg.account_id, leg.amount_pence) for leg in req.legs),
        "cause": req.cause.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def differing_fields(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Names of top-level fields that differ between two stored transfer bodies."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def transfer_body(req: TransferRequested) -> dict[str, Any]:
    return {
        "legs": sorted([leg.account_id, leg.amount_pence] for leg in req.legs),
        "cause": req.cause.model_dump(mode="json"),
    }


def entry_hash(prev_hash: str, seq: int, transfer_id: str, body: Mapping[str, Any], posted_at: datetime) -> str:
    """SHA-256 over the previous hash and this entry's canonical content."""
    canonical = json.dumps(
        {
            "seq": seq,
            "transfer_id": transfer_id,
            "legs": body["legs"],
            "cause": body["cause"],
            "posted_at": posted_at.isoformat(),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


@dataclass(frozen=True)
class ExistingEntry:
    seq: int
    fingerprint: str
    hash: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class PlannedEntry:
    seq: int
    transfer_id: str
    fingerprint: str
    body: dict[str, Any]
    posted_at: datetime
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class Outcome:
    transfer_id: str
    status: Literal["posted", "duplicate", "conflict", "rejected"]
    entry_seq: int | None = None
    entry_hash: str | None = None
    reason: str | None = None


@dataclass
class BatchPlan:
    entries: list[PlannedEntry] = field(default_factory=list)
    deltas_pence: dict[str, int] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    head_seq: int = 0
    head_hash: str = GENESIS_HASH


def plan_batch(
    requests: Sequence[TransferRequested],
    *,
    balances_pence: Mapping[str, int],
    existing: Mapping[str, ExistingEntry],
    head_seq: int,
    head_hash: str,
    posted_at: datetime,
) -> BatchPlan:
    """Decide the outcome of each request in order and the entries and balance deltas to write.

    - a transfer id seen before with the same fingerprint is a duplicate: a success, nothing written;
    - the same id with a different fingerprint is a conflict, nothing written;
    - a transfer that would take an account below its floor is rejected, nothing written;
    - otherwise it is posted as the next entry in the hash chain.
    Balance deltas are aggregated per account over the whole batch, so a hot account (a regional
    fund) gets one update per batch however many transfers land in it.
    """
    plan = BatchPlan(head_seq=head_seq, head_hash=head_hash)
    running = dict(balances_pence)
    seen: dict[str, ExistingEntry] = dict(existing)
    for req in requests:
        fp = fingerprint(req)
        prior = seen.get(req.transfer_id)
        if prior is not None:
            if prior.fingerprint == fp:
                plan.outcomes.append(Outcome(req.transfer_id, "duplicate", prior.seq, prior.hash))
            else:
                fields = differing_fields(prior.body, transfer_body(req))
                plan.outcomes.append(
                    Outcome(
                        req.transfer_id,
                        "conflict",
                        prior.seq,
                        prior.hash,
                        reason=f"transfer_id already used with different {', '.join(fields) or 'fields'}",
                    )
                )
            continue
        breach = _floor_breach(req, running)
        if breach:
            plan.outcomes.append(Outcome(req.transfer_id, "rejected", reason=breach))
            continue
        seq = plan.head_seq + 1
        body = transfer_body(req)
        digest = entry_hash(plan.head_hash, seq, req.transfer_id, body, posted_at)
        entry = PlannedEntry(seq, req.transfer_id, fp, body, posted_at, plan.head_hash, digest)
        plan.entries.append(entry)
        for leg in req.legs:
            running[leg.account_id] = running.get(leg.account_id, 0) + leg.amount_pence
            plan.deltas_pence[leg.account_id] = plan.deltas_pence.get(leg.account_id, 0) + leg.amount_pence
        plan.head_seq, plan.head_hash = seq, digest
        seen[req.transfer_id] = ExistingEntry(seq, fp, digest, body)
        plan.outcomes.append(Outcome(req.transfer_id, "posted", seq, digest))
    check(sum(plan.deltas_pence.values()) == 0, "a batch's balance deltas must sum to zero")
    return plan


def _floor_breach(req: TransferRequested, running: Mapping[str, int]) -> str | None:
    for leg in req.legs:
        floor = account_floor(leg.account_id)
        if floor is None or leg.amount_pence >= 0:
            continue
        after = running.get(leg.account_id, 0) + leg.amount_pence
        if after < floor:
            return f"{leg.account_id} would fall to {after} pence, below its floor of {floor}"
    return None


@dataclass(frozen=True)
class ChainRow:
    seq: int
    transfer_id: str
    body: Mapping[str, Any]
    posted_at: datetime
    prev_hash: str
    hash: str


def verify_chain(rows: Sequence[ChainRow], *, start_hash: str = GENESIS_HASH, start_seq: int = 0) -> tuple[bool, int | None, str]:
    """Recompute the chain; returns (ok, first bad seq or None, explanation)."""
    prev_hash, prev_seq = start_hash, start_seq
    for row in rows:
        if row.seq != prev_seq + 1:
            return False, row.seq, f"gap: entry {row.seq} follows {prev_seq}"
        if row.prev_hash != prev_hash:
            return False, row.seq, f"entry {row.seq} does not link to the hash of entry {prev_seq}"
        legs_sum = sum(int(amount) for _account, amount in row.body["legs"])
        if legs_sum != 0:
            return False, row.seq, f"entry {row.seq} does not balance ({legs_sum} pence)"
        expected = entry_hash(prev_hash, row.seq, row.transfer_id, row.body, row.posted_at)
        if expected != row.hash:
            return False, row.seq, f"entry {row.seq} content does not match its hash"
        prev_hash, prev_seq = row.hash, row.seq
    return True, None, f"{len(rows)} entries verified"
