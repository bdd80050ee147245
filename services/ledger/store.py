"""The ledger's PostgreSQL adapter: posts batches atomically, answers balance queries, verifies.

One transaction per batch. The chain head row is locked FOR UPDATE first, which makes the ledger
single-writer on the chain (entries get gap-free sequence numbers and each links to the one
before) while readers are never blocked. Everything a batch writes goes in with COPY or one
set-based statement per table (no per-row round trips): entries, legs, kept rejections, new
pending transfers, resolved pendings, one balance update per touched account (a hot regional
fund gets one UPDATE per batch however many transfers land in it), the chain head, and the
ledger.posted.v1 events into the outbox.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import asyncpg

from services.ledger import domain
from shared.contracts import TransferRequested
from shared.topics import LEDGER_POSTED

PRODUCER = "ledger"
_esc = json.encoder.encode_basestring_ascii  # C-accelerated JSON string quoting


@dataclass(frozen=True)
class Submitted:
    """A transfer request with the envelope fields the ledger keeps for tracing."""

    request: TransferRequested
    correlation_id: str
    causation_id: str | None


async def post_batch(pool: asyncpg.Pool, batch: Sequence[Submitted], *, now: datetime | None = None) -> list[domain.Outcome]:
    """Decide and write a batch in one transaction; one outcome per submitted request, in order."""
    if not batch:
        return []
    async with pool.acquire() as conn:
        async with conn.transaction():
            return await post(conn, batch, now=now)


async def post(conn: asyncpg.Connection, batch: Sequence[Submitted], *, now: datetime | None = None) -> list[domain.Outcome]:
    """Decide and write a batch in the caller's transaction; one outcome per request, in order."""
    if not batch:
        return []
    outcomes, _ = await _apply(conn, list(batch), [], now=now)
    return outcomes


async def pending_accounts(conn: asyncpg.Connection, pending_id: str) -> list[str]:
    """The accounts a pending transfer reserved on (empty if there is no such pending transfer)."""
    legs = await conn.fetchval("SELECT legs::text FROM pending_transfers WHERE transfer_id = $1", pending_id)
    return [a for a, _ in json.loads(legs)] if legs else []


