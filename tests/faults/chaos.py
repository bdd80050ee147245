"""Fault-injection run: a month of episodes through the running system while processes are killed,
the broker is paused, PostgreSQL restarts, consumer groups are replayed and bad events arrive.
Then every money and count invariant is checked.

Bounded everywhere: each retry loop has a cap, each wait a deadline; the run stops by itself.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from devtools.synthetic import synthetic_nhs_number
from tests.privacy import nhs_hits
from services.payments import domain as payments_domain
from shared.contracts import PaymentRequested, envelope
from shared.auth import SCOPES, bearer_headers
from devtools.stack import Stack
from shared.topics import (
    FEEDBACK_RECEIVED,
    FEEDBACK_SUBMITTED,
    LEDGER_POSTED,
    LEDGER_TRANSFER_REQUESTS,
    PAYMENTS_REQUESTED,
)

ALL_SCOPES = bearer_headers(sorted(SCOPES), subject="tests")

PROVIDERS = [("RJ1", "QWE"), ("RRV", "QMJ"), ("RTH", "QU9"), ("RA7", "QUY"), ("RGT", "QUE"),
             ("R0A", "QOP"), ("RRK", "QHL"), ("RTD", "QHM"), ("RR8", "QWO"), ("RH8", "QJK")]
CONSUMER_SERVICES = ("ledger", "payments", "feedback")
HTTP_RETRIES = 600  # × up to 0.5 s: a request waits out any restart or outage in this run


@dataclass
class Counters:
    episodes: int = 0
    submissions: int = 0
    kills: int = 0
    broker_pauses: int = 0
    postgres_restarts: int = 0
    replays: int = 0
    bad_events: int = 0
    http_retries: int = 0
    kills_by_service: dict[str, int] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def note(self, msg: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')} {msg}")
        print(f"faults: {msg}", flush=True)


async def http_call(http: httpx.AsyncClient, c: Counters, method: str, url: str, **kw: Any) -> httpx.Response:
    """A client that retries what a real client would: connection failures and 503/5xx."""
    for attempt in range(HTTP_RETRIES):
        try:
            r = await http.request(method, url, **kw)
            if r.status_code < 500:
                return r
        except httpx.HTTPError:
            pass
        c.http_retries += 1
        await asyncio.sleep(min(0.5, 0.02 * (attempt + 1)))
    raise RuntimeError(f"{method} {url} kept failing")


async def kafka_send(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]], c: Counters) -> None:
    for attempt in range(60):
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=10_000, linger_ms=5)
        try:
            await producer.start()
            futures = [await producer.send(topic, v, key=k, headers=[("correlation_id", b"faults")]) for k, v in items]
            await asyncio.gather(*futures)
            return
        except Exception:
            await asyncio.sleep(1)  # broker paused or restarting: resend the whole chunk (idempotent)
        finally:
            await producer.stop()
    raise RuntimeError(f"could not publish to {topic}")


def planted_nhs_number(i: int) -> str:
    """An NHS number a patient types into a comment or a client puts in a correlation id: it must be
    removed before anything is stored (README "Privacy"), and the privacy scan looks for it."""
    return synthetic_nhs_number(500_000 + i)


def spaced(nhs: str) -> str:
    return f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}"


def build(n: int, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    # The latest month whose decision windows (56 days) have closed, so it can be settled today.
    month_end = payments_domain.last_day_of(payments_domain.latest_settleable_period(date.today(), 56))
    run = uuid.uuid4().hex[:6]
    payments, feedback = [], []
    for i in range(n):
        provider, icb = PROVIDERS[i % len(PROVIDERS)]
        activity = month_end.replace(day=rng.randint(1, month_end.day))
        pid, eid = f"f{run}-p{i}", f"f{run}-e{i}"
        payments.append({"payment_id": pid, "episode_id": eid, "commissioner_code": icb, "provider_code": provider,
                         "service_type": rng.choice(["inpatient", "outpatient", "maternity"]),
                         "activity_date": activity.isoformat(), "amount_pence": rng.randrange(10_000, 1_000_000)})
        if rng.random() < 0.75:
            authored = datetime(activity.year, activity.month, activity.day, 12, tzinfo=timezone.utc) + timedelta(days=rng.randint(1, 10))
            authored = min(authored, datetime.now(timezone.utc) - timedelta(minutes=5))
            feedback.append({"submission_id": f"f{run}-s{i}", "episode_id": eid, "provider_code": provider,
                             "nhs_number": synthetic_nhs_number(i), "authored_at": authored.isoformat(),
                             "answers": {"instrument": "fft", "fft_answer": rng.choice([1, 1, 2, 2, 3, 4, 5, 6])},
                             "free_text": f"note {i}" if i % 40 else f"note {i}: my nhs number is {spaced(planted_nhs_number(i))}"})
    return payments, feedback


async def send_load(stack: Stack, payments: list[dict], feedback: list[dict], c: Counters) -> None:
    bootstrap = stack.infra.kafka_bootstrap
    half_p, half_f = len(payments) // 2, len(feedback) // 2
    async with httpx.AsyncClient(timeout=30, headers=ALL_SCOPES) as http:
        async def http_payments() -> None:
            for i in range(0, half_p, 250):
                r = await http_call(http, c, "POST", f"{stack.url('payments')}/v1/payment-requests/batch", json=payments[i:i + 250])
                body = r.json()
                if body["rejected"]:
                    raise AssertionError(f"payments rejected: {[it for it in body['items'] if it['outcome'] not in ('created', 'duplicate')][:3]}")

        async def kafka_payments() -> None:
            items = []
            for n, p in enumerate(payments[half_p:]):
                # Now and then a commissioner's correlation id holds an NHS number: it must never reach the ledger.
                cid = "faults" if n % 100 else f"faults-{planted_nhs_number(n)}"
                env = envelope(PaymentRequested.model_validate(p), "payments.requested.v1", producer="faults", correlation_id=cid)
                items.append((p["episode_id"].encode(), env.model_dump_json().encode()))
            for i in range(0, len(items), 1000):
                await kafka_send(bootstrap, PAYMENTS_REQUESTED.name, items[i:i + 1000], c)

        async def http_feedback() -> None:
            sem = asyncio.Semaphore(8)

            async def one(n: int, fb: dict) -> None:
                async with sem:
                    trace = {"X-Correlation-ID": f"trace-{planted_nhs_number(n)}"} if n % 100 == 0 else {}
                    r = await http_call(http, c, "POST", f"{stack.url('feedback')}/v1/submissions", json=fb, headers=trace)
                    if r.status_code not in (200, 202):
                        raise AssertionError(f"feedback refused: {r.status_code} {r.text}")

            await asyncio.gather(*(one(n, fb) for n, fb in enumerate(feedback[:half_f])))

        async def kafka_feedback() -> None:
            items = []
            for fb in feedback[half_f:]:
                body = {"event_id": str(uuid.uuid4()), "type": "feedback.submitted.v1", "occurred_at": datetime.now(timezone.utc).isoformat(),
                        "correlation_id": "faults", "causation_id": None, "producer": "faults", "data": fb}
                items.append((fb["episode_id"].encode(), json.dumps(body).encode()))
            for i in range(0, len(items), 1000):
                await kafka_send(bootstrap, FEEDBACK_SUBMITTED.name, items[i:i + 1000], c)

        await asyncio.gather(http_payments(), kafka_payments(), http_feedback(), kafka_feedback())
    c.episodes, c.submissions = len(payments), len(feedback)
    c.note(f"load sent: {len(payments)} payments, {len(feedback)} submissions")


async def inject_bad_events(stack: Stack, c: Counters) -> None:
    bad = [b"not json at all", b'{"type": "x"}', json.dumps({"event_id": str(uuid.uuid4()), "type": "t", "occurred_at": "2026-01-01T00:00:00Z",
           "correlation_id": "bad", "producer": "faults", "data": {"amount_pence": "lots"}}).encode()]
    for topic in (PAYMENTS_REQUESTED.name, FEEDBACK_SUBMITTED.name, FEEDBACK_RECEIVED.name, LEDGER_TRANSFER_REQUESTS.name, LEDGER_POSTED.name):
        await kafka_send(stack.infra.kafka_bootstrap, topic, [(b"bad-key", v) for v in bad], c)
        c.bad_events += len(bad)
    c.note(f"injected {c.bad_events} malformed events into 5 topics")


async def chaos(stack: Stack, c: Counters, stop: asyncio.Event, min_kills: int, seed: int) -> None:
    rng = random.Random(seed)
    pause_at, restart_pg_at = max(1, min_kills // 4), max(2, min_kills // 2)
    while not stop.is_set() or c.kills < min_kills:
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        # Round robin, so every consumer service is killed about equally often; timing is random.
        name = CONSUMER_SERVICES[c.kills % len(CONSUMER_SERVICES)]
        await stack.restart(name, signal.SIGKILL)
        c.kills += 1
        c.kills_by_service[name] = c.kills_by_service.get(name, 0) + 1
        c.note(f"kill #{c.kills}: SIGKILL {name}, restarted")
        if c.kills == pause_at:
            stack.infra.kafka.pause()
            c.note("broker paused (SIGSTOP) for 20 s")
            await asyncio.sleep(20)
            stack.infra.kafka.resume()
            c.broker_pauses += 1
            c.note("broker resumed")
        if c.kills == restart_pg_at:
            stack.infra.postgres.server.cleanup()
            c.note("PostgreSQL stopped")
            await asyncio.sleep(3)
            stack.infra.postgres.start()
            c.postgres_restarts += 1
            c.note("PostgreSQL restarted")


GROUP_TOPICS = {
    "ledger": [LEDGER_TRANSFER_REQUESTS.name],
    "payments": [PAYMENTS_REQUESTED.name, FEEDBACK_RECEIVED.name],
    "payments-ledger-answers": [LEDGER_POSTED.name],
}


async def group_lag(bootstrap: str, group: str) -> int:
    """Records not yet committed by ``group`` (OffsetFetch through a consumer that never joins)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in GROUP_TOPICS[group] for p in await _partitions(consumer, t)]
        ends = await consumer.end_offsets(tps)
        lag = 0
        for tp in tps:
            committed = await consumer.committed(tp)
            lag += max(0, ends[tp] - (committed or 0))
        return lag
    finally:
        await consumer.stop()


