"""The pure verdicts on payment requests and answers (services/payments/intake.py): duplicates,
conflicts, repeats inside a batch, the activity-date window, with plain values and hypothesis."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.payments import domain, intake
from services.payments.domain import InputError
from services.payments.intake import Accepted, Conflict, Stored
from services.payments.schemes import Scheme, SchemeBook
from shared.contracts import FeedbackReceived, PaymentRequested
from shared.reference import load_reference

REF = load_reference()
TODAY = date(2026, 12, 2)
WINDOW = domain.activity_window(TODAY, 730)
BOOK = SchemeBook([Scheme(scheme_id="t-1", version=1, title="T", effective_from=date(2020, 1, 1))])


def req(pid: str = "p1", eid: str = "e1", **overrides: Any) -> PaymentRequested:
    body = {"payment_id": pid, "episode_id": eid, "commissioner_code": "QWE", "provider_code": "RJ1",
            "service_type": "maternity", "activity_date": date(2026, 11, 20), "amount_pence": 100_000}
    return PaymentRequested.model_validate({**body, **overrides})


def decide(requests: list[PaymentRequested], stored: list[Stored] = (), hold_model: domain.HoldModel = "two_phase",  # type: ignore[assignment]
           window: domain.ActivityWindow = WINDOW) -> intake.Verdicts:
    return intake.decide_payments(requests, stored, book=BOOK, ref=REF, hold_model=hold_model, window=window)


def stored_from(v: intake.Verdicts) -> list[Stored]:
    """What the store holds after the verdicts' new episodes are written."""
    return [Stored(n.episode, n.fingerprint, n.request_json, n.status) for n in v.new]


def test_a_new_request_creates_an_episode_with_its_plan() -> None:
    v = decide([req()])
    (a,) = v.outcomes
    assert isinstance(a, Accepted)
    assert (a.status, a.episode_status, a.at_risk_pence, a.scheme_id, a.scheme_version) == ("created", "held", 10_000, "t-1", 1)
    assert (a.transfer_ids, a.hold_transfer_id) == (("pay:p1", "hold:p1"), "hold:p1")
    (n,) = v.new
    assert (n.index, n.episode.region_code, n.episode.hold_model, n.status) == (0, "Y56", "two_phase", "held")
    assert n.fingerprint == intake.fingerprint_of(req().model_dump_json()) and n.request_json == req().model_dump_json()
    assert [p.transfer_id for p in n.plan] == ["pay:p1", "hold:p1"]


def test_nothing_at_risk_is_paid_in_full() -> None:
    (a,) = decide([req(amount_pence=9)]).outcomes
    assert isinstance(a, Accepted) and (a.episode_status, a.at_risk_pence, a.transfer_ids) == ("paid_in_full", 0, ("pay:p1",))
    (a,) = decide([req(activity_date=date(2019, 6, 1))], window=domain.activity_window(date(2020, 1, 1), 730)).outcomes
    assert isinstance(a, Accepted) and (a.scheme_id, a.episode_status) == (None, "paid_in_full")  # out of trial


def test_the_same_request_again_is_a_duplicate_answered_as_the_original() -> None:
    first = decide([req()], hold_model="held_account")
    # The deployment switched hold models since: the stored episode keeps its own.
    again = decide([req()], stored_from(first), hold_model="two_phase")
    (a,) = again.outcomes
    assert isinstance(a, Accepted) and a.status == "duplicate" and again.new == []
    assert (a.transfer_ids, a.episode_status, a.at_risk_pence) == (("hold:p1",), "held", 10_000)
    settled = [s._replace(status="settled") for s in stored_from(first)]
    (a,) = decide([req()], settled).outcomes
    assert isinstance(a, Accepted) and (a.status, a.episode_status) == ("duplicate", "settled")


@pytest.mark.parametrize(("repeat", "fields"), [
    (req(amount_pence=5), "amount_pence"),
    (req(eid="e2"), "episode_id"),  # same payment id, another episode
    (req(pid="p2"), "payment_id"),  # same episode, another payment id
    (req(amount_pence=5, service_type="gp"), "amount_pence, service_type"),
])
def test_the_same_id_with_another_request_is_a_conflict_naming_the_fields(repeat: PaymentRequested, fields: str) -> None:
    v = decide([repeat], stored_from(decide([req()])))
    (c,) = v.outcomes
    assert isinstance(c, Conflict) and v.new == []
    assert str(c) == f"payment p1 / episode e1 was already requested with different {fields}"


def test_a_repeat_inside_a_batch_is_decided_against_the_earlier_item() -> None:
    v = decide([req(), req(), req(amount_pence=7), req(pid="p2", eid="e2"), req(pid="p2", eid="e1")])
    kinds = [o.status if isinstance(o, Accepted) else type(o).__name__ for o in v.outcomes]
    assert kinds == ["created", "duplicate", "Conflict", "created", "Conflict"]
    assert [n.index for n in v.new] == [0, 3]
    assert "payment p2 / episode e2" in str(v.outcomes[4])  # the payment id's episode is compared first


