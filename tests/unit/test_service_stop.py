"""A service's stop always ends: a part that hangs (even one that ignores cancellation) is
abandoned after its deadline and the parts after it still stop (CI once spent its 900 s test
timeout inside one stop)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from shared import service
from shared.service import Runtime, stop_step
from shared.settings import ServiceSettings


class Part:
    """Something with a stop: hangs (ignoring cancellation) or records that it stopped."""

    def __init__(self, *, hang: bool = False, fail: bool = False) -> None:
        self.hang, self.fail, self.stopped, self.terminated = hang, fail, False, False
        self.subscribers: list[Any] = []
        self.released = asyncio.Event()  # set at the end of a test, so its event loop can close

    async def stop(self) -> None:
        if self.fail:
            raise RuntimeError("broken")
        while self.hang and not self.released.is_set():
            try:
                await self.released.wait()
            except asyncio.CancelledError:
                continue  # the worst case: a part that swallows its cancellation
        self.stopped = True

    async def close(self) -> None:
        await self.stop()

    def terminate(self) -> None:
        self.terminated = True


@pytest.fixture
def short_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "STOP_STEP_TIMEOUT_S", 0.2)


async def test_a_step_that_finishes_is_reported_finished() -> None:
    part = Part()
    assert await stop_step("part", part.stop(), timeout_s=1) is True and part.stopped


async def test_a_failing_step_is_logged_and_the_stop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    assert await stop_step("part", Part(fail=True).stop(), timeout_s=1) is True
    assert "part failed (RuntimeError)" in caplog.text


async def test_a_hanging_step_is_abandoned_at_its_deadline(caplog: pytest.LogCaptureFixture) -> None:
    started, stuck = time.monotonic(), Part(hang=True)
    assert await stop_step("stuck part", stuck.stop(), timeout_s=0.2) is False
    assert 0.2 <= time.monotonic() - started < 2
    assert "stuck part did not finish in 0.2 s; abandoned" in caplog.text
    stuck.released.set()


async def test_the_runtime_stops_everything_after_a_hung_broker(short_steps: None) -> None:
    runtime = Runtime(ServiceSettings(service_name="stop-test"), migrations=())
    runtime.broker = Part(hang=True)  # type: ignore[assignment]
    after = Part()
    runtime.on_stop(after.stop)
    producer, pool = Part(), Part(hang=True)
    runtime.producer, runtime.pool = producer, pool  # type: ignore[assignment]
    started = time.monotonic()
    await asyncio.wait_for(runtime.stop(), timeout=5)
    assert time.monotonic() - started < 3
    assert after.stopped and producer.stopped  # the parts after the hung one still stopped
    assert pool.terminated  # the pool that would not close was terminated
    assert not runtime.broker.stopped  # type: ignore[attr-defined]
    runtime.broker.released.set()  # type: ignore[attr-defined]
    pool.released.set()
