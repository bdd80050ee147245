"""The HTTP batch endpoint (POST /v1/submissions/batch) on its set-based path (store.accept_batch),
against real PostgreSQL and the real broker: per-item results as one request per item would give,
array order deciding the first answer of an episode, resubmission, and concurrent batches."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import pytest

from services.feedback import store
from services.feedback.app import create_app
from services.feedback.settings import FeedbackSettings
from shared.contracts import FftAnswer
from shared.service import BATCH_RACE_RETRIES
from shared.topics import FEEDBACK_RECEIVED
from tests.conftest import running
from tests.integration.test_feedback_channels import AUTHORED, NOW, db_rows, oxford, read_mine, submission

pytestmark = pytest.mark.integration

ROWS = ("SELECT submission_id, episode_id, provider_code, patient_pseudonym, instrument, answers::text AS answers,"
        " scores::text AS scores, free_text, authored_at, content_hash, amends_submission_id, is_amendment, procedure,"
        " timing FROM submissions WHERE submission_id LIKE $1 ORDER BY received_at, submission_id")


def make_settings(database: str, bootstrap: str) -> FeedbackSettings:
    return FeedbackSettings(database_url=database, kafka_bootstrap_servers=bootstrap,
                            consumer_group=f"feedback-{uuid.uuid4().hex[:8]}", outbox_poll_interval_ms=50)


@pytest.fixture
def settings(database, kafka_bootstrap) -> FeedbackSettings:
    return make_settings(database, kafka_bootstrap)


def mixed(run: str) -> tuple[list[Any], list[Any]]:
    """(stored before the batch, the batch): valid, invalid, duplicate, conflicting items; two
    answers for one episode; a PROM pair inside the batch and one with a stored answer."""
    fft = submission(run, 0)
    before = [submission(run, 9),
              oxford(run, 5, "pre_op", [1] * 12, authored=NOW.replace(year=NOW.year - 1))]
    batch = [
        fft,                                                                        # created
        submission(run, 1, nhs_number="9990000019"),                                # invalid: check digit
        submission(run, 9, answers={"instrument": "fft", "fft_answer": 5}),         # conflicts with a stored row
        submission(run, 9),                                                         # duplicate of a stored row
        {**fft, "free_text": "changed"},                                            # conflicts with item 0
        submission(run, 0, submission_id=f"sub-{run}-0b",                           # same episode: an amendment
                   answers={"instrument": "patient_power", "patient_choice": "hold_back"}),
        oxford(run, 6, "pre_op", [1] * 12, authored=NOW.replace(year=NOW.year - 1)),
        oxford(run, 6, "post_op", [3] * 12, authored=NOW),                          # pairs with item 6
        oxford(run, 5, "post_op", [4] * 12, authored=NOW),                          # pairs with a stored row
        fft,                                                                        # duplicate of item 0
        "not an object",                                                            # invalid
        submission(run, 2, answers={"instrument": "fft", "fft_answer": 9}),         # invalid: answer
    ]
    return before, batch


async def test_mixed_batch_gives_what_one_request_per_item_gives(database, second_database, kafka_bootstrap) -> None:
    """The same items, sent one request each (database A) and as one batch (database B): the same
    outcome and status per item, the same rows, pairs and events; only the good items are written."""
    run = uuid.uuid4().hex[:6]
    before, batch = mixed(run)
    one, batched = make_settings(database, kafka_bootstrap), make_settings(second_database, kafka_bootstrap)
    singles: list[tuple[str, int, Any]] = []
    async with running(create_app(one)) as http:
        for body in before:
            assert (await http.post("/v1/submissions", json=body)).status_code == 202
        for body in batch:
            r = await http.post("/v1/submissions", json=body, headers={"x-correlation-id": f"one-{run}"})
            outcome = {202: "created", 200: "duplicate", 409: "conflict", 422: "invalid"}[r.status_code]
            singles.append((outcome, r.status_code, r.json() if r.status_code < 300 else None))
    async with running(create_app(batched)) as http:
        for body in before:
            assert (await http.post("/v1/submissions", json=body)).status_code == 202
        r = await http.post("/v1/submissions/batch", json=batch, headers={"x-correlation-id": f"corr-{run}"})
        assert r.status_code == 200, r.text
        out = r.json()
        events = await read_mine(kafka_bootstrap, FEEDBACK_RECEIVED.name, run, expect=2 * 7)  # both databases
    assert [(i["outcome"], i["status"], i["result"]) for i in out["items"]] == singles
    assert [i["outcome"] for i in out["items"]] == ["created", "invalid", "conflict", "duplicate", "conflict", "created",
                                                    "created", "created", "created", "duplicate", "invalid", "invalid"]
    assert out["accepted"] == 7 and out["rejected"] == 5
    assert [i["index"] for i in out["items"]] == list(range(len(batch)))
    assert out["items"][2]["detail"] == f"submission sub-{run}-9 was already received with different content"
    assert out["items"][4]["detail"] == f"submission sub-{run}-0 was already received with different content"
    assert out["items"][5]["result"]["is_amendment"] is True
    assert out["items"][7]["result"]["scores"]["paired_with"] == f"ohs-pre_op-{run}-6"
    assert out["items"][8]["result"]["scores"]["health_gain"] == 36
    assert "9990000019" not in r.text

    a_rows = await db_rows(one.database_url, ROWS, f"%{run}%")
    b_rows = await db_rows(batched.database_url, ROWS, f"%{run}%")
    assert b_rows == a_rows and len(b_rows) == 2 + 5
    pairs = "SELECT pre_submission_id, post_submission_id, health_gain FROM prom_pairs ORDER BY 1"
    assert await db_rows(batched.database_url, pairs) == await db_rows(one.database_url, pairs)
    channels = await db_rows(batched.database_url, "SELECT channel, count(*) AS n FROM submissions GROUP BY 1 ORDER BY 1")
    assert channels == [{"channel": "http", "n": 2}, {"channel": "http-batch", "n": 5}]
    # One event per new row, with the request's correlation id, the same data as one by one.
    new = [i["submission_id"] for i in out["items"] if i["outcome"] == "created"]
    by_cid: dict[str, dict[str, Any]] = {}
    for e in events:
        by_cid.setdefault(e["correlation_id"], {})[e["data"]["submission_id"]] = e
    assert sorted(by_cid[f"corr-{run}"]) == sorted(new) and sorted(by_cid[f"one-{run}"]) == sorted(new)
    for sid in new:
        assert by_cid[f"corr-{run}"][sid]["data"] == by_cid[f"one-{run}"][sid]["data"]
        assert by_cid[f"corr-{run}"][sid]["causation_id"] is None
    assert by_cid[f"corr-{run}"][f"sub-{run}-0b"]["data"]["amends_submission_id"] == f"sub-{run}-0"


async def test_items_of_one_episode_are_first_in_array_order(settings, kafka_bootstrap) -> None:
    """Two answers for one episode in one batch: the earlier in the array is the first answer
    (decision, amendment link, FFT report), whatever the ids' alphabetical order."""
    run = uuid.uuid4().hex[:6]
    episode = f"ep-{run}-same"
    first = submission(run, 0, submission_id=f"sub-{run}-z", episode_id=episode,
                       answers={"instrument": "fft", "fft_answer": 1})
    second = submission(run, 0, submission_id=f"sub-{run}-a", episode_id=episode,
                        answers={"instrument": "fft", "fft_answer": 5})
    async with running(create_app(settings)) as http:
        r = await http.post("/v1/submissions/batch", json=[first, second])
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert [(i["outcome"], i["result"]["is_amendment"]) for i in items] == [("created", False), ("created", True)]
        events = {e["data"]["submission_id"]: e["data"] for e in await read_mine(
            kafka_bootstrap, FEEDBACK_RECEIVED.name, f"sub-{run}", expect=2)}
    assert events[f"sub-{run}-z"]["amends_submission_id"] is None
    assert events[f"sub-{run}-a"]["amends_submission_id"] == f"sub-{run}-z"
    rows = await db_rows(settings.database_url, "SELECT submission_id, received_at, is_amendment, amends_submission_id"
                         " FROM submissions WHERE episode_id = $1 ORDER BY received_at, submission_id", episode)
    assert [r["submission_id"] for r in rows] == [f"sub-{run}-z", f"sub-{run}-a"]
    assert rows[0]["received_at"] < rows[1]["received_at"]  # distinct, in array order: no tie for the id to break
    assert rows[1]["amends_submission_id"] == f"sub-{run}-z"
    # The FFT report counts the episode's first answer: "very good" (1), not the later "very poor".
    period = datetime.fromisoformat(AUTHORED).strftime("%Y-%m")
    conn = await asyncpg.connect(settings.database_url)
    try:
        counts = await store.fft_counts(conn, period)
    finally:
        await conn.close()
    assert counts == {"RRV": {FftAnswer(1): 1}}


