"""Unit and property tests for shared/contracts.py (pydantic event contracts)."""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.contracts import (
    EVENT_TYPES,
    MAX_LEGS,
    Envelope,
    FeedbackReceived,
    FftAnswer,
    Leg,
    PaymentRequested,
    TransferCause,
    TransferPosted,
    TransferRequested,
    envelope,
    parse_envelope,
)

PROPS = settings(max_examples=150, deadline=None)
PSEUDONYM = "ab" * 32
WHEN = datetime(2026, 5, 10, 12, 0, tzinfo=timezone.utc)


def payment(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "payment_id": "pay-001",
        "episode_id": "ep-001",
        "commissioner_code": "QWE",
        "provider_code": "RJ1",
        "service_type": "inpatient",
        "activity_date": "2026-05-01",
        "amount_pence": 100_000,
    }
    data.update(overrides)
    return data


def feedback(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "submission_id": "sub-001",
        "episode_id": "ep-001",
        "provider_code": "RJ1",
        "patient_pseudonym": PSEUDONYM,
        "instrument": "fft",
        "authored_at": WHEN,
        "fft_answer": 1,
    }
    data.update(overrides)
    return data


def legs(*pairs: tuple[str, int]) -> tuple[dict[str, Any], ...]:
    return tuple({"account_id": a, "amount_pence": p} for a, p in pairs)


def transfer(*pairs: tuple[str, int], transfer_id: str = "hold:pay-001", kind: str = "manual") -> TransferRequested:
    return TransferRequested.model_validate({"transfer_id": transfer_id, "legs": legs(*pairs), "cause": {"kind": kind}})


# ---------------------------------------------------------------------------------------------
# FftAnswer
# ---------------------------------------------------------------------------------------------
def test_fft_answer_codes_match_nhs_england() -> None:
    assert [(a.name, int(a)) for a in FftAnswer] == [
        ("VERY_GOOD", 1), ("GOOD", 2), ("NEITHER", 3), ("POOR", 4), ("VERY_POOR", 5), ("DONT_KNOW", 6),
    ]


# ---------------------------------------------------------------------------------------------
# PaymentRequested
# ---------------------------------------------------------------------------------------------
def test_payment_requested_valid() -> None:
    p = PaymentRequested.model_validate(payment())
    assert p.amount_pence == 100_000
    assert p.activity_date == date(2026, 5, 1)
    assert p.provider_code == "RJ1"


@pytest.mark.parametrize("amount", [1, 10_000_000_000])
def test_payment_amount_bounds_inclusive(amount: int) -> None:
    assert PaymentRequested.model_validate(payment(amount_pence=amount)).amount_pence == amount


@pytest.mark.parametrize("amount", [0, -1, 10_000_000_001, 100.0, "100", True, 100.5, None])
def test_payment_amount_rejected(amount: object) -> None:
    with pytest.raises(ValidationError) as exc:
        PaymentRequested.model_validate(payment(amount_pence=amount))
    assert any(e["loc"] == ("amount_pence",) for e in exc.value.errors())


@pytest.mark.parametrize("code", ["QWE", "Q9Z", "QU9"])
def test_commissioner_code_valid(code: str) -> None:
    assert PaymentRequested.model_validate(payment(commissioner_code=code)).commissioner_code == code


@pytest.mark.parametrize("code", ["RJ1", "qwe", "QW", "QWER", "Q-1", ""])
def test_commissioner_code_invalid(code: str) -> None:
    with pytest.raises(ValidationError, match="commissioner_code"):
        PaymentRequested.model_validate(payment(commissioner_code=code))


@pytest.mark.parametrize("code", ["RJ1", "R0A", "RJ101", "12345"])
def test_provider_ods_code_valid(code: str) -> None:
    assert PaymentRequested.model_validate(payment(provider_code=code)).provider_code == code


@pytest.mark.parametrize("code", ["rj1", "RJ", "RJ10", "RJ1011", "RJ 1", "RJ1\n"])
def test_provider_ods_code_invalid(code: str) -> None:
    with pytest.raises(ValidationError, match="provider_code"):
        PaymentRequested.model_validate(payment(provider_code=code))


@pytest.mark.parametrize("ext_id", ["a", "pay-1", "P.1_x:y-z", "9", "a" * 100])
def test_external_id_valid(ext_id: str) -> None:
    assert PaymentRequested.model_validate(payment(payment_id=ext_id)).payment_id == ext_id


@pytest.mark.parametrize("ext_id", ["", "-pay", ".pay", "pay 1", "pay/1", "a" * 101, "péy"])
def test_external_id_invalid(ext_id: str) -> None:
    with pytest.raises(ValidationError, match="payment_id"):
        PaymentRequested.model_validate(payment(payment_id=ext_id))


