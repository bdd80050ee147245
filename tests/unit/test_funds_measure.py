"""A project's measure and its computed status (services/funds/measure.py), and the feedback
tallies it is charted from (services/funds/tally.py): pure, plain values."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.funds import measure, tally
from services.funds.measure import Tally, Thresholds, assess
from shared.contracts import FeedbackReceived, GrantMeasure
from shared.reference import load_reference

REF = load_reference(None)
TODAY = date(2026, 11, 25)  # a Wednesday
START = date(2026, 9, 28)  # a Monday, 8 whole weeks before this week
BASELINE = GrantMeasure(kind="fft_positive", interval="week", baseline_from=START - timedelta(weeks=12),
                        baseline_to=START - timedelta(days=1))
WAVY = [5, 6, 5, 4, 5, 6, 5, 5, 4, 5, 6, 5]  # positive answers out of 10 each week


def weekly(values: list[int], first: date, responses: int = 10) -> list[Tally]:
    return [Tally(first + timedelta(weeks=i), responses, v) for i, v in enumerate(values)]


def test_periods_are_iso_weeks_or_months_and_only_whole_ones_count() -> None:
    assert measure.period_start("week", date(2026, 11, 25)) == date(2026, 11, 23)
    assert measure.period_label("week", date(2026, 11, 23)) == "2026-W48"
    assert measure.period_label("month", date(2026, 2, 1)) == "2026-02"
    assert measure.next_period("month", date(2026, 12, 1)) == date(2027, 1, 1)
    # a partial week at either end is left out
    assert measure.whole_periods("week", date(2026, 11, 4), date(2026, 11, 22)) == [date(2026, 11, 9), date(2026, 11, 16)]
    assert measure.whole_periods("month", date(2026, 1, 1), date(2026, 3, 30)) == [date(2026, 1, 1), date(2026, 2, 1)]


@given(st.dates(date(2001, 1, 1), date(2098, 1, 1)), st.integers(0, 800), st.sampled_from(["week", "month"]))
def test_whole_periods_lie_inside_the_window_and_follow_each_other(first: date, days: int, interval: str) -> None:
    last = first + timedelta(days=days)
    starts = measure.whole_periods(interval, first, last)  # type: ignore[arg-type]
    for a, b in zip(starts, starts[1:]):
        assert measure.next_period(interval, a) == b  # type: ignore[arg-type]
    for s in starts:
        assert first <= s and measure.next_period(interval, s) - timedelta(days=1) <= last  # type: ignore[arg-type]


def test_a_project_whose_patients_now_say_good_is_improving() -> None:
    tallies = weekly(WAVY, BASELINE.baseline_from) + weekly([10] * 8, START)
    a = assess(BASELINE, START, tallies, today=TODAY)
    assert a.status == "improving" and (a.baseline_points, a.after_points) == (12, 8)
    assert a.mean == pytest.approx(100 * sum(WAVY) / 120) and a.upper_process_limit is not None
    assert all(p.variation == "special_cause_improvement" for p in a.points if p.phase == "after")
    assert a.points[-1].period == "2026-W47"  # this week (W48) is not over: it waits


def test_the_same_variation_after_the_start_is_no_change_and_a_drop_is_worse() -> None:
    same = assess(BASELINE, START, weekly(WAVY, BASELINE.baseline_from) + weekly(WAVY[:8], START), today=TODAY)
    assert same.status == "no_change" and same.concern_signals == same.improvement_signals == 0
    worse = assess(BASELINE, START, weekly(WAVY, BASELINE.baseline_from) + weekly([5, 6, 0, 5, 5, 6, 5, 5], START), today=TODAY)
    assert worse.status == "worse" and worse.concern_signals == 1


def test_weeks_with_too_few_answers_are_left_off_and_too_few_points_say_so() -> None:
    tallies = weekly(WAVY, BASELINE.baseline_from) + weekly([4] * 8, START, responses=4)  # 4 answers: below 5
    a = assess(BASELINE, START, tallies, today=TODAY)
    assert a.status == "too_few_responses" and a.after_points == 0 and a.excluded_points == 8
    assert all(not p.included and p.variation is None for p in a.points if p.phase == "after")
    short = assess(BASELINE, START, weekly(WAVY[:5], BASELINE.baseline_from), today=TODAY)
    assert short.status == "too_few_responses" and "baseline has 5 points" in short.reason
    lenient = assess(BASELINE, START, tallies, today=TODAY, thresholds=Thresholds(min_responses_per_point=4))
    assert lenient.status == "improving" and lenient.after_points == 8  # 4 of 4 positive: 100%, above the limits


def test_fft_negative_improves_downwards_and_proms_are_means() -> None:
    neg = BASELINE.model_copy(update={"kind": "fft_negative"})
    a = assess(neg, START, weekly(WAVY, BASELINE.baseline_from) + weekly([0] * 8, START), today=TODAY)
    assert a.improvement_direction == "decrease" and a.status == "improving"
    prom = GrantMeasure(kind="prom_health_gain", interval="month", instrument="ohs", procedure="primary_hip_replacement",
                        baseline_from=date(2025, 1, 1), baseline_to=date(2025, 12, 31))
    gains = [Tally(date(2025, m, 1), 20, 20 * g) for m, g in zip(range(1, 13), [14, 15, 13, 14, 16, 14, 15, 13, 14, 15, 14, 16])]
    after = [Tally(date(2026, m, 1), 20, 20 * 22) for m in range(1, 8)]
    a = assess(prom, date(2026, 1, 1), gains + after, today=TODAY)
    assert a.unit == "score" and a.status == "improving" and a.points[0].value == 14.0


# ---------------------------------------------------------------------------------------------
# Tallies
# ---------------------------------------------------------------------------------------------
AT = datetime(2026, 11, 18, 10, tzinfo=timezone.utc)


def fft(sid: str, answer: int, *, provider: str = "RJ1", amends: str | None = None, at: datetime = AT,
        setting: str | None = None) -> FeedbackReceived:
    return FeedbackReceived(submission_id=sid, episode_id=f"ep-{sid}", provider_code=provider, patient_pseudonym="a" * 64,
                            instrument="fft", authored_at=at, fft_answer=answer, amends_submission_id=amends,  # type: ignore[arg-type]
                            setting=setting)  # type: ignore[arg-type]


def test_an_answer_counts_once_in_its_week_and_month_under_its_trust_and_setting() -> None:
    p = tally.plan([fft("s1", 1, provider="RJ122"), fft("s2", 6, setting="maternity"), fft("s1", 1, provider="RJ122")],
                   ref=REF, known={}, current={})
    assert p.duplicates == 1 and len(p.new) == 2
    week, month = date(2026, 11, 16), date(2026, 11, 1)
    assert p.fft[("week", week, "RJ1", "unspecified")] == [1, 1, 0]  # a site's answer counts for its trust
    assert p.fft[("month", month, "RJ1", "maternity")] == [1, 0, 0]  # "Don't know" is an answer, neither good nor poor


def test_an_amendment_replaces_the_answer_it_amends() -> None:
    first = tally.plan([fft("s1", 1)], ref=REF, known={}, current={})
    [c] = first.new
    later_week = AT + timedelta(days=7)
    p = tally.plan([fft("s2", 5, amends="s1", at=later_week), fft("s3", 4, amends="s2", at=later_week)], ref=REF,
                   known={"s1": c}, current={"s1": c})
    assert p.superseded == ["s1"] and p.current == {"s3"}
    assert p.fft[("week", date(2026, 11, 16), "RJ1", "unspecified")] == [-1, -1, 0]
    assert p.fft[("week", date(2026, 11, 23), "RJ1", "unspecified")] == [1, 0, 1]  # s2 added then replaced by s3


def test_the_patient_power_question_is_not_kept_and_proms_need_a_score_or_gain() -> None:
    pp = FeedbackReceived(submission_id="p1", episode_id="e", provider_code="RJ1", patient_pseudonym="b" * 64,
                          instrument="patient_power", authored_at=AT, patient_choice="hold_back")
    prom = FeedbackReceived(submission_id="h1", episode_id="e2", provider_code="RJ1", patient_pseudonym="b" * 64, instrument="ohs",
                            authored_at=AT, procedure="primary_hip_replacement", timing="post_op", prom_score=40, health_gain=18)
    pre = prom.model_copy(update={"submission_id": "h0", "timing": "pre_op", "prom_score": 22, "health_gain": None})
    p = tally.plan([pp, prom, pre], ref=REF, known={}, current={})
    assert p.unmeasured == 2 and [c.submission_id for c in p.new] == ["h1"]
    assert p.prom[("week", date(2026, 11, 16), "RJ1", "ohs", "primary_hip_replacement")] == [1, 40, 1, 18]
    with pytest.raises(tally.UnknownProvider):
        tally.plan([fft("x", 1, provider="ZZZ")], ref=REF, known={}, current={})


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 6), st.booleans()), max_size=30), st.integers(1, 4))
def test_tallies_equal_the_latest_answer_per_question_however_delivered(items: list[tuple[int, int, bool]], chunks: int) -> None:
    # answers to 6 questions (root "q<k>"), each later one an amendment; delivered in batches, some twice
    events, latest = [], {}
    for i, (q, answer, again) in enumerate(items):
        ev = fft(f"q{q}" if f"q{q}" not in {e.submission_id for e in events} else f"q{q}-{i}", answer,
                 amends=None if f"q{q}" not in {e.submission_id for e in events} else f"q{q}")
        events.append(ev)
        latest[q] = answer
        if again:
            events.append(ev)
    known: dict[str, tally.Counted] = {}
    current: dict[str, tally.Counted] = {}
    totals = [0, 0, 0]
    size = max(1, len(events) // chunks)
    for start in range(0, len(events), size):
        p = tally.plan(events[start:start + size], ref=REF, known=known, current=current)
        for sid in p.superseded:
            current.pop(known[sid].root_id, None)
        for c in p.new:
            known[c.submission_id] = c
            if c.submission_id in p.current:
                current[c.root_id] = c
        for key, delta in p.fft.items():
            if key[0] == "week":
                totals = [a + b for a, b in zip(totals, delta)]
    assert totals == [len(latest), sum(1 for a in latest.values() if a in (1, 2)), sum(1 for a in latest.values() if a in (4, 5))]
