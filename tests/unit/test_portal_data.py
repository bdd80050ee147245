"""The portal's data layer (services/portal/data.py): the services' JSON into view models, with
every interval, limit and signal from shared.stats and withheld figures never turned into numbers."""

from __future__ import annotations

import csv
import io

import pytest

from services.portal import data, views
from services.portal.views import SUPPRESSED, SUPPRESSED_SECONDARY
from shared.reference import load_reference
from shared.stats import funnel_limits, is_above_upper_limit, wilson_interval

REF = load_reference()
ANSWERS = ("very_good", "good", "neither", "poor", "very_poor", "dont_know")


def figures(n: int | None, positive: int | None = None, suppression: str = "none") -> dict:
    if suppression == "primary":
        return {"responses": None, "counts": None, "positive": None, "negative": None, "pct_positive": None,
                "pct_negative": None, "suppression": "primary"}
    if suppression == "secondary":
        return {"responses": None, "counts": None, "positive": None, "negative": None, "pct_positive": 80,
                "pct_negative": 10, "suppression": "secondary"}
    positive = n if positive is None else positive
    counts = dict.fromkeys(ANSWERS, 0) | {"very_good": positive, "poor": n - positive}
    pct = (200 * positive + n) // (2 * n) if n else None
    return {"responses": n, "counts": counts, "positive": positive, "negative": n - positive, "pct_positive": pct,
            "pct_negative": (100 - pct) if pct is not None else None, "suppression": "none"}


def row(code: str, f: dict, **extra) -> dict:
    return {"provider_code": code, "trust_code": code, "region_code": REF.providers[code].region_code if code in REF.providers else None,
            "figures": f, "by_setting": [], "by_mode": [], "previous": None, **extra}


def publication(rows: list[dict]) -> dict:
    shown = [r["figures"] for r in rows]
    n = sum(f["responses"] or 0 for f in shown) + 7  # the total also counts what is withheld
    positive = sum(f["positive"] or 0 for f in shown) + 5
    return {"period": "2026-Q3", "setting": None, "providers": rows, "total": figures(n, positive)}


def test_league_table_ranks_by_exact_fractions_with_wilson_intervals_and_exact_bands():
    pub = publication([
        row("RJ1", figures(100, 99)),  # far above the benchmark
        row("RRV", figures(40, 20)),  # far below
        row("RTH", figures(20, 16)),  # 0.8 exactly ...
        row("RA7", figures(10, 8)),  # ... the same % positive: the same rank, more responses first
        row("RGT", figures(0)),  # nothing to rank: left out
        row("RR8", figures(None, suppression="primary")),
        row("RH8", figures(None, suppression="secondary")),
    ])
    eligible = {"items": [{"provider_code": "RJ1", "service_type": "maternity", "episodes": 150},
                          {"provider_code": "RJ1", "service_type": "inpatient", "episodes": 50},
                          {"provider_code": "RR8", "service_type": "inpatient", "episodes": 9}]}
    prom = {"min_count": 30, "groups": [{"provider_code": "RJ1", "instrument": "ohs", "procedure": "primary_hip_replacement",
                                         "pairs": 40, "avg_health_gain": 19.25, "suppressed": False},
                                        {"provider_code": "RTH", "instrument": "oks", "procedure": "primary_knee_replacement",
                                         "pairs": 3, "avg_health_gain": None, "suppressed": True}]}
    page = data.league_table("2026-Q3", pub, eligible, prom, REF, previous_quarter="2026-Q2", next_quarter=None)
    codes = [r.ods_code for r in page.rows]
    assert codes == ["RJ1", "RTH", "RA7", "RRV", "RH8", "RR8"]
    assert [r.rank for r in page.rows] == [1, 2, 2, 4, None, None]
    benchmark = (99 + 20 + 16 + 8 + 5) / (170 + 7)
    assert page.benchmark_proportion == pytest.approx(benchmark)
    rj1, rth, ra7, rrv, rh8, rr8 = page.rows
    assert (rj1.interval_95.low, rj1.interval_95.high) == pytest.approx(wilson_interval(99, 100))
    assert rj1.funnel_band == "high_998" and is_above_upper_limit(99, 100, benchmark, 0.998)
    assert rrv.funnel_band == "low_998" and rth.funnel_band == "within"
    assert rj1.eligible_episodes == 200 and rj1.response_rate == pytest.approx(0.5) and rth.response_rate is None and rth.eligible_episodes == 0
    assert rj1.health_gain[0].text == "Oxford Hip Score, primary hip replacement: +19.2 (40 pairs; 0 to 48, higher is better)"
    assert rth.health_gain[0].average is None and "not published" in rth.health_gain[0].text
    # withheld: the word, never a number; the response rate too (times the episodes it would give the count)
    assert rr8.responses is SUPPRESSED and rr8.response_rate is SUPPRESSED and rr8.eligible_episodes == 9
    assert rh8.responses is SUPPRESSED_SECONDARY and rh8.positive_proportion is SUPPRESSED_SECONDARY
    # the funnel: exact limits around the benchmark, ordered, from 5 responses to past the largest provider
    first, last = page.funnel_limits[0], page.funnel_limits[-1]
    assert first.responses == 5 and last.responses >= 100
    assert (last.lower_95, last.upper_95) == pytest.approx(funnel_limits(int(last.responses), benchmark, 0.95))
    assert len(page.funnel_points()) == 4