def test_payment_unknown_service_type_rejected() -> None:
    with pytest.raises(ValidationError, match="service_type"):
        PaymentRequested.model_validate(payment(service_type="cosmetic"))


def test_contracts_forbid_extra_fields() -> None:
    with pytest.raises(ValidationError, match="extra"):
        PaymentRequested.model_validate(payment(nhs_number="9990000018"))


def test_contracts_are_frozen() -> None:
    p = PaymentRequested.model_validate(payment())
    with pytest.raises(ValidationError):
        p.amount_pence = 1  # type: ignore[misc]
    assert p.amount_pence == 100_000


# ---------------------------------------------------------------------------------------------
# FeedbackReceived
# ---------------------------------------------------------------------------------------------
def test_feedback_received_valid_fft() -> None:
    f = FeedbackReceived.model_validate(feedback(fft_answer=6))
    assert f.fft_answer is FftAnswer.DONT_KNOW


def test_feedback_fft_needs_answer() -> None:
    with pytest.raises(ValidationError, match="fft feedback needs fft_answer"):
        FeedbackReceived.model_validate(feedback(fft_answer=None))


def test_feedback_patient_power_needs_choice() -> None:
    with pytest.raises(ValidationError, match="patient_power feedback needs patient_choice"):
        FeedbackReceived.model_validate(feedback(instrument="patient_power", fft_answer=None))
    ok = FeedbackReceived.model_validate(feedback(instrument="patient_power", fft_answer=None, patient_choice="hold_back"))
    assert ok.patient_choice == "hold_back"


def test_feedback_other_instruments_need_no_money_answer() -> None:
    f = FeedbackReceived.model_validate(feedback(instrument="eq5d5l", fft_answer=None))
    assert f.fft_answer is None and f.patient_choice is None


@pytest.mark.parametrize("answer", [0, 7, -1])
def test_feedback_fft_answer_out_of_range(answer: int) -> None:
    with pytest.raises(ValidationError, match="fft_answer"):
        FeedbackReceived.model_validate(feedback(fft_answer=answer))


@pytest.mark.parametrize("pseudonym", ["AB" * 32, "ab" * 31, "ab" * 33, "zz" * 32, "9990000018"])
def test_feedback_pseudonym_must_be_lower_hex_sha256(pseudonym: str) -> None:
    with pytest.raises(ValidationError, match="patient_pseudonym"):
        FeedbackReceived.model_validate(feedback(patient_pseudonym=pseudonym))


def test_feedback_rejects_choice_and_instrument_outside_lists() -> None:
    with pytest.raises(ValidationError, match="patient_choice"):
        FeedbackReceived.model_validate(feedback(instrument="patient_power", patient_choice="maybe"))
    with pytest.raises(ValidationError, match="instrument"):
        FeedbackReceived.model_validate(feedback(instrument="hcahps"))


def test_feedback_cannot_carry_free_text_or_nhs_number() -> None:
    for extra in ({"free_text": "hi"}, {"nhs_number": "9990000018"}):
        with pytest.raises(ValidationError, match="Extra inputs"):
            FeedbackReceived.model_validate(feedback(**extra))


# ---------------------------------------------------------------------------------------------
# TransferRequested and friends
# ---------------------------------------------------------------------------------------------
def test_transfer_balanced_is_accepted() -> None:
    t = transfer(("commissioner:QWE", -100_000), ("provider:RJ1", 90_000), ("held:RJ1", 10_000))
    assert sum(leg.amount_pence for leg in t.legs) == 0
    assert len(t.legs) == 3


def test_transfer_unbalanced_rejected() -> None:
    with pytest.raises(ValidationError, match="legs must sum to zero"):
        transfer(("commissioner:QWE", -100_000), ("provider:RJ1", 90_001), ("held:RJ1", 10_000))


def test_transfer_zero_leg_rejected() -> None:
    with pytest.raises(ValidationError, match="non-zero amount"):
        transfer(("commissioner:QWE", -5), ("provider:RJ1", 5), ("held:RJ1", 0))


def test_transfer_same_account_twice_rejected() -> None:
    with pytest.raises(ValidationError, match="each account may appear once"):
        transfer(("held:RJ1", -5), ("held:RJ1", 5))


def test_transfer_needs_two_legs() -> None:
    with pytest.raises(ValidationError, match="legs"):
        TransferRequested.model_validate({"transfer_id": "t", "legs": legs(("held:RJ1", 0)), "cause": {"kind": "manual"}})
    with pytest.raises(ValidationError, match="legs"):
        TransferRequested.model_validate({"transfer_id": "t", "legs": (), "cause": {"kind": "manual"}})


