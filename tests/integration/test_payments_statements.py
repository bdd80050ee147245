"""Provisional, then final (scheme option ``[review]``) against real PostgreSQL and the broker,
through HTTP: settling writes a provisional statement (published on payments.statements.v1) and
moves no money; the trust queries it, a regional reviewer corrects it (an episode excluded), the
trust accepts it; finalisation moves the money once, with the correction applied: the final
report, the episodes and the ledger transfers show the corrected episode released in full."""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.payments.app import create_app as create_payments
from services.payments.settings import PaymentsSettings
from shared.auth import bearer_headers
from shared.contracts import Envelope, SettlementStatement
from shared.topics import PAYMENTS_STATEMENTS
from tests.conftest import running
from tests.helpers import read_topic, settle

pytestmark = pytest.mark.integration

SCHEMES = Path(__file__).parent / "schemes_review"  # [review] correction_window_days = 7
ACTIVITY = date.today() - timedelta(days=100)
PERIOD = f"{ACTIVITY:%Y-%m}"
AUTHORED = datetime(ACTIVITY.year, ACTIVITY.month, ACTIVITY.day, 12, tzinfo=timezone.utc) + timedelta(days=2)
LONDON, NORTH_EAST = ["Y56"], ["Y63"]
SID = f"RJ1:{PERIOD}:review-test@1"


def payment(run: str, n: int) -> dict[str, Any]:
    return {"payment_id": f"pay-{run}-{n}", "episode_id": f"ep-{run}-{n}", "commissioner_code": "QWE", "provider_code": "RJ1",
            "service_type": "maternity", "activity_date": ACTIVITY.isoformat(), "amount_pence": 100_000}


@pytest.fixture
async def payments(database, kafka_bootstrap):
    settings = PaymentsSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                                consumer_group=f"st-{uuid.uuid4().hex[:8]}", schemes_dir=SCHEMES)
    async with running(create_payments(settings), token=None) as http:
        yield http


