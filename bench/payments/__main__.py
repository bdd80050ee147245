"""Run the payments consumer benchmark; see bench/payments/__init__.py for what is measured."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from faststream.kafka import KafkaMessage
from prometheus_client import REGISTRY

from bench.relay import start_external_relay, stop_process
from shared.db import ensure_database
from devtools.stack import fresh_kafka, start_infra
from shared.service import CONSUMER_DEFAULTS
from shared.topics import FEEDBACK_RECEIVED, LEDGER_TRANSFER_REQUESTS, PAYMENTS_REQUESTED

# (provider, commissioner) pairs in several regions; all in the shipped reference extract.
PAIRS = [("RJ1", "QWE"), ("RRV", "QMJ"), ("RTH", "QU9"), ("RA7", "QUY")]
ACTIVITY = (date.today() - timedelta(days=3)).isoformat()
AUTHORED = (datetime.now(timezone.utc) - timedelta(hours=5)).isoformat().replace("+00:00", "Z")
_PAYMENT = (
    '{{"event_id":"{eid}","type":"payments.requested.v1","occurred_at":"2026-11-21T12:00:00Z","correlation_id":"b-{run}-{i}",'
    '"causation_id":null,"producer":"bench","data":{{"payment_id":"pay-{run}-{i}","episode_id":"ep-{run}-{i}",'
    '"commissioner_code":"{icb}","provider_code":"{ods}","service_type":"maternity","activity_date":"{activity}",'
    '"amount_pence":{amount}}}}}'
)
_FEEDBACK = (
    '{{"event_id":"{eid}","type":"feedback.received.v1","occurred_at":"2026-11-21T12:00:00Z","correlation_id":"f-{run}-{i}",'
    '"causation_id":null,"producer":"bench","data":{{"submission_id":"s-{run}-{i}","episode_id":"ep-{run}-{i}",'
    '"provider_code":"{ods}","patient_pseudonym":"{pseudonym}","instrument":"fft","authored_at":"{authored}",'
    '"fft_answer":{fft}}}}}'
)


def out(msg: str) -> None:
    print(msg, flush=True)


def workload(run: str, payments: int, rng: random.Random) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value): half of the answers before all payments, the other half after."""
    pays, early, late = [], [], []
    for i in range(payments):
        ods, icb = PAIRS[i % len(PAIRS)]
        eid = uuid.UUID(int=rng.getrandbits(128), version=4)
        pays.append((PAYMENTS_REQUESTED.name, f"ep-{run}-{i}".encode(), _PAYMENT.format(
            eid=eid, run=run, i=i, icb=icb, ods=ods, activity=ACTIVITY, amount=rng.randint(10_000, 2_000_000)).encode()))
        if i % 3 == 0:
            fb = (FEEDBACK_RECEIVED.name, f"ep-{run}-{i}".encode(), _FEEDBACK.format(
                eid=uuid.UUID(int=rng.getrandbits(128), version=4), run=run, i=i, ods=ods, pseudonym=f"{i:064x}",
                authored=AUTHORED, fft=rng.randint(1, 6)).encode())
            (early if i % 2 else late).append(fb)
    return early + pays + late


