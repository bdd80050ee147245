"""Settlement through the handler on real PostgreSQL, in statements of ``SETTLE_STATEMENT_ROWS``.

A mixed month (both hold models; three providers under three schemes: no safeguards, a cap that
bites, a minimum sample that is not met; FFT and patient-choice answers, amendments, an answer
outside the window, episodes never answered; then late episodes after the month closed) is settled
by ``PaymentsHandlers.run_settlement``. Each unit's report must be what the pure core decides from
the stored episodes and answers (``domain.settle``; each episode decided on all the unit's answers
as ``domain.decide`` would), every episode row must keep its amounts and decision, and every
outbox row must be the contract's event for the transfer the rules call for
(tests/unit/payments_reference.py), byte for byte, tracked for reconciliation. With 7 rows per
statement every unit is read, tracked, enqueued and updated in several statements inside its one
transaction, and must write exactly the same.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import asdict
from datetime import date, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from pydantic import TypeAdapter

from services.payments import domain, store
from services.payments.handlers import AcceptPayment, PaymentsHandlers, RunSettlement
from services.payments.queries import answer_of, episode_of
from services.payments.schemes import Scheme, SchemeBook, Scope
from services.payments.settlement import summary
from services.payments.store import PgPaymentsStore
from shared import db
from shared.contracts import Envelope, FeedbackReceived, PaymentRequested, TransferRequested
from shared.reference import load_reference
from shared.uow import PgUnitOfWork
from tests.unit.payments_reference import settlement_transfers

pytestmark = pytest.mark.integration

REF = load_reference(None)
ACTIVITY = date.today() - timedelta(days=2)
PERIOD = domain.period_of(ACTIVITY)
SETTLE_ON = ACTIVITY + timedelta(days=120)  # every decision window of PERIOD has closed by then
START = date(2020, 1, 1)
BOOK = SchemeBook([
    Scheme(scheme_id="open", version=1, title="No safeguards", effective_from=START, min_responses_per_period=0,
           cap_bps=1_000, scope=Scope(providers=("RJ1",))),
    Scheme(scheme_id="capped", version=2, title="A cap that bites", effective_from=START, min_responses_per_period=0,
           cap_bps=20, scope=Scope(providers=("RRV",))),
    Scheme(scheme_id="sampled", version=1, title="Minimum sample not met", effective_from=START,
           min_responses_per_period=1_000, scope=Scope(providers=("RTH",))),
])
PAIRS = [("RJ1", "QWE"), ("RRV", "QMJ"), ("RTH", "QU9")]
_ENVELOPE = Envelope[TransferRequested]


def month(rng: random.Random, run: str, n: int) -> tuple[list[AcceptPayment], list[FeedbackReceived]]:
    commands, answers = [], []
    for i in range(n):
        ods, icb = PAIRS[i % len(PAIRS)]
        req = PaymentRequested(payment_id=f"pay-{run}-{i}", episode_id=f"ep-{run}-{i}", commissioner_code=icb,
                               provider_code=ods, service_type="maternity", activity_date=ACTIVITY,
                               amount_pence=rng.randint(1, 3_000_000))
        commands.append(AcceptPayment(req, correlation_id=f"c-{run}-{i}"))
        for k in range(rng.choice((0, 0, 1, 1, 2))):  # unanswered, answered, amended
            hours = rng.choice((1, 5, 24)) if rng.random() < 0.9 else 24 * 4  # some before the activity date
            body: dict[str, Any] = {
                "submission_id": f"s-{run}-{i}-{k}", "episode_id": req.episode_id, "provider_code": ods,
                "patient_pseudonym": "a" * 64, "authored_at": datetime.now(timezone.utc) - timedelta(hours=hours)}
            if rng.random() < 0.8:
                body |= {"instrument": "fft", "fft_answer": rng.randint(1, 6)}
            else:
                body |= {"instrument": "patient_power", "patient_choice": rng.choice(("pay_in_full", "hold_back", "not_sure"))}
            answers.append(FeedbackReceived.model_validate(body))
    return commands, answers


def handlers_for(pool: asyncpg.Pool, hold_model: domain.HoldModel) -> PaymentsHandlers:
    settle_day = datetime(SETTLE_ON.year, SETTLE_ON.month, SETTLE_ON.day, 9, tzinfo=timezone.utc)
    return PaymentsHandlers(PgUnitOfWork(pool, PgPaymentsStore), book=BOOK, ref=REF, hold_model=hold_model,
                            activity_date_max_age_days=730, clock=lambda: settle_day)


async def load(pool: asyncpg.Pool, commands: list[AcceptPayment], answers: list[FeedbackReceived]) -> None:
    half = len(commands) // 2
    await handlers_for(pool, "two_phase").accept_payments(commands[:half])
    await handlers_for(pool, "held_account").record_episode_events(commands[half:], answers)


async def expected(conn: asyncpg.Connection) -> list[tuple[dict, list, list[TransferRequested]]]:
    """Per unit, in run order: (report, episode rows' decisions, transfers the rules call for), from
    the pure core and the reference, before the run."""
    units = await conn.fetch("SELECT DISTINCT provider_code, scheme_id, scheme_version FROM episodes"
                             " WHERE period = $1 AND status = 'held' ORDER BY 1, 2, 3", PERIOD)
    out = []
    for u in units:
        scheme = BOOK.get(u["scheme_id"], u["scheme_version"])
        assert scheme is not None
        episodes = [episode_of(r) for r in await conn.fetch(
            "SELECT * FROM episodes WHERE provider_code = $1 AND period = $2 AND scheme_id = $3 AND status = 'held'"
            " ORDER BY episode_id", u["provider_code"], PERIOD, scheme.scheme_id)]
        answers = [answer_of(a) for a in await conn.fetch(
            "SELECT * FROM answers WHERE episode_id = ANY($1::text[])", [e.episode_id for e in episodes])]
        earlier = await conn.fetchval("SELECT count(*) FROM settlements WHERE provider_code = $1 AND scheme_id = $2",
                                      u["provider_code"], scheme.scheme_id)
        settlement_id, divert = domain.unit_settlement(u["provider_code"], PERIOD, scheme, earlier)
        report = domain.settle(episodes, answers, scheme, provider_code=u["provider_code"], period=PERIOD, divert=divert)
        decisions, transfers = [], []
        for line in report.lines:
            assert line.decision == domain.decide(line.episode, answers, scheme)  # all the unit's answers
            ts = settlement_transfers(line.episode, released_pence=line.released_pence, diverted_pence=line.diverted_pence)
            decisions.append((line.episode.episode_id, settlement_id, line.released_pence, line.diverted_pence,
                              {**asdict(line.decision), "steps": list(line.steps), "transfer_ids": [t.transfer_id for t in ts]}))
            transfers += ts
        out.append((summary(settlement_id, report), decisions, transfers))
    return out


async def check_run(conn: asyncpg.Connection, pool: asyncpg.Pool, correlation_id: str) -> list[dict]:
    await conn.execute("DELETE FROM outbox")
    want = await expected(conn)
    reports = await handlers_for(pool, "two_phase").run_settlement(
        RunSettlement(period=PERIOD, run_by="test", correlation_id=correlation_id))
    assert reports == [s for s, _, _ in want]
    for _, decisions, _ in want:
        for episode_id, settlement_id, released, diverted, decision in decisions:
            r = await conn.fetchrow("SELECT * FROM episodes WHERE episode_id = $1", episode_id)
            assert (r["status"], r["settlement_id"], r["released_pence"], r["diverted_pence"]) == (
                "settled", settlement_id, released, diverted)
            assert json.loads(r["decision"]) == json.loads(json.dumps(decision, default=str))
    written = await conn.fetch("SELECT topic, key, payload, headers FROM outbox ORDER BY id")
    transfers = [t for _, _, ts in want for t in ts]
    assert len(written) == len(transfers) > 0
    for w, t in zip(written, transfers):
        env = json.loads(w["payload"])
        contract = _ENVELOPE(event_id=uuid.UUID(env["event_id"]), type="ledger.transfer-requested.v1",
                             occurred_at=TypeAdapter(datetime).validate_python(env["occurred_at"]),
                             correlation_id=correlation_id, causation_id=None, producer="payments", data=t)
        assert (w["topic"], w["key"], w["payload"]) == ("ledger.transfer-requests.v1", t.key.encode(),
                                                        contract.model_dump_json().encode())
        assert json.loads(w["headers"]) == {"event_type": "ledger.transfer-requested.v1", "event_id": env["event_id"],
                                            "correlation_id": correlation_id}
    tracked = {tuple(r) for r in await conn.fetch(
        "SELECT transfer_id, episode_id, kind FROM ledger_transfers WHERE kind IN ('settlement', 'release', 'diversion')")}
    assert {(t.transfer_id, t.cause.episode_id, t.cause.kind) for t in transfers} <= tracked
    return reports


@pytest.mark.parametrize("statement_rows", [store.SETTLE_STATEMENT_ROWS, 7])
async def test_settlement_writes_what_the_rules_decide_in_bounded_statements(database: str, statement_rows: int,
                                                                            monkeypatch) -> None:
    monkeypatch.setattr(store, "SETTLE_STATEMENT_ROWS", statement_rows)
    copied: list[int] = []
    real_enqueue = store.enqueue

    async def counting(conn: asyncpg.Connection, rows: Any) -> None:
        rows = list(rows)
        copied.append(len(rows))
        await real_enqueue(conn, rows)

    monkeypatch.setattr(store, "enqueue", counting)
    conn = await asyncpg.connect(database)
    pool = await db.create_pool(database, min_size=1, max_size=2)
    try:
        await db.migrate(conn, "shared", "services.payments")
        rng = random.Random(20261122)
        await load(pool, *month(rng, "a", 150))
        copied.clear()
        reports = await check_run(conn, pool, "settle-1")
        assert {r["scheme"] for r in reports} == {"open@1", "capped@2", "sampled@1"}
        assert any(r["cap_applied"] for r in reports) and any(r["min_sample_applied"] for r in reports)
        assert any(r["diverted_pence"] and not r["cap_applied"] for r in reports)
        assert max(copied) <= statement_rows and (statement_rows > 100 or len(copied) > len(reports))
        # Late episodes, after the month closed: a supplementary settlement releases them in full.
        await load(pool, *month(rng, "b", 9))
        late = await check_run(conn, pool, "settle-2")
        assert late and all(r["settlement_id"].endswith(":late-1") and r["diverted_pence"] == 0 for r in late)
        assert await handlers_for(pool, "two_phase").run_settlement(
            RunSettlement(period=PERIOD, run_by="test", correlation_id="settle-3")) == []
    finally:
        await pool.close()
        await conn.close()
