"""The ledger's canonical form and hash chain (pure; no I/O).

What a request *is* (its canonical JSON, its fingerprint: the idempotency identity) and what an
entry *is* in the chain (its canonical text, hashed after the previous entry's hash), spelled
once each, for the writer (``domain.plan_batch``) and the verifier (``verify_chain``) alike.

Hash chain: ``hash = sha256(prev_hash + canonical JSON of {expires_at, kind, legs, posted_at,
request, seq, transfer_id})`` where ``request`` is the canonical client request (kind, legs,
pending_id, timeout_s, reverses, cause) and ``legs`` are ``[account_id, amount_pence,
pending_pence]`` triples sorted by account. Timestamps are inputs, so a replay with the same clock
gives the same chain. The JSON is built by hand on the hot path (each entry is hashed once when
written and once per verification); unit tests prove every hand-built piece equals ``canonical``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.contracts import TransferCause, TransferRequested

GENESIS_HASH = "0" * 64
EXPIRY_SUFFIX = "~expired"

_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode
_esc = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # C: a JSON string literal, ASCII


def canonical(value: Any) -> str:
    """The one JSON spelling hashed everywhere: sorted keys, no spaces, ASCII."""
    return _dumps(value)


def legs_json(legs: Sequence[Sequence[Any]]) -> str:
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


# TransferCause's fields in canonical (sorted) order, for cause_json.
_CAUSE_FIELDS = tuple(sorted(TransferCause.model_fields))


def cause_json(cause: TransferCause) -> str:
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
    body: dict[str, Any] = {
        "kind": req.kind,
        "legs": sorted([leg.account_id, leg.amount_pence] for leg in req.legs),
        "pending_id": req.pending_id,
        "timeout_s": req.timeout_s,
        "reverses": req.reverses,
        "cause": req.cause.model_dump(mode="json", exclude_none=True),
    }
    if req.value_date is not None:  # absent, not null, when unset: older entries hash the same
        body["value_date"] = req.value_date.isoformat()
    return body


def request_json(req: Command) -> str:
    """canonical(request_body(req)), built directly on the hot path (keys in sorted order)."""
    if isinstance(req, Expire):
        return canonical(request_body(req))
    legs = sorted((leg.account_id, leg.amount_pence) for leg in req.legs)
    return (
        '{"cause":' + cause_json(req.cause)
        + ',"kind":"' + req.kind + '","legs":' + legs_json(legs)
        + ',"pending_id":' + ("null" if req.pending_id is None else _esc(req.pending_id))
        + ',"reverses":' + ("null" if req.reverses is None else _esc(req.reverses))
        + ',"timeout_s":' + ("null" if req.timeout_s is None else str(req.timeout_s))
        + ("" if req.value_date is None else ',"value_date":"' + req.value_date.isoformat() + '"') + "}"
    )


def fingerprint_of(body_json: str) -> str:
    return hashlib.sha256(body_json.encode()).hexdigest()


def fingerprint(req: Command) -> str:
    """Hash of the fields that define a request: legs (order-free), kind, links and cause."""
    return fingerprint_of(request_json(req))


def differing_fields(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Names of top-level fields that differ between two request bodies."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


# ---------------------------------------------------------------------------------------------
# Entries: canonical text and hash
# ---------------------------------------------------------------------------------------------
def entry_text(seq: int, transfer_id: str, kind: str, request_json: str, legs: Sequence[Sequence[Any]],
               posted_at_iso: str, expires_at_iso: str | None) -> str:
    """canonical() of an entry, built around the already-canonical request so the request is
    serialised once. ISO timestamps hold nothing JSON escapes, so quoting them is canonical."""
    return (
        '{"expires_at":' + ("null" if expires_at_iso is None else '"' + expires_at_iso + '"')
        + ',"kind":"' + kind + '","legs":' + legs_json(legs)
        + ',"posted_at":"' + posted_at_iso + '","request":' + request_json
        + ',"seq":' + str(seq) + ',"transfer_id":' + _esc(transfer_id) + "}"
    )


def link(prev_hash: str, text: str) -> str:
    """The next link of the chain: SHA-256 over the previous hash and the entry's canonical text."""
    return hashlib.sha256((prev_hash + text).encode()).hexdigest()


def entry_hash(prev_hash: str, seq: int, transfer_id: str, kind: str, request_json: str, legs: Sequence[Sequence[Any]],
               posted_at: datetime, expires_at: datetime | None = None) -> str:
    return link(prev_hash, entry_text(seq, transfer_id, kind, request_json, legs, posted_at.isoformat(),
                                      expires_at.isoformat() if expires_at else None))


def reservation_change(reserve: bool, pending_pence: int) -> tuple[int, int]:
    """(change to pending debits, change to pending credits) of a leg's ``pending_pence``: a
    reserving entry (kind pending) adds a negative leg to pending debits and a positive one to
    pending credits; every other kind releases, so the signs turn over."""
    if reserve:
        return (-pending_pence if pending_pence < 0 else 0), (pending_pence if pending_pence > 0 else 0)
    return (-pending_pence if pending_pence > 0 else 0), (pending_pence if pending_pence < 0 else 0)


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
                d_deb, d_cred = reservation_change(reserve, pending)
                s[0] += amount
                s[1] += d_deb
                s[2] += d_cred
                if len(leg) >= 6 and [int(leg[3]), int(leg[4]), int(leg[5])] != s:
                    return False, row.seq, f"entry {row.seq}: stored balances after the leg on {account} are wrong"
                if s[1] < 0 or s[2] < 0:
                    return False, row.seq, f"entry {row.seq}: pending on {account} goes negative"
        prev_hash, prev_seq = row.hash, row.seq
    return True, None, f"{len(rows)} entries verified"
