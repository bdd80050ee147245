"""Second-level appeal review against real PostgreSQL, the broker and the ledger, through HTTP: a
rejected appeal, a review asked for by the trust, refused to the appellant and the first decider
(403, and the database refuses it too), upheld by an independent reviewer: the ledger posts
``appeal-review:<payment_id>`` fund -> provider, once; every step is in the appeal's history."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.ledger.app import create_app as create_ledger
from services.ledger.settings import LedgerSettings
from services.payments.app import create_app as create_payments
from services.payments.settings import PaymentsSettings
from shared.auth import bearer_headers
from tests.conftest import running
from tests.helpers import eventually, settle

pytestmark = pytest.mark.integration

SCHEMES = Path(__file__).parent.parent / "e2e" / "schemes"  # no minimum sample, no effective cap
ACTIVITY = date.today() - timedelta(days=100)
PERIOD = f"{ACTIVITY:%Y-%m}"
AUTHORED = datetime(ACTIVITY.year, ACTIVITY.month, ACTIVITY.day, 12, tzinfo=timezone.utc) + timedelta(days=2)
LONDON = ["Y56"]


def group() -> str:
    return f"rv-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def payments(database, kafka_bootstrap):
    settings = PaymentsSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap, consumer_group=group(),
                                schemes_dir=SCHEMES)
    async with running(create_payments(settings), token=None) as http:
        yield http


@pytest.fixture
async def ledger(second_database, kafka_bootstrap):
    settings = LedgerSettings(database_url=second_database, kafka_bootstrap_servers=kafka_bootstrap, consumer_group=group())
    async with running(create_ledger(settings), token=None) as http:
        yield http


async def test_an_independent_review_upholds_a_rejected_appeal_and_the_ledger_pays_back(payments, ledger, database) -> None:
    run = uuid.uuid4().hex[:6]
    body = {"payment_id": f"pay-{run}", "episode_id": f"ep-{run}", "commissioner_code": "QWE", "provider_code": "RJ1",
            "service_type": "maternity", "activity_date": ACTIVITY.isoformat(), "amount_pence": 100_000}
    assert (await payments.post("/v1/payment-requests", json=body, headers=bearer_headers(["payments:write"]))).status_code == 201
    conn = await asyncpg.connect(database)
    try:
        await conn.execute("INSERT INTO answers(submission_id, episode_id, provider_code, instrument, fft_answer, authored_at)"
                           " VALUES ($1, $2, 'RJ1', 'fft', 5, $3)", f"s-{run}", f"ep-{run}", AUTHORED)
        await settle(payments, "", {"period": PERIOD}, headers=bearer_headers(["schemes:admin"]))
        ep = f"/v1/episodes/ep-{run}/appeal"
        trust = bearer_headers(["appeals:write", "appeals:review"], subject="lead@rj1", ods=["RJ1"])
        panel = bearer_headers(["appeals:decide", "appeals:review"], subject="panel@london", regions=LONDON)
        assert (await payments.post(ep, json={"reason": "miscoded"}, headers=trust)).status_code == 201
        r = await payments.post(f"{ep}/review-request", json={"reason": "too early"}, headers=trust)
        assert r.status_code == 409 and "not been decided" in r.json()["detail"]
        assert (await payments.post(f"{ep}/decision", json={"outcome": "rejected", "reason": "answer stands"},
                                    headers=panel)).status_code == 200
        r = await payments.post(f"{ep}/review-request", json={"reason": "the ward's evidence was not seen"}, headers=trust)
        assert r.status_code == 201 and r.json()["review"]["status"] == "requested", r.text
        assert (await payments.post(f"{ep}/review-request", json={"reason": "the ward's evidence was not seen"},
                                    headers=trust)).status_code == 200
        r = await payments.post(f"{ep}/review-request", json={"reason": "again"}, headers=trust)
        assert r.status_code == 409
        for who in (trust, panel):  # the appellant (and requester), the first decider
            r = await payments.post(f"{ep}/review", json={"outcome": "upheld", "reason": "mine"}, headers=who)
            assert r.status_code == 403 and r.json()["errors"][0]["field"] == "(token)"
        r = await payments.post(f"{ep}/review", json={"outcome": "upheld", "reason": "x"},
                                headers=bearer_headers(["appeals:decide"], subject="x"))
        assert r.status_code == 403  # appeals:decide is not appeals:review
        r = await payments.post(f"{ep}/review", json={"outcome": "upheld", "reason": "x"},
                                headers=bearer_headers(["appeals:review"], subject="ne", regions=["Y63"]))
        assert r.status_code == 404

        # The database holds the reviewer independent too, whatever the code does.
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE appeals SET review_status = 'rejected', review_decided_by = decided_by,"
                               " review_decided_at = now(), review_decision_reason = 'x' WHERE episode_id = $1", f"ep-{run}")

        reviewer = bearer_headers(["appeals:review"], subject="independent.reviewer@nhs")
        r = await payments.post(f"{ep}/review", json={"outcome": "upheld", "reason": "the evidence shows miscoding"},
                                headers=reviewer)
        assert r.status_code == 200, r.text
        appeal = r.json()
        assert (appeal["status"], appeal["review"]["status"], appeal["review"]["transfer_id"]) == (
            "rejected", "upheld", f"appeal-review:pay-{run}")
        assert [(h["step"], h["actor"]) for h in appeal["history"]] == [
            ("appealed", "lead@rj1"), ("rejected", "panel@london"), ("review_requested", "lead@rj1"),
            ("review_upheld", "independent.reviewer@nhs")]
        again = await payments.post(f"{ep}/review", json={"outcome": "upheld", "reason": "the evidence shows miscoding"},
                                    headers=reviewer)
        assert again.status_code == 200
        assert (await payments.post(f"{ep}/review", json={"outcome": "rejected", "reason": "no"},
                                    headers=reviewer)).status_code == 409

        reader = bearer_headers(["ledger:read"])
        view = (await payments.get(f"/v1/episodes/ep-{run}", headers=reader)).json()
        assert view["appealed_back_pence"] == view["diverted_pence"] == 10_000
        figures = (await payments.get(f"/v1/providers/RJ1/periods/{PERIOD}", headers=reader)).json()
        assert (figures["appealed_back_pence"], figures["net_diverted_pence"], figures["appeals_upheld"]) == (10_000, 0, 1)

        async def posted() -> dict[str, Any] | None:
            t = await ledger.get(f"/v1/transfers/appeal-review:pay-{run}", headers=reader)
            return t.json() if t.status_code == 200 else None

        transfer = await eventually(posted, timeout_s=60)
        assert sorted((leg["account_id"], leg["amount_pence"]) for leg in transfer["legs"]) == [
            ("fund:Y56", -10_000), ("provider:RJ1", 10_000)]
        fund = (await ledger.get("/v1/accounts/fund:Y56/balance", headers=reader)).json()
        assert fund["posted_pence"] == 0  # diverted in, reviewed back out (one partition per payment: in order)
        assert await conn.fetchval("SELECT count(*) FROM ledger_transfers WHERE transfer_id LIKE 'appeal%'") == 1
    finally:
        await conn.close()
