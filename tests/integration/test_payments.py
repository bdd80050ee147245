"""Payments service against real PostgreSQL and the real broker (the ledger is not running:
these tests read the transfer requests payments publishes, two-phase model by default).
The full lifecycle with the ledger running is in test_payments_lifecycle*.py."""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from services.payments.app import create_app
from services.payments.settings import PaymentsSettings
from shared.contracts import FeedbackReceived, PaymentRequested, envelope
from shared.topics import FEEDBACK_RECEIVED, LEDGER_TRANSFER_REQUESTS, PAYMENTS_REQUESTED, PAYMENTS_REQUESTED_DLQ
from tests.conftest import running
from tests.helpers import eventually, publish, read_topic, settle

pytestmark = pytest.mark.integration

SCHEMES = Path(__file__).parent.parent / "e2e" / "schemes"


ACTIVITY = date.today() - timedelta(days=100)  # its period's decision windows have closed: it can be settled


@pytest.fixture
def settings(database, kafka_bootstrap) -> PaymentsSettings:
    return PaymentsSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                            consumer_group=f"payments-{uuid.uuid4().hex[:8]}", schemes_dir=SCHEMES)


def payment(run: str, n: int = 0, **overrides) -> dict:
    body = {"payment_id": f"pay-{run}-{n}", "episode_id": f"ep-{run}-{n}", "commissioner_code": "QWE",
            "provider_code": "RJ1", "service_type": "maternity",
            "activity_date": ACTIVITY.isoformat(), "amount_pence": 123_457}
    return {**body, **overrides}


async def test_http_payment_is_idempotent_and_validated(settings) -> None:
    run = uuid.uuid4().hex[:6]
    async with running(create_app(settings)) as http:
        r = await http.post("/v1/payment-requests", json=payment(run))
        assert r.status_code == 201, r.text
        assert r.json()["at_risk_pence"] == 12_345  # 10% rounded down
        again = await http.post("/v1/payment-requests", json=payment(run))
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        conflict = await http.post("/v1/payment-requests", json=payment(run, amount_pence=1))
        assert conflict.status_code == 409
        assert "amount_pence" in conflict.json()["detail"]
        unknown = await http.post("/v1/payment-requests", json=payment(run, 1, provider_code="ZZZ"))
        assert unknown.status_code == 422
        assert unknown.json()["errors"][0]["field"] == "provider_code"
        bad = await http.post("/v1/payment-requests", json=payment(run, 2, amount_pence=-5))
        assert bad.status_code == 422
        assert bad.headers["content-type"].startswith("application/problem+json")
        assert any(e["field"] == "amount_pence" for e in bad.json()["errors"])
        ep = (await http.get(f"/v1/episodes/ep-{run}-0")).json()
        assert ep["amount_pence"] == 123_457 and ep["paid_now_pence"] == 111_112 and ep["status"] == "held"
        assert (await http.get(f"/v1/episodes/ep-{run}-1")).status_code == 404
    requests = await read_topic(settings.kafka_bootstrap_servers, LEDGER_TRANSFER_REQUESTS.name, expect=2, timeout_s=10)
    mine = {json.loads(r.value)["data"]["transfer_id"]: (r.key, json.loads(r.value)["data"]) for r in requests}
    pay, hold = mine[f"pay:pay-{run}-0"], mine[f"hold:pay-{run}-0"]
    # Keyed by the payment id (ordering_key) so the pending hold and its release stay in order.
    assert pay[0] == hold[0] == f"pay-{run}-0".encode()
    assert (pay[1]["kind"], hold[1]["kind"]) == ("posted", "pending")
    assert {leg["account_id"]: leg["amount_pence"] for leg in pay[1]["legs"]} == {"commissioner:QWE": -111_112, "provider:RJ1": 111_112}
    assert {leg["account_id"]: leg["amount_pence"] for leg in hold[1]["legs"]} == {"commissioner:QWE": -12_345, "provider:RJ1": 12_345}


