"""The feedback Kafka intake (services/feedback/consumer.py) end to end, on a real broker and
PostgreSQL: a batch mixing valid, invalid, refused, conflicting and duplicate records (each its own
outcome, dead letters without NHS numbers, redelivery changing nothing), one episode's answers in
one batch decided in offset order, and a record failing in the database that is retried and
dead-lettered alone while the others are stored (the one-record-at-a-time fallback)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from services.feedback.app import create_app
from services.feedback.settings import FeedbackSettings
from shared.db import migrate
from shared.topics import FEEDBACK_RECEIVED, FEEDBACK_SUBMITTED, FEEDBACK_SUBMITTED_DLQ
from tests.conftest import running
from tests.helpers import eventually, publish
from tests.integration.test_feedback_channels import (
    AUTHORED,
    NOW,
    db_rows,
    intake_envelope,
    patient,
    read_mine,
    read_until,
    submission,
)

pytestmark = pytest.mark.integration

ROW = ("SELECT submission_id, episode_id, patient_pseudonym, instrument, scores::text AS scores, is_amendment,"
       " amends_submission_id, procedure, timing, channel, content_hash, received_at FROM submissions"
       " WHERE submission_id LIKE $1 ORDER BY received_at, submission_id")


def make_settings(database: str, bootstrap: str, **extra: Any) -> FeedbackSettings:
    return FeedbackSettings(database_url=database, kafka_bootstrap_servers=bootstrap,
                            consumer_group=f"feedback-{uuid.uuid4().hex[:8]}", outbox_poll_interval_ms=50, **extra)


def batches_seen() -> tuple[float, float]:
    """(batches, records) the intake has handled so far in this process."""
    return (REGISTRY.get_sample_value("feedback_intake_batch_size_count") or 0.0,
            REGISTRY.get_sample_value("feedback_intake_batch_size_sum") or 0.0)


def prom(run: str, sid: str, episode: str, timing: str, items: list[int], authored: str, **extra: Any) -> dict:
    return submission(run, 0, submission_id=sid, episode_id=episode, authored_at=authored, free_text=None,
                      answers={"instrument": "ohs", "items": items, "timing": timing,
                               "procedure": "primary_hip_replacement"}, **extra)


def dlq_headers(rec: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in rec.headers}


async def _rows_when(dsn: str, run: str, n: int) -> list[dict] | None:
    rows = await db_rows(dsn, ROW, f"kb-{run}-%")
    return rows if len(rows) >= n else None


async def test_batch_mixes_valid_invalid_conflicting_and_duplicates_then_redelivery_changes_nothing(
        database, kafka_bootstrap) -> None:
    run = uuid.uuid4().hex[:6]
    settings = make_settings(database, kafka_bootstrap)
    a = submission(run, 0, submission_id=f"kb-{run}-a")
    b = submission(run, 1, submission_id=f"kb-{run}-b")
    stored_before = submission(run, 2, submission_id=f"kb-{run}-c")
    bad_nhs = submission(run, 3, submission_id=f"kb-{run}-bad-nhs", nhs_number="9990000019")
    bad_answer = submission(run, 4, submission_id=f"kb-{run}-bad-answer", answers={"instrument": "fft", "fft_answer": 9})
    a_conflict = {**a, "answers": {"instrument": "fft", "fft_answer": 5}}
    c_conflict = {**stored_before, "free_text": "changed"}
    garbage = f"not json {run}, patient {patient(5)[:3]} {patient(5)[3:6]} {patient(5)[6:]}".encode()
    messages = [
        (a["episode_id"].encode(), intake_envelope(a), {"correlation_id": f"c-{run}"}),
        (b["episode_id"].encode(), intake_envelope(b), {}),
        (bad_nhs["episode_id"].encode(), intake_envelope(bad_nhs), {}),
        (a["episode_id"].encode(), intake_envelope(a_conflict), {}),  # same id as a, other content, same batch
        (bad_answer["episode_id"].encode(), intake_envelope(bad_answer), {}),
        (stored_before["episode_id"].encode(), intake_envelope(c_conflict), {}),  # conflicts with a stored row
        (patient(6).encode(), garbage, {"note": f"nhs {patient(6)}"}),
        (a["episode_id"].encode(), intake_envelope(a), {}),  # a again: a duplicate, not a dead letter
        (b["episode_id"].encode(), intake_envelope(b), {}),
    ]
    # Stored over HTTP first, by an instance in another consumer group: a member that has just left
    # the intake's group would hold up its next join until the broker notices (session timeout).
    async with running(create_app(make_settings(database, kafka_bootstrap))) as http:
        assert (await http.post("/v1/submissions", json=stored_before)).status_code == 202
    # All published before the consumer starts, so they come in one fetch (one batch per poll).
    await publish(kafka_bootstrap, FEEDBACK_SUBMITTED.name, messages)
    before = batches_seen()
    started = time.monotonic()
    async with running(create_app(settings)):
        rows = await eventually(lambda: _rows_when(settings.database_url, run, 3))
        _, dlq = await read_until(kafka_bootstrap, FEEDBACK_SUBMITTED_DLQ.name,
                                  lambda r: run.encode() in r.value or f"not json {run}".encode() in r.value, expect=5)
        elapsed = time.monotonic() - started
    after = batches_seen()
    assert after[1] - before[1] >= len(messages)
    assert after[0] - before[0] < len(messages), "the intake handled the records one at a time, not in batches"
    print(f"batch of {len(messages)} in {after[0] - before[0]:.0f} batch(es), {elapsed:.2f}s including start-up")
    assert not any("Value error" in dlq_headers(r)["dlq_reason"] for r in dlq)  # pydantic's prefix removed

    assert sorted(r["submission_id"] for r in rows) == [f"kb-{run}-a", f"kb-{run}-b", f"kb-{run}-c"]
    assert {r["submission_id"]: r["channel"] for r in rows} == {f"kb-{run}-a": "kafka", f"kb-{run}-b": "kafka",
                                                               f"kb-{run}-c": "http"}
    assert json.loads(next(r for r in rows if r["submission_id"] == f"kb-{run}-a")["scores"])["fft_positive"] is True
    assert len(dlq) == 5, [dlq_headers(r) for r in dlq]
    kinds: list[tuple[str, str]] = []
    for rec in dlq:
        headers = dlq_headers(rec)
        assert headers["dlq_source_topic"] == FEEDBACK_SUBMITTED.name
        blob = rec.value + (rec.key or b"") + json.dumps(headers).encode()
        for n in range(7):
            assert patient(n).encode() not in blob
            assert " ".join([patient(n)[:3], patient(n)[3:6], patient(n)[6:]]).encode() not in blob
        assert b"9990000019" not in blob
        assert b"spotless" not in rec.value and b"changed" not in rec.value  # free text blanked
        kinds.append((headers["dlq_kind"], headers["dlq_reason"]))
    assert sum(1 for k, r in kinds if k == "invalid" and "data.nhs_number" in r) == 1
    assert sum(1 for k, r in kinds if k == "invalid" and "fft_answer" in r) == 1
    assert sum(1 for k, r in kinds if k == "invalid" and "JSON" in r) == 1
    rejected = sorted(r for k, r in kinds if k == "rejected")
    assert rejected == [f"submission kb-{run}-a was already received with different content",
                        f"submission kb-{run}-c was already received with different content"]
    # Dead letters keep offset order within the partition.
    offsets = [int(dlq_headers(r)["dlq_source_offset"]) for r in dlq
               if dlq_headers(r)["dlq_source_partition"] == dlq_headers(dlq[0])["dlq_source_partition"]]
    assert offsets == sorted(offsets)
    events = await read_mine(kafka_bootstrap, FEEDBACK_RECEIVED.name, f"kb-{run}", expect=3)
    # (c came over HTTP: its event is the outbox's, at least once, and not this consumer's.)
    assert sorted({e["data"]["submission_id"] for e in events}) == [f"kb-{run}-a", f"kb-{run}-b", f"kb-{run}-c"]
    a_event = next(e for e in events if e["data"]["submission_id"] == f"kb-{run}-a")
    assert a_event["correlation_id"] == json.loads(messages[0][1])["correlation_id"]
    assert a_event["causation_id"] == json.loads(messages[0][1])["event_id"]

    # Redelivery: the same records read again from the start (a rewound group: a new group id,
    # earliest offset), and once more as a second copy of every message. Nothing changes.
    await publish(kafka_bootstrap, FEEDBACK_SUBMITTED.name, messages)
    rewound = make_settings(database, kafka_bootstrap)
    async with running(create_app(rewound)):
        await read_until(kafka_bootstrap, FEEDBACK_SUBMITTED_DLQ.name,
                         lambda r: run.encode() in r.value or f"not json {run}".encode() in r.value, expect=15)
        again = await db_rows(settings.database_url, ROW, f"kb-{run}-%")
    assert again == rows
    events_after = await read_mine(kafka_bootstrap, FEEDBACK_RECEIVED.name, f"kb-{run}", expect=99, timeout_s=3)
    ids_after = sorted(e["data"]["submission_id"] for e in events_after)
    assert ids_after.count(f"kb-{run}-a") == ids_after.count(f"kb-{run}-b") == 1  # no new event on redelivery


async def _rows_when(dsn: str, run: str, n: int) -> list[dict] | None:
    rows = await db_rows(dsn, ROW, f"kb-{run}-%")
    return rows if len(rows) >= n else None


async def test_one_episodes_answers_in_one_batch_are_decided_in_offset_order(database, kafka_bootstrap) -> None:
    """One patient, one episode, in one batch: a patient power answer and FFT answers (each
    instrument its own question: the first of each is not an amendment, later ones amend it, one
    names what it amends), hip scores after and before surgery (paired on the second arrival), a
    second pre-operative score (an amendment, no new pair) and a duplicate. Rows are in publish
    order whatever the ids' alphabetical order."""
    run = uuid.uuid4().hex[:6]
    episode = f"ep-{run}-same"
    later = (NOW.replace(microsecond=0)).isoformat()
    subs = [
        submission(run, 0, submission_id=f"kb-{run}-9-power", episode_id=episode,
                   answers={"instrument": "patient_power", "patient_choice": "hold_back"}),
        submission(run, 0, submission_id=f"kb-{run}-1-fft", episode_id=episode),
        submission(run, 0, submission_id=f"kb-{run}-0-fft", episode_id=episode,
                   answers={"instrument": "fft", "fft_answer": 5}),
        submission(run, 0, submission_id=f"kb-{run}-5-fft", episode_id=episode, amends_submission_id=f"kb-{run}-1-fft",
                   answers={"instrument": "fft", "fft_answer": 4}),
        prom(run, f"kb-{run}-8-post", episode, "post_op", [4] * 12, later),
        prom(run, f"kb-{run}-7-pre", episode, "pre_op", [1] * 12, AUTHORED),
        prom(run, f"kb-{run}-2-pre", episode, "pre_op", [2] * 12, AUTHORED),
        submission(run, 0, submission_id=f"kb-{run}-1-fft", episode_id=episode),  # a duplicate in the batch
    ]
    await publish(kafka_bootstrap, FEEDBACK_SUBMITTED.name,
                  [(episode.encode(), intake_envelope(s, event_id=f"00000000-0000-4000-8000-00000000000{i}"), {})
                   for i, s in enumerate(subs)])
    settings = make_settings(database, kafka_bootstrap)
    before = batches_seen()
    async with running(create_app(settings)):
        rows = await eventually(lambda: _rows_when(settings.database_url, run, 7))
        events = await read_mine(kafka_bootstrap, FEEDBACK_RECEIVED.name, f"kb-{run}", expect=7)
    after = batches_seen()
    assert after[0] - before[0] < 7, "the consumer did not get the episode's records in one batch"
    assert [r["submission_id"] for r in rows] == [s["submission_id"] for s in subs[:7]]
    assert len({r["received_at"] for r in rows}) == 7
    got = {r["submission_id"].removeprefix(f"kb-{run}-"): (r["is_amendment"], (r["amends_submission_id"] or "").removeprefix(f"kb-{run}-"))
           for r in rows}
    assert got == {"9-power": (False, ""), "1-fft": (False, ""), "0-fft": (True, "1-fft"), "5-fft": (True, "1-fft"),
                   "8-post": (False, ""), "7-pre": (False, ""), "2-pre": (True, "7-pre")}
    scores = {r["submission_id"]: json.loads(r["scores"]) for r in rows}
    assert scores[f"kb-{run}-7-pre"] == {"oxford_total": 12, "health_gain": 36, "paired_with": f"kb-{run}-8-post"}
    assert "health_gain" not in scores[f"kb-{run}-2-pre"]
    pairs_sql = "SELECT pre_submission_id, post_submission_id, health_gain, provider_code FROM prom_pairs"
    assert await db_rows(settings.database_url, pairs_sql) == [
        {"pre_submission_id": f"kb-{run}-7-pre", "post_submission_id": f"kb-{run}-8-post", "health_gain": 36, "provider_code": "RRV"}]
    by_id = {e["data"]["submission_id"]: e for e in events}
    assert sorted(by_id) == sorted(s["submission_id"] for s in subs[:7])  # the duplicate has no event of its own
    assert by_id[f"kb-{run}-0-fft"]["data"]["amends_submission_id"] == f"kb-{run}-1-fft"
    assert by_id[f"kb-{run}-1-fft"]["causation_id"] == "00000000-0000-4000-8000-000000000001"
    # The FFT report counts the first FFT answer received, not the smallest id.
    report_sql = ("SELECT DISTINCT ON (episode_id, patient_pseudonym) submission_id FROM submissions"
                  " WHERE instrument = 'fft' AND episode_id = $1 ORDER BY episode_id, patient_pseudonym, received_at, submission_id")
    assert await db_rows(settings.database_url, report_sql, episode) == [{"submission_id": f"kb-{run}-1-fft"}]