async def test_resubmitted_batch_is_all_duplicates_and_emits_nothing(settings, kafka_bootstrap) -> None:
    run = uuid.uuid4().hex[:6]
    batch = [submission(run, n) for n in range(4)] + [oxford(run, 4, "pre_op", [2] * 12, authored=NOW)]
    async with running(create_app(settings)) as http:
        first = (await http.post("/v1/submissions/batch", json=batch)).json()
        assert [i["outcome"] for i in first["items"]] == ["created"] * 5
        again = (await http.post("/v1/submissions/batch", json=batch)).json()
        assert [i["outcome"] for i in again["items"]] == ["duplicate"] * 5
        assert [i["status"] for i in again["items"]] == [200] * 5
        assert [i["result"] for i in again["items"]] == [{**i["result"], "status": "duplicate"} for i in first["items"]]
        assert again["accepted"] == 5 and again["rejected"] == 0
        await http._transport.app.state.runtime.relay.drain()  # type: ignore[attr-defined]
        events = await read_mine(kafka_bootstrap, FEEDBACK_RECEIVED.name, run, expect=6, timeout_s=3)
    assert sorted(e["data"]["submission_id"] for e in events) == sorted(b["submission_id"] for b in batch)
    rows = await db_rows(settings.database_url, "SELECT count(*) AS n FROM submissions")
    assert rows == [{"n": 5}]