async def produce(bootstrap: str, events: list[tuple[str, bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=1024 * 1024)
    await producer.start()
    t0 = time.perf_counter()
    try:
        pending: list[Any] = []
        for topic, key, value in events:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(events) / (time.perf_counter() - t0)


def register_per_event(runtime: Any, settings: Any) -> None:
    """The episode subscriber as it was before batching: one record per delivery, one transaction
    per event (``Runtime.handle_one`` calling the handlers with a batch of one)."""
    from services.payments import consumer

    episodes = consumer.EpisodeEvents(runtime)

    @runtime.broker.subscriber(PAYMENTS_REQUESTED.name, FEEDBACK_RECEIVED.name, group_id=settings.consumer_group,
                               partition_assignment_strategy=(RangePartitionAssignor,), **CONSUMER_DEFAULTS)
    async def on_episode_event(body: bytes, msg: KafkaMessage) -> None:
        await episodes.handle_one(msg.raw_message)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def handled() -> float:
    return sum(counter("events_handled_total", topic=t) for t in (PAYMENTS_REQUESTED.name, FEEDBACK_RECEIVED.name))


def published() -> float:
    return counter("outbox_published_total", topic=LEDGER_TRANSFER_REQUESTS.name)


@dataclass
class Result:
    mode: str
    events_per_s: float
    window_s: float
    handled: int
    produced: int
    relay_per_s: float
    backlog: int
    mean_batch: float
    checked: str


async def run_mode(infra: Any, mode: str, *, payments: int, window_s: float, batch_max: int, relay: str = "inline") -> Result:
    from services.payments import app as payments_app
    from services.payments import consumer
    from services.payments.settings import PaymentsSettings
    from shared.kafka import ensure_topics

    db_name = f"bench_payments_{mode.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
    dsn = await ensure_database(infra.postgres_dsn, db_name)
    bootstrap, broker = await fresh_kafka(infra)
    real_register = consumer.register
    try:
        settings = PaymentsSettings(database_url=dsn, kafka_bootstrap_servers=bootstrap, consumer_group=f"bench-{uuid.uuid4().hex[:6]}",
                                    batch_max_records=batch_max, http_port=0, log_level="WARNING", outbox_relay=relay)
        await ensure_topics(settings)
        run = uuid.uuid4().hex[:6]
        events = workload(run, payments, random.Random(payments))
        rate_in = await produce(bootstrap, events)
        out(f"  {mode}: produced {len(events):,} events ({payments:,} payment requests, {len(events) - payments:,} answers)"
            f" at {rate_in:,.0f}/s (not measured)")
        if mode == "per-event":
            consumer.register = register_per_event  # type: ignore[assignment]
        # Time the handler itself: the consumer starts while the app is still starting (the
        # second subscriber's group join), so polling from here would miss the first seconds.
        timed_name = "handle_one" if mode == "per-event" else "handle_batch"
        real_handler = getattr(consumer.EpisodeEvents, timed_name)
        marks: dict[str, float] = {}

        async def timed(self: Any, arg: Any) -> None:
            marks.setdefault("first", time.perf_counter())
            try:
                await real_handler(self, arg)
            finally:
                marks["last"] = time.perf_counter()

        setattr(consumer.EpisodeEvents, timed_name, timed)
        app = payments_app.create_app(settings)
        sizes = REGISTRY.get_sample_value("payments_consumer_batch_size_count", {"subscriber": "episodes"}) or 0.0
        sizes_sum = REGISTRY.get_sample_value("payments_consumer_batch_size_sum", {"subscriber": "episodes"}) or 0.0
        h0, p0, pay0 = handled(), published(), counter("events_handled_total", topic=PAYMENTS_REQUESTED.name)
        relay_proc = None
        conn = None
        try:
            async with app.router.lifespan_context(app):
                conn = await asyncpg.connect(dsn)
                if relay == "external":  # after the app's start-up has migrated the outbox table
                    relay_proc = start_external_relay("payments", dsn, bootstrap)

                async def relayed() -> float:
                    if relay == "inline":
                        return published() - p0
                    # Every handled payment put two rows in the outbox; the relay deletes what it published.
                    requested = 2 * (counter("events_handled_total", topic=PAYMENTS_REQUESTED.name) - pay0)
                    return requested - await conn.fetchval("SELECT count(*) FROM outbox")

                deadline = time.perf_counter() + window_s + 120
                while time.perf_counter() < deadline:
                    await asyncio.sleep(0.1)
                    if "first" in marks and (handled() - h0 >= len(events) or time.perf_counter() - marks["first"] >= window_s):
                        break
                if "first" not in marks:
                    raise RuntimeError("the payments service handled nothing")
                h_end, t_first, t_end = handled() - h0, marks["first"], marks["last"]  # read together: consistent
                # The relay: until it has published the transfer requests of every payment handled.
                want = 2 * (counter("events_handled_total", topic=PAYMENTS_REQUESTED.name) - pay0)
                relay_deadline = time.perf_counter() + 60
                while (p_end := await relayed()) < want and time.perf_counter() < relay_deadline:
                    await asyncio.sleep(0.05)
                t_relay = time.perf_counter()
                backlog = await conn.fetchval("SELECT count(*) FROM outbox")
                episodes = await conn.fetchval("SELECT count(*) FROM episodes")
                answers = await conn.fetchval("SELECT count(*) FROM answers")
                transfers = await conn.fetchval("SELECT count(*) FROM ledger_transfers")
        finally:
            setattr(consumer.EpisodeEvents, timed_name, real_handler)
            stop_process(relay_proc)
            if conn is not None:
                await conn.close()
        count = (REGISTRY.get_sample_value("payments_consumer_batch_size_count", {"subscriber": "episodes"}) or 0.0) - sizes
        total = (REGISTRY.get_sample_value("payments_consumer_batch_size_sum", {"subscriber": "episodes"}) or 0.0) - sizes_sum
        elapsed = t_end - t_first
        checked = f"stored {episodes:,} episodes, {answers:,} answers, {transfers:,} transfer requests"
        if h_end >= len(events):
            n_answers = len(events) - payments
            ok = episodes == payments and answers == n_answers and transfers == 2 * payments
            checked += " (all as expected)" if ok else " (MISMATCH)"
        return Result(mode, h_end / elapsed, elapsed, int(h_end), len(events), p_end / (t_relay - t_first), backlog,
                      total / count if count else 1.0, checked)
    finally:
        consumer.register = real_register  # type: ignore[assignment]
        if broker is not None:
            broker.stop()
        await drop_database(infra.postgres_dsn, db_name)


async def run_handler(infra: Any, mode: str, *, payments: int, batch_max: int) -> float:
    """Events/s through the consumer's handler alone, no broker: per event (a batch of one, one
    transaction each, ``EpisodeEvents.handle_one``) or per batch (``EpisodeEvents.handle_batch``)."""
    from types import SimpleNamespace

    from services.payments import consumer
    from services.payments.app import PaymentsRuntime
    from services.payments.settings import PaymentsSettings
    from shared import db

    db_name = f"bench_payments_handler_{uuid.uuid4().hex[:6]}"
    dsn = await ensure_database(infra.postgres_dsn, db_name)
    try:
        settings = PaymentsSettings(database_url=dsn, log_level="WARNING")
        rt = PaymentsRuntime(settings)
        rt.pool = await rt.connect_db()
        try:
            async with rt.pool.acquire() as conn:
                await db.migrate(conn, *rt.migrations)
            offsets: dict[str, int] = {}
            records = []
            for topic, key, value in workload(uuid.uuid4().hex[:6], payments, random.Random(payments)):
                offsets[topic] = offsets.get(topic, -1) + 1
                records.append(SimpleNamespace(topic=topic, partition=0, offset=offsets[topic], key=key, value=value,
                                               headers=()))
            episodes = consumer.EpisodeEvents(rt)
            t0 = time.perf_counter()
            if mode == "per-event":
                for raw in records:
                    await episodes.handle_one(raw)
            elif mode == "savepoints":
                for lo in range(0, len(records), batch_max):
                    await savepoint_batch(rt, records[lo:lo + batch_max])
            else:
                for lo in range(0, len(records), batch_max):
                    await episodes.handle_batch(records[lo:lo + batch_max])
            rate = len(records) / (time.perf_counter() - t0)
            async with rt.pool.acquire() as conn:
                stored = await conn.fetchval("SELECT count(*) FROM episodes")
            if stored != payments:
                raise RuntimeError(f"{mode}: stored {stored} episodes of {payments}")
            return rate
        finally:
            await rt.pool.close()
    finally:
        await drop_database(infra.postgres_dsn, db_name)


class SavepointUnitOfWork:
    """A unit of work that is a savepoint inside the caller's transaction (the design not taken)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def run(self, work: Any, *, attempts: int = 1) -> Any:
        from services.payments.store import PgPaymentsStore

        async with self.conn.transaction():  # nested: a savepoint
            return await work(PgPaymentsStore(self.conn))


async def savepoint_batch(rt: Any, records: list[Any]) -> None:
    """The design not taken, for comparison: one transaction per batch, the handlers called with
    one record at a time, each in a savepoint (so a rejected record could be rolled back alone)."""
    from services.payments.consumer import payment_command
    from services.payments.handlers import PaymentsHandlers
    from shared.contracts import Envelope, FeedbackReceived, PaymentRequested

    async with rt.pool.acquire() as conn:
        async with conn.transaction():
            h = rt.handlers
            handlers = PaymentsHandlers(SavepointUnitOfWork(conn), book=h.book, ref=h.ref, hold_model=h.hold_model,
                                        activity_date_max_age_days=h.activity_date_max_age_days, clock=h.clock)
            for raw in records:
                if raw.topic == PAYMENTS_REQUESTED.name:
                    await handlers.accept_payments([payment_command(Envelope[PaymentRequested].model_validate_json(raw.value))])
                else:
                    await handlers.record_answers([Envelope[FeedbackReceived].model_validate_json(raw.value).data])


async def run_settlement_phase(infra: Any, *, episodes: int, batch_max: int) -> tuple[float, str]:
    """Microseconds per episode of the settlement handler (``PaymentsHandlers.run_settlement``) on a
    month of accepted episodes.

    Loads ``episodes`` payment requests (the first half under the two-phase hold model, the
    rest held in ``held:<ODS>``, so every kind of settlement transfer is written) and their
    answers (one per three episodes) through the consumer's batch handler, no broker; then
    settles the period once, timed. Returns (µs per episode, what was checked)."""
    from types import SimpleNamespace

    from services.payments import consumer
    from services.payments.app import PaymentsRuntime
    from services.payments.handlers import RunSettlement
    from services.payments.settings import PaymentsSettings
    from shared import db
    from shared.periods import period_of

    db_name = f"bench_payments_settle_{uuid.uuid4().hex[:6]}"
    dsn = await ensure_database(infra.postgres_dsn, db_name)
    try:
        rt = PaymentsRuntime(PaymentsSettings(database_url=dsn, log_level="WARNING"))
        rt.pool = await rt.connect_db()
        try:
            async with rt.pool.acquire() as conn:
                await db.migrate(conn, *rt.migrations)
            events = workload(uuid.uuid4().hex[:6], episodes, random.Random(episodes))
            records = [SimpleNamespace(topic=t, partition=0, offset=i, key=k, value=v, headers=())
                       for i, (t, k, v) in enumerate(events)]
            handler = consumer.EpisodeEvents(rt)
            half = len(records) // 2
            for model, part in (("two_phase", records[:half]), ("held_account", records[half:])):
                rt.handlers.hold_model = model
                for lo in range(0, len(part), batch_max):
                    await handler.handle_batch(part[lo:lo + batch_max])
            async with rt.pool.acquire() as conn:
                await conn.execute("DELETE FROM outbox")  # the payments' own rows: count settlement's alone
                held = await conn.fetchval("SELECT count(*) FROM episodes WHERE status = 'held'")
            settle_day = datetime.combine(date.fromisoformat(ACTIVITY) + timedelta(days=120), datetime.min.time(), timezone.utc)
            rt.handlers.clock = lambda: settle_day  # every decision window of the month has closed
            t0 = time.perf_counter()
            reports = await rt.handlers.run_settlement(RunSettlement(period=period_of(date.fromisoformat(ACTIVITY)),
                                                                     run_by="bench", correlation_id="bench-settlement"))
            elapsed = time.perf_counter() - t0
            async with rt.pool.acquire() as conn:
                settled = await conn.fetchval("SELECT count(*) FROM episodes WHERE status = 'settled'")
                rows = await conn.fetchval("SELECT count(*) FROM outbox")
                tracked = await conn.fetchval(
                    "SELECT count(*) FROM ledger_transfers WHERE kind IN ('settlement', 'release', 'diversion')")
            if settled != held or settled != sum(r["episodes"] for r in reports) or rows != tracked:
                raise RuntimeError(f"settled {settled} of {held} held episodes; {rows} outbox rows, {tracked} tracked")
            diverted = sum(r["diverted_pence"] for r in reports)
            checked = (f"{len(reports)} units, {settled:,} episodes settled, {rows:,} transfer requests,"
                       f" {diverted:,}p diverted")
            return elapsed / settled * 1e6, checked
        finally:
            await rt.pool.close()
    finally:
        await drop_database(infra.postgres_dsn, db_name)


async def drop_database(server_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    quick = args.quick
    window_s = args.seconds or (5.0 if quick else 30.0)
    payments = args.payments or (15_000 if quick else 150_000)
    infra = start_infra()
    out(f"bench payments ({'quick' if quick else 'full'}) on {infra.kind}; window {window_s:.0f} s, batches of up to {args.batch:,};"
        f" outbox relay {args.relay}")
    try:
        if args.settlement:
            from bench.ledger.__main__ import throughput
            from bench.payments.drain import run_drain

            n = args.settlement_episodes or (4_000 if quick else 20_000)
            us, checked = await run_settlement_phase(infra, episodes=n, batch_max=args.batch)
            out(f"settlement handler alone (no broker, no ledger): {us:,.0f} us per episode, {1e6 / us:,.0f} episodes/s ({checked})")
            out("settlement drain: payments and the ledger as processes, a settlement job, until the ledger has posted it all")
            d = await run_drain(infra, episodes=n)
            out(f"  job {d['job_s']:.1f} s; every one of {d['transfers']:,} transfers posted {d['drain_s']:.1f} s after the request:"
                f" {d['drain_per_s']:,.0f}/s; ledger posting {d['posted_during_job_per_s']:,.0f}/s during the job,"
                f" {d['posted_after_job_per_s']:,.0f}/s after it; payments' outbox backlog at most {d['backlog_max']:,}")
            out("baseline: the ledger's own Kafka path (bench.ledger uniform workload, pre-produced backlog)")
            base = await throughput(infra, "uniform", n=max(20_000, n), window_s=5.0 if quick else 20.0, batch_max=2_000,
                                    verify=False, relay="inline")
            out(f"  {base.transfers_per_s:,.0f} transfers/s")
            ratio = d["drain_per_s"] / base.transfers_per_s
            out(f"settlement drain / ledger Kafka path: {ratio:.0%}")
            out(f"bench=settlement settlement_drain_per_s={d['drain_per_s']:.0f} ledger_transfers_per_s={base.transfers_per_s:.0f}"
                f" ratio={ratio:.2f} episodes={n} transfers={d['transfers']} job_s={d['job_s']:.1f} drain_s={d['drain_s']:.1f}"
                f" relay_backlog_max={d['backlog_max']} us_per_episode={us:.1f}")
            return 0
        handler = {}
        for mode in ("per-event", "savepoints", "batched"):
            n = args.handler_payments or (3_000 if quick else 30_000)
            handler[mode] = await run_handler(infra, mode, payments=n, batch_max=args.batch)
            out(f"handler only ({mode}, no broker): {handler[mode]:,.0f} events/s ({n:,} payment requests + {n // 3:,} answers)")
        results = {}
        for mode in ("per-event", "batched"):
            # The per-event path handles a payment far slower than an answer and drains one
            # topic's partitions before the other's, so a short window would see one kind only:
            # it runs a smaller backlog to the end instead (every event counted, the same mix).
            n, window = (min(payments // 10, 6_000), 600.0) if mode == "per-event" else (payments, window_s)
            r = await run_mode(infra, mode, payments=n, window_s=window, batch_max=args.batch, relay=args.relay)
            results[mode] = r
            drained = " (all handled before the window ended)" if r.handled >= r.produced else ""
            batch = f"; mean batch {r.mean_batch:,.0f} records" if mode == "batched" else ""
            out(f"{mode}: {r.events_per_s:,.0f} events/s over {r.window_s:.1f} s{drained}; {r.handled:,} handled{batch};"
                f" relay {r.relay_per_s:,.0f} transfer requests/s (until it had published them all; outbox left: {r.backlog:,});"
                f" {r.checked}")
        new, old = results["batched"], results["per-event"]
        out(f"batched/per-event: {new.events_per_s / old.events_per_s:.1f}x")
        out(f"bench=payments events_per_s={new.events_per_s:.0f} baseline_events_per_s={old.events_per_s:.0f} "
            f"relay_per_s={new.relay_per_s:.0f} handler_events_per_s={handler['batched']:.0f} "
            f"handler_baseline_events_per_s={handler['per-event']:.0f}")
    finally:
        infra.stop()
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.payments", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes: a 5 s window per run, about a minute in all")
    p.add_argument("--seconds", type=float, help="measuring window per run (default 30, quick 5)")
    p.add_argument("--payments", type=int, help="payment requests to pre-produce per run (default 150,000, quick 15,000)")
    p.add_argument("--handler-payments", type=int, help="payment requests for the handler-only runs (default 30,000, quick 3,000)")
    p.add_argument("--relay", choices=["inline", "external"], default="inline",
                   help="outbox relay in the payments process (the default) or as its own process (PAYMENTS_OUTBOX_RELAY)")
    p.add_argument("--settlement", action="store_true",
                   help="only the settlement phase: accept a month of episodes, then time the settlement handler")
    p.add_argument("--settlement-episodes", type=int, help="episodes to settle (default 20,000, quick 4,000)")
    p.add_argument("--batch", type=int, default=500, help="consumer batch size (PAYMENTS_BATCH_MAX_RECORDS)")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
