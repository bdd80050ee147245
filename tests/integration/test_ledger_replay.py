"""Replay determinism against real PostgreSQL: a random stream of transfers, pendings, posts,
voids, timeouts and reversals, fed to the store in batches with a fixed clock, gives the same
chain head as the pure core; replaying the whole stream into the same ledger leaves every
journal table byte-for-byte identical."""

from __future__ import annotations

import random
from datetime import timedelta

import asyncpg
import pytest

from services.ledger import queries
from services.ledger.handlers import LedgerHandlers
from services.ledger.ports import Submitted
from services.ledger.store import LedgerTx
from shared.uow import PgUnitOfWork
from shared import db
from tests.unit.test_ledger_domain import STEP, STREAM_START, T0, Ledger, play, random_stream, req

pytestmark = pytest.mark.integration

TABLES = {
    "accounts": "SELECT account_id, type, floor_pence, posted_pence, pending_debits_pence, pending_credits_pence FROM accounts ORDER BY 1",
    "entries": "SELECT * FROM entries ORDER BY seq",
    "legs": "SELECT * FROM legs ORDER BY entry_seq, account_id",
    "rejections": "SELECT * FROM rejections ORDER BY transfer_id",
    "pending_transfers": "SELECT transfer_id, entry_seq, legs, expires_at, status, resolved_seq FROM pending_transfers ORDER BY 1",
    "chain_head": "SELECT * FROM chain_head",
}


async def dump(conn: asyncpg.Connection) -> dict[str, str]:
    """Each table as PostgreSQL's own text rendering, row by row."""
    out = {}
    for name, sql in TABLES.items():
        rows = await conn.fetch(f"SELECT t::text FROM ({sql}) t")
        out[name] = "\n".join(r[0] for r in rows)
    return out


def handlers(pool: asyncpg.Pool) -> LedgerHandlers:
    """The ledger's one write path on this pool (as the service builds it)."""
    return LedgerHandlers(PgUnitOfWork(pool, LedgerTx))


async def feed(pool: asyncpg.Pool, stream: list, *, start=T0) -> None:  # type: ignore[no-untyped-def]
    now = start
    for item in stream:
        if item == "tick":
            now += STEP
            await handlers(pool).expire_due(limit=500, now=now)
        else:
            await handlers(pool).post([Submitted(r, f"c-{r.transfer_id}", None) for r in item], now=now)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_replaying_a_stream_into_postgres_changes_nothing(database, seed: int) -> None:
    stream = random_stream(random.Random(seed), 250)
    pool = await db.create_pool(database)
    try:
        async with pool.acquire() as conn:
            await db.migrate(conn, "shared", "services.ledger")
        opening = req("opening", "posted", tuple(sorted(STREAM_START.items())))
        await handlers(pool).post([Submitted(opening, "c-opening", None)], now=T0 - STEP)
        await feed(pool, stream)
        async with pool.acquire() as conn:
            first = await dump(conn)
            verify = await queries.verify(conn)
        assert verify["ok"], verify

        # The pure core, fed the same stream with the same clock, reaches the same chain head.
        model = Ledger(STREAM_START)
        play(model, stream)
        assert verify["head_seq"] == model.head_seq and verify["head_hash"] == model.head_hash
        kinds = {e.kind for e in model.entries}
        assert {"posted", "pending", "post_pending"} <= kinds

        # Replay everything (the same batches, at-least-once) into the same ledger: no change at all.
        await feed(pool, stream)
        await handlers(pool).post([Submitted(opening, "c-opening", None)], now=T0)
        async with pool.acquire() as conn:
            second = await dump(conn)
        for table in TABLES:
            assert second[table] == first[table], table
        # And the outcomes are the originals: every replayed request was a duplicate.
        again = await handlers(pool).post([Submitted(r, "c", None) for item in stream if item != "tick" for r in item],
                                       now=T0 + timedelta(seconds=1))
        assert {o.status for o in again} <= {"duplicate", "conflict"}
    finally:
        await pool.close()
