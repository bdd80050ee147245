"""Exemptions over HTTP (issue 16, "Judge fairly"): a regional director exempts a provider-period
for extraordinary circumstances before it settles; settling it then diverts nothing, and the
settlement report and the episode's explanation say why. Real PostgreSQL and broker, the service
in process; tokens minted the documented way."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.payments.app import create_app as create_payments
from services.payments.settings import PaymentsSettings
from shared.auth import bearer_headers
from tests.conftest import running
from tests.helpers import settle

pytestmark = pytest.mark.integration

SCHEMES = Path(__file__).parent.parent / "e2e" / "schemes"  # no minimum sample, no effective cap
ACTIVITY = date.today() - timedelta(days=100)  # its period's decision windows have closed
PERIOD = f"{ACTIVITY:%Y-%m}"
AUTHORED = datetime(ACTIVITY.year, ACTIVITY.month, ACTIVITY.day, 12, tzinfo=timezone.utc) + timedelta(days=2)
LONDON, NORTH_EAST = ["Y56"], ["Y63"]  # RJ1 (Guy's and St Thomas') is in London


def payment(run: str, n: int) -> dict[str, Any]:
    return {"payment_id": f"pay-{run}-{n}", "episode_id": f"ep-{run}-{n}", "commissioner_code": "QWE", "provider_code": "RJ1",
            "service_type": "maternity", "activity_date": ACTIVITY.isoformat(), "amount_pence": 100_000}


@pytest.fixture
async def payments(database, kafka_bootstrap):
    settings = PaymentsSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                                consumer_group=f"ex-{uuid.uuid4().hex[:8]}", schemes_dir=SCHEMES)
    async with running(create_payments(settings), token=None) as http:
        yield http


async def test_an_exempted_provider_period_settles_without_diverting_and_says_why(payments, database) -> None:
    run = uuid.uuid4().hex[:6]
    for n in (1, 2):
        r = await payments.post("/v1/payment-requests", json=payment(run, n), headers=bearer_headers(["payments:write"]))
        assert r.status_code == 201, r.text
    conn = await asyncpg.connect(database)
    try:  # both patients answered Very poor: without the exemption all of the at-risk money would go to the fund
        for n in (1, 2):
            await conn.execute("INSERT INTO answers(submission_id, episode_id, provider_code, instrument, fft_answer, authored_at)"
                               " VALUES ($1, $2, 'RJ1', 'fft', 5, $3)", f"s-{run}-{n}", f"ep-{run}-{n}", AUTHORED)
    finally:
        await conn.close()

    body = {"provider_code": "RJ1", "period": PERIOD, "reason": "cyber attack: records unavailable for three weeks"}
    director = bearer_headers(["payments:exempt"], subject="london.director@nhs", regions=LONDON)
    # Refused: another region, the trust itself, a token without the scope; bad input names the field.
    r = await payments.post("/v1/exemptions", json=body, headers=bearer_headers(["payments:exempt"], subject="ne", regions=NORTH_EAST))
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "provider_code"
    r = await payments.post("/v1/exemptions", json=body, headers=bearer_headers(["payments:exempt"], subject="rj1", ods=["RJ1"]))
    assert r.status_code == 403
    assert (await payments.post("/v1/exemptions", json=body, headers=bearer_headers(["schemes:admin"]))).status_code == 403
    for bad, field in (({"provider_code": "ZZZ"}, "provider_code"), ({"period": "2026-13"}, "period"), ({"reason": ""}, "reason"),
                       ({"exempted_by": "someone.else"}, "exempted_by")):
        r = await payments.post("/v1/exemptions", json={**body, **bad}, headers=director)
        assert r.status_code == 422 and field in [e["field"] for e in r.json()["errors"]], (bad, r.text)

    r = await payments.post("/v1/exemptions", json=body, headers=director)
    assert r.status_code == 201, r.text
    assert r.json()["exempted_by"] == "london.director@nhs" and r.json()["region_code"] == "Y56"
    assert (await payments.post("/v1/exemptions", json=body, headers=director)).status_code == 200  # the same again
    r = await payments.post("/v1/exemptions", json={**body, "reason": "another reason"}, headers=director)
    assert r.status_code == 409

    reader = bearer_headers(["ledger:read"])
    listed = (await payments.get(f"/v1/exemptions?period={PERIOD}", headers=reader)).json()
    assert [(e["provider_code"], e["exempted_by"]) for e in listed] == [("RJ1", "london.director@nhs")]
    assert (await payments.get("/v1/exemptions", headers=bearer_headers(["ledger:read"], regions=NORTH_EAST))).json() == []

    [report] = await settle(payments, "", {"period": PERIOD}, headers=bearer_headers(["schemes:admin"]))
    assert report["exempted"] and report["diverted_pence"] == 0 and report["released_pence"] == report["held_pence"] > 0
    assert report["exemption_reason"] == body["reason"]
    assert any("exempted for extraordinary circumstances by london.director@nhs" in s for s in report["judgement_steps"])
    [listed_report] = (await payments.get(f"/v1/settlements?period={PERIOD}", headers=reader)).json()
    assert listed_report["exempted"] and listed_report["exemption_reason"] == body["reason"]

    episode = (await payments.get(f"/v1/episodes/ep-{run}-1", headers=reader)).json()
    assert episode["diverted_pence"] == 0 and episode["released_pence"] == episode["at_risk_pence"]
    assert any("exempted for extraordinary circumstances" in s and body["reason"] in s for s in episode["decision"]["steps"])
    assert episode["ledger_transfers"] and not [t for t in episode["ledger_transfers"]
                                                if t["kind"] == "diversion" or t["transfer_id"].startswith("divert:")]

    # After the settlement an exemption is too late (a settled diversion is corrected by appeal).
    r = await payments.post("/v1/exemptions", json={**body, "reason": "late"},
                            headers=bearer_headers(["payments:exempt"], subject="other.director"))
    assert r.status_code == 409
