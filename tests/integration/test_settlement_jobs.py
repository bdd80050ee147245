"""Settlement as a job (services/payments/jobs.py) against real PostgreSQL and the real broker:
202 with a job resource followed to its end, progress by provider, the same job for the same
request while it runs, cancel until money moves (and never after), and a job taken over from a
runner that died part-way, every unit settled once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, timedelta

import asyncpg
import pytest

from services.payments import jobs
from services.payments.app import create_app
from services.payments.settings import PaymentsSettings
from shared.auth import bearer_headers
from shared.uow import PgUnitOfWork
from tests.conftest import running
from tests.helpers import eventually
from tests.integration.test_payments import SCHEMES

pytestmark = pytest.mark.integration

ACTIVITY = date.today() - timedelta(days=100)  # its period's decision windows have closed
PERIOD = f"{ACTIVITY:%Y-%m}"
# (commissioner, provider): five providers in three regions, so a job has several units
PAIRS = [("QWE", "RJ1"), ("QWE", "RRV"), ("QU9", "RTH"), ("QUY", "RA7"), ("QHM", "RTD")]


@pytest.fixture
def settings(database, kafka_bootstrap) -> PaymentsSettings:
    return PaymentsSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                            consumer_group=f"payments-{uuid.uuid4().hex[:8]}", schemes_dir=SCHEMES,
                            settlement_job_lease_s=2)


async def pay_all(http, run: str, per_provider: int = 2) -> None:  # type: ignore[no-untyped-def]
    items = [{"payment_id": f"pay-{run}-{p}-{i}", "episode_id": f"ep-{run}-{p}-{i}", "commissioner_code": icb,
              "provider_code": p, "service_type": "maternity", "activity_date": ACTIVITY.isoformat(), "amount_pence": 100_000}
             for icb, p in PAIRS for i in range(per_provider)]
    r = await http.post("/v1/payment-requests/batch", json=items)
    assert r.status_code == 200 and r.json()["rejected"] == 0, r.text


async def test_a_settlement_job_is_followed_to_its_end_with_progress_by_provider(settings) -> None:
    run = uuid.uuid4().hex[:6]
    admin = bearer_headers(["schemes:admin", "ledger:read", "payments:write"], subject="month.end@nhs")
    async with running(create_app(settings), token=None) as http:
        http.headers.update(admin)
        await pay_all(http, run)
        r = await http.post("/v1/settlements/run", json={"period": PERIOD})
        assert r.status_code in (200, 202), r.text
        job = r.json()
        assert r.headers["location"] == job["url"] == f"/v1/settlements/jobs/{job['job_id']}"
        assert job["requested_by"] == "month.end@nhs" and job["trigger"] == "api" and job["period"] == PERIOD

        async def done() -> dict | None:
            j = (await http.get(job["url"])).json()
            return j if j["state"] not in ("queued", "running") else None

        job = await eventually(done, timeout_s=60)
        assert job["state"] == "succeeded" and job["attempts"] == 1 and job["errors"] == []
        assert job["progress"] == {"units_total": 5, "units_done": 5, "units_failed": 0, "providers_total": 5, "providers_done": 5}
        assert {p["provider_code"]: (p["state"], p["episodes"]) for p in job["providers"]} == {
            p: ("done", 2) for _, p in PAIRS}
        assert job["counts"]["episodes"] == 10 and job["counts"]["held_pence"] == 10 * 10_000
        assert job["counts"]["released_pence"] + job["counts"]["diverted_pence"] == 10 * 10_000
        assert sorted(r["provider_code"] for r in job["reports"]) == sorted(p for _, p in PAIRS)
        listed = (await http.get("/v1/settlements/jobs", params={"period": PERIOD})).json()["items"]
        assert [j["job_id"] for j in listed] == [job["job_id"]] and listed[0]["providers"] is None

        # Again: a new job that finds nothing held (idempotent per provider and period).
        r = await http.post("/v1/settlements/run", json={"period": PERIOD}, params={"wait_s": 30})
        assert r.status_code == 200 and r.json()["state"] == "succeeded" and r.json()["reports"] == []
        assert r.json()["job_id"] != job["job_id"] and r.json()["progress"]["units_total"] == 0

        # A finished job cannot be cancelled; a stranger does not see it.
        r = await http.post(f"{job['url']}/cancel")
        assert r.status_code == 409 and "succeeded" in r.json()["detail"]
        other = bearer_headers(["schemes:admin"], subject="someone.else", regions=["Y63"])
        assert (await http.get(job["url"], headers=other)).status_code == 404
        assert (await http.get("/v1/settlements/jobs/not-a-uuid")).status_code == 422
        assert (await http.get(f"/v1/settlements/jobs/{uuid.uuid4()}")).status_code == 404


async def test_a_job_is_cancellable_until_money_moves_and_never_settles_after(settings) -> None:
    run = uuid.uuid4().hex[:6]
    app = create_app(settings)
    async with running(app) as http:
        await pay_all(http, run)
        runtime = app.state.runtime
        await runtime.job_runner.stop()  # no runner in this process: jobs wait, as if every runner were busy
        uow = PgUnitOfWork(runtime.pool, jobs.PgJobsStore)
        first, created = await runtime.job_runner.submit(jobs.NewJob(period=PERIOD, requested_by="a", correlation_id="c"))
        again, created_again = await runtime.job_runner.submit(jobs.NewJob(period=PERIOD, requested_by="b", correlation_id="d"))
        assert created and not created_again and again["job_id"] == first["job_id"]  # one active job per period
        r = await http.post(f"/v1/settlements/jobs/{first['job_id']}/cancel")
        assert r.status_code == 200 and r.json()["state"] == "cancelled" and r.json()["cancelled_by"] == "tests"
        runner = jobs.JobRunner(uow, runtime.book, clock=runtime.handlers.clock, lease_s=2, poll_s=0.1)
        assert await runner.run_once() is False  # a cancelled job is never claimed
        async with runtime.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM settlements") == 0
            assert await conn.fetchval("SELECT count(*) FROM episodes WHERE status = 'held'") == 10

        # A job that has settled a unit refuses to cancel, and carries on.
        job, _ = await runtime.job_runner.submit(jobs.NewJob(period=PERIOD, requested_by="a", correlation_id="c2"))
        claimed = await uow.run(lambda tx: tx.claim_job(runner.owner, runner.clock(), runner.lease))
        units = await uow.run(lambda tx: tx.held_units(PERIOD, None, None))
        await uow.run(lambda tx: tx.plan_units(claimed["job_id"], units))
        from services.payments.settlement import RunSettlement

        cmd = RunSettlement(period=PERIOD, run_by="a", correlation_id="c2")
        outcome, summary = await uow.run(lambda tx: runner._settle(tx, claimed["job_id"], units[0], cmd))
        assert outcome == "done" and summary is not None
        r = await http.post(f"/v1/settlements/jobs/{job['job_id']}/cancel")
        assert r.status_code == 409 and "money has moved" in r.json()["detail"]


async def test_a_job_whose_runner_died_is_taken_over_and_every_unit_settles_once(settings) -> None:
    run = uuid.uuid4().hex[:6]
    app = create_app(settings)
    async with running(app) as http:
        await pay_all(http, run, per_provider=3)
        runtime = app.state.runtime
        await runtime.job_runner.stop()
        uow = PgUnitOfWork(runtime.pool, jobs.PgJobsStore)
        dead = jobs.JobRunner(uow, runtime.book, clock=runtime.handlers.clock, lease_s=2, poll_s=0.1)
        job, _ = await dead.submit(jobs.NewJob(period=PERIOD, requested_by="a", correlation_id="c"))
        claimed = await uow.run(lambda tx: tx.claim_job(dead.owner, dead.clock(), dead.lease))
        units = await uow.run(lambda tx: tx.held_units(PERIOD, None, None))
        await uow.run(lambda tx: tx.plan_units(claimed["job_id"], units))
        from services.payments.settlement import RunSettlement

        cmd = RunSettlement(period=PERIOD, run_by="a", correlation_id="c")
        for unit in units[:2]:  # two units settle, then the runner "dies" (no more heartbeats)
            assert (await uow.run(lambda tx: dead._settle(tx, claimed["job_id"], unit, cmd)))[0] == "done"  # noqa: B023
        # While its lease holds, nobody else takes the job.
        other = jobs.JobRunner(uow, runtime.book, clock=runtime.handlers.clock, lease_s=2, poll_s=0.1)
        assert await other.run_once() is False
        await asyncio.sleep(2.2)
        assert await other.run_once() is True  # the lease lapsed: taken over and finished
        view = (await http.get(f"/v1/settlements/jobs/{job['job_id']}")).json()
        assert view["state"] == "succeeded" and view["attempts"] == 2
        assert view["progress"]["units_done"] == len(units) == 5 and view["counts"]["episodes"] == 15
        # The dead runner, were it to wake, may not settle any more of it.
        assert (await uow.run(lambda tx: dead._settle(tx, claimed["job_id"], units[-1], cmd)))[0] == "stop"
        conn = await asyncpg.connect(settings.database_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM settlements") == 5
            assert await conn.fetchval("SELECT count(*) FROM episodes WHERE status = 'held'") == 0
            # one release (or void) per episode in the outbox history: nothing asked for twice
            assert await conn.fetchval("SELECT count(*) FROM ledger_transfers WHERE transfer_id LIKE 'release:%'") == 15
        finally:
            await conn.close()
