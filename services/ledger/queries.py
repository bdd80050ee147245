"""The ledger's read models: accounts and balances (now and as of any time), statements with
running balances, transfers with their links, the trial balance, cursors, and verification of the
hash chain. Reads never take the chain head's lock, so they never wait for the writer."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from typing import Any

import asyncpg

from services.ledger import chain, domain

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
    # The page of legs first (an ordered index-only scan that stops at the page's end), then only
    # those legs' entries. Written as one join, the planner joined every leg in the window to its
    # entry (a random heap read each, cold on a big journal) and sorted afterwards: 518 entry reads
    # for a 100-line page in the benchmark's 30-day window, 137 ms p99 at 100M legs.
    rows = await conn.fetch(
        "WITH page AS MATERIALIZED ("
        "  SELECT l.entry_seq, l.posted_at, l.amount_pence, l.pending_pence, l.balance_after_pence,"
        "  l.pending_debits_after_pence, l.pending_credits_after_pence FROM legs l"
        "  WHERE l.account_id = $1 AND (l.posted_at, l.entry_seq) > ($2, $3) AND l.posted_at >= $4 AND l.posted_at < $5"
        "  ORDER BY l.posted_at, l.entry_seq LIMIT $6)"
        " SELECT p.*, e.transfer_id, e.kind, (e.request::jsonb)->'cause' AS cause"
        " FROM page p JOIN entries e ON e.seq = p.entry_seq AND e.posted_at = p.posted_at"
        " ORDER BY p.posted_at, p.entry_seq",
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
        "SELECT e.seq, e.transfer_id, e.kind, e.request, e.pending_id, e.reverses, e.posted_at, e.expires_at, e.prev_hash,"
        " e.hash, e.correlation_id, e.causation_id, e.accounting_date,"
        " (SELECT x.transfer_id FROM transfer_ids x WHERE x.reverses = t.transfer_id) AS reversed_by"
        " FROM transfer_ids t JOIN entries e ON e.seq = t.seq AND e.posted_at = t.posted_at WHERE t.transfer_id = $1",
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
        "SELECT account_id, amount_pence, pending_pence, balance_after_pence FROM legs WHERE entry_seq = $1 AND posted_at = $2"
        " ORDER BY account_id",
        e["seq"], e["posted_at"],
    )
    request = json.loads(e["request"])
    pending = None
    if e["kind"] == "pending":
        pending = await conn.fetchrow(
            "SELECT p.status, p.expires_at, r.transfer_id AS resolved_by FROM pending_transfers p"
            " LEFT JOIN transfer_ids r ON r.seq = p.resolved_seq WHERE p.transfer_id = $1",
            transfer_id,
        )
    return {
        "transfer_id": e["transfer_id"],
        "status": domain.STATUS_OF_KIND[e["kind"]],
        "kind": e["kind"],
        "entry_seq": e["seq"],
        "posted_at": e["posted_at"],
        "accounting_date": e["accounting_date"],
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


async def pending_accounts(conn: asyncpg.Connection, pending_id: str) -> list[str]:
    """The accounts a pending transfer reserved on (empty if there is no such pending transfer)."""
    legs = await conn.fetchval("SELECT legs::text FROM pending_transfers WHERE transfer_id = $1", pending_id)
    return [a for a, _ in json.loads(legs)] if legs else []


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
    prev_hash, prev_seq, checked, legs_seen = chain.GENESIS_HASH, 0, 0, 0
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
            " FROM entries e LEFT JOIN legs l ON l.entry_seq = e.seq AND l.posted_at = e.posted_at"
            " WHERE e.seq > $1 GROUP BY e.seq, e.posted_at ORDER BY e.seq LIMIT $2",
            prev_seq,
            VERIFY_PAGE,
        )
        if not rows:
            break
        page = [
            chain.ChainRow(
                r["seq"], r["transfer_id"], r["kind"], r["request"],
                [list(t) for t in zip(r["accounts"], r["amounts"], r["pendings"], r["ba"], r["pda"], r["pca"]) if t[0] is not None],
                r["posted_at"], r["expires_at"], r["prev_hash"], r["hash"],
            )
            for r in rows
        ]
        ok, bad_seq, why = chain.verify_chain(page, start_hash=prev_hash, start_seq=prev_seq, running=running)
        if not ok:
            bad = await conn.fetchval("SELECT transfer_id FROM entries WHERE seq = $1", bad_seq)
            good = sum(1 for c in page if bad_seq is not None and c.seq < bad_seq)
            last_good = prev_seq + good
            return {"ok": False, "entries_checked": checked + good, "first_bad_seq": bad_seq, "first_bad_transfer_id": bad,
                    "verified_through_seq": last_good,
                    "reason": f"{why}; the chain verifies up to entry {last_good}" if last_good else why}
        checked += len(page)
        legs_seen += sum(len(c.legs) for c in page)
        prev_hash, prev_seq = page[-1].hash, page[-1].seq
    head = await conn.fetchrow("SELECT seq, hash FROM chain_head WHERE id = 1")
    if head["seq"] != prev_seq or head["hash"] != prev_hash:
        return {"ok": False, "entries_checked": checked, "first_bad_seq": prev_seq + 1, "first_bad_transfer_id": None,
                "verified_through_seq": prev_seq,
                "reason": "chain head does not match the last entry (entries missing)"}
    ids = await conn.fetchrow(
        "SELECT count(*) AS n, count(*) FILTER (WHERE e.seq IS NULL OR e.transfer_id <> t.transfer_id"
        " OR e.reverses IS DISTINCT FROM t.reverses) AS bad"
        " FROM transfer_ids t LEFT JOIN entries e ON e.seq = t.seq AND e.posted_at = t.posted_at")
    if ids["n"] != checked or ids["bad"]:
        return {"ok": False, "entries_checked": checked, "first_bad_seq": None, "first_bad_transfer_id": None,
                "verified_through_seq": prev_seq,
                "reason": f"the transfer-id index disagrees with the journal ({ids['n']} ids for {checked} entries,"
                          f" {ids['bad']} pointing at no entry or another)"}
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
