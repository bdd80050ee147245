"""The feedback store's PostgreSQL adapter (services/feedback/store.py, ``FeedbackTx``) against real
PostgreSQL: the port's contract (locks, stored rows, first answers under every key, inserts that
skip ids stored meanwhile, pairs, outbox), the handler on PostgreSQL giving what it gives on the
in-memory fake (tests/unit/fakes_feedback.py) for random sequences across a key rotation, a
concurrent insert met between looking and writing, and concurrent batches sharing ids."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from services.feedback import decisions
from services.feedback.decisions import Accepted, Conflict, Question
from services.feedback.handlers import AcceptSubmissions, SubmitFeedback
from services.feedback.store import FeedbackTx
from shared.db import create_pool, migrate
from shared.uow import PgUnitOfWork
from tests.unit.fakes_feedback import FakeFeedback
from tests.unit.test_feedback_handlers import AUTHORED, KEYS, OLD_KEYS, fft, ohs, power, random_submissions, sub

pytestmark = pytest.mark.integration

CLOCK = datetime(2026, 11, 1, 9, tzinfo=timezone.utc)
EQ5D = {"instrument": "eq5d5l", "mobility": 1, "self_care": 1, "usual_activities": 1, "pain_discomfort": 1,
        "anxiety_depression": 1, "vas": 50}  # no procedure: no question, no lock


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    conn = await asyncpg.connect(database)
    try:
        await migrate(conn, "shared", "services.feedback")
    finally:
        await conn.close()
    pool = await create_pool(database, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


def handler(pool: asyncpg.Pool, keys: Any = KEYS) -> AcceptSubmissions:
    return AcceptSubmissions(PgUnitOfWork(pool, FeedbackTx), keys)


def commands(*subs: Any, channel: str = "kafka") -> list[SubmitFeedback]:
    return [SubmitFeedback(s, channel, "corr", f"cause-{s.submission_id}") for s in subs]  # type: ignore[arg-type]


def rows_for(subs: list[Any], keys: Any = KEYS, at: datetime = CLOCK) -> list[decisions.SubmissionRow]:
    """New rows as the core decides them for ``subs`` with nothing stored before, received from ``at``."""
    items = [decisions.prepare(s, "kafka", keys) for s in subs]
    return [row for _, row in decisions.decide(items, {}, {}, keys, at).rows]


# ---------------------------------------------------------------------------------------------
# The port's contract, statement by statement
# ---------------------------------------------------------------------------------------------
async def test_locks_are_held_to_the_end_of_the_transaction_and_the_clock_is_read_once_they_are(pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        tx = FeedbackTx(conn)
        at = await tx.lock(["b", "a", "b"])
        held = await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
        now = await conn.fetchval("SELECT clock_timestamp()")
    assert held == 2 and at <= now
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()") == 0


async def test_inserts_skip_ids_already_stored_and_stored_reads_them_back(pool) -> None:
    rows = rows_for([sub("a", free_text="fine", setting="maternity", collection_mode="app"), sub("b", episode="ep-2")])
    async with pool.acquire() as conn, conn.transaction():
        tx = FeedbackTx(conn)
        assert await tx.insert_submissions(rows) == {"a", "b"}
        assert await tx.insert_submissions(rows[:1] + rows_for([sub("c", episode="ep-3")])) == {"c"}
        stored = await tx.stored(["a", "zz"])
        raw = await conn.fetchrow("SELECT * FROM submissions WHERE submission_id = 'a'")
    assert list(stored) == ["a"]
    assert stored["a"] == decisions.StoredSubmission("a", rows[0].content_hash, "k2", False, rows[0].scores)
    assert (raw["setting"], raw["collection_mode"], raw["free_text"], raw["channel"], raw["received_at"]) == (
        "maternity", "app", "fine", "kafka", rows[0].received_at)


async def test_first_answers_ignore_amendments_take_the_earliest_and_look_under_every_key(pool) -> None:
    [old_fft] = rows_for([sub("old-fft", answers=fft(1))], OLD_KEYS, CLOCK + timedelta(seconds=1))  # before the rotation
    amend, pp = rows_for([sub("amend", answers=fft(5), amends_submission_id="x"), sub("pp", answers=power("hold_back"))])
    [pre_b] = rows_for([sub("pre-b", episode="op", answers=ohs("pre_op", 1))])
    [pre_a] = rows_for([sub("pre-a", episode="op2", answers=ohs("pre_op", 2))])  # received at the same instant
    item = decisions.prepare(sub("new"), "kafka", KEYS)
    fft_q = Question(item.pseudonym, "fft", episode_id="ep-1")
    pp_q = Question(item.pseudonym, "patient_power", episode_id="ep-1")
    pre_q = Question(item.pseudonym, "ohs", procedure="primary_hip_replacement", timing="pre_op")
    aliases = item.patient_aliases
    async with pool.acquire() as conn, conn.transaction():
        tx = FeedbackTx(conn)
        await tx.insert_submissions([old_fft, amend, pp, pre_b, pre_a])
        found = await tx.first_answers({fft_q: aliases, pp_q: aliases, pre_q: aliases, pre_q.counterpart(): aliases,
                                        Question(item.pseudonym, "fft", episode_id="ep-9"): aliases})
        only_current = await tx.first_answers({fft_q: aliases[:1]})
    # The amendment is ignored though received first; the FFT stored under the old key is found.
    assert found[fft_q].submission_id == "old-fft"
    assert found[pp_q].submission_id == "pp"  # one question per instrument
    assert found[pre_q].submission_id == "pre-a"  # the same received_at: the smaller id
    assert (found[pre_q].scores, found[pre_q].provider_code, found[pre_q].authored_at) == (
        {"oxford_total": 24}, "RRV", pre_a.authored_at)
    assert set(found) == {fft_q, pp_q, pre_q} and only_current == {}


async def test_pairs_and_outbox_rows_are_written_in_the_transaction(pool) -> None:
    await handler(pool)(commands(sub("pre", episode="op", answers=ohs("pre_op", 1)),
                                 sub("post", episode="op", answers=ohs("post_op", 3), authored=AUTHORED + timedelta(days=9))))
    async with pool.acquire() as conn:
        pairs = [dict(r) for r in await conn.fetch("SELECT pre_submission_id, post_submission_id, provider_code, pre_score,"
                                                   " post_score, health_gain FROM prom_pairs")]
        events = [(r["topic"], bytes(r["key"]), json.loads(r["payload"]), json.loads(r["headers"]))
                  for r in await conn.fetch("SELECT topic, key, payload, headers FROM outbox ORDER BY id")]
    assert pairs == [{"pre_submission_id": "pre", "post_submission_id": "post", "provider_code": "RRV", "pre_score": 12,
                      "post_score": 36, "health_gain": 24}]
    assert [(t, k, e["data"]["submission_id"], h["causation_id"]) for t, k, e, h in events] == [
        ("feedback.received.v1", b"op", "pre", "cause-pre"), ("feedback.received.v1", b"op", "post", "cause-post")]


# ---------------------------------------------------------------------------------------------
# The handler on PostgreSQL gives what it gives on the fake
# ---------------------------------------------------------------------------------------------
ROWS = ("SELECT submission_id, episode_id, provider_code, patient_pseudonym, pseudonym_key_id, instrument, answers::text AS answers,"
        " scores::text AS scores, free_text, free_text_redactions, authored_at, channel, content_hash, amends_submission_id,"
        " is_amendment, procedure, timing, setting, collection_mode FROM submissions ORDER BY received_at, submission_id")


def fake_rows(fake: FakeFeedback) -> list[dict[str, Any]]:
    out = []
    for r in sorted(fake.state.submissions.values(), key=lambda r: (r.received_at, r.submission_id)):
        out.append({"submission_id": r.submission_id, "episode_id": r.episode_id, "provider_code": r.provider_code,
                    "patient_pseudonym": r.patient_pseudonym, "pseudonym_key_id": r.pseudonym_key_id, "instrument": r.instrument,
                    "answers": json.loads(r.answers_json), "scores": dict(r.scores), "free_text": r.free_text,
                    "free_text_redactions": r.free_text_redactions, "authored_at": r.authored_at, "channel": r.channel,
                    "content_hash": r.content_hash, "amends_submission_id": r.amends_submission_id,
                    "is_amendment": r.is_amendment, "procedure": r.procedure, "timing": r.timing, "setting": r.setting,
                    "collection_mode": r.collection_mode})
    return out


def without_ids(event: dict) -> dict:
    return {k: v for k, v in event.items() if k not in ("event_id", "occurred_at")}


@pytest.mark.parametrize("seed", range(3))
async def test_the_handler_on_postgresql_gives_what_it_gives_on_the_fake(pool, seed) -> None:
    rnd = random.Random(seed)
    seeded = random_submissions(random.Random(seed + 100), 15)
    subs = random_submissions(rnd, 120) + [s for s in seeded if rnd.random() < 0.3]
    rnd.shuffle(subs)
    fake = FakeFeedback()
    real_old, fake_old = handler(pool, OLD_KEYS), AcceptSubmissions(fake.uow, OLD_KEYS)
    real_new, fake_new = handler(pool), AcceptSubmissions(fake.uow, KEYS)
    assert await real_old(commands(*seeded)) == await fake_old(commands(*seeded))
    got_real: list[Any] = []
    got_fake: list[Any] = []
    k = 0
    while k < len(subs):
        size = rnd.choice([1, 3, 17, 50, 200])
        got_real += await real_new(commands(*subs[k:k + size]))
        got_fake += await fake_new(commands(*subs[k:k + size]))
        k += size
    assert got_real == got_fake
    assert any(isinstance(o, Conflict) for o in got_real) and any(o.status == "duplicate" for o in got_real
                                                                    if isinstance(o, Accepted))
    async with pool.acquire() as conn:
        rows = [{k: json.loads(v) if k in ("answers", "scores") else v for k, v in dict(r).items()} for r in await conn.fetch(ROWS)]
        pairs = [dict(r) for r in await conn.fetch(
            "SELECT pre_submission_id, post_submission_id, patient_pseudonym, provider_code, instrument, procedure,"
            " pre_score, post_score, health_gain FROM prom_pairs ORDER BY pre_submission_id")]
        events = [without_ids(json.loads(r["payload"])) for r in await conn.fetch("SELECT payload FROM outbox ORDER BY id")]
    assert rows == fake_rows(fake)
    assert pairs == [{"pre_submission_id": p.pre_submission_id, "post_submission_id": p.post_submission_id,
                      "patient_pseudonym": p.patient_pseudonym, "provider_code": p.provider_code, "instrument": p.pair.instrument,
                      "procedure": p.pair.procedure, "pre_score": p.pair.pre_score, "post_score": p.pair.post_score,
                      "health_gain": p.pair.health_gain} for _, p in sorted(fake.state.pairs.items())]
    assert events == [without_ids(e) for e in fake.state.events()]
    assert any(r["is_amendment"] for r in rows) and pairs, "the sequence exercises amendments and pairs"


# ---------------------------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------------------------
async def test_a_concurrent_insert_between_looking_and_writing_reruns_the_batch(pool, monkeypatch, caplog) -> None:
    """Another writer stores one of the batch's ids after the batch looked (an id with no lock in
    common, e.g. EQ-5D without a procedure): the insert skips it, the unit of work runs the batch
    again, and the second pass finds the other writer's row."""
    shared_item = sub("eq-1", answers=EQ5D)
    rival_done = False
    real_stored = FeedbackTx.stored

    async def stored_then_rival_commits(self: FeedbackTx, ids: Any) -> Any:
        nonlocal rival_done
        found = await real_stored(self, ids)
        if not rival_done:
            rival_done = True
            assert await handler(pool)(commands(shared_item, channel="http")) == [
                Accepted("eq-1", "created", False, {"eq5d_profile": "11111", "eq_vas": 50})]
        return found

    monkeypatch.setattr(FeedbackTx, "stored", stored_then_rival_commits)
    caplog.set_level(logging.INFO, logger="services.feedback.handlers")
    outcomes = await handler(pool)(commands(shared_item, sub("fft-1")))
    assert "met a concurrent insert of 1 of its ids; running it again" in caplog.text
    assert outcomes == [Accepted("eq-1", "duplicate", False, {"eq5d_profile": "11111", "eq_vas": 50}),
                        Accepted("fft-1", "created", False, {"fft_positive": True, "fft_negative": False})]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 2  # one event each, nothing from the rolled-back pass
        assert await conn.fetchval("SELECT channel FROM submissions WHERE submission_id = 'eq-1'") == "http"


