"""The pipelined writer (store.post_batch with chunk_records) against real PostgreSQL: a batch
written as chunks, each planned while the one before commits, leaves exactly the journal one
transaction per batch leaves; a writer that moves the chain in between is noticed and the chunk
planned again under the lock; a chunk that fails leaves the committed chunks as duplicates and
a retry ends where a clean run ends."""

from __future__ import annotations

import random
from typing import Any

import asyncpg
import pytest

from services.ledger import store
from shared import db
from tests.integration.test_ledger_replay import TABLES, dump
from tests.unit.test_ledger_domain import STEP, STREAM_START, T0, random_stream, req

pytestmark = pytest.mark.integration


def merged(stream: list, size: int) -> list:
    """The stream's batches joined up to ``size`` requests (ticks kept), so chunks span batches."""
    out: list = []
    batch: list = []
    for item in stream:
        if item == "tick":
            if batch:
                out.append(batch)
                batch = []
            out.append("tick")
            continue
        batch += item
        if len(batch) >= size:
            out.append(batch)
            batch = []
    if batch:
        out.append(batch)
    return out


async def ledger(dsn: str) -> asyncpg.Pool:
    pool = await db.create_pool(dsn)
    async with pool.acquire() as conn:
        await db.migrate(conn, "shared", "services.ledger")
    opening = req("opening", "posted", tuple(sorted(STREAM_START.items())))
    await store.post_batch(pool, [store.Submitted(opening, "c-opening", None)], now=T0 - STEP)
    return pool


async def feed(pool: asyncpg.Pool, stream: list, chunk: int | None) -> list[tuple[Any, ...]]:
    now, outcomes = T0, []
    for item in stream:
        if item == "tick":
            now += STEP
            await store.expire_due(pool, now=now)
        else:
            got = await store.post_batch(pool, [store.Submitted(r, f"c-{r.transfer_id}", None) for r in item],
                                         now=now, chunk_records=chunk)
            outcomes += [tuple(o) for o in got]
    return outcomes


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_chunks_planned_ahead_write_what_one_transaction_writes(database, second_database, seed: int) -> None:
    stream = merged(random_stream(random.Random(seed), 400), 12)
    assert max(len(b) for b in stream if b != "tick") >= 12
    one, piped = await ledger(database), await ledger(second_database)
    try:
        replans = store.REPLANNED._value.get()
        expected = await feed(one, stream, None)
        got = await feed(piped, stream, 2)
        assert got == expected  # every outcome: status, entry seq and hash, reason
        assert {o[1] for o in got} >= {"posted", "pending", "duplicate", "conflict", "rejected"}
        async with one.acquire() as a, piped.acquire() as b:
            first, second = await dump(a), await dump(b)
            for table in TABLES:
                assert second[table] == first[table], table
            assert (await store.verify(b))["ok"]
            # The same events, in the same order (ids and times aside).
            events = "SELECT key, (convert_from(payload, 'UTF8')::jsonb)->'data' FROM outbox ORDER BY id"
            assert [tuple(r) for r in await b.fetch(events)] == [tuple(r) for r in await a.fetch(events)]
        assert store.REPLANNED._value.get() == replans  # nobody else wrote: nothing planned twice
    finally:
        await one.close()
        await piped.close()


def transfers(prefix: str, n: int) -> list[store.Submitted]:
    accounts = sorted(STREAM_START)
    out = []
    for i in range(n):
        a, b = accounts[i % len(accounts)], accounts[(i + 3) % len(accounts)]
        if a == b:
            b = accounts[(i + 1) % len(accounts)]
        out.append(store.Submitted(req(f"{prefix}{i}", "posted", ((a, -(i + 1)), (b, i + 1))), f"c-{prefix}{i}", None))
    return out


async def test_a_writer_between_chunks_is_noticed_and_the_chunk_planned_again(database, monkeypatch) -> None:
    pool = await ledger(database)
    try:
        calls = {"n": 0}
        original = store._write_chunk

        async def other_writer_first(conn, part, planned, now):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 2:  # chunk 2 was planned on chunk 1's result: move the chain under it
                [o] = await store.post_batch(pool, transfers("other", 1), now=T0)
                assert o.status == "posted"
            return await original(conn, part, planned, now)

        monkeypatch.setattr(store, "_write_chunk", other_writer_first)
        replans = store.REPLANNED._value.get()
        batch = transfers("t", 12)
        outcomes = await store.post_batch(pool, batch, now=T0, chunk_records=3)
        assert [o.status for o in outcomes] == ["posted"] * 12
        assert store.REPLANNED._value.get() - replans >= 2  # chunk 2, and chunk 3 planned on chunk 2's first plan
        async with pool.acquire() as conn:
            result = await store.verify(conn)
            assert result["ok"], result
            assert result["head_seq"] == 1 + 12 + 1
            seqs = [o.entry_seq for o in outcomes]
            assert seqs == sorted(seqs) and len(set(seqs)) == 12
            stored = {r["transfer_id"]: r["seq"] for r in await conn.fetch("SELECT transfer_id, seq FROM entries")}
            assert all(stored[o.transfer_id] == o.entry_seq for o in outcomes)  # outcomes name what was written
            assert await conn.fetchval("SELECT sum(posted_pence) FROM accounts") == 0
    finally:
        await pool.close()


async def test_a_failed_chunk_leaves_duplicates_and_a_retry_ends_where_a_clean_run_ends(
        database, second_database, monkeypatch) -> None:
    clean, faulty = await ledger(database), await ledger(second_database)
    try:
        batch = transfers("t", 10)
        await store.post_batch(clean, batch, now=T0, chunk_records=4)
        calls = {"n": 0}
        original = store._write

        async def fail_second(conn, plan, part, stamp, cids):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 2:
                raise ConnectionResetError("PostgreSQL went away mid-chunk")
            return await original(conn, plan, part, stamp, cids)

        monkeypatch.setattr(store, "_write", fail_second)
        with pytest.raises(ConnectionResetError):
            await store.post_batch(faulty, batch, now=T0, chunk_records=4)
        async with faulty.acquire() as conn:
            assert await conn.fetchval("SELECT seq FROM chain_head") == 1 + 4  # chunk 1 only
        monkeypatch.setattr(store, "_write", original)
        again = await store.post_batch(faulty, batch, now=T0, chunk_records=4)
        assert [o.status for o in again] == ["duplicate"] * 4 + ["posted"] * 6
        async with clean.acquire() as a, faulty.acquire() as b:
            first, second = await dump(a), await dump(b)
            for table in TABLES:
                assert second[table] == first[table], table
    finally:
        await clean.close()
        await faulty.close()