def test_league_csv_stars_a_withheld_provider_and_its_response_rate():
    pub = publication([row("RJ1", figures(20, 18)), row("RR8", figures(None, suppression="primary"))])
    eligible = {"items": [{"provider_code": "RJ1", "service_type": "maternity", "episodes": 40},
                          {"provider_code": "RR8", "service_type": "maternity", "episodes": 12}]}
    rows = {r["Trust Code"]: r for r in csv.DictReader(io.StringIO("".join(data.league_csv(pub, eligible, REF))))}
    assert rows["RJ1"]["Total Responses"] == "20" and rows["RJ1"]["Total Eligible"] == "40" and rows["RJ1"]["Response Rate"] == "0.5000"
    assert rows["RJ1"]["Percentage Positive"] == "0.90" and rows["RJ1"]["Very Good"] == "18"
    withheld = rows["RR8"]
    assert withheld["Total Responses"] == withheld["Response Rate"] == withheld["Very Good"] == "*"
    assert withheld["Total Eligible"] == "12"  # episodes of care are not survey answers: shown


def _series(values: list[tuple[int | None, int | None, str]]) -> dict:
    points = []
    for k, (n, positive, suppression) in enumerate(values):
        period = f"2025-{k + 1:02d}" if k < 12 else f"2026-{k - 11:02d}"
        points.append({"period": period, "figures": figures(n, positive, suppression)})
    return {"interval": "month", "points": points}


def test_fft_periods_mark_the_planted_special_cause_and_leave_withheld_months_as_gaps():
    values = [(0, 0, "none"), (20, 17, "none"), (20, 18, "none"), (None, None, "primary"), (20, 17, "none"),
              (20, 16, "none"), (20, 18, "none"), (20, 17, "none"), (20, 4, "none"), (20, 17, "none"), (20, 18, "none"),
              (20, 17, "none"), (20, 18, "none")]
    months = data.fft_periods(_series(values))
    assert months[0].positive_proportion is None and not months[0].has_limits  # before the first result: no limits
    assert months[3].responses is SUPPRESSED and months[3].positive_proportion is SUPPRESSED and months[3].has_limits
    planted = months[8]
    assert planted.special_cause is not None and planted.special_cause.kind == "concern"
    assert planted.special_cause.rule == "a point beyond a process limit" and planted.positive_proportion == 0.2
    assert sum(1 for m in months if m.special_cause) == 1
    assert all(m.lower_limit == months[1].lower_limit for m in months[1:])  # one stretch of limits
    svg = views.ProviderPage("RJ1", "Guy's", "Y56", "London", months, ()).fft_chart()
    assert svg.count("pp-point--concern") == 1 and "pp-xmr-upper-limit" in svg


def test_fft_periods_without_enough_results_have_no_limits_and_no_signals():
    months = data.fft_periods(_series([(20, 17, "none"), (20, 2, "none"), (20, 18, "none")]))
    assert not any(m.has_limits for m in months) and not any(m.special_cause for m in months)
    assert "Too few results yet" in views.ProviderPage("RJ1", "Guy's", "Y56", "London", months, ()).fft_description()


