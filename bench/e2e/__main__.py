"""Run the end-to-end benchmark; see bench/e2e/__init__.py for what is measured and how."""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import logging
import math
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.e2e.probes import (
    DIVERT,
    HOLD,
    PAY,
    RELEASE,
    CpuWindow,
    Processes,
    Tracker,
    batch_stats,
    fmt_batches,
    fmt_cpu,
    fmt_cpu_per_episode,
    lags,
    pct,
)
from bench.e2e.workload import Episode, Generator, json_array, kafka_envelope, previous_month, settleable_month
from shared.auth import bearer_headers
from devtools.stack import Stack
from shared.reference import load_reference
from shared.topics import ALL_TOPICS, FEEDBACK_SUBMITTED, PAYMENTS_REQUESTED

SCHEMES = Path(__file__).parent / "schemes"
AT_RISK_BPS = 1000  # bench/e2e/schemes/one-england-day-v1.toml
FULL_DAY = 1_500_000
TARGET_RATE = 5_000
TARGET_P99_MS = 500.0
TARGET_DAY_MIN = 6.0


def out(msg: str = "") -> None:
    print(msg, flush=True)


def now_ms() -> float:
    return time.time() * 1000.0


# ---------------------------------------------------------------------------------------------
# Submitting: Kafka (commissioners' systems, app backends) and HTTP batches
# ---------------------------------------------------------------------------------------------
@dataclass
class Sent:
    pay_kafka: int = 0
    pay_http: int = 0
    fb_kafka: int = 0
    fb_http: int = 0
    kafka_errors: int = 0
    http_refused: int = 0  # items an HTTP batch did not accept
    problems: list[str] = field(default_factory=list)

    @property
    def payments(self) -> int:
        return self.pay_kafka + self.pay_http

    @property
    def feedback(self) -> int:
        return self.fb_kafka + self.fb_http

    def problem(self, msg: str) -> None:
        if len(self.problems) < 10:
            self.problems.append(msg)


