"""The read routes the portal composes (services/*/read_api.py), against the three services in
process on real PostgreSQL and the real broker: feedback's FFT publication (suppression across
providers, months and breakdowns; previous period; CSV layout; series by month and week), payments'
eligible episodes, money by month, fund inflows, settlements and their episodes (JSON and CSV),
a commissioner's month, and the ledger's balance history; each with its scope and binding.

One scenario is loaded through the services' own HTTP APIs (answers reach payments over Kafka,
settlement's transfers reach the ledger over Kafka) and the tests read it in file order: the
appeal test comes last because it moves money back out of the fund. The grid rule is also
checked on its own (``suppress_grid``) with hypothesis.
"""

from __future__ import annotations

import csv
import io
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.feedback import read_models as frm
from services.feedback.app import create_app as create_feedback
from devtools.synthetic import synthetic_nhs_number
from services.feedback.domain import SUPPRESSION_THRESHOLD, fft_report
from services.feedback.settings import FeedbackSettings
from services.ledger.app import create_app as create_ledger
from services.ledger.settings import LedgerSettings
from services.payments.app import create_app as create_payments
from services.payments.settings import PaymentsSettings
from shared.auth import bearer_headers
from shared.contracts import FftAnswer
from tests.conftest import fresh_database, running
from tests.helpers import eventually, settle

pytestmark = pytest.mark.integration

SCHEMES = Path(__file__).parent.parent / "e2e" / "schemes"  # no minimum sample, no effective cap
# A quarter well inside the plausible window (authored_at at most 730 days old) whose decision
# windows have all closed, and the quarter before it.
_ANCHOR = date.today() - timedelta(days=240)
QUARTER = frm.quarter_code(_ANCHOR)
M1, M2, M3 = frm.months_of(frm.parse_period(QUARTER))
PREVIOUS_QUARTER = frm.previous_period(frm.parse_period(QUARTER)).code
M0 = frm.months_of(frm.parse_period(PREVIOUS_QUARTER))[-1]
RUN = uuid.uuid4().hex[:6]

PUBLIC = bearer_headers(["reports:read"], subject="portal")
LONDON_PUBLIC = bearer_headers(["reports:read"], subject="london-portal", regions=["Y56"])
FINANCE = bearer_headers(["ledger:read"], subject="national-finance")
LONDON_FINANCE = bearer_headers(["ledger:read"], subject="london-finance", regions=["Y56"])
NORTH_EAST_FINANCE = bearer_headers(["ledger:read"], subject="ne-finance", regions=["Y63"])


def _day(month: str, day: int) -> datetime:
    return datetime(int(month[:4]), int(month[5:7]), day, 12, tzinfo=timezone.utc)


# (provider code as submitted, month, how many, setting, mode): all "very good" except every
# fifth, which is "poor". RJ1 is London (Y56); RRV London; RTH South East; RA7 South West; RGT East.
ANSWERS: list[tuple[str, str, int, str | None, str | None]] = [
    ("RJ1", M0, 8, None, None),
    ("RJ1", M1, 14, "maternity", "app"), ("RJ1", M1, 6, "inpatient", "sms"),
    ("RJ1", M2, 14, "maternity", "app"), ("RJ1", M2, 6, "inpatient", "paper"), ("RJ121", M2, 2, "maternity", "app"),
    ("RJ1", M3, 3, "a_and_e", "telephone"),
    ("RRV", M1, 10, None, None), ("RRV", M3, 12, None, None),
    ("RTH", M1, 2, None, None),
    ("RA7", M1, 30, None, None), ("RA7", M2, 30, None, None), ("RA7", M3, 30, None, None),
    ("RGT", M1, 6, None, None), ("RGT", M2, 6, None, None), ("RGT", M3, 6, None, None),
]
# RJ1's first five answers in M1 are about these episodes, paid by QWE (answers 1, 1, 1, 4 and none).
EPISODES = [(f"ep-{RUN}-{i}", M1) for i in range(5)] + [(f"ep-{RUN}-late", M2)]