def test_provider_quarter_keeps_a_withheld_quarter_withheld_and_compares_only_published_figures():
    withheld = row("RR8", figures(None, suppression="primary"), previous={"period": "2026-Q2", "responses": 30,
                                                                          "pct_positive": 90, "suppression": "none"})
    q = data.provider_quarter("2026-Q3", withheld, [], 40, REF, "2026-Q2")
    assert q.responses is SUPPRESSED and q.response_rate is SUPPRESSED and q.change_text == "No comparison"
    shown = row("RJ1", figures(50, 45), previous={"period": "2026-Q2", "responses": 40, "pct_positive": 85, "suppression": "none"},
                by_setting=[{"key": "maternity", "figures": figures(47, 43)}, {"key": "a_and_e", "figures": figures(None, suppression="primary")}])
    sites = [row("RJ1", figures(40, 36)), {**row("RJ1", figures(10, 9)), "provider_code": "RJ121"}]
    q = data.provider_quarter("2026-Q3", shown, sites, 100, REF, "2026-Q2")
    assert (q.responses, q.positive_percent, q.response_rate, q.change_text) == (50, 90, 0.5, "Up 5 percentage points")
    assert [(r.label, r.responses) for r in q.by_setting] == [("Maternity", 47), ("A&E", SUPPRESSED)]
    assert [r.label for r in q.by_site] == ["The trust (no site named)", "St Thomas' Hospital (RJ121)"]


def test_a_statement_page_names_answers_and_appeals():
    body = {"settlement": {"settlement_id": "RJ1:2026-09:x@1", "provider_code": "RJ1", "region_code": "Y56", "period": "2026-09",
                           "scheme_id": "x", "scheme_version": 1, "run_at": "2026-11-26T02:00:00Z", "run_by": "admin",
                           "billed_pence": 200_000, "held_pence": 20_000, "released_pence": 15_000, "diverted_pence": 5_000,
                           "responses": 2, "episodes": 2, "min_sample_applied": False, "cap_applied": False, "cap_pence": 20_000},
            "episodes": [{"episode_id": "e1", "commissioner_code": "QWE", "amount_pence": 100_000, "at_risk_pence": 10_000,
                          "released_pence": 5_000, "diverted_pence": 5_000, "basis": "FFT answer poor", "instrument": "fft",
                          "fft_answer": 4, "patient_choice": None, "appeal_status": "upheld", "appealed_back_pence": 5_000},
                         {"episode_id": "e2", "commissioner_code": "QWE", "amount_pence": 100_000, "at_risk_pence": 10_000,
                          "released_pence": 10_000, "diverted_pence": 0, "basis": None, "instrument": None, "fft_answer": None,
                          "patient_choice": None, "appeal_status": None, "appealed_back_pence": 0}]}
    page = data.statement_with_episodes("RJ1", REF, body, None)
    [st] = page.statements
    assert st.settled_at == "26 November 2026, 02:00:00 UTC" and st.href is None
    assert st.csv_href == "/finance/trusts/RJ1/statements/RJ1:2026-09:x@1/episodes.csv"
    e1, e2 = st.episodes
    assert e1.answer == "FFT: Poor" and e1.decision == "FFT answer poor; appeal upheld, £50.00 returned"
    assert e2.answer is None and e2.decision == "released in full"


def test_a_later_ledger_page_opens_with_the_balance_before_its_first_entry():
    body = {"opening_balance_pence": 0, "lines": [
        {"posted_at": "2026-12-02T10:00:00Z", "transfer_id": "divert:p1", "kind": "posted", "amount_pence": 5_000,
         "balance_after_pence": 25_000, "cause": {"kind": "diversion", "provider_code": "RJ1", "episode_id": "e1"}},
        {"posted_at": "2026-12-02T11:00:00Z", "transfer_id": "appeal:p0", "kind": "posted", "amount_pence": -5_000,
         "balance_after_pence": 20_000, "cause": {"kind": "appeal_upheld", "provider_code": "RJ1", "episode_id": "e0"}}]}
    page = data.region_ledger("Y56", REF, body, date_from="2026-12-01", date_to="2026-12-02", continued=True, next_href=None,
                              csv_href="/x.csv")
    assert page.opening_balance_pence == 20_000 and page.closing_balance_pence == 20_000
    assert [e.description for e in page.entries] == ["Diverted from RJ1 (episode e1)", "Appeal upheld: returned to RJ1 (episode e0)"]
    with pytest.raises(views.ViewModelError):  # a first page whose running balance does not follow its opening
        data.region_ledger("Y56", REF, body, date_from="2026-12-01", date_to="2026-12-02", continued=False, next_href=None,
                           csv_href="/x.csv")


def test_view_models_refuse_a_response_rate_for_a_withheld_provider():
    with pytest.raises(views.ViewModelError):
        views.LeagueTableRow("RR8", "x", SUPPRESSED, SUPPRESSED, None, None, None, eligible_episodes=9, response_rate=0.33)
    with pytest.raises(views.ViewModelError):
        views.ProviderQuarter("2026-Q3", SUPPRESSED, SUPPRESSED, "2026-Q2", 0, None, 9, 0.33)