class Submitter:
    def __init__(self, stack: Stack, producer: AIOKafkaProducer, http: httpx.AsyncClient, submit_ms: Any, *,
                 http_share: float, correlation_id: str, http_concurrency: int) -> None:
        self.stack = stack
        self.producer = producer
        self.http = http
        self.submit_ms = submit_ms
        self.via_http = bytearray(len(submit_ms))  # 1 where the episode's payment went over HTTP
        self.http_share = http_share
        self.cid = correlation_id
        self.sent = Sent()
        # One bound per endpoint, so a slow service does not hold back the other's batches.
        self.sems = {"payments": asyncio.Semaphore(http_concurrency), "feedback": asyncio.Semaphore(http_concurrency)}
        self.post_seconds: dict[str, list[float]] = {"payments": [], "feedback": []}
        self.tasks: set[asyncio.Task] = set()
        self.pay_batch: list[tuple[int, str]] = []
        self.fb_batch: list[str] = []
        self.batch_started = time.monotonic()
        self.n_pay = self.n_fb = 0  # counters deciding the channel (exact shares)
        self.pay_headers = {**bearer_headers(["payments:write"], subject="bench-icb-finance"), "content-type": "application/json"}
        self.fb_headers = {**bearer_headers(["feedback:write"], subject="bench-app-backend"), "content-type": "application/json"}
        self.pay_url = stack.url("payments") + "/v1/payment-requests/batch"
        self.fb_url = stack.url("feedback") + "/v1/submissions/batch"
        self.pay_batch_max, self.fb_batch_max = 500, 250

    def _over_http(self, n: int) -> bool:
        return math.floor((n + 1) * self.http_share) > math.floor(n * self.http_share)

    def _delivered(self, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.sent.kafka_errors += 1
            if not fut.cancelled():
                self.sent.problem(f"kafka send failed: {fut.exception()!r}")

    async def emit(self, ep: Episode) -> None:
        at = datetime.now(timezone.utc).isoformat()
        if self._over_http(self.n_pay):
            if not self.pay_batch and not self.fb_batch:
                self.batch_started = time.monotonic()
            self.via_http[ep.index] = 1
            self.pay_batch.append((ep.index, ep.payment_json))
            if len(self.pay_batch) >= self.pay_batch_max:
                self._post_payments()
        else:
            key = ep.episode_id.encode()
            self.submit_ms[ep.index] = now_ms()
            fut = await self.producer.send(PAYMENTS_REQUESTED.name, kafka_envelope("payments.requested.v1", ep.payment_json, self.cid, at),
                                           key=key, headers=[("correlation_id", self.cid.encode())])
            fut.add_done_callback(self._delivered)
            self.sent.pay_kafka += 1
        self.n_pay += 1
        if ep.feedback_json is not None:
            if self._over_http(self.n_fb):
                if not self.pay_batch and not self.fb_batch:
                    self.batch_started = time.monotonic()
                self.fb_batch.append(ep.feedback_json)
                if len(self.fb_batch) >= self.fb_batch_max:
                    self._post_feedback()
            else:
                key = ep.episode_id.encode()
                fut = await self.producer.send(FEEDBACK_SUBMITTED.name, kafka_envelope("feedback.submitted.v1", ep.feedback_json, self.cid, at),
                                               key=key, headers=[("correlation_id", self.cid.encode())])
                fut.add_done_callback(self._delivered)
                self.sent.fb_kafka += 1
            self.n_fb += 1

    def flush_if_older(self, age_s: float) -> None:
        if (self.pay_batch or self.fb_batch) and time.monotonic() - self.batch_started >= age_s:
            self.flush()

    def flush(self) -> None:
        if self.pay_batch:
            self._post_payments()
        if self.fb_batch:
            self._post_feedback()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _post_payments(self) -> None:
        batch, self.pay_batch = self.pay_batch, []
        t = now_ms()
        for index, _ in batch:
            self.submit_ms[index] = t  # submitted when its batch is handed to the HTTP client
        self.sent.pay_http += len(batch)
        self._spawn(self._post(self.pay_url, self.pay_headers, batch, "payments"))

    def _post_feedback(self) -> None:
        batch, self.fb_batch = [(-1, fb) for fb in self.fb_batch], []
        self.sent.fb_http += len(batch)
        self._spawn(self._post(self.fb_url, self.fb_headers, batch, "feedback"))

    async def _post(self, url: str, headers: dict[str, str], batch: list[tuple[int, str]], what: str) -> None:
        # At most --http-concurrency POSTs per endpoint; a batch waiting here is already submitted
        # (its clock runs), as it would be in a client held back by a slow server.
        async with self.sems[what]:
            body = json_array([item for _, item in batch])
            t0 = time.perf_counter()
            for attempt in range(5):
                try:
                    r = await self.http.post(url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    self.sent.problem(f"{what} batch: {exc!r} (attempt {attempt + 1})")
                    await asyncio.sleep(1)
                    continue
                if r.status_code >= 500:
                    self.sent.problem(f"{what} batch: HTTP {r.status_code} (attempt {attempt + 1})")
                    await asyncio.sleep(1)
                    continue
                break
            else:
                self.sent.http_refused += len(batch)
                return
            self.post_seconds[what].append(time.perf_counter() - t0)
            if r.status_code != 200:
                self.sent.http_refused += len(batch)
                self.sent.problem(f"{what} batch refused: HTTP {r.status_code} {r.text[:300]}")
                return
            result = r.json()
            if result["rejected"]:
                self.sent.http_refused += result["rejected"]
                bad = [it for it in result["items"] if it["outcome"] not in ("created", "duplicate")][:2]
                self.sent.problem(f"{what} batch: {result['rejected']} items rejected, e.g. {bad}")

    def http_summary(self) -> str:
        """POSTs since the last call: how many, items per POST, seconds per POST (p50, max)."""
        parts = []
        for what, secs in self.post_seconds.items():
            if secs:
                ordered = sorted(secs)
                parts.append(f"{what} {len(secs):,} POSTs, p50 {pct(ordered, 0.5):.2f} s, max {ordered[-1]:.2f} s")
            secs.clear()
        return "; ".join(parts) or "none"

    async def drain(self) -> None:
        self.flush()
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        await self.producer.flush()


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    lo: int  # episode indexes [lo, hi)
    hi: int
    first_submit_ms: float = 0.0
    last_submit_ms: float = 0.0
    last_hold_ms: float = 0.0
    complete: bool = False
    latencies: list[float] = field(default_factory=list)
    by_channel: dict[str, list[float]] = field(default_factory=dict)
    by_stage: dict[str, list[float]] = field(default_factory=dict)
    feedback_out: int = 0  # the phase's submissions that left the feedback service (feedback.received.v1)
    last_feedback_ms: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    offered_s: float = 0.0  # how long the pacing loop took to offer the phase's episodes

    @property
    def count(self) -> int:
        return self.hi - self.lo


class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack) -> None:
        self.args = args
        self.stack = stack
        self.run = uuid.uuid4().hex[:6]
        self.ref = load_reference()
        self.paced_n = int(args.paced_rate * args.paced_seconds) if args.paced_seconds > 0 else 0
        self.capacity = self.paced_n + args.payments
        self.ratio = args.feedback / args.payments if args.payments else 0.0
        self.submit_ms: Any = None
        self.tracker: Tracker | None = None
        self.sub: Submitter | None = None
        self.procs: Processes | None = None
        self.phase_label = "start"
        self.phase_lo = self.phase_hi = 0
        self.phase_t0 = time.monotonic()
        self.amounts = {"paced": 0, "paced_at_risk": 0, "day": 0}
        self.feedback_sent = {"paced": 0, "day": 0}
        self.failures: list[str] = []

    # -- helpers ---------------------------------------------------------------------------
    def in_flight(self) -> int:
        assert self.sub and self.tracker
        return self.sub.sent.payments - self.tracker.counts[HOLD]

    async def progress(self, http: httpx.AsyncClient) -> None:
        assert self.tracker and self.procs
        window = CpuWindow(self.procs)
        last_t, last_holds = time.monotonic(), self.tracker.counts[HOLD]
        while True:
            await asyncio.sleep(self.args.progress_s)
            t, holds = time.monotonic(), self.tracker.counts[HOLD]
            rate = (holds - last_holds) / max(t - last_t, 1e-6)
            last_t, last_holds = t, holds
            lag = await lags(http, self.stack)
            lag_txt = " ".join(f"{k}={v:,.0f}" for k, v in sorted(lag.items()) if v)
            sent = self.sub.sent if self.sub else Sent()
            in_ledger = self.tracker.holds_in(self.phase_lo, self.phase_hi)
            out(f"  [{self.phase_label} {t - self.phase_t0:5.0f}s] sent {sent.payments:,} payments, {sent.feedback:,} feedback"
                f" | holds in ledger {in_ledger:,}/{self.phase_hi - self.phase_lo:,} ({rate:,.0f}/s)"
                f" | in flight {self.in_flight():,} | feedback out {self.tracker.feedback_seen:,}"
                f" | releases {self.tracker.counts[RELEASE]:,}")
            out(f"      lag: {lag_txt or 'none'} | cpu%: {fmt_cpu(window.take())}")

    def set_phase(self, label: str, lo: int, hi: int) -> None:
        self.phase_label, self.phase_lo, self.phase_hi, self.phase_t0 = label, lo, hi, time.monotonic()

    async def wait_until(self, what: str, done: Any, *, stall_s: float) -> bool:
        """Poll ``done() -> (n, total)`` until n >= total; False after ``stall_s`` without progress."""
        last, last_change = -1, time.monotonic()
        while True:
            n, total = done()
            if n >= total:
                return True
            if n != last:
                last, last_change = n, time.monotonic()
            elif time.monotonic() - last_change > stall_s:
                self.failures.append(f"{what}: stalled at {n:,}/{total:,} for {stall_s:.0f} s")
                return False
            await asyncio.sleep(0.05)

    def phase_result(self, phase: Phase) -> None:
        assert self.tracker and self.sub
        hold, fb, req, via_http = self.tracker.hold_ms, self.tracker.fb_ms, self.tracker.req_ms, self.sub.via_http
        lats, kafka, over_http, to_payments, to_ledger, last = [], [], [], [], [], 0.0
        for i in range(phase.lo, phase.hi):
            h = hold[i]
            if h:
                lat = h - self.submit_ms[i]
                lats.append(lat)
                (over_http if via_http[i] else kafka).append(lat)
                last = max(last, h)
                if req[i]:
                    to_payments.append(req[i] - self.submit_ms[i])
                    to_ledger.append(h - req[i])
            if fb[i]:
                phase.feedback_out += 1
                phase.last_feedback_ms = max(phase.last_feedback_ms, fb[i])
        for values in (lats, kafka, over_http, to_payments, to_ledger):
            values.sort()
        phase.latencies, phase.last_hold_ms = lats, last
        phase.by_channel = {"Kafka": kafka, "HTTP": over_http}
        phase.by_stage = {"submission -> payments' transfer requests out": to_payments,
                          "-> ledger posted": to_ledger}
        sub = [self.submit_ms[i] for i in range(phase.lo, phase.hi) if self.submit_ms[i]]
        phase.first_submit_ms, phase.last_submit_ms = (min(sub), max(sub)) if sub else (0.0, 0.0)

    def channel_latency(self, phase: Phase, by: str = "channel") -> str:
        groups = phase.by_channel if by == "channel" else phase.by_stage
        return "; ".join(f"{name} p50 {pct(v, 0.5):,.0f} ms, p99 {pct(v, 0.99):,.0f} ms ({len(v):,})"
                         for name, v in groups.items() if v)

    # -- phases ----------------------------------------------------------------------------
    async def paced(self, gen: Generator, phase: Phase) -> None:
        assert self.sub and self.procs
        rate = self.args.paced_rate
        cpu = CpuWindow(self.procs)
        self.set_phase("paced", phase.lo, phase.hi)
        t0, k = time.monotonic(), 0
        fb_before = self.sub.sent.feedback
        while k < phase.count:
            due = min(phase.count, int((time.monotonic() - t0) * rate) + 1)
            while k < due:
                ep = gen.next(phase.lo + k)
                self.amounts["paced"] += ep.amount_pence
                self.amounts["paced_at_risk"] += ep.amount_pence * AT_RISK_BPS // 10_000
                await self.sub.emit(ep)
                k += 1
            self.sub.flush_if_older(0.1)
            await asyncio.sleep(0.002)
        phase.offered_s = time.monotonic() - t0
        await self.sub.drain()
        self.feedback_sent["paced"] = gen_feedback(self.sub, fb_before)
        phase.complete = await self.wait_until(
            "paced phase: holds in the ledger", lambda: (self.tracker.holds_in(phase.lo, phase.hi), phase.count),  # type: ignore[union-attr]
            stall_s=self.args.stall_s)
        phase.seconds = time.monotonic() - t0
        phase.cpu = cpu.take()
        self.phase_result(phase)

    async def day(self, gen: Generator, phase: Phase) -> None:
        assert self.sub and self.procs and self.tracker
        cpu = CpuWindow(self.procs)
        self.set_phase("day", phase.lo, phase.hi)
        t0 = time.monotonic()
        fb_before = self.sub.sent.feedback
        limit = self.args.max_in_flight
        for k in range(phase.count):
            if k % 200 == 0:
                while self.in_flight() > limit:
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0)
            ep = gen.next(phase.lo + k)
            self.amounts["day"] += ep.amount_pence
            await self.sub.emit(ep)
        await self.sub.drain()
        self.feedback_sent["day"] = gen_feedback(self.sub, fb_before)
        out(f"  all {phase.count:,} payments and {self.feedback_sent['day']:,} feedback submitted in {time.monotonic() - t0:.1f} s;"
            " waiting for the ledger")
        phase.complete = await self.wait_until(
            "day: holds in the ledger", lambda: (self.tracker.holds_in(phase.lo, phase.hi), phase.count),  # type: ignore[union-attr]
            stall_s=self.args.stall_s)
        phase.seconds = time.monotonic() - t0
        phase.cpu = cpu.take()
        self.phase_result(phase)