def _submissions() -> list[dict[str, Any]]:
    out, n = [], 0
    for code, month, count, setting, mode in ANSWERS:
        for i in range(count):
            n += 1
            episode, answer = f"fb-{RUN}-{n}", 4 if i % 5 == 4 else 1
            if (code, month, setting) == ("RJ1", M1, "maternity") and i < 4:  # the paid episodes
                episode, answer = EPISODES[i][0], 4 if i == 3 else 1
            sub = {"submission_id": f"s-{RUN}-{n}", "episode_id": episode, "provider_code": code,
                   "nhs_number": synthetic_nhs_number(n), "authored_at": (_day(month, 2) + timedelta(days=i % 20)).isoformat(),
                   "answers": {"instrument": "fft", "fft_answer": answer}}
            if setting:
                sub["setting"] = setting
            if mode:
                sub["collection_mode"] = mode
            out.append(sub)
    # A second answer from the same patient about the same episode: an amendment, never counted.
    first = out[20]
    out.append({**first, "submission_id": f"s-{RUN}-again", "answers": {"instrument": "fft", "fft_answer": 5}})
    return out


def _payments() -> list[dict[str, Any]]:
    reqs = [{"payment_id": f"pay-{ep}", "episode_id": ep, "commissioner_code": "QWE", "provider_code": "RJ1",
             "service_type": "maternity", "activity_date": f"{month}-01", "amount_pence": 100_000} for ep, month in EPISODES]
    reqs.append({"payment_id": f"pay-{RUN}-ne", "episode_id": f"ep-{RUN}-ne", "commissioner_code": "QHM", "provider_code": "RTD",
                 "service_type": "inpatient", "activity_date": f"{M1}-03", "amount_pence": 50_000})
    return reqs


@pytest.fixture(scope="module")
async def stack(infra, kafka_bootstrap):
    """Feedback, payments and the ledger in process on one broker, each on its own database, with
    the scenario loaded and M1 settled; yields the three clients (no default token)."""
    group = f"rm-{uuid.uuid4().hex[:6]}"
    async with fresh_database(infra.postgres_dsn) as fdb, fresh_database(infra.postgres_dsn) as pdb, \
            fresh_database(infra.postgres_dsn) as ldb:
        feedback_app = create_feedback(FeedbackSettings(database_url=fdb, kafka_bootstrap_servers=kafka_bootstrap,
                                                        consumer_group=f"{group}-feedback", prom_min_count=5))
        payments_app = create_payments(PaymentsSettings(database_url=pdb, kafka_bootstrap_servers=kafka_bootstrap,
                                                        consumer_group=f"{group}-payments", schemes_dir=SCHEMES))
        ledger_app = create_ledger(LedgerSettings(database_url=ldb, kafka_bootstrap_servers=kafka_bootstrap, consumer_group=f"{group}-ledger"))
        async with running(ledger_app, token=None) as ledger, running(payments_app, token=None) as payments, \
                running(feedback_app, token=None) as feedback:
            r = await payments.post("/v1/payment-requests/batch", json=_payments(),
                                    headers=bearer_headers(["payments:write"], subject="icb"))
            assert r.status_code == 200 and r.json()["rejected"] == 0, r.text
            subs = _submissions()
            for i in range(0, len(subs), 200):
                r = await feedback.post("/v1/submissions/batch", json=subs[i:i + 200],
                                        headers=bearer_headers(["feedback:write"], subject="app"))
                assert r.status_code == 200 and r.json()["rejected"] == 0, r.text

            async def answered() -> bool:
                views = [(await payments.get(f"/v1/episodes/{ep}", headers=FINANCE)).json() for ep, _ in EPISODES[:4]]
                return all(v.get("answers") for v in views)

            await eventually(answered, timeout_s=120)
            await settle(payments, "", {"period": M1}, headers=bearer_headers(["schemes:admin"], subject="admin"))

            async def diverted() -> bool:
                b = await ledger.get("/v1/accounts/fund:Y56/balance", headers=FINANCE)
                return b.status_code == 200 and b.json()["posted_pence"] == 5_000

            await eventually(diverted, timeout_s=120)
            yield {"feedback": feedback, "payments": payments, "ledger": ledger}


def _by_code(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["provider_code"]: r for r in rows}