async def expire_due(pool: asyncpg.Pool, *, limit: int = 500, now: datetime | None = None) -> list[domain.Outcome]:
    """Void up to ``limit`` pending transfers whose timeout has passed, as chain entries."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            head = await conn.fetchrow("SELECT seq, hash, posted_at FROM chain_head WHERE id = 1 FOR UPDATE")
            stamp = _stamp(head, now)
            due = await conn.fetch(
                "SELECT transfer_id FROM pending_transfers WHERE status = 'pending' AND expires_at <= $1"
                " ORDER BY expires_at, transfer_id LIMIT $2",
                stamp,
                limit,
            )
            if not due:
                return []
            _, expired = await _apply(conn, [], [domain.Expire(r["transfer_id"]) for r in due], now=stamp, head=head)
    return expired


def _stamp(head: asyncpg.Record, now: datetime | None) -> datetime:
    # posted_at never goes backwards along the chain, so as-of queries agree with seq order.
    stamp = now or datetime.now(timezone.utc)
    return max(stamp, head["posted_at"]) if head["posted_at"] is not None else stamp


async def _apply(conn: asyncpg.Connection, batch: list[Submitted], expiries: list[domain.Expire], *,
                 now: datetime | None, head: asyncpg.Record | None = None) -> tuple[list[domain.Outcome], list[domain.Outcome]]:
    if head is None:
        head = await conn.fetchrow("SELECT seq, hash, posted_at FROM chain_head WHERE id = 1 FOR UPDATE")
    stamp = _stamp(head, now)
    requests = [s.request for s in batch]
    ids = list({r.transfer_id for r in requests})
    existing: dict[str, domain.ExistingEntry] = {}
    if ids:
        for r in await conn.fetch(
            "SELECT transfer_id, seq, fingerprint, hash, request, kind, NULL AS reason FROM entries"
            " WHERE transfer_id = ANY($1::text[])"
            " UNION ALL SELECT transfer_id, NULL, fingerprint, NULL, request, 'rejected', reason FROM rejections"
            " WHERE transfer_id = ANY($1::text[])",
            ids,
        ):
            status = "rejected" if r["kind"] == "rejected" else domain.STATUS_OF_KIND[r["kind"]]
            existing[r["transfer_id"]] = domain.ExistingEntry(
                r["seq"], r["fingerprint"], r["hash"], r["request"], status, r["reason"])  # type: ignore[arg-type]

    pending_ids = {r.pending_id for r in requests if r.pending_id} | {e.pending_id for e in expiries}
    pendings: dict[str, domain.PendingState] = {}
    pending_cids: dict[str, str | None] = {}  # an expiry entry carries its pending transfer's correlation id
    if pending_ids:
        for r in await conn.fetch(
            "SELECT transfer_id, legs::text AS legs, expires_at, status, correlation_id FROM pending_transfers"
            " WHERE transfer_id = ANY($1::text[])",
            list(pending_ids),
        ):
            pendings[r["transfer_id"]] = domain.PendingState(
                r["transfer_id"], tuple((a, int(m)) for a, m in json.loads(r["legs"])), r["expires_at"], r["status"])
            pending_cids[r["transfer_id"]] = r["correlation_id"]

    reversed_ids = {r.reverses for r in requests if r.reverses}
    originals: dict[str, domain.PostedOriginal] = {}
    if reversed_ids:
        for r in await conn.fetch(
            "SELECT e.transfer_id, e.kind, array_agg(l.account_id) AS accounts, array_agg(l.amount_pence) AS amounts,"
            " (SELECT x.transfer_id FROM entries x WHERE x.reverses = e.transfer_id) AS reversed_by"
            " FROM entries e JOIN legs l ON l.entry_seq = e.seq"
            " WHERE e.transfer_id = ANY($1::text[]) AND e.kind IN ('posted', 'post_pending') GROUP BY e.seq",
            list(reversed_ids),
        ):
            originals[r["transfer_id"]] = domain.PostedOriginal(
                r["transfer_id"], r["kind"], tuple((a, int(m)) for a, m in zip(r["accounts"], r["amounts"]) if m),
                r["reversed_by"])

    account_ids = {leg.account_id for r in requests for leg in r.legs}
    for p in pendings.values():
        account_ids.update(a for a, _ in p.legs)
    balances: dict[str, domain.AccountState] = {}
    if account_ids:
        for r in await conn.fetch(
            "SELECT account_id, posted_pence, pending_debits_pence, pending_credits_pence FROM accounts"
            " WHERE account_id = ANY($1::text[])",
            list(account_ids),
        ):
            balances[r["account_id"]] = domain.AccountState(r["posted_pence"], r["pending_debits_pence"], r["pending_credits_pence"])
        missing = sorted(account_ids - balances.keys())
        if missing:
            await conn.execute(
                "INSERT INTO accounts(account_id, type, floor_pence)"
                " SELECT a, split_part(a, ':', 1), f FROM unnest($1::text[], $2::bigint[]) AS t(a, f)"
                " ON CONFLICT (account_id) DO NOTHING",
                missing,
                [domain.account_floor(a) for a in missing],
            )

    plan = domain.plan_batch(
        [*expiries, *requests],
        balances=balances,
        existing=existing,
        pendings=pendings,
        originals=originals,
        head_seq=head["seq"],
        head_hash=head["hash"],
        now=stamp,
    )
    await _write(conn, plan, batch, stamp, pending_cids)
    n_exp = len(plan.outcomes) - len(requests)
    return plan.outcomes[n_exp:], plan.outcomes[:n_exp]


def _trace_ids(transfer_id: str, pending_id: str | None, sources: dict[str, Submitted],
               pending_cids: dict[str, str | None]) -> tuple[str | None, str | None]:
    """(correlation id, causation id) of an entry: its request's, or for an expiry its pending transfer's."""
    src = sources.get(transfer_id)
    if src is not None:
        return src.correlation_id, src.causation_id
    return (pending_cids.get(pending_id) if pending_id else None), None


async def _write(conn: asyncpg.Connection, plan: domain.BatchPlan, batch: list[Submitted], stamp: datetime,
                 pending_cids: dict[str, str | None]) -> None:
    sources = {s.request.transfer_id: s for s in batch}
    if plan.entries:
        await conn.copy_records_to_table(
            "entries",
            records=[
                (e.seq, e.transfer_id, e.kind, e.fingerprint, e.request_json, e.pending_id, e.reverses, e.posted_at,
                 e.expires_at, e.prev_hash, e.hash, *_trace_ids(e.transfer_id, e.pending_id, sources, pending_cids))
                for e in plan.entries
            ],
            columns=["seq", "transfer_id", "kind", "fingerprint", "request", "pending_id", "reverses", "posted_at",
                     "expires_at", "prev_hash", "hash", "correlation_id", "causation_id"],
        )
        await conn.copy_records_to_table(
            "legs",
            records=[
                (e.seq, leg.account_id, leg.amount_pence, leg.pending_pence, leg.balance_after_pence,
                 leg.pending_debits_after_pence, leg.pending_credits_after_pence, e.posted_at)
                for e in plan.entries
                for leg in e.legs
            ],
            columns=["entry_seq", "account_id", "amount_pence", "pending_pence", "balance_after_pence",
                     "pending_debits_after_pence", "pending_credits_after_pence", "posted_at"],
        )
        changed = sorted((a, d) for a, d in plan.deltas.items() if any(d))
        if changed:
            await conn.execute(
                "UPDATE accounts SET posted_pence = posted_pence + d.p, pending_debits_pence = pending_debits_pence + d.pd,"
                " pending_credits_pence = pending_credits_pence + d.pc"
                " FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS d(id, p, pd, pc)"
                " WHERE accounts.account_id = d.id",
                [a for a, _ in changed],
                [d[0] for _, d in changed],
                [d[1] for _, d in changed],
                [d[2] for _, d in changed],
            )
        await conn.execute(
            "UPDATE chain_head SET seq = $1, hash = $2, posted_at = $3 WHERE id = 1",
            plan.head_seq,
            plan.head_hash,
            stamp,
        )
    if plan.new_pendings:
        seq_of = {e.transfer_id: e.seq for e in plan.entries if e.kind == "pending"}
        await conn.copy_records_to_table(
            "pending_transfers",
            records=[
                (p.transfer_id, seq_of[p.transfer_id], json.dumps([list(leg) for leg in p.legs]), p.expires_at,
                 "pending", None, sources[p.transfer_id].correlation_id if p.transfer_id in sources else None)
                for p in plan.new_pendings
            ],
            columns=["transfer_id", "entry_seq", "legs", "expires_at", "status", "resolved_seq", "correlation_id"],
        )
    if plan.resolved_pendings:
        items = sorted(plan.resolved_pendings.items())
        await conn.execute(
            "UPDATE pending_transfers SET status = d.s, resolved_seq = d.q"
            " FROM unnest($1::text[], $2::text[], $3::bigint[]) AS d(id, s, q) WHERE transfer_id = d.id",
            [k for k, _ in items],
            [v[0] for _, v in items],
            [v[1] for _, v in items],
        )
    if plan.rejections:
        await conn.copy_records_to_table(
            "rejections",
            records=[(r.transfer_id, r.fingerprint, r.request_json, r.reason, stamp,
                      *_trace_ids(r.transfer_id, None, sources, pending_cids)) for r in plan.rejections],
            columns=["transfer_id", "fingerprint", "request", "reason", "rejected_at", "correlation_id", "causation_id"],
        )
    await _enqueue_events(conn, plan, batch, stamp)


def _event(transfer_id: str, status: str, seq: int | None, digest: str | None, reason: str | None,
           correlation_id: str, causation_id: str | None, occurred_at: str, random16: bytes | None = None) -> tuple[str, bytes, bytes, str]:
    """One ledger.posted.v1 outbox row, serialised by hand (hot path: one event per transfer).

    The shape is exactly ``Envelope[TransferPosted]``; tests parse these with the contract.
    ``random16``: 16 random bytes for the event id (a version-4 UUID), drawn per batch.
    """
    event_id = str(uuid.UUID(bytes=random16, version=4) if random16 else uuid.uuid4())
    rejected = status == "rejected"
    cid = _esc(correlation_id)
    cause = "null" if causation_id is None else _esc(causation_id)
    payload = (
        f'{{"event_id":"{event_id}","type":"ledger.posted.v1","occurred_at":"{occurred_at}","correlation_id":{cid},'
        f'"causation_id":{cause},"producer":"{PRODUCER}","data":{{"transfer_id":{_esc(transfer_id)},"status":"{status}",'
        f'"entry_seq":{"null" if rejected or seq is None else seq},'
        f'"entry_hash":{"null" if rejected or digest is None else chr(34) + digest + chr(34)},'
        f'"reason":{"null" if reason is None else _esc(reason)}}}}}'
    )
    headers = f'{{"event_type":"ledger.posted.v1","event_id":"{event_id}","correlation_id":{cid}'
    headers += "}" if causation_id is None else f',"causation_id":{cause}}}'
    return (LEDGER_POSTED.name, transfer_id.encode(), payload.encode(), headers)


async def _enqueue_events(conn: asyncpg.Connection, plan: domain.BatchPlan, batch: list[Submitted], stamp: datetime) -> None:
    occurred = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    rows = []
    n_exp = len(plan.outcomes) - len(batch)
    for o in plan.outcomes[:n_exp]:  # timeouts found by the expiry task
        rows.append(_event(o.transfer_id, "voided", o.entry_seq, o.entry_hash, o.reason, f"expiry:{o.transfer_id}", None, occurred))
    for pending_id, seq, digest in plan.expiries:  # timeouts found when a post or void arrived late
        rows.append(_event(pending_id, "voided", seq, digest, "pending expired", f"expiry:{pending_id}", None, occurred))
    randomness = os.urandom(16 * len(batch))  # one system call per batch, not per event id
    for i, (src, o) in enumerate(zip(batch, plan.outcomes[n_exp:])):
        rows.append(_event(o.transfer_id, o.event_status, o.entry_seq, o.entry_hash, o.reason, src.correlation_id,
                           src.causation_id, occurred, randomness[16 * i:16 * i + 16]))
    if rows:
        await conn.copy_records_to_table("outbox", records=rows, columns=["topic", "key", "payload", "headers"])


# ---------------------------------------------------------------------------------------------
# Cursors
# ---------------------------------------------------------------------------------------------
def encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts, default=str, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    """Raises ValueError for a cursor we did not make."""
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except Exception as exc:  # noqa: BLE001 - any garbage is a bad cursor
        raise ValueError("bad cursor") from exc
    if not isinstance(value, list):
        raise ValueError("bad cursor")
    return value


# ---------------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------------
_ACCOUNT_COLS = "account_id, type, floor_pence, posted_pence, pending_debits_pence, pending_credits_pence, metadata::text AS metadata"


def _account(r: asyncpg.Record, as_of: datetime | None = None) -> dict[str, Any]:
    posted, pdeb, pcred = int(r["posted_pence"]), int(r["pending_debits_pence"]), int(r["pending_credits_pence"])
    return {
        "account_id": r["account_id"],
        "type": r["type"],
        "currency": "GBP",
        "floor_pence": r["floor_pence"],
        "posted_pence": posted,
        "pending_debits_pence": pdeb,
        "pending_credits_pence": pcred,
        "available_pence": posted - pdeb,
        "metadata": json.loads(r["metadata"]) if r["metadata"] else {},
        "as_of": as_of,
    }


_AS_OF = (
    " LEFT JOIN LATERAL (SELECT balance_after_pence, pending_debits_after_pence, pending_credits_after_pence"
    " FROM legs l WHERE l.account_id = a.account_id AND l.posted_at <= $1"
    " ORDER BY l.posted_at DESC, l.entry_seq DESC LIMIT 1) x ON true"
)
_AS_OF_COLS = (
    "a.account_id, a.type, a.floor_pence, a.metadata::text AS metadata, coalesce(x.balance_after_pence, 0) AS posted_pence,"
    " coalesce(x.pending_debits_after_pence, 0) AS pending_debits_pence, coalesce(x.pending_credits_after_pence, 0) AS pending_credits_pence"
)


async def balance(conn: asyncpg.Connection, account_id: str, as_of: datetime | None = None) -> dict[str, Any] | None:
    if as_of is None:
        r = await conn.fetchrow(f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE account_id = $1", account_id)
    else:
        r = await conn.fetchrow(f"SELECT {_AS_OF_COLS} FROM accounts a {_AS_OF} WHERE a.account_id = $2", as_of, account_id)
    return None if r is None else _account(r, as_of)


async def list_accounts(conn: asyncpg.Connection, *, type_: str | None, after: str | None, limit: int,
                        as_of: datetime | None = None) -> list[dict[str, Any]]:
    if as_of is None:
        rows = await conn.fetch(
            f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE ($1::text IS NULL OR type = $1) AND ($2::text IS NULL OR account_id > $2)"
            " ORDER BY account_id LIMIT $3",
            type_, after, limit,
        )
    else:
        rows = await conn.fetch(
            f"SELECT {_AS_OF_COLS} FROM accounts a {_AS_OF} WHERE ($2::text IS NULL OR a.type = $2)"
            " AND ($3::text IS NULL OR a.account_id > $3) ORDER BY a.account_id LIMIT $4",
            as_of, type_, after, limit,
        )
    return [_account(r, as_of) for r in rows]


async def trial_balance_totals(conn: asyncpg.Connection, as_of: datetime | None = None) -> dict[str, Any]:
    """Totals over every account (posted, pending debits, pending credits), per type and overall."""
    if as_of is None:
        rows = await conn.fetch(
            "SELECT type, count(*) AS n, sum(posted_pence)::bigint AS p, sum(pending_debits_pence)::bigint AS pd,"
            " sum(pending_credits_pence)::bigint AS pc FROM accounts GROUP BY type ORDER BY type"
        )
    else:
        rows = await conn.fetch(
            f"SELECT a.type, count(*) AS n, sum(coalesce(x.balance_after_pence, 0))::bigint AS p,"
            f" sum(coalesce(x.pending_debits_after_pence, 0))::bigint AS pd, sum(coalesce(x.pending_credits_after_pence, 0))::bigint AS pc"
            f" FROM accounts a {_AS_OF} GROUP BY a.type ORDER BY a.type",
            as_of,
        )
    return {
        "accounts": sum(r["n"] for r in rows),
        "total_pence": sum(r["p"] for r in rows),
        "pending_debits_pence": sum(r["pd"] for r in rows),
        "pending_credits_pence": sum(r["pc"] for r in rows),
        "by_type_pence": {r["type"]: int(r["p"]) for r in rows},
    }


async def trial_balance(conn: asyncpg.Connection, as_of: datetime | None = None) -> list[dict[str, Any]]:
    """Every account's balances (for small ledgers and CSV export); see list_accounts to page."""
    return await list_accounts(conn, type_=None, after=None, limit=1_000_000, as_of=as_of)


