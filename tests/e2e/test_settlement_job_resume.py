"""End to end: the payments service is killed (SIGKILL) in the middle of a settlement job. The job
resumes when payments comes back (its lease lapses and the restarted process takes it over), every
episode settles once, the ledger's trial balance is zero and its chain verifies.

Ten providers, 300 episodes each, a quarter answered "very poor": ten units of settlement, each a
transaction that writes 300 episodes and their transfers, so the kill lands between units.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import date, datetime, timedelta, timezone

import asyncpg
import httpx
import pytest

from devtools.synthetic import synthetic_nhs_number
from shared.auth import SCOPES, bearer_headers
from devtools.stack import Stack
from tests.e2e.test_money_flow import SCHEMES
from tests.helpers import eventually

pytestmark = pytest.mark.e2e
ALL = bearer_headers(sorted(SCOPES), subject="tests")
PAIRS = [("QWE", "RJ1"), ("QWE", "RRV"), ("QU9", "RTH"), ("QUY", "RA7"), ("QUY", "RH8"), ("QMJ", "RGT"),
         ("QOP", "R0A"), ("QHL", "RRK"), ("QHM", "RTD"), ("QOP", "RR8")]
PER_PROVIDER = 300


@pytest.fixture(scope="module")
async def stack(tmp_path_factory):
    stack = Stack(work_dir=tmp_path_factory.mktemp("stack"),
                  extra_env={"payments": {"PAYMENTS_SCHEMES_DIR": str(SCHEMES), "PAYMENTS_SETTLEMENT_JOB_LEASE_S": "3"}})
    try:
        await stack.start()
        yield stack
    finally:
        stack.stop()


async def test_a_settlement_job_survives_a_kill_and_settles_every_episode_once(stack: Stack) -> None:
    run = uuid.uuid4().hex[:6]
    activity = date.today() - timedelta(days=100)
    period = f"{activity:%Y-%m}"
    payments, feedback, ledger = stack.url("payments"), stack.url("feedback"), stack.url("ledger")
    async with httpx.AsyncClient(timeout=60, headers=ALL) as http:
        episodes = [(icb, ods, f"ep-{run}-{ods}-{i}") for icb, ods in PAIRS for i in range(PER_PROVIDER)]
        for lo in range(0, len(episodes), 1000):
            r = await http.post(f"{payments}/v1/payment-requests/batch", json=[
                {"payment_id": f"pay-{ep}", "episode_id": ep, "commissioner_code": icb, "provider_code": ods,
                 "service_type": "inpatient", "activity_date": activity.isoformat(), "amount_pence": 10_000}
                for icb, ods, ep in episodes[lo:lo + 1000]])
            assert r.status_code == 200 and r.json()["rejected"] == 0, r.text
        answered = episodes[::4]
        authored = datetime(activity.year, activity.month, activity.day, 12, tzinfo=timezone.utc) + timedelta(days=2)
        for lo in range(0, len(answered), 500):
            r = await http.post(f"{feedback}/v1/submissions/batch", json=[
                {"submission_id": f"s-{ep}", "episode_id": ep, "provider_code": ods, "nhs_number": synthetic_nhs_number(lo + n),
                 "authored_at": authored.isoformat(), "answers": {"instrument": "fft", "fft_answer": 5}}
                for n, (_icb, ods, ep) in enumerate(answered[lo:lo + 500])])
            assert r.status_code == 200 and r.json()["rejected"] == 0, r.text
        pay_db = await asyncpg.connect(stack.database_urls["payments"])
        try:
            async def answers_in() -> bool:
                return await pay_db.fetchval("SELECT count(*) FROM answers WHERE submission_id LIKE $1", f"s-ep-{run}-%") == len(answered)

            await eventually(answers_in, timeout_s=120)

            r = await http.post(f"{payments}/v1/settlements/run", json={"period": period})
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]

            async def some_done() -> bool:
                done = await pay_db.fetchval("SELECT units_done FROM settlement_jobs WHERE job_id = $1", uuid.UUID(job_id))
                return done is not None and done >= 1

            await eventually(some_done, timeout_s=120, interval_s=0.02)
            stack.services["payments"].kill()  # SIGKILL mid-job: no shutdown, no goodbye
            done_at_kill = await pay_db.fetchval("SELECT units_done FROM settlement_jobs WHERE job_id = $1", uuid.UUID(job_id))
            assert done_at_kill < len(PAIRS), "the job finished before the kill: make the units bigger"
            stack.services["payments"].start()
            await stack.services["payments"].wait_healthy()

            deadline = time.monotonic() + 180
            while True:
                job = (await http.get(f"{payments}/v1/settlements/jobs/{job_id}")).json()
                if job["state"] not in ("queued", "running"):
                    break
                assert time.monotonic() < deadline, job
                await asyncio.sleep(0.5)
            assert job["state"] == "succeeded", job
            assert job["attempts"] == 2 and job["progress"]["units_done"] == len(PAIRS)
            assert job["counts"]["episodes"] == len(episodes)
            # Every episode settled once: one settlement per provider, nothing held, one release each.
            assert await pay_db.fetchval("SELECT count(*) FROM settlements WHERE period = $1", period) == len(PAIRS)
            assert await pay_db.fetchval("SELECT count(*) FROM episodes WHERE status = 'held'") == 0
            assert await pay_db.fetchval("SELECT count(DISTINCT episode_id) FROM ledger_transfers WHERE transfer_id LIKE 'release:%'"
                                         ) == len(episodes)
            diverted = await pay_db.fetchval("SELECT sum(diverted_pence) FROM episodes")
        finally:
            await pay_db.close()
        assert diverted == len(answered) * 1_000  # a quarter said "very poor": their 10% went to the funds

        async def books_closed() -> dict | None:
            tb = (await http.get(f"{ledger}/v1/trial-balance")).json()
            funds = tb["by_type_pence"].get("fund", 0)
            return tb if funds == diverted and tb["pending_debits_pence"] == 0 else None

        tb = await eventually(books_closed, timeout_s=180)
        assert tb["total_pence"] == 0 and tb["by_type_pence"]["provider"] == len(episodes) * 10_000 - diverted
        v = (await http.get(f"{ledger}/v1/verify", timeout=120)).json()
        assert v["ok"] is True, v