# ---------------------------------------------------------------------------------------------
# Feedback: the FFT publication
# ---------------------------------------------------------------------------------------------
async def test_quarter_publication_counts_first_answers_and_suppresses_across_providers(stack) -> None:
    r = await stack["feedback"].get("/v1/publication/fft", params={"period": QUARTER}, headers=PUBLIC)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "quarter" and body["previous_period"] == PREVIOUS_QUARTER
    rows = _by_code(body["providers"])
    rj1 = rows["RJ1"]["figures"]
    # 45 first answers (the site's two roll up into the trust; the amendment is not counted)
    assert rj1["responses"] == 45 and rj1["suppression"] == "none"
    assert rj1["counts"]["very_good"] + rj1["counts"]["poor"] == 45
    assert rj1["positive"] == rj1["counts"]["very_good"] and rj1["pct_positive"] == round(100 * rj1["positive"] / 45)
    assert rows["RA7"]["figures"]["responses"] == 90 and rows["RRV"]["figures"]["responses"] == 22
    # RTH has 2 responses in the quarter: withheld; exactly one withheld, so the next smallest (RGT, 18) too,
    # its counts withheld and its percentage kept, as NHS England publishes.
    assert rows["RTH"]["figures"] == {"responses": None, "counts": None, "positive": None, "negative": None,
                                      "pct_positive": None, "pct_negative": None, "suppression": "primary"}
    rgt = rows["RGT"]["figures"]
    assert rgt["suppression"] == "secondary" and rgt["responses"] is None and rgt["counts"] is None and rgt["pct_positive"] is not None
    assert body["total"]["responses"] == 45 + 22 + 2 + 90 + 18  # the total is never withheld
    # previous quarter beside each provider
    assert rows["RJ1"]["previous"] == {"period": PREVIOUS_QUARTER, "responses": 8, "pct_positive": rows["RJ1"]["previous"]["pct_positive"],
                                       "suppression": "none"}


async def test_breakdowns_by_setting_and_mode_are_suppressed_within_the_provider(stack) -> None:
    body = (await stack["feedback"].get("/v1/publication/fft", params={"period": QUARTER}, headers=PUBLIC)).json()
    rj1 = _by_code(body["providers"])["RJ1"]
    settings_ = {p["key"]: p["figures"] for p in rj1["by_setting"]}
    assert settings_["maternity"]["responses"] == 30
    assert settings_["a_and_e"]["suppression"] == "primary"  # 3 answers
    assert settings_["inpatient"]["suppression"] == "secondary"  # the next smallest: 12 - 3 would give it away
    modes = {p["key"]: p["figures"] for p in rj1["by_mode"]}
    assert modes["app"]["responses"] == 30 and modes["telephone"]["suppression"] == "primary"
    assert modes["paper"]["suppression"] == "secondary" and modes["sms"]["responses"] == 6  # a tie at 6: by key
    # under a withheld provider every part is withheld
    rth = _by_code(body["providers"])["RTH"]
    assert all(p["figures"]["suppression"] != "none" for p in rth["by_setting"] + rth["by_mode"])


async def test_month_publication_follows_the_quarter_grid(stack) -> None:
    """The hand-worked grid of the scenario's quarter. RTH's 2 answers in M1 and RJ1's 3 in M3 are
    withheld (primary). M1's national total minus the others would give RTH's away, so the
    smallest other M1 figure (RGT's 6) is withheld; likewise RGT's 6 in M3 for RJ1's M3. RJ1's
    quarter total minus its other months would give its M3 away, so its smaller other month (M1,
    20) is withheld. RGT's quarter total is withheld to protect RTH's in the league table (it
    already has withheld months, so it cannot be added up). M2 has nothing to hide."""
    async def month(period: str, headers: dict[str, str] = PUBLIC) -> dict[str, str]:
        body = (await stack["feedback"].get("/v1/publication/fft", params={"period": period}, headers=headers)).json()
        return {code: row["figures"]["suppression"] for code, row in _by_code(body["providers"]).items()}

    assert await month(M1) == {"RJ1": "secondary", "RRV": "none", "RTH": "primary", "RA7": "none", "RGT": "secondary"}
    assert await month(M2) == {"RJ1": "none", "RRV": "none", "RTH": "none", "RA7": "none", "RGT": "none"}
    assert await month(M3) == {"RJ1": "primary", "RRV": "none", "RTH": "none", "RA7": "none", "RGT": "secondary"}
    # A London token: recomputed over London's two trusts only. M3's total minus RRV's would give
    # RJ1's away, so RRV's M3 is withheld, then RRV's M1 (its quarter total is published).
    assert await month(M1, LONDON_PUBLIC) == {"RJ1": "secondary", "RRV": "secondary"}
    body = (await stack["feedback"].get("/v1/publication/fft", params={"period": QUARTER}, headers=LONDON_PUBLIC)).json()
    assert set(_by_code(body["providers"])) == {"RJ1", "RRV"} and body["total"]["responses"] == 67


