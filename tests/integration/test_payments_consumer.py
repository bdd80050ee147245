"""The payments Kafka adapter (services/payments/consumer.py) on real records, real PostgreSQL and
the real broker: thin subscribers handing each batch to the command handlers.

1. A batch mixing payments, answers (one before its payment), an invalid record and a conflicting
   record: the good ones are applied in one unit of work, the bad ones are dead-lettered with
   their reasons; delivering the batch again changes nothing and counts nothing again.
2. Failures: an outage leaves nothing written and the batch comes again; a record that breaks the
   batch for another reason is found one by one (a batch of one through the same handler),
   retried, then dead-lettered, the others applied.
3. The ledger's answers: applied in order (posted is final), the invalid dead-lettered.
4. Through Kafka: the service consumes a backlog in batches and a replay changes nothing.
The handlers' rules are tested in tests/unit/test_payments_handlers.py; the PostgreSQL adapter in
test_payments_store.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from services.payments import consumer, intake, queries
from services.payments.app import PaymentsRuntime, create_app
from services.payments.settings import PaymentsSettings
from services.payments.store import PgPaymentsStore
from shared import db
from shared.contracts import FeedbackReceived, PaymentRequested, TransferPosted, envelope
from shared.kafka import ensure_topics, make_producer
from shared.topics import (
    FEEDBACK_RECEIVED,
    FEEDBACK_RECEIVED_DLQ,
    LEDGER_POSTED,
    LEDGER_POSTED_DLQ,
    LEDGER_TRANSFER_REQUESTS,
    PAYMENTS_REQUESTED,
    PAYMENTS_REQUESTED_DLQ,
)
from tests.conftest import running
from tests.helpers import eventually, publish, read_topic

pytestmark = pytest.mark.integration

SCHEMES = Path(__file__).parent.parent / "e2e" / "schemes"  # no minimum sample, no effective cap
ACTIVITY = date.today() - timedelta(days=2)


def request(pid: str, eid: str, **overrides: Any) -> PaymentRequested:
    body = {"payment_id": pid, "episode_id": eid, "commissioner_code": "QWE", "provider_code": "RJ1",
            "service_type": "maternity", "activity_date": ACTIVITY, "amount_pence": 123_457}
    return PaymentRequested.model_validate({**body, **overrides})


def answer(sid: str, eid: str, instrument: str = "fft", **overrides: Any) -> FeedbackReceived:
    body: dict[str, Any] = {"submission_id": sid, "episode_id": eid, "provider_code": "RJ1", "patient_pseudonym": "a" * 64,
                            "instrument": instrument, "authored_at": datetime.now(timezone.utc) - timedelta(hours=1)}
    if instrument == "fft":
        body["fft_answer"] = 5
    if instrument == "patient_power":
        body["patient_choice"] = "hold_back"
    return FeedbackReceived.model_validate({**body, **overrides})


async def table_state(conn: asyncpg.Connection) -> dict[str, list]:
    """Everything the handlers write, without what differs by construction (times, event ids)."""
    episodes = [dict(r) for r in await conn.fetch("SELECT * FROM episodes ORDER BY episode_id")]
    for e in episodes:
        e.pop("requested_at")
        e["request"] = json.loads(e["request"])
    transfers = [tuple(r) for r in await conn.fetch(
        "SELECT transfer_id, episode_id, kind, status, entry_seq, reason FROM ledger_transfers ORDER BY transfer_id")]
    answers = [tuple(r) for r in await conn.fetch(
        "SELECT submission_id, episode_id, provider_code, instrument, fft_answer, patient_choice, authored_at,"
        " amends_submission_id FROM answers ORDER BY submission_id")]
    outbox = []
    for r in await conn.fetch("SELECT topic, key, payload, headers FROM outbox ORDER BY id"):
        payload = json.loads(r["payload"])
        headers = json.loads(r["headers"])
        outbox.append((r["topic"], r["key"], payload["data"], payload["correlation_id"], payload["causation_id"],
                       headers["correlation_id"], headers.get("causation_id")))
    return {"episodes": episodes, "ledger_transfers": transfers, "answers": answers, "outbox": outbox}


# ---------------------------------------------------------------------------------------------
# The consumer's batch handler on real records from the broker
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def settings(database, kafka_bootstrap) -> PaymentsSettings:
    return PaymentsSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                            consumer_group=f"payments-{uuid.uuid4().hex[:8]}", schemes_dir=SCHEMES,
                            batch_timeout_ms=5, consumer_max_attempts=2)


@pytest.fixture
async def runtime(settings) -> AsyncIterator[PaymentsRuntime]:
    """The service's runtime with its database and producer, but no subscribers running: the
    tests hand batches to the handler themselves, so they know exactly what is in each batch."""
    rt = PaymentsRuntime(settings)
    rt.pool = await rt.connect_db()
    async with rt.pool.acquire() as conn:
        await db.migrate(conn, *rt.migrations)
    await ensure_topics(settings)
    rt.producer = make_producer(settings, client_id="test-dlq")
    await rt.producer.start()
    yield rt
    await rt.producer.stop()
    await rt.pool.close()


def event(data: Any, type_: str, cid: str) -> tuple[bytes, bytes, dict[str, str]]:
    env = envelope(data, type_, producer="test", correlation_id=cid)
    return data.episode_id.encode(), env.model_dump_json().encode(), {"correlation_id": cid}


async def records_of(bootstrap: str, run: str, expect: int) -> list[Any]:
    """This run's records from both topics as the consumer gets them: ConsumerRecords, grouped by
    partition and in offset order within each."""
    out = []
    for topic in (PAYMENTS_REQUESTED.name, FEEDBACK_RECEIVED.name):
        out += [r for r in await read_topic(bootstrap, topic, expect=10_000, timeout_s=3) if run.encode() in r.value]
    out.sort(key=lambda r: (r.topic, r.partition, r.offset))
    assert len(out) == expect
    return out


def billed() -> float:
    return sum(REGISTRY.get_sample_value("payments_billed_pence_total", {"region_code": r}) or 0.0
               for r in ("Y56", "Y59", "other"))


async def dead_letters(bootstrap: str, topic: str, run: str) -> list[dict[str, str]]:
    records = await read_topic(bootstrap, topic, expect=10_000, timeout_s=3)
    return [{k: v.decode() for k, v in r.headers} for r in records if run.encode() in r.value]


async def test_mixed_batch_applies_the_good_and_dead_letters_the_bad(runtime, settings, kafka_bootstrap) -> None:
    run = uuid.uuid4().hex[:6]
    good = [request(f"pay-{run}-{i}", f"ep-{run}-{i}", provider_code="RJ1" if i % 2 else "RTH") for i in range(6)]
    conflicting = request(f"pay-{run}-0", f"ep-{run}-0", amount_pence=1)  # same ids, other amount
    unknown = request(f"pay-{run}-9", f"ep-{run}-9", commissioner_code="QQQ")  # not an ICB: rejected
    early = answer(f"s-{run}-0", f"ep-{run}-0")  # the answer of episode 0, before its payment
    late = answer(f"s-{run}-1", f"ep-{run}-1", "patient_power")
    proms = answer(f"s-{run}-2", f"ep-{run}-2", "eq5d5l")  # kept by feedback, not by payments
    await publish(kafka_bootstrap, FEEDBACK_RECEIVED.name, [event(early, "feedback.received.v1", f"c-{run}-a0")])
    await publish(kafka_bootstrap, PAYMENTS_REQUESTED.name,
                  [event(p, "payments.requested.v1", f"c-{run}-{i}") for i, p in enumerate(good)]
                  + [event(conflicting, "payments.requested.v1", f"c-{run}-conflict"),
                     event(unknown, "payments.requested.v1", f"c-{run}-unknown"),
                     (f"ep-{run}-x".encode(), json.dumps({"type": "payments.requested.v1", "run": run}).encode(),
                      {"correlation_id": f"c-{run}-invalid"}),
                     event(good[3], "payments.requested.v1", f"c-{run}-3")])  # a plain duplicate
    await publish(kafka_bootstrap, FEEDBACK_RECEIVED.name, [event(late, "feedback.received.v1", f"c-{run}-a1"),
                                                            event(proms, "feedback.received.v1", f"c-{run}-a2"),
                                                            event(early, "feedback.received.v1", f"c-{run}-a0")])
    records = await records_of(kafka_bootstrap, run, expect=14)
    # One batch, both topics; the answer of episode 0 comes before its payment in it.
    position: dict[tuple[str, str], int] = {}
    for i, r in enumerate(records):
        position.setdefault((r.topic, json.loads(r.value).get("data", {}).get("episode_id")), i)
    assert position[(FEEDBACK_RECEIVED.name, f"ep-{run}-0")] < position[(PAYMENTS_REQUESTED.name, f"ep-{run}-0")]
    episodes = consumer.EpisodeEvents(runtime)
    billed_before = billed()

    await episodes.handle_batch(records)

    async with runtime.pool.acquire() as conn:
        stored = {r["episode_id"]: r for r in await conn.fetch("SELECT * FROM episodes WHERE episode_id LIKE $1", f"ep-{run}-%")}
        assert set(stored) == {p.episode_id for p in good}
        assert all(r["amount_pence"] == 123_457 and r["status"] == "held" for r in stored.values())
        assert {r["submission_id"] for r in await conn.fetch("SELECT submission_id FROM answers")} == {early.submission_id, late.submission_id}
        transfers = await conn.fetch("SELECT transfer_id FROM ledger_transfers WHERE episode_id LIKE $1", f"ep-{run}-%")
        assert len(transfers) == 2 * len(good)
        state = await table_state(conn)
    assert billed() - billed_before == 6 * 123_457  # each new payment once; the duplicate not at all
    # The answer that came first decides its episode once the payment is there.
    view = await store_view(runtime, f"ep-{run}-0")
    assert [a["submission_id"] for a in view["answers"]] == [early.submission_id]
    assert view["decision"]["deciding_submission_id"] == early.submission_id
    dead = await dead_letters(kafka_bootstrap, PAYMENTS_REQUESTED_DLQ.name, run)
    by_cid = {d["correlation_id"]: d for d in dead}
    assert set(by_cid) == {f"c-{run}-conflict", f"c-{run}-unknown", f"c-{run}-invalid"}
    assert by_cid[f"c-{run}-conflict"]["dlq_kind"] == "rejected" and "amount_pence" in by_cid[f"c-{run}-conflict"]["dlq_reason"]
    assert by_cid[f"c-{run}-unknown"]["dlq_kind"] == "rejected" and "commissioner_code" in by_cid[f"c-{run}-unknown"]["dlq_reason"]
    assert by_cid[f"c-{run}-invalid"]["dlq_kind"] == "invalid" and "data" in by_cid[f"c-{run}-invalid"]["dlq_reason"]
    assert all(d["dlq_source_topic"] == PAYMENTS_REQUESTED.name and d["dlq_source_offset"] for d in dead)
    assert await dead_letters(kafka_bootstrap, FEEDBACK_RECEIVED_DLQ.name, run) == []

    # Delivered again (the offsets were not committed): nothing changes, nothing is counted again.
    await episodes.handle_batch(records)
    async with runtime.pool.acquire() as conn:
        assert await table_state(conn) == state
    assert billed() - billed_before == 6 * 123_457
    # Dead letters are at least once: a redelivered batch sends its bad records again.
    assert len(await dead_letters(kafka_bootstrap, PAYMENTS_REQUESTED_DLQ.name, run)) == 6


async def store_view(rt: PaymentsRuntime, episode_id: str) -> dict[str, Any]:
    async with rt.pool.acquire() as conn:
        view = await queries.episode_view(conn, episode_id, rt.book)
    assert view is not None
    return view


async def test_outage_writes_nothing_and_the_batch_comes_again(runtime, kafka_bootstrap, monkeypatch) -> None:
    run = uuid.uuid4().hex[:6]
    await publish(kafka_bootstrap, PAYMENTS_REQUESTED.name,
                  [event(request(f"pay-{run}-{i}", f"ep-{run}-{i}"), "payments.requested.v1", f"c-{run}-{i}") for i in range(5)])
    await publish(kafka_bootstrap, FEEDBACK_RECEIVED.name, [event(answer(f"s-{run}", f"ep-{run}-0"), "feedback.received.v1", "c")])
    records = await records_of(kafka_bootstrap, run, expect=6)
    real = PgPaymentsStore.insert_answers

    async def outage(self, answers):  # type: ignore[no-untyped-def]
        await real(self, answers)  # written, then the database goes away before the commit
        raise asyncpg.PostgresConnectionError("connection lost")

    monkeypatch.setattr(PgPaymentsStore, "insert_answers", outage)
    monkeypatch.setattr("shared.service.backoff", _no_wait)
    episodes = consumer.EpisodeEvents(runtime)
    with pytest.raises(asyncpg.PostgresConnectionError):
        await episodes.handle_batch(records)
    async with runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM episodes") == 0
        assert await conn.fetchval("SELECT count(*) FROM answers") == 0
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
    monkeypatch.setattr(PgPaymentsStore, "insert_answers", real)
    await episodes.handle_batch(records)  # delivered again
    async with runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM episodes") == 5
        assert await conn.fetchval("SELECT count(*) FROM answers") == 1
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 10
    assert await dead_letters(kafka_bootstrap, PAYMENTS_REQUESTED_DLQ.name, run) == []


async def _no_wait(attempt: int, **_: Any) -> None:
    return None


async def test_a_record_that_breaks_the_batch_is_found_retried_and_dead_lettered(runtime, kafka_bootstrap, monkeypatch) -> None:
    run = uuid.uuid4().hex[:6]
    await publish(kafka_bootstrap, PAYMENTS_REQUESTED.name,
                  [event(request(f"pay-{run}-{i}", f"ep-{run}-{i}"), "payments.requested.v1", f"c-{run}-{i}") for i in range(5)])
    records = await records_of(kafka_bootstrap, run, expect=5)
    poison = f"pay-{run}-2"
    real = intake.decide_payments

    def breaks(requests, stored, **kw):  # type: ignore[no-untyped-def]
        if any(r.payment_id == poison for r in requests):  # in its batch, or on its own
            raise RuntimeError("a bug this record triggers")
        return real(requests, stored, **kw)

    monkeypatch.setattr(intake, "decide_payments", breaks)
    monkeypatch.setattr("shared.service.backoff", _no_wait)
    episodes = consumer.EpisodeEvents(runtime)
    deliveries = 0
    while True:  # as the broker does: the batch comes again until the handler returns
        deliveries += 1
        try:
            await episodes.handle_batch(records)
            break
        except RuntimeError:
            assert deliveries < 10
    assert deliveries == runtime.settings.consumer_max_attempts  # PAYMENTS_CONSUMER_MAX_ATTEMPTS = 2 here
    async with runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM episodes") == 4
        assert await conn.fetchval("SELECT count(*) FROM episodes WHERE payment_id = $1", poison) == 0
    dead = await dead_letters(kafka_bootstrap, PAYMENTS_REQUESTED_DLQ.name, run)
    assert [(d["dlq_kind"], d["correlation_id"]) for d in dead] == [("failed", f"c-{run}-2")]
    assert "a bug this record triggers" in dead[0]["dlq_reason"]


async def test_ledger_answers_batch_applies_in_order_and_dead_letters_the_invalid(runtime, kafka_bootstrap) -> None:
    run = uuid.uuid4().hex[:6]
    async with runtime.pool.acquire() as conn:
        await conn.executemany("INSERT INTO ledger_transfers(transfer_id, episode_id, kind, expected_status) VALUES ($1, $2, 'payment_hold', 'pending')",
                               [(f"hold:{run}-{i}", f"ep-{run}-{i}") for i in range(3)])

    def posted(tid: str, status: str, seq: int | None) -> tuple[bytes, bytes, dict[str, str]]:
        data = TransferPosted(transfer_id=tid, status=status, entry_seq=seq)  # type: ignore[arg-type]
        env = envelope(data, "ledger.posted.v1", producer="ledger", correlation_id=f"c-{run}")
        return tid.encode(), env.model_dump_json().encode(), {"correlation_id": f"c-{run}"}

    await publish(kafka_bootstrap, LEDGER_POSTED.name, [
        posted(f"hold:{run}-0", "pending", 1), posted(f"hold:{run}-0", "posted", 7),
        posted(f"hold:{run}-1", "posted", 2), posted(f"hold:{run}-1", "rejected", None),  # posted is final
        posted(f"hold:{run}-2", "pending", 3),
        (b"k", json.dumps({"run": run}).encode(), {"correlation_id": f"c-{run}-bad"}),
    ])
    records = [r for r in await read_topic(kafka_bootstrap, LEDGER_POSTED.name, expect=10_000, timeout_s=3) if run.encode() in r.value]
    assert len(records) == 6
    answers = consumer.LedgerAnswers(runtime)
    for _ in range(2):  # and delivered again: the same end state
        await answers.handle_batch(records)
        async with runtime.pool.acquire() as conn:
            rows = {r["transfer_id"]: (r["status"], r["entry_seq"]) for r in await conn.fetch("SELECT * FROM ledger_transfers")}
        assert rows == {f"hold:{run}-0": ("posted", 7), f"hold:{run}-1": ("posted", 2), f"hold:{run}-2": ("pending", 3)}
    dead = await dead_letters(kafka_bootstrap, LEDGER_POSTED_DLQ.name, run)
    assert [(d["dlq_kind"], d["correlation_id"]) for d in dead] == [("invalid", f"c-{run}-bad")] * 2


# ---------------------------------------------------------------------------------------------
# Through Kafka: the service's subscribers
# ---------------------------------------------------------------------------------------------
async def test_the_service_consumes_a_backlog_in_batches_and_a_replay_changes_nothing(settings, kafka_bootstrap) -> None:
    run = uuid.uuid4().hex[:6]
    n = 300
    payments = [event(request(f"pay-{run}-{i}", f"ep-{run}-{i}"), "payments.requested.v1", f"c-{run}-{i}") for i in range(n)]
    answers = [event(answer(f"s-{run}-{i}", f"ep-{run}-{i}"), "feedback.received.v1", f"c-{run}-a{i}") for i in range(0, n, 3)]
    await publish(kafka_bootstrap, FEEDBACK_RECEIVED.name, answers[: len(answers) // 2])  # these before their payments
    await publish(kafka_bootstrap, PAYMENTS_REQUESTED.name, payments + payments[:10])  # and some twice
    await publish(kafka_bootstrap, FEEDBACK_RECEIVED.name, answers[len(answers) // 2:])
    sizes_before = _batch_sizes()

    async def consumed(conn: asyncpg.Connection) -> bool:
        # (the topics also hold the earlier tests' records: this service consumes them too)
        return (await conn.fetchval("SELECT count(*) FROM episodes WHERE episode_id LIKE $1", f"ep-{run}-%") == n
                and await conn.fetchval("SELECT count(*) FROM answers WHERE episode_id LIKE $1", f"ep-{run}-%") == len(answers))

    async with running(create_app(settings)):
        conn = await asyncpg.connect(settings.database_url)
        try:
            await eventually(lambda: consumed(conn))
            await _drained(conn)
            state = await table_state(conn)  # the relay has published (and deleted) every outbox row
        finally:
            await conn.close()
    count, total = (a - b for a, b in zip(_batch_sizes(), sizes_before))
    assert total >= n + len(answers) and count < total / 2, (count, total)  # batches, not one by one
    # A replay of everything (a new consumer group reads the topics from the start): no change,
    # and no transfer is asked for again.
    replay = settings.model_copy(update={"consumer_group": f"{settings.consumer_group}-replay"})
    handled_before = _handled()
    async with running(create_app(replay)):
        conn = await asyncpg.connect(settings.database_url)
        try:
            await eventually(lambda: _replayed(handled_before, n + 10 + len(answers)))  # at least ours
            await _drained(conn)
            assert await table_state(conn) == state
        finally:
            await conn.close()
    requests = await read_topic(kafka_bootstrap, LEDGER_TRANSFER_REQUESTS.name, expect=10_000, timeout_s=5)
    mine = [json.loads(r.value)["data"]["transfer_id"] for r in requests if run in r.key.decode()]
    assert len(mine) == len(set(mine)) == 2 * n


def _batch_sizes() -> tuple[float, float]:
    labels = {"subscriber": "episodes"}
    return (REGISTRY.get_sample_value("payments_consumer_batch_size_count", labels) or 0.0,
            REGISTRY.get_sample_value("payments_consumer_batch_size_sum", labels) or 0.0)


def _handled() -> float:
    return sum(REGISTRY.get_sample_value("events_handled_total", {"topic": t}) or 0.0
               for t in (PAYMENTS_REQUESTED.name, FEEDBACK_RECEIVED.name))


async def _replayed(before: float, records: int) -> bool:
    return _handled() - before >= records


async def _drained(conn: asyncpg.Connection) -> None:
    await eventually(lambda: conn.fetchval("SELECT count(*) = 0 FROM outbox"))
