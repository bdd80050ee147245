"""Unit and property tests for services/payments/domain.py (hold, decide, settle)."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.payments.domain import (
    Answer,
    Episode,
    appeal_transfer_id,
    commissioner_account,
    decide,
    fund_account,
    held_account,
    hold_transfer_id,
    period_of,
    provider_account,
    settle,
    settle_transfer_id,
    window_end,
)
from services.payments.schemes import FftRelease, Scheme
from shared.contracts import FftAnswer, PaymentRequested
from shared.money import BPS_WHOLE, InvariantError, bps_of
from tests.unit.payments_reference import hold, line_transfer

PROPS = settings(max_examples=150, deadline=None)
ACTIVITY = date(2026, 5, 10)


def scheme(**kw: Any) -> Scheme:
    base: dict[str, Any] = {"scheme_id": "t-1", "version": 1, "title": "T", "effective_from": date(2026, 4, 1)}
    base.update(kw)
    return Scheme.model_validate(base)


def episode(n: int | str, amount: int = 100_000, s: Scheme | None = None, *, provider: str = "RJ1", region: str = "Y56",
            activity: date = ACTIVITY) -> Episode:
    s = s if s is not None else scheme()
    ep, _ = hold(
        payment_id=f"pay-{n}", episode_id=f"ep-{n}", commissioner_code="QWE", provider_code=provider, region_code=region,
        service_type="inpatient", activity_date=activity, amount_pence=amount, scheme=s,
    )
    return ep


def at(day_offset: int, hours: int = 12, base: date = ACTIVITY) -> datetime:
    return datetime(base.year, base.month, base.day, tzinfo=timezone.utc) + timedelta(days=day_offset, hours=hours)


def fft(sub: str, ep: str, answer: FftAnswer, when: datetime | None = None) -> Answer:
    return Answer(sub, ep, "fft", when or at(3), fft_answer=answer)


def choice(sub: str, ep: str, value: str, when: datetime | None = None) -> Answer:
    return Answer(sub, ep, "patient_power", when or at(3), patient_choice=value)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------
def test_names() -> None:
    assert period_of(date(2026, 11, 30)) == "2026-11"
    assert period_of(date(987, 1, 1)) == "0987-01"
    assert commissioner_account("QWE") == "commissioner:QWE"
    assert provider_account("RJ1") == "provider:RJ1"
    assert held_account("RJ1") == "held:RJ1"
    assert fund_account("Y56") == "fund:Y56"
    assert (hold_transfer_id("p"), settle_transfer_id("p"), appeal_transfer_id("p")) == ("hold:p", "settle:p", "appeal:p")


# ---------------------------------------------------------------------------------------------
# hold
# ---------------------------------------------------------------------------------------------
def test_hold_pays_the_rest_and_holds_ten_percent() -> None:
    s = scheme()
    ep, t = hold(payment_id="pay-1", episode_id="ep-1", commissioner_code="QWE", provider_code="RJ1", region_code="Y56",
                 service_type="inpatient", activity_date=ACTIVITY, amount_pence=100_000, scheme=s)
    assert ep.at_risk_pence == 10_000
    assert (ep.scheme_id, ep.scheme_version, ep.period) == ("t-1", 1, "2026-05")
    assert t.transfer_id == "hold:pay-1"
    assert [(leg.account_id, leg.amount_pence) for leg in t.legs] == [
        ("commissioner:QWE", -100_000), ("provider:RJ1", 90_000), ("held:RJ1", 10_000),
    ]
    assert t.cause.kind == "payment_hold"
    assert (t.cause.payment_id, t.cause.episode_id, t.cause.provider_code, t.cause.period) == ("pay-1", "ep-1", "RJ1", "2026-05")
    assert (t.cause.scheme_id, t.cause.scheme_version) == ("t-1", 1)


def test_hold_rounds_the_at_risk_share_down() -> None:
    ep = episode(1, amount=999)
    assert ep.at_risk_pence == 99


def test_hold_tiny_amount_holds_nothing() -> None:
    ep, t = hold(payment_id="p", episode_id="e", commissioner_code="QWE", provider_code="RJ1", region_code="Y56",
                 service_type="gp", activity_date=ACTIVITY, amount_pence=9, scheme=scheme())
    assert ep.at_risk_pence == 0
    assert [(leg.account_id, leg.amount_pence) for leg in t.legs] == [("commissioner:QWE", -9), ("provider:RJ1", 9)]


def test_hold_out_of_trial_pays_in_full() -> None:
    ep, t = hold(payment_id="p", episode_id="e", commissioner_code="QWE", provider_code="RJ1", region_code="Y56",
                 service_type="gp", activity_date=ACTIVITY, amount_pence=50_000, scheme=None)
    assert ep.at_risk_pence == 0 and ep.scheme_id is None and ep.scheme_version is None
    assert [(leg.account_id, leg.amount_pence) for leg in t.legs] == [("commissioner:QWE", -50_000), ("provider:RJ1", 50_000)]
    assert t.cause.scheme_id is None


def test_hold_everything_at_risk_pays_nothing_up_front() -> None:
    _, t = hold(payment_id="p", episode_id="e", commissioner_code="QWE", provider_code="RJ1", region_code="Y56",
                service_type="gp", activity_date=ACTIVITY, amount_pence=50_000, scheme=scheme(at_risk_bps=10_000, cap_bps=0))
    assert [(leg.account_id, leg.amount_pence) for leg in t.legs] == [("commissioner:QWE", -50_000), ("held:RJ1", 50_000)]


@PROPS
@given(st.integers(1, 10_000_000_000), st.integers(0, BPS_WHOLE), st.booleans())
def test_hold_property(amount: int, at_risk_bps: int, in_trial: bool) -> None:
    s = scheme(at_risk_bps=at_risk_bps, cap_bps=0) if in_trial else None
    ep, t = hold(payment_id="p", episode_id="e", commissioner_code="QWE", provider_code="RJ1", region_code="Y56",
                 service_type="gp", activity_date=ACTIVITY, amount_pence=amount, scheme=s)
    legs = {leg.account_id: leg.amount_pence for leg in t.legs}
    assert sum(legs.values()) == 0
    assert legs["commissioner:QWE"] == -amount
    assert ep.at_risk_pence == (bps_of(amount, at_risk_bps) if in_trial else 0)
    assert legs.get("held:RJ1", 0) == ep.at_risk_pence
    assert legs.get("provider:RJ1", 0) + legs.get("held:RJ1", 0) == amount
    assert all(v != 0 for v in legs.values())


@pytest.mark.parametrize("length", [1, 93, 94, 95, 96, 100])
def test_hold_and_settle_accept_every_valid_payment_id(length: int) -> None:
    # Any payment_id that PaymentRequested accepts (ExternalId: up to 100 characters) must be holdable
    # and settleable: the ledger transfer ids derived from it must be valid ExternalIds too.
    payment_id = "p" * length
    req = PaymentRequested(payment_id=payment_id, episode_id="ep-1", commissioner_code="QWE", provider_code="RJ1",
                           service_type="inpatient", activity_date=ACTIVITY, amount_pence=100_000)
    s = scheme(min_responses_per_period=0)
    ep, t = hold(payment_id=req.payment_id, episode_id=req.episode_id, commissioner_code=req.commissioner_code,
                 provider_code=req.provider_code, region_code="Y56", service_type=req.service_type,
                 activity_date=req.activity_date, amount_pence=req.amount_pence, scheme=s)
    assert t.cause.payment_id == payment_id
    assert payment_id in t.transfer_id
    r = settle([ep], [], s, provider_code="RJ1", period="2026-05")
    assert line_transfer(r.lines[0]) is not None and payment_id in line_transfer(r.lines[0]).transfer_id
    assert len({t.transfer_id, line_transfer(r.lines[0]).transfer_id}) == 2


# ---------------------------------------------------------------------------------------------
# decide
# ---------------------------------------------------------------------------------------------
def test_window_end_is_midnight_after_the_last_day() -> None:
    assert window_end(ACTIVITY, scheme()) == datetime(2026, 7, 6, tzinfo=timezone.utc)  # 10 May + 56 days = 5 July
    assert window_end(ACTIVITY, scheme(decision_window_days=0)) == datetime(2026, 5, 11, tzinfo=timezone.utc)


def test_no_answer_releases_in_full() -> None:
    d = decide(episode(1), [], scheme())
    assert (d.release_bps, d.deciding_submission_id, d.valid_answers) == (10_000, None, 0)
    assert "no answer" in d.basis


@pytest.mark.parametrize(
    ("answer", "release"),
    [
        (FftAnswer.VERY_GOOD, 10_000),
        (FftAnswer.GOOD, 10_000),
        (FftAnswer.NEITHER, 10_000),
        (FftAnswer.POOR, 5_000),
        (FftAnswer.VERY_POOR, 0),
        (FftAnswer.DONT_KNOW, 10_000),
    ],
)
def test_fft_answer_release(answer: FftAnswer, release: int) -> None:
    d = decide(episode(1), [fft("s1", "ep-1", answer)], scheme())
    assert (d.release_bps, d.deciding_submission_id, d.valid_answers) == (release, "s1", 1)
    assert d.basis == f"FFT answer {answer.name.lower()}"


@pytest.mark.parametrize(("value", "release"), [("pay_in_full", 10_000), ("hold_back", 0), ("not_sure", 10_000)])
def test_patient_choice_release(value: str, release: int) -> None:
    d = decide(episode(1), [choice("s1", "ep-1", value)], scheme())
    assert (d.release_bps, d.deciding_submission_id) == (release, "s1")
    assert d.basis == f"patient chose {value}"


def test_fft_answer_as_plain_int_is_accepted() -> None:
    d = decide(episode(1), [Answer("s1", "ep-1", "fft", at(1), fft_answer=5)], scheme())  # type: ignore[arg-type]
    assert d.release_bps == 0


def test_answers_outside_the_window_are_ignored() -> None:
    s = scheme(decision_window_days=10)
    answers = [
        fft("before", "ep-1", FftAnswer.VERY_POOR, at(-1, hours=23)),
        fft("after", "ep-1", FftAnswer.VERY_POOR, at(11, hours=0)),
        fft("last-moment", "ep-1", FftAnswer.POOR, at(10, hours=23) + timedelta(minutes=59, seconds=59)),
    ]
    d = decide(episode(1), answers, s)
    assert d.ignored == ("after", "before")
    assert (d.deciding_submission_id, d.release_bps, d.valid_answers) == ("last-moment", 5_000, 1)
    only_outside = decide(episode(1), answers[:2], s)
    assert (only_outside.release_bps, only_outside.deciding_submission_id) == (10_000, None)
    assert only_outside.ignored == ("after", "before")


def test_answer_at_midnight_of_the_activity_date_counts() -> None:
    d = decide(episode(1), [fft("s1", "ep-1", FftAnswer.VERY_POOR, at(0, hours=0))], scheme())
    assert d.deciding_submission_id == "s1"


def test_answers_in_other_time_zones_are_compared_as_instants() -> None:
    plus_two = timezone(timedelta(hours=2))
    # 01:00 on the activity date at +02:00 is 23:00 the day before in UTC: too early.
    early = Answer("s1", "ep-1", "fft", datetime(2026, 5, 10, 1, 0, tzinfo=plus_two), fft_answer=FftAnswer.VERY_POOR)
    assert decide(episode(1), [early], scheme()).deciding_submission_id is None


def test_answers_for_other_episodes_are_not_mine() -> None:
    d = decide(episode(1), [fft("s1", "ep-2", FftAnswer.VERY_POOR)], scheme())
    assert (d.release_bps, d.valid_answers, d.ignored) == (10_000, 0, ())


def test_earliest_answer_decides_without_amendments() -> None:
    answers = [fft("s2", "ep-1", FftAnswer.VERY_POOR, at(5)), fft("s1", "ep-1", FftAnswer.GOOD, at(2))]
    d = decide(episode(1), answers, scheme())
    assert (d.deciding_submission_id, d.release_bps, d.valid_answers, d.amendments) == ("s1", 10_000, 2, ("s2",))


def test_latest_answer_decides_with_amendments() -> None:
    answers = [fft("s2", "ep-1", FftAnswer.VERY_POOR, at(5)), fft("s1", "ep-1", FftAnswer.GOOD, at(2))]
    d = decide(episode(1), answers, scheme(allow_amendments=True))
    assert (d.deciding_submission_id, d.release_bps, d.amendments) == ("s2", 0, ("s1",))
    assert d.basis.endswith("(amended answer)")


def test_ties_on_time_are_broken_by_submission_id() -> None:
    answers = [fft("b", "ep-1", FftAnswer.VERY_POOR, at(2)), fft("a", "ep-1", FftAnswer.GOOD, at(2))]
    assert decide(episode(1), answers, scheme()).deciding_submission_id == "a"
    assert decide(episode(1), answers[::-1], scheme()).deciding_submission_id == "a"


def test_patient_choice_overrides_a_rating() -> None:
    answers = [fft("s1", "ep-1", FftAnswer.VERY_GOOD, at(1)), choice("s2", "ep-1", "hold_back", at(4))]
    d = decide(episode(1), answers, scheme())
    assert (d.deciding_submission_id, d.release_bps) == ("s2", 0)
    assert d.basis == "patient chose hold_back (patient choice overrides rating)"
    assert d.amendments == ("s1",)


def test_patient_choice_does_not_override_when_disabled() -> None:
    answers = [fft("s1", "ep-1", FftAnswer.VERY_GOOD, at(1)), choice("s2", "ep-1", "hold_back", at(4))]
    d = decide(episode(1), answers, scheme(patient_choice_overrides=False))
    assert (d.deciding_submission_id, d.release_bps) == ("s1", 10_000)


def test_dont_know_after_a_choice_cannot_divert() -> None:
    answers = [fft("s1", "ep-1", FftAnswer.DONT_KNOW, at(1)), fft("s2", "ep-1", FftAnswer.DONT_KNOW, at(2))]
    d = decide(episode(1), answers, scheme(allow_amendments=True))
    assert d.release_bps == 10_000


def test_scheme_release_values_are_used() -> None:
    s = scheme(fft_release_bps=FftRelease(poor=2_500, very_poor=1_000))
    assert decide(episode(1), [fft("s1", "ep-1", FftAnswer.POOR)], s).release_bps == 2_500
    assert decide(episode(1), [fft("s1", "ep-1", FftAnswer.VERY_POOR)], s).release_bps == 1_000


# ---------------------------------------------------------------------------------------------
# settle: examples
# ---------------------------------------------------------------------------------------------
def test_settle_nothing_to_settle() -> None:
    r = settle([], [], scheme(), provider_code="RJ1", period="2026-05")
    assert (r.episodes, r.billed_pence, r.held_pence, r.diverted_pence, r.lines, r.region_code) == (0, 0, 0, 0, [], "")


def test_settle_minimum_sample_not_met_diverts_nothing() -> None:
    s = scheme(min_responses_per_period=3)
    eps = [episode(i, s=s) for i in range(3)]
    answers = [fft("s0", "ep-0", FftAnswer.VERY_POOR), fft("s1", "ep-1", FftAnswer.VERY_POOR)]
    r = settle(eps, answers, s, provider_code="RJ1", period="2026-05")
    assert r.responses == 2 and r.min_sample_applied and not r.cap_applied
    assert r.diverted_pence == 0 and r.released_pence == r.held_pence == 30_000
    assert [line.uncapped_diverted_pence for line in r.lines] == [10_000, 10_000, 0]
    assert all(line.diverted_pence == 0 for line in r.lines)
    assert any("minimum sample not met (2 < 3 responses)" in step for step in r.lines[0].steps)


def test_settle_minimum_sample_flag_only_when_it_saved_money() -> None:
    s = scheme(min_responses_per_period=3)
    r = settle([episode(0, s=s)], [fft("s0", "ep-0", FftAnswer.GOOD)], s, provider_code="RJ1", period="2026-05")
    assert not r.min_sample_applied and r.diverted_pence == 0


def test_settle_without_cap() -> None:
    s = scheme(min_responses_per_period=2, cap_bps=1_000)
    eps = [episode(0, s=s), episode(1, s=s), episode(2, s=s)]
    answers = [fft("s0", "ep-0", FftAnswer.POOR), fft("s1", "ep-1", FftAnswer.VERY_POOR), fft("s2", "ep-2", FftAnswer.DONT_KNOW)]
    r = settle(eps, answers, s, provider_code="RJ1", period="2026-05")
    assert [(line.diverted_pence, line.released_pence) for line in r.lines] == [(5_000, 5_000), (10_000, 0), (0, 10_000)]
    assert (r.diverted_pence, r.released_pence, r.held_pence, r.billed_pence) == (15_000, 15_000, 30_000, 300_000)
    assert (r.cap_pence, r.cap_applied, r.responses, r.episodes) == (30_000, False, 3, 3)
    assert r.scheme_key == "t-1@1" and r.region_code == "Y56" and r.period == "2026-05"


def test_settle_cap_scales_diversions_by_largest_remainder() -> None:
    s = scheme(min_responses_per_period=0)  # 10% at risk, 3% cap
    eps = [episode("a", s=s), episode("b", s=s), episode("c", s=s)]
    answers = [fft("s1", "ep-a", FftAnswer.VERY_POOR), fft("s2", "ep-b", FftAnswer.POOR), fft("s3", "ep-c", FftAnswer.VERY_GOOD)]
    r = settle(eps, answers, s, provider_code="RJ1", period="2026-05")
    assert r.cap_applied and r.cap_pence == 9_000
    assert [line.uncapped_diverted_pence for line in r.lines] == [10_000, 5_000, 0]
    assert [line.diverted_pence for line in r.lines] == [6_000, 3_000, 0]
    assert [line.released_pence for line in r.lines] == [4_000, 7_000, 10_000]
    assert r.diverted_pence == 9_000
    assert any(step.startswith("cap applied: diversions of 15000p exceed 300 bps of 300000p billed = 9000p") for step in r.lines[0].steps)


def test_settle_cap_pennies_add_up_exactly() -> None:
    s = scheme(min_responses_per_period=0, at_risk_bps=10_000, cap_bps=300)
    eps = [episode("a", 111, s), episode("b", 111, s), episode("c", 112, s)]
    answers = [fft(f"s-{x}", f"ep-{x}", FftAnswer.VERY_POOR) for x in "abc"]
    r = settle(eps, answers, s, provider_code="RJ1", period="2026-05")
    assert r.cap_pence == 10
    assert [line.diverted_pence for line in r.lines] == [3, 3, 4]
    assert [line.released_pence for line in r.lines] == [108, 108, 108]


def test_settle_transfers() -> None:
    s = scheme(min_responses_per_period=0, cap_bps=1_000)
    eps = [episode("a", s=s), episode("b", s=s), episode("c", s=s)]
    answers = [fft("s1", "ep-a", FftAnswer.VERY_POOR), fft("s2", "ep-b", FftAnswer.POOR)]
    r = settle(eps, answers, s, provider_code="RJ1", period="2026-05")
    legs = [[(leg.account_id, leg.amount_pence) for leg in line_transfer(line).legs] for line in r.lines]  # type: ignore[union-attr]
    assert legs == [
        [("held:RJ1", -10_000), ("fund:Y56", 10_000)],
        [("held:RJ1", -10_000), ("provider:RJ1", 5_000), ("fund:Y56", 5_000)],
        [("held:RJ1", -10_000), ("provider:RJ1", 10_000)],
    ]
    t = line_transfer(r.lines[1])
    assert t is not None and t.transfer_id == "settle:pay-b"
    assert (t.cause.kind, t.cause.period, t.cause.scheme_id, t.cause.scheme_version, t.cause.episode_id) == (
        "settlement", "2026-05", "t-1", 1, "ep-b")
    assert r.lines[0].steps[-1] == "released 0p to provider:RJ1, diverted 10000p to fund:Y56"


def test_settle_episode_with_nothing_at_risk_has_no_transfer() -> None:
    s = scheme(min_responses_per_period=0)
    r = settle([episode(1, amount=5, s=s)], [fft("s1", "ep-1", FftAnswer.VERY_POOR)], s, provider_code="RJ1", period="2026-05")
    assert line_transfer(r.lines[0]) is None
    assert (r.lines[0].released_pence, r.lines[0].diverted_pence) == (0, 0)


def test_settle_divert_false_releases_everything() -> None:
    s = scheme(min_responses_per_period=0, cap_bps=1_000)
    eps = [episode(0, s=s)]
    r = settle(eps, [fft("s0", "ep-0", FftAnswer.VERY_POOR)], s, provider_code="RJ1", period="2026-05", divert=False)
    assert r.diverted_pence == 0 and r.released_pence == 10_000
    assert r.lines[0].uncapped_diverted_pence == 10_000
    assert "period already settled: late episode released in full" in r.lines[0].steps


def test_settle_filters_provider_period_and_scheme() -> None:
    s = scheme(min_responses_per_period=0, cap_bps=1_000)
    other_version = scheme(version=2, min_responses_per_period=0, cap_bps=1_000)
    eps = [
        episode("mine", s=s),
        episode("other-provider", s=s, provider="RTH", region="Y59"),
        episode("other-month", s=s, activity=date(2026, 6, 1)),
        episode("other-scheme", s=other_version),
        hold(payment_id="p-x", episode_id="ep-out", commissioner_code="QWE", provider_code="RJ1", region_code="Y56",
             service_type="gp", activity_date=ACTIVITY, amount_pence=100_000, scheme=None)[0],
    ]
    r = settle(eps, [], s, provider_code="RJ1", period="2026-05")
    assert [line.episode.episode_id for line in r.lines] == ["ep-mine"]
    assert r.billed_pence == 100_000


def test_settle_refuses_two_lines_for_one_episode() -> None:
    s = scheme()
    with pytest.raises(InvariantError, match="one settlement line per episode"):
        settle([episode(1, s=s), episode(1, s=s)], [], s, provider_code="RJ1", period="2026-05")


def test_dont_know_and_silence_never_divert_even_when_sample_is_met() -> None:
    s = scheme(min_responses_per_period=0, cap_bps=1_000, allow_amendments=True)
    eps = [episode(i, s=s) for i in range(4)]
    answers = [fft("s0", "ep-0", FftAnswer.DONT_KNOW), fft("s1", "ep-1", FftAnswer.DONT_KNOW, at(1)),
               fft("s1b", "ep-1", FftAnswer.DONT_KNOW, at(2)), fft("s3", "ep-3", FftAnswer.VERY_POOR)]
    r = settle(eps, answers, s, provider_code="RJ1", period="2026-05")
    assert [line.diverted_pence for line in r.lines] == [0, 0, 0, 10_000]
    assert r.responses == 3


# ---------------------------------------------------------------------------------------------
# settle: properties
# ---------------------------------------------------------------------------------------------
@st.composite
def schemes(draw: st.DrawFn) -> Scheme:
    at_risk = draw(st.integers(0, BPS_WHOLE))
    return scheme(
        at_risk_bps=at_risk,
        cap_bps=draw(st.integers(0, at_risk)),
        min_responses_per_period=draw(st.integers(0, 8)),
        decision_window_days=draw(st.integers(0, 60)),
        patient_choice_overrides=draw(st.booleans()),
        allow_amendments=draw(st.booleans()),
        fft_release_bps=FftRelease(**{k: draw(st.integers(0, BPS_WHOLE)) for k in ("very_good", "good", "neither", "poor", "very_poor")}),
    )


@st.composite
def settlement_cases(draw: st.DrawFn) -> tuple[Scheme, list[Episode], list[Answer]]:
    s = draw(schemes())
    n = draw(st.integers(0, 12))
    eps = [
        episode(i, amount=draw(st.integers(1, 10_000_000)), s=s, activity=date(2026, 5, draw(st.integers(1, 31))))
        for i in range(n)
    ]
    answers = []
    for k in range(draw(st.integers(0, 25))):
        ep_index = draw(st.integers(0, n))  # n = an episode nobody billed
        base = eps[ep_index].activity_date if ep_index < n else ACTIVITY
        when = datetime(base.year, base.month, base.day, tzinfo=timezone.utc) + timedelta(
            days=draw(st.integers(-3, 65)), hours=draw(st.integers(0, 23)), minutes=draw(st.sampled_from([0, 30]))
        )
        if draw(st.booleans()):
            answers.append(Answer(f"s{k:02d}", f"ep-{ep_index}", "fft", when, fft_answer=draw(st.sampled_from(list(FftAnswer)))))
        else:
            answers.append(Answer(f"s{k:02d}", f"ep-{ep_index}", "patient_power", when,
                                  patient_choice=draw(st.sampled_from(["pay_in_full", "hold_back", "not_sure"]))))
    return s, eps, answers


def _valid_episode_ids(s: Scheme, eps: list[Episode], answers: list[Answer]) -> set[str]:
    """Episodes with at least one answer inside their decision window (computed independently)."""
    out = set()
    for e in eps:
        start = datetime(e.activity_date.year, e.activity_date.month, e.activity_date.day, tzinfo=timezone.utc)
        end = start + timedelta(days=s.decision_window_days + 1)
        if any(a.episode_id == e.episode_id and start <= a.authored_at < end for a in answers):
            out.add(e.episode_id)
    return out


@PROPS
@given(settlement_cases(), st.randoms(use_true_random=False))
def test_settle_properties(case: tuple[Scheme, list[Episode], list[Answer]], rng: random.Random) -> None:
    s, eps, answers = case
    r = settle(eps, answers, s, provider_code="RJ1", period="2026-05")

    assert r.episodes == len(eps) == len(r.lines)
    assert r.billed_pence == sum(e.amount_pence for e in eps)
    assert r.cap_pence == bps_of(r.billed_pence, s.cap_bps)
    responded = _valid_episode_ids(s, eps, answers)
    assert r.responses == len(responded)

    for line in r.lines:
        e = line.episode
        assert line.released_pence + line.diverted_pence == e.at_risk_pence
        assert 0 <= line.diverted_pence <= line.uncapped_diverted_pence <= e.at_risk_pence
        assert line.uncapped_diverted_pence == bps_of(e.at_risk_pence, BPS_WHOLE - line.decision.release_bps)
        if line.decision.release_bps == BPS_WHOLE:  # no answer, "don't know", "not sure", full-release rating
            assert line.diverted_pence == 0
        if e.episode_id not in responded:
            assert line.decision.deciding_submission_id is None and line.diverted_pence == 0
        deciding = next((a for a in answers if a.submission_id == line.decision.deciding_submission_id), None)
        if deciding is not None and deciding.fft_answer == FftAnswer.DONT_KNOW:
            assert line.diverted_pence == 0
        if e.at_risk_pence:
            transfer = line_transfer(line)
            assert transfer is not None
            legs = {leg.account_id: leg.amount_pence for leg in transfer.legs}
            assert legs["held:RJ1"] == -e.at_risk_pence
            assert legs.get("provider:RJ1", 0) == line.released_pence
            assert legs.get("fund:Y56", 0) == line.diverted_pence
        else:
            assert line_transfer(line) is None

    assert r.released_pence + r.diverted_pence == r.held_pence == sum(e.at_risk_pence for e in eps)
    assert r.diverted_pence <= r.held_pence
    assert r.diverted_pence <= r.cap_pence
    uncapped_total = sum(line.uncapped_diverted_pence for line in r.lines)
    if r.responses < s.min_responses_per_period:
        assert r.diverted_pence == 0 and not r.cap_applied
        assert r.min_sample_applied == (uncapped_total > 0)
    elif uncapped_total > r.cap_pence:
        assert r.cap_applied and r.diverted_pence == r.cap_pence
    else:
        assert not r.cap_applied and r.diverted_pence == uncapped_total

    # Arrival order never matters: any permutation of answers (or episodes) gives the same report.
    shuffled_answers = list(answers)
    rng.shuffle(shuffled_answers)
    shuffled_eps = list(eps)
    rng.shuffle(shuffled_eps)
    assert settle(eps, shuffled_answers, s, provider_code="RJ1", period="2026-05") == r
    assert settle(shuffled_eps, answers[::-1], s, provider_code="RJ1", period="2026-05") == r

    # A late settlement never diverts.
    late = settle(eps, answers, s, provider_code="RJ1", period="2026-05", divert=False)
    assert late.diverted_pence == 0 and late.released_pence == late.held_pence


@PROPS
@given(settlement_cases())
def test_dont_know_and_no_answer_never_divert(case: tuple[Scheme, list[Episode], list[Answer]]) -> None:
    s, eps, answers = case
    only_dont_know = [
        Answer(a.submission_id, a.episode_id, "fft", a.authored_at, fft_answer=FftAnswer.DONT_KNOW) for a in answers
    ]
    for given_answers in (only_dont_know, []):
        r = settle(eps, given_answers, s, provider_code="RJ1", period="2026-05")
        assert r.diverted_pence == 0
        assert all(line.uncapped_diverted_pence == 0 and line.decision.release_bps == BPS_WHOLE for line in r.lines)
        assert r.released_pence == r.held_pence
        assert not r.min_sample_applied and not r.cap_applied


@PROPS
@given(settlement_cases())
def test_more_favourable_answers_never_divert_more(case: tuple[Scheme, list[Episode], list[Answer]]) -> None:
    # Turning every answer into "very good"/"pay in full" under a scheme that releases those in full gives zero diversion.
    s, eps, answers = case
    s = s.model_copy(update={"fft_release_bps": s.fft_release_bps.model_copy(update={"very_good": BPS_WHOLE})})
    happy = [
        Answer(a.submission_id, a.episode_id, "fft", a.authored_at, fft_answer=FftAnswer.VERY_GOOD)
        if a.instrument == "fft"
        else Answer(a.submission_id, a.episode_id, "patient_power", a.authored_at, patient_choice="pay_in_full")
        for a in answers
    ]
    assert settle(eps, happy, s, provider_code="RJ1", period="2026-05").diverted_pence == 0


# ---------------------------------------------------------------------------------------------
# Trust boundary: contracts, plausible dates, settlement only once the month is over
# ---------------------------------------------------------------------------------------------
def test_a_commissioner_pays_only_trusts_it_holds_a_contract_with() -> None:
    from services.payments.domain import InputError, validate_codes
    from shared.contracts import PaymentRequested
    from shared.reference import load_reference

    ref = load_reference()

    def req(icb: str, ods: str) -> PaymentRequested:
        return PaymentRequested(payment_id="p", episode_id="e", commissioner_code=icb, provider_code=ods,
                                service_type="inpatient", activity_date=date(2026, 10, 1), amount_pence=100)

    assert validate_codes(req("QWE", "RJ1"), ref) == "Y56"
    with pytest.raises(InputError, match="QWE holds no contract with RTD") as caught:
        validate_codes(req("QWE", "RTD"), ref)
    assert caught.value.field == "provider_code"
    with pytest.raises(InputError, match="is a site; payments name its trust"):
        validate_codes(req("QWE", "RJ121"), ref)


def test_activity_dates_must_be_plausible() -> None:
    from services.payments.domain import InputError, activity_window, check_activity_date

    window = activity_window(date(2026, 12, 2), 730)
    check_activity_date(date(2026, 12, 3), window)  # tomorrow: English summer time runs ahead of UTC
    for bad in (date(9999, 12, 31), date(2026, 12, 4), date(2024, 1, 1), date(1, 1, 1)):
        with pytest.raises(InputError) as caught:
            check_activity_date(bad, window)
        assert caught.value.field == "activity_date"


def test_a_period_settles_only_once_every_decision_window_has_closed() -> None:
    from services.payments.domain import latest_settleable_period, settlement_opens_on

    assert settlement_opens_on("2026-10", [56]) == date(2026, 12, 27)  # 31 Oct + 56 days + 1
    assert settlement_opens_on("2026-12", [56, 30]) == date(2027, 2, 26)
    assert settlement_opens_on("2024-02", [0]) == date(2024, 3, 1)  # leap year
    assert latest_settleable_period(date(2026, 12, 2), 56) == "2026-09"
    assert latest_settleable_period(date(2026, 12, 27), 56) == "2026-10"


def test_a_period_settles_once_and_later_units_are_supplementary() -> None:
    from services.payments.domain import NotYet, require_settleable, unit_settlement

    s = scheme()
    assert unit_settlement("RJ1", "2026-05", s, 0) == ("RJ1:2026-05:t-1@1", True)
    assert unit_settlement("RJ1", "2026-05", s, 1) == ("RJ1:2026-05:t-1@1:late-1", False)
    assert unit_settlement("RJ1", "2026-05", s, 4) == ("RJ1:2026-05:t-1@1:late-4", False)
    with pytest.raises(InvariantError):
        unit_settlement("RJ1", "2026-05", s, -1)
    require_settleable("2026-10", [56], date(2026, 12, 27))
    with pytest.raises(NotYet) as caught:
        require_settleable("2026-10", [56, 30], date(2026, 12, 26))
    assert caught.value.opens_on == date(2026, 12, 27) and "may be settled from 2026-12-27" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# Planned transfers keep the contract's shape and the money invariants without a model
# ---------------------------------------------------------------------------------------------
def _planned_episode(model: str = "two_phase") -> Episode:
    from services.payments.domain import new_episode

    return new_episode(payment_id="pay-1", episode_id="ep-1", commissioner_code="QWE", provider_code="RJ1", region_code="Y56",
                       service_type="inpatient", activity_date=ACTIVITY, amount_pence=100_000, scheme=scheme(),
                       hold_model=model)  # type: ignore[arg-type]


def test_planned_legs_keep_the_money_invariants() -> None:
    from services.payments.domain import _planned

    e = _planned_episode()
    with pytest.raises(InvariantError, match="sum to zero"):
        _planned("pay:pay-1", "posted", (("commissioner:QWE", -5), ("provider:RJ1", 4)), "payment", e)
    with pytest.raises(InvariantError, match="non-zero"):
        _planned("pay:pay-1", "posted", (("commissioner:QWE", 0), ("provider:RJ1", 0)), "payment", e)
    with pytest.raises(InvariantError, match="two legs"):
        _planned("pay:pay-1", "posted", (("commissioner:QWE", 0),), "payment", e)


def test_planned_two_phase_steps_keep_the_contract_shape() -> None:
    from services.payments.domain import _planned

    e = _planned_episode()
    with pytest.raises(InvariantError, match="pending"):
        _planned("release:pay-1", "post_pending", (), "release", e)  # names no pending hold
    with pytest.raises(InvariantError, match="no legs"):
        _planned("release:pay-1", "void_pending", (("commissioner:QWE", -5), ("provider:RJ1", 5)), "release", e, "hold:pay-1")
    with pytest.raises(InvariantError, match="sum to zero"):
        _planned("release:pay-1", "post_pending", (("commissioner:QWE", -5), ("provider:RJ1", 4)), "release", e, "hold:pay-1")
    with pytest.raises(InvariantError, match="no pending id"):
        _planned("divert:pay-1", "posted", (("commissioner:QWE", -5), ("fund:Y56", 5)), "diversion", e, "hold:pay-1")


@pytest.mark.parametrize("model", ["held_account", "two_phase"])
def test_nothing_at_risk_settles_with_no_transfer(model: str) -> None:
    from services.payments.domain import new_episode, settlement_plan

    e = new_episode(payment_id="p", episode_id="e", commissioner_code="QWE", provider_code="RJ1", region_code="Y56",
                    service_type="gp", activity_date=ACTIVITY, amount_pence=100_000, scheme=scheme(at_risk_bps=0, cap_bps=0),
                    hold_model=model)  # type: ignore[arg-type]
    assert settlement_plan(e, released_pence=0, diverted_pence=0) == ()
    with pytest.raises(InvariantError):
        settlement_plan(_planned_episode(model), released_pence=1, diverted_pence=1)  # held = released + diverted
