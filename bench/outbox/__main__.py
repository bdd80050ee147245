"""Run the outbox relay benchmark; see bench/outbox/__init__.py for what is measured."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import time
import uuid

import asyncpg

from shared import db
from devtools.stack import fresh_kafka, start_infra
from shared.kafka import ensure_topics, make_producer
from shared.outbox import OutboxRelay, enqueue
from shared.topics import LEDGER_POSTED

FILL_CHUNK_ROWS = 5_000  # rows per INSERT while filling: bounded statements
_ENV = (  # a ledger.posted.v1 envelope (shared.contracts.TransferPosted) as the ledger writes it
    '{{"event_id":"{eid}","type":"ledger.posted.v1","occurred_at":"2026-11-21T12:00:00.123456Z",'
    '"correlation_id":"{corr}","causation_id":"{cause}","producer":"ledger","data":{{"transfer_id":"{tid}",'
    '"status":"posted","entry_seq":{i},"entry_hash":"{h:064x}","reason":null}}}}'
)


def out(msg: str) -> None:
    print(msg, flush=True)


class PerRowRelay(OutboxRelay):
    """The relay's publish loop before batching (the baseline): one ``send`` per row."""

    async def _send_batches(self, rows: list[asyncpg.Record]) -> list[asyncio.Future]:
        futures = []
        for r in rows:
            headers = [(k, str(v).encode()) for k, v in json.loads(r["headers"]).items()]
            futures.append(await self._producer.send(r["topic"], r["payload"], key=r["key"], headers=headers))
        return futures


def rows(run: str, start: int, n: int, rng: random.Random) -> list[tuple[str, bytes, bytes, str]]:
    out_rows = []
    for i in range(start, start + n):
        tid = f"pay-{run}-{i:08d}-hold"
        eid, corr, cause = (uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(3))
        value = _ENV.format(eid=eid, corr=corr, cause=cause, tid=tid, i=i, h=rng.getrandbits(256))
        headers = json.dumps({"event_type": "ledger.posted.v1", "event_id": str(eid), "correlation_id": str(corr),
                              "causation_id": str(cause)})
        out_rows.append((LEDGER_POSTED.name, tid.encode(), value.encode(), headers))
    return out_rows


async def fill(pool: asyncpg.Pool, run: str, n: int) -> int:
    """Fill the outbox with ``n`` rows; returns their mean payload bytes."""
    rng = random.Random(run)
    payload_bytes = 0
    for start in range(0, n, FILL_CHUNK_ROWS):
        chunk = rows(run, start, min(FILL_CHUNK_ROWS, n - start), rng)
        payload_bytes += sum(len(r[2]) for r in chunk)
        async with pool.acquire() as conn, conn.transaction():
            await enqueue(conn, chunk)
    async with pool.acquire() as conn:
        await conn.execute("VACUUM ANALYZE outbox")  # as autovacuum would have: both paths start alike
    return payload_bytes // n


async def measure(pool: asyncpg.Pool, relay: OutboxRelay, run: str, n: int, warmup: int) -> tuple[float, float]:
    """Drain a filled outbox; (events/s, CPU µs per event of this process)."""
    await fill(pool, f"{run}-warm", warmup)
    await relay.drain(timeout_s=600)
    await fill(pool, run, n)
    cpu0, t0 = time.process_time(), time.perf_counter()
    await relay.drain(timeout_s=600)
    wall_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    left = await pool.fetchval("SELECT count(*) FROM outbox")
    if left:
        raise RuntimeError(f"outbox not drained: {left} rows left")
    return n / wall_s, cpu_s / n * 1e6


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    n = args.rows or (20_000 if args.quick else 100_000)
    infra = start_infra()
    out(f"bench outbox ({'quick' if args.quick else 'full'}) on {infra.kind}; {n:,} rows per path,"
        f" passes of {args.batch_limit}, {LEDGER_POSTED.name} ({LEDGER_POSTED.partitions} partitions)")
    broker = None
    try:
        from services.ledger.settings import LedgerSettings

        dsn = await db.ensure_database(infra.postgres_dsn, f"bench_outbox_{uuid.uuid4().hex[:6]}")
        bootstrap, broker = await fresh_kafka(infra)
        settings = LedgerSettings(database_url=dsn, kafka_bootstrap_servers=bootstrap)
        await ensure_topics(settings, (LEDGER_POSTED,))
        pool = await db.create_pool(dsn, min_size=1, max_size=2)
        async with pool.acquire() as conn:
            await db.migrate(conn, "shared")
        producer = make_producer(settings, client_id="bench-outbox")
        await producer.start()
        try:
            payload = await fill(pool, "size", 1_000)
            await pool.execute("DELETE FROM outbox")
            out(f"rows: mean payload {payload} bytes, unique keys, 4 headers")
            results = {}
            for name, cls in (("per-row", PerRowRelay), ("batched", OutboxRelay)):
                relay = cls(pool, producer, batch_limit=args.batch_limit)
                rate, cpu_us = await measure(pool, relay, f"{name[:3]}-{uuid.uuid4().hex[:6]}", n, warmup=2_000)
                results[name] = rate
                out(f"{name}: {rate:,.0f} events/s, {cpu_us:.1f} µs CPU per event in this process")
        finally:
            await producer.stop()
            await pool.close()
        new, old = results["batched"], results["per-row"]
        out(f"batched/per-row: {new / old:.2f}x")
        out(f"bench=outbox events_per_s={new:.0f} baseline_events_per_s={old:.0f} ratio={new / old:.2f}")
    finally:
        if broker is not None:
            broker.stop()
        infra.stop()
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.outbox", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes: 20,000 rows per path, well under a minute")
    p.add_argument("--rows", type=int, help="outbox rows per path (default 100,000, quick 20,000)")
    p.add_argument("--batch-limit", type=int, default=500, help="rows per relay pass (<SVC>_OUTBOX_BATCH_LIMIT)")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