async def test_the_monthly_report_withholds_what_the_quarter_publication_withholds(stack) -> None:
    """GET /v1/reports/fft (feedback:read) for M1. By the month's own rules RJ1's 20 would show,
    and its quarter total (published) less M1 and M2 would give its 3 in M3 away: the report
    withholds what the publication withholds."""
    headers = bearer_headers(["feedback:read"], subject="analyst")
    r = await stack["feedback"].get("/v1/reports/fft", params={"period": M1}, headers=headers)
    assert r.status_code == 200, r.text
    rows = {row["provider_code"]: row for row in r.json()["providers"]}
    assert rows["RJ1"]["suppression"] == "secondary" and rows["RJ1"]["responses"] is None
    assert rows["RJ1"]["pct_positive"] is not None  # secondary keeps the percentage, as published
    assert rows["RTH"]["suppression"] == "primary" and rows["RRV"]["responses"] == 10 and rows["RA7"]["responses"] == 30


async def test_site_level_rows_are_a_breakdown_of_their_trust(stack) -> None:
    body = (await stack["feedback"].get("/v1/publication/fft", params={"period": M2, "level": "site"}, headers=PUBLIC)).json()
    rows = _by_code(body["providers"])
    assert rows["RJ121"]["trust_code"] == "RJ1" and rows["RJ121"]["figures"]["suppression"] == "primary"
    assert rows["RJ1"]["figures"]["suppression"] == "secondary"  # 22 - 20 would give the site's 2 away


async def test_publication_pages_by_provider_code(stack) -> None:
    first = (await stack["feedback"].get("/v1/publication/fft", params={"period": QUARTER, "limit": 2}, headers=PUBLIC)).json()
    assert [r["provider_code"] for r in first["providers"]] == ["RA7", "RGT"] and first["next_cursor"] == "RGT"
    rest = (await stack["feedback"].get("/v1/publication/fft", params={"period": QUARTER, "limit": 2, "cursor": "RGT"},
                                        headers=PUBLIC)).json()
    assert [r["provider_code"] for r in rest["providers"]] == ["RJ1", "RRV"]
    assert rest["total"] == first["total"]  # the total covers every page


async def test_publication_csv_is_in_the_national_layout_with_withheld_figures_starred(stack) -> None:
    r = await stack["feedback"].get("/v1/publication/fft.csv", params={"period": QUARTER}, headers=PUBLIC)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    header = list(rows[0].keys())
    assert header[:6] == ["Period", "Setting", "Region Code", "Region Name", "Trust Code", "Trust Name"]
    assert header[6:16] == ["Total Responses", "Total Eligible", "Percentage Positive", "Percentage Negative", "Very Good",
                            "Good", "Neither Good nor Poor", "Poor", "Very Poor", "Don't Know"]
    assert header[16:] == ["Mode SMS", "Mode Electronic Discharge", "Mode Electronic Home", "Mode Paper Discharge",
                           "Mode Paper Home", "Mode Telephone", "Mode Online", "Mode Other"]
    by_trust = {row["Trust Code"]: row for row in rows}
    assert by_trust["RTH"]["Total Responses"] == "*" and by_trust["RTH"]["Percentage Positive"] == "*"
    assert by_trust["RGT"]["Total Responses"] == "*" and by_trust["RGT"]["Very Good"] == "*"
    assert by_trust["RGT"]["Percentage Positive"] not in ("*", "")  # secondary keeps the percentage
    rj1 = by_trust["RJ1"]
    assert rj1["Total Responses"] == "45" and rj1["Mode Electronic Home"] == "30" and rj1["Mode Telephone"] == "*"
    assert rj1["Mode Paper Discharge"] == "*" and rj1["Mode SMS"] == "6" and rj1["Mode Paper Home"] == ""
    assert rj1["Region Code"] == "Y56" and rj1["Region Name"] == "London" and rj1["Total Eligible"] == ""
    assert by_trust["ALL"]["Total Responses"] == str(45 + 22 + 2 + 90 + 18)
    # no withheld figure appears anywhere as a number: RTH's count and RGT's counts are nowhere in their rows
    assert "2" not in [by_trust["RTH"][c] for c in header[6:16]]


