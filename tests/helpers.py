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
