"""Feedback service against real PostgreSQL and the real broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from services.feedback.app import create_app
from devtools.synthetic import synthetic_nhs_number
from services.feedback.settings import FeedbackSettings
from devtools.stack import EmbeddedKafka
from shared.topics import FEEDBACK_RECEIVED
from tests.conftest import running
from tests.helpers import eventually, read_topic

pytestmark = pytest.mark.integration


AUTHORED = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()


def submission(run: str, n: int = 0, **overrides) -> dict:
    body = {"submission_id": f"sub-{run}-{n}", "episode_id": f"ep-{run}-{n}", "provider_code": "RRV",
            "nhs_number": synthetic_nhs_number(n), "authored_at": AUTHORED,
            "answers": {"instrument": "fft", "fft_answer": 2}, "free_text": "The midwives were wonderful"}
    return {**body, **overrides}


@pytest.fixture
def settings(database, kafka_bootstrap) -> FeedbackSettings:
    return FeedbackSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                            consumer_group=f"feedback-{uuid.uuid4().hex[:8]}")


async def test_submission_is_pseudonymised_idempotent_and_published(settings, kafka_bootstrap) -> None:
    run = uuid.uuid4().hex[:6]
    async with running(create_app(settings)) as http:
        r = await http.post("/v1/submissions", json=submission(run))
        assert r.status_code == 202, r.text
        assert r.json()["scores"] == {"fft_positive": True, "fft_negative": False}
        again = await http.post("/v1/submissions", json=submission(run))
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        changed = await http.post("/v1/submissions", json=submission(run, answers={"instrument": "fft", "fft_answer": 5}))
        assert changed.status_code == 409
        bad = await http.post("/v1/submissions", json=submission(run, 1, nhs_number="9990000019"))
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["field"] == "nhs_number"
        assert "9990000019" not in bad.text
        events = await read_topic(kafka_bootstrap, FEEDBACK_RECEIVED.name, expect=1)
        mine = [json.loads(e.value) for e in events if json.loads(e.value)["data"]["submission_id"] == f"sub-{run}-0"]
        assert len(mine) == 1
        raw = json.dumps(mine[0])
        assert synthetic_nhs_number(0) not in raw and "midwives" not in raw
        assert len(mine[0]["data"]["patient_pseudonym"]) == 64
    conn = await asyncpg.connect(settings.database_url)
    try:
        dump = json.dumps([dict(r) for r in await conn.fetch("SELECT * FROM submissions")], default=str)
    finally:
        await conn.close()
    assert synthetic_nhs_number(0) not in dump


async def test_accepts_while_broker_is_down_and_drains_when_it_returns(database) -> None:
    broker = EmbeddedKafka()
    broker.start()
    settings = FeedbackSettings(database_url=database, kafka_bootstrap_servers=broker.bootstrap,
                                consumer_group=f"feedback-{uuid.uuid4().hex[:8]}")
    run = uuid.uuid4().hex[:6]
    try:
        async with running(create_app(settings)) as http:
            broker.pause()
            try:
                for n in range(5):
                    r = await asyncio.wait_for(http.post("/v1/submissions", json=submission(run, n)), timeout=5)
                    assert r.status_code == 202
            finally:
                broker.resume()
            events = await read_topic(broker.bootstrap, FEEDBACK_RECEIVED.name, expect=5, timeout_s=60)
            assert sorted(json.loads(e.value)["data"]["submission_id"] for e in events) == [f"sub-{run}-{n}" for n in range(5)]
            conn = await asyncpg.connect(database)
            try:
                await eventually(lambda: conn.fetchval("SELECT count(*) = 0 FROM outbox WHERE published_at IS NULL"))
            finally:
                await conn.close()
    finally:
        broker.stop()