async def test_series_by_month_has_the_same_verdicts_as_the_monthly_tables(stack) -> None:
    r = await stack["feedback"].get("/v1/publication/fft/providers/RJ1/series",
                                    params={"interval": "month", "from": M0, "to": M3}, headers=PUBLIC)
    assert r.status_code == 200, r.text
    points = {p["period"]: p["figures"] for p in r.json()["points"]}
    assert list(points) == [M0, M1, M2, M3]
    assert points[M0]["responses"] == 8 and points[M1]["suppression"] == "secondary"
    assert points[M2]["responses"] == 22 and points[M3]["suppression"] == "primary"
    assert points[M2]["positive"] == sum(1 for i in range(14) if i % 5 != 4) + sum(1 for i in range(6) if i % 5 != 4) + 2


async def test_series_by_week_withholds_weeks_of_one_to_four(stack) -> None:
    first, last = frm.week_code(frm.parse_period(M1).start), frm.week_code(frm.parse_period(M3).end - timedelta(days=1))
    r = await stack["feedback"].get("/v1/publication/fft/providers/RJ1/series",
                                    params={"interval": "week", "from": first, "to": last}, headers=PUBLIC)
    assert r.status_code == 200, r.text
    points = r.json()["points"]
    assert points[0]["period"] == first and points[-1]["period"] == last
    expected: dict[str, int] = {}
    for sub in _submissions()[:-1]:  # the amendment is not counted
        if sub["provider_code"] in ("RJ1", "RJ121"):
            week = frm.week_code(datetime.fromisoformat(sub["authored_at"]).date())
            expected[week] = expected.get(week, 0) + 1
    for p in points:
        n, f = expected.get(p["period"], 0), p["figures"]
        if 0 < n < SUPPRESSION_THRESHOLD:
            assert f["suppression"] == "primary" and f["responses"] is None
        elif f["suppression"] == "none":
            assert f["responses"] == n
    assert any(p["figures"]["suppression"] == "primary" for p in points)  # M3's three answers


async def test_series_refusals(stack) -> None:
    fb = stack["feedback"]
    r = await fb.get("/v1/publication/fft/providers/RA7/series", headers=LONDON_PUBLIC)
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "provider_code"
    assert (await fb.get("/v1/publication/fft/providers/ZZZ/series", headers=PUBLIC)).status_code == 404
    r = await fb.get("/v1/publication/fft/providers/RJ1/series", params={"interval": "week", "from": M1}, headers=PUBLIC)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "from"
    r = await fb.get("/v1/publication/fft", params={"period": QUARTER}, headers=bearer_headers(["feedback:read"]))
    assert r.status_code == 403  # the public publication needs reports:read
    assert (await fb.get("/v1/publication/fft", params={"period": QUARTER})).status_code == 401


async def test_periods_name_the_first_and_latest_month_with_answers(stack) -> None:
    body = (await stack["feedback"].get("/v1/publication/fft/periods", headers=PUBLIC)).json()
    assert body == {"first_month": M0, "latest_month": M3}
    ne = (await stack["feedback"].get("/v1/publication/fft/periods",
                                      headers=bearer_headers(["reports:read"], regions=["Y63"]))).json()
    assert ne == {"first_month": None, "latest_month": None}


