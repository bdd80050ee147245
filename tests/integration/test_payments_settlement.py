"""Settlement writes what it wrote when it built contract models, against real PostgreSQL.

A mixed month (both hold models; three providers under three schemes: no safeguards, a cap that
bites, a minimum sample that is not met; FFT and patient-choice answers, amendments, an answer
outside the window, episodes never answered; then late episodes after the month closed) is
settled by ``store.run_settlement``. Every report, episode row and outbox row must be what the
contract path gives: each episode decided against all the unit's answers (``domain.decide`` as
settlement called it before), its transfers built as models (``domain.settlement_transfers``)
and serialised through ``outbox_rows.contract_row``: payload bytes identical, event id and time
excepted (taken from the written row).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from datetime import date, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from services.payments import domain, outbox_rows, store
from services.payments.schemes import Scheme, SchemeBook, Scope
from shared import db
from shared.contracts import FeedbackReceived, PaymentRequested
from shared.reference import load_reference

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


def month(rng: random.Random, run: str, n: int) -> tuple[list[store.PaymentItem], list[FeedbackReceived]]:
    items, answers = [], []
    for i in range(n):
        ods, icb = PAIRS[i % len(PAIRS)]
        req = PaymentRequested(payment_id=f"pay-{run}-{i}", episode_id=f"ep-{run}-{i}", commissioner_code=icb,
                               provider_code=ods, service_type="maternity", activity_date=ACTIVITY,
                               amount_pence=rng.randint(1, 3_000_000))
        items.append(store.PaymentItem(req, correlation_id=f"c-{run}-{i}"))
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
    return items, answers


async def load(conn: asyncpg.Connection, items: list[store.PaymentItem], answers: list[FeedbackReceived]) -> None:
    half = len(items) // 2
    async with conn.transaction():
        await store.accept_payments(conn, items[:half], book=BOOK, ref=REF, hold_model="two_phase")
        await store.accept_payments(conn, items[half:], book=BOOK, ref=REF, hold_model="held_account")
        await store.record_answers(conn, answers)


async def expected_by_contract(conn: asyncpg.Connection, correlation_id: str) -> list[tuple[dict, list, list]]:
    """Per unit, in run order: (report, episode rows' decisions, outbox rows as (row, event id))
    as the contract path gives them, before the run."""
    units = await conn.fetch("SELECT DISTINCT provider_code, scheme_id, scheme_version FROM episodes"
                             " WHERE period = $1 AND status = 'held' ORDER BY 1, 2, 3", PERIOD)
    out = []
    for u in units:
        scheme = BOOK.get(u["scheme_id"], u["scheme_version"])
        assert scheme is not None
        rows = await conn.fetch("SELECT * FROM episodes WHERE provider_code = $1 AND period = $2 AND scheme_id = $3"
                                " AND status = 'held' ORDER BY episode_id", u["provider_code"], PERIOD, scheme.scheme_id)
        episodes = [store._episode(r) for r in rows]
        answers = [store._answer(a) for a in await conn.fetch(
            "SELECT * FROM answers WHERE episode_id = ANY($1::text[])", [e.episode_id for e in episodes])]
        base_id = f"{u['provider_code']}:{PERIOD}:{scheme.key}"
        earlier = await conn.fetchval("SELECT count(*) FROM settlements WHERE settlement_id LIKE $1", base_id + "%")
        report = domain.settle(episodes, answers, scheme, provider_code=u["provider_code"], period=PERIOD,
                               divert=not earlier)
        settlement_id = base_id if not earlier else f"{base_id}:late-{earlier}"
        decisions, transfers = [], []
        for line in report.lines:
            assert line.decision == domain.decide(line.episode, answers, scheme)  # all the unit's answers
            ts = domain.settlement_transfers(line.episode, released_pence=line.released_pence,
                                             diverted_pence=line.diverted_pence, period=PERIOD)
            decisions.append((line.episode.episode_id, settlement_id, line.released_pence, line.diverted_pence,
                              {**asdict(line.decision), "steps": list(line.steps),
                               "transfer_ids": [t.transfer_id for t in ts]}))
            transfers += ts
        out.append((store.settlement_summary(settlement_id, report), decisions, transfers))
    return out


async def check_run(conn: asyncpg.Connection, pool: asyncpg.Pool, correlation_id: str) -> list[dict]:
    await conn.execute("DELETE FROM outbox")
    want = await expected_by_contract(conn, correlation_id)
    reports = await store.run_settlement(pool, BOOK, period=PERIOD, provider_code=None, run_by="test", today=SETTLE_ON,
                                         correlation_id=correlation_id)
    assert reports == [summary for summary, _, _ in want]
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
        ref = outbox_rows.contract_row(t, correlation_id=correlation_id, causation_id=None, event_id=env["event_id"],
                                       occurred_at=env["occurred_at"])
        assert (w["topic"], w["key"], w["payload"]) == ref[:3]  # payload byte for byte
        assert json.loads(w["headers"]) == json.loads(ref[3])  # jsonb: same object
    tracked = {tuple(r) for r in await conn.fetch(
        "SELECT transfer_id, episode_id, kind FROM ledger_transfers WHERE kind IN ('settlement', 'release', 'diversion')")}
    assert {(t.transfer_id, t.cause.episode_id, t.cause.kind) for t in transfers} <= tracked
    return reports


@pytest.mark.parametrize("statement_rows", [store.SETTLE_STATEMENT_ROWS, 7])
async def test_settlement_writes_what_the_contract_path_writes(database: str, statement_rows: int, monkeypatch) -> None:
    # 7 rows per statement: every unit (about 50 episodes) is read, tracked, enqueued and updated
    # in several statements inside its one transaction, and must write exactly the same.
    monkeypatch.setattr(store, "SETTLE_STATEMENT_ROWS", statement_rows)
    conn = await asyncpg.connect(database)
    pool = await asyncpg.create_pool(database, min_size=1, max_size=2)
    try:
        await db.migrate(conn, "shared", "services.payments")
        rng = random.Random(20261122)
        await load(conn, *month(rng, "a", 150))
        reports = await check_run(conn, pool, "settle-1")
        assert {r["scheme"] for r in reports} == {"open@1", "capped@2", "sampled@1"}
        assert any(r["cap_applied"] for r in reports) and any(r["min_sample_applied"] for r in reports)
        assert any(r["diverted_pence"] and not r["cap_applied"] for r in reports)
        # Late episodes, after the month closed: a supplementary settlement releases them in full.
        await load(conn, *month(rng, "b", 9))
        late = await check_run(conn, pool, "settle-2")
        assert late and all(r["settlement_id"].endswith(":late-1") and r["diverted_pence"] == 0 for r in late)
        assert await store.run_settlement(pool, BOOK, period=PERIOD, provider_code=None, run_by="test", today=SETTLE_ON,
                                          correlation_id="settle-3") == []
    finally:
        await pool.close()
        await conn.close()