async def test_concurrent_batches_with_overlapping_ids_store_each_once(settings, kafka_bootstrap, caplog) -> None:
    """Two batches sharing ids both read "not stored yet", then wait on the episode's lock (held
    here so both are sure to get that far): the second to insert meets the first's rows
    (store.Raced), runs again and finds them as duplicates."""
    run = uuid.uuid4().hex[:6]
    episode = f"ep-{run}-shared"
    subs = [submission(run, n, episode_id=episode) for n in range(4)]  # one episode, four patients
    a, b = subs[:3], subs[1:]
    caplog.set_level(logging.INFO, logger="services.feedback.api")
    async with running(create_app(settings)) as http:
        gate = await asyncpg.connect(settings.database_url)
        try:
            async with gate.transaction():
                await gate.execute("SELECT pg_advisory_xact_lock(hashtext($1))", episode)
                posts = [asyncio.create_task(http.post("/v1/submissions/batch", json=body)) for body in (a, b)]
                for _ in range(200):
                    waiting = await gate.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                    if waiting == 2:
                        break
                    await asyncio.sleep(0.05)
                assert waiting == 2, "both batches should be waiting on the episode's lock"
        finally:
            await gate.close()
        ra, rb = [(await p).json() for p in posts]
        events = await read_mine(kafka_bootstrap, FEEDBACK_RECEIVED.name, f"sub-{run}", expect=5, timeout_s=3)
    assert "batch met a concurrent insert" in caplog.text
    outcomes: dict[str, list[str]] = {}
    for result in (ra, rb):
        assert result["accepted"] == 3 and result["rejected"] == 0
        for item in result["items"]:
            outcomes.setdefault(item["submission_id"], []).append(item["outcome"])
    assert [sorted(outcomes[s["submission_id"]]) for s in subs[1:3]] == [["created", "duplicate"]] * 2
    assert outcomes[subs[0]["submission_id"]] == outcomes[subs[3]["submission_id"]] == ["created"]
    rows = await db_rows(settings.database_url, "SELECT submission_id FROM submissions ORDER BY 1")
    assert [r["submission_id"] for r in rows] == sorted(s["submission_id"] for s in subs)
    assert sorted(e["data"]["submission_id"] for e in events) == sorted(s["submission_id"] for s in subs)


async def test_batch_that_keeps_racing_is_stored_item_by_item(settings, monkeypatch) -> None:
    """store.Raced every time (simulated): BATCH_RACE_RETRIES passes, then the per-item path."""
    calls = 0

    async def raced(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        raise store.Raced("simulated")

    monkeypatch.setattr(store, "accept_batch", raced)
    run = uuid.uuid4().hex[:6]
    batch = [submission(run, 0), submission(run, 0, submission_id=f"sub-{run}-0b"), submission(run, 1)]
    async with running(create_app(settings)) as http:
        r = await http.post("/v1/submissions/batch", json=batch)
    assert r.status_code == 200, r.text
    assert [(i["outcome"], i["result"]["is_amendment"]) for i in r.json()["items"]] == [
        ("created", False), ("created", True), ("created", False)]
    assert calls == BATCH_RACE_RETRIES
    rows = await db_rows(settings.database_url, "SELECT submission_id, channel, amends_submission_id FROM submissions"
                         " ORDER BY received_at, submission_id")
    assert rows == [{"submission_id": f"sub-{run}-0", "channel": "http-batch", "amends_submission_id": None},
                    {"submission_id": f"sub-{run}-0b", "channel": "http-batch", "amends_submission_id": f"sub-{run}-0"},
                    {"submission_id": f"sub-{run}-1", "channel": "http-batch", "amends_submission_id": None}]