async def test_prom_publication_reports_pairs_completed_in_the_period(stack) -> None:
    app = bearer_headers(["feedback:write"], subject="app")
    for i in range(6):
        nhs = synthetic_nhs_number(5000 + i)
        for timing, score, day in (("pre_op", 20, 1), ("post_op", 38 + i % 3, 10)):
            base, extra = divmod(score, 12)  # twelve items of 0-4 adding up to the score
            sub = {"submission_id": f"ohs-{RUN}-{i}-{timing}", "episode_id": f"ohs-{RUN}-{i}", "provider_code": "RA7",
                   "nhs_number": nhs, "authored_at": _day(M2, day).isoformat(),
                   "answers": {"instrument": "ohs", "timing": timing, "procedure": "primary_hip_replacement",
                               "items": [base + 1] * extra + [base] * (12 - extra)}}
            assert (await stack["feedback"].post("/v1/submissions", json=sub, headers=app)).status_code == 202
    body = (await stack["feedback"].get("/v1/publication/proms", params={"period": QUARTER}, headers=PUBLIC)).json()
    [group] = body["groups"]
    assert group["provider_code"] == "RA7" and group["pairs"] == 6 and not group["suppressed"]
    assert group["avg_health_gain"] == pytest.approx(19.0, abs=1.0)
    other = (await stack["feedback"].get("/v1/publication/proms", params={"period": PREVIOUS_QUARTER}, headers=PUBLIC)).json()
    assert other["groups"] == []


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.tuples(st.sampled_from(["A", "B", "C", "D"]), st.sampled_from(["m1", "m2", "m3"])),
                       st.integers(min_value=0, max_value=12)))
def test_no_published_margin_of_a_grid_has_exactly_one_withheld_figure(cells: dict[tuple[str, str], int]) -> None:
    rows, columns = ["A", "B", "C", "D"], ["m1", "m2", "m3"]
    g = frm.suppress_grid(cells, rows, columns)
    value = {(r, c): cells.get((r, c), 0) for r in rows for c in columns}
    for (r, c), n in value.items():  # primary: every 1-4 withheld, zero never
        if 0 < n < SUPPRESSION_THRESHOLD:
            assert g.cell(r, c) == "primary"
        if n == 0:
            assert g.cell(r, c) == "none"

    def withheld(keys: list[tuple[str, str]]) -> int:
        return sum(1 for k in keys if value[k] and g.cell(*k) != "none")

    def visible_nonzero(keys: list[tuple[str, str]]) -> int:
        return sum(1 for k in keys if value[k] and g.cell(*k) == "none")

    for c in columns:
        keys = [(r, c) for r in rows]
        assert withheld(keys) != 1 or visible_nonzero(keys) == 0
    for r in rows:
        keys = [(r, c) for c in columns]
        if g.total(r) == "none":
            assert withheld(keys) != 1 or visible_nonzero(keys) == 0
        else:  # a withheld total cannot be added up from its cells
            assert withheld(keys) >= 1
    totals = {r: sum(value[(r, c)] for c in columns) for r in rows}
    hidden_totals = [r for r in rows if totals[r] and g.total(r) != "none"]
    assert len(hidden_totals) != 1 or not [r for r in rows if totals[r] and g.total(r) == "none"]


@given(st.dictionaries(st.sampled_from(["A", "B", "C", "D", "E"]), st.integers(min_value=0, max_value=12)))
def test_one_column_grid_agrees_with_domain_fft_report(responses: dict[str, int]) -> None:
    """With one period and no row totals to protect, the grid is domain.fft_report's rule."""
    counts = {k: {FftAnswer.VERY_GOOD: n} for k, n in responses.items()}
    rows, _ = fft_report(counts)
    grid = frm.suppress_grid({(k, "m"): n for k, n in responses.items()}, responses, ["m"])
    for row in rows:
        # row totals equal the cells here, so the grid may only withhold more (never less)
        if row.suppression != "none":
            assert grid.cell(row.provider_code, "m") != "none"


# ---------------------------------------------------------------------------------------------
# Payments
# ---------------------------------------------------------------------------------------------
async def test_eligible_episodes_per_provider_and_service_type(stack) -> None:
    body = (await stack["payments"].get("/v1/publication/eligible-episodes", params={"period": QUARTER}, headers=PUBLIC)).json()
    assert body["months"] == [M1, M2, M3]
    got = {(i["provider_code"], i["service_type"]): i["episodes"] for i in body["items"]}
    assert got == {("RJ1", "maternity"): 6, ("RTD", "inpatient"): 1}
    london = (await stack["payments"].get("/v1/publication/eligible-episodes", params={"period": M1},
                                          headers=LONDON_PUBLIC)).json()
    assert [(i["provider_code"], i["episodes"]) for i in london["items"]] == [("RJ1", 5)]


