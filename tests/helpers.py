"""Small helpers for integration and end-to-end tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T]], *, timeout_s: float = 30.0, interval_s: float = 0.1) -> T:
    """Poll until ``check`` returns a truthy value; fail with the last value after the timeout."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s; last value: {last!r}")


async def publish(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes, dict[str, str]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, headers in messages:
            await producer.send_and_wait(topic, value, key=key, headers=[(k, v.encode()) for k, v in headers.items()])
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, *, expect: int, timeout_s: float = 20.0) -> list[Any]:
    """Read a topic from the beginning until ``expect`` records are seen (or time out)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(out) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


async def settle(http: Any, payments_url: str, body: dict[str, Any], *, headers: dict[str, str] | None = None,
                 timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Run a settlement job (POST /v1/settlements/run) to its end; the reports it wrote."""
    r = await http.post(f"{payments_url}/v1/settlements/run", params={"wait_s": min(timeout_s, 60)}, json=body,
                        **({"headers": headers} if headers else {}))
    assert r.status_code in (200, 202), r.text
    job = r.json()
    deadline = time.monotonic() + timeout_s
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"settlement job still {job['state']} after {timeout_s}s: {job}"
        await asyncio.sleep(0.2)
        r = await http.get(f"{payments_url}{job['url']}", **({"headers": headers} if headers else {}))
        assert r.status_code == 200, r.text
        job = r.json()
    assert job["state"] == "succeeded", job
    return job["reports"]
