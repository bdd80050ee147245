"""End to end: judging fairly. All three services as processes, real broker, real PostgreSQL.

Two trusts have the same bad month: 4 of their 12 patients answer "Very poor" (33%) while the rest
of England answers well (6 of 120, national 14 of 144 = 9.7%). 4 of 12 is within the 99.8% funnel
limit for 12 responses. RJ1 is under a gated scheme and keeps its money; RA7 is under the plain
scheme and loses the four episodes' at-risk share. The episode explanations say why, the reports
record the gate, and the what-if comparison over the very events the services recorded shows both
schemes side by side with the same figures. The store's judgement counts are the pure core's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import httpx
import pytest

from devtools.stack import Stack
from devtools.synthetic import synthetic_nhs_number
from services.payments import judgement
from services.payments.store import PgPaymentsStore
from services.payments.whatif import equity, read_events, replay
from services.payments.schemes import SchemeBook, parse_scheme
from shared.auth import SCOPES, bearer_headers
from shared.contracts import PaymentRequested, envelope
from shared.reference import load_reference
from tests.helpers import eventually, read_topic, settle

pytestmark = pytest.mark.e2e
ALL = bearer_headers(sorted(SCOPES), subject="tests")
ROOT = Path(__file__).resolve().parents[2]

RULES = """
version = 1
effective_from = 2020-01-01
at_risk_bps = 1000
decision_window_days = 56
min_responses_per_period = 0
cap_bps = 1000
"""
GATE = '\n[gate]\nbenchmark = "national"\nlimit = "99.8"\nmethod = "exact"\n'


def scheme_text(scheme_id: str, title: str, *, providers: list[str] | None, gated: bool) -> str:
    scope = f"\n[scope]\nproviders = {json.dumps(providers)}\n" if providers else ""
    return f'scheme_id = "{scheme_id}"\ntitle = "{title}"\n' + RULES + scope + (GATE if gated else "")


# provider, commissioner, episodes, of which "Very poor" (the rest "Very good")
MONTH = [("RJ1", "QWE", 12, 4), ("RA7", "QUY", 12, 4), ("RTD", "QHM", 40, 2), ("RTH", "QU9", 40, 2), ("RRV", "QMJ", 40, 2)]
GATED_PROVIDERS = ["RJ1"]
PLAIN_PROVIDERS = ["RA7", "RTD", "RTH", "RRV"]
OUTCOMES_PROVIDER = "RGT"  # under a scheme that weighs PROM outcomes beside experience
SIGNALS = "\n[signals]\nfft_weight_bps = 7000\nprom_weight_bps = 3000\nprom_instruments = [\"ohs\"]\nmin_prom_pairs = 20\n"


@pytest.fixture(scope="module")
def scheme_dirs(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    live = tmp_path_factory.mktemp("schemes")  # what the service runs: each trust under one scheme
    (live / "gated.toml").write_text(scheme_text("e2e-gated", "Gated", providers=GATED_PROVIDERS, gated=True))
    (live / "plain.toml").write_text(scheme_text("e2e-plain", "Plain", providers=PLAIN_PROVIDERS, gated=False))
    (live / "outcomes.toml").write_text(scheme_text("e2e-outcomes", "Outcomes", providers=[OUTCOMES_PROVIDER], gated=False)
                                        + SIGNALS)
    offline = tmp_path_factory.mktemp("whatif")  # the what-if: each scheme over everybody
    (offline / "gated.toml").write_text(scheme_text("e2e-gated", "Gated", providers=None, gated=True))
    (offline / "plain.toml").write_text(scheme_text("e2e-plain", "Plain", providers=None, gated=False))
    return {"live": live, "offline": offline}


@pytest.fixture(scope="module")
async def stack(tmp_path_factory, scheme_dirs):  # type: ignore[no-untyped-def]
    stack = Stack(work_dir=tmp_path_factory.mktemp("stack"),
                  extra_env={"payments": {"PAYMENTS_SCHEMES_DIR": str(scheme_dirs["live"])}})
    try:
        await stack.start()
        yield stack
    finally:
        stack.stop()


async def balance(http: httpx.AsyncClient, ledger: str, account: str) -> tuple[int, int]:
    r = await http.get(f"{ledger}/v1/accounts/{account}/balance")
    return (r.json()["posted_pence"], r.json()["pending_credits_pence"]) if r.status_code == 200 else (0, 0)


async def test_a_bad_but_ordinary_month_keeps_its_money_behind_the_gate(stack: Stack, scheme_dirs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = uuid.uuid4().hex[:6]
    activity = date.today() - timedelta(days=100)  # its period's decision windows have closed
    period = f"{activity:%Y-%m}"
    payments, feedback, ledger = stack.url("payments"), stack.url("feedback"), stack.url("ledger")
    requests: list[PaymentRequested] = []
    submissions = []
    bad_episode: dict[str, str] = {}
    for provider, icb, n, very_poor in MONTH:
        for i in range(n):
            ep = f"ep-{run}-{provider}-{i}"
            requests.append(PaymentRequested(
                payment_id=f"pay-{run}-{provider}-{i}", episode_id=ep, commissioner_code=icb, provider_code=provider,
                service_type="maternity" if i % 2 else "inpatient", activity_date=activity, amount_pence=100_000,
                age_band=("18-44", "45-64", "75+")[i % 3], imd_decile=1 + i % 10))
            answer = 5 if i < very_poor else 1
            if answer == 5:
                bad_episode.setdefault(provider, ep)
            submissions.append({
                "submission_id": f"s-{ep}", "episode_id": ep, "provider_code": provider,
                "nhs_number": synthetic_nhs_number(len(submissions)), "answers": {"instrument": "fft", "fft_answer": answer},
                "authored_at": (datetime(activity.year, activity.month, activity.day, 9, tzinfo=timezone.utc)
                                + timedelta(days=3, minutes=len(submissions))).isoformat()})
    async with httpx.AsyncClient(timeout=60, headers=ALL) as http:
        r = await http.post(f"{payments}/v1/payment-requests/batch",
                            json=[json.loads(q.model_dump_json()) for q in requests])
        assert r.status_code == 200 and r.json()["rejected"] == 0, r.text
        r = await http.post(f"{feedback}/v1/submissions/batch", json=submissions)
        assert r.status_code == 200 and r.json()["rejected"] == 0, r.text

        pay_db = await asyncpg.connect(stack.database_urls["payments"])
        try:
            async def answers_in() -> bool:
                return await pay_db.fetchval("SELECT count(*) FROM answers WHERE submission_id LIKE $1",
                                             f"s-ep-{run}-%") == len(submissions)

            await eventually(answers_in, timeout_s=120)
            stored = await pay_db.fetchrow("SELECT age_band, imd_decile FROM episodes WHERE episode_id = $1", f"ep-{run}-RJ1-4")
            assert (stored["age_band"], stored["imd_decile"]) == ("45-64", 5)  # the case-mix fields are kept

            reports = {r["provider_code"]: r for r in await settle(http, payments, {"period": period})}
            assert set(reports) == {p for p, *_ in MONTH}
            assert reports["RJ1"]["diverted_pence"] == 0 and reports["RJ1"]["released_pence"] == 12 * 10_000
            assert reports["RA7"]["diverted_pence"] == 4 * 10_000

            rows = {r["provider_code"]: r for r in await pay_db.fetch("SELECT * FROM settlements WHERE period = $1", period)}
            rj1, ra7 = rows["RJ1"], rows["RA7"]
            assert rj1["gate_applied"] and rj1["gate_opened"] is False
            assert (rj1["measured_events"], rj1["measured_responses"], rj1["upper_limit_count"]) == (4, 12, 5)
            assert rj1["benchmark_pct"] == round(14 / 144 * 100, 4) and not rj1["exempted"] and rj1["credit_pence"] == 0
            assert not ra7["gate_applied"] and ra7["gate_opened"] is None and ra7["upper_limit_count"] is None
            gate_step = ("gate: 4 negative of 12 (33.3%) is within the 99.8% exact limit 5 for the national 9.7%:"
                         " nothing diverted")
            assert json.loads(rj1["judgement_steps"]) == [gate_step]

            # The store's counts are the pure core's, computed from the events as recorded.
            async with pay_db.transaction():
                counts = await PgPaymentsStore(pay_db).judgement_counts(period, 56)
        finally:
            await pay_db.close()

        # The episode explanations, side by side: the gated trust keeps its money, the plain one does not.
        gated_ep = (await http.get(f"{payments}/v1/episodes/{bad_episode['RJ1']}")).json()
        plain_ep = (await http.get(f"{payments}/v1/episodes/{bad_episode['RA7']}")).json()
        assert gated_ep["decision"]["final"] and gated_ep["diverted_pence"] == 0 and gated_ep["released_pence"] == 10_000
        assert gated_ep["decision"]["basis"] == plain_ep["decision"]["basis"] == "FFT answer very_poor"
        assert gate_step in gated_ep["decision"]["steps"]
        assert gated_ep["decision"]["steps"][-1] == "released 10000p to provider:RJ1, diverted 0p to fund:Y56"
        assert plain_ep["diverted_pence"] == 10_000 and not any(s.startswith("gate:") for s in plain_ep["decision"]["steps"])
        assert plain_ep["decision"]["steps"][-1] == "released 0p to provider:RA7, diverted 10000p to fund:Y58"

        # The ledger: RJ1 paid in full, RA7 less what its patients diverted; nothing left pending.
        async def settled_in_ledger() -> bool:
            pending = [(await balance(http, ledger, f"provider:{p}"))[1] for p, *_ in MONTH]
            return not any(pending) and (await balance(http, ledger, "fund:Y58"))[0] == 4 * 10_000

        await eventually(settled_in_ledger, timeout_s=120)
        assert (await balance(http, ledger, "provider:RJ1"))[0] == 12 * 100_000
        assert (await balance(http, ledger, "provider:RA7"))[0] == 12 * 100_000 - 4 * 10_000
        assert (await balance(http, ledger, "fund:Y58"))[0] == 4 * 10_000
        tb = (await http.get(f"{ledger}/v1/trial-balance")).json()
        assert tb["total_pence"] == 0

    # The same events, as recorded, replayed offline under both schemes side by side.
    received = await read_topic(stack.infra.kafka_bootstrap, "feedback.received.v1", expect=len(submissions), timeout_s=60)  # type: ignore[union-attr]
    mine = [rec.value.decode() for rec in received if f"ep-{run}-" in rec.value.decode()]
    assert len(mine) == len(submissions)
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join([*(envelope(q, "payments.requested.v1", producer="commissioner", correlation_id=run)
                                   .model_dump_json() for q in requests), *mine]) + "\n", encoding="utf-8")
    payments_in, feedback_in, errors, _ = read_events(events.read_text(encoding="utf-8").splitlines())
    assert not errors
    gated_book = SchemeBook([parse_scheme((scheme_dirs["offline"] / "gated.toml").read_text())])
    offline = replay(payments_in, feedback_in, gated_book, load_reference())
    assert judgement.counts_from_records(offline.episodes, offline.answers, period, 56) == counts

    files = [str(scheme_dirs["offline"] / "plain.toml"), str(scheme_dirs["offline"] / "gated.toml")]
    done = subprocess.run([sys.executable, "-m", "services.payments.whatif", "--compare", *files, "--events", str(events),
                           "--json", "--csv", str(tmp_path / "compare.csv")], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    c = json.loads(done.stdout)
    by = {p["provider_code"]: p["schemes"] for p in c["providers"]}
    for provider in ("RJ1", "RA7"):  # the same bad month: lost under the plain scheme, kept behind the gate
        assert by[provider]["e2e-plain@1"]["diverted_pence"] == 4 * 10_000
        assert by[provider]["e2e-gated@1"]["diverted_pence"] == 0 and by[provider]["e2e-gated@1"]["gate"] == "within"
    offline_rj1 = by["RJ1"]["e2e-gated@1"]
    assert (offline_rj1["measured_events"], offline_rj1["measured_responses"], offline_rj1["upper_limit_count"]) == (4, 12, 5)
    assert offline_rj1["benchmark_pct"] == rj1["benchmark_pct"]
    assert by["RA7"]["e2e-plain@1"]["diverted_pence"] == reports["RA7"]["diverted_pence"]
    assert by["RJ1"]["e2e-gated@1"]["diverted_pence"] == reports["RJ1"]["diverted_pence"]
    deciles = [e for e in c["equity"]["e2e-plain@1"] if e["dimension"] == "imd_decile"]
    assert [e["stratum"] for e in deciles] == [str(d) for d in range(1, 11)]
    assert sum(e["diverted_pence"] for e in deciles) == c["totals"]["e2e-plain@1"]["diverted_pence"] == 14 * 10_000
    assert (tmp_path / "compare.equity.csv").read_text(encoding="utf-8").startswith("scheme,dimension,stratum")
    table = subprocess.run([sys.executable, "-m", "services.payments.whatif", "--compare", *files, "--events", str(events)],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert table.returncode == 0, table.stderr
    line = next(x for x in table.stdout.splitlines() if x.startswith("RJ1"))
    assert "£400.00" in line and "£0.00" in line and "within" in line

    # The published equity report over what the services settled is the same computation over the
    # same episodes: the live scheme book (RJ1 gated, the rest plain) replayed offline gives it.
    live_book = SchemeBook([parse_scheme(p.read_text()) for p in sorted(scheme_dirs["live"].glob("*.toml"))])
    expected = equity(replay(payments_in, feedback_in, live_book, load_reference()))
    async with httpx.AsyncClient(timeout=60) as http:
        public = bearer_headers(["reports:read"], subject="service:portal")
        r = await http.get(f"{payments}/v1/publication/equity", params={"period": period}, headers=public)
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["region_code"] is None and report["months"] == [period] and report["min_episodes"] == 10
        assert report["rows"] == expected  # no stratum under 10 episodes here, so nothing suppressed
        for dimension in ("imd_decile", "age_band", "setting"):
            rows = [row for row in report["rows"] if row["dimension"] == dimension]
            assert sum(row["episodes"] for row in rows) == sum(n for _, _, n, _ in MONTH)
            assert sum(row["diverted_pence"] for row in rows) == sum(rep["diverted_pence"] for rep in reports.values())
            for row in rows:
                rate = row["diversion_rate"]
                assert rate["low"] <= rate["rate"] <= rate["high"]
        quarter = f"{activity.year}-Q{(activity.month - 1) // 3 + 1}"
        r = await http.get(f"{payments}/v1/publication/equity", params={"period": quarter, "region_code": "Y56"}, headers=public)
        london = r.json()
        assert r.status_code == 200 and london["region_code"] == "Y56"
        ref = load_reference()
        in_london = sum(n for p, _, n, _ in MONTH if ref.providers[p].region_code == "Y56")
        assert sum(row["episodes"] for row in london["rows"] if row["dimension"] == "setting") == in_london
        assert all(row["suppressed"] and row["diverted_pence"] is None for row in london["rows"] if row["episodes"] < 10)
        london_token = bearer_headers(["reports:read"], subject="x", regions=["Y56"])
        for params in ({"period": period}, {"period": period, "region_code": "Y58"}):  # England, or another region
            r = await http.get(f"{payments}/v1/publication/equity", params=params, headers=london_token)
            assert r.status_code == 403 and r.json()["errors"][0]["field"] == "region_code"
        r = await http.get(f"{payments}/v1/publication/equity", params={"period": period, "region_code": "Y99"}, headers=public)
        assert r.status_code == 404


async def test_good_outcomes_soften_a_poor_experience_month_under_a_scheme_that_weighs_them(stack: Stack) -> None:  # type: ignore[no-untyped-def]
    """RGT's month: 10 of 40 patients answer "Very poor" (25%), and 25 of its hip patients whose
    post-operative Oxford Hip Score came in that month all improved. Under a scheme weighing
    experience 70% and outcomes 30%, the combined signal is 0.7 x 25% + 0.3 x 0% = 17.5%, so the
    diversions are scaled by 17.5 / 25 = 0.7: 70,000p diverted instead of 100,000p. The PROM
    pairs are made by the feedback service and reach payments on feedback.received.v1."""
    run = uuid.uuid4().hex[:6]
    activity = date.today() - timedelta(days=160)  # another month than the other test's, its windows closed
    period = f"{activity:%Y-%m}"
    payments, feedback = stack.url("payments"), stack.url("feedback")
    at = datetime(activity.year, activity.month, 1, 9, tzinfo=timezone.utc)
    requests, submissions = [], []
    for i in range(40):
        ep = f"ep-{run}-o-{i}"
        requests.append({"payment_id": f"pay-{run}-o-{i}", "episode_id": ep, "commissioner_code": "QUE",
                         "provider_code": OUTCOMES_PROVIDER, "service_type": "inpatient", "activity_date": activity.isoformat(),
                         "amount_pence": 100_000})
        submissions.append({"submission_id": f"s-{ep}", "episode_id": ep, "provider_code": OUTCOMES_PROVIDER,
                            "nhs_number": synthetic_nhs_number(10_000 + i),
                            "answers": {"instrument": "fft", "fft_answer": 5 if i < 10 else 1},
                            "authored_at": (datetime(activity.year, activity.month, activity.day, 9, tzinfo=timezone.utc)
                                            + timedelta(days=3, minutes=i)).isoformat()})
    for i in range(25):  # each patient's pre-operative score months before, the post-operative one in the period
        for timing, items, when in (("pre_op", [1] * 12, at - timedelta(days=120)), ("post_op", [3] * 12, at + timedelta(days=5))):
            submissions.append({"submission_id": f"ohs-{timing}-{run}-{i}", "episode_id": f"op-{run}-{i}",
                                "provider_code": OUTCOMES_PROVIDER, "nhs_number": synthetic_nhs_number(20_000 + i),
                                "answers": {"instrument": "ohs", "items": items, "timing": timing,
                                            "procedure": "primary_hip_replacement"},
                                "authored_at": (when + timedelta(minutes=i)).isoformat()})
    async with httpx.AsyncClient(timeout=60, headers=ALL) as http:
        r = await http.post(f"{payments}/v1/payment-requests/batch", json=requests)
        assert r.status_code == 200 and r.json()["rejected"] == 0, r.text
        r = await http.post(f"{feedback}/v1/submissions/batch", json=submissions)
        assert r.status_code == 200 and r.json()["rejected"] == 0, r.text
        pay_db = await asyncpg.connect(stack.database_urls["payments"])
        try:
            async def arrived() -> bool:
                fft = await pay_db.fetchval("SELECT count(*) FROM answers WHERE submission_id LIKE $1", f"s-ep-{run}-o-%")
                proms = await pay_db.fetchval("SELECT count(*) FROM prom_outcomes WHERE submission_id LIKE $1",
                                              f"ohs-post_op-{run}-%")
                return fft == 40 and proms == 25

            await eventually(arrived, timeout_s=120)
            # Only the answer that completed a pair is kept, under the trust, with feedback's gain (36 - 12).
            gains = await pay_db.fetch("SELECT DISTINCT provider_code, instrument, health_gain FROM prom_outcomes"
                                       " WHERE submission_id LIKE $1", f"ohs-%-{run}-%")
            assert [tuple(g) for g in gains] == [(OUTCOMES_PROVIDER, "ohs", 24)]
        finally:
            await pay_db.close()
        [report] = [r for r in await settle(http, payments, {"period": period}) if r["provider_code"] == OUTCOMES_PROVIDER]
        assert report["diverted_pence"] == 70_000 and report["released_pence"] == 40 * 10_000 - 70_000
        bad = (await http.get(f"{payments}/v1/episodes/ep-{run}-o-0")).json()
        step = ("signal: FFT 25.0% negative x 7000 bps, PROM 0.0% not improved (0 of 25 ohs pairs) x 3000 bps = 17.5%:"
                " diversions scaled by 0.7000")
        assert step in bad["decision"]["steps"] and bad["diverted_pence"] == 7_000
