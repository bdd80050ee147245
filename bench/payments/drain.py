"""The settlement drain: how fast settlement's transfers reach the ledger, against the ledger's own
Kafka path, in one run on the real broker and the real ledger (``python -m bench.payments --drain``).

1. Payments and the ledger run as their own processes (``python -m services.<name>``, as
   deployed), on a fresh broker and fresh databases.
2. ``episodes`` payment requests and an answer for one in three (a third of those "very poor")
   are produced to Kafka; the bench waits until the ledger has posted every payment's two
   transfers (paid at once, and the pending at-risk hold) and payments has every answer.
3. Timed: a settlement job (``POST /v1/settlements/run``) from the request until the ledger has
   posted every release and diversion it asked for. The bench samples, every 0.25 s, the job's
   progress, payments' outbox backlog (written, not yet published) and the ledger's chain head,
   so the report says where the transfers queued: settlement, the relay, or the ledger.
4. The baseline, in the same run: the ledger's own Kafka path (``bench.ledger``'s uniform workload,
   a pre-produced backlog, the ledger in this process), ``ledger_transfers_per_s``.

Last line: ``bench=settlement settlement_drain_per_s=… ledger_transfers_per_s=… episodes=…
transfers=… job_s=… drain_s=… relay_backlog_max=…``.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from shared.auth import bearer_headers
from shared.db import ensure_database
from devtools.stack import ServiceProcess, fresh_kafka, free_port
from shared.topics import FEEDBACK_RECEIVED, PAYMENTS_REQUESTED

ROOT = Path(__file__).resolve().parents[2]
SCHEMES = ROOT / "tests" / "e2e" / "schemes"  # no minimum sample and no cap: every answer counts
PAIRS = [("RJ1", "QWE"), ("RRV", "QMJ"), ("RTH", "QU9"), ("RA7", "QUY"), ("RH8", "QJK"), ("RGT", "QUE"), ("R0A", "QOP"),
         ("RRK", "QHL"), ("RTD", "QHM"), ("RR8", "QWO")]
ACTIVITY = date.today() - timedelta(days=100)  # its decision windows have closed: it settles
AUTHORED = datetime(ACTIVITY.year, ACTIVITY.month, ACTIVITY.day, 12, tzinfo=timezone.utc) + timedelta(days=2)
_PAYMENT = ('{{"event_id":"{eid}","type":"payments.requested.v1","occurred_at":"2026-11-21T12:00:00Z","correlation_id":"d-{i}",'
            '"causation_id":null,"producer":"bench","data":{{"payment_id":"pay-{run}-{i}","episode_id":"ep-{run}-{i}",'
            '"commissioner_code":"{icb}","provider_code":"{ods}","service_type":"inpatient","activity_date":"{activity}",'
            '"amount_pence":{amount}}}}}')
_FEEDBACK = ('{{"event_id":"{eid}","type":"feedback.received.v1","occurred_at":"2026-11-21T12:00:00Z","correlation_id":"f-{i}",'
             '"causation_id":null,"producer":"bench","data":{{"submission_id":"s-{run}-{i}","episode_id":"ep-{run}-{i}",'
             '"provider_code":"{ods}","patient_pseudonym":"{pseudonym}","instrument":"fft","authored_at":"{authored}",'
             '"fft_answer":{fft}}}}}')


def out(msg: str) -> None:
    print(msg, flush=True)


def events(run: str, n: int) -> list[tuple[str, bytes, bytes]]:
    rng = random.Random(n)
    pays, answers = [], []
    for i in range(n):
        ods, icb = PAIRS[i % len(PAIRS)]
        key = f"ep-{run}-{i}".encode()
        pays.append((PAYMENTS_REQUESTED.name, key, _PAYMENT.format(
            eid=uuid.UUID(int=rng.getrandbits(128), version=4), run=run, i=i, icb=icb, ods=ods, activity=ACTIVITY.isoformat(),
            amount=rng.randint(10_000, 500_000)).encode()))
        if i % 3 == 0:
            answers.append((FEEDBACK_RECEIVED.name, key, _FEEDBACK.format(
                eid=uuid.UUID(int=rng.getrandbits(128), version=4), run=run, i=i, ods=ods, pseudonym=f"{i:064x}",
                authored=AUTHORED.isoformat().replace("+00:00", "Z"), fft=5 if i % 9 == 0 else 1).encode()))
    return pays + answers


async def run_drain(infra: Any, *, episodes: int) -> dict[str, Any]:
    from bench.payments.__main__ import produce

    run = uuid.uuid4().hex[:6]
    pay_dsn = await ensure_database(infra.postgres_dsn, f"bench_drain_pay_{run}")
    led_dsn = await ensure_database(infra.postgres_dsn, f"bench_drain_led_{run}")
    bootstrap, broker = await fresh_kafka(infra)
    work = Path(tempfile.mkdtemp(prefix="pp-bench-drain-"))
    base = {**os.environ, "PATIENT_POWER_MODE": "development", "PYTHONPATH": str(ROOT)}
    ledger = ServiceProcess("ledger", free_port(), {
        **base, "LEDGER_DATABASE_URL": led_dsn, "LEDGER_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "LEDGER_LOG_LEVEL": "WARNING",
        "LEDGER_HTTP_PORT": "0"}, work / "ledger.log")
    ledger.env["LEDGER_HTTP_PORT"] = str(ledger.port)
    payments = ServiceProcess("payments", free_port(), {
        **base, "PAYMENTS_DATABASE_URL": pay_dsn, "PAYMENTS_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "PAYMENTS_LOG_LEVEL": "WARNING",
        "PAYMENTS_SCHEMES_DIR": str(SCHEMES)}, work / "payments.log")
    payments.env["PAYMENTS_HTTP_PORT"] = str(payments.port)
    try:
        ledger.start()
        payments.start()
        await asyncio.gather(ledger.wait_healthy(), payments.wait_healthy())
        answered = len(range(0, episodes, 3))
        rate = await produce(bootstrap, events(run, episodes))
        out(f"  produced {episodes:,} payment requests and {answered:,} answers ({rate:,.0f}/s, not measured)")
        pay, led = await asyncpg.connect(pay_dsn), await asyncpg.connect(led_dsn)
        try:
            deadline = time.monotonic() + 900
            while True:  # every payment's pay + hold posted, every answer in payments
                posted = await led.fetchval("SELECT seq FROM chain_head")
                got = await pay.fetchval("SELECT count(*) FROM answers")
                if posted >= 2 * episodes and got >= answered:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"loading stalled: ledger at {posted:,} of {2 * episodes:,}, answers {got:,}/{answered:,}")
                await asyncio.sleep(0.5)
            head0 = await led.fetchval("SELECT seq FROM chain_head")
            out(f"  loaded: {head0:,} entries in the ledger, {got:,} answers in payments")

            admin = bearer_headers(["schemes:admin"], subject="bench-month-end")
            async with httpx.AsyncClient(timeout=60, headers=admin) as http:
                t0 = time.monotonic()
                r = await http.post(f"{payments.url}/v1/settlements/run", json={"period": f"{ACTIVITY:%Y-%m}"})
                if r.status_code not in (200, 202):
                    raise RuntimeError(f"settlement: {r.status_code} {r.text}")
                job_url = payments.url + r.json()["url"]
                samples: list[tuple[float, int, int, str]] = []
                t_job = None
                want = None
                while True:
                    await asyncio.sleep(0.25)
                    job = (await http.get(job_url)).json()
                    backlog = await pay.fetchval("SELECT count(*) FROM outbox")
                    head = await led.fetchval("SELECT seq FROM chain_head")
                    now = time.monotonic()
                    samples.append((now - t0, head - head0, backlog, job["state"]))
                    if t_job is None and job["state"] not in ("queued", "running"):
                        t_job = now - t0
                        if job["state"] != "succeeded":
                            raise RuntimeError(f"settlement job {job['state']}: {job['errors']}")
                        want = await pay.fetchval(
                            "SELECT count(*) FROM ledger_transfers WHERE kind IN ('settlement', 'release', 'diversion')")
                    if want is not None and head - head0 >= want:
                        drain_s = now - t0
                        break
                    if now - t0 > 1800:
                        raise RuntimeError(f"drain stalled: {head - head0:,} of {want} posted")
            totals = await led.fetchval("SELECT sum(posted_pence) FROM accounts")
            pending = await led.fetchval("SELECT count(*) FROM pending_transfers WHERE status = 'pending'")
        finally:
            await pay.close()
            await led.close()
        if totals != 0 or pending != 0:
            raise RuntimeError(f"after the drain the ledger sums to {totals} with {pending} holds still pending")
        assert want is not None and t_job is not None
        # Where it queued: the relay's backlog at its largest, and the ledger's rate once the job had ended.
        after = [(t, posted) for t, posted, _b, _s in samples if t >= t_job]
        tail_rate = ((after[-1][1] - after[0][1]) / (after[-1][0] - after[0][0])) if len(after) > 1 and after[-1][0] > after[0][0] else 0.0
        during = [(t, posted) for t, posted, _b, s in samples if t <= t_job]
        job_rate = during[-1][1] / during[-1][0] if during and during[-1][0] > 0 else 0.0
        return {"episodes": episodes, "transfers": want, "job_s": t_job, "drain_s": drain_s, "drain_per_s": want / drain_s,
                "backlog_max": max(b for _t, _p, b, _s in samples), "posted_during_job_per_s": job_rate,
                "posted_after_job_per_s": tail_rate}
    finally:
        payments.stop()
        ledger.stop()
        if broker is not None:
            broker.stop()
        from bench.payments.__main__ import drop_database

        for dsn_name in (f"bench_drain_pay_{run}", f"bench_drain_led_{run}"):
            await drop_database(infra.postgres_dsn, dsn_name)