async def test_http_batch_is_one_transaction_with_an_outcome_per_item(settings) -> None:
    """Each item gets the outcome it would get alone, in order; rejections write nothing."""
    run = uuid.uuid4().hex[:6]
    async with running(create_app(settings)) as http:
        assert (await http.post("/v1/payment-requests", json=payment(run, 9))).status_code == 201  # stored before
        body = [
            payment(run, 0),                          # created
            {"payment_id": f"pay-{run}-x"},           # invalid: schema
            payment(run, 1, provider_code="ZZZ"),     # invalid: unknown code (decided by the core)
            payment(run, 0),                          # duplicate of item 0, same batch
            payment(run, 0, amount_pence=5),          # conflict with item 0, same batch
            payment(run, 9),                          # duplicate of a stored payment
            payment(run, 9, amount_pence=7),          # conflict with a stored payment
            payment(run, 2),                          # created
        ]
        r = await http.post("/v1/payment-requests/batch", json=body, headers={"X-Correlation-ID": f"batch-{run}"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert [i["outcome"] for i in out["items"]] == [
            "created", "invalid", "invalid", "duplicate", "conflict", "duplicate", "conflict", "created"]
        assert [i["index"] for i in out["items"]] == list(range(len(body)))
        assert (out["accepted"], out["rejected"]) == (4, 4)
        assert "amount_pence" in out["items"][4]["detail"]
        assert (await http.get(f"/v1/episodes/ep-{run}-0")).json()["amount_pence"] == 123_457
        assert (await http.get(f"/v1/episodes/ep-{run}-1")).status_code == 404
        assert (await http.get(f"/v1/episodes/ep-{run}-2")).status_code == 200
    requests = await read_topic(settings.kafka_bootstrap_servers, LEDGER_TRANSFER_REQUESTS.name, expect=10_000, timeout_s=5)
    mine = sorted(json.loads(r.value)["data"]["transfer_id"] for r in requests if f"-{run}-".encode() in r.value)
    assert mine == sorted(f"{k}:pay-{run}-{n}" for k in ("pay", "hold") for n in (0, 2, 9))  # each once
    by_id = {json.loads(r.value)["data"]["transfer_id"]: json.loads(r.value) for r in requests}
    assert by_id[f"pay:pay-{run}-2"]["correlation_id"] == f"batch-{run}"


async def test_kafka_feedback_before_payment_then_settlement(settings, kafka_bootstrap) -> None:
    run = uuid.uuid4().hex[:6]
    authored = datetime(ACTIVITY.year, ACTIVITY.month, ACTIVITY.day, 12, tzinfo=timezone.utc) + timedelta(days=1)
    fb = FeedbackReceived(submission_id=f"s-{run}", episode_id=f"ep-{run}-0", provider_code="RJ1",
                          patient_pseudonym="a" * 64, instrument="fft", authored_at=authored, fft_answer=5)
    pr = PaymentRequested.model_validate(payment(run))
    fb_raw = envelope(fb, "feedback.received.v1", producer="test", correlation_id=run).model_dump_json().encode()
    pr_raw = envelope(pr, "payments.requested.v1", producer="test", correlation_id=run).model_dump_json().encode()
    # Feedback first, each event twice, plus one malformed payment request.
    await publish(kafka_bootstrap, FEEDBACK_RECEIVED.name, [(pr.episode_id.encode(), fb_raw, {})] * 2)
    await publish(kafka_bootstrap, PAYMENTS_REQUESTED.name, [(pr.episode_id.encode(), pr_raw, {})] * 2
                  + [(b"x", b'{"type": "payments.requested.v1"}', {"correlation_id": "bad"})])
    async with running(create_app(settings)) as http:
        async def decided():
            r = await http.get(f"/v1/episodes/{pr.episode_id}")
            return r.status_code == 200 and r.json()["answers"] and r.json()

        ep = await eventually(decided)
        assert len(ep["answers"]) == 1
        assert ep["decision"]["release_bps"] == 0 and ep["decision"]["final"] is False
        period = pr.activity_date.strftime("%Y-%m")
        reports = await settle(http, "", {"period": period})
        assert [r["diverted_pence"] for r in reports] == [12_345]
        assert await settle(http, "", {"period": period}) == []
        ep = (await http.get(f"/v1/episodes/{pr.episode_id}")).json()
        assert ep["status"] == "settled" and ep["decision"]["final"] is True
        assert any("diverted 12345p" in step for step in ep["decision"]["steps"])
        assert {t["transfer_id"] for t in ep["ledger_transfers"]} == {
            f"{prefix}:{pr.payment_id}" for prefix in ("pay", "hold", "release", "divert")}
    dead = await read_topic(kafka_bootstrap, PAYMENTS_REQUESTED_DLQ.name, expect=1, timeout_s=10)
    assert len(dead) == 1
    assert "dlq_reason" in {k for k, _ in dead[0].headers}
    requests = await read_topic(kafka_bootstrap, LEDGER_TRANSFER_REQUESTS.name, expect=100, timeout_s=5)
    by_id = {json.loads(r.value)["data"]["transfer_id"]: json.loads(r.value)["data"] for r in requests}
    release, divert = by_id[f"release:{pr.payment_id}"], by_id[f"divert:{pr.payment_id}"]
    assert (release["kind"], release["pending_id"], release["legs"]) == ("void_pending", f"hold:{pr.payment_id}", [])
    assert {leg["account_id"]: leg["amount_pence"] for leg in divert["legs"]} == {"commissioner:QWE": -12_345, "fund:Y56": 12_345}
    assert {r.key for r in requests if json.loads(r.value)["data"]["cause"]["payment_id"] == pr.payment_id} == {pr.payment_id.encode()}


async def test_a_race_the_unit_of_work_cannot_resolve_is_a_409_with_errors(settings, monkeypatch) -> None:
    """Concurrent writers of the same ids on every try (the unit of work gave up): the client is
    told to send it again; the single route is a batch of one and answers the same way."""
    from services.payments.handlers import PaymentsHandlers
    from shared.uow import Raced

    async def always_raced(self, commands):  # type: ignore[no-untyped-def]
        raise Raced("another writer every time")

    monkeypatch.setattr(PaymentsHandlers, "accept_payments", always_raced)
    run = uuid.uuid4().hex[:6]
    async with running(create_app(settings)) as http:
        for path, body in (("/v1/payment-requests", payment(run)), ("/v1/payment-requests/batch", [payment(run)])):
            r = await http.post(path, json=body)
            assert r.status_code == 409 and r.headers["content-type"].startswith("application/problem+json"), r.text
            assert "send it again" in r.json()["detail"] and r.json()["errors"][0]["field"] == "(body)"
