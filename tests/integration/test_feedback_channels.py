"""Feedback service channels against real PostgreSQL and the real broker: HTTP batch, FHIR,
Kafka intake with its dead-letter topic, idempotency, amendments, PROM pairing, reports, key
rotation, and a scan for NHS numbers in the database, the published events and the logs."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from services.feedback import queries
from services.feedback.app import create_app
from devtools.synthetic import synthetic_nhs_number
from services.feedback.fhir import NHS_NUMBER_SYSTEM, ODS_SYSTEM, PROVIDER_EXTENSION, QUESTIONNAIRE_BASE
from services.feedback.settings import FeedbackSettings
from services.feedback.store import FeedbackTx
from shared.contracts import FftAnswer
from shared.topics import FEEDBACK_RECEIVED, FEEDBACK_SUBMITTED, FEEDBACK_SUBMITTED_DLQ
from tests.conftest import running
from tests.helpers import eventually, publish, read_topic

pytestmark = pytest.mark.integration

NOW = datetime.now(timezone.utc)
AUTHORED = (NOW - timedelta(hours=1)).isoformat()
FHIR = {"content-type": "application/fhir+json"}


def patient(n: int) -> str:
    return synthetic_nhs_number(1000 + n)


def submission(run: str, n: int = 0, **overrides: Any) -> dict:
    body = {"submission_id": f"sub-{run}-{n}", "episode_id": f"ep-{run}-{n}", "provider_code": "RRV",
            "nhs_number": patient(n), "authored_at": AUTHORED,
            "answers": {"instrument": "fft", "fft_answer": 2}, "free_text": "The ward was spotless"}
    return {**body, **overrides}


def oxford(run: str, n: int, timing: str, total_items: list[int], *, authored: datetime, provider: str = "RRV",
           instrument: str = "ohs", procedure: str = "primary_hip_replacement") -> dict:
    return submission(run, n, submission_id=f"{instrument}-{timing}-{run}-{n}", episode_id=f"op-{run}-{n}",
                      provider_code=provider, authored_at=authored.isoformat(), free_text=None,
                      answers={"instrument": instrument, "items": total_items, "timing": timing, "procedure": procedure})


def questionnaire_response(run: str, n: int, *, questionnaire: str = "fft", status: str = "completed",
                           items: list[dict] | None = None, nhs: str | None = None, **extra: Any) -> dict:
    qr = {
        "resourceType": "QuestionnaireResponse",
        "identifier": {"system": "https://app.example/Id/response", "value": f"qr-{run}-{n}"},
        "questionnaire": QUESTIONNAIRE_BASE + questionnaire + "|1.0",
        "status": status,
        "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": nhs or patient(n)}},
        "encounter": {"identifier": {"system": "https://fhir.patient-power.nhs.uk/Id/episode", "value": f"ep-{run}-{n}"}},
        "authored": AUTHORED,
        "extension": [{"url": PROVIDER_EXTENSION, "valueReference": {"identifier": {"system": ODS_SYSTEM, "value": "RJ1"}}}],
        "item": items if items is not None else [
            {"linkId": "fft", "answer": [{"valueCoding": {"system": "https://fhir.patient-power.nhs.uk/CodeSystem/fft", "code": "4"}}]},
            {"linkId": "free-text", "answer": [{"valueString": "Waited four hours"}]},
        ],
    }
    qr.update(extra)
    return qr


def intake_envelope(data: dict, *, event_id: str | None = None) -> bytes:
    return json.dumps({"event_id": event_id or str(uuid.uuid4()), "type": "feedback.submitted.v1",
                       "correlation_id": f"c-{uuid.uuid4().hex[:6]}", "producer": "app-backend", "data": data}).encode()


@pytest.fixture
def settings(database, kafka_bootstrap) -> FeedbackSettings:
    return FeedbackSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                            consumer_group=f"feedback-{uuid.uuid4().hex[:8]}", outbox_poll_interval_ms=50)


async def db_rows(dsn: str, sql: str, *args: Any) -> list[dict]:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def read_until(bootstrap: str, topic: str, match: Callable[[Any], bool], *, expect: int,
                     timeout_s: float = 30.0) -> tuple[list[Any], list[Any]]:
    """Read ``topic`` from the start until ``expect`` records satisfy ``match``: (all records, matching)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    seen: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while sum(1 for r in seen if match(r)) < expect and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                seen.extend(records)
    finally:
        await consumer.stop()
    return seen, [r for r in seen if match(r)]


async def read_mine(bootstrap: str, topic: str, prefix: str, *, expect: int, timeout_s: float = 30.0) -> list[dict]:
    """The events on ``topic`` whose submission id starts with ``prefix``, once ``expect`` are there."""
    _, mine = await read_until(bootstrap, topic, lambda r: bool(events_for([r], prefix)), expect=expect, timeout_s=timeout_s)
    return events_for(mine, prefix)


def events_for(records: list[Any], prefix: str) -> list[dict]:
    out = []
    for r in records:
        body = json.loads(r.value)
        if body["data"]["submission_id"].startswith(prefix) or f"-{prefix}" in body["data"]["submission_id"]:
            out.append(body)
    return out