async def test_concurrent_batches_sharing_ids_wait_on_the_lock_and_store_each_id_once(pool, database) -> None:
    """Two batches of one episode (four patients) sharing two ids, both made to wait on the
    episode's lock: the first to get it stores its rows, the second then finds them as duplicates."""
    episode = "ep-shared"
    subs = [sub(f"s{n}", episode=episode, who=n) for n in range(4)]
    gate = await asyncpg.connect(database)
    try:
        async with gate.transaction():
            await gate.execute("SELECT pg_advisory_xact_lock(hashtext($1))", episode)
            tasks = [asyncio.create_task(handler(pool)(commands(*part))) for part in (subs[:3], subs[1:])]
            waiting = 0
            for _ in range(200):
                waiting = await gate.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                if waiting == 2:
                    break
                await asyncio.sleep(0.02)
            assert waiting == 2, "both batches should be waiting on the episode's lock"
    finally:
        await gate.close()
    a, b = [await t for t in tasks]
    outcomes: dict[str, list[str]] = {}
    for result in (a, b):
        assert all(isinstance(o, Accepted) and not o.is_amendment for o in result)
        for o in result:
            outcomes.setdefault(o.submission_id, []).append(o.status)  # type: ignore[union-attr]
    assert {sid: sorted(v) for sid, v in outcomes.items()} == {
        "s0": ["created"], "s1": ["created", "duplicate"], "s2": ["created", "duplicate"], "s3": ["created"]}
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM submissions") == 4
        events = [json.loads(r["payload"])["data"]["submission_id"] for r in await conn.fetch("SELECT payload FROM outbox")]
    assert sorted(events) == ["s0", "s1", "s2", "s3"]
