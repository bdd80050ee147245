"""Closing an accounting period (pure; no I/O): when a month may close, the statement it leaves,
and the statement's signature.

Periods are UK calendar months (``domain.accounting_date``). They close in order, each once, and
only after they have ended. Closing is two steps so that the writer is never held up by it:
1. under the chain head's lock, ``closed_through`` moves to the period: from then on the core
   refuses every request dated in it, so the set of entries counting in the period is final
   (all of them are at or before the chain head recorded here);
2. outside the lock, the period's totals are read, the statement is built, signed and stored.
A crash between the two leaves the period closed without a statement; closing it again finishes
step 2 (the totals cannot have changed).

The statement is canonical JSON (sorted keys, no spaces, ASCII), signed with Ed25519 over its
exact bytes. It carries the chain head (so an auditor holding the journal can check the statement
against the hash chain), the previous statement's SHA-256 (so statements form a chain of their
own), and per account the opening balance, debits, credits and closing balance by accounting
date. An auditor verifies it offline with ``python -m services.ledger verify-statement`` or with
``openssl pkeyutl -verify -rawin`` (README "Close a period").
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.ledger.domain import account_type
from shared.money import InvariantError, check
from shared.periods import next_period, period_dates, period_of

STATEMENT_KIND = "patient-power ledger period statement"
STATEMENT_VERSION = 1
ALGORITHM = "Ed25519"


class CloseRefused(Exception):
    """A period that may not close now (409), with the reason."""


def may_close(period: str, *, closed_through: str | None, today: date) -> None:
    """Raises CloseRefused unless ``period`` is the next one to close and has ended (UK date)."""
    if period >= period_of(today):
        raise CloseRefused(f"period {period} has not ended yet (today is {today.isoformat()} in the UK)")
    if closed_through is not None:
        if period <= closed_through:
            raise CloseRefused(f"period {period} is already closed (closed through {closed_through})")
        expected = next_period(closed_through)
        if period != expected:
            raise CloseRefused(f"periods close in order: the next to close is {expected}, not {period}")


@dataclass(frozen=True)
class Movement:
    """One account's posted movements in the period (by accounting date)."""

    account_id: str
    debits_pence: int   # the sum of its negative amounts, as a negative number
    credits_pence: int  # the sum of its positive amounts


def build_statement(*, period: str, closed_through_before: str | None, closed_at: datetime, closed_by: str,
                    head_seq: int, head_hash: str, entries: int, movements: Iterable[Movement],
                    previous: Mapping[str, Any] | None, previous_sha256: str | None, key_id: str) -> dict[str, Any]:
    """The period statement. ``previous`` is the parsed statement of the period before (its closing
    balances are this one's opening balances); None for the first close, which covers every entry
    dated up to the end of ``period`` (opening balances zero)."""
    check((previous is None) == (closed_through_before is None), "a previous statement exists exactly when a period was closed")
    opening: dict[str, int] = {}
    if previous is not None:
        check(previous["period"] == closed_through_before, "the previous statement is the last closed period's")
        opening = {a["account_id"]: int(a["closing_pence"]) for a in previous["accounts"]}
    moved = {m.account_id: m for m in movements}
    accounts = []
    by_type: dict[str, dict[str, int]] = {}
    for account_id in sorted(opening.keys() | moved.keys()):
        m = moved.get(account_id, Movement(account_id, 0, 0))
        check(m.debits_pence <= 0 <= m.credits_pence, f"{account_id}: debits are negative, credits positive")
        o = opening.get(account_id, 0)
        line = {"account_id": account_id, "opening_pence": o, "debits_pence": m.debits_pence,
                "credits_pence": m.credits_pence, "closing_pence": o + m.debits_pence + m.credits_pence}
        accounts.append(line)
        t = by_type.setdefault(account_type(account_id), {"opening_pence": 0, "debits_pence": 0, "credits_pence": 0,
                                                          "closing_pence": 0, "accounts": 0})
        for k in ("opening_pence", "debits_pence", "credits_pence", "closing_pence"):
            t[k] += line[k]
        t["accounts"] += 1
    debits = sum(a["debits_pence"] for a in accounts)
    credits = sum(a["credits_pence"] for a in accounts)
    closing = sum(a["closing_pence"] for a in accounts)
    # Double entry: every entry balances, so the period's debits and credits cancel and the
    # balances sum to zero. A statement that says otherwise is never signed.
    if debits + credits != 0 or closing != 0:
        raise InvariantError(f"period {period} does not balance: debits {debits}, credits {credits}, closing {closing}")
    first, end = period_dates(period)
    return {
        "statement": STATEMENT_KIND,
        "version": STATEMENT_VERSION,
        "period": period,
        "covers": {"from": None if previous is None else first.isoformat(), "through": date.fromordinal(end.toordinal() - 1).isoformat(),
                   "by": "accounting date (UK): value_date, else the day posted"},
        "closed_at": closed_at.isoformat(),
        "closed_by": closed_by,
        "chain_head": {"seq": head_seq, "hash": head_hash},
        "previous": None if previous is None else {"period": previous["period"], "statement_sha256": previous_sha256},
        "entries": entries,
        "totals": {"debits_pence": debits, "credits_pence": credits, "closing_pence": closing, "by_type": by_type},
        "accounts": accounts,
        "signature": {"algorithm": ALGORITHM, "key_id": key_id},
    }


def canonical_bytes(statement: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed and served."""
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Keys and signatures
# ---------------------------------------------------------------------------------------------
def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(pem: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS#8, e.g. ``openssl genpkey -algorithm ed25519``)."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"the statement signing key is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the statement signing key must be an Ed25519 key")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the public key must be an Ed25519 key")
    return key


# A fixed development key: statements signed with it prove nothing, and production mode refuses
# to start without a real key (shared/security.py).
DEV_SEED = hashlib.sha256(b"patient-power development statement key: not for production").digest()


def dev_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(DEV_SEED)


@dataclass(frozen=True)
class Signer:
    key: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return key_id_of(self.key.public_key())

    @property
    def public_pem(self) -> bytes:
        return public_pem(self.key.public_key())

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    statement: dict[str, Any] | None = None


def verify_statement(data: bytes, signature: bytes, public_key: Ed25519PublicKey) -> Verdict:
    """Offline verification: the signature is over exactly these bytes, which are the canonical
    form of a statement (so no byte of the file can change unnoticed, whitespace included)."""
    if len(signature) != 64:
        try:  # accept the base64 spelling too (as the API's header gives it)
            signature = base64.b64decode(signature, validate=True)
        except ValueError:
            return Verdict(False, "the signature is neither 64 raw bytes nor base64")
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return Verdict(False, "the signature does not match the statement (changed, or signed by another key)")
    try:
        statement = json.loads(data)
    except ValueError:
        return Verdict(False, "the statement is not JSON")
    if not isinstance(statement, dict) or statement.get("statement") != STATEMENT_KIND:
        return Verdict(False, "the signed document is not a period statement")
    if canonical_bytes(statement) != data:
        return Verdict(False, "the statement is not in canonical form")
    if statement.get("signature", {}).get("key_id") != key_id_of(public_key):
        return Verdict(False, "the statement names another signing key")
    return Verdict(True, f"period {statement['period']} statement verifies: chain head {statement['chain_head']['seq']}"
                         f" {statement['chain_head']['hash']}, {len(statement['accounts'])} accounts", statement)
