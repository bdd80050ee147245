"""The ledger's one write path (services/ledger/handlers.py) on an in-memory store, and group
commit (services/ledger/group_commit.py): concurrent requests join one batch, each answered with
its own outcome; one bad request fails alone; an outage fails its batch; the queue is bounded."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from services.ledger.domain import plan_batch
from services.ledger.group_commit import GroupCommit, Overloaded
from services.ledger.handlers import LedgerHandlers
from services.ledger.ports import Submitted
from shared.contracts import Envelope, Leg, TransferCause, TransferPosted, TransferRequested
from shared.uow import FakeUnitOfWork
from tests.unit.fakes_ledger import FakeLedgerTx, LedgerState

T0 = datetime(2026, 10, 1, 9, tzinfo=timezone.utc)


def transfer(tid: str, amount: int = 100, *, kind: str = "posted", **kw: Any) -> Submitted:
    legs = (Leg(account_id="commissioner:QWE", amount_pence=-amount), Leg(account_id="provider:RJ1", amount_pence=amount))
    req = TransferRequested(transfer_id=tid, kind=kind, legs=legs if kind in ("posted", "pending") else (),  # type: ignore[arg-type]
                            cause=TransferCause(kind="manual"), **kw)
    return Submitted(req, f"c-{tid}", None)


def ledger() -> tuple[LedgerHandlers, FakeUnitOfWork]:
    uow = FakeUnitOfWork(LedgerState(), FakeLedgerTx)
    return LedgerHandlers(uow), uow


async def test_a_batch_is_one_unit_of_work_with_the_core_s_outcomes_and_one_answer_each() -> None:
    handlers, uow = ledger()
    batch = [transfer("manual:a"), transfer("manual:b", 50), transfer("manual:a"), transfer("manual:a", 7)]
    outcomes = await handlers.post(batch, now=T0)
    expected = plan_batch([s.request for s in batch], balances={}, existing={}, head_seq=0, head_hash="0" * 64, now=T0).outcomes
    assert outcomes == expected
    assert [o.status for o in outcomes] == ["posted", "posted", "duplicate", "conflict"]
    assert uow.commits == 1 and uow.state.head.seq == 2
    answers = [Envelope[TransferPosted].model_validate_json(r[2]).data for r in uow.state.outbox]
    assert [(a.transfer_id, a.status) for a in answers] == [("manual:a", "posted"), ("manual:b", "posted"),
                                                              ("manual:a", "posted"), ("manual:a", "rejected")]
    assert json.loads(uow.state.outbox[1][3])["correlation_id"] == "c-manual:b"
    again = await handlers.post(batch[:2], now=T0 + timedelta(seconds=1))
    assert [o.status for o in again] == ["duplicate", "duplicate"] and uow.state.head.seq == 2


async def test_expiry_voids_due_pending_transfers_as_chain_entries() -> None:
    handlers, uow = ledger()
    await handlers.post([transfer("manual:h", 40, kind="pending", timeout_s=60)], now=T0)
    assert await handlers.expire_due(limit=10, now=T0 + timedelta(seconds=30)) == []
    [voided] = await handlers.expire_due(limit=10, now=T0 + timedelta(seconds=61))
    assert (voided.transfer_id, voided.status, voided.reason) == ("manual:h", "voided", "pending expired")
    assert uow.state.pendings["manual:h"].status == "expired" and uow.state.balances["provider:RJ1"].pending_credits_pence == 0


class Recorder:
    """The handler's post, recording the batches it was given (and failing on demand)."""

    def __init__(self, handlers: LedgerHandlers, fail_on: str | None = None, outage: bool = False) -> None:
        self.handlers, self.fail_on, self.outage = handlers, fail_on, outage
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def post(self, batch: Any) -> Any:
        self.batches.append([s.request.transfer_id for s in batch])
        await self.gate.wait()
        if self.outage:
            raise OSError("database unreachable")
        if self.fail_on and any(s.request.transfer_id == self.fail_on for s in batch):
            raise ValueError("a request this code cannot handle")
        return await self.handlers.post(batch, now=T0)


async def started(recorder: Recorder, **kw: Any) -> GroupCommit:
    gc = GroupCommit(recorder.post, max_batch=kw.get("max_batch", 100), max_wait_ms=kw.get("max_wait_ms", 5),
                     queue_max=kw.get("queue_max", 1000))
    await gc.start()
    return gc


async def test_concurrent_requests_join_the_batch_being_formed() -> None:
    handlers, uow = ledger()
    rec = Recorder(handlers)
    rec.gate.clear()  # the first batch stays "in its transaction" while the others queue
    gc = await started(rec)
    try:
        first = asyncio.create_task(gc.submit(transfer("manual:0")))
        await asyncio.sleep(0.02)
        rest = [asyncio.create_task(gc.submit(transfer(f"manual:{i}", i))) for i in range(1, 21)]
        await asyncio.sleep(0.02)
        rec.gate.set()
        outcomes = await asyncio.gather(first, *rest)
    finally:
        await gc.stop()
    assert [o.transfer_id for o in outcomes] == [f"manual:{i}" for i in range(21)]
    assert all(o.status == "posted" for o in outcomes)
    assert rec.batches[0] == ["manual:0"] and sorted(rec.batches[1]) == sorted(f"manual:{i}" for i in range(1, 21))
    assert uow.commits == 2  # 21 requests, two transactions


async def test_a_request_that_breaks_its_batch_fails_alone() -> None:
    handlers, _ = ledger()
    rec = Recorder(handlers, fail_on="manual:bad")
    rec.gate.clear()
    gc = await started(rec)
    try:
        tasks = [asyncio.create_task(gc.submit(transfer(t))) for t in ("manual:a", "manual:bad", "manual:c")]
        await asyncio.sleep(0.02)
        rec.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await gc.stop()
    assert [getattr(r, "status", type(r).__name__) for r in results] == ["posted", "ValueError", "posted"]


async def test_an_outage_fails_the_batch_for_its_clients_to_retry() -> None:
    handlers, _ = ledger()
    gc = await started(Recorder(handlers, outage=True))
    try:
        results = await asyncio.gather(*(gc.submit(transfer(f"manual:{i}")) for i in range(3)), return_exceptions=True)
    finally:
        await gc.stop()
    assert all(isinstance(r, OSError) for r in results)


async def test_the_queue_is_bounded() -> None:
    handlers, _ = ledger()
    rec = Recorder(handlers)
    rec.gate.clear()
    gc = await started(rec, queue_max=2, max_wait_ms=0)
    try:
        tasks = [asyncio.create_task(gc.submit(transfer("manual:x")))]
        await asyncio.sleep(0.01)  # taken: in flight
        tasks += [asyncio.create_task(gc.submit(transfer(f"manual:q{i}"))) for i in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            await gc.submit(transfer("manual:one-too-many"))
        rec.gate.set()
        assert all(o.status == "posted" for o in await asyncio.gather(*tasks))
    finally:
        await gc.stop()