async def test_provider_money_by_month(stack) -> None:
    r = await stack["payments"].get("/v1/publication/providers/RJ1/money", params={"from": M1, "to": M3}, headers=PUBLIC)
    assert r.status_code == 200, r.text
    months = {m["period"]: m for m in r.json()["months"]}
    assert list(months) == [M1, M2, M3]
    m1 = months[M1]
    assert (m1["episodes"], m1["at_risk_pence"], m1["released_pence"], m1["diverted_pence"], m1["still_held_pence"]) == \
        (5, 50_000, 45_000, 5_000, 0)
    assert months[M2]["still_held_pence"] == 10_000 and months[M3]["episodes"] == 0
    r = await stack["payments"].get("/v1/publication/providers/RJ1/money", headers=bearer_headers(["reports:read"], regions=["Y63"]))
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "provider_code"
    r = await stack["payments"].get("/v1/publication/providers/RJ1/money", params={"from": "2020-01", "to": "2026-01"}, headers=PUBLIC)
    assert r.status_code == 422  # at most 36 months
    assert (await stack["payments"].get("/v1/publication/providers/RJ1/money", headers=FINANCE)).status_code == 403


async def test_fund_inflows_by_provider(stack) -> None:
    body = (await stack["payments"].get("/v1/publication/funds/Y56/inflows", params={"from": M1, "to": M3}, headers=PUBLIC)).json()
    assert body["providers"] == [{"provider_code": "RJ1", "diverted_pence": 5_000, "appealed_back_pence": 0, "net_diverted_pence": 5_000}]
    assert body["net_diverted_pence"] == 5_000
    r = await stack["payments"].get("/v1/publication/funds/Y56/inflows", headers=bearer_headers(["reports:read"], regions=["Y63"]))
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "region_code"


async def test_settlements_and_the_episodes_behind_them(stack) -> None:
    pay = stack["payments"]
    page = (await pay.get("/v1/providers/RJ1/settlements", headers=LONDON_FINANCE)).json()
    [report] = page["items"]
    assert report["period"] == M1 and report["released_pence"] + report["diverted_pence"] == report["held_pence"] == 50_000
    sid = report["settlement_id"]
    first = (await pay.get(f"/v1/settlements/{sid}/episodes", params={"limit": 3}, headers=LONDON_FINANCE)).json()
    assert len(first["episodes"]) == 3 and first["next_cursor"] == first["episodes"][-1]["episode_id"]
    rest = (await pay.get(f"/v1/settlements/{sid}/episodes", params={"limit": 3, "cursor": first["next_cursor"]},
                          headers=LONDON_FINANCE)).json()
    lines = {e["episode_id"]: e for e in first["episodes"] + rest["episodes"]}
    assert set(lines) == {ep for ep, month in EPISODES if month == M1} and rest["next_cursor"] is None
    poor = lines[EPISODES[3][0]]
    assert (poor["fft_answer"], poor["released_pence"], poor["diverted_pence"], poor["instrument"]) == (4, 5_000, 5_000, "fft")
    unanswered = lines[EPISODES[4][0]]
    assert unanswered["instrument"] is None and unanswered["released_pence"] == 10_000
    r = await pay.get(f"/v1/settlements/{sid}/episodes.csv", headers=LONDON_FINANCE)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 5 and sum(int(row["diverted_pence"]) for row in rows) == 5_000 and rows[0]["settlement_id"] == sid
    # Outside the binding: the settlement is a record (404), the provider an organisation (403).
    assert (await pay.get(f"/v1/settlements/{sid}/episodes", headers=NORTH_EAST_FINANCE)).status_code == 404
    assert (await pay.get(f"/v1/settlements/{sid}/episodes.csv", headers=NORTH_EAST_FINANCE)).status_code == 404
    r = await pay.get("/v1/providers/RJ1/settlements", headers=NORTH_EAST_FINANCE)
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "provider_code"
    assert (await pay.get(f"/v1/settlements/{sid}/episodes", headers=PUBLIC)).status_code == 403  # finance needs ledger:read
    assert (await pay.get("/v1/providers/RJ1/settlements", params={"cursor": "bm9wZQ"}, headers=FINANCE)).status_code == 400


