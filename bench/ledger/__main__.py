"""Run the ledger benchmark; see bench/ledger/__init__.py for what is measured and how."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer

from bench.e2e.probes import CpuWindow, Processes
from bench.relay import start_external_relay, stop_process
from shared.auth import NATIONAL, SCOPES, Principal, bearer_headers
from shared.db import ensure_database, migrate
from shared.reference import load_reference
from devtools.stack import fresh_kafka, start_infra
from shared.topics import LEDGER_TRANSFER_REQUESTS

ACCOUNTS_PER_SIDE = 5_000  # 5,000 paying + 5,000 paid accounts = 10,000
FUNDS = [f"fund:{r}" for r in ("Y56", "Y58", "Y59", "Y60", "Y61", "Y62", "Y63")]  # the 7 regional funds (hot accounts)
_BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def trust_code(i: int) -> str:
    """The i-th of the benchmark's 10,000 made-up trust codes (3 characters, as ODS trusts have)."""
    return _BASE36[i // 1296 % 36] + _BASE36[i // 36 % 36] + _BASE36[i % 36]


# The ledger admits only accounts of organisations its reference data knows, so the benchmark runs
# on reference data of its own (bench_reference): 10,000 trusts. Both sides of a uniform transfer
# are provider accounts (neither has a floor, as a commissioner's has none): the work per transfer
# is the same whatever the account kinds.
DEBITS = [f"provider:{trust_code(i)}" for i in range(ACCOUNTS_PER_SIDE)]
CREDITS = [f"provider:{trust_code(ACCOUNTS_PER_SIDE + i)}" for i in range(ACCOUNTS_PER_SIDE)]
DEBIT_INDEX = {a: i for i, a in enumerate(DEBITS)}


def bench_reference() -> str:
    """A reference data folder with the benchmark's trusts (and the shipped regions): its path."""
    import shutil
    import tempfile
    from pathlib import Path

    import shared.reference as shipped

    import atexit

    folder = Path(tempfile.mkdtemp(prefix="pp-bench-ref-"))
    atexit.register(shutil.rmtree, folder, True)
    base = Path(shipped.__file__).parent
    for name in ("regions.csv", "commissioners.csv"):
        shutil.copy(base / name, folder / name)
    regions = ("Y56", "Y58", "Y59", "Y60", "Y61", "Y62", "Y63")
    rows = [f"{trust_code(i)},Bench trust {i},{regions[i % 7]}" for i in range(2 * ACCOUNTS_PER_SIDE)]
    (folder / "providers.csv").write_text("ods_code,name,region_code\n" + "\n".join(rows) + "\n")
    (folder / "contracts.csv").write_text("icb_code,ods_code\n")
    return str(folder)


BENCH_REFERENCE = bench_reference()


def out(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------
_ENV = (
    '{{"event_id":"{eid}","type":"ledger.transfer-requested.v1","occurred_at":"2026-11-21T12:00:00Z",'
    '"correlation_id":"b-{i}","causation_id":null,"producer":"payments","data":{{"transfer_id":"{tid}","kind":"posted",'
    '"legs":[{{"account_id":"{debit}","amount_pence":-{amt}}},{{"account_id":"{credit}","amount_pence":{amt}}}],'
    '"cause":{{"kind":"{cause}","payment_id":"p-{i}"}}}}}}'
)


def message(workload: str, run: str, i: int, rng: random.Random) -> tuple[bytes, bytes]:
    debit = DEBITS[rng.randrange(ACCOUNTS_PER_SIDE)]
    if workload == "hot":
        credit, cause = FUNDS[rng.randrange(7)], "diversion"
    else:
        credit, cause = CREDITS[rng.randrange(ACCOUNTS_PER_SIDE)], "payment"
    tid = f"pay:{run}-{i}"  # payments' namespace, as payments' transfers arrive on this topic
    value = _ENV.format(eid=uuid.UUID(int=rng.getrandbits(128), version=4), i=i, tid=tid, debit=debit, credit=credit,
                        amt=rng.randint(1, 100_000), cause=cause)
    return tid.encode(), value.encode()


async def produce(bootstrap: str, workload: str, run: str, n: int) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=1024 * 1024)
    await producer.start()
    rng = random.Random(f"{workload}-{n}")
    t0 = time.perf_counter()
    try:
        pending: list[Any] = []
        for i in range(n):
            key, value = message(workload, run, i, rng)
            pending.append(await producer.send(LEDGER_TRANSFER_REQUESTS.name, value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return n / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Kafka -> ledger throughput
# ---------------------------------------------------------------------------------------------
@dataclass
class Throughput:
    workload: str
    transfers_per_s: float
    window_s: float
    posted: int
    produced: int
    batch_p50: float
    outbox_backlog: int
    verified: str
    cpu_us: dict[str, float]  # CPU time per transfer posted in the window, by process group


async def throughput(infra: Any, workload: str, *, n: int, window_s: float, batch_max: int, verify: bool,
                     relay: str) -> Throughput:
    from services.ledger import consumer
    from services.ledger.app import create_app
    from services.ledger.settings import LedgerSettings
    from shared.kafka import ensure_topics
    from shared.process import tune_process

    db_name = f"bench_ledger_{workload}_{uuid.uuid4().hex[:6]}"
    dsn = await ensure_database(infra.postgres_dsn, db_name)
    bootstrap, broker = await fresh_kafka(infra)
    try:
        settings = LedgerSettings(database_url=dsn, kafka_bootstrap_servers=bootstrap, consumer_group=f"bench-{uuid.uuid4().hex[:6]}",
                                  batch_max_records=batch_max, batch_timeout_ms=20, http_port=0, log_level="WARNING",
                                  outbox_relay=relay, reference_dir=BENCH_REFERENCE, mode="development")
        await ensure_topics(settings)
        rate_in = await produce(bootstrap, workload, db_name, n)
        out(f"  {workload}: produced {n:,} transfer requests to {LEDGER_TRANSFER_REQUESTS.name} ({rate_in:,.0f}/s, not measured)")
        app = create_app(settings)
        tune_process(settings)  # as `python -m services.ledger` does
        conn = await asyncpg.connect(dsn)
        samples: list[tuple[float, int]] = []
        relay_proc = None
        try:
            async with app.router.lifespan_context(app):
                if relay == "external":  # after the app's start-up has migrated the outbox table
                    relay_proc = start_external_relay("ledger", dsn, bootstrap)
                deadline = time.perf_counter() + window_s + 120
                t_warm = seq_warm = None
                procs = cpu_groups(infra, broker, relay_proc)
                cpu: CpuWindow | None = None
                while time.perf_counter() < deadline:
                    await asyncio.sleep(0.25)
                    seq = await conn.fetchval("SELECT seq FROM chain_head WHERE id = 1")
                    now = time.perf_counter()
                    samples.append((now, seq))
                    if t_warm is None and seq > 0:
                        t_warm, seq_warm = now, seq  # first committed batch: the consumer is assigned and warm
                        cpu = CpuWindow(procs)
                    if t_warm is not None and (seq >= n or now - t_warm >= window_s):
                        break
                if t_warm is None:
                    raise RuntimeError("the ledger posted nothing")
                t_end, seq_end = samples[-1]
                assert cpu is not None
                window_cpu = cpu.take()
                backlog = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            rate = (seq_end - seq_warm) / (t_end - t_warm)  # type: ignore[operator]
            posted_in_window = max(seq_end - seq_warm, 1)  # type: ignore[operator]
            cpu_us = {k: v / 100 * (t_end - t_warm) / posted_in_window * 1e6 for k, v in window_cpu.items()}
            totals = await conn.fetchval("SELECT sum(posted_pence) FROM accounts")
            verified = f"sum of balances {totals}"
            if verify:
                from services.ledger import queries as store

                result = await store.verify(conn)
                verified = f"verify ok={result['ok']} ({result['entries_checked']:,} entries), {verified}"
            bsz = consumer.BATCH_SIZE.collect()[0].samples
            count = next(s.value for s in bsz if s.name.endswith("_count"))
            total = next(s.value for s in bsz if s.name.endswith("_sum"))
        finally:
            stop_process(relay_proc)
            await conn.close()
        return Throughput(workload, rate, t_end - t_warm, seq_end, n, total / max(count, 1), backlog, verified, cpu_us)
    finally:
        if broker is not None:
            broker.stop()
        await drop_database(infra.postgres_dsn, db_name)


async def floor(infra: Any, *, n: int, window_s: float, batch_max: int, outbox: bool) -> Any:
    """The single-writer floor (bench/ledger/floor.py) on the uniform workload, on a fresh broker
    and database, with CPU per transfer by process as for the real path."""
    from bench.ledger.floor import run_floor
    from services.ledger.settings import LedgerSettings
    from shared.kafka import ensure_topics

    db_name = f"bench_floor_{uuid.uuid4().hex[:6]}"
    dsn = await ensure_database(infra.postgres_dsn, db_name)
    bootstrap, broker = await fresh_kafka(infra)
    try:
        await ensure_topics(LedgerSettings(database_url=dsn, kafka_bootstrap_servers=bootstrap))
        await produce(bootstrap, "uniform", db_name, n)
        accounts = DEBITS + CREDITS
        procs = cpu_groups(infra, broker, None)
        return await run_floor(bootstrap, dsn, accounts, n=n, window_s=window_s, batch_max=batch_max, outbox=outbox,
                               cpu_window=lambda: CpuWindow(procs))
    finally:
        if broker is not None:
            broker.stop()
        await drop_database(infra.postgres_dsn, db_name)


def cpu_groups(infra: Any, broker: Any, relay_proc: Any) -> Processes:
    """The processes that do the work: this one (the ledger's consumer, and its relay when inline),
    an external relay, the broker, PostgreSQL (postmaster and backends)."""
    groups = {"ledger": [os.getpid()]}
    if relay_proc is not None:
        groups["relay"] = [relay_proc.pid]
    kafka = broker or infra.kafka
    if kafka is not None and kafka.proc is not None:
        groups["broker"] = [kafka.proc.pid]
    postmaster = None
    if infra.postgres is not None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            postmaster = int((infra.postgres.data_dir / "postmaster.pid").read_text().split()[0])
            groups["postgres"] = [postmaster]
    return Processes(groups, postmaster)


def fmt_http(http: dict[str, float], kafka_rate: float, clients: int) -> str:
    return (f"http: {http['transfers_per_s']:,.0f} transfers/s with {clients} concurrent clients ({http['client']}) posting one"
            f" transfer per request"
            f" (group commit: mean group {http['mean_group']:.1f}, written in {http['mean_group_ms']:.1f} ms): {http['transfers_per_s'] / kafka_rate:.0%} of the Kafka path's"
            f" {kafka_rate:,.0f}/s; a bare FastAPI endpoint, same clients, same run: {http['bare_per_s']:,.0f} requests/s"
            f" (the ledger reaches {http['transfers_per_s'] / max(http['bare_per_s'], 1):.0%} of it)")


def fmt_cpu_us(cpu_us: dict[str, float], target_per_s: int) -> str:
    """CPU µs per transfer by process (``other``: the rest of the machine, left out of the total)."""
    mine = {k: v for k, v in cpu_us.items() if k != "other"}
    total = sum(mine.values())
    parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(mine.items(), key=lambda kv: -kv[1]))
    return (f"CPU per transfer (µs): {parts}; total {total:.0f} µs, so {target_per_s:,}/s would need"
            f" {total * target_per_s / 1e6:.1f} cores at this cost")


async def drop_database(server_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


# ---------------------------------------------------------------------------------------------
# HTTP: concurrent clients, one transfer per request (group commit joins them)
# ---------------------------------------------------------------------------------------------
async def offered_load(url: str, path: str, body_of: Any, *, clients: int, window_s: float, warmup_s: float,
                       headers: dict[str, str], ok: int) -> float:
    """``clients`` concurrent clients, each sending one request at a time (``body_of(client, k)``)
    for ``warmup_s`` + ``window_s``; the answers ``ok`` per second in the window."""
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup_s
    end = start + window_s
    counts = {"in_window": 0, "refused": 0}

    async def client(c: int) -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
            k = 0
            while loop.time() < end:
                r = await http.post(path, json=body_of(c, k))
                k += 1
                if r.status_code != ok:
                    counts["refused"] += 1
                    if counts["refused"] > 10:
                        raise RuntimeError(f"{url}{path} refused requests: {r.status_code} {r.text[:300]}")
                    continue
                if start <= loop.time() < end:
                    counts["in_window"] += 1

    await asyncio.gather(*(client(c) for c in range(clients)))
    return counts["in_window"] / window_s


WRK_SCRIPT = """
local counter, thread_no = 0, 0
local debits = {%(debits)s}
local credits = {%(credits)s}
function setup(thread) thread:set("no", thread_no); thread_no = thread_no + 1 end
function init(args) math.randomseed(no + 1) end
function request()
  counter = counter + 1
  local amount = math.random(1, 100000)
  local body = string.format(
    '{"transfer_id":"manual:%(run)s-%%d-%%d","cause":{"kind":"manual"},"legs":[{"account_id":"%%s","amount_pence":-%%d},'
    .. '{"account_id":"%%s","amount_pence":%%d}]}',
    no, counter, debits[math.random(#debits)], amount, credits[math.random(#credits)], amount)
  return wrk.format("POST", "%(path)s", {["Content-Type"] = "application/json", ["Authorization"] = "%(auth)s"}, body)
end
"""


def wrk_load(url: str, path: str, *, run: str, clients: int, window_s: float, auth: str) -> tuple[float, int]:
    """The same offered load from wrk (C, from Debian's package): (requests/s answered 2xx, others),
    so the clients' own CPU does not come out of the server's share of the 2 cores."""
    import re
    import subprocess
    import tempfile

    lua = WRK_SCRIPT % {"debits": ",".join(f'"{a}"' for a in DEBITS), "credits": ",".join(f'"{a}"' for a in CREDITS),
                        "run": run, "path": path, "auth": auth}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    result = subprocess.run(["wrk", "-t", "2", "-c", str(clients), "-d", f"{window_s:.0f}s", "-s", f.name, url],
                            capture_output=True, text=True, timeout=window_s + 60)
    os.unlink(f.name)
    rate = float(re.search(r"Requests/sec:\s+([0-9.]+)", result.stdout).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+([0-9]+)", result.stdout)
    total = int(re.search(r"([0-9]+) requests in", result.stdout).group(1))  # type: ignore[union-attr]
    refused = int(bad.group(1)) if bad else 0
    return rate * (total - refused) / max(total, 1), refused


async def http_phase(infra: Any, *, clients: int, window_s: float, warmup_s: float = 2.0) -> dict[str, float]:
    """``clients`` concurrent clients, each posting one transfer per request (``POST /v1/transfers``)
    to the ledger run as its own process (``python -m services.ledger``, as deployed), for
    ``window_s`` after ``warmup_s``; transfers/s counted from the 201 answers in the window. Beside
    it, in the same run, the same clients against a bare FastAPI endpoint served by uvicorn the same
    way (``bench/feedback/bare.py``): the ceiling of one Python HTTP process here."""
    import subprocess
    import tempfile
    from pathlib import Path

    from devtools.stack import ServiceProcess, free_port, wait_for_port
    from shared.security import DEV_METRICS_TOKEN

    root = Path(__file__).resolve().parents[2]
    db_name = f"bench_http_{uuid.uuid4().hex[:6]}"
    dsn = await ensure_database(infra.postgres_dsn, db_name)
    bootstrap, broker = await fresh_kafka(infra)
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="pp-bench-http-"))
    env = {**os.environ, "PATIENT_POWER_MODE": "development", "LEDGER_DATABASE_URL": dsn, "LEDGER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "LEDGER_HTTP_PORT": str(port), "LEDGER_REFERENCE_DIR": BENCH_REFERENCE, "LEDGER_LOG_LEVEL": "WARNING",
           "LEDGER_CONSUMER_GROUP": f"bench-http-{uuid.uuid4().hex[:6]}", "PYTHONPATH": str(root)}
    svc = ServiceProcess("ledger", port, env, work / "ledger.log")
    svc.start()
    bare_port = free_port()
    bare = subprocess.Popen([sys.executable, "-m", "bench.feedback.bare", "--port", str(bare_port), "--log-level", "WARNING"],
                            cwd=root, stdout=open(work / "bare.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    run = uuid.uuid4().hex[:6]
    try:
        await svc.wait_healthy()
        wait_for_port("127.0.0.1", bare_port)
        rngs = [random.Random(c) for c in range(clients)]

        def transfer(c: int, k: int) -> dict[str, Any]:
            rng, amount = rngs[c], rngs[c].randint(1, 100_000)
            return {"transfer_id": f"manual:{run}-{c}-{k}", "cause": {"kind": "manual"},
                    "legs": [{"account_id": DEBITS[rng.randrange(ACCOUNTS_PER_SIDE)], "amount_pence": -amount},
                             {"account_id": CREDITS[rng.randrange(ACCOUNTS_PER_SIDE)], "amount_pence": amount}]}

        auth = bearer_headers(["ledger:admin"], subject="bench-ledger-admin")
        if shutil.which("wrk"):  # the clients in C: their CPU does not come out of the server's share
            client_kind = "wrk"
            await offered_load(svc.url, "/v1/transfers", transfer, clients=clients, window_s=warmup_s, warmup_s=0, headers=auth, ok=201)
            ledger_rate, refused = await asyncio.to_thread(wrk_load, svc.url, "/v1/transfers", run=f"{run}w", clients=clients,
                                                           window_s=window_s, auth=auth["Authorization"])
            if refused:
                raise RuntimeError(f"the ledger refused {refused} transfers under wrk; see {work / 'ledger.log'}")
            bare_rate, _ = await asyncio.to_thread(wrk_load, f"http://127.0.0.1:{bare_port}", "/v1/submissions", run=run,
                                                   clients=clients, window_s=window_s, auth="")
        else:
            client_kind = "httpx"
            ledger_rate = await offered_load(svc.url, "/v1/transfers", transfer, clients=clients, window_s=window_s,
                                             warmup_s=warmup_s, headers=auth, ok=201)
            bare_rate = await offered_load(f"http://127.0.0.1:{bare_port}", "/v1/submissions", transfer, clients=clients,
                                           window_s=window_s, warmup_s=warmup_s, headers={}, ok=202)
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(svc.url + "/metrics", headers={"Authorization": f"Bearer {DEV_METRICS_TOKEN}"})).text
        sample = {line.split()[0]: float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith(("ledger_http_group_size_sum", "ledger_http_group_size_count", "ledger_http_group_seconds_sum"))}
        groups = max(sample.get("ledger_http_group_size_count", 0), 1)
        mean_group = sample.get("ledger_http_group_size_sum", 0) / groups
        mean_group_ms = sample.get("ledger_http_group_seconds_sum", 0) / groups * 1000
        conn = await asyncpg.connect(dsn)
        try:
            total = await conn.fetchval("SELECT sum(posted_pence) FROM accounts")
        finally:
            await conn.close()
        if total != 0:
            raise RuntimeError(f"the ledger's balances sum to {total}, not zero")
        return {"transfers_per_s": ledger_rate, "bare_per_s": bare_rate, "clients": clients, "mean_group": mean_group,
                "mean_group_ms": mean_group_ms,
                "client": client_kind}
    finally:
        svc.stop()
        stop_process(bare)
        if broker is not None:
            broker.stop()
        await drop_database(infra.postgres_dsn, db_name)


# ---------------------------------------------------------------------------------------------
# COPY baseline
# ---------------------------------------------------------------------------------------------
async def copy_baseline(infra: Any, rows: int) -> float:
    name = f"bench_copy_{uuid.uuid4().hex[:6]}"
    dsn = await ensure_database(infra.postgres_dsn, name)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "CREATE TABLE copy_baseline (seq bigint PRIMARY KEY, transfer_id text NOT NULL, account_id text NOT NULL,"
                " amount_pence bigint NOT NULL, posted_at timestamptz NOT NULL)"
            )
            t = datetime.now(timezone.utc)
            records = [(i, f"copy-{i}", CREDITS[i % ACCOUNTS_PER_SIDE], i % 100_000 + 1, t) for i in range(rows)]
            chunk = 10_000
            t0 = time.perf_counter()
            for lo in range(0, rows, chunk):
                async with conn.transaction():
                    await conn.copy_records_to_table("copy_baseline", records=records[lo:lo + chunk],
                                                     columns=["seq", "transfer_id", "account_id", "amount_pence", "posted_at"])
            return rows / (time.perf_counter() - t0)
        finally:
            await conn.close()
    finally:
        await drop_database(infra.postgres_dsn, name)


# ---------------------------------------------------------------------------------------------
# As-of and statement latency on a large journal
# ---------------------------------------------------------------------------------------------
FIXTURE_START = datetime(2026, 1, 1, tzinfo=timezone.utc)


async def build_fixture(conn: asyncpg.Connection, legs: int) -> int:
    """``legs`` journal rows (two per entry, 100p each) loaded with set-based SQL.

    Entry s debits DEBITS[s mod 5000] and credits CREDITS[s*7919 mod 5000], one second apart; 7919 is prime to 5000, so each account gets exactly one leg per block of 5,000
    entries and its balance after its k-th leg is ±100·k (computed in closed form). Hashes are
    placeholders: this is a latency fixture for the read path, not a verifiable chain.
    """
    entries = legs // 2
    entries -= entries % ACCOUNTS_PER_SIDE
    await conn.execute("SET maintenance_work_mem = '512MB'; SET synchronous_commit = off")
    await conn.execute(
        "INSERT INTO accounts(account_id, type, floor_pence) SELECT a, 'provider', NULL::bigint FROM unnest($1::text[]) a",
        DEBITS + CREDITS,
    )
    # The journal's monthly partitions for the fixture's span (one entry per second).
    end = FIXTURE_START + timedelta(seconds=entries + 1)
    await conn.execute("SELECT ledger_ensure_month(m::date) FROM generate_series($1::timestamp, $2::timestamp, interval '1 month') m",
                       FIXTURE_START.replace(tzinfo=None), end.replace(tzinfo=None))
    # Indexes are built after the load (a sorted build is much faster than millions of inserts);
    # on a partitioned table each partition gets its own.
    await conn.execute("ALTER TABLE legs DROP CONSTRAINT legs_pk; DROP INDEX legs_by_account_time;"
                       " ALTER TABLE entries DROP CONSTRAINT entries_pk; DROP INDEX entries_by_time;"
                       " DROP INDEX entries_by_pending; DROP INDEX entries_by_payment; DROP INDEX entries_by_episode")
    request = '{"cause":{"kind":"payment"},"kind":"posted","legs":[],"pending_id":null,"reverses":null,"timeout_s":null}'
    chunk = 5_000_000  # entries per statement: bounded memory and visible progress on big fixtures
    for lo in range(1, entries + 1, chunk):
        hi = min(entries, lo + chunk - 1)
        await conn.execute(
            "INSERT INTO entries(seq, transfer_id, kind, fingerprint, request, posted_at, prev_hash, hash, accounting_date,"
            " cause_kind, payment_id)"
            " SELECT s, 'fx-' || s, 'posted', '', $3, $4::timestamptz + s * interval '1 second', '', md5(s::text),"
            " ($4::timestamptz + s * interval '1 second')::date, 'payment', 'fx-' || s"
            " FROM generate_series($1::bigint, $2::bigint) s",
            lo, hi, request, FIXTURE_START,
        )
        await conn.execute(
            "INSERT INTO legs(entry_seq, account_id, amount_pence, pending_pence, balance_after_pence, pending_debits_after_pence,"
            " pending_credits_after_pence, posted_at)"
            " SELECT s, ($5::text[])[(s - 1) % $3 + 1], -100, 0, -100 * ((s - 1) / $3 + 1), 0, 0,"
            "        $4::timestamptz + s * interval '1 second' FROM generate_series($1::bigint, $2::bigint) s"
            " UNION ALL"
            " SELECT s, ($6::text[])[((s - 1) * 7919) % $3 + 1], 100, 0, 100 * ((s - 1) / $3 + 1), 0, 0,"
            "        $4::timestamptz + s * interval '1 second' FROM generate_series($1::bigint, $2::bigint) s",
            lo, hi, ACCOUNTS_PER_SIDE, FIXTURE_START, DEBITS, CREDITS,
        )
        if entries > chunk:
            out(f"    loaded {hi:,} of {entries:,} entries")
    await conn.execute(
        "ALTER TABLE legs ADD CONSTRAINT legs_pk PRIMARY KEY (entry_seq, account_id, posted_at);"
        " CREATE INDEX legs_by_account_time ON legs (account_id, posted_at, entry_seq)"
        "   INCLUDE (amount_pence, pending_pence, balance_after_pence, pending_debits_after_pence, pending_credits_after_pence);"
        " ALTER TABLE entries ADD CONSTRAINT entries_pk PRIMARY KEY (seq, posted_at);"
        " CREATE INDEX entries_by_time ON entries (posted_at, seq)"
    )
    per_account = entries // ACCOUNTS_PER_SIDE
    await conn.execute("UPDATE accounts SET posted_pence = CASE WHEN account_id = ANY($2::text[]) THEN -100 ELSE 100 END * $1::bigint",
                       per_account, DEBITS)
    await conn.execute("UPDATE chain_head SET seq = $1, posted_at = $2 WHERE id = 1", entries,
                       FIXTURE_START + timedelta(seconds=entries))
    for table in ("legs", "entries", "accounts"):
        await conn.execute(f"VACUUM (ANALYZE) {table}")
    return entries


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency(infra: Any, legs: int, queries: int) -> dict[str, float]:
    from fastapi import FastAPI

    from services.ledger import api
    from shared import db as shared_db
    from shared import http as shared_http

    name = f"bench_asof_{uuid.uuid4().hex[:6]}"
    dsn = await ensure_database(infra.postgres_dsn, name)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn, "shared", "services.ledger")
            t0 = time.perf_counter()
            entries = await build_fixture(conn, legs)
            rows = await conn.fetchval("SELECT count(*) FROM legs")
            partitions = await conn.fetchval("SELECT count(*) FROM pg_inherits WHERE inhparent = 'legs'::regclass")
            out(f"  fixture: {rows:,} journal rows (legs), {entries:,} entries, 10,000 accounts, loaded in {time.perf_counter() - t0:.0f} s")
        finally:
            await conn.close()
        pool = await shared_db.create_pool(dsn, min_size=1, max_size=2)
        app = FastAPI()
        app.state.runtime = SimpleNamespace(pool=pool)
        app.state.reference = load_reference(BENCH_REFERENCE)
        shared_http.install(app, "ledger")
        national = Principal("bench", frozenset(SCOPES), NATIONAL)

        @app.middleware("http")
        async def as_national_reader(request, call_next):  # type: ignore[no-untyped-def]
            request.state.principal = national  # the read path only: token checks are not what is measured
            return await call_next(request)

        app.include_router(api.router)
        rng = random.Random(7)
        span_s = entries

        def account() -> str:
            return rng.choice([DEBITS, CREDITS])[rng.randrange(ACCOUNTS_PER_SIDE)]

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as http:
            asof_ms, stmt_ms, checked = [], [], 0
            for i in range(queries + 50):
                acct = account()
                when = FIXTURE_START + timedelta(seconds=rng.uniform(0, span_s))
                t = time.perf_counter()
                r = await http.get(f"/v1/accounts/{acct}/balance", params={"as_of": when.isoformat()})
                elapsed = (time.perf_counter() - t) * 1000
                if r.status_code != 200:
                    raise RuntimeError(r.text)
                if i >= 50:  # the first 50 warm the pool and the caches
                    asof_ms.append(elapsed)
                # Check the answer against the closed form: one leg per account per 5,000 seconds.
                secs = (when - FIXTURE_START).total_seconds()
                if acct in DEBIT_INDEX:
                    first = DEBIT_INDEX[acct] + 1  # this account's legs are at entries first, first + 5000, ...
                    k = (int(secs) - first) // ACCOUNTS_PER_SIDE + 1 if int(secs) >= first else 0
                    if r.json()["posted_pence"] != -100 * k:
                        raise RuntimeError(f"as-of answer wrong for {acct} at {when}: {r.json()['posted_pence']} vs {-100 * k}")
                    checked += 1
            now_ms = []  # the baseline: the same HTTP path reading the account's cached row (no journal)
            for i in range(queries // 2 + 20):
                t = time.perf_counter()
                r = await http.get(f"/v1/accounts/{account()}/balance")
                if r.status_code != 200:
                    raise RuntimeError(r.text)
                if i >= 20:
                    now_ms.append((time.perf_counter() - t) * 1000)
            for i in range(queries // 2 + 20):
                acct = account()
                start = FIXTURE_START + timedelta(seconds=rng.uniform(0, span_s * 0.9))
                t = time.perf_counter()
                r = await http.get(f"/v1/accounts/{acct}/statement",
                                   params={"from": start.isoformat(), "to": (start + timedelta(days=30)).isoformat(), "limit": 100})
                elapsed = (time.perf_counter() - t) * 1000
                if r.status_code != 200:
                    raise RuntimeError(r.text)
                if i >= 20:
                    stmt_ms.append(elapsed)
        await pool.close()
        return {"asof_p50": pct(asof_ms, 0.5), "asof_p99": pct(asof_ms, 0.99), "stmt_p50": pct(stmt_ms, 0.5),
                "stmt_p99": pct(stmt_ms, 0.99), "asof_n": len(asof_ms), "stmt_n": len(stmt_ms), "checked": checked,
                "now_p99": pct(now_ms, 0.99), "partitions": partitions,
                "rows": rows, "asof_mean": statistics.mean(asof_ms)}
    finally:
        await drop_database(infra.postgres_dsn, name)


# ---------------------------------------------------------------------------------------------
async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    quick = args.quick
    window_s = args.seconds or (4.0 if quick else 60.0)
    n = args.transfers or (30_000 if quick else int(args.expect_rate * (window_s + 15)))
    copy_rows = 100_000 if quick else 1_000_000
    legs = args.journal_rows or (200_000 if quick else 10_000_000)
    queries = 200 if quick else 2_000
    infra = start_infra()
    out(f"bench ledger ({'quick' if quick else 'full'}) on {infra.kind}; window {window_s:.0f} s, batches of up to {args.batch:,}")
    if args.asof_curve:
        try:
            for size in args.asof_curve:
                lat = await latency(infra, size, queries)
                out(f"bench=ledger_asof legs={lat['rows']} partitions={lat['partitions']} asof_p50_ms={lat['asof_p50']:.2f}"
                    f" asof_p99_ms={lat['asof_p99']:.2f} stmt_p50_ms={lat['stmt_p50']:.2f} stmt_p99_ms={lat['stmt_p99']:.2f}"
                    f" baseline_current_balance_p99_ms={lat['now_p99']:.2f} checked={lat['checked']}")
        finally:
            infra.stop()
        return 0
    if args.only_http:
        try:
            r = await throughput(infra, "uniform", n=n, window_s=window_s, batch_max=args.batch, verify=False, relay=args.relay)
            http = await http_phase(infra, clients=args.http_clients, window_s=max(window_s, 5.0))
            out(f"uniform (Kafka): {r.transfers_per_s:,.0f} transfers/s; {fmt_http(http, r.transfers_per_s, args.http_clients)}")
            out(f"bench=ledger transfers_per_s={r.transfers_per_s:.0f} http_transfers_per_s={http['transfers_per_s']:.0f}"
                f" bare_http_per_s={http['bare_per_s']:.0f}")
        finally:
            infra.stop()
        return 0
    try:
        copy_rate = await copy_baseline(infra, copy_rows)
        out(f"copy baseline: {copy_rows:,} entry rows into a keyed table, {copy_rate:,.0f} rows/s")
        floors = {}
        for outbox in (False, True):
            f = await floor(infra, n=n, window_s=window_s, batch_max=args.batch, outbox=outbox)
            floors[outbox] = f
            what = "entries + legs + balances + outbox rows" if outbox else "entries + legs + balances"
            out(f"single-writer floor ({what}; no validation, rules, idempotency lookup or relay):"
                f" {f.transfers_per_s:,.0f} transfers/s over {f.window_s:.1f} s")
            out(f"  {fmt_cpu_us(f.cpu_us, 25_000)}")
        results = {}
        for workload in ("uniform", "hot"):
            r = await throughput(infra, workload, n=n, window_s=window_s, batch_max=args.batch, verify=quick, relay=args.relay)
            results[workload] = r
            drained = " (all consumed before the window ended)" if r.posted >= r.produced else ""
            out(f"{workload}: {r.transfers_per_s:,.0f} transfers/s over {r.window_s:.1f} s{drained}; {r.posted:,} posted;"
                f" mean batch {r.batch_p50:,.0f} records; outbox backlog at end {r.outbox_backlog:,}; {r.verified}")
            out(f"  {fmt_cpu_us(r.cpu_us, 25_000)}")
        http = await http_phase(infra, clients=args.http_clients, window_s=max(window_s, 5.0) if quick else min(window_s, 30.0))
        uni_rate = results["uniform"].transfers_per_s
        out(fmt_http(http, uni_rate, args.http_clients))
        lat = await latency(infra, legs, queries)
        out(f"as-of balance over {lat['rows']:,} journal rows: p50 {lat['asof_p50']:.2f} ms, p99 {lat['asof_p99']:.2f} ms"
            f" ({lat['asof_n']} queries via HTTP in process, {lat['checked']} answers checked)")
        out(f"statement page (100 lines, 30-day window): p50 {lat['stmt_p50']:.2f} ms, p99 {lat['stmt_p99']:.2f} ms ({lat['stmt_n']} queries)")
        uni, hot = results["uniform"].transfers_per_s, results["hot"].transfers_per_s
        floor_rate = floors[True].transfers_per_s
        out(f"hot/uniform: {hot / uni:.0%}; ledger/COPY rows: {(uni * 3) / copy_rate:.0%} (3 rows per transfer: entry + 2 legs);"
            f" ledger/floor: {uni / floor_rate:.0%} (floor with outbox rows {floor_rate:,.0f}/s)")
        out(f"bench=ledger transfers_per_s={uni:.0f} hot_transfers_per_s={hot:.0f} copy_rows_per_s={copy_rate:.0f} "
            f"asof_p99_ms={lat['asof_p99']:.2f} floor_transfers_per_s={floor_rate:.0f} http_transfers_per_s={http['transfers_per_s']:.0f}"
            f" bare_http_per_s={http['bare_per_s']:.0f}")
    finally:
        infra.stop()
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes: about 10 s of measuring, under a minute in all")
    p.add_argument("--seconds", type=float, help="measuring window per workload (default 60, quick 4)")
    p.add_argument("--transfers", type=int, help="transfer requests to pre-produce per workload")
    p.add_argument("--expect-rate", type=float, default=10_000, help="sizes the pre-produced backlog (default 10,000/s)")
    p.add_argument("--batch", type=int, default=2_000, help="consumer batch size (LEDGER_BATCH_MAX_RECORDS)")
    p.add_argument("--relay", choices=["inline", "external"], default="inline",
                   help="outbox relay in the ledger process (the default deployment) or as its own process (LEDGER_OUTBOX_RELAY=external)")
    p.add_argument("--journal-rows", type=int, help="journal rows for the latency fixture (default 10,000,000, quick 200,000)")
    p.add_argument("--http-clients", type=int, default=20, help="concurrent HTTP clients, one transfer per request (default 20)")
    p.add_argument("--asof-curve", type=lambda v: [int(float(x)) for x in v.split(",")],
                   help="only the as-of/statement latency, at each journal size (legs), e.g. 1e6,1e7,1e8")
    p.add_argument("--only-http", action="store_true", help="only the Kafka uniform workload and the HTTP phase (quick comparison)")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
