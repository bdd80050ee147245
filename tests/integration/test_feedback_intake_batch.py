"""Feedback Kafka intake in batches (services/feedback/consumer.py, store.accept_batch), on a real
broker and PostgreSQL: per-record outcomes inside a batch, dead letters without NHS numbers,
redelivery, same-episode order, and the one-record-at-a-time fallback."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.feedback import store
from services.feedback.app import create_app
from services.feedback.settings import FeedbackSettings
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
    async with running(create_app(settings)) as http:
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


async def test_same_episode_in_one_batch_is_stored_as_one_by_one(database, second_database, kafka_bootstrap) -> None:
    """The same records, stored by a consumer reading one record per batch (database A) and by the
    batched consumer that gets them all in one batch (database B): the same rows, the same order."""
    run = uuid.uuid4().hex[:6]
    episode = f"ep-{run}-same"
    later = (NOW.replace(microsecond=0)).isoformat()
    # One patient, one episode: a patient power answer, then FFT answers (the first one decides,
    # the others are amendments, one naming what it amends), then hip scores before and after
    # surgery (paired), and a second pre-operative score (an amendment, no new pair).
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
    one_by_one = make_settings(database, kafka_bootstrap, intake_batch_max_records=1)
    batched = make_settings(second_database, kafka_bootstrap)
    before = batches_seen()
    async with running(create_app(batched)):
        b_rows = await eventually(lambda: _rows_when(batched.database_url, run, 7))
    after = batches_seen()
    assert after[0] - before[0] < 7, "the batched consumer did not get the episode's records in one batch"
    async with running(create_app(one_by_one)):
        a_rows = await eventually(lambda: _rows_when(one_by_one.database_url, run, 7))

    def comparable(rows: list[dict]) -> list[dict]:
        return [{k: (json.loads(v) if k == "scores" else v) for k, v in r.items() if k != "received_at"} for r in rows]

    assert comparable(b_rows) == comparable(a_rows)
    by_id = {r["submission_id"]: r for r in comparable(b_rows)}
    # In publish order (received_at order), whatever the ids' alphabetical order.
    assert [r["submission_id"] for r in b_rows] == [s["submission_id"] for s in subs[:7]]
    assert by_id[f"kb-{run}-9-power"]["is_amendment"] is False
    assert by_id[f"kb-{run}-1-fft"]["amends_submission_id"] == f"kb-{run}-9-power"
    assert by_id[f"kb-{run}-0-fft"]["is_amendment"] is True
    assert by_id[f"kb-{run}-5-fft"]["amends_submission_id"] == f"kb-{run}-1-fft"
    assert by_id[f"kb-{run}-7-pre"]["scores"]["health_gain"] == 36
    assert by_id[f"kb-{run}-7-pre"]["scores"]["paired_with"] == f"kb-{run}-8-post"
    assert by_id[f"kb-{run}-2-pre"]["is_amendment"] is True
    assert by_id[f"kb-{run}-2-pre"]["amends_submission_id"] == f"kb-{run}-7-pre"
    pairs_sql = "SELECT pre_submission_id, post_submission_id, health_gain FROM prom_pairs WHERE pre_submission_id LIKE $1"
    assert await db_rows(batched.database_url, pairs_sql, f"kb-{run}-%") == \
        await db_rows(one_by_one.database_url, pairs_sql, f"kb-{run}-%") == \
        [{"pre_submission_id": f"kb-{run}-7-pre", "post_submission_id": f"kb-{run}-8-post", "health_gain": 36}]
    # The FFT report counts the first FFT answer stored, not the smallest id.
    report_sql = ("SELECT DISTINCT ON (episode_id, patient_pseudonym) submission_id FROM submissions"
                  " WHERE instrument = 'fft' AND episode_id = $1 ORDER BY episode_id, patient_pseudonym, received_at, submission_id")
    assert await db_rows(batched.database_url, report_sql, episode) == [{"submission_id": f"kb-{run}-1-fft"}]


async def test_unexpected_error_falls_back_to_one_record_per_transaction(database, kafka_bootstrap, monkeypatch) -> None:
    run = uuid.uuid4().hex[:6]
    settings = make_settings(database, kafka_bootstrap)
    subs = [submission(run, n, submission_id=f"kb-{run}-{n}") for n in range(3)]

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("batch path broken")

    monkeypatch.setattr(store, "accept_batch", broken)
    await publish(kafka_bootstrap, FEEDBACK_SUBMITTED.name,
                  [(s["episode_id"].encode(), intake_envelope(s), {}) for s in subs])
    async with running(create_app(settings)):
        rows = await eventually(lambda: _rows_when(settings.database_url, run, 3))
    assert sorted(r["submission_id"] for r in rows) == [f"kb-{run}-{n}" for n in range(3)]


# ---------------------------------------------------------------------------------------------
# store.accept_batch against store.accept one at a time, on random sequences
# ---------------------------------------------------------------------------------------------
def random_submissions(rnd: Any, prefix: str, n: int) -> list[Any]:
    """Few patients and episodes, every instrument, repeats (duplicates and conflicts), amendments
    naming earlier ids, PROMs before and after surgery with authored times either way round."""
    from datetime import timedelta

    from services.feedback.domain import Submission

    out: list[Any] = []
    for i in range(n):
        if out and rnd.random() < 0.15:
            prev = rnd.choice(out)
            if rnd.random() < 0.5:
                out.append(prev)  # the same submission again: a duplicate
            else:  # the same id, other content: a conflict
                out.append(prev.model_copy(update={"free_text": f"other {i}"}))
            continue
        p = rnd.randrange(3)
        kind = rnd.choice(["fft", "power", "ohs", "ohs", "eq5d", "eq5d-plain"])
        timing = rnd.choice(["pre_op", "post_op"])
        if kind == "fft":
            answers: dict = {"instrument": "fft", "fft_answer": rnd.randint(1, 6)}
        elif kind == "power":
            answers = {"instrument": "patient_power", "patient_choice": rnd.choice(["pay_in_full", "hold_back", "not_sure"])}
        elif kind == "ohs":
            answers = {"instrument": "ohs", "items": [rnd.randint(0, 4) for _ in range(12)], "timing": timing,
                       "procedure": "primary_hip_replacement"}
        else:
            answers = {"instrument": "eq5d5l", "mobility": 1, "self_care": 2, "usual_activities": 3, "pain_discomfort": 4,
                       "anxiety_depression": 5, "vas": rnd.randint(0, 100)}
            if kind == "eq5d":
                answers |= {"timing": timing, "procedure": "primary_knee_replacement"}
        amends = rnd.choice(out).submission_id if out and rnd.random() < 0.1 else None
        out.append(Submission.model_validate({
            "submission_id": f"{prefix}-{i}", "episode_id": f"{prefix}-ep-{rnd.randrange(3)}",
            "provider_code": rnd.choice(["RRV", "RJ1"]), "nhs_number": patient(p),
            "authored_at": (NOW - timedelta(days=rnd.randint(0, 60), minutes=rnd.randint(0, 59))).isoformat(),
            "answers": answers, "free_text": rnd.choice([None, "fine"]), "amends_submission_id": amends,
        }))
    return out


def outcome(r: Any) -> Any:
    return ("conflict", str(r)) if isinstance(r, store.Conflict) else (r.status, r.is_amendment, r.scores)


@pytest.mark.parametrize("seed", range(6))
async def test_accept_batch_equals_accept_one_at_a_time(database, second_database, seed) -> None:
    import random

    import asyncpg
    from pydantic import SecretStr

    from shared.db import migrate

    rnd = random.Random(seed)
    prefix = f"eq{seed}"
    old = FeedbackSettings(pseudonym_key=SecretStr("old-key-for-tests-0123456789"), pseudonym_key_id="old").keyring()
    new = FeedbackSettings(pseudonym_key=SecretStr("new-key-for-tests-0123456789"), pseudonym_key_id="new",
                           pseudonym_previous_keys={"old": SecretStr("old-key-for-tests-0123456789")}).keyring()
    seeded = random_submissions(rnd, prefix + "-old", 15)  # stored before a key rotation, in both databases
    subs = random_submissions(rnd, prefix, 120)
    subs += [s for s in seeded if rnd.random() < 0.3]  # answers stored under the old key, sent again
    rnd.shuffle(subs)
    results: dict[str, list[Any]] = {}
    for dsn, batched in ((database, False), (second_database, True)):
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn, "shared", "services.feedback")
            for sub in seeded:
                try:
                    async with conn.transaction():
                        await store.accept(conn, sub, keys=old, channel="kafka", correlation_id="c")
                except store.Conflict:
                    pass
            got: list[Any] = []
            if batched:
                k = 0
                while k < len(subs):
                    size = rnd.choice([1, 3, 17, 50, 200])
                    chunk = [store.Incoming(s, "c", f"e-{j}") for j, s in enumerate(subs[k:k + size], k)]
                    async with conn.transaction():
                        got += await store.accept_batch(conn, chunk, keys=new, channel="kafka")
                    k += size
            else:
                for j, sub in enumerate(subs):
                    try:
                        async with conn.transaction():
                            got.append(await store.accept(conn, sub, keys=new, channel="kafka", correlation_id="c",
                                                          causation_id=f"e-{j}"))
                    except store.Conflict as exc:
                        got.append(exc)
            rows = [dict(r) for r in await conn.fetch(
                "SELECT submission_id, episode_id, provider_code, patient_pseudonym, pseudonym_key_id, instrument,"
                " answers::text, scores::text, free_text, authored_at, channel, content_hash, amends_submission_id,"
                " is_amendment, procedure, timing FROM submissions ORDER BY received_at, submission_id")]
            pairs = [dict(r) for r in await conn.fetch(
                "SELECT pre_submission_id, post_submission_id, patient_pseudonym, provider_code, instrument, procedure,"
                " pre_score, post_score, health_gain FROM prom_pairs ORDER BY pre_submission_id")]
            events = [(r["topic"], bytes(r["key"]), {k: v for k, v in json.loads(r["payload"]).items()
                                                     if k not in ("event_id", "occurred_at")})
                      for r in await conn.fetch("SELECT topic, key, payload FROM outbox ORDER BY id")]
            results["batched" if batched else "one"] = [[outcome(r) for r in got], rows, pairs, events]
        finally:
            await conn.close()
    one, batched_ = results["one"], results["batched"]
    for name, a, b in zip(("outcomes", "rows", "pairs", "events"), one, batched_):
        assert b == a, name
    assert any(o[0] == "conflict" for o in one[0]) and any(o[0] == "duplicate" for o in one[0])
    assert any(r["is_amendment"] for r in one[1]) and one[2], "the sequence exercises amendments and pairs"
