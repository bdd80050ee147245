"""Feedback benchmark: accepted submissions per second, single and batch, beside a bare endpoint.

``python -m bench.feedback [--quick]`` (``make bench-feedback``):

1. infrastructure from ``devtools/stack.py`` (``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL`` when
   set, else the embedded Tansu broker and PostgreSQL) and a throwaway database;
2. the feedback service as a real process (``python -m services.feedback``: uvicorn, migrations,
   Kafka intake, outbox relay) and, beside it, a bare FastAPI endpoint served by uvicorn the same
   way (``bench/feedback/bare.py``);
3. one httpx client over loopback with bounded concurrency and a fixed duration per phase:
   ``single`` (POST /v1/submissions, counts 202s), ``batch`` (POST /v1/submissions/batch,
   counts items created), ``bare`` (POST to the bare endpoint, counts 202s).

The last line is ``bench=feedback single_per_s=… batch_per_s=… bare_per_s=…``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.relay import stop_process
from devtools.synthetic import synthetic_nhs_number
from shared.auth import bearer_headers
from shared.db import ensure_database
from devtools.stack import ROOT, ServiceProcess, free_port, start_infra, wait_for_port

PROVIDERS = ("RJ1", "RRV", "RTD", "R0A", "RX1", "RYJ", "RAL", "RM1")
AUTHORED = (datetime.now(timezone.utc) - timedelta(days=2)).isoformat()


def make_body(n: int, run: str) -> dict[str, Any]:
    """The n-th synthetic submission: mostly FFT with free text, every fourth an Oxford Hip Score."""
    body: dict[str, Any] = {
        "submission_id": f"b-{run}-{n}", "episode_id": f"e-{run}-{n}", "provider_code": PROVIDERS[n % len(PROVIDERS)],
        "nhs_number": synthetic_nhs_number(n % 1_000_000), "authored_at": AUTHORED,
    }
    if n % 4 == 3:
        body["answers"] = {"instrument": "ohs", "items": [(n + i) % 5 for i in range(12)],
                           "timing": "pre_op" if n % 8 == 3 else "post_op", "procedure": "primary_hip_replacement"}
    else:
        body["answers"] = {"instrument": "fft", "fft_answer": n % 6 + 1}
        body["free_text"] = "Synthetic benchmark comment"
    return body


async def load(client: httpx.AsyncClient, *, concurrency: int, duration_s: float,
               one: Callable[[httpx.AsyncClient], Awaitable[int]]) -> tuple[float, int, int]:
    """Run ``concurrency`` workers for ``duration_s``; returns (accepted per second, accepted, requests)."""
    accepted = requests = 0
    stop_at = time.perf_counter() + duration_s

    async def worker() -> None:
        nonlocal accepted, requests
        while time.perf_counter() < stop_at:
            n = await one(client)  # not "accepted += await …": that reads accepted before the await
            accepted += n
            requests += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return accepted / elapsed, accepted, requests


async def wait_healthy(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as c:
        while time.monotonic() < deadline:
            try:
                if (await c.get(url)).status_code in (200, 404, 405):
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} not up after {timeout_s}s")


async def run(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="pp-bench-feedback-"))
    infra = start_infra(allow_containers=False, work_dir=work)
    db_name = f"bench_feedback_{uuid.uuid4().hex[:8]}"
    procs: list[Any] = []
    ok = False
    try:
        dsn = await ensure_database(infra.postgres_dsn, db_name)
        env = {**os.environ, "FEEDBACK_DATABASE_URL": dsn, "FEEDBACK_KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
               "FEEDBACK_HTTP_PORT": str(free_port()), "FEEDBACK_LOG_LEVEL": "INFO",
               "FEEDBACK_CONSUMER_GROUP": f"bench-{db_name}"}
        service = ServiceProcess("feedback", int(env["FEEDBACK_HTTP_PORT"]), env, work / "feedback.log")
        service.start()
        procs.append(service)
        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, "-m", "bench.feedback.bare", "--port", str(bare_port)], cwd=ROOT,
                                stdout=open(work / "bare.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(bare)
        await service.wait_healthy()
        wait_for_port("127.0.0.1", bare_port)
        bare_url = f"http://127.0.0.1:{bare_port}/v1/submissions"
        print(f"infrastructure: {infra.kind}; service {service.url}; bare {bare_url}", flush=True)

        counter = itertools.count()
        run_id = uuid.uuid4().hex[:6]
        batch_size = args.batch_size

        auth = bearer_headers(["feedback:write"], subject="bench")  # as an app backend's token
        refused: dict[int, str] = {}  # status -> first problem body: a refusal is a broken run, not a slow one

        def accepted_or_note(r: httpx.Response, expect: int) -> bool:
            if r.status_code != expect:
                refused.setdefault(r.status_code, r.text[:300])
                return False
            return True

        async def single(c: httpx.AsyncClient) -> int:
            r = await c.post(f"{service.url}/v1/submissions", json=make_body(next(counter), run_id), headers=auth)
            return 1 if accepted_or_note(r, 202) else 0

        async def batch(c: httpx.AsyncClient) -> int:
            body = [make_body(next(counter), run_id) for _ in range(batch_size)]
            r = await c.post(f"{service.url}/v1/submissions/batch", json=body, headers=auth)
            if not accepted_or_note(r, 200):
                return 0
            return sum(1 for it in r.json()["items"] if it["outcome"] == "created")

        async def bare_one(c: httpx.AsyncClient) -> int:
            r = await c.post(bare_url, json=make_body(next(counter), run_id))
            return 1 if r.status_code == 202 else 0

        results: dict[str, float] = {}
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            phases = [("single", single, args.concurrency), ("batch", batch, args.batch_concurrency),
                      ("bare", bare_one, args.concurrency)]
            for name, fn, conc in phases:
                await load(client, concurrency=conc, duration_s=args.warmup_s, one=fn)  # warm up
                per_s, accepted, requests = await load(client, concurrency=conc, duration_s=args.duration_s, one=fn)
                results[name] = per_s
                print(f"{name}: {accepted} accepted in {requests} requests over {args.duration_s:.0f}s "
                      f"(concurrency {conc}{f', {batch_size} per batch' if name == 'batch' else ''}): {per_s:.1f}/s",
                      flush=True)
        conn = await asyncpg.connect(dsn)
        try:
            stored = await conn.fetchval("SELECT count(*) FROM submissions")
            backlog = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        finally:
            await conn.close()
        print(f"stored submissions: {stored}; outbox backlog at the end: {backlog}", flush=True)
        if refused:
            raise RuntimeError(f"the service refused requests (status: first body): {refused}")
        ok = True
        return (f"bench=feedback single_per_s={results['single']:.1f} batch_per_s={results['batch']:.1f} "
                f"bare_per_s={results['bare']:.1f}")
    finally:
        for p in procs:
            if isinstance(p, ServiceProcess):
                p.stop()
            else:
                stop_process(p)
        try:
            conn = await asyncpg.connect(infra.postgres_dsn)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            finally:
                await conn.close()
        except Exception:
            pass
        infra.stop()
        if ok:
            shutil.rmtree(work, ignore_errors=True)  # embedded PostgreSQL data and logs
        else:
            print(f"logs kept in {work}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.feedback", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases (about 15 s in all) for a smoke run")
    parser.add_argument("--duration-s", type=float, default=None, help="measured seconds per phase (default 10, quick 2)")
    # httpx's pool slows down with many connections in flight (on this 2-core box 8 in flight
    # gave about twice the bare rate of 32), so the default keeps the client out of the way.
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight for single and bare (default 8)")
    parser.add_argument("--batch-concurrency", type=int, default=4, help="batches in flight (default 4)")
    parser.add_argument("--batch-size", type=int, default=100, help="submissions per batch (default 100, at most 500)")
    args = parser.parse_args(argv)
    args.duration_s = args.duration_s or (2.0 if args.quick else 10.0)
    args.warmup_s = 0.5 if args.quick else 2.0
    if not 1 <= args.batch_size <= 500 or not 1 <= args.concurrency <= 256 or not 1 <= args.batch_concurrency <= 64:
        parser.error("batch size 1-500, concurrency 1-256, batch concurrency 1-64")
    line = asyncio.run(run(args))
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