async def statement(conn: asyncpg.Connection, account_id: str, *, from_: datetime | None, to: datetime | None,
                    after: tuple[datetime, int] | None, limit: int) -> dict[str, Any] | None:
    """An account's legs in chain order within [from_, to), with the running balance after each."""
    acct = await conn.fetchrow(f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE account_id = $1", account_id)
    if acct is None:
        return None
    lo = from_ or datetime(1970, 1, 1, tzinfo=timezone.utc)
    hi = to or datetime(9999, 1, 1, tzinfo=timezone.utc)
    opening = await conn.fetchrow(
        "SELECT balance_after_pence, pending_debits_after_pence, pending_credits_after_pence FROM legs"
        " WHERE account_id = $1 AND posted_at < $2 ORDER BY posted_at DESC, entry_seq DESC LIMIT 1",
        account_id, lo,
    )
    start_t, start_seq = after if after else (lo, -1)
    rows = await conn.fetch(
        "SELECT l.entry_seq, l.posted_at, l.amount_pence, l.pending_pence, l.balance_after_pence,"
        " l.pending_debits_after_pence, l.pending_credits_after_pence, e.transfer_id, e.kind,"
        " (e.request::jsonb)->'cause' AS cause"
        " FROM legs l JOIN entries e ON e.seq = l.entry_seq"
        " WHERE l.account_id = $1 AND (l.posted_at, l.entry_seq) > ($2, $3) AND l.posted_at >= $4 AND l.posted_at < $5"
        " ORDER BY l.posted_at, l.entry_seq LIMIT $6",
        account_id, start_t, start_seq, lo, hi, limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "account": _account(acct),
        "opening_balance_pence": int(opening["balance_after_pence"]) if opening else 0,
        "lines": [
            {
                "entry_seq": r["entry_seq"],
                "transfer_id": r["transfer_id"],
                "kind": r["kind"],
                "posted_at": r["posted_at"],
                "amount_pence": r["amount_pence"],
                "pending_pence": r["pending_pence"],
                "balance_after_pence": r["balance_after_pence"],
                "pending_debits_after_pence": r["pending_debits_after_pence"],
                "pending_credits_after_pence": r["pending_credits_after_pence"],
                "cause": json.loads(r["cause"]) if r["cause"] else {},
            }
            for r in rows
        ],
        "next_after": (rows[-1]["posted_at"], rows[-1]["entry_seq"]) if more and rows else None,
    }


async def transfer(conn: asyncpg.Connection, transfer_id: str) -> dict[str, Any] | None:
    e = await conn.fetchrow(
        "SELECT seq, transfer_id, kind, request, pending_id, reverses, posted_at, expires_at, prev_hash, hash,"
        " correlation_id, causation_id,"
        " (SELECT x.transfer_id FROM entries x WHERE x.reverses = entries.transfer_id) AS reversed_by"
        " FROM entries WHERE transfer_id = $1",
        transfer_id,
    )
    if e is None:
        r = await conn.fetchrow("SELECT transfer_id, request, reason, rejected_at, correlation_id, causation_id"
                                " FROM rejections WHERE transfer_id = $1", transfer_id)
        if r is None:
            return None
        req = json.loads(r["request"])
        return {"transfer_id": r["transfer_id"], "status": "rejected", "kind": req["kind"], "reason": r["reason"],
                "posted_at": r["rejected_at"], "cause": req["cause"], "request": req, "legs": [],
                "correlation_id": r["correlation_id"], "causation_id": r["causation_id"]}
    legs = await conn.fetch(
        "SELECT account_id, amount_pence, pending_pence, balance_after_pence FROM legs WHERE entry_seq = $1 ORDER BY account_id",
        e["seq"],
    )
    request = json.loads(e["request"])
    pending = None
    if e["kind"] == "pending":
        pending = await conn.fetchrow(
            "SELECT p.status, p.expires_at, r.transfer_id AS resolved_by FROM pending_transfers p"
            " LEFT JOIN entries r ON r.seq = p.resolved_seq WHERE p.transfer_id = $1",
            transfer_id,
        )
    return {
        "transfer_id": e["transfer_id"],
        "status": domain.STATUS_OF_KIND[e["kind"]],
        "kind": e["kind"],
        "entry_seq": e["seq"],
        "posted_at": e["posted_at"],
        "expires_at": e["expires_at"],
        "cause": request["cause"],
        "request": request,
        "pending_id": e["pending_id"],
        "reverses": e["reverses"],
        "reversed_by": e["reversed_by"],
        "pending_status": pending["status"] if pending else None,
        "resolved_by": pending["resolved_by"] if pending else None,
        "legs": [dict(r) for r in legs],
        "prev_hash": e["prev_hash"],
        "hash": e["hash"],
        "correlation_id": e["correlation_id"],
        "causation_id": e["causation_id"],
    }


async def set_metadata(conn: asyncpg.Connection, account_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """Create the account if needed and replace its metadata (not part of the journal)."""
    await conn.execute(
        "INSERT INTO accounts(account_id, type, floor_pence, metadata) VALUES ($1, split_part($1, ':', 1), $2, $3::jsonb)"
        " ON CONFLICT (account_id) DO UPDATE SET metadata = EXCLUDED.metadata",
        account_id, domain.account_floor(account_id), json.dumps(metadata),
    )
    found = await balance(conn, account_id)
    assert found is not None
    return found


VERIFY_PAGE = 10_000
_VERIFY_LOCK_KEY = 0x5050_5646  # "PPVF": one verification at a time per ledger


async def verify_exclusive(conn: asyncpg.Connection) -> dict[str, Any] | None:
    """``verify`` unless another verification holds the lock (then None): a full verification
    reads the whole journal, so two at once would only double the load."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _VERIFY_LOCK_KEY):
        return None
    try:
        return await verify(conn)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _VERIFY_LOCK_KEY)


async def verify(conn: asyncpg.Connection) -> dict[str, Any]:
    """Recompute the hash chain, every stored running balance, and every cached balance.

    ``verified_through_seq`` says how far the chain checked out: on a broken chain, the last entry
    before the first bad one (0: none); otherwise the head (the chain is intact even when a
    balance check after it fails)."""
    result = await _verify(conn)
    result.setdefault("verified_through_seq", result.get("head_seq") or 0)
    return result


async def _verify(conn: asyncpg.Connection) -> dict[str, Any]:
    prev_hash, prev_seq, checked, legs_seen = domain.GENESIS_HASH, 0, 0, 0
    running: dict[str, list[int]] = {}
    while True:
        rows = await conn.fetch(
            "SELECT e.seq, e.transfer_id, e.kind, e.request, e.posted_at, e.expires_at, e.prev_hash, e.hash,"
            " array_agg(l.account_id ORDER BY l.account_id) AS accounts,"
            " array_agg(l.amount_pence ORDER BY l.account_id) AS amounts,"
            " array_agg(l.pending_pence ORDER BY l.account_id) AS pendings,"
            " array_agg(l.balance_after_pence ORDER BY l.account_id) AS ba,"
            " array_agg(l.pending_debits_after_pence ORDER BY l.account_id) AS pda,"
            " array_agg(l.pending_credits_after_pence ORDER BY l.account_id) AS pca"
            " FROM entries e LEFT JOIN legs l ON l.entry_seq = e.seq"
            " WHERE e.seq > $1 GROUP BY e.seq ORDER BY e.seq LIMIT $2",
            prev_seq,
            VERIFY_PAGE,
        )
        if not rows:
            break
        chain = [
            domain.ChainRow(
                r["seq"], r["transfer_id"], r["kind"], r["request"],
                [list(t) for t in zip(r["accounts"], r["amounts"], r["pendings"], r["ba"], r["pda"], r["pca"]) if t[0] is not None],
                r["posted_at"], r["expires_at"], r["prev_hash"], r["hash"],
            )
            for r in rows
        ]
        ok, bad_seq, why = domain.verify_chain(chain, start_hash=prev_hash, start_seq=prev_seq, running=running)
        if not ok:
            bad = await conn.fetchval("SELECT transfer_id FROM entries WHERE seq = $1", bad_seq)
            good = sum(1 for c in chain if bad_seq is not None and c.seq < bad_seq)
            last_good = prev_seq + good
            return {"ok": False, "entries_checked": checked + good, "first_bad_seq": bad_seq, "first_bad_transfer_id": bad,
                    "verified_through_seq": last_good,
                    "reason": f"{why}; the chain verifies up to entry {last_good}" if last_good else why}
        checked += len(chain)
        legs_seen += sum(len(c.legs) for c in chain)
        prev_hash, prev_seq = chain[-1].hash, chain[-1].seq
    head = await conn.fetchrow("SELECT seq, hash FROM chain_head WHERE id = 1")
    if head["seq"] != prev_seq or head["hash"] != prev_hash:
        return {"ok": False, "entries_checked": checked, "first_bad_seq": prev_seq + 1, "first_bad_transfer_id": None,
                "verified_through_seq": prev_seq,
                "reason": "chain head does not match the last entry (entries missing)"}
    legs_total = await conn.fetchval("SELECT count(*) FROM legs")
    if legs_total != legs_seen:
        return {"ok": False, "entries_checked": checked, "first_bad_seq": None, "first_bad_transfer_id": None,
                "verified_through_seq": prev_seq,
                "reason": f"{legs_total - legs_seen} legs belong to no entry of the chain"}
    accounts = await conn.fetch("SELECT account_id, posted_pence, pending_debits_pence, pending_credits_pence FROM accounts")
    unknown = sorted(running.keys() - {r["account_id"] for r in accounts})
    if unknown:
        return {"ok": False, "entries_checked": checked, "first_bad_seq": None, "first_bad_transfer_id": None,
                "verified_through_seq": prev_seq,
                "reason": "legs name accounts that do not exist: " + ", ".join(unknown[:10])}
    mismatched = [
        r["account_id"]
        for r in accounts
        if [r["posted_pence"], r["pending_debits_pence"], r["pending_credits_pence"]] != running.get(r["account_id"], [0, 0, 0])
    ]
    if mismatched:
        return {"ok": False, "entries_checked": checked, "first_bad_seq": None, "first_bad_transfer_id": None,
                "verified_through_seq": prev_seq,
                "reason": "cached balances differ from the journal for " + ", ".join(sorted(mismatched)[:10])}
    total = sum(v[0] for v in running.values())
    if total != 0:
        return {"ok": False, "entries_checked": checked, "first_bad_seq": None, "first_bad_transfer_id": None,
                "verified_through_seq": prev_seq,
                "reason": f"accounts sum to {total} pence, not zero"}
    return {"ok": True, "entries_checked": checked, "head_seq": prev_seq, "head_hash": prev_hash,
            "reason": "chain intact, balances match"}