async def test_a_statement_is_provisional_then_final_with_its_corrections(payments, database, kafka_bootstrap) -> None:
    run = uuid.uuid4().hex[:6]
    for n in (1, 2):
        assert (await payments.post("/v1/payment-requests", json=payment(run, n),
                                    headers=bearer_headers(["payments:write"]))).status_code == 201
    conn = await asyncpg.connect(database)
    try:  # both answered Very poor
        for n in (1, 2):
            await conn.execute("INSERT INTO answers(submission_id, episode_id, provider_code, instrument, fft_answer, authored_at)"
                               " VALUES ($1, $2, 'RJ1', 'fft', 5, $3)", f"s-{run}-{n}", f"ep-{run}-{n}", AUTHORED)
        admin = bearer_headers(["schemes:admin"], subject="trial.finance@nhs")
        assert await settle(payments, "", {"period": PERIOD}, headers=admin) == []  # no money moved: no report
        [job] = (await payments.get("/v1/settlements/jobs", params={"period": PERIOD}, headers=admin)).json()["items"]
        job = (await payments.get(f"/v1/settlements/jobs/{job['job_id']}", headers=admin)).json()
        assert job["counts"]["reports"] == 0 and job["counts"]["provisional_statements"] == 1  # the job shows what it wrote
        [unit] = [u for p in job["providers"] for u in p["units"]]
        assert unit["statement_id"] == SID and unit["settlement_id"] is None
        assert await conn.fetchval("SELECT count(*) FROM settlements") == 0
        assert await conn.fetchval("SELECT count(*) FROM episodes WHERE status = 'held'") == 2
        transfers_before = await conn.fetchval("SELECT count(*) FROM ledger_transfers")

        reader = bearer_headers(["ledger:read"], regions=LONDON)
        [summary] = (await payments.get(f"/v1/statements?period={PERIOD}", headers=reader)).json()
        assert summary["statement_id"] == SID and summary["status"] == "provisional"
        assert (summary["diverted_pence"], summary["released_pence"], summary["created_by"]) == (20_000, 0, "trial.finance@nhs")
        assert (await payments.get(f"/v1/statements?period={PERIOD}", headers=bearer_headers(["ledger:read"],
                                                                                          regions=NORTH_EAST))).json() == []
        assert (await payments.get(f"/v1/statements/{SID}", headers=bearer_headers(["ledger:read"], regions=NORTH_EAST))
                ).status_code == 404
        view = (await payments.get(f"/v1/statements/{SID}", headers=reader)).json()
        assert [x["episode_id"] for x in view["provisional_report"]["lines"]] == [f"ep-{run}-1", f"ep-{run}-2"]
        assert view["final_report"] is None

        trust = bearer_headers(["appeals:write", "schemes:admin"], subject="finance@rj1", ods=["RJ1"])
        r = await payments.post(f"/v1/statements/{SID}/queries", headers=trust,
                                json={"reason": "ep 1's answer was meant for another trust", "episode_id": f"ep-{run}-1"})
        assert r.status_code == 201, r.text
        r = await payments.post(f"/v1/statements/{SID}/queries", headers=trust, json={"reason": "x", "episode_id": "ep-none"})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "episode_id"
        r = await payments.post(f"/v1/statements/{SID}/queries", headers=bearer_headers(["appeals:write"], regions=NORTH_EAST),
                                json={"reason": "not ours"})
        assert r.status_code == 404
        fix = {"episode_id": f"ep-{run}-1", "action": "exclude", "reason": "answer attributed to the wrong trust"}
        r = await payments.post(f"/v1/statements/{SID}/corrections", headers=trust, json=fix)
        assert r.status_code == 403  # the trust does not correct its own statement
        r = await payments.post(f"/v1/statements/{SID}/corrections", json=fix,
                                headers=bearer_headers(["schemes:admin"], subject="ne.reviewer", regions=NORTH_EAST))
        assert r.status_code == 404
        reviewer = bearer_headers(["schemes:admin"], subject="london.reviewer@nhs", regions=LONDON)
        r = await payments.post(f"/v1/statements/{SID}/corrections", headers=reviewer, json={**fix, "action": "double"})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "action"
        r = await payments.post(f"/v1/statements/{SID}/corrections", headers=reviewer, json=fix)
        assert r.status_code == 201, r.text
        assert [(c["actor"], c["episode_id"], c["reason"]) for c in r.json()["corrections"]] == [
            ("london.reviewer@nhs", f"ep-{run}-1", fix["reason"])]
        assert (await payments.post(f"/v1/statements/{SID}/corrections", headers=reviewer, json=fix)).status_code == 200

        # Not due yet: finalising moves nothing.
        national_admin = bearer_headers(["schemes:admin"], subject="national.finance@nhs")
        assert (await payments.post("/v1/statements/finalise-due", headers=national_admin)).json() == {"finalised": []}
        assert await conn.fetchval("SELECT count(*) FROM ledger_transfers") == transfers_before

        r = await payments.post(f"/v1/statements/{SID}/accept", headers=trust)
        assert r.status_code == 200 and r.json()["accepted_by"] == "finance@rj1"
        r = await payments.post("/v1/statements/finalise-due", headers=national_admin)
        [final] = r.json()["finalised"]
        assert (final["settlement_id"], final["released_pence"], final["diverted_pence"]) == (SID, 10_000, 10_000)

        view = (await payments.get(f"/v1/statements/{SID}", headers=reader)).json()
        assert view["status"] == "final" and view["finalised_by"] == "national.finance@nhs" and view["settlement_id"] == SID
        assert (view["released_pence"], view["diverted_pence"]) == (10_000, 10_000)
        lines = {x["episode_id"]: x for x in view["final_report"]["lines"]}
        assert lines[f"ep-{run}-1"]["diverted_pence"] == 0 and "excluded by correction" in lines[f"ep-{run}-1"]["basis"]
        assert lines[f"ep-{run}-2"]["diverted_pence"] == 10_000
        assert [(h["step"], h["actor"]) for h in view["history"]] == [
            ("provisional", "trial.finance@nhs"), ("query", "finance@rj1"), ("correction", "london.reviewer@nhs"),
            ("accepted", "finance@rj1"), ("finalised", "national.finance@nhs")]
        [report] = (await payments.get(f"/v1/settlements?period={PERIOD}", headers=reader)).json()
        assert (report["settlement_id"], report["diverted_pence"]) == (SID, 10_000)

        ep1 = (await payments.get(f"/v1/episodes/ep-{run}-1", headers=reader)).json()
        ep2 = (await payments.get(f"/v1/episodes/ep-{run}-2", headers=reader)).json()
        assert (ep1["status"], ep1["released_pence"], ep1["diverted_pence"]) == ("settled", 10_000, 0)
        assert (ep2["released_pence"], ep2["diverted_pence"]) == (0, 10_000)
        assert any("answer attributed to the wrong trust" in s for s in ep1["decision"]["steps"])
        ids1 = {t["transfer_id"] for t in ep1["ledger_transfers"]}
        ids2 = {t["transfer_id"] for t in ep2["ledger_transfers"]}
        assert f"release:pay-{run}-1" in ids1 and f"divert:pay-{run}-1" not in ids1
        assert f"divert:pay-{run}-2" in ids2
        # What the ledger is asked: ep 1's pending hold posted in full, nothing of it diverted; ep 2's diverted.
        asked = {json.loads(r.value)["data"]["transfer_id"]: json.loads(r.value)["data"]
                 for r in await read_topic(kafka_bootstrap, "ledger.transfer-requests.v1", expect=7, timeout_s=30)}
        assert asked[f"release:pay-{run}-1"]["kind"] == "post_pending" and f"divert:pay-{run}-1" not in asked
        assert sum(leg["amount_pence"] for leg in asked[f"divert:pay-{run}-2"]["legs"] if leg["amount_pence"] > 0) == 10_000

        # Finalising (and settling) again moves money once.
        transfers_final = await conn.fetchval("SELECT count(*) FROM ledger_transfers")
        assert (await payments.post("/v1/statements/finalise-due", headers=national_admin)).json() == {"finalised": []}
        assert await settle(payments, "", {"period": PERIOD}, headers=admin) == []
        assert await conn.fetchval("SELECT count(*) FROM ledger_transfers") == transfers_final
        assert await conn.fetchval("SELECT count(*) FROM settlements") == 1
        r = await payments.post(f"/v1/statements/{SID}/corrections", headers=reviewer,
                                json={**fix, "episode_id": f"ep-{run}-2"})
        assert r.status_code == 409
    finally:
        await conn.close()

    records = await read_topic(kafka_bootstrap, PAYMENTS_STATEMENTS.name, expect=2, timeout_s=30)
    events = [Envelope[SettlementStatement].model_validate_json(r.value) for r in records]
    assert [(e.type, e.data.status, e.data.diverted_pence) for e in events] == [
        ("payments.statement-provisional.v1", "provisional", 20_000), ("payments.statement-finalised.v1", "final", 10_000)]
    assert {r.key for r in records} == {b"RJ1"} and events[1].data.corrections == 1