def test_transfer_max_legs() -> None:
    codes = [f"R{i:02d}" for i in range(MAX_LEGS + 1)]
    ok = [(f"provider:{c}", 1) for c in codes[: MAX_LEGS - 1]] + [("commissioner:QWE", -(MAX_LEGS - 1))]
    assert len(transfer(*ok).legs) == MAX_LEGS
    too_many = [(f"provider:{c}", 1) for c in codes[:MAX_LEGS]] + [("commissioner:QWE", -MAX_LEGS)]
    with pytest.raises(ValidationError, match="legs"):
        transfer(*too_many)


@pytest.mark.parametrize(
    "account", ["bank:RJ1", "held:rj1", "held:RJ", "held:RJ10101", "held-RJ1", "fund:", "provider:RJ1 "]
)
def test_leg_account_id_pattern(account: str) -> None:
    with pytest.raises(ValidationError, match="account_id"):
        Leg(account_id=account, amount_pence=1)


@pytest.mark.parametrize("account", ["commissioner:QWE", "provider:RJ101", "held:RJ1", "fund:Y56"])
def test_leg_account_id_valid(account: str) -> None:
    assert Leg(account_id=account, amount_pence=-1).account_id == account


@pytest.mark.parametrize("amount", [1.0, "1", True])
def test_leg_amount_is_strict_int(amount: object) -> None:
    with pytest.raises(ValidationError, match="amount_pence"):
        Leg(account_id="held:RJ1", amount_pence=amount)  # type: ignore[arg-type]


def test_transfer_cause_kinds_and_note_length() -> None:
    with pytest.raises(ValidationError, match="kind"):
        TransferCause(kind="gift")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="note"):
        TransferCause(kind="manual", note="x" * 501)
    assert TransferCause(kind="manual", note="x" * 500).note == "x" * 500


def test_transfer_posted_status_literal() -> None:
    assert TransferPosted(transfer_id="t1", status="rejected", reason="floor").status == "rejected"
    with pytest.raises(ValidationError, match="status"):
        TransferPosted(transfer_id="t1", status="duplicate")  # type: ignore[arg-type]


# Two-phase transfer shapes (pending / post_pending / void_pending, reverses, ordering_key).
TWO_LEGS = legs(("held:RJ1", -500), ("provider:RJ1", 500))


def shaped(**fields: Any) -> TransferRequested:
    return TransferRequested.model_validate({"transfer_id": "t1", "cause": {"kind": "manual"}, **fields})


