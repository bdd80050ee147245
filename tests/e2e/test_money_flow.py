"""End to end: all three services as processes, real broker, real PostgreSQL.

A £1,000.00 payment with 10% at risk, under a scheme with no minimum sample and no cap:
"Very poor" diverts £100.00 to the provider's regional fund; "Very good" diverts nothing;
"Don't know" and no answer never divert.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from devtools.synthetic import synthetic_nhs_number
from shared.auth import SCOPES, bearer_headers
from devtools.stack import Stack
from tests.helpers import eventually, settle

ALL_SCOPES = bearer_headers(sorted(SCOPES), subject="tests")

pytestmark = pytest.mark.e2e

SCHEMES = Path(__file__).parent / "schemes"


@pytest.fixture(scope="module")
async def stack(tmp_path_factory):
    stack = Stack(work_dir=tmp_path_factory.mktemp("stack"), extra_env={"payments": {"PAYMENTS_SCHEMES_DIR": str(SCHEMES)}})
    try:
        await stack.start()
        yield stack
    finally:
        stack.stop()


# provider, its region, commissioner, FFT answer (None = the patient never answers)
CASES = {
    "very_poor": ("RJ1", "Y56", "QWE", 5),
    "very_good": ("RTD", "Y63", "QHM", 1),
    "dont_know": ("R0A", "Y62", "QOP", 6),
    "no_answer": ("RTH", "Y59", "QU9", None),
}


async def balance(http: httpx.AsyncClient, ledger: str, account: str) -> int:
    r = await http.get(f"{ledger}/v1/accounts/{account}/balance")
    return r.json()["posted_pence"] if r.status_code == 200 else 0


async def test_payment_feedback_settlement_moves_the_money(stack: Stack) -> None:
    run = uuid.uuid4().hex[:8]
    activity = date.today() - timedelta(days=100)  # its period's decision windows have closed: it can be settled
    period = f"{activity:%Y-%m}"
    payments, feedback = stack.url("payments"), stack.url("feedback")
    ledger = stack.url("ledger")
    async with httpx.AsyncClient(timeout=30, headers=ALL_SCOPES) as http:
        for n, (case, (provider, _region, icb, answer)) in enumerate(CASES.items()):
            r = await http.post(f"{payments}/v1/payment-requests", json={
                "payment_id": f"pay-{run}-{case}", "episode_id": f"ep-{run}-{case}", "commissioner_code": icb,
                "provider_code": provider, "service_type": "inpatient", "activity_date": activity.isoformat(),
                "amount_pence": 100_000,
            }, headers={"X-Correlation-ID": f"trace-{run}-{case}"})
            assert r.status_code == 201, r.text
            assert r.json()["at_risk_pence"] == 10_000
            if answer is not None:
                r = await http.post(f"{feedback}/v1/submissions", json={
                    "submission_id": f"sub-{run}-{case}", "episode_id": f"ep-{run}-{case}", "provider_code": provider,
                    "nhs_number": synthetic_nhs_number(n), "authored_at": (datetime(activity.year, activity.month, activity.day, 10, tzinfo=timezone.utc)
                                                              + timedelta(days=2)).isoformat(),
                    "answers": {"instrument": "fft", "fft_answer": answer}, "free_text": "free text stays in feedback",
                })
                assert r.status_code == 202, r.text

        # Before settlement: £900 paid at once, £100 held (a pending transfer commissioner -> provider).
        assert await eventually(lambda: _pending(http, ledger, "provider:RJ1", 10_000))
        assert await balance(http, ledger, "provider:RJ1") == 90_000

        async def answers_in() -> bool:
            for case, (_p, _r, _i, answer) in CASES.items():
                if answer is None:
                    continue
                ep = (await http.get(f"{payments}/v1/episodes/ep-{run}-{case}")).json()
                if not ep["answers"]:
                    return False
            return True

        await eventually(answers_in)
        reports = await settle(http, payments, {"period": period})
        assert {s["provider_code"] for s in reports} >= {p for p, *_ in CASES.values()}

        for provider, *_ in CASES.values():
            await eventually(lambda p=provider: _pending(http, ledger, f"provider:{p}", 0))
        await eventually(lambda: _is(http, ledger, "fund:Y56", 10_000))

        expected = {
            "very_poor": (90_000, 10_000),
            "very_good": (100_000, 0),
            "dont_know": (100_000, 0),
            "no_answer": (100_000, 0),
        }
        for case, (provider, region, icb, _answer) in CASES.items():
            paid, diverted = expected[case]
            assert await balance(http, ledger, f"provider:{provider}") == paid, case
            assert await balance(http, ledger, f"fund:{region}") == diverted, case
            assert await balance(http, ledger, f"commissioner:{icb}") == -100_000, case
            ep = (await http.get(f"{payments}/v1/episodes/ep-{run}-{case}")).json()
            assert ep["status"] == "settled"
            assert ep["released_pence"] + ep["diverted_pence"] == ep["at_risk_pence"] == 10_000
            assert ep["diverted_pence"] == diverted

        # The commissioner's correlation id travelled HTTP -> outbox -> Kafka headers -> ledger entry.
        for case in CASES:
            for transfer_id in (f"pay:pay-{run}-{case}", f"hold:pay-{run}-{case}"):
                t = (await http.get(f"{ledger}/v1/transfers/{transfer_id}")).json()
                assert t["correlation_id"] == f"trace-{run}-{case}", (transfer_id, t)
                assert t["causation_id"], t  # the Kafka event that carried the request

        tb = (await http.get(f"{ledger}/v1/trial-balance")).json()
        assert tb["total_pence"] == 0
        verify = (await http.get(f"{ledger}/v1/verify")).json()
        assert verify["ok"], verify

        # Settling again changes nothing (idempotent per provider and period).
        assert await settle(http, payments, {"period": period}) == []
        tb_again = (await http.get(f"{ledger}/v1/trial-balance")).json()
        assert tb_again["accounts"] == tb["accounts"]


async def _is(http: httpx.AsyncClient, ledger: str, account: str, pence: int) -> bool:
    return await balance(http, ledger, account) == pence


async def _pending(http: httpx.AsyncClient, ledger: str, account: str, pence: int) -> bool:
    """Money reserved for the account by open pending transfers (the at-risk holds)."""
    r = await http.get(f"{ledger}/v1/accounts/{account}/balance")
    return r.status_code == 200 and r.json()["pending_credits_pence"] == pence