async def test_commissioner_month_by_provider(stack) -> None:
    body = (await stack["payments"].get(f"/v1/commissioners/QWE/periods/{M1}/providers",
                                        headers=bearer_headers(["ledger:read"], icbs=["QWE"]))).json()
    [row] = body["providers"]
    assert row["provider_code"] == "RJ1" and row["billed_pence"] == 500_000
    assert row["paid_now_pence"] + row["still_held_pence"] + row["released_pence"] + row["diverted_pence"] == row["billed_pence"]
    r = await stack["payments"].get(f"/v1/commissioners/QHM/periods/{M1}/providers", headers=LONDON_FINANCE)
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "commissioner_code"


# ---------------------------------------------------------------------------------------------
# Ledger
# ---------------------------------------------------------------------------------------------
async def test_fund_balance_history_by_month_and_day(stack) -> None:
    today = datetime.now(timezone.utc).date()
    r = await stack["ledger"].get("/v1/publication/funds/Y56/balance-history", headers=PUBLIC)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["account_id"] == "fund:Y56" and body["interval"] == "month" and len(body["points"]) == 12
    assert body["opening_balance_pence"] == 0 and body["points"][-1] == {
        "period": f"{today:%Y-%m}", "at": body["points"][-1]["at"], "closing_balance_pence": 5_000}
    days = (await stack["ledger"].get("/v1/publication/funds/Y56/balance-history",
                                      params={"interval": "day", "from": (today - timedelta(days=2)).isoformat(),
                                              "to": today.isoformat()}, headers=PUBLIC)).json()
    assert [p["closing_balance_pence"] for p in days["points"]] == [0, 0, 5_000]
    r = await stack["ledger"].get("/v1/publication/funds/Y56/balance-history", headers=bearer_headers(["reports:read"], regions=["Y63"]))
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "region_code"
    r = await stack["ledger"].get("/v1/publication/funds/Y56/balance-history", params={"interval": "day", "from": "2024-01-01"},
                                  headers=PUBLIC)
    assert r.status_code == 422
    acct = (await stack["ledger"].get("/v1/accounts/provider:RJ1/balance-history", headers=LONDON_FINANCE)).json()
    assert acct["points"][-1]["closing_balance_pence"] == 6 * 90_000 + 45_000  # paid at once for six, released for five
    assert (await stack["ledger"].get("/v1/accounts/provider:RJ1/balance-history", headers=NORTH_EAST_FINANCE)).status_code == 403


async def test_an_upheld_appeal_shows_in_money_and_inflows(stack) -> None:
    """Last: it moves the diverted money back out of the fund."""
    pay = stack["payments"]
    episode = EPISODES[3][0]
    r = await pay.post(f"/v1/episodes/{episode}/appeal", json={"reason": "the answer was about another ward"},
                       headers=bearer_headers(["appeals:write"], subject="rj1-finance", ods=["RJ1"]))
    assert r.status_code == 201, r.text
    r = await pay.post(f"/v1/episodes/{episode}/appeal/decision", json={"outcome": "upheld", "reason": "agreed"},
                       headers=bearer_headers(["appeals:decide"], subject="london-panel", regions=["Y56"]))
    assert r.status_code == 200, r.text
    months = (await pay.get("/v1/publication/providers/RJ1/money", params={"from": M1, "to": M1}, headers=PUBLIC)).json()["months"]
    assert (months[0]["appeals_lodged"], months[0]["appeals_upheld"], months[0]["appealed_back_pence"]) == (1, 1, 5_000)
    inflows = (await pay.get("/v1/publication/funds/Y56/inflows", params={"from": M1, "to": M1}, headers=PUBLIC)).json()
    assert inflows["net_diverted_pence"] == 0

    async def returned() -> bool:
        h = (await stack["ledger"].get("/v1/publication/funds/Y56/balance-history", headers=PUBLIC)).json()
        return h["points"][-1]["closing_balance_pence"] == 0

    await eventually(returned, timeout_s=120)
