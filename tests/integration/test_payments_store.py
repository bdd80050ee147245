"""The PostgreSQL adapter (services/payments/store.py) keeps the port's contract, on real PostgreSQL.

1. The same handlers over ``PgPaymentsStore`` and over the in-memory fake the handler tests use
   (tests/unit/fakes_payments.py) give the same outcomes and keep the same rows: random batches
   full of duplicates, conflicts, unknown codes, out-of-trial and nothing-at-risk payments, both
   hold models, answers and the ledger's answers with discrepancies. So what the handler tests
   prove on the fake holds on PostgreSQL.
2. A writer that commits one of a batch's ids between the batch's read and its insert: the insert
   skips it, the unit of work rolls the whole pass back and runs it again on a fresh view.
3. Settlement and appeals write what the handlers decided: supplementary settlements count only
   the unit's own reports (version 1 and version 10 of a scheme are different units), appeals are
   locked and decided once, and the database refuses an appellant deciding their own appeal.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from services.payments import domain, judgement
from services.payments.handlers import AcceptPayment, DecideAppeal, OpenAppeal, PaymentsHandlers, RunSettlement
from services.payments.intake import Accepted
from services.payments.schemes import Scheme, SchemeBook, Scope
from services.payments.store import PgPaymentsStore
from shared import db
from shared.contracts import Envelope, FeedbackReceived, PaymentRequested, TransferPosted, TransferRequested
from shared.reference import load_reference
from shared.uow import PgUnitOfWork
from tests.unit.fakes_payments import FakePayments

pytestmark = pytest.mark.integration

REF = load_reference(None)
TODAY = datetime.now(timezone.utc).date()
ACTIVITY = TODAY - timedelta(days=100)  # its period's decision windows have closed
PERIOD = domain.period_of(ACTIVITY)
START = date(2020, 1, 1)
BOOK = SchemeBook([
    Scheme(scheme_id="open", version=1, title="No safeguards", effective_from=START, min_responses_per_period=0,
           cap_bps=1_000),
])


_ENVELOPE = Envelope[TransferRequested]


def clock() -> datetime:
    return datetime.now(timezone.utc)


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database, min_size=1, max_size=4)
    async with p.acquire() as conn:
        await db.migrate(conn, "shared", "services.payments")
    yield p
    await p.close()


def pg_handlers(pool: asyncpg.Pool, *, book: SchemeBook = BOOK, hold_model: domain.HoldModel = "two_phase") -> PaymentsHandlers:
    return PaymentsHandlers(PgUnitOfWork(pool, PgPaymentsStore), book=book, ref=REF, hold_model=hold_model,
                            activity_date_max_age_days=730, clock=clock)


def request(pid: str, eid: str, **overrides: Any) -> PaymentRequested:
    body = {"payment_id": pid, "episode_id": eid, "commissioner_code": "QWE", "provider_code": "RJ1",
            "service_type": "maternity", "activity_date": ACTIVITY, "amount_pence": 123_457}
    return PaymentRequested.model_validate({**body, **overrides})


def answer(sid: str, eid: str, instrument: str = "fft", **overrides: Any) -> FeedbackReceived:
    body: dict[str, Any] = {"submission_id": sid, "episode_id": eid, "provider_code": "RJ1", "patient_pseudonym": "a" * 64,
                            "instrument": instrument,
                            "authored_at": datetime(ACTIVITY.year, ACTIVITY.month, ACTIVITY.day, 12, tzinfo=timezone.utc)}
    if instrument == "fft":
        body["fft_answer"] = 5
    if instrument == "patient_power":
        body["patient_choice"] = "hold_back"
    return FeedbackReceived.model_validate({**body, **overrides})


def outcome(x: Any) -> tuple:
    return (type(x).__name__, str(x)) if isinstance(x, Exception) else ("accepted", x)


# ---------------------------------------------------------------------------------------------
# 1. The adapter keeps what the fake keeps
# ---------------------------------------------------------------------------------------------
def random_commands(rng: random.Random, run: str, n: int) -> list[AcceptPayment]:
    """Few ids, so repeats are common: same request again, same payment id with another episode
    or amount, same episode with another payment id; some unknown codes, some out of trial."""
    out = []
    for i in range(n):
        pid, eid = f"p{run}-{rng.randrange(8)}", f"e{run}-{rng.randrange(8)}"
        if rng.random() < 0.5:  # mostly consistent pairs, so duplicates happen, not only conflicts
            eid = f"e{run}-{pid.rsplit('-', 1)[1]}"
        overrides: dict[str, Any] = {}
        roll = rng.random()
        if roll < 0.1:
            overrides["provider_code"] = "ZZZ"  # unknown: InputError
        elif roll < 0.2:
            overrides["amount_pence"] = rng.choice([1, 9_999])  # small: maybe nothing at risk
        elif roll < 0.3:
            overrides["activity_date"] = date(2019, 6, 1)  # before any scheme: out of trial, and too old
        elif roll < 0.4:
            overrides["provider_code"] = "RTH"  # another region (commissioned by QU9)
            overrides["commissioner_code"] = "QU9"
        out.append(AcceptPayment(request(pid, eid, **overrides), f"c-{run}-{i}", None if i % 3 else f"ev-{run}-{i}"))
    return out


async def pg_state(pool: asyncpg.Pool) -> dict[str, Any]:
    async with pool.acquire() as conn:
        episodes = {r["episode_id"]: (r["payment_id"], r["region_code"], r["period"], r["amount_pence"], r["at_risk_pence"],
                                      r["scheme_id"], r["scheme_version"], r["request_fingerprint"], json.loads(r["request"]),
                                      r["correlation_id"], r["status"], r["hold_model"])
                    for r in await conn.fetch("SELECT * FROM episodes")}
        transfers = {r["transfer_id"]: (r["episode_id"], r["kind"], r["expected_status"], r["status"], r["entry_seq"],
                                        r["reason"], r["discrepancy"])
                     for r in await conn.fetch("SELECT * FROM ledger_transfers")}
        answers = {r["submission_id"] for r in await conn.fetch("SELECT submission_id FROM answers")}
        proms = await PgPaymentsStore(conn).prom_outcomes(PERIOD)
        rows = await conn.fetch("SELECT topic, key, payload, headers::text AS headers FROM outbox ORDER BY id")
        for r in rows:  # kept byte for byte as encoded: the contract's own serialisation of itself
            assert _ENVELOPE.model_validate_json(r["payload"]).model_dump_json().encode() == r["payload"]
        outbox = [(r["topic"], r["key"], _event(r["payload"]), json.loads(r["headers"])) for r in rows]
    return {"episodes": episodes, "transfers": transfers, "answers": answers, "outbox": _without_ids(outbox), "proms": proms}


def fake_state(w: FakePayments) -> dict[str, Any]:
    s = w.state
    episodes = {eid: (r.row.episode.payment_id, r.row.episode.region_code, r.row.episode.period, r.row.episode.amount_pence,
                      r.row.episode.at_risk_pence, r.row.episode.scheme_id, r.row.episode.scheme_version, r.row.fingerprint,
                      json.loads(r.row.request_json), r.row.correlation_id, r.status, r.row.episode.hold_model)
                for eid, r in s.episodes.items()}
    transfers = {tid: (t["episode_id"], t["kind"], t["expected_status"], t["status"], t["entry_seq"], t["reason"],
                       t["discrepancy"]) for tid, t in s.transfers.items()}
    outbox = [(topic, key, _event(payload), json.loads(headers)) for topic, key, payload, headers in s.outbox]
    return {"episodes": episodes, "transfers": transfers, "answers": set(s.answers), "outbox": _without_ids(outbox),
            "proms": judgement.tally_proms(s.prom_outcomes.values(), PERIOD)}


def _event(payload: bytes) -> dict[str, Any]:
    return json.loads(payload)


def _without_ids(rows: list[tuple[str, bytes, dict[str, Any], dict[str, str]]]) -> list[tuple]:
    """The rows without what differs by construction (event ids, times), checked to be there."""
    out = []
    for topic, key, env, headers in rows:
        assert headers.pop("event_id") == env.pop("event_id")
        assert env.pop("occurred_at")
        out.append((topic, key, json.dumps(env, sort_keys=True), headers))
    return out


@pytest.mark.parametrize("hold_model", ["two_phase", "held_account"])
async def test_the_postgresql_adapter_keeps_what_the_fake_keeps(pool: asyncpg.Pool, hold_model: domain.HoldModel) -> None:
    pg = pg_handlers(pool, hold_model=hold_model)
    fake = FakePayments(book=BOOK, ref=REF, hold_model=hold_model, today=TODAY)
    kinds: set[str] = set()
    prom_trusts: set[str] = set()
    for seed in range(8):
        rng = random.Random(seed)
        run = f"{seed}{hold_model[0]}"
        commands = random_commands(rng, run, rng.randrange(1, 60))
        cut = rng.randrange(len(commands) + 1)  # an earlier batch, then the rest as one
        answers = [answer(f"s{run}-{rng.randrange(12)}", f"e{run}-{rng.randrange(8)}",
                          rng.choice(["fft", "fft", "patient_power", "eq5d5l"])) for _ in range(rng.randrange(0, 20))]
        # PROM answers that completed a pair (kept for [signals]), some at a site of the trust, some not.
        answers += [answer(f"s{run}-p{rng.randrange(12)}", f"e{run}-{rng.randrange(8)}", rng.choice(["ohs", "oks", "eq5d5l"]),
                           health_gain=rng.randrange(-10, 11), provider_code=rng.choice(["RJ1", "RTH", "RJ122"]))
                    for _ in range(rng.randrange(0, 10))]
        rng.shuffle(answers)
        for handlers in (pg, fake.handlers):
            first = await handlers.accept_payments(commands[:cut])
        got_pg = await pg.record_episode_events(commands[cut:], answers)
        got_fake = await fake.handlers.record_episode_events(commands[cut:], answers)
        assert [outcome(x) for x in got_pg[0]] == [outcome(x) for x in got_fake[0]], f"seed {seed}"
        assert got_pg[1] == got_fake[1], f"seed {seed}"
        kinds |= {outcome(x)[0] if not isinstance(x, Accepted) else x.status for x in first + got_pg[0]}
        # The ledger answers some of what was asked, twice, a few times otherwise than expected.
        state = await pg_state(pool)
        ledger = [TransferPosted(transfer_id=t, status=rng.choice(["posted", "pending", "voided", "rejected"]),
                                 entry_seq=rng.randrange(1, 99), reason=rng.choice([None, "r"]))
                  for t in rng.sample(sorted(state["transfers"]), min(10, len(state["transfers"])))] * 2
        assert await pg.record_ledger_answers(ledger) == await fake.handlers.record_ledger_answers(ledger), f"seed {seed}"
        assert await pg_state(pool) == fake_state(fake), f"seed {seed}"
        prom_trusts |= {trust for trust, _ in fake_state(fake)["proms"]}
    assert kinds == {"created", "duplicate", "Conflict", "InputError"}
    assert prom_trusts == {"RJ1", "RTH"}  # a site's pairs counted under its trust
    # The same batch again (a redelivery): all duplicates or the same rejections; nothing written.
    before = await pg_state(pool)
    again = await pg.accept_payments(commands[cut:])
    assert not [x for x in again if isinstance(x, Accepted) and x.status == "created"]
    assert await pg_state(pool) == before


# ---------------------------------------------------------------------------------------------
# 2. A concurrent writer
# ---------------------------------------------------------------------------------------------
async def test_a_concurrent_insert_makes_the_unit_of_work_run_the_batch_again(pool: asyncpg.Pool, monkeypatch) -> None:
    handlers = pg_handlers(pool)
    rival_handlers = pg_handlers(pool)
    real = PgPaymentsStore.insert_episodes
    passes = []

    async def rival_first(self: PgPaymentsStore, rows: Any) -> int:
        passes.append(len(rows))
        if len(passes) == 1:  # another instance commits race-1 after this batch has read
            monkeypatch.setattr(PgPaymentsStore, "insert_episodes", real)
            await rival_handlers.accept_payments([AcceptPayment(request("race-1", "race-e1", amount_pence=5_000), "rival")])
            monkeypatch.setattr(PgPaymentsStore, "insert_episodes", rival_first)
        return await real(self, rows)

    monkeypatch.setattr(PgPaymentsStore, "insert_episodes", rival_first)
    got = await handlers.accept_payments([AcceptPayment(request(f"race-{i}", f"race-e{i}"), f"c{i}") for i in range(3)])
    assert [outcome(x)[0] for x in got] == ["accepted", "Conflict", "accepted"] and "amount_pence" in str(got[1])
    assert passes == [3, 2]  # the first pass rolled back whole; the second saw the rival's row
    state = await pg_state(pool)
    assert state["episodes"]["race-e1"][9] == "rival" and len(state["episodes"]) == 3
    assert sorted(t for t in state["transfers"]) == sorted(f"{k}:race-{i}" for k in ("pay", "hold") for i in range(3))
    assert len(state["outbox"]) == 6  # two per payment, none twice


# ---------------------------------------------------------------------------------------------
# 3. Settlement and appeals
# ---------------------------------------------------------------------------------------------
async def test_versions_of_a_scheme_are_separate_units_and_late_ones_are_supplementary(pool: asyncpg.Pool) -> None:
    middle = ACTIVITY.replace(day=15)
    book = SchemeBook([
        Scheme(scheme_id="split", version=1, title="Early", effective_from=START, effective_to=middle,
               min_responses_per_period=0, cap_bps=1_000, scope=Scope(providers=("RJ1",))),
        Scheme(scheme_id="split", version=10, title="Late", effective_from=middle + timedelta(days=1),
               min_responses_per_period=0, cap_bps=1_000, scope=Scope(providers=("RJ1",))),
    ])
    handlers = pg_handlers(pool, book=book)
    day = lambda d: ACTIVITY.replace(day=d)  # noqa: E731
    settle = RunSettlement(period=PERIOD, run_by="finance", correlation_id="s")
    await handlers.accept_payments([AcceptPayment(request("v10-a", "v10-a", activity_date=day(20)), "c")])
    assert [r["settlement_id"] for r in await handlers.run_settlement(settle)] == [f"RJ1:{PERIOD}:split@10"]
    # Version 1's first report is its own, not a late one of version 10's.
    await handlers.accept_payments([AcceptPayment(request("v1-a", "v1-a", activity_date=day(2)), "c"),
                                    AcceptPayment(request("v10-b", "v10-b", activity_date=day(21)), "c")])
    authored = datetime(ACTIVITY.year, ACTIVITY.month, 22, 12, tzinfo=timezone.utc)  # in both windows
    await handlers.record_answers([answer("s-v1", "v1-a", authored_at=authored),
                                   answer("s-v10", "v10-b", authored_at=authored)])  # both very poor
    reports = await handlers.run_settlement(settle)
    assert [(r["settlement_id"], r["diverted_pence"]) for r in reports] == [
        (f"RJ1:{PERIOD}:split@1", 12_345), (f"RJ1:{PERIOD}:split@10:late-1", 0)]
    async with pool.acquire() as conn:
        rows = {r["settlement_id"]: (r["scheme_id"], r["scheme_version"], r["run_by"]) for r in
                await conn.fetch("SELECT * FROM settlements")}
    assert rows[f"RJ1:{PERIOD}:split@10:late-1"] == ("split", 10, "finance")


async def test_appeals_are_written_as_decided_and_the_database_keeps_duties_apart(pool: asyncpg.Pool) -> None:
    handlers = pg_handlers(pool)
    await handlers.accept_payments([AcceptPayment(request("ap-1", "ap-1"), "c")])
    await handlers.record_answers([answer("s-ap", "ap-1")])
    await handlers.run_settlement(RunSettlement(period=PERIOD, run_by="finance", correlation_id="s"))
    opened = await handlers.open_appeal(OpenAppeal("ap-1", "trust.lead", "miscoded"))
    assert opened.changed and opened.appeal["status"] == "open" and opened.appeal["diverted_pence"] == 12_345
    assert not (await handlers.open_appeal(OpenAppeal("ap-1", "trust.lead", "miscoded"))).changed
    with pytest.raises(domain.SameActor):
        await handlers.decide_appeal(DecideAppeal("ap-1", "upheld", "trust.lead", "mine", "c"))
    upheld = await handlers.decide_appeal(DecideAppeal("ap-1", "upheld", "panel", "agreed", "c-panel"))
    assert [(h["step"], h["actor"]) for h in upheld.appeal["history"]] == [("appealed", "trust.lead"), ("upheld", "panel")]
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT payload FROM outbox WHERE key = 'ap-1' ORDER BY id DESC LIMIT 1")
        event = json.loads(row["payload"])
        assert (event["data"]["transfer_id"], event["causation_id"], event["correlation_id"]) == (
            "appeal:ap-1", "appeal:ap-1", "c-panel")
        assert await conn.fetchval("SELECT kind FROM ledger_transfers WHERE transfer_id = 'appeal:ap-1'") == "appeal_upheld"
        with pytest.raises(asyncpg.CheckViolationError):  # whatever a handler did, the database refuses it too
            await conn.execute("UPDATE appeals SET decided_by = appealed_by WHERE episode_id = 'ap-1'")
