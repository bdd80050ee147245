"""Money metrics move once per committed fact: a payment, a settlement, an upheld appeal; retries,
duplicates and repeated settlement runs change nothing (services/payments/metrics.py)."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.helpers import settle
from prometheus_client import REGISTRY

from services.payments.app import create_app
from services.payments.settings import PaymentsSettings
from shared.auth import bearer_headers
from shared.contracts import FeedbackReceived
from tests.conftest import running

pytestmark = pytest.mark.integration

SCHEMES = Path(__file__).parent.parent / "e2e" / "schemes"  # no minimum sample, no effective cap
REGION = "Y56"  # RJ1 is in London


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def snapshot() -> dict[str, float]:
    money = {m: sample(f"payments_{m}_pence_total", region_code=REGION)
             for m in ("billed", "held", "released", "diverted", "appealed_back")}
    return {
        **money,
        "runs": sample("payments_settlement_runs_total", trigger="api"),
        "units": sample("settlement_duration_seconds_count"),
        "other_region": sample("payments_diverted_pence_total", region_code="Y63"),
    }


async def test_money_counters_count_each_committed_fact_once(database, kafka_bootstrap) -> None:
    settings = PaymentsSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                                consumer_group=f"payments-{uuid.uuid4().hex[:8]}", schemes_dir=SCHEMES)
    run = uuid.uuid4().hex[:6]
    activity = date.today() - timedelta(days=100)  # its period's decision windows have closed
    body = {"payment_id": f"pay-{run}", "episode_id": f"ep-{run}", "commissioner_code": "QWE",
            "provider_code": "RJ1", "service_type": "maternity", "activity_date": activity.isoformat(),
            "amount_pence": 123_457}
    before = snapshot()
    app = create_app(settings)
    async with running(app) as http:
        assert (await http.post("/v1/payment-requests", json=body)).status_code == 201
        assert (await http.post("/v1/payment-requests", json=body)).status_code == 200  # duplicate: not counted
        assert (await http.post("/v1/payment-requests", json={**body, "amount_pence": 1})).status_code == 409
        # The patient answers "Very poor" (through the handler: the Kafka path is tested elsewhere).
        await app.state.runtime.handlers.record_answers([FeedbackReceived(
            submission_id=f"s-{run}", episode_id=f"ep-{run}", provider_code="RJ1", patient_pseudonym="a" * 64,
            instrument="fft", fft_answer=5,
            authored_at=datetime(activity.year, activity.month, activity.day, tzinfo=timezone.utc) + timedelta(days=3))])
        period = activity.strftime("%Y-%m")
        reports = await settle(http, "", {"period": period})
        assert [r["diverted_pence"] for r in reports] == [12_345]
        assert await settle(http, "", {"period": period}) == []  # nothing new
        appeal = {"reason": "miscoded episode"}
        assert (await http.post(f"/v1/episodes/ep-{run}/appeal", json=appeal)).status_code == 201
        decision = {"outcome": "upheld", "reason": "agreed"}
        panel = bearer_headers(["appeals:decide"], subject="appeals.panel")  # never the appellant
        for _ in range(2):  # deciding again the same way changes nothing
            r = await http.post(f"/v1/episodes/ep-{run}/appeal/decision", json=decision, headers=panel)
            assert r.status_code == 200 and r.json()["status"] == "upheld", r.text
        text = (await http.get("/metrics")).text
        assert f'payments_diverted_pence_total{{region_code="{REGION}"}}' in text
    after = snapshot()
    delta = {k: after[k] - before[k] for k in before}
    assert delta == {"billed": 123_457, "held": 12_345, "released": 0, "diverted": 12_345, "appealed_back": 12_345,
                     "runs": 2, "units": 1, "other_region": 0}
