"""The machine's floor for a single-writer ledger: the least work any ledger on this design must do
per transfer, with nothing else, through the same broker and PostgreSQL as the real path.

What it does per batch (up to ``batch_max`` records from ``ledger.transfer-requests.v1``, one
transaction, offsets committed after the commit, exactly the real consumer's order):

- ``json.loads`` each value (no pydantic, no rule checks, no idempotency lookup, no floors);
- one ``entries`` row and two ``legs`` rows per transfer into the ledger's real schema (same
  indexes and append-only triggers), with running balances computed in memory and a SHA-256
  hash chained over the raw request bytes;
- one UPDATE of ``accounts`` per touched account and one of ``chain_head``;
- with ``outbox=True``, one outbox row per transfer (a short payload; the relay is not running,
  so nothing is ever published or deleted: cheaper than the real ledger's outbox).

It is pipelined as well as one writer can be: the next batch is fetched and its rows built
while the previous batch's transaction is in PostgreSQL. Because it leaves out work the real
ledger cannot skip, its rate is an upper bound for this design on this machine, not a target.
This is a measuring tool only: it writes hashes over raw bytes that ``verify`` would not
accept, into a database of its own that the benchmark drops afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer

from shared.db import migrate
from shared.topics import LEDGER_TRANSFER_REQUESTS


@dataclass
class FloorResult:
    transfers_per_s: float
    window_s: float
    posted: int
    cpu_us: dict[str, float]


SLICE = 250  # transfers built between two yields to the event loop
_ENTRY_COLS = ["seq", "transfer_id", "kind", "fingerprint", "request", "posted_at", "prev_hash", "hash"]
_LEG_COLS = ["entry_seq", "account_id", "amount_pence", "pending_pence", "balance_after_pence",
             "pending_debits_after_pence", "pending_credits_after_pence", "posted_at"]


class _Chain:
    """In-memory state of the one writer: chain head and every touched account's balance."""

    def __init__(self) -> None:
        self.seq = 0
        self.hash = "0" * 64
        self.balances: dict[str, int] = {}

    def rows(self, values: list[bytes], stamp: datetime, outbox: bool, entries: list, legs: list, events: list,
             deltas: dict[str, int]) -> None:
        """Append the rows of ``values`` to the batch's lists and balance changes."""
        for value in values:
            data = json.loads(value)["data"]
            self.seq += 1
            seq = self.seq
            digest = hashlib.sha256(self.hash.encode() + value).hexdigest()
            entries.append((seq, data["transfer_id"], "posted", "", "{}", stamp, self.hash, digest))
            self.hash = digest
            for leg in data["legs"]:
                account, amount = leg["account_id"], leg["amount_pence"]
                after = self.balances.get(account, 0) + amount
                self.balances[account] = after
                deltas[account] = deltas.get(account, 0) + amount
                legs.append((seq, account, amount, 0, after, 0, 0, stamp))
            if outbox:
                events.append(("ledger.posted.v1", data["transfer_id"].encode(),
                               b'{"seq":%d,"hash":"%s"}' % (seq, digest.encode()), "{}"))


async def _write(conn: asyncpg.Connection, chain_seq: int, chain_hash: str, entries: list, legs: list,
                 events: list, deltas: dict[str, int], stamp: datetime) -> None:
    # Each statement is a round trip; between them the next batch is being built.
    async with conn.transaction():
        await conn.fetchrow("SELECT seq FROM chain_head WHERE id = 1 FOR UPDATE")
        await conn.copy_records_to_table("entries", records=entries, columns=_ENTRY_COLS)
        await conn.copy_records_to_table("legs", records=legs, columns=_LEG_COLS)
        changed = sorted(deltas.items())
        await conn.execute(
            "UPDATE accounts SET posted_pence = posted_pence + d.p FROM unnest($1::text[], $2::bigint[]) AS d(id, p)"
            " WHERE accounts.account_id = d.id",
            [a for a, _ in changed], [p for _, p in changed],
        )
        if events:
            await conn.copy_records_to_table("outbox", records=events, columns=["topic", "key", "payload", "headers"])
        await conn.execute("UPDATE chain_head SET seq = $1, hash = $2, posted_at = $3 WHERE id = 1",
                           chain_seq, chain_hash, stamp)


async def run_floor(bootstrap: str, dsn: str, accounts: list[str], *, n: int, window_s: float, batch_max: int,
                    outbox: bool, cpu_window: Any) -> FloorResult:
    """Consume ``n`` pre-produced transfer requests (or until ``window_s`` after the first commit)."""
    conn = await asyncpg.connect(dsn)
    await migrate(conn, "shared", "services.ledger")
    # Accounts exist beforehand (the real ledger creates them on first use): the floor is generous.
    await conn.execute(
        "INSERT INTO accounts(account_id, type, floor_pence) SELECT a, split_part(a, ':', 1), NULL"
        " FROM unnest($1::text[]) a ON CONFLICT DO NOTHING", accounts)
    consumer = AIOKafkaConsumer(
        LEDGER_TRANSFER_REQUESTS.name, bootstrap_servers=bootstrap, group_id=f"floor-{time.monotonic_ns()}",
        enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=20,
        max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=32 * 1024 * 1024)
    await consumer.start()
    chain = _Chain()
    posted = 0
    t_first = None
    cpu = None
    pending: asyncio.Task | None = None
    pending_offsets: dict[Any, int] = {}
    try:
        while True:
            got = await consumer.getmany(timeout_ms=200, max_records=batch_max)
            values = [r.value for recs in got.values() for r in recs]
            offsets = {tp: recs[-1].offset + 1 for tp, recs in got.items() if recs}
            planned = None
            if values:
                # Build the next batch's rows in slices, yielding between them, so the batch in
                # flight can send its next statement while this one is built (one event loop).
                stamp = datetime.now(timezone.utc)
                entries: list = []
                legs: list = []
                events: list = []
                deltas: dict[str, int] = {}
                for lo in range(0, len(values), SLICE):
                    chain.rows(values[lo:lo + SLICE], stamp, outbox, entries, legs, events, deltas)
                    await asyncio.sleep(0)
                planned = (chain.seq, chain.hash, entries, legs, events, deltas, stamp)
            if pending is not None:  # one transaction in flight at a time: the single writer
                await pending
                await consumer.commit(pending_offsets)
                pending = None
                if t_first is None:
                    t_first, cpu, posted_at_first = time.perf_counter(), cpu_window(), posted
                elif posted >= n or time.perf_counter() - t_first >= window_s:
                    break
            if planned is None:
                if posted >= n:
                    break
                continue
            pending = asyncio.create_task(_write(conn, *planned))
            pending_offsets = offsets
            posted += len(values)
        if pending is not None:
            await pending
        t_end = time.perf_counter()
    finally:
        await consumer.stop()
        await conn.close()
    if t_first is None or cpu is None:
        raise RuntimeError("the floor posted nothing")
    in_window = max(posted - posted_at_first, 1)
    window = t_end - t_first
    used = cpu.take()
    return FloorResult(in_window / window, window, posted,
                       {k: v / 100 * window / in_window * 1e6 for k, v in used.items()})
