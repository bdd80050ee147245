"""Property tests (hypothesis) for the payments rules end to end, through the pure what-if replay:
random episodes, answers, schemes, hold models and orderings of the input events."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from services.payments import domain
from services.payments.schemes import FftRelease, Scheme, SchemeBook
from services.payments.whatif import apply_transfers, replay
from shared.contracts import FeedbackReceived, PaymentRequested
from shared.reference import load_reference

REF = load_reference()
PROPS = settings(max_examples=120, deadline=None)
PROVIDERS = [("RJ1", "QWE"), ("RTH", "QU9"), ("RA7", "QUY"), ("RRV", "QMJ")]
START = date(2026, 4, 1)


@st.composite
def schemes(draw) -> Scheme:  # type: ignore[no-untyped-def]
    at_risk = draw(st.integers(0, 10_000))
    return Scheme(
        scheme_id="prop", version=1, title="P", effective_from=START,
        at_risk_bps=at_risk,
        cap_bps=draw(st.integers(0, at_risk)),
        min_responses_per_period=draw(st.integers(0, 6)),
        decision_window_days=draw(st.integers(0, 60)),
        allow_amendments=draw(st.booleans()),
        patient_choice_overrides=draw(st.booleans()),
        fft_release_bps=FftRelease(**{k: draw(st.integers(0, 10_000)) for k in ("very_good", "good", "neither", "poor", "very_poor")}),
    )


@st.composite
def worlds(draw):  # type: ignore[no-untyped-def]
    n = draw(st.integers(1, 14))
    payments = []
    feedback = []
    for i in range(n):
        provider, icb = draw(st.sampled_from(PROVIDERS))
        activity = START + timedelta(days=draw(st.integers(0, 75)))
        payments.append(PaymentRequested(
            payment_id=f"pay-{i}", episode_id=f"ep-{i}", commissioner_code=icb, provider_code=provider,
            service_type="inpatient", activity_date=activity,
            amount_pence=draw(st.integers(1, 5_000_000)),
        ))
        for j in range(draw(st.integers(0, 3))):
            when = datetime(activity.year, activity.month, activity.day, tzinfo=timezone.utc) + timedelta(
                hours=draw(st.integers(-30, 24 * 70)))
            if draw(st.booleans()):
                feedback.append(FeedbackReceived(
                    submission_id=f"s-{i}-{j}", episode_id=f"ep-{i}", provider_code=provider, patient_pseudonym="a" * 64,
                    instrument="fft", authored_at=when, fft_answer=draw(st.integers(1, 6))))
            else:
                feedback.append(FeedbackReceived(
                    submission_id=f"s-{i}-{j}", episode_id=f"ep-{i}", provider_code=provider, patient_pseudonym="a" * 64,
                    instrument="patient_power", authored_at=when,
                    patient_choice=draw(st.sampled_from(["pay_in_full", "hold_back", "not_sure"]))))
    return payments, feedback


MODELS = st.sampled_from(domain.HOLD_MODELS)


@PROPS
@given(worlds(), schemes(), MODELS)
def test_each_episode_paid_plus_diverted_is_the_amount(world, scheme: Scheme, model) -> None:  # type: ignore[no-untyped-def]
    payments, feedback = world
    r = replay(payments, feedback, SchemeBook([scheme]), REF, hold_model=model)
    settled = {line.episode.payment_id: line for rep in r.reports for line in rep.lines}
    for e in r.episodes:
        assert e.at_risk_pence == domain.bps_of(e.amount_pence, scheme.at_risk_bps)
        line = settled.get(e.payment_id)
        assert (line is None) == (e.at_risk_pence == 0)  # nothing at risk: paid in full, nothing to settle
        released, diverted = (line.released_pence, line.diverted_pence) if line else (0, 0)
        paid = e.amount_pence - e.at_risk_pence + released
        assert paid + diverted == e.amount_pence
        assert 0 <= diverted <= e.at_risk_pence
        # What the ledger ends up with for this payment says the same.
        mine = [t for t in r.transfers if t.ordering_key == e.payment_id]
        balances, pending = apply_transfers(mine)
        assert balances.get(f"provider:{e.provider_code}", 0) == paid
        assert balances.get(f"fund:{e.region_code}", 0) == diverted
        assert pending == {}


@PROPS
@given(worlds(), schemes(), MODELS)
def test_provider_period_safeguards(world, scheme: Scheme, model) -> None:  # type: ignore[no-untyped-def]
    payments, feedback = world
    r = replay(payments, feedback, SchemeBook([scheme]), REF, hold_model=model)
    for rep in r.reports:
        assert rep.diverted_pence <= rep.cap_pence == domain.bps_of(rep.billed_pence, scheme.cap_bps)
        if rep.responses < scheme.min_responses_per_period:
            assert rep.diverted_pence == 0
        assert rep.released_pence + rep.diverted_pence == rep.held_pence
        for line in rep.lines:
            if line.decision.deciding_submission_id is None:  # no answer in the window never diverts
                assert line.diverted_pence == 0


@PROPS
@given(worlds(), schemes(), MODELS)
def test_totals_across_accounts_equal_totals_billed(world, scheme: Scheme, model) -> None:  # type: ignore[no-untyped-def]
    payments, feedback = world
    r = replay(payments, feedback, SchemeBook([scheme]), REF, hold_model=model)
    billed = sum(p.amount_pence for p in payments)
    b = r.balances_pence
    assert sum(b.values()) == 0
    assert -sum(v for k, v in b.items() if k.startswith("commissioner:")) == billed
    assert sum(v for k, v in b.items() if k.split(":")[0] in ("provider", "fund")) == billed
    assert all(v == 0 for k, v in b.items() if k.startswith("held:")) and r.pending_pence == {}
    by_region: dict[str, int] = defaultdict(int)
    for rep in r.reports:
        by_region[rep.region_code] += rep.diverted_pence
    for region, diverted in by_region.items():
        assert b.get(f"fund:{region}", 0) == diverted


@PROPS
@given(worlds(), schemes(), MODELS, st.randoms(use_true_random=False), st.integers(0, 3))
def test_any_permutation_with_duplicates_gives_the_same_ledger(world, scheme: Scheme, model, rnd: random.Random, dups: int) -> None:  # type: ignore[no-untyped-def]
    payments, feedback = world
    book = SchemeBook([scheme])
    first = replay(payments, feedback, book, REF, hold_model=model)
    events: list = [*payments, *feedback]
    events += [rnd.choice(events) for _ in range(dups)]
    rnd.shuffle(events)
    again = replay([e for e in events if isinstance(e, PaymentRequested)],
                   [e for e in events if isinstance(e, FeedbackReceived)], book, REF, hold_model=model)
    assert again.transfers == first.transfers
    assert again.balances_pence == first.balances_pence
    assert again.conflicts == first.conflicts == []


@PROPS
@given(worlds(), schemes())
def test_both_hold_models_end_with_the_same_balances(world, scheme: Scheme) -> None:  # type: ignore[no-untyped-def]
    payments, feedback = world
    a = replay(payments, feedback, SchemeBook([scheme]), REF, hold_model="held_account")
    b = replay(payments, feedback, SchemeBook([scheme]), REF, hold_model="two_phase")
    strip = lambda d: {k: v for k, v in d.items() if not k.startswith("held:")}  # noqa: E731
    assert strip(a.balances_pence) == strip(b.balances_pence)


def test_every_transfer_carries_the_payment_id_as_ordering_key() -> None:
    s = Scheme(scheme_id="key", version=1, title="K", effective_from=START, min_responses_per_period=0, cap_bps=1000)
    p = PaymentRequested(payment_id="pay-1", episode_id="ep-1", commissioner_code="QWE", provider_code="RJ1",
                         service_type="gp", activity_date=START, amount_pence=100_000)
    f = FeedbackReceived(submission_id="s", episode_id="ep-1", provider_code="RJ1", patient_pseudonym="a" * 64,
                         instrument="fft", authored_at=datetime(2026, 4, 2, tzinfo=timezone.utc), fft_answer=4)
    for model in domain.HOLD_MODELS:
        r = replay([p], [f], SchemeBook([s]), REF, hold_model=model)
        assert {t.ordering_key for t in r.transfers} == {"pay-1"}
        assert {t.key for t in r.transfers} == {"pay-1"}
    r = replay([p], [f], SchemeBook([s]), REF, hold_model="two_phase")
    assert [(t.transfer_id, t.kind, t.pending_id) for t in r.transfers] == [
        ("pay:pay-1", "posted", None), ("hold:pay-1", "pending", None),
        ("release:pay-1", "post_pending", "hold:pay-1"), ("divert:pay-1", "posted", None),
    ]
    assert r.balances_pence == {"commissioner:QWE": -100_000, "fund:Y56": 5_000, "provider:RJ1": 95_000}