def gen_feedback(sub: Submitter, before: int) -> int:
    return sub.sent.feedback - before


async def count_rows(dsn: str, sql: str, *args: Any) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


async def dead_letters(bootstrap: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - no public call for this
        tps = [TopicPartition(t.name, p) for t in ALL_TOPICS if t.name.endswith(".dlq.v1")
               for p in (consumer.partitions_for_topic(t.name) or ())]
        if not tps:
            return 0
        ends = await consumer.end_offsets(tps)
        return sum(ends.values())
    finally:
        await consumer.stop()


async def trial_balance(http: httpx.AsyncClient, ledger: str, headers: dict[str, str]) -> dict[str, Any]:
    r = await http.get(f"{ledger}/v1/trial-balance", params={"limit": 1}, headers=headers)
    r.raise_for_status()
    return r.json()


async def run(args: argparse.Namespace) -> int:
    quick = args.quick
    mode = "quick" if quick else ("full day" if args.payments == FULL_DAY and args.feedback == FULL_DAY // 3 else "reduced")
    today = date.today()
    day_month = settleable_month(today)  # settled at the end: its decision windows have closed
    paced_month = previous_month(day_month)
    day_period = f"{day_month:%Y-%m}"
    work_dir = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="pp-bench-e2e-"))
    stack = Stack(work_dir=work_dir, extra_env={"payments": {"PAYMENTS_SCHEMES_DIR": str(SCHEMES)}})
    bench = Bench(args, stack)
    http_pct = round(args.http_share * 100)
    out(f"bench e2e ({mode}): one England day = {args.payments:,} payment requests + {args.feedback:,} feedback submissions,"
        f" activity in {day_period}, then settlement of {day_period}")
    out(f"  ingress: {100 - http_pct}% Kafka (payments.requested.v1, feedback.submitted.v1), {http_pct}% HTTP batches"
        f" (POST /v1/payment-requests/batch x500, /v1/submissions/batch x250); at most {args.max_in_flight:,} episodes in flight")
    if bench.paced_n:
        out(f"  latency phase first: {args.paced_rate:,.0f} episodes/s offered for {args.paced_seconds:.0f} s"
            f" ({bench.paced_n:,} episodes, activity in {paced_month:%Y-%m}, not settled)")
    out(f"  run tag {bench.run}; scheme bench/e2e/schemes (10% at risk, min sample 30, cap 3%); work dir {work_dir}")
    rc = 0
    producer: AIOKafkaProducer | None = None
    t_start = time.monotonic()
    try:
        await stack.start()
        assert stack.infra is not None
        out(f"  stack up in {time.monotonic() - t_start:.1f} s ({stack.infra.kind}); services: "
            + ", ".join(f"{n} pid {s.proc.pid}" for n, s in stack.services.items() if s.proc))
        bench.procs = Processes.of(stack)
        bench.submit_ms = array.array("d", bytes(8 * bench.capacity))
        tracker = bench.tracker = Tracker(stack.infra.kafka_bootstrap, bench.run, bench.capacity)
        await tracker.start()
        producer = AIOKafkaProducer(bootstrap_servers=stack.infra.kafka_bootstrap, acks="all", linger_ms=5,
                                    max_batch_size=512 * 1024, compression_type=None, request_timeout_ms=30_000,
                                    client_id="bench-e2e")
        await producer.start()
        dlq_before = await dead_letters(stack.infra.kafka_bootstrap)
        reader = bearer_headers(["ledger:read", "ledger:audit"], subject="bench-finance")
        admin = bearer_headers(["schemes:admin"], subject="bench-finance-admin")
        async with httpx.AsyncClient(timeout=httpx.Timeout(300.0)) as http:
            ledger = stack.url("ledger")
            tb0 = await trial_balance(http, ledger, reader)
            bench.sub = Submitter(stack, producer, http, bench.submit_ms, http_share=args.http_share,
                                  correlation_id=f"bench-e2e-{bench.run}", http_concurrency=args.http_concurrency)
            progress = asyncio.create_task(bench.progress(http), name="progress")
            try:
                batches = await batch_stats(http, stack)
                # 1. latency at a fixed offered rate
                paced = Phase("paced", 0, bench.paced_n)
                if bench.paced_n:
                    out(f"\n1. latency phase: {args.paced_rate:,.0f} episodes/s offered for {args.paced_seconds:.0f} s")
                    gen = Generator(bench.ref, run=bench.run, month=paced_month, feedback_ratio=bench.ratio,
                                    seed=f"paced-{args.seed}", nhs_offset=0)
                    await bench.paced(gen, paced)
                    lat = paced.latencies
                    offered = paced.count / max(paced.offered_s, 1e-6)
                    spread = (paced.last_submit_ms - paced.first_submit_ms) / 1000
                    out(f"  HTTP batches: {bench.sub.http_summary()}")
                    out(f"  {len(lat):,}/{paced.count:,} episodes in the ledger; offered {offered:,.0f}/s"
                        f" (submissions spread over {spread:.1f} s);"
                        f" submission to ledger posting p50 {pct(lat, 0.5):,.0f} ms, p99 {pct(lat, 0.99):,.0f} ms,"
                        f" max {lat[-1] if lat else float('nan'):,.0f} ms")
                    out(f"  by channel: {bench.channel_latency(paced)}")
                    out(f"  by stage: {bench.channel_latency(paced, 'stage')}")
                    now_batches = await batch_stats(http, stack)
                    out(f"  consumer batches: {fmt_batches(batches, now_batches)}")
                    batches = now_batches
                    out(f"  cpu% during the phase (100 = one core): {fmt_cpu(paced.cpu)}")
                tb_paced = await trial_balance(http, ledger, reader)

                # 2. the day, as fast as the system takes it
                out(f"\n2. throughput phase: {args.payments:,} payments + {args.feedback:,} feedback as fast as the system takes them")
                day = Phase("day", bench.paced_n, bench.capacity)
                gen = Generator(bench.ref, run=bench.run, month=day_month, feedback_ratio=bench.ratio,
                                seed=f"day-{args.seed}", nhs_offset=bench.sub.sent.feedback + 10)
                await bench.day(gen, day)
                ingest_s = max(day.last_hold_ms - day.first_submit_ms, 1.0) / 1000
                rate = len(day.latencies) / ingest_s
                out(f"  {len(day.latencies):,}/{day.count:,} episodes in the ledger in {ingest_s:.1f} s from the first submission:"
                    f" {rate:,.0f} episodes/s sustained")
                out(f"  (under saturation, latency p50 {pct(day.latencies, 0.5):,.0f} ms, p99 {pct(day.latencies, 0.99):,.0f} ms:"
                    f" queueing within the in-flight bound, not the latency figure)")
                fb_s = (day.last_feedback_ms - day.first_submit_ms) / 1000
                out(f"  feedback: {day.feedback_out:,}/{bench.feedback_sent['day']:,} through the feedback service when the last hold"
                    f" was posted" + (f" ({day.feedback_out / fb_s:,.0f}/s so far)" if fb_s > 0 else ""))
                out(f"  HTTP batches: {bench.sub.http_summary()}")
                now_batches = await batch_stats(http, stack)
                out(f"  consumer batches: {fmt_batches(batches, now_batches)}")
                batches = now_batches
                out(f"  cpu% during the phase (100 = one core): {fmt_cpu(day.cpu)}")
                out(f"  {fmt_cpu_per_episode(day.cpu, day.seconds, day.count, target_per_s=5_000)}")

                # 3. feedback must all be with payments before the month is settled
                bench.set_phase("feedback", day.lo, day.hi)
                fb_total = bench.sub.sent.feedback
                pay_db = stack.database_urls["payments"]
                answers_sql = "SELECT count(*) FROM answers WHERE submission_id LIKE $1"
                answers, polls = 0, 0
                last_change, last = time.monotonic(), -1
                while True:
                    answers = await count_rows(pay_db, answers_sql, f"{bench.run}-s%")
                    polls += 1
                    if answers >= fb_total:
                        break
                    if answers != last:
                        last, last_change = answers, time.monotonic()
                    elif time.monotonic() - last_change > args.stall_s:
                        bench.failures.append(f"feedback: payments recorded {answers:,}/{fb_total:,} answers, stalled")
                        break
                    await asyncio.sleep(0.25)
                # Time the day waited for feedback after its last hold was posted (0 if it was already in).
                drain_s = 0.0 if polls == 1 else max(0.0, (now_ms() - day.last_hold_ms) / 1000)
                out(f"\n3. feedback: payments has {answers:,}/{fb_total:,} answers; {drain_s:.1f} s after the last hold was posted")

                # 4. settlement
                out(f"\n4. settlement: POST /v1/settlements/run {{\"period\": \"{day_period}\"}}")
                bench.set_phase("settle", day.lo, day.hi)
                cpu = CpuWindow(bench.procs)
                t_settle = time.monotonic()
                r = await http.post(f"{stack.url('payments')}/v1/settlements/run", json={"period": day_period},
                                    headers=admin, timeout=None)
                reports: list[dict[str, Any]] = []
                if r.status_code not in (200, 202):
                    bench.failures.append(f"settlement: HTTP {r.status_code} {r.text[:300]}")
                else:  # a job: followed until it ends
                    job = r.json()
                    while job["state"] in ("queued", "running"):
                        await asyncio.sleep(0.25)
                        job = (await http.get(f"{stack.url('payments')}{job['url']}", headers=admin)).json()
                    if job["state"] != "succeeded":
                        bench.failures.append(f"settlement job {job['state']}: {job['errors']}")
                    reports = job["reports"] or []
                settle_call_s = time.monotonic() - t_settle
                diverted = sum(rep["diverted_pence"] for rep in reports)
                held = sum(rep["held_pence"] for rep in reports)
                settled_eps = sum(rep["episodes"] for rep in reports)
                out(f"  job done in {settle_call_s:.1f} s: {len(reports)} provider units, {settled_eps:,} episodes,"
                    f" held £{held / 100:,.2f}, diverted £{diverted / 100:,.2f}"
                    f" (minimum sample applied {sum(rep['min_sample_applied'] for rep in reports)},"
                    f" cap applied {sum(rep['cap_applied'] for rep in reports)})")
                await bench.wait_until("settlement: releases in the ledger",
                                       lambda: (day.count - tracker.missing(RELEASE, day.lo, day.hi), day.count),
                                       stall_s=args.stall_s)
                fund_target = tb_paced["by_type_pence"].get("fund", 0) + diverted
                tb = await trial_balance(http, ledger, reader)
                deadline = time.monotonic() + args.stall_s
                while tb["by_type_pence"].get("fund", 0) != fund_target and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    tb = await trial_balance(http, ledger, reader)
                settle_s = time.monotonic() - t_settle
                settle_cpu = cpu.take()
                out(f"  every release and diversion posted {settle_s:.1f} s after the request"
                    f" ({tracker.counts[RELEASE]:,} releases, {tracker.counts[DIVERT]:,} diversions)")
                out(f"  consumer batches: {fmt_batches(batches, await batch_stats(http, stack))}")
                out(f"  cpu% during settlement (100 = one core): {fmt_cpu(settle_cpu)}")
            finally:
                progress.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await progress

            # 5. the books
            out("\n5. the books")
            checks: list[tuple[str, bool, str]] = []
            sent = bench.sub.sent
            checks.append(("every request accepted", sent.kafka_errors == 0 and sent.http_refused == 0,
                           f"kafka send errors {sent.kafka_errors}, HTTP items refused {sent.http_refused}"))
            for label, phase in (("latency phase", paced), ("day", day)):
                if not phase.count:
                    continue
                miss_pay, miss_hold = tracker.missing(PAY, phase.lo, phase.hi), tracker.missing(HOLD, phase.lo, phase.hi)
                rej = tracker.rejected_in(PAY, phase.lo, phase.hi) + tracker.rejected_in(HOLD, phase.lo, phase.hi)
                checks.append((f"{label}: every episode in the ledger", miss_pay == miss_hold == rej == 0,
                               f"{phase.count:,} episodes; missing pay {miss_pay:,}, missing hold {miss_hold:,}, rejected {rej:,}"))
            miss_rel, rej_rel = tracker.missing(RELEASE, day.lo, day.hi), tracker.rejected_in(RELEASE, day.lo, day.hi)
            checks.append(("day: every hold settled", miss_rel == rej_rel == 0 and settled_eps == day.count,
                           f"settled {settled_eps:,}/{day.count:,}; releases missing {miss_rel:,}, rejected {rej_rel:,};"
                           f" diversions rejected {tracker.rejected[DIVERT]:,}"))
            if tracker.rejected[DIVERT]:
                checks[-1] = (checks[-1][0], False, checks[-1][2])
            fb_db = await count_rows(stack.database_urls["feedback"], "SELECT count(*) FROM submissions WHERE submission_id LIKE $1",
                                     f"{bench.run}-s%")
            answers = await count_rows(pay_db, answers_sql, f"{bench.run}-s%")
            checks.append(("every feedback stored and with payments", fb_db == answers == sent.feedback,
                           f"sent {sent.feedback:,}, feedback stored {fb_db:,}, payments answers {answers:,}"))
            dlq = await dead_letters(stack.infra.kafka_bootstrap) - dlq_before
            checks.append(("no dead letters", dlq == 0, f"{dlq:,} dead letters"))
            d = lambda key: tb["by_type_pence"].get(key, 0) - tb0["by_type_pence"].get(key, 0)  # noqa: E731
            checks.append(("ledger sums to zero", tb["total_pence"] == 0, f"total {tb['total_pence']} pence over {tb['account_count']:,} accounts"))
            paid_in = bench.amounts["day"] + bench.amounts["paced"] - bench.amounts["paced_at_risk"]
            checks.append(("commissioners paid exactly what was requested", -d("commissioner") == paid_in,
                           f"commissioners {d('commissioner') / 100:,.2f}, expected {-paid_in / 100:,.2f}"
                           " (the day in full, the latency phase less its held share)"))
            checks.append(("providers + funds received it", d("provider") + d("fund") == paid_in,
                           f"providers £{d('provider') / 100:,.2f}, funds £{d('fund') / 100:,.2f} (diverted £{diverted / 100:,.2f})"))
            pending = tb["pending_credits_pence"] - tb0["pending_credits_pence"]
            checks.append(("nothing of the day left held", pending == bench.amounts["paced_at_risk"] and d("fund") == diverted,
                           f"pending £{pending / 100:,.2f} = the latency phase's holds £{bench.amounts['paced_at_risk'] / 100:,.2f}"))
            if args.verify or bench.capacity <= 100_000:
                rv = await http.get(f"{ledger}/v1/verify", headers=reader, timeout=None)
                v = rv.json()
                checks.append(("hash chain verifies", rv.status_code == 200 and v.get("ok") is True,
                               f"{v.get('entries_checked', 0):,} entries: {v.get('reason', rv.status_code)}"))
            for name, ok, detail in checks:
                out(f"  {'ok  ' if ok else 'FAIL'} {name}: {detail}")
                if not ok:
                    bench.failures.append(name)
            for p in sent.problems:
                out(f"  note: {p}")
            for p in tracker.rejections:
                out(f"  rejected by the ledger: {p}")

        # 6. figures
        rss = bench.procs.peak_rss_mb()
        service_rss = {k: v for k, v in rss.items() if k in stack.services}
        max_rss = max(service_rss.values()) if service_rss else float("nan")
        p50, p99 = pct(paced.latencies, 0.5), pct(paced.latencies, 0.99)
        day_s = ingest_s + drain_s + settle_s
        total_eps = sent.payments
        out("\n6. figures")
        out(f"  ingress split: payments {sent.pay_kafka:,} Kafka / {sent.pay_http:,} HTTP;"
            f" feedback {sent.fb_kafka:,} Kafka / {sent.fb_http:,} HTTP ({total_eps:,} episodes in all phases)")
        out("  peak memory (VmHWM): " + ", ".join(f"{k} {v:,.0f} MB" for k, v in rss.items()) + f"; max of the services {max_rss:,.0f} MB")
        out(f"  sustained: {rate:,.0f} episodes/s (target >= {TARGET_RATE:,}: {'met' if rate >= TARGET_RATE else 'missed'})")
        if paced.count:
            out(f"  latency at {args.paced_rate:,.0f}/s offered: p50 {p50:,.0f} ms, p99 {p99:,.0f} ms"
                f" (target p99 < {TARGET_P99_MS:.0f} ms: {'met' if p99 < TARGET_P99_MS else 'missed'})")
            if rate < args.paced_rate:
                out(f"  note: {args.paced_rate:,.0f}/s offered is above the {rate:,.0f}/s the system sustains, so that latency is"
                    " mostly queueing (it grows with --paced-seconds); see --paced-rate")
        out(f"  the day: ingest {ingest_s:.1f} s + feedback drain {drain_s:.1f} s + settlement {settle_s:.1f} s"
            f" = {day_s / 60:.2f} min for {day.count:,} episodes")
        if day.count != FULL_DAY:
            scale = FULL_DAY / max(day.count, 1)
            out(f"  extrapolated to one England day ({FULL_DAY:,} episodes, linear in the measured phases): {day_s * scale / 60:.1f} min"
                f" (target < {TARGET_DAY_MIN:.0f} min: {'met' if day_s * scale / 60 < TARGET_DAY_MIN else 'missed'})")
        else:
            out(f"  target < {TARGET_DAY_MIN:.0f} min: {'met' if day_s / 60 < TARGET_DAY_MIN else 'missed'}")
        if bench.failures:
            out(f"  FAILED: {'; '.join(bench.failures)}")
            rc = 1
        out(f"  wall time including start-up: {time.monotonic() - t_start:.0f} s")
        out(f"bench=e2e episodes_per_s={rate:.1f} p99_ms={p99:.1f} day_minutes={day_s / 60:.2f} max_rss_mb={max_rss:.1f}")
        if args.month_line:
            # CPU per episode by process over the whole month (ingest, feedback drain, settlement
            # and its drain), and each process's peak memory: the figures the --month curve compares.
            cpu_s = {k: v / 100 * day.seconds for k, v in day.cpu.items()}
            for k, v in settle_cpu.items():
                cpu_s[k] = cpu_s.get(k, 0.0) + v / 100 * settle_s
            per_ep = {k: v / max(day.count, 1) * 1e6 for k, v in cpu_s.items() if k not in ("bench", "other")}
            drained = tracker.counts[RELEASE] + tracker.counts[DIVERT]
            out(f"bench=month episodes={day.count} episodes_per_s={rate:.1f} month_minutes={day_s / 60:.2f}"
                f" settle_s={settle_s:.1f} drain_per_s={drained / max(settle_s, 1e-6):.0f}"
                f" cpu_us_per_episode={sum(per_ep.values()):.0f} "
                + " ".join(f"cpu_us_{k}={v:.0f}" for k, v in sorted(per_ep.items()))
                + " " + " ".join(f"peak_mb_{k}={v:.0f}" for k, v in sorted(service_rss.items()))
                + f" ok={int(not bench.failures)}")
    finally:
        if bench.tracker:
            await bench.tracker.stop()
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
        stack.stop()
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    return rc


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    import bench.e2e as package

    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=(package.__doc__ or "").split("\n\n")[0])
    p.add_argument("--payments", type=int, default=None, help=f"payment requests in the day (default {FULL_DAY:,}; quick 3,000)")
    p.add_argument("--feedback", type=int, default=None, help="feedback submissions in the day (default 500,000; quick 1,000)")
    p.add_argument("--quick", action="store_true", help="3,000 payments + 1,000 feedback, 5 s latency phase (CI smoke run)")
    p.add_argument("--paced-rate", type=float, default=1_000.0, help="episodes/s offered in the latency phase (default 1,000)")
    p.add_argument("--paced-seconds", type=float, default=None, help="length of the latency phase (default 30, quick 5; 0 skips it)")
    p.add_argument("--http-share", type=float, default=0.2, help="share of payments and of feedback sent over HTTP (default 0.2)")
    p.add_argument("--http-concurrency", type=int, default=8, help="HTTP batches in flight per endpoint (default 8)")
    p.add_argument("--max-in-flight", type=int, default=25_000, help="episodes submitted but not yet in the ledger (default 25,000)")
    p.add_argument("--stall-s", type=float, default=None, help="fail when nothing moves for this long (default 120, quick 60)")
    p.add_argument("--progress-s", type=float, default=5.0, help="seconds between progress lines")
    p.add_argument("--verify", action="store_true", help="verify the hash chain at the end (always on up to 100,000 episodes)")
    p.add_argument("--seed", default="2026", help="workload seed")
    p.add_argument("--work-dir", help="logs and PostgreSQL data (default: a temp folder, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (service logs) after the run")
    p.add_argument("--month", action="store_true",
                   help="the month-scale curve: --month-episodes spread over a month's days, settled as a job, at each of"
                        " --scales (each run on a fresh stack); prints a bench=month line per run and the curve")
    p.add_argument("--month-episodes", type=int, default=None, help="episodes at scale 1 (default 20,000; quick 3,000)")
    p.add_argument("--scales", default="1,2,4", help="multiples of --month-episodes (default 1,2,4)")
    p.add_argument("--month-line", action="store_true", help=argparse.SUPPRESS)  # one run of the curve
    args = p.parse_args(argv)
    args.payments = args.payments if args.payments is not None else (3_000 if args.quick else FULL_DAY)
    args.feedback = args.feedback if args.feedback is not None else (1_000 if args.quick else (args.payments // 3))
    args.paced_seconds = args.paced_seconds if args.paced_seconds is not None else (5.0 if args.quick else 30.0)
    args.stall_s = args.stall_s if args.stall_s is not None else (60.0 if args.quick else 120.0)
    if args.payments < 1 or not 0 <= args.feedback <= args.payments:
        p.error("need --payments >= 1 and 0 <= --feedback <= --payments (one submission per episode at most)")
    if not 0 <= args.http_share <= 1:
        p.error("--http-share must be between 0 and 1")
    return args


def month_curve(args: argparse.Namespace) -> int:
    """Run the month at each scale, each on a fresh stack in its own process, and print the curve:
    the rate must not fall as the month grows, and CPU and memory per episode must not grow."""
    import subprocess

    base = args.month_episodes or (3_000 if args.quick else 20_000)
    scales = [int(x) for x in args.scales.split(",")]
    lines: list[dict[str, str]] = []
    for scale in scales:
        n = base * scale
        out(f"\n=== month at {scale}x: {n:,} episodes, {n // 3:,} feedback ===")
        cmd = [sys.executable, "-m", "bench.e2e", "--payments", str(n), "--feedback", str(n // 3), "--paced-seconds", "0",
               "--month-line", "--seed", args.seed]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith(("bench=", "  FAIL", "  ok  ", "  the day", "  job", "  every release")) or "cpu%" in line:
                out(line)
        found = [line for line in proc.stdout.splitlines() if line.startswith("bench=month ")]
        if proc.returncode != 0 or not found:
            out(proc.stdout[-3000:] + proc.stderr[-3000:])
            return 1
        lines.append(dict(kv.split("=", 1) for kv in found[-1].split()[1:]))
    out("\nthe curve (per scale): episodes, episodes/s, CPU us per episode, peak MB per service")
    for scale, d in zip(scales, lines):
        peaks = " ".join(f"{k[8:]} {v}" for k, v in d.items() if k.startswith("peak_mb_"))
        out(f"  {scale}x: {int(d['episodes']):,} episodes, {float(d['episodes_per_s']):,.0f}/s, {d['cpu_us_per_episode']} us/episode,"
            f" settlement drain {d['drain_per_s']}/s; peak MB {peaks}")
    out("bench=month-curve scales=" + ",".join(map(str, scales))
        + " episodes_per_s=" + ",".join(f"{float(d['episodes_per_s']):.0f}" for d in lines)
        + " cpu_us_per_episode=" + ",".join(d["cpu_us_per_episode"] for d in lines)
        + " drain_per_s=" + ",".join(d["drain_per_s"] for d in lines)
        + " max_peak_mb=" + ",".join(str(max(int(v) for k, v in d.items() if k.startswith("peak_mb_"))) for d in lines))
    return 0 if all(d.get("ok") == "1" for d in lines) else 1


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)  # type: ignore[union-attr]  # stop the stack on SIGTERM too
    return await run(args)


if __name__ == "__main__":
    _args = parse()
    sys.exit(month_curve(_args) if _args.month else asyncio.run(main(_args)))