def test_unknown_codes_are_refused_whatever_is_stored() -> None:
    (e,) = decide([req(provider_code="ZZZ")], stored_from(decide([req()]))).outcomes
    assert isinstance(e, InputError) and e.field == "provider_code"
    (e,) = decide([req(provider_code="RTD")]).outcomes  # QWE holds no contract with RTD
    assert isinstance(e, InputError) and "no contract" in e.message


def test_the_activity_date_window_is_checked_only_for_a_new_episode() -> None:
    old = req(activity_date=date(2025, 1, 1))
    first = decide([old], window=domain.activity_window(date(2025, 1, 2), 730))
    assert isinstance(first.outcomes[0], Accepted)
    much_later = domain.activity_window(date(2027, 6, 1), 730)  # 2025-01-01 is now too old
    (dup,) = decide([old], stored_from(first), window=much_later).outcomes
    assert isinstance(dup, Accepted) and dup.status == "duplicate"  # a replay stays a duplicate, whatever its age
    (conflict,) = decide([req(activity_date=date(2025, 1, 1), amount_pence=1)], stored_from(first), window=much_later).outcomes
    assert isinstance(conflict, Conflict)
    v = decide([req(pid="p9", eid="e9", activity_date=date(2025, 1, 1))] * 2, window=much_later)
    assert [type(o).__name__ for o in v.outcomes] == ["InputError", "InputError"] and v.new == []
    assert all(o.field == "activity_date" for o in v.outcomes)  # type: ignore[union-attr]
    (future,) = decide([req(activity_date=TODAY + timedelta(days=2))]).outcomes
    assert isinstance(future, InputError) and "future" in future.message


# ---------------------------------------------------------------------------------------------
# A batch decides each item as one at a time would, in order (the core's property)
# ---------------------------------------------------------------------------------------------
IDS = st.sampled_from(["a", "b", "c"])
REQUESTS = st.builds(
    lambda pid, eid, amount, provider, days: req(pid=f"p{pid}", eid=f"e{eid}", amount_pence=amount, provider_code=provider,
                                                 activity_date=TODAY - timedelta(days=days)),
    IDS, IDS, st.sampled_from([9, 100_000, 100_001]), st.sampled_from(["RJ1", "RJ1", "ZZZ"]),
    st.sampled_from([1, 1, 1, 900]),
)


def _shape(o: intake.Outcome) -> tuple:
    return (type(o).__name__, str(o)) if isinstance(o, Exception) else ("accepted", o)


@settings(max_examples=200, deadline=None)
@given(st.lists(REQUESTS, max_size=6), st.lists(REQUESTS, min_size=1, max_size=12), st.sampled_from(domain.HOLD_MODELS))
def test_a_batch_gives_each_request_what_one_at_a_time_gives(earlier: list[PaymentRequested], batch: list[PaymentRequested],
                                                             hold_model: domain.HoldModel) -> None:
    stored = stored_from(decide(earlier, hold_model=hold_model))
    batched = decide(batch, stored, hold_model=hold_model)
    one_at_a_time, so_far = [], list(stored)
    for r in batch:
        v = decide([r], so_far, hold_model=hold_model)
        one_at_a_time += v.outcomes
        so_far += stored_from(v)
    assert [_shape(o) for o in batched.outcomes] == [_shape(o) for o in one_at_a_time]
    assert stored + stored_from(batched) == so_far
    # No two new episodes share an id, with each other or with what was stored.
    ids = [s.episode.payment_id for s in so_far], [s.episode.episode_id for s in so_far]
    assert all(len(set(x)) == len(x) for x in ids)


# ---------------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------------
def answer(sid: str, instrument: str = "fft") -> FeedbackReceived:
    body: dict[str, Any] = {"submission_id": sid, "episode_id": "e1", "provider_code": "RJ1", "patient_pseudonym": "a" * 64,
                            "instrument": instrument, "authored_at": datetime(2026, 11, 21, tzinfo=timezone.utc)}
    if instrument == "fft":
        body["fft_answer"] = 5
    return FeedbackReceived.model_validate(body)


def test_only_the_first_decisive_answer_of_an_id_is_kept() -> None:
    batch = [answer("s1"), answer("s2", "eq5d5l"), answer("s1"), answer("s3"), answer("s4")]
    kept = intake.answers_to_keep(batch)
    assert kept == {"s1": 0, "s3": 3, "s4": 4}
    # s4 was stored before (not new now): a duplicate.
    assert intake.answer_outcomes(batch, kept, {"s1", "s3"}) == [True, False, False, True, False]
    assert intake.answers_to_keep([answer("x", "eq5d5l")]) == {}