@pytest.mark.parametrize(
    "fields",
    [
        {"legs": TWO_LEGS},
        {"kind": "pending", "legs": TWO_LEGS, "timeout_s": 86_400},
        {"kind": "post_pending", "pending_id": "t0"},
        {"kind": "post_pending", "pending_id": "t0", "legs": TWO_LEGS},
        {"kind": "void_pending", "pending_id": "t0"},
        {"legs": TWO_LEGS, "reverses": "t0"},
    ],
)
def test_two_phase_shapes_accepted(fields: dict[str, Any]) -> None:
    t = shaped(**fields)
    assert t.kind == fields.get("kind", "posted")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "a posted transfer needs at least two legs"),
        ({"kind": "pending", "legs": legs(("held:RJ1", -1))}, "a pending transfer needs at least two legs"),
        ({"kind": "void_pending", "pending_id": "t0", "legs": TWO_LEGS}, "void_pending takes no legs"),
        ({"kind": "post_pending"}, "post_pending needs pending_id"),
        ({"kind": "void_pending"}, "void_pending needs pending_id"),
        ({"legs": TWO_LEGS, "pending_id": "t0"}, "pending_id is only for post_pending and void_pending, not posted"),
        ({"legs": TWO_LEGS, "timeout_s": 60}, "timeout_s is only for pending transfers"),
        ({"kind": "pending", "legs": TWO_LEGS, "timeout_s": 0}, "timeout_s"),
        ({"kind": "pending", "legs": TWO_LEGS, "reverses": "t0"}, "only a posted transfer can reverse another"),
        ({"kind": "post_pending", "pending_id": "t0", "legs": legs(("held:RJ1", -1), ("provider:RJ1", 2))}, "sum to zero"),
        ({"kind": "settle", "legs": TWO_LEGS}, "kind"),
    ],
)
def test_two_phase_shapes_rejected(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        shaped(**fields)


def test_transfer_key_is_ordering_key_or_transfer_id() -> None:
    assert shaped(legs=TWO_LEGS).key == "t1"
    assert shaped(legs=TWO_LEGS, ordering_key="pay-1").key == "pay-1"


ACCOUNTS = ["commissioner:QWE", "commissioner:QMJ", "provider:RJ1", "provider:RTH", "held:RJ1", "held:RTH", "fund:Y56", "fund:Y59"]


@st.composite
def balanced_legs(draw: st.DrawFn) -> list[tuple[str, int]]:
    accounts = draw(st.lists(st.sampled_from(ACCOUNTS), min_size=2, max_size=len(ACCOUNTS), unique=True))
    amounts = [draw(st.integers(-(10**9), 10**9).filter(bool)) for _ in accounts[:-1]]
    if sum(amounts) == 0:  # the last leg would be zero: nudge the first (never to zero)
        amounts[0] += 2 if amounts[0] == -1 else 1
    return list(zip(accounts, [*amounts, -sum(amounts)]))


@PROPS
@given(balanced_legs())
def test_any_balanced_nonzero_legs_are_accepted(pairs: list[tuple[str, int]]) -> None:
    assert sum(p for _, p in pairs) == 0 and all(pairs)
    t = transfer(*pairs)
    assert [(leg.account_id, leg.amount_pence) for leg in t.legs] == pairs


@PROPS
@given(balanced_legs(), st.integers(-(10**6), 10**6).filter(bool))
def test_any_unbalanced_legs_are_rejected(pairs: list[tuple[str, int]], skew: int) -> None:
    account, amount = pairs[0]
    if amount + skew == 0:
        skew += 1 if skew > 0 else -1
    with pytest.raises(ValidationError, match="sum to zero"):
        transfer((account, amount + skew), *pairs[1:])


# ---------------------------------------------------------------------------------------------
# Envelope
# ---------------------------------------------------------------------------------------------
def test_envelope_round_trip() -> None:
    data = PaymentRequested.model_validate(payment())
    event_id = uuid.uuid4()
    env = envelope(data, "payments.requested.v1", producer="payments", correlation_id="corr-1", causation_id="cause-1", event_id=event_id)
    assert env.event_id == event_id
    assert env.occurred_at.tzinfo is not None
    parsed = parse_envelope(env.model_dump_json().encode(), PaymentRequested)
    assert parsed == env
    assert isinstance(parsed.data, PaymentRequested)
    assert parsed.data.amount_pence == 100_000


def test_envelope_defaults_give_fresh_event_ids() -> None:
    data = PaymentRequested.model_validate(payment())
    a = envelope(data, "payments.requested.v1", producer="payments", correlation_id="c")
    b = envelope(data, "payments.requested.v1", producer="payments", correlation_id="c")
    assert a.event_id != b.event_id
    assert a.causation_id is None


def test_parse_envelope_validates_payload_type() -> None:
    data = PaymentRequested.model_validate(payment())
    raw = envelope(data, "payments.requested.v1", producer="payments", correlation_id="c").model_dump_json().encode()
    with pytest.raises(ValidationError):
        parse_envelope(raw, TransferRequested)


def test_parse_envelope_rejects_bad_payload_and_envelope_fields() -> None:
    data = PaymentRequested.model_validate(payment())
    body = json.loads(envelope(data, "payments.requested.v1", producer="payments", correlation_id="c").model_dump_json())
    bad_amount = {**body, "data": {**body["data"], "amount_pence": 0}}
    with pytest.raises(ValidationError, match="amount_pence"):
        parse_envelope(json.dumps(bad_amount).encode(), PaymentRequested)
    with pytest.raises(ValidationError, match="correlation_id"):
        parse_envelope(json.dumps({**body, "correlation_id": ""}).encode(), PaymentRequested)
    with pytest.raises(ValidationError, match="Extra inputs"):
        parse_envelope(json.dumps({**body, "secret": 1}).encode(), PaymentRequested)
    with pytest.raises(ValidationError):
        parse_envelope(b"not json", PaymentRequested)


def test_transfer_survives_json_round_trip_through_envelope() -> None:
    t = transfer(("held:RJ1", -10_000), ("provider:RJ1", 7_000), ("fund:Y56", 3_000), kind="settlement")
    env = envelope(t, "ledger.transfer-requested.v1", producer="payments", correlation_id="c")
    parsed = parse_envelope(env.model_dump_json().encode(), TransferRequested)
    assert parsed.data == t


def test_envelope_generic_is_parametrised_by_payload() -> None:
    env = Envelope[FeedbackReceived].model_validate(
        {"type": "feedback.received.v1", "correlation_id": "c", "producer": "feedback", "data": feedback()}
    )
    assert isinstance(env.data, FeedbackReceived)


def test_event_types_registry() -> None:
    assert EVENT_TYPES == {
        "payments.requested.v1": PaymentRequested,
        "feedback.received.v1": FeedbackReceived,
        "ledger.transfer-requested.v1": TransferRequested,
        "ledger.posted.v1": TransferPosted,
    }
    assert all(t.endswith(".v1") for t in EVENT_TYPES)