async def test_a_record_failing_in_the_database_is_retried_then_dead_lettered_alone(database, kafka_bootstrap) -> None:
    """A trigger fails for one record: its batch rolls back, the batch is handled one record per
    transaction (the same handler, batches of one), the others are stored, and the failing record
    is tried consumer_max_attempts times, then dead-lettered as ``failed``."""
    conn = await asyncpg.connect(database)
    try:
        await migrate(conn, "shared", "services.feedback")
        await conn.execute(
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.submission_id LIKE '%-boom' THEN PERFORM 1 / 0; END IF; RETURN NEW; END $$;"
            " CREATE TRIGGER boom BEFORE INSERT ON submissions FOR EACH ROW EXECUTE FUNCTION boom()")
    finally:
        await conn.close()
    run = uuid.uuid4().hex[:6]
    subs = [submission(run, n, submission_id=f"kb-{run}-{n}") for n in range(3)]
    subs.insert(1, submission(run, 7, submission_id=f"kb-{run}-boom"))
    await publish(kafka_bootstrap, FEEDBACK_SUBMITTED.name, [(s["episode_id"].encode(), intake_envelope(s), {}) for s in subs])
    settings = make_settings(database, kafka_bootstrap, consumer_max_attempts=2)
    async with running(create_app(settings)):
        rows = await eventually(lambda: _rows_when(settings.database_url, run, 3))
        _, dead = await read_until(kafka_bootstrap, FEEDBACK_SUBMITTED_DLQ.name, lambda r: f"kb-{run}-boom".encode() in r.value,
                                   expect=1)
    assert sorted(r["submission_id"] for r in rows) == [f"kb-{run}-{n}" for n in range(3)]
    [dl] = dead
    headers = dlq_headers(dl)
    assert headers["dlq_kind"] == "failed" and "after 2 attempts" in headers["dlq_reason"]
    assert patient(7).encode() not in dl.value + json.dumps(headers).encode()