async def reset_group(bootstrap: str, group: str, topics: list[str]) -> None:
    """Commit offset 0 on every partition of the group's topics (the group must have no members)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in await _partitions(consumer, t)]
        consumer.assign(tps)
        await consumer.commit({tp: 0 for tp in tps})
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public call for this
        parts = consumer.partitions_for_topic(topic)
    return parts or set()


async def settle_and_wait(stack: Stack, period: str, c: Counters, timeout_s: float = 600) -> None:
    pay_db = stack.database_urls["payments"]
    async with httpx.AsyncClient(timeout=60, headers=ALL_SCOPES) as http:
        deadline = time.monotonic() + timeout_s
        # Wait until payments has every episode, then settle, then wait for the ledger.
        while time.monotonic() < deadline:
            n = await _fetchval(pay_db, "SELECT count(*) FROM episodes")
            if n >= c.episodes:
                break
            await asyncio.sleep(1)
        while time.monotonic() < deadline:
            answered = await _fetchval(pay_db, "SELECT count(*) FROM answers")
            if answered >= c.submissions:
                break
            await asyncio.sleep(1)
        r = await http_call(http, c, "POST", f"{stack.url('payments')}/v1/settlements/run", json={"period": period})
        job = r.json()
        c.note(f"settlement job {job.get('job_id')} asked for ({r.status_code})")
        while job.get("state") in ("queued", "running"):  # a job survives the faults: it resumes after a kill
            await asyncio.sleep(1)
            job = (await http_call(http, c, "GET", f"{stack.url('payments')}{job['url']}")).json()
        c.note(f"settlement job {job.get('state')} after {job.get('attempts')} attempt(s)")
    await wait_quiet(stack, c, deadline)


async def wait_quiet(stack: Stack, c: Counters, deadline: float) -> None:
    """Until every transfer payments asked for is posted in the ledger and every group is caught up."""
    pay_db = stack.database_urls["payments"]
    while time.monotonic() < deadline:
        # 'requested' = the ledger has not answered yet (posted, pending and voided are answers;
        # a rejection would stay and be counted as lost by the checks).
        pending = await _fetchval(pay_db, "SELECT count(*) FROM ledger_transfers WHERE status = 'requested'")
        lags = [await group_lag(stack.infra.kafka_bootstrap, g) for g in ("ledger", "payments", "payments-ledger-answers")]
        if pending == 0 and sum(lags) == 0:
            return
        await asyncio.sleep(2)
    raise AssertionError("system did not quiesce in time")


async def _fetchval(dsn: str, sql: str) -> Any:
    for _ in range(60):
        try:
            conn = await asyncpg.connect(dsn)
            try:
                return await conn.fetchval(sql)
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError):
            await asyncio.sleep(1)
    raise RuntimeError("database unreachable")


async def snapshot(stack: Stack) -> dict[str, Any]:
    led = await asyncpg.connect(stack.database_urls["ledger"])
    pay = await asyncpg.connect(stack.database_urls["payments"])
    fb = await asyncpg.connect(stack.database_urls["feedback"])
    try:
        balances = {r["account_id"]: r["posted_pence"] for r in await led.fetch("SELECT account_id, posted_pence FROM accounts")}
        entries = await led.fetchval("SELECT count(*) FROM entries")
        transfer_ids = {r["transfer_id"] for r in await led.fetch("SELECT transfer_id FROM entries")}
        head = await led.fetchrow("SELECT seq, hash FROM chain_head")
        asked = {r["transfer_id"] for r in await pay.fetch("SELECT transfer_id FROM ledger_transfers")}
        episodes = await pay.fetch("SELECT payment_id, amount_pence, at_risk_pence, released_pence, diverted_pence, status FROM episodes")
        answers = await pay.fetchval("SELECT count(*) FROM answers")
        submissions = await fb.fetchval("SELECT count(*) FROM submissions")
        per_payment = {r["pid"]: r["total"] for r in await led.fetch(
            "SELECT (e.request::jsonb)->'cause'->>'payment_id' AS pid, sum(l.amount_pence) AS total"
            " FROM entries e JOIN legs l ON l.entry_seq = e.seq"
            " WHERE l.account_id LIKE 'provider:%' OR l.account_id LIKE 'fund:%' GROUP BY 1")}
        return {"balances": balances, "entries": entries, "transfer_ids": transfer_ids, "head": tuple(head), "asked": asked,
                "episodes": episodes, "answers": answers, "submissions": submissions, "per_payment": per_payment}
    finally:
        await led.close()
        await pay.close()
        await fb.close()


async def replay(stack: Stack, c: Counters) -> None:
    """Stop the consumers, rewind their groups to the earliest offset, start again, wait."""
    for name in ("ledger", "payments"):
        stack.services[name].stop()
    await asyncio.sleep(12)  # let the broker expire the stopped members' sessions
    bootstrap = stack.infra.kafka_bootstrap
    for group, topics in GROUP_TOPICS.items():
        await reset_group(bootstrap, group, topics)
    for name in ("ledger", "payments"):
        stack.services[name].start()
    await asyncio.gather(*(stack.services[n].wait_healthy() for n in ("ledger", "payments")))
    c.replays += 1
    c.note("consumer groups ledger and payments reset to earliest; replaying everything")
    await wait_quiet(stack, c, time.monotonic() + 600)


# The input topics hold what clients published, as they published it: the intake topic carries the
# patient's NHS number by design (short retention, restricted access; README), and a commissioner's
# event may carry one in its correlation id (planted here). They are the control: the scan must find
# the numbers there, which proves it would see them anywhere else. Everything the services write
# (tables, the topics they produce, dead letters, logs) must be clean.
IDENTIFIABLE_BY_DESIGN = {FEEDBACK_SUBMITTED.name, PAYMENTS_REQUESTED.name}


def _nhs_hits(blob: bytes, nhs_numbers: set[bytes]) -> int:
    return nhs_hits(blob, nhs_numbers)


async def privacy_scan(stack: Stack, nhs_numbers: set[bytes]) -> dict[str, int]:
    """Look for any submitted NHS number in every table, every topic (but the intake) and every log."""
    hits = {"tables": 0, "topics": 0, "logs": 0, "intake_control": 0}
    for dsn in stack.database_urls.values():
        conn = await asyncpg.connect(dsn)
        try:
            tables = [r["t"] for r in await conn.fetch(
                "SELECT quote_ident(table_name) AS t FROM information_schema.tables WHERE table_schema = 'public'")]
            for table in tables:
                async with conn.transaction():
                    async for row in conn.cursor(f"SELECT t::text AS x FROM {table} t", prefetch=5000):
                        hits["tables"] += _nhs_hits(row["x"].encode(), nhs_numbers)
        finally:
            await conn.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.infra.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        topics = sorted(t for t in await consumer.topics() if not t.startswith("__"))
        tps = [TopicPartition(t, p) for t in topics for p in await _partitions(consumer, t)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + 300
        async def behind() -> bool:
            for tp in tps:
                if await consumer.position(tp) < ends[tp]:
                    return True
            return False

        while time.monotonic() < deadline and await behind():
            for records in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                for r in records:
                    blob = (r.value or b"") + (r.key or b"") + b"".join(v for _k, v in (r.headers or ()))
                    # The input topics are scanned too, as a control (above).
                    bucket = "intake_control" if r.topic in IDENTIFIABLE_BY_DESIGN else "topics"
                    hits[bucket] += _nhs_hits(blob, nhs_numbers)
    finally:
        await consumer.stop()
    for log_file in stack.work_dir.glob("*.log"):
        if log_file.name.startswith("tansu"):
            continue  # the broker's own log holds no message contents
        hits["logs"] += _nhs_hits(log_file.read_bytes(), nhs_numbers)
    return hits


def check(before: dict[str, Any], after: dict[str, Any], c: Counters) -> dict[str, Any]:
    episodes = after["episodes"]
    lost = 0
    lost += max(0, c.episodes - len(episodes))
    lost += max(0, c.submissions - after["submissions"])
    lost += max(0, c.submissions - after["answers"])
    lost += len(after["asked"] - after["transfer_ids"])
    doubled = 0
    doubled += max(0, len(episodes) - c.episodes) + max(0, after["submissions"] - c.submissions)
    doubled += len(after["transfer_ids"] - after["asked"])
    doubled += int(after["entries"] != len(after["transfer_ids"]))
    unbalanced = [e["payment_id"] for e in episodes
                  if e["status"] != "settled" or e["released_pence"] + e["diverted_pence"] != e["at_risk_pence"]
                  or after["per_payment"].get(e["payment_id"], 0) != e["amount_pence"]]
    return {
        "lost": lost,
        "doubled": doubled,
        "unbalanced_payments": len(unbalanced),
        "ledger_sum": sum(after["balances"].values()),
        "replay_changed_ledger": before["balances"] != after["balances"] or before["head"] != after["head"],
        "examples": unbalanced[:5],
    }


async def run(episodes: int = 20_000, min_kills: int = 20, seed: int = 7) -> dict[str, Any]:
    c = Counters()
    stack = Stack(extra_env={"payments": {"PAYMENTS_SCHEMES_DIR": str(__import__("pathlib").Path(__file__).parent / "schemes")}})
    await stack.start()
    t0 = time.monotonic()
    try:
        payments, feedback = build(episodes, seed)
        period = payments[0]["activity_date"][:7]
        stop = asyncio.Event()
        chaos_task = asyncio.create_task(chaos(stack, c, stop, min_kills, seed))
        await inject_bad_events(stack, c)
        await send_load(stack, payments, feedback, c)
        await inject_bad_events(stack, c)
        stop.set()
        await chaos_task
        await settle_and_wait(stack, period, c)
        before = await snapshot(stack)
        async with httpx.AsyncClient(timeout=120, headers=ALL_SCOPES) as http:
            verify = (await http.get(f"{stack.url('ledger')}/v1/verify")).json()
        await replay(stack, c)
        after = await snapshot(stack)
        async with httpx.AsyncClient(timeout=120, headers=ALL_SCOPES) as http:
            verify_after = (await http.get(f"{stack.url('ledger')}/v1/verify")).json()
        result = check(before, after, c)
        known = {fb["nhs_number"].encode() for fb in feedback} | {planted_nhs_number(i).encode() for i in range(len(payments))}
        privacy = await privacy_scan(stack, known)
        c.note(f"privacy scan: NHS numbers found in tables={privacy['tables']} topics={privacy['topics']} logs={privacy['logs']}"
               f" (control: {privacy['intake_control']} in the identifiable intake topic)")
        result.update(chain_ok=verify["ok"] and verify_after["ok"], counters=c, seconds=time.monotonic() - t0,
                      privacy_hits=privacy["tables"] + privacy["topics"] + privacy["logs"],
                      privacy_control=privacy["intake_control"])
        return result
    finally:
        stack.stop()
