"""Every episode lifecycle path with the real broker, real PostgreSQL and the ledger running:
payments and ledger in-process, each with its own database, sharing the module's broker.

One running stack covers several paths at once (each app start costs a Kafka group join), each
path on its own provider so the ledger balances can be asserted exactly:

| provider | scheme                 | paths                                                                |
|----------|------------------------|----------------------------------------------------------------------|
| RJ1      | no cap, no min sample  | decided+settled, expired, amended (not allowed), don't know,          |
|          |                        | out of order (feedback before payment, Kafka), appeals upheld/rejected |
| RTH      | cap 3%                 | capped                                                               |
| RA7      | min 5 responses        | below minimum sample                                                 |
| RTD      | amendments allowed     | amended                                                              |
| RR8      | appeal window 0 days   | appeal refused (window closed)                                       |
Then the whole input is replayed (Kafka and HTTP) and settlement re-run: nothing changes.

This module runs it with the ledger's two-phase (pending) transfers;
test_payments_lifecycle_held.py runs it with the held-account model (its own broker: the
ledger must see only one scenario's transfers).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.ledger.app import create_app as create_ledger
from services.ledger.settings import LedgerSettings
from services.payments.app import create_app as create_payments
from services.payments.schemes import SchemeError
from services.payments.settings import PaymentsSettings
from shared.contracts import FeedbackReceived, PaymentRequested, envelope
from shared.topics import FEEDBACK_RECEIVED, PAYMENTS_REQUESTED
from shared.auth import bearer_headers
from tests.conftest import running
from tests.helpers import eventually, publish, settle

# The actor recorded for each appeal step is the token's subject, not what the body claims.
PROVIDER = bearer_headers(["appeals:write"], subject="finance.lead@rj1.nhs.uk")
PANEL = bearer_headers(["appeals:decide"], subject="appeals.panel@icb.nhs.uk")

pytestmark = pytest.mark.integration

SCHEMES = {
    "lc-main": 'providers = ["RJ1"]', "lc-capped": 'providers = ["RTH"]', "lc-min": 'providers = ["RA7"]',
    "lc-amend": 'providers = ["RTD"]', "lc-noappeal": 'providers = ["RR8"]',
}
EXTRA = {
    "lc-main": "min_responses_per_period = 0\ncap_bps = 1000\n",
    "lc-capped": "min_responses_per_period = 0\ncap_bps = 300\n",
    "lc-min": "min_responses_per_period = 5\ncap_bps = 1000\n",
    "lc-amend": "min_responses_per_period = 0\ncap_bps = 1000\nallow_amendments = true\n",
    "lc-noappeal": "min_responses_per_period = 0\ncap_bps = 1000\nappeal_window_days = 0\n",
}
ACTIVITY = date.today() - timedelta(days=100)  # every decision window (56 days) has passed
PERIOD = f"{ACTIVITY:%Y-%m}"
AMOUNT = 100_000  # £1,000.00, £100.00 at risk

# episode suffix -> (provider, commissioner, [(answer, days after activity)])  answer: FFT code
EPISODES: dict[str, tuple[str, str, list[tuple[int, int]]]] = {
    "dec": ("RJ1", "QWE", [(5, 3)]),
    "exp": ("RJ1", "QWE", [(5, 70)]),  # answered after the 56-day window: released
    "amd": ("RJ1", "QWE", [(1, 2), (5, 5)]),  # first answer decides; the amendment is kept, moves nothing
    "dk": ("RJ1", "QWE", [(6, 3)]),
    "upd": ("RJ1", "QWE", [(5, 3)]),  # appealed, upheld
    "rej": ("RJ1", "QWE", [(4, 3)]),  # appealed, rejected
    "ooo": ("RJ1", "QWE", [(5, 3)]),  # feedback published before its payment request
    "cap1": ("RTH", "QU9", [(5, 3)]),
    "cap2": ("RTH", "QU9", [(5, 3)]),
    "cap3": ("RTH", "QU9", [(4, 3)]),
    "min1": ("RA7", "QUY", [(5, 3)]),
    "min2": ("RA7", "QUY", [(5, 3)]),
    "am": ("RTD", "QHM", [(2, 2), (5, 5)]),  # amendments allowed: the later Very poor decides
    "late": ("RR8", "QWO", [(5, 3)]),
}


def scheme_folder(tmp: Path) -> Path:
    folder = tmp / "schemes"
    folder.mkdir()
    for sid, scope in SCHEMES.items():
        (folder / f"{sid}.toml").write_text(
            f'scheme_id = "{sid}"\nversion = 1\ntitle = "{sid}"\neffective_from = 2020-01-01\n'
            f"at_risk_bps = 1000\ndecision_window_days = 56\n{EXTRA[sid]}[scope]\n{scope}\n",
            encoding="utf-8")
    return folder


def payment(run: str, key: str) -> dict[str, Any]:
    provider, icb, _ = EPISODES[key]
    return {"payment_id": f"pay-{run}-{key}", "episode_id": f"ep-{run}-{key}", "commissioner_code": icb,
            "provider_code": provider, "service_type": "inpatient", "activity_date": ACTIVITY.isoformat(),
            "amount_pence": AMOUNT}


def feedback_events(run: str, key: str) -> list[tuple[bytes, bytes, dict[str, str]]]:
    provider, _icb, answers = EPISODES[key]
    start = datetime(ACTIVITY.year, ACTIVITY.month, ACTIVITY.day, 10, tzinfo=timezone.utc)
    out = []
    for n, (code, days) in enumerate(answers):
        fb = FeedbackReceived(submission_id=f"sub-{run}-{key}-{n}", episode_id=f"ep-{run}-{key}", provider_code=provider,
                              patient_pseudonym="b" * 64, instrument="fft", authored_at=start + timedelta(days=days),
                              fft_answer=code)
        env = envelope(fb, "feedback.received.v1", producer="test", correlation_id=run)
        out.append((fb.episode_id.encode(), env.model_dump_json().encode(), {}))
    return out


def payment_event(run: str, key: str) -> tuple[bytes, bytes, dict[str, str]]:
    pr = PaymentRequested.model_validate(payment(run, key))
    env = envelope(pr, "payments.requested.v1", producer="test", correlation_id=run)
    return (pr.episode_id.encode(), env.model_dump_json().encode(), {})


async def balance(ledger: httpx.AsyncClient, account: str) -> int:
    r = await ledger.get(f"/v1/accounts/{account}/balance")
    return r.json()["posted_pence"] if r.status_code == 200 else 0


async def balances(ledger: httpx.AsyncClient, accounts: list[str]) -> dict[str, int]:
    return {a: await balance(ledger, a) for a in accounts}


ACCOUNTS = ["provider:RJ1", "fund:Y56", "commissioner:QWE", "provider:RTH", "fund:Y59", "commissioner:QU9",
            "provider:RA7", "fund:Y58", "commissioner:QUY", "provider:RTD", "provider:RR8", "fund:Y63",
            "commissioner:QHM", "commissioner:QWO", "held:RJ1", "held:RTH", "held:RA7", "held:RTD", "held:RR8"]


async def test_every_lifecycle_path_moves_the_right_money(
    database: str, second_database: str, kafka_bootstrap: str, tmp_path: Path,
) -> None:
    await lifecycle("two_phase", database, second_database, kafka_bootstrap, tmp_path)


async def lifecycle(hold_model: str, database: str, second_database: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    """The whole scenario; the ledger must see only this scenario's transfers (one per module)."""
    run = uuid.uuid4().hex[:6]
    payments_settings = PaymentsSettings(
        database_url=database, kafka_bootstrap_servers=kafka_bootstrap, consumer_group=f"payments-{run}",
        schemes_dir=scheme_folder(tmp_path), ledger_hold_model=hold_model)
    ledger_settings = LedgerSettings(database_url=second_database, kafka_bootstrap_servers=kafka_bootstrap,
                                     consumer_group=f"ledger-{run}")
    # Out of order: the patient's answer reaches payments before the commissioner's request.
    await publish(kafka_bootstrap, FEEDBACK_RECEIVED.name, feedback_events(run, "ooo"))
    async with running(create_ledger(ledger_settings)) as ledger, running(create_payments(payments_settings)) as pay:
        # Payment requests over HTTP (batch), the out-of-order one over Kafka, feedback over Kafka.
        r = await pay.post("/v1/payment-requests/batch", json=[payment(run, k) for k in EPISODES if k != "ooo"])
        assert r.status_code == 200 and r.json()["accepted"] == len(EPISODES) - 1, r.text
        await publish(kafka_bootstrap, PAYMENTS_REQUESTED.name, [payment_event(run, "ooo")])
        await publish(kafka_bootstrap, FEEDBACK_RECEIVED.name,
                      [ev for k in EPISODES if k != "ooo" for ev in feedback_events(run, k)])

        # Bad requests get clear errors and change nothing.
        bad = await pay.post("/v1/payment-requests", json={**payment(run, "dec"), "payment_id": f"pay-{run}-x",
                                                            "episode_id": f"ep-{run}-x", "provider_code": "ZZZ"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "provider_code"
        assert (await pay.get(f"/v1/episodes/ep-{run}-x")).status_code == 404
        bad = await pay.post("/v1/settlements/run", json={"period": "2026-13"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "period"

        async def all_answers_in() -> bool:
            for key, (_p, _i, answers) in EPISODES.items():
                ep = await pay.get(f"/v1/episodes/ep-{run}-{key}")
                if ep.status_code != 200 or len(ep.json()["answers"]) != len(answers):
                    return False
            return True

        await eventually(all_answers_in, timeout_s=60)
        # Before settlement: 90% paid at once everywhere.
        await eventually(lambda: _equals(ledger, "provider:RJ1", 7 * 90_000), timeout_s=60)
        early = await pay.get(f"/v1/episodes/ep-{run}-dec")
        assert early.json()["status"] == "held" and early.json()["decision"]["final"] is False

        # Settle the month (the schedule does the same once every window has passed).
        reports = {s["provider_code"]: s for s in await settle(pay, "", {"period": PERIOD})}
        assert set(reports) == {"RJ1", "RTH", "RA7", "RTD", "RR8"}
        rj1, rth, ra7, rtd = reports["RJ1"], reports["RTH"], reports["RA7"], reports["RTD"]
        assert (rj1["billed_pence"], rj1["held_pence"], rj1["released_pence"], rj1["diverted_pence"]) == (700_000, 70_000, 35_000, 35_000)
        assert (rj1["responses"], rj1["cap_applied"], rj1["min_sample_applied"]) == (6, False, False)
        assert (rth["diverted_pence"], rth["cap_pence"], rth["cap_applied"]) == (9_000, 9_000, True)
        assert (ra7["diverted_pence"], ra7["responses"], ra7["min_sample_applied"]) == (0, 2, True)
        assert rtd["diverted_pence"] == 10_000
        # Idempotent per provider and period.
        assert await settle(pay, "", {"period": PERIOD}) == []
        listed = (await pay.get(f"/v1/settlements?period={PERIOD}")).json()
        assert {s["provider_code"] for s in listed} == set(reports)

        expected = {
            "provider:RJ1": 665_000, "fund:Y56": 35_000, "commissioner:QWE": -700_000,
            "provider:RTH": 291_000, "fund:Y59": 9_000, "commissioner:QU9": -300_000,
            "provider:RA7": 200_000, "fund:Y58": 0, "commissioner:QUY": -200_000,
            "provider:RTD": 90_000, "provider:RR8": 90_000, "fund:Y63": 20_000,
            "commissioner:QHM": -100_000, "commissioner:QWO": -100_000,
            **{a: 0 for a in ACCOUNTS if a.startswith("held:")},
        }
        await eventually(lambda: _all(ledger, expected), timeout_s=60)

        # Explainability: each path's episode view.
        ep = (await pay.get(f"/v1/episodes/ep-{run}-dec")).json()
        assert ep["status"] == "settled" and ep["decision"]["final"] is True and ep["diverted_pence"] == 10_000
        assert ep["scheme"] == {"scheme_id": "lc-main", "version": 1}
        assert any("diverted 10000p to fund:Y56" in s for s in ep["decision"]["steps"])
        ids = {t["transfer_id"] for t in ep["ledger_transfers"]}
        pid = f"pay-{run}-dec"
        if hold_model == "two_phase":
            assert ids == {f"pay:{pid}", f"hold:{pid}", f"release:{pid}", f"divert:{pid}"}
        else:
            assert ids == {f"hold:{pid}", f"settle:{pid}"}
        assert set(ep["decision"]["transfer_ids"]) <= ids
        await eventually(lambda: _transfers_answered(pay, f"ep-{run}-dec"), timeout_s=30)
        exp = (await pay.get(f"/v1/episodes/ep-{run}-exp")).json()
        assert exp["diverted_pence"] == 0 and exp["decision"]["ignored"] == [f"sub-{run}-exp-0"]
        assert exp["answers"][0]["role"].startswith("ignored")
        amd = (await pay.get(f"/v1/episodes/ep-{run}-amd")).json()
        assert amd["diverted_pence"] == 0 and amd["decision"]["amendments"] == [f"sub-{run}-amd-1"]
        assert [a["role"].split(" ")[0] for a in amd["answers"]] == ["deciding", "amendment"]
        am = (await pay.get(f"/v1/episodes/ep-{run}-am")).json()
        assert am["diverted_pence"] == 10_000 and am["decision"]["deciding_submission_id"] == f"sub-{run}-am-1"
        assert am["decision"]["basis"].endswith("(amended answer)")
        cap = (await pay.get(f"/v1/episodes/ep-{run}-cap1")).json()
        assert cap["diverted_pence"] == 3_600 and any(s.startswith("cap applied") for s in cap["decision"]["steps"])
        ooo = (await pay.get(f"/v1/episodes/ep-{run}-ooo")).json()
        assert ooo["diverted_pence"] == 10_000

        # Appeals: the provider appeals within the window; an authorised person decides.
        appeal = {"reason": "the patient was treated by another trust"}
        r = await pay.post(f"/v1/episodes/ep-{run}-upd/appeal", json=appeal, headers=PROVIDER)
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "open" and r.json()["diverted_pence"] == 10_000
        assert (await pay.post(f"/v1/episodes/ep-{run}-upd/appeal", json=appeal, headers=PROVIDER)).status_code == 200  # retry
        r = await pay.post(f"/v1/episodes/ep-{run}-upd/appeal", json={**appeal, "reason": "another reason"}, headers=PROVIDER)
        assert r.status_code == 409 and "already has an appeal" in r.json()["detail"]
        decision = {"outcome": "upheld", "reason": "episode miscoded"}
        r = await pay.post(f"/v1/episodes/ep-{run}-upd/appeal/decision", json=decision, headers=PANEL)
        assert r.status_code == 200, r.text
        upheld = r.json()
        assert upheld["status"] == "upheld" and upheld["transfer_id"] == f"appeal:pay-{run}-upd"
        assert [(h["step"], h["actor"]) for h in upheld["history"]] == [
            ("appealed", "finance.lead@rj1.nhs.uk"), ("upheld", "appeals.panel@icb.nhs.uk")]
        assert (await pay.post(f"/v1/episodes/ep-{run}-upd/appeal/decision", json=decision, headers=PANEL)).json()["status"] == "upheld"
        r = await pay.post(f"/v1/episodes/ep-{run}-upd/appeal/decision", json={**decision, "outcome": "rejected"}, headers=PANEL)
        assert r.status_code == 409 and "already upheld" in r.json()["detail"]

        assert (await pay.post(f"/v1/episodes/ep-{run}-rej/appeal", json=appeal, headers=PROVIDER)).status_code == 201
        r = await pay.post(f"/v1/episodes/ep-{run}-rej/appeal/decision",
                           json={"outcome": "rejected", "reason": "answer stands"},
                           headers=PANEL)
        assert r.status_code == 200 and r.json()["status"] == "rejected" and r.json()["transfer_id"] is None

        for key, why in (("dk", "nothing was diverted"), ("min1", "nothing was diverted"), ("late", "appeal window")):
            r = await pay.post(f"/v1/episodes/ep-{run}-{key}/appeal", json=appeal)
            assert r.status_code == 409 and why in r.json()["detail"], (key, r.text)
        assert (await pay.post(f"/v1/episodes/ep-{run}-nope/appeal", json=appeal, headers=PROVIDER)).status_code == 404
        r = await pay.post(f"/v1/episodes/ep-{run}-dec/appeal", json={"appealed_by": "x"}, headers=PROVIDER)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "reason"
        assert (await pay.get(f"/v1/episodes/ep-{run}-dec")).json()["appeal"] is None
        r = await pay.post(f"/v1/episodes/ep-{run}-dec/appeal/decision", json=decision, headers=PANEL)
        assert r.status_code == 404

        expected.update({"provider:RJ1": 675_000, "fund:Y56": 25_000})
        await eventually(lambda: _all(ledger, expected), timeout_s=60)
        ep = (await pay.get(f"/v1/episodes/ep-{run}-upd")).json()
        assert ep["appeal"]["status"] == "upheld" and ep["appealed_back_pence"] == 10_000
        assert f"appeal:pay-{run}-upd" in {t["transfer_id"] for t in ep["ledger_transfers"]}
        assert [a["episode_id"] for a in (await pay.get("/v1/appeals?status=rejected")).json()] == [f"ep-{run}-rej"]

        # Figures per period.
        prov = (await pay.get(f"/v1/providers/RJ1/periods/{PERIOD}")).json()
        assert {k: prov[k] for k in ("billed_pence", "held_pence", "released_pence", "diverted_pence",
                                     "appealed_back_pence", "net_diverted_pence", "responses", "episodes")} == {
            "billed_pence": 700_000, "held_pence": 70_000, "released_pence": 35_000, "diverted_pence": 35_000,
            "appealed_back_pence": 10_000, "net_diverted_pence": 25_000, "responses": 7, "episodes": 7}
        fund = (await pay.get(f"/v1/funds/Y63/periods/{PERIOD}")).json()
        assert fund["diverted_pence"] == 20_000 and {p["provider_code"] for p in fund["providers"]} == {"RTD", "RR8"}
        assert (await pay.get(f"/v1/providers/ZZZ/periods/{PERIOD}")).status_code == 404
        assert (await pay.get("/v1/funds/Y56/periods/2026-1")).status_code == 422

        # A full replay of every input, by Kafka and HTTP, changes nothing. Markers published after
        # the replay on each episode's partition show when the consumer has read past it: a new
        # small payment (this month) and a late answer (after settlement: kept, moves nothing).
        before_tb = (await ledger.get("/v1/trial-balance")).json()
        await publish(kafka_bootstrap, FEEDBACK_RECEIVED.name, [ev for k in EPISODES for ev in feedback_events(run, k)])
        await publish(kafka_bootstrap, PAYMENTS_REQUESTED.name, [payment_event(run, k) for k in EPISODES])
        r = await pay.post("/v1/payment-requests/batch", json=[payment(run, k) for k in EPISODES])
        assert {it["outcome"] for it in r.json()["items"]} == {"duplicate"}
        late_answer_at = datetime.now(timezone.utc)
        markers_fb, markers_pay = [], []
        for k, (provider, icb, _answers) in EPISODES.items():
            fb = FeedbackReceived(submission_id=f"sub-{run}-{k}-late", episode_id=f"ep-{run}-{k}", provider_code=provider,
                                  patient_pseudonym="c" * 64, instrument="fft", authored_at=late_answer_at, fft_answer=5)
            markers_fb.append((fb.episode_id.encode(), envelope(fb, "feedback.received.v1", producer="test",
                                                                 correlation_id=run).model_dump_json().encode(), {}))
            pr = PaymentRequested.model_validate({**payment(run, k), "payment_id": f"pay-{run}-{k}-m",
                                                  "episode_id": f"ep-{run}-{k}-m", "amount_pence": 100,
                                                  "activity_date": date.today().isoformat()})
            markers_pay.append((f"ep-{run}-{k}".encode(), envelope(pr, "payments.requested.v1", producer="test",
                                                                    correlation_id=run).model_dump_json().encode(), {}))
            # Posted balances: 90p paid now; the 10p at risk is held (held account) or pending
            # (two-phase: reserved on the commissioner, not posted).
            expected[f"provider:{provider}"] += 90
            if hold_model == "held_account":
                expected[f"commissioner:{icb}"] -= 100
                expected[f"held:{provider}"] += 10
            else:
                expected[f"commissioner:{icb}"] -= 90
        await publish(kafka_bootstrap, FEEDBACK_RECEIVED.name, markers_fb)
        await publish(kafka_bootstrap, PAYMENTS_REQUESTED.name, markers_pay)

        async def markers_in() -> bool:
            for k, (_p, _i, answers) in EPISODES.items():
                ep = (await pay.get(f"/v1/episodes/ep-{run}-{k}")).json()
                if len(ep["answers"]) != len(answers) + 1 or (await pay.get(f"/v1/episodes/ep-{run}-{k}-m")).status_code != 200:
                    return False
            return True

        await eventually(markers_in, timeout_s=60)
        assert await settle(pay, "", {"period": PERIOD}) == []
        await eventually(lambda: _all(ledger, expected), timeout_s=60)
        dec = (await pay.get(f"/v1/episodes/ep-{run}-dec")).json()
        assert dec["diverted_pence"] == 10_000 and dec["answers"][-1]["role"].startswith("received after settlement")
        after_tb = (await ledger.get("/v1/trial-balance")).json()
        assert after_tb["total_pence"] == before_tb["total_pence"] == 0
        assert (await ledger.get("/v1/verify")).json()["ok"]


async def _equals(ledger: httpx.AsyncClient, account: str, pence: int) -> bool:
    return await balance(ledger, account) == pence


class Mismatch(dict):
    """Falsy, so ``eventually`` keeps polling, and shows what differs when it gives up."""

    def __bool__(self) -> bool:
        return False


async def _all(ledger: httpx.AsyncClient, expected: dict[str, int]) -> bool | Mismatch:
    got = await balances(ledger, list(expected))
    return True if got == expected else Mismatch({a: (got[a], v) for a, v in expected.items() if got[a] != v})


async def _transfers_answered(pay: httpx.AsyncClient, episode_id: str) -> bool:
    ep = (await pay.get(f"/v1/episodes/{episode_id}")).json()
    return all(t["status"] in ("posted", "pending", "voided") for t in ep["ledger_transfers"])


def test_bad_scheme_configuration_stops_the_service_naming_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "typo.toml").write_text(
        'scheme_id = "typo"\nversion = 1\ntitle = "T"\neffective_from = 2026-04-01\n[scope]\nproviders = ["RJ9"]\n',
        encoding="utf-8")
    with pytest.raises(SchemeError, match=r"^typo\.toml: scope\.providers\.0: RJ9 is not in the reference data"):
        create_payments(PaymentsSettings(schemes_dir=tmp_path))
    (tmp_path / "typo.toml").write_text(
        'scheme_id = "typo"\nversion = 1\ntitle = "T"\neffective_from = 2026-04-01\nat_risk_bps = 20000\n', encoding="utf-8")
    with pytest.raises(SchemeError, match=r"^typo\.toml: at_risk_bps"):
        create_payments(PaymentsSettings(schemes_dir=tmp_path))