# ---------------------------------------------------------------------------------------------
# HTTP batch
# ---------------------------------------------------------------------------------------------
async def test_batch_gives_per_item_results_in_array_order_and_a_resubmission_changes_nothing(settings, kafka_bootstrap) -> None:
    """Valid, invalid, duplicate and conflicting items (with stored rows and with earlier items),
    two answers to one question, PROM pairs inside the batch and with a stored answer: each item
    gets the status it would have had alone in array order; only the good items are written, each
    with one event carrying the request's correlation id; the same batch again is all duplicates."""
    run = uuid.uuid4().hex[:6]
    settings = settings.model_copy(update={"batch_max_items": 14})
    fft = submission(run, 0)
    before = [submission(run, 9), oxford(run, 5, "pre_op", [1] * 12, authored=NOW.replace(year=NOW.year - 1))]
    eq5d = {"instrument": "eq5d5l", "mobility": 2, "self_care": 1, "usual_activities": 1, "pain_discomfort": 4,
            "anxiety_depression": 3, "vas": 70}
    batch = [
        fft,                                                                        # 0 created
        submission(run, 1, nhs_number="9990000019"),                                # 1 invalid: check digit
        submission(run, 9, answers={"instrument": "fft", "fft_answer": 5}),         # 2 conflicts with a stored row
        submission(run, 9),                                                         # 3 duplicate of a stored row
        {**fft, "free_text": "changed"},                                            # 4 conflicts with item 0
        submission(run, 0, submission_id=f"sub-{run}-0b",                           # 5 another question: a first answer
                   answers={"instrument": "patient_power", "patient_choice": "hold_back"}),
        submission(run, 0, submission_id=f"a-{run}-0",                              # 6 same question, smaller id: an amendment
                   answers={"instrument": "fft", "fft_answer": 5}),
        oxford(run, 6, "pre_op", [1] * 12, authored=NOW.replace(year=NOW.year - 1)),  # 7 created
        oxford(run, 6, "post_op", [3] * 12, authored=NOW),                          # 8 pairs with item 7
        oxford(run, 5, "post_op", [4] * 12, authored=NOW),                          # 9 pairs with a stored row
        fft,                                                                        # 10 duplicate of item 0
        "not an object",                                                            # 11 invalid
        submission(run, 2, answers={"instrument": "fft", "fft_answer": 9}),         # 12 invalid: answer
        submission(run, 3, answers=eq5d),                                           # 13 created
    ]
    async with running(create_app(settings)) as http:
        for body in before:
            assert (await http.post("/v1/submissions", json=body)).status_code == 202
        r = await http.post("/v1/submissions/batch", json=batch, headers={"x-correlation-id": f"corr-{run}"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert [i["outcome"] for i in out["items"]] == [
            "created", "invalid", "conflict", "duplicate", "conflict", "created", "created", "created", "created", "created",
            "duplicate", "invalid", "invalid", "created"]
        assert [i["status"] for i in out["items"]] == [202, 422, 409, 200, 409, 202, 202, 202, 202, 202, 200, 422, 422, 202]
        assert out["accepted"] == 9 and out["rejected"] == 5
        assert [i["index"] for i in out["items"]] == list(range(len(batch)))
        assert out["items"][1]["errors"][0]["field"] == "nhs_number"
        assert not out["items"][1]["errors"][0]["message"].startswith("Value error")  # pydantic's prefix removed
        for i, sid in ((2, f"sub-{run}-9"), (4, f"sub-{run}-0")):
            assert out["items"][i]["detail"] == f"submission {sid} was already received with different content"
            assert out["items"][i]["errors"] == [{"field": "submission_id", "message": "already used with different content"}]
        assert [out["items"][i]["result"]["is_amendment"] for i in (0, 5, 6)] == [False, False, True]
        assert out["items"][10]["result"] == {**out["items"][0]["result"], "status": "duplicate"}
        assert out["items"][8]["result"]["scores"] == {"oxford_total": 36, "health_gain": 24, "paired_with": f"ohs-pre_op-{run}-6"}
        assert out["items"][9]["result"]["scores"]["health_gain"] == 36
        assert out["items"][13]["result"]["scores"] == {"eq5d_profile": "21143", "eq_vas": 70}
        assert "9990000019" not in r.text
        too_many = await http.post("/v1/submissions/batch", json=[submission(run, 20 + i) for i in range(15)])
        assert too_many.status_code == 422 and too_many.headers["content-type"] == "application/problem+json"
        assert too_many.json()["errors"][0]["field"] == "(body)"
        assert (await http.post("/v1/submissions/batch", json=[])).status_code == 422
        assert (await http.post("/v1/submissions/batch", json={"items": []})).status_code == 422

        again = (await http.post("/v1/submissions/batch", json=batch)).json()
        assert [i["outcome"] for i in again["items"]] == [
            "duplicate", "invalid", "conflict", "duplicate", "conflict", "duplicate", "duplicate", "duplicate", "duplicate",
            "duplicate", "duplicate", "invalid", "invalid", "duplicate"]
        assert [i["result"] for i in again["items"] if i["result"]] == [
            {**i["result"], "status": "duplicate"} for i in out["items"] if i["result"]]
        await http._transport.app.state.runtime.relay.drain()  # type: ignore[attr-defined]
        events = await read_mine(kafka_bootstrap, FEEDBACK_RECEIVED.name, run, expect=99, timeout_s=3)
    new = [i["submission_id"] for i in out["items"] if i["outcome"] == "created"]
    mine = [e for e in events if e["data"]["submission_id"] in new]
    assert sorted(e["data"]["submission_id"] for e in mine) == sorted(new)  # one each, none for the resubmission
    assert {(e["correlation_id"], e["causation_id"]) for e in mine} == {(f"corr-{run}", None)}
    amends = {e["data"]["submission_id"]: e["data"]["amends_submission_id"] for e in mine}
    assert (amends[f"sub-{run}-0b"], amends[f"a-{run}-0"]) == (None, f"sub-{run}-0")
    rows = await db_rows(settings.database_url, "SELECT submission_id, channel, received_at FROM submissions"
                         " ORDER BY received_at, submission_id")
    assert [r["submission_id"] for r in rows] == [b["submission_id"] for b in before] + new  # array order, not id order
    assert len({r["received_at"] for r in rows}) == len(rows)
    assert [r["channel"] for r in rows] == ["http"] * 2 + ["http-batch"] * 7
    pairs = await db_rows(settings.database_url, "SELECT pre_submission_id, post_submission_id, health_gain FROM prom_pairs"
                          " ORDER BY 1")
    assert pairs == [{"pre_submission_id": f"ohs-pre_op-{run}-5", "post_submission_id": f"ohs-post_op-{run}-5", "health_gain": 36},
                     {"pre_submission_id": f"ohs-pre_op-{run}-6", "post_submission_id": f"ohs-post_op-{run}-6", "health_gain": 24}]
    # The FFT report counts each patient's first FFT answer per episode: item 0 ("good"), not item 6.
    conn = await asyncpg.connect(settings.database_url)
    try:
        counts = await queries.fft_counts(conn, datetime.fromisoformat(AUTHORED).strftime("%Y-%m"))
    finally:
        await conn.close()
    assert counts == {"RRV": {FftAnswer.GOOD: 2}}


# ---------------------------------------------------------------------------------------------
# Idempotency and amendments
# ---------------------------------------------------------------------------------------------
async def test_idempotency_key_header_conflicts_and_a_batch_that_keeps_racing(settings, monkeypatch) -> None:
    run = uuid.uuid4().hex[:6]
    body = submission(run)
    del body["submission_id"]
    async with running(create_app(settings)) as http:
        r = await http.post("/v1/submissions", json=body, headers={"Idempotency-Key": f"key-{run}"})
        assert r.status_code == 202 and r.json()["submission_id"] == f"key-{run}"
        again = await http.post("/v1/submissions", json=body, headers={"Idempotency-Key": f"key-{run}"})
        assert again.status_code == 200 and again.json() == {**r.json(), "status": "duplicate"}
        changed = {**body, "answers": {"instrument": "fft", "fft_answer": 5}}
        conflict = await http.post("/v1/submissions", json=changed, headers={"Idempotency-Key": f"key-{run}"})
        assert conflict.status_code == 409 and conflict.json()["errors"][0]["field"] == "submission_id"
        differs = await http.post("/v1/submissions", json={**body, "submission_id": "other"},
                                  headers={"Idempotency-Key": f"key-{run}"})
        assert differs.status_code == 422 and differs.json()["errors"][0]["field"] == "submission_id"
        # Another writer "stores" every id first on every pass (simulated): after the unit of work's
        # reruns nothing was written and the client may send the same request again.
        async def always_raced(self: FeedbackTx, rows: Any) -> set[str]:
            return set()

        monkeypatch.setattr(FeedbackTx, "insert_submissions", always_raced)
        raced = await http.post("/v1/submissions", json=submission(run, 1))
        assert raced.status_code == 503 and raced.headers["retry-after"] == "1"
        assert raced.headers["content-type"] == "application/problem+json"
        batch = await http.post("/v1/submissions/batch", json=[submission(run, 2), submission(run, 3)])
        assert batch.status_code == 503
        monkeypatch.undo()
    rows = await db_rows(settings.database_url, "SELECT submission_id FROM submissions WHERE submission_id LIKE $1", f"%{run}%")
    assert rows == [{"submission_id": f"key-{run}"}]


async def test_later_answers_to_the_same_question_are_amendments_and_never_overwrite(settings, kafka_bootstrap) -> None:
    """The first answer per episode, patient and instrument is not an amendment; a later one to the
    same instrument is. A "hold back" after an FFT rating is the patient's first answer to the
    patient power question (payments' scheme decides which of the two moves money)."""
    run = uuid.uuid4().hex[:6]
    async with running(create_app(settings)) as http:
        first = await http.post("/v1/submissions", json=submission(run, 0))
        assert first.json()["is_amendment"] is False
        choice = submission(run, 0, submission_id=f"sub-{run}-0b",
                            answers={"instrument": "patient_power", "patient_choice": "hold_back"})
        second = await http.post("/v1/submissions", json=choice)
        assert second.status_code == 202 and second.json()["is_amendment"] is False
        third = await http.post("/v1/submissions", json=submission(run, 0, submission_id=f"sub-{run}-0c",
                                                                   answers={"instrument": "fft", "fft_answer": 5}))
        assert third.json()["is_amendment"] is True
        fourth = await http.post("/v1/submissions", json={**choice, "submission_id": f"sub-{run}-0d",
                                                          "answers": {"instrument": "patient_power", "patient_choice": "pay_in_full"}})
        assert fourth.json()["is_amendment"] is True
        other_patient = await http.post("/v1/submissions", json=submission(run, 1, episode_id=f"ep-{run}-0"))
        assert other_patient.json()["is_amendment"] is False  # per episode *and patient*
        by_id = {e["data"]["submission_id"]: e["data"] for e in await read_mine(kafka_bootstrap, FEEDBACK_RECEIVED.name, f"sub-{run}", expect=5)}
        assert by_id[f"sub-{run}-0"]["amends_submission_id"] is None
        assert by_id[f"sub-{run}-0b"]["amends_submission_id"] is None
        assert by_id[f"sub-{run}-0c"]["amends_submission_id"] == f"sub-{run}-0"
        assert by_id[f"sub-{run}-0d"]["amends_submission_id"] == f"sub-{run}-0b"
    rows = await db_rows(settings.database_url, "SELECT submission_id, is_amendment, answers FROM submissions"
                         " WHERE submission_id LIKE $1 ORDER BY 1", f"sub-{run}-%")
    assert len(rows) == 5
    assert json.loads(rows[0]["answers"]) == {"instrument": "fft", "fft_answer": 2}
    conn = await asyncpg.connect(settings.database_url)
    try:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("UPDATE submissions SET answers = '{}' WHERE submission_id = $1", f"sub-{run}-0")
    finally:
        await conn.close()


async def test_key_rotation_keeps_idempotency_and_first_decision(database, kafka_bootstrap) -> None:
    run = uuid.uuid4().hex[:6]
    old = FeedbackSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                           consumer_group=f"feedback-{run}", pseudonym_key=SecretStr("k1" * 16), pseudonym_key_id="k1")
    async with running(create_app(old)) as http:
        assert (await http.post("/v1/submissions", json=submission(run, 0))).status_code == 202
    new = old.model_copy(update={"pseudonym_key": SecretStr("k2" * 16), "pseudonym_key_id": "k2",
                                 "consumer_group": f"feedback-{run}-2",
                                 "pseudonym_previous_keys": {"k1": SecretStr("k1" * 16)}})
    async with running(create_app(new)) as http:
        again = await http.post("/v1/submissions", json=submission(run, 0))
        assert again.status_code == 200, again.text
        later = await http.post("/v1/submissions", json=submission(run, 0, submission_id=f"sub-{run}-later"))
        assert later.json()["is_amendment"] is True
    rows = await db_rows(database, "SELECT pseudonym_key_id, patient_pseudonym FROM submissions WHERE submission_id LIKE $1"
                         " ORDER BY received_at", f"sub-{run}-%")
    assert [r["pseudonym_key_id"] for r in rows] == ["k1", "k2"]
    assert rows[0]["patient_pseudonym"] != rows[1]["patient_pseudonym"]


# ---------------------------------------------------------------------------------------------
# FHIR
# ---------------------------------------------------------------------------------------------
async def test_fhir_questionnaire_response(settings, kafka_bootstrap) -> None:
    run = uuid.uuid4().hex[:6]
    async with running(create_app(settings)) as http:
        qr = questionnaire_response(run, 0)
        r = await http.post("/v1/fhir/QuestionnaireResponse", content=json.dumps(qr), headers=FHIR)
        assert r.status_code == 202, r.text
        assert r.json() == {"submission_id": f"qr-{run}-0", "status": "created", "is_amendment": False,
                            "scores": {"fft_positive": False, "fft_negative": True}}
        again = await http.post("/v1/fhir/QuestionnaireResponse", content=json.dumps(qr), headers=FHIR)
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        other = questionnaire_response(run, 0, items=[{"linkId": "fft", "answer": [{"valueCoding": {"code": "1"}}]}])
        conflict = await http.post("/v1/fhir/QuestionnaireResponse", content=json.dumps(other), headers=FHIR)
        assert conflict.status_code == 409, conflict.text
        assert conflict.json()["errors"] == [{"field": "identifier.value", "message": "already used with different content"}]
        amended = questionnaire_response(run, 0, status="amended", meta={"versionId": "2"}, items=[
            {"linkId": "fft", "answer": [{"valueCoding": {"code": "2"}}]}])
        a = await http.post("/v1/fhir/QuestionnaireResponse", content=json.dumps(amended), headers=FHIR)
        assert a.status_code == 202, a.text
        assert a.json()["submission_id"] == f"qr-{run}-0:amended:2" and a.json()["is_amendment"] is True

        ohs_items = [{"linkId": f"ohs-{i}", "answer": [{"valueInteger": 3}]} for i in range(1, 13)]
        ohs_items += [{"linkId": "timing", "answer": [{"valueCoding": {"code": "pre_op"}}]},
                      {"linkId": "procedure", "answer": [{"valueCoding": {"code": "primary_hip_replacement"}}]}]
        ohs = await http.post("/v1/fhir/QuestionnaireResponse", headers=FHIR,
                              content=json.dumps(questionnaire_response(run, 1, questionnaire="ohs", items=ohs_items)))
        assert ohs.status_code == 202, ohs.text
        assert ohs.json()["scores"] == {"oxford_total": 36}
        eq = [{"linkId": link, "answer": [{"valueCoding": {"code": code}}]} for link, code in
              [("eq5d-mobility", "1"), ("eq5d-self-care", "2"), ("eq5d-usual-activities", "3"), ("eq5d-pain-discomfort", "4"),
               ("eq5d-anxiety-depression", "5")]] + [{"linkId": "eq5d-vas", "answer": [{"valueInteger": 55}]}]
        eq5d = await http.post("/v1/fhir/QuestionnaireResponse", headers=FHIR,
                               content=json.dumps(questionnaire_response(run, 2, questionnaire="eq5d5l", items=eq)))
        assert eq5d.json()["scores"] == {"eq5d_profile": "12345", "eq_vas": 55}
        pp = await http.post("/v1/fhir/QuestionnaireResponse", headers=FHIR, content=json.dumps(questionnaire_response(
            run, 3, questionnaire="patient-power", items=[{"linkId": "patient-power", "answer": [{"valueCoding": {"code": "pay_in_full"}}]}])))
        assert pp.status_code == 202, pp.text

        async def refused(resource: Any, field: str, *, status: int = 422, headers: dict | None = None) -> dict:
            resp = await http.post("/v1/fhir/QuestionnaireResponse", content=json.dumps(resource), headers=headers or FHIR)
            assert resp.status_code == status, resp.text
            assert resp.headers["content-type"] == "application/problem+json"
            body = resp.json()
            assert any(field in e["field"] for e in body["errors"]), body
            return body

        for status in ("in-progress", "entered-in-error", "stopped"):
            body = await refused(questionnaire_response(run, 4, status=status), "status")
            assert f"status '{status}' is not accepted: only completed or amended" in body["detail"]
        await refused(questionnaire_response(run, 4, nhs="9990000019"), "subject.identifier.value")
        await refused(questionnaire_response(run, 4, items=[{"linkId": "fft", "answer": [{"valueCoding": {"code": "7"}}]}]), "linkId 'fft'")
        await refused(questionnaire_response(run, 4, items=[{"linkId": "colour", "answer": [{"valueString": "x"}]}]), "item[0].linkId")
        await refused(questionnaire_response(run, 4, questionnaire="hcahps"), "questionnaire")
        await refused(questionnaire_response(run, 4, questionnaire="ohs", items=ohs_items[:11]), "item")
        await refused({**questionnaire_response(run, 4), "authored": "2026-11-01"}, "authored")
        await refused({**questionnaire_response(run, 4), "extension": []}, "extension")
        await refused({**questionnaire_response(run, 4), "resourceType": "Patient"}, "resourceType")
        no_subject = questionnaire_response(run, 4)
        no_subject["subject"] = {"identifier": {"system": "https://example/other", "value": "x"}}
        await refused(no_subject, "subject.identifier")
        await refused(questionnaire_response(run, 4), "content-type", status=415, headers={"content-type": "text/plain"})
        bad_nhs = await http.post("/v1/fhir/QuestionnaireResponse", headers=FHIR,
                                  content=json.dumps(questionnaire_response(run, 4, nhs="9990000019")))
        assert "9990000019" not in bad_nhs.text
        assert bad_nhs.json()["errors"][0]["message"].startswith("not a valid NHS number")  # no "Value error, "
        mine = {e["data"]["submission_id"]: e["data"] for e in await read_mine(kafka_bootstrap, FEEDBACK_RECEIVED.name, f"qr-{run}", expect=5)}
        assert set(mine) == {f"qr-{run}-0", f"qr-{run}-0:amended:2", f"qr-{run}-1", f"qr-{run}-2", f"qr-{run}-3"}
        assert mine[f"qr-{run}-0:amended:2"]["amends_submission_id"] == f"qr-{run}-0"
        assert mine[f"qr-{run}-0"]["provider_code"] == "RJ1" and mine[f"qr-{run}-0"]["fft_answer"] == 4
    rows = await db_rows(settings.database_url, "SELECT free_text, channel FROM submissions WHERE submission_id = $1", f"qr-{run}-0")
    assert rows == [{"free_text": "Waited four hours", "channel": "fhir"}]


# ---------------------------------------------------------------------------------------------
# Kafka intake and its dead-letter topic
# ---------------------------------------------------------------------------------------------
async def test_kafka_intake_stores_and_dead_letters_with_reason_redacted(settings, kafka_bootstrap) -> None:
    run = uuid.uuid4().hex[:6]
    good = submission(run, 0, submission_id=f"kafka-{run}-0")
    bad_nhs = submission(run, 1, submission_id=f"kafka-{run}-1", nhs_number="9990000019")
    bad_answer = submission(run, 2, submission_id=f"kafka-{run}-2", answers={"instrument": "fft", "fft_answer": 9})
    conflicting = {**good, "answers": {"instrument": "fft", "fft_answer": 5}}
    garbage = f"not json, patient {patient(3)[:3]} {patient(3)[3:6]} {patient(3)[6:]}".encode()
    async with running(create_app(settings)) as http:
        await publish(kafka_bootstrap, FEEDBACK_SUBMITTED.name, [
            (good["episode_id"].encode(), intake_envelope(good), {"correlation_id": f"c-{run}"}),
            (bad_nhs["episode_id"].encode(), intake_envelope(bad_nhs), {}),
            (bad_answer["episode_id"].encode(), intake_envelope(bad_answer), {}),
            (good["episode_id"].encode(), intake_envelope(conflicting), {}),
            (patient(4).encode(), garbage, {"note": f"nhs {patient(4)}"}),
            (good["episode_id"].encode(), intake_envelope(good), {}),  # redelivery: a duplicate, not a dead letter
        ])
        _, dlq = await read_until(kafka_bootstrap, FEEDBACK_SUBMITTED_DLQ.name,
                                  lambda r: run.encode() in r.value or r.value.startswith(b"not json"), expect=4)
        assert len(dlq) == 4, [r.headers for r in dlq]
        reasons = {}
        for rec in dlq:
            headers = {k: v.decode() for k, v in rec.headers}
            assert headers["dlq_source_topic"] == FEEDBACK_SUBMITTED.name
            blob = rec.value + (rec.key or b"") + json.dumps(headers).encode()
            for n in (1, 2, 3, 4):
                assert patient(n).encode() not in blob
                assert " ".join([patient(n)[:3], patient(n)[3:6], patient(n)[6:]]).encode() not in blob
            assert b"9990000019" not in blob
            reasons[rec.offset] = (headers["dlq_kind"], headers["dlq_reason"])
        kinds_reasons = sorted(reasons.values())
        assert any(k == "invalid" and "data.nhs_number" in r and "not a valid NHS number" in r for k, r in kinds_reasons)
        assert not any("Value error" in r for _, r in kinds_reasons)  # pydantic's prefix removed
        assert any(k == "invalid" and "fft_answer" in r for k, r in kinds_reasons)
        assert any(k == "rejected" and "different content" in r for k, r in kinds_reasons)
        assert any(k == "invalid" and "JSON" in r for k, r in kinds_reasons)
        garbage_dl = next(rec for rec in dlq if rec.value.startswith(b"not json"))
        assert garbage_dl.value == b"not json, patient [redacted]" and garbage_dl.key == b"[redacted]"
        rows = await eventually(lambda: db_rows(settings.database_url, "SELECT submission_id, channel FROM submissions"
                                                " WHERE submission_id LIKE $1", f"kafka-{run}-%"))
        assert rows == [{"submission_id": f"kafka-{run}-0", "channel": "kafka"}]
        mine = await read_mine(kafka_bootstrap, FEEDBACK_RECEIVED.name, f"kafka-{run}", expect=2, timeout_s=3)
        assert [e["data"]["submission_id"] for e in mine] == [f"kafka-{run}-0"]
        assert (await http.get("/health")).status_code == 200


# ---------------------------------------------------------------------------------------------
# PROM pairing and reports
# ---------------------------------------------------------------------------------------------
async def test_prom_pairing_health_gain_and_report(settings) -> None:
    run = uuid.uuid4().hex[:6]
    pre_at, post_at = NOW - timedelta(days=200), NOW - timedelta(days=10)
    async with running(create_app(settings)) as http:
        gains = []
        for n in range(6):
            pre_items = [1] * 12                   # total 12
            post_items = [3] * 12 if n < 5 else [4] * 12  # 36 or 48
            r = await http.post("/v1/submissions", json=oxford(run, n, "pre_op", pre_items, authored=pre_at))
            assert r.status_code == 202 and "health_gain" not in r.json()["scores"]
            r = await http.post("/v1/submissions", json=oxford(run, n, "post_op", post_items, authored=post_at))
            assert r.status_code == 202, r.text
            gains.append(r.json()["scores"]["health_gain"])
            assert r.json()["scores"]["paired_with"] == f"ohs-pre_op-{run}-{n}"
        assert gains == [24] * 5 + [36]
        # Post-operative first, then pre-operative: paired on the second arrival.
        r = await http.post("/v1/submissions", json=oxford(run, 7, "post_op", [2] * 12, authored=post_at, instrument="oks",
                                                           procedure="primary_knee_replacement"))
        r = await http.post("/v1/submissions", json=oxford(run, 7, "pre_op", [1] * 12, authored=pre_at, instrument="oks",
                                                           procedure="primary_knee_replacement"))
        assert r.json()["scores"]["health_gain"] == 12
        # A second pre-op answer is an amendment and does not re-pair.
        r = await http.post("/v1/submissions", json={**oxford(run, 0, "pre_op", [0] * 12, authored=pre_at),
                                                     "submission_id": f"ohs-pre2-{run}"})
        assert r.json()["is_amendment"] is True and "health_gain" not in r.json()["scores"]
        # Post-op authored before pre-op: not paired.
        await http.post("/v1/submissions", json=oxford(run, 8, "pre_op", [1] * 12, authored=post_at))
        r = await http.post("/v1/submissions", json=oxford(run, 8, "post_op", [4] * 12, authored=pre_at))
        assert "health_gain" not in r.json()["scores"]

        report = (await http.get("/v1/reports/proms", params={"procedure": "primary_hip_replacement", "min_count": 5})).json()
        assert report["groups"] == [{"provider_code": "RRV", "instrument": "ohs", "procedure": "primary_hip_replacement",
                                     "pairs": 6, "avg_pre": 12.0, "avg_post": 38.0, "avg_health_gain": 26.0, "suppressed": False,
                                     "pct_improved": 100.0, "avg_index_gain": None, "value_set": None}]
        default = (await http.get("/v1/reports/proms")).json()
        assert default["min_count"] == 30 and all(g["suppressed"] and g["avg_health_gain"] is None for g in default["groups"])
        assert {g["procedure"] for g in default["groups"]} == {"primary_hip_replacement", "primary_knee_replacement"}
        low = await http.get("/v1/reports/proms", params={"min_count": 2})
        assert low.status_code == 422 and low.json()["errors"][0]["field"] == "min_count"
        bad = await http.get("/v1/reports/proms", params={"procedure": "Hip Replacement"})
        assert bad.status_code == 422 and "procedure" in bad.json()["errors"][0]["field"]


async def test_eq5d_pairs_are_valued_under_the_configured_value_set(settings) -> None:
    """EQ-5D-5L pairs keep both health states; the PROM report values them at report time under
    FEEDBACK_EQ5D_VALUE_SET_FILE (here the shipped, invented example) and names the set."""
    run = uuid.uuid4().hex[:6]
    example = Path(__file__).resolve().parents[2] / "services" / "feedback" / "value_sets" / "example-not-for-use.toml"
    pre_at, post_at = NOW - timedelta(days=200), NOW - timedelta(days=10)

    def eq5d(n: int, timing: str, state: str, vas: int, authored: datetime) -> dict:
        levels = dict(zip(("mobility", "self_care", "usual_activities", "pain_discomfort", "anxiety_depression"),
                          (int(c) for c in state)))
        return submission(run, n, submission_id=f"eq-{timing}-{run}-{n}", episode_id=f"op-{run}-{n}", provider_code="RRV",
                          authored_at=authored.isoformat(), free_text=None,
                          answers={"instrument": "eq5d5l", **levels, "vas": vas, "timing": timing, "procedure": "eq_hip_test"})

    async with running(create_app(settings.model_copy(update={"eq5d_value_set_file": example}))) as http:
        for n in range(5):  # 21143 (0.500) -> 11111 (1.000) for four patients; the fifth 11111 -> 21143
            before, after = ("21143", "11111") if n < 4 else ("11111", "21143")
            assert (await http.post("/v1/submissions", json=eq5d(n, "pre_op", before, 40, pre_at))).status_code == 202
            r = await http.post("/v1/submissions", json=eq5d(n, "post_op", after, 70 if n < 4 else 30, post_at))
            assert r.status_code == 202 and r.json()["scores"]["health_gain"] == (30 if n < 4 else -10)
        report = (await http.get("/v1/reports/proms", params={"procedure": "eq_hip_test", "min_count": 5})).json()
        [group] = report["groups"]
        assert (group["pairs"], group["pct_improved"], group["avg_health_gain"]) == (5, 80.0, 22.0)
        assert group["avg_index_gain"] == 0.3 and group["value_set"] == "example-not-for-use@1"  # (4 x 0.5 - 0.5) / 5
        assert "example-not-for-use@1" in report["rule"]
    bad = settings.model_copy(update={"eq5d_value_set_file": example.with_name("missing.toml")})
    with pytest.raises(ValueError, match="missing.toml"):
        create_app(bad)


async def test_fft_report_with_primary_and_secondary_suppression(settings) -> None:
    run = uuid.uuid4().hex[:6]
    month = NOW.replace(day=15, hour=12, minute=0, second=0, microsecond=0) - timedelta(days=40)
    period = month.strftime("%Y-%m")
    plan = {"RGT": [1] * 6 + [2] * 2 + [4] * 2, "RH8": [1, 5, 6], "RRK": [2] * 5 + [5], "RR8": []}
    batch, n = [], 0
    for provider, answers in plan.items():
        for a in answers:
            batch.append(submission(run, n, provider_code=provider, authored_at=month.isoformat(),
                                    answers={"instrument": "fft", "fft_answer": a}))
            n += 1
    # RR8 answered only in another month; an amendment at RGT must not count.
    batch.append(submission(run, n, provider_code="RR8", authored_at=(month - timedelta(days=40)).isoformat()))
    batch.append(submission(run, 0, submission_id=f"sub-{run}-amend", authored_at=month.isoformat(),
                            answers={"instrument": "fft", "fft_answer": 5}))
    async with running(create_app(settings)) as http:
        r = await http.post("/v1/submissions/batch", json=batch)
        assert r.json()["accepted"] == len(batch), r.text
        report = (await http.get("/v1/reports/fft", params={"period": period})).json()
        rows = {p["provider_code"]: p for p in report["providers"]}
        assert rows["RGT"] == {"provider_code": "RGT", "responses": 10, "pct_positive": 80, "pct_negative": 20,
                               "suppression": "none", "counts": {"very_good": 6, "good": 2, "neither": 0, "poor": 2,
                                                                 "very_poor": 0, "dont_know": 0}}
        assert rows["RH8"] == {"provider_code": "RH8", "responses": None, "counts": None, "pct_positive": None,
                               "pct_negative": None, "suppression": "primary"}
        assert rows["RRK"] == {"provider_code": "RRK", "responses": None, "counts": None, "pct_positive": 83,
                               "pct_negative": 17, "suppression": "secondary"}
        assert rows["RR8"]["responses"] == 0 and rows["RR8"]["suppression"] == "none"
        assert report["total"]["responses"] == 19
        bad = await http.get("/v1/reports/fft", params={"period": "2026-13"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.period"


# ---------------------------------------------------------------------------------------------
# Privacy: no NHS number in the database, the events or the logs
# ---------------------------------------------------------------------------------------------
class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage() + (self.formatException(record.exc_info) if record.exc_info else ""))
        except Exception:  # a record that cannot format is still evidence
            self.lines.append(repr(record.msg) + repr(record.args))

    def formatException(self, exc_info: Any) -> str:  # noqa: N802
        return logging.Formatter().formatException(exc_info)


@pytest.fixture
def captured_logs() -> Iterator[_Capture]:
    handler = _Capture()
    root = logging.getLogger()
    names = ["", "faststream", "aiokafka", "uvicorn", "httpx", "services", "shared"]
    levels = {n: logging.getLogger(n).level for n in names}
    root.addHandler(handler)
    for n in names:
        logging.getLogger(n).setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


async def test_no_nhs_number_in_database_events_or_logs(settings, kafka_bootstrap, captured_logs) -> None:
    run = uuid.uuid4().hex[:6]
    used = [patient(50 + n) for n in range(8)] + ["9990000019"]
    async with running(create_app(settings)) as http:
        await http.post("/v1/submissions", json=submission(run, 0, nhs_number=used[0]))
        await http.post("/v1/submissions", json=submission(run, 1, nhs_number=used[1][:3] + " " + used[1][3:6] + " " + used[1][6:]))
        await http.post("/v1/submissions", json=submission(run, 2, nhs_number=used[8]))  # invalid
        echoed = await http.post("/v1/submissions", json={**submission(run, 9), used[0]: "x"})  # unexpected key
        assert echoed.status_code == 422 and used[0] not in echoed.text
        await http.post("/v1/submissions/batch", json=[submission(run, 3, nhs_number=used[2]),
                                                      submission(run, 4, nhs_number=used[8]),
                                                      submission(run, 5, nhs_number=used[3], answers={"instrument": "fft", "fft_answer": 0})])
        await http.post("/v1/fhir/QuestionnaireResponse", headers=FHIR,
                        content=json.dumps(questionnaire_response(run, 6, nhs=used[4])))
        await http.post("/v1/fhir/QuestionnaireResponse", headers=FHIR,
                        content=json.dumps(questionnaire_response(run, 7, nhs=used[5], status="in-progress")))
        await http.post("/v1/fhir/QuestionnaireResponse", headers=FHIR,
                        content=json.dumps(questionnaire_response(run, 7, nhs=used[5], questionnaire=used[5])))
        good = submission(run, 8, submission_id=f"kafka-{run}", nhs_number=used[6])
        await publish(kafka_bootstrap, FEEDBACK_SUBMITTED.name, [
            (b"k", intake_envelope(good), {}),
            (b"k", intake_envelope({**good, "submission_id": f"kafka-{run}-bad", "nhs_number": used[8]}), {}),
            (b"k", intake_envelope({**good, "submission_id": f"kafka-{run}-bad2", "answers": {"instrument": used[7]}}), {}),
            (used[7].encode(), f"garbage {used[7]}".encode(), {"x": used[7]}),
        ])
        dlq, _ = await read_until(kafka_bootstrap, FEEDBACK_SUBMITTED_DLQ.name,
                                  lambda r: run.encode() in r.value or r.value.startswith(b"garbage"), expect=3)
        received, _ = await read_until(kafka_bootstrap, FEEDBACK_RECEIVED.name, lambda r: run.encode() in r.value, expect=4)
        await eventually(lambda: db_rows(settings.database_url, "SELECT 1 FROM submissions WHERE submission_id = $1", f"kafka-{run}"))
    assert len(dlq) >= 3 and len(received) >= 4
    conn = await asyncpg.connect(settings.database_url)
    try:
        tables = [r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        dump = ""
        for t in tables:
            dump += json.dumps([dict(r) for r in await conn.fetch(f'SELECT * FROM "{t}"')], default=str)
    finally:
        await conn.close()
    assert {"submissions", "outbox", "prom_pairs"} <= set(tables)
    published = "".join(
        r.value.decode(errors="replace") + (r.key or b"").decode(errors="replace") + repr(r.headers) for r in dlq + received
    )
    logs = "\n".join(captured_logs.lines)
    assert len(captured_logs.lines) > 0 and "dead-lettered" in logs
    for number in used:
        spaced = f"{number[:3]} {number[3:6]} {number[6:]}"
        for where, text in (("database", dump), ("events", published), ("logs", logs)):
            assert number not in text, f"NHS number found in {where}"
            assert spaced not in text, f"spaced NHS number found in {where}"
    assert "spotless" not in published  # free text stays in the store


async def test_batch_item_failing_in_the_database_fails_alone(settings) -> None:
    """A database error in one item (a trigger that fails for it) rolls back the set-based path;
    the batch is stored again with a savepoint per item, so only that item fails."""
    from shared.db import migrate

    conn = await asyncpg.connect(settings.database_url)
    try:
        await migrate(conn, "shared", "services.feedback")
        await conn.execute(
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.submission_id LIKE '%-boom' THEN PERFORM 1 / 0; END IF; RETURN NEW; END $$;"
            " CREATE TRIGGER boom BEFORE INSERT ON submissions FOR EACH ROW EXECUTE FUNCTION boom()")
    finally:
        await conn.close()
    run = uuid.uuid4().hex[:6]
    async with running(create_app(settings)) as http:
        r = await http.post("/v1/submissions/batch", json=[
            submission(run, 0), submission(run, 1, submission_id=f"sub-{run}-boom"), submission(run, 2)])
        out = r.json()
        assert r.status_code == 200, r.text
        assert [i["outcome"] for i in out["items"]] == ["created", "error", "created"]
        assert out["items"][1]["status"] == 500 and "22012" in out["items"][1]["detail"]
        # (the intake consumer may also store earlier tests' Kafka messages: look at this run only)
        rows = await db_rows(settings.database_url, "SELECT submission_id FROM submissions WHERE submission_id LIKE $1 ORDER BY 1",
                             f"sub-{run}-%")
        assert [r["submission_id"] for r in rows] == [f"sub-{run}-0", f"sub-{run}-2"]
        # Exactly two events left through the outbox (the failed item wrote none). Published rows
        # are deleted, so count what reached the topic.
        await http._transport.app.state.runtime.relay.drain()  # type: ignore[attr-defined]
        records = await read_topic(settings.kafka_bootstrap_servers, FEEDBACK_RECEIVED.name, expect=10_000, timeout_s=3)
        assert len([r for r in records if f"sub-{run}-".encode() in r.value]) == 2

