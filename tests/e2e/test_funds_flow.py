"""End to end on the real stack: feedback, payments and ledger as processes (devtools.stack), the
funds service in this process against the stack's broker, a database of its own on the stack's
PostgreSQL server, and the ledger's HTTP API (with its own development service token).

A month diverts into London's fund (patients say "hold back"); two grants are proposed; the
maker's own approval is refused; a second person approves; both are reserved in the ledger; the
first grant's two milestones pay fund -> provider; the trial balance is zero and the chain
verifies; then feedback arrives, and each project's status is computed from it: the one whose
patients now rate care well is improving, the other shows no change.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from devtools.synthetic import synthetic_nhs_number
from services.funds.app import create_app as create_funds
from services.funds.settings import FundsSettings
from services.payments.domain import latest_settleable_period
from shared.auth import SCOPES, bearer_headers
from shared.db import ensure_database
from devtools.stack import Stack
from tests.conftest import running
from tests.helpers import eventually, settle

pytestmark = pytest.mark.e2e

SCHEMES = Path(__file__).parent / "schemes"  # no minimum sample, no effective cap; 56-day decision windows
ALL = bearer_headers(sorted(SCOPES), subject="tests")
MAKER = bearer_headers(["funds:propose", "funds:read", "funds:approve"], subject="fund.manager@london", regions=["Y56"])
CHECKER = bearer_headers(["funds:approve", "funds:read"], subject="fund.checker@london", regions=["Y56"])
MANAGER = bearer_headers(["funds:manage", "funds:read"], subject="improvement.lead@london", regions=["Y56"])
TODAY = datetime.now(timezone.utc).date()
MONDAY = TODAY - timedelta(days=TODAY.weekday())
START = MONDAY - timedelta(weeks=8)  # 8 whole weeks have passed since the projects started
BASELINE_FROM = START - timedelta(weeks=12)
WAVY = [5, 6, 5, 4, 5, 6, 5, 5, 4, 5, 6, 5]  # positive answers out of 10 a week: ordinary variation


@pytest.fixture(scope="module")
async def stack(tmp_path_factory):
    stack = Stack(work_dir=tmp_path_factory.mktemp("funds-stack"), extra_env={"payments": {"PAYMENTS_SCHEMES_DIR": str(SCHEMES)}})
    try:
        await stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
async def funds(stack: Stack):
    assert stack.infra is not None
    name = f"pp_funds_e2e_{uuid.uuid4().hex[:8]}"
    dsn = await ensure_database(stack.infra.postgres_dsn, name)
    settings = FundsSettings(database_url=dsn, kafka_bootstrap_servers=stack.infra.kafka_bootstrap,
                             ledger_base_url=stack.url("ledger"), consumer_group=f"funds-e2e-{name}")
    try:
        async with running(create_funds(settings), token=None) as client:
            yield client
    finally:
        # An embedded server goes with the stack (and a DROP's checkpoint there cannot reach the
        # data directory under pytest's private tmp); on a configured server, clean up.
        if stack.infra.postgres is None:
            conn = await asyncpg.connect(stack.infra.postgres_dsn)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()


def grant(grant_id: str, provider: str, amounts: list[int]) -> dict[str, Any]:
    return {
        "grant_id": grant_id, "region_code": "Y56", "title": f"Discharge planning at {provider}",
        "aim": "More patients rate their care good or very good (Friends and Family Test)",
        "measure": {"kind": "fft_positive", "interval": "week", "baseline_from": BASELINE_FROM.isoformat(),
                    "baseline_to": (START - timedelta(days=1)).isoformat()},
        "start_date": START.isoformat(), "end_date": (TODAY + timedelta(days=120)).isoformat(), "amount_pence": sum(amounts),
        "milestones": [{"title": f"milestone {i + 1}", "provider_code": provider, "amount_pence": a,
                        "due_date": (TODAY + timedelta(days=30 * (i + 1))).isoformat()} for i, a in enumerate(amounts)],
    }


def fft_week(run: str, provider: str, week: int, positive: int, n0: int) -> list[dict[str, Any]]:
    day = BASELINE_FROM + timedelta(weeks=week, days=2)
    return [{"submission_id": f"m-{run}-{provider}-{week}-{i}", "episode_id": f"m-{run}-{provider}-{week}-{i}",
             "provider_code": provider, "nhs_number": synthetic_nhs_number(n0 + i),
             "authored_at": datetime(day.year, day.month, day.day, 10, tzinfo=timezone.utc).isoformat(),
             "answers": {"instrument": "fft", "fft_answer": 1 if i < positive else 4}} for i in range(10)]


async def balance(http: httpx.AsyncClient, ledger: str, account: str) -> dict[str, Any]:
    r = await http.get(f"{ledger}/v1/accounts/{account}/balance")
    return r.json() if r.status_code == 200 else {"posted_pence": 0, "pending_debits_pence": 0, "available_pence": 0}


async def test_diversions_fund_a_checked_grant_that_pays_and_is_judged_by_feedback(stack: Stack, funds: httpx.AsyncClient) -> None:
    run = uuid.uuid4().hex[:8]
    payments, feedback, ledger = stack.url("payments"), stack.url("feedback"), stack.url("ledger")
    period = latest_settleable_period(TODAY, 56)
    activity = date(int(period[:4]), int(period[5:7]), 10)
    async with httpx.AsyncClient(timeout=30, headers=ALL) as http:
        # 1. A month diverts into London's fund: five £2,000 episodes at RJ1, each patient says "hold back".
        items = [{"payment_id": f"fp-{run}-{i}", "episode_id": f"fe-{run}-{i}", "commissioner_code": "QWE", "provider_code": "RJ1",
                  "service_type": "inpatient", "activity_date": activity.isoformat(), "amount_pence": 200_000} for i in range(5)]
        r = await http.post(f"{payments}/v1/payment-requests/batch", json=items)
        assert r.status_code == 200 and r.json()["accepted"] == 5, r.text
        authored = datetime(activity.year, activity.month, activity.day, 12, tzinfo=timezone.utc) + timedelta(days=2)
        answers = [{"submission_id": f"fs-{run}-{i}", "episode_id": f"fe-{run}-{i}", "provider_code": "RJ1",
                    "nhs_number": synthetic_nhs_number(9000 + i), "authored_at": authored.isoformat(),
                    "answers": {"instrument": "patient_power", "patient_choice": "hold_back"}} for i in range(5)]
        r = await http.post(f"{feedback}/v1/submissions/batch", json=answers)
        assert r.status_code == 200 and r.json()["accepted"] == 5, r.text

        async def answered() -> bool:
            for i in range(5):
                ep = (await http.get(f"{payments}/v1/episodes/fe-{run}-{i}")).json()
                if not ep.get("answers"):
                    return False
            return True

        await eventually(answered, timeout_s=30)
        await settle(http, payments, {"period": period, "region_code": "Y56"})
        await eventually(lambda: _posted(http, ledger, "fund:Y56", 100_000), timeout_s=30)

        # 2. Two grants are proposed; the maker cannot approve their own; a second person approves.
        a, b = f"disch-{run}", f"wards-{run}"
        for gid, provider, amounts in ((a, "RJ1", [25_000, 35_000]), (b, "RRV", [30_000])):
            r = await funds.post("/v1/grants", headers=MAKER, json=grant(gid, provider, amounts))
            assert r.status_code == 201, r.text
            r = await funds.post(f"/v1/grants/{gid}/decision", headers=MAKER, json={"outcome": "approved", "reason": "mine"})
            assert r.status_code == 403, r.text
            r = await funds.post(f"/v1/grants/{gid}/decision", headers=CHECKER,
                                 json={"outcome": "approved", "reason": "aim, measure and milestones are clear"})
            assert r.status_code == 200, r.text
        for gid in (a, b):
            await eventually(lambda gid=gid: _status(funds, gid, "reserved"), timeout_s=30)
        fund = await balance(http, ledger, "fund:Y56")
        assert (fund["posted_pence"], fund["pending_debits_pence"], fund["available_pence"]) == (100_000, 90_000, 10_000)

        # 3. Two milestones are met and pay, fund -> provider.
        for n in (1, 2):
            r = await funds.post(f"/v1/grants/{a}/milestones/{n}/met", headers=MANAGER, json={"note": f"evidence for milestone {n}"})
            assert r.status_code == 200, r.text
        await eventually(lambda: _status(funds, a, "completed"), timeout_s=30)
        for n, amount in ((1, 25_000), (2, 35_000)):
            t = (await http.get(f"{ledger}/v1/transfers/grant:{a}:m{n}:pay")).json()
            assert t["status"] == "posted" and t["cause"]["kind"] == "grant_payment"
            assert {(leg["account_id"], leg["amount_pence"]) for leg in t["legs"]} == {("fund:Y56", -amount), ("provider:RJ1", amount)}
        fund = await balance(http, ledger, "fund:Y56")
        assert (fund["posted_pence"], fund["pending_debits_pence"], fund["available_pence"]) == (40_000, 30_000, 10_000)
        tb = (await http.get(f"{ledger}/v1/trial-balance")).json()
        assert tb["total_pence"] == 0 and tb["pending_debits_pence"] == tb["pending_credits_pence"]
        verify = (await http.get(f"{ledger}/v1/verify")).json()
        assert verify["ok"], verify
        g = (await funds.get(f"/v1/grants/{a}", headers=MANAGER)).json()
        actors = [(s["step"], s["actor"]) for s in g["steps"]]
        assert actors[:2] == [("proposed", "fund.manager@london"), ("approved", "fund.checker@london")]
        assert ("milestone_met", "improvement.lead@london") in actors

        # 4. Before any feedback arrives there is nothing to judge ...
        for gid in (a, b):
            assert (await funds.get(f"/v1/grants/{gid}/assessment", headers=MANAGER)).json()["status"] == "too_few_responses"
        # ... then 20 weeks of answers arrive (12 before the start, 8 after): at RJ1 care is now rated good, at RRV not.
        submissions = []
        for week in range(20):
            submissions += fft_week(run, "RJ1", week, WAVY[week] if week < 12 else 10, 100 + 20 * week)
            submissions += fft_week(run, "RRV", week, WAVY[week % 12], 5000 + 20 * week)
        r = await http.post(f"{feedback}/v1/submissions/batch", json=submissions)
        assert r.status_code == 200 and r.json()["accepted"] == 400, r.text

        async def judged(gid: str) -> dict[str, Any] | None:
            view = (await funds.get(f"/v1/grants/{gid}/assessment", headers=MANAGER)).json()
            return view if (view["baseline_points"], view["after_points"]) == (12, 8) else None

        improving = await eventually(lambda: judged(a), timeout_s=30)
        steady = await eventually(lambda: judged(b), timeout_s=30)
        assert improving["status"] == "improving" and improving["improvement_signals"] > 0, improving["reason"]
        assert steady["status"] == "no_change" and steady["concern_signals"] == 0, steady["reason"]
        assert improving["points"][-1]["paid_to_date_pence"] in (0, 60_000)  # money beside the measure

        # 5. The region's report: diversions in, committed, paid, remaining; per project money and measure.
        report = (await funds.get("/v1/funds/Y56/report", headers=MANAGER)).json()
        f = report["fund"]
        assert (f["received_pence"], f["committed_pence"], f["paid_pence"], f["remaining_pence"], f["in_flight"]) == (
            100_000, 30_000, 60_000, 10_000, False)
        lines = {p["grant_id"]: (p["status"], p["paid_pence"], p["committed_pence"], p["measure_status"]) for p in report["projects"]}
        assert lines == {a: ("completed", 60_000, 0, "improving"), b: ("reserved", 0, 30_000, "no_change")}
        csv_text = (await funds.get("/v1/funds/Y56/report.csv", headers=MANAGER)).text
        assert csv_text.splitlines()[-1].startswith("TOTAL,")


async def _posted(http: httpx.AsyncClient, ledger: str, account: str, pence: int) -> bool:
    r = await http.get(f"{ledger}/v1/accounts/{account}/balance")
    return r.status_code == 200 and r.json()["posted_pence"] == pence


async def _status(funds: httpx.AsyncClient, grant_id: str, status: str) -> bool:
    g = (await funds.get(f"/v1/grants/{grant_id}", headers=MANAGER)).json()
    return g["status"] == status
