"""The ledger's PostgreSQL adapter: posts batches atomically, answers balance queries, verifies.

One transaction per batch. The chain head row is locked FOR UPDATE first, which makes the ledger
single-writer on the chain (entries get gap-free sequence numbers and each links to the one
before) while readers are never blocked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import asyncpg

from services.ledger import domain
from shared.contracts import TransferPosted, TransferRequested, envelope
from shared.outbox import enqueue, outbox_row
from shared.topics import LEDGER_POSTED

PRODUCER = "ledger"


@dataclass(frozen=True)
class Submitted:
    """A transfer request with the envelope fields the ledger keeps for tracing."""

    request: TransferRequested
    correlation_id: str
    causation_id: str | None


async def post_batch(pool: asyncpg.Pool, batch: Sequence[Submitted]) -> list[domain.Outcome]:
    if not batch:
        return []
    async with pool.acquire() as conn:
        async with conn.transaction():
            return await _post_batch(conn, batch)


async def _post_batch(conn: asyncpg.Connection, batch: Sequence[Submitted]) -> list[domain.Outcome]:
    head = await conn.fetchrow("SELECT seq, hash, posted_at FROM chain_head WHERE id = 1 FOR UPDATE")
    ids = list({s.request.transfer_id for s in batch})
    existing_rows = await conn.fetch(
        "SELECT e.seq, e.transfer_id, e.fingerprint, e.hash, e.cause,"
        " array_agg(l.account_id ORDER BY l.account_id) AS accounts,"
        " array_agg(l.amount_pence ORDER BY l.account_id) AS amounts"
        " FROM entries e JOIN legs l ON l.entry_seq = e.seq"
        " WHERE e.transfer_id = ANY($1::text[]) GROUP BY e.seq",
        ids,
    )
    existing = {
        r["transfer_id"]: domain.ExistingEntry(
            r["seq"],
            r["fingerprint"],
            r["hash"],
            {"legs": [[a, int(m)] for a, m in zip(r["accounts"], r["amounts"])], "cause": json.loads(r["cause"])},
        )
        for r in existing_rows
    }
    account_ids = sorted({leg.account_id for s in batch for leg in s.request.legs})
    await conn.execute(
        "INSERT INTO accounts(account_id, type, floor_pence)"
        " SELECT a, split_part(a, ':', 1), f FROM unnest($1::text[], $2::bigint[]) AS t(a, f)"
        " ON CONFLICT (account_id) DO NOTHING",
        account_ids,
        [domain.account_floor(a) for a in account_ids],
    )
    balances = {
        r["account_id"]: r["posted_pence"]
        for r in await conn.fetch(
            "SELECT account_id, posted_pence FROM accounts WHERE account_id = ANY($1::text[])", account_ids
        )
    }
    # posted_at never goes backwards along the chain, so as-of queries agree with seq order.
    now = datetime.now(timezone.utc)
    posted_at = max(now, head["posted_at"]) if head["posted_at"] is not None else now
    plan = domain.plan_batch(
        [s.request for s in batch],
        balances_pence=balances,
        existing=existing,
        head_seq=head["seq"],
        head_hash=head["hash"],
        posted_at=posted_at,
    )
    if plan.entries:
        await conn.copy_records_to_table(
            "entries",
            records=[
                (e.seq, e.transfer_id, e.fingerprint, json.dumps(e.body["cause"]), e.posted_at, e.prev_hash, e.hash)
                for e in plan.entries
            ],
            columns=["seq", "transfer_id", "fingerprint", "cause", "posted_at", "prev_hash", "hash"],
        )
        await conn.copy_records_to_table(
            "legs",
            records=[(a, e.seq, amt, e.posted_at) for e in plan.entries for a, amt in e.body["legs"]],
            columns=["account_id", "entry_seq", "amount_pence", "posted_at"],
        )
        ids_, deltas = zip(*sorted(plan.deltas_pence.items()))
        await conn.execute(
            "UPDATE accounts SET posted_pence = posted_pence + d.delta"
            " FROM unnest($1::text[], $2::bigint[]) AS d(id, delta) WHERE accounts.account_id = d.id",
            list(ids_),
            list(deltas),
        )
        await conn.execute(
            "UPDATE chain_head SET seq = $1, hash = $2, posted_at = $3 WHERE id = 1",
            plan.head_seq,
            plan.head_hash,
            posted_at,
        )
    by_id = {s.request.transfer_id: s for s in batch}
    rows = []
    for outcome in plan.outcomes:
        src = by_id[outcome.transfer_id]
        status = "posted" if outcome.status in ("posted", "duplicate") else "rejected"
        event = envelope(
            TransferPosted(
                transfer_id=outcome.transfer_id,
                status=status,
                entry_seq=outcome.entry_seq if status == "posted" else None,
                entry_hash=outcome.entry_hash if status == "posted" else None,
                reason=outcome.reason,
            ),
            "ledger.posted.v1",
            producer=PRODUCER,
            correlation_id=src.correlation_id,
            causation_id=src.causation_id,
        )
        rows.append(outbox_row(LEDGER_POSTED.name, outcome.transfer_id, event))
    await enqueue(conn, rows)
    return plan.outcomes


# ---------------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------------
async def balance(conn: asyncpg.Connection, account_id: str, as_of: datetime | None = None) -> dict[str, Any] | None:
    acct = await conn.fetchrow("SELECT account_id, type, floor_pence, posted_pence FROM accounts WHERE account_id = $1", account_id)
    if acct is None:
        return None
    if as_of is None:
        posted = acct["posted_pence"]
    else:
        posted = await conn.fetchval(
            "SELECT coalesce(sum(amount_pence), 0) FROM legs WHERE account_id = $1 AND posted_at <= $2",
            account_id,
            as_of,
        )
    return {
        "account_id": acct["account_id"],
        "type": acct["type"],
        "currency": "GBP",
        "floor_pence": acct["floor_pence"],
        "posted_pence": int(posted),
        "as_of": as_of,
    }


async def list_accounts(conn: asyncpg.Connection, *, type_: str | None, after: str | None, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT account_id, type, floor_pence, posted_pence FROM accounts"
        " WHERE ($1::text IS NULL OR type = $1) AND ($2::text IS NULL OR account_id > $2)"
        " ORDER BY account_id LIMIT $3",
        type_,
        after,
        limit,
    )


async def trial_balance(conn: asyncpg.Connection, as_of: datetime | None = None) -> list[asyncpg.Record]:
    if as_of is None:
        return await conn.fetch("SELECT account_id, type, posted_pence FROM accounts ORDER BY account_id")
    return await conn.fetch(
        "SELECT a.account_id, a.type, coalesce(sum(l.amount_pence), 0)::bigint AS posted_pence"
        " FROM accounts a LEFT JOIN legs l ON l.account_id = a.account_id AND l.posted_at <= $1"
        " GROUP BY a.account_id ORDER BY a.account_id",
        as_of,
    )


async def transfer(conn: asyncpg.Connection, transfer_id: str) -> dict[str, Any] | None:
    e = await conn.fetchrow("SELECT seq, transfer_id, cause, posted_at, prev_hash, hash FROM entries WHERE transfer_id = $1", transfer_id)
    if e is None:
        return None
    legs = await conn.fetch("SELECT account_id, amount_pence FROM legs WHERE entry_seq = $1 ORDER BY account_id", e["seq"])
    return {
        "transfer_id": e["transfer_id"],
        "entry_seq": e["seq"],
        "posted_at": e["posted_at"],
        "cause": json.loads(e["cause"]),
        "legs": [{"account_id": r["account_id"], "amount_pence": r["amount_pence"]} for r in legs],
        "prev_hash": e["prev_hash"],
        "hash": e["hash"],
    }


VERIFY_PAGE = 10_000


async def verify(conn: asyncpg.Connection) -> dict[str, Any]:
    """Recompute the hash chain from the journal rows and every cached balance from the legs."""
    prev_hash, prev_seq, checked = domain.GENESIS_HASH, 0, 0
    while True:
        rows = await conn.fetch(
            "SELECT e.seq, e.transfer_id, e.cause, e.posted_at, e.prev_hash, e.hash,"
            " array_agg(l.account_id ORDER BY l.account_id) AS accounts,"
            " array_agg(l.amount_pence ORDER BY l.account_id) AS amounts"
            " FROM entries e LEFT JOIN legs l ON l.entry_seq = e.seq"
            " WHERE e.seq > $1 GROUP BY e.seq ORDER BY e.seq LIMIT $2",
            prev_seq,
            VERIFY_PAGE,
        )
        if not rows:
            break
        chain = [
            domain.ChainRow(
                r["seq"],
                r["transfer_id"],
                {
                    "legs": [[a, int(m)] for a, m in zip(r["accounts"], r["amounts"]) if a is not None],
                    "cause": json.loads(r["cause"]),
                },
                r["posted_at"],
                r["prev_hash"],
                r["hash"],
            )
            for r in rows
        ]
        ok, bad_seq, why = domain.verify_chain(chain, start_hash=prev_hash, start_seq=prev_seq)
        if not ok:
            bad = await conn.fetchval("SELECT transfer_id FROM entries WHERE seq = $1", bad_seq)
            return {"ok": False, "entries_checked": checked, "first_bad_seq": bad_seq, "first_bad_transfer_id": bad, "reason": why}
        checked += len(chain)
        prev_hash, prev_seq = chain[-1].hash, chain[-1].seq
    head = await conn.fetchrow("SELECT seq, hash FROM chain_head WHERE id = 1")
    if head["seq"] != prev_seq or head["hash"] != prev_hash:
        return {"ok": False, "entries_checked": checked, "first_bad_seq": prev_seq + 1, "first_bad_transfer_id": None,
                "reason": "chain head does not match the last entry (entries missing)"}
    mismatched = await conn.fetch(
        "SELECT a.account_id FROM accounts a LEFT JOIN (SELECT account_id, sum(amount_pence) s FROM legs GROUP BY account_id) l"
        " USING (account_id) WHERE a.posted_pence <> coalesce(l.s, 0) LIMIT 10"
    )
    if mismatched:
        return {"ok": False, "entries_checked": checked, "first_bad_seq": None, "first_bad_transfer_id": None,
                "reason": "cached balances differ from the journal for " + ", ".join(r["account_id"] for r in mismatched)}
    total = await conn.fetchval("SELECT coalesce(sum(posted_pence), 0) FROM accounts")
    if total != 0:
        return {"ok": False, "entries_checked": checked, "first_bad_seq": None, "first_bad_transfer_id": None,
                "reason": f"accounts sum to {total} pence, not zero"}
    return {"ok": True, "entries_checked": checked, "head_seq": prev_seq, "head_hash": prev_hash, "reason": "chain intact, balances match"}
