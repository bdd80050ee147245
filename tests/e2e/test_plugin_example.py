"""The README's example of an app backend's integration test, run as written: the `patient_power`
fixture (devtools/pytest_plugin.py) gives the whole system for the session."""

import time
import uuid
from datetime import date, datetime, timedelta, timezone

import httpx


def test_feedback_reaches_payments_and_the_ledger_holds_the_money(patient_power):
    run = uuid.uuid4().hex[:8]
    icb = patient_power.headers(["payments:write"], icbs=["QWE"])          # a commissioner's finance system
    app = patient_power.headers(["feedback:write"], ods=["RJ1"])           # the trust's patient app backend
    finance = patient_power.headers(["ledger:read"], regions=["Y56"])      # London's finance team
    urls = patient_power.urls
    with httpx.Client(timeout=30) as http:
        r = http.post(f"{urls['payments']}/v1/payment-requests", headers=icb, json={
            "payment_id": f"pay-{run}", "episode_id": f"ep-{run}", "commissioner_code": "QWE", "provider_code": "RJ1",
            "service_type": "maternity", "activity_date": (date.today() - timedelta(days=3)).isoformat(),
            "amount_pence": 100_000})
        assert r.status_code == 201, r.text
        at_risk = r.json()["at_risk_pence"]
        r = http.post(f"{urls['feedback']}/v1/submissions", headers=app, json={
            "submission_id": f"s-{run}", "episode_id": f"ep-{run}", "provider_code": "RJ1",
            "nhs_number": "9990000018",  # the NHS test range: never a real patient
            "authored_at": (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat(),
            "answers": {"instrument": "fft", "fft_answer": 1}})
        assert r.status_code == 202, r.text  # accepted: stored, and on its way to payments

        deadline = time.monotonic() + 60
        while True:  # the answer reaches payments over Kafka; the hold reaches the ledger
            episode = http.get(f"{urls['payments']}/v1/episodes/ep-{run}", headers=finance).json()
            hold = http.get(f"{urls['ledger']}/v1/transfers/hold:pay-{run}", headers=finance)
            if episode.get("answers") and hold.status_code == 200:
                break
            assert time.monotonic() < deadline, (episode, hold.text)
            time.sleep(0.2)
        assert hold.json()["status"] == "pending"
        # reserved (pending), not yet paid: the commissioner's at-risk share, waiting for settlement
        assert sorted(leg["pending_pence"] for leg in hold.json()["legs"]) == [-at_risk, at_risk]
        assert episode["answers"][0]["fft_answer"] == 1
