"""Unit and property tests for services/feedback/domain.py (validation, pseudonyms, scoring)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timezone
from typing import Any

import nhs_number
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.feedback.domain import (
    MAX_FREE_TEXT_CHARS,
    Eq5d5lAnswers,
    FftAnswers,
    OxfordAnswers,
    PatientPowerAnswers,
    Submission,
    eq5d_profile,
    fft_is_negative,
    fft_is_positive,
    oxford_total,
    pseudonymise,
    scores,
    valid_nhs_number,
)
from devtools.synthetic import synthetic_nhs_number
from shared.contracts import FeedbackReceived, FftAnswer

PROPS = settings(max_examples=150, deadline=None)
KEY = b"k" * 32
OTHER_KEY = b"j" * 32


def submission(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "submission_id": "sub-1",
        "episode_id": "ep-1",
        "provider_code": "RJ1",
        "nhs_number": "9990000018",
        "authored_at": "2026-05-20T10:00:00+00:00",
        "answers": {"instrument": "fft", "fft_answer": 2},
    }
    data.update(overrides)
    return data


def oxford(items: list[int], **kw: Any) -> dict[str, Any]:
    return {"instrument": "ohs", "items": items, "timing": "post_op", "procedure": "primary_hip_replacement", **kw}


def eq5d(**kw: Any) -> dict[str, Any]:
    data = {"instrument": "eq5d5l", "mobility": 2, "self_care": 1, "usual_activities": 1, "pain_discomfort": 4,
            "anxiety_depression": 3, "vas": 70}
    data.update(kw)
    return data


# ---------------------------------------------------------------------------------------------
# NHS numbers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "digits"),
    [
        ("9990000018", "9990000018"),
        ("999 000 0018", "9990000018"),
        ("999-000-0018", "9990000018"),
        (" 9990000018 ", "9990000018"),
        ("9990000026", "9990000026"),
        ("9434765919", "9434765919"),  # NHS Digital's documented example
    ],
)
def test_valid_nhs_numbers(raw: str, digits: str) -> None:
    assert valid_nhs_number(raw) == digits


@pytest.mark.parametrize(
    "raw",
    [
        "9990000019",  # wrong check digit
        "9990000000",  # check digit would be 10: never issued
        "999000001",  # 9 digits
        "99900000180",  # 11 digits
        "abcdefghij",
        "999000001X",
        "",
        "9434765918",
    ],
)
def test_invalid_nhs_numbers(raw: str) -> None:
    with pytest.raises(ValueError, match="not a valid NHS number"):
        valid_nhs_number(raw)


def test_nhs_number_must_be_a_string() -> None:
    with pytest.raises(ValueError, match="not a valid NHS number"):
        valid_nhs_number(9990000018)  # type: ignore[arg-type]


def _check_digit_ok(digits: str) -> bool:
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1)))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    return check != 10 and check == int(digits[9])


@PROPS
@given(st.integers(4_000_000_000, 9_999_999_999).map(str))
def test_nhs_number_validation_matches_modulus_11(digits: str) -> None:
    # Kept out of Scotland's CHI range (010101xxxx-311299xxxx), where the library also checks a date.
    if _check_digit_ok(digits):
        assert valid_nhs_number(digits) == digits
    else:
        with pytest.raises(ValueError):
            valid_nhs_number(digits)


@PROPS
@given(st.integers(0, 5_000))
def test_synthetic_nhs_numbers_are_valid_test_range_numbers(n: int) -> None:
    number = synthetic_nhs_number(n)
    assert len(number) == 10 and number.isdigit()
    assert number.startswith("999")
    assert valid_nhs_number(number) == number
    assert nhs_number.is_valid(number)
    assert int(number) // 10 >= 999_000_000 + n


def test_first_synthetic_nhs_number() -> None:
    assert synthetic_nhs_number(0) == "9990000018"


def test_synthetic_nhs_numbers_are_distinct() -> None:
    # Demo and e2e code give each synthetic patient synthetic_nhs_number(n) for n = 0, 1, 2, ...
    # Two different patients must not share an NHS number (and so a pseudonym).
    numbers = [synthetic_nhs_number(n) for n in range(50)]
    assert synthetic_nhs_number(0) != synthetic_nhs_number(1), "patients 0 and 1 get the same NHS number"
    assert len(set(numbers)) == len(numbers)


def test_synthetic_nhs_number_is_the_nth_valid_number_in_the_test_range() -> None:
    expected = [f"{stem:09d}{d}" for stem in range(999_000_000, 999_000_060) for d in range(10)]
    expected = [x for x in expected if _check_digit_ok(x)][:50]
    assert [synthetic_nhs_number(n) for n in range(50)] == expected


# ---------------------------------------------------------------------------------------------
# Pseudonyms
# ---------------------------------------------------------------------------------------------
def test_pseudonym_is_keyed_hmac_sha256() -> None:
    p = pseudonymise("9990000018", KEY)
    assert p == hmac.new(KEY, b"9990000018", hashlib.sha256).hexdigest()
    assert len(p) == 64 and p == p.lower()
    assert p != hashlib.sha256(b"9990000018").hexdigest()


def test_pseudonym_stable_for_same_key_and_different_for_another() -> None:
    assert pseudonymise("9990000018", KEY) == pseudonymise("9990000018", KEY)
    assert pseudonymise("9990000018", KEY) != pseudonymise("9990000018", OTHER_KEY)
    assert pseudonymise("9990000018", KEY) != pseudonymise("9990000026", KEY)


@PROPS
@given(st.integers(0, 10_000), st.binary(min_size=16, max_size=64))
def test_pseudonym_fits_the_feedback_event_contract(n: int, key: bytes) -> None:
    p = pseudonymise(synthetic_nhs_number(n), key)
    assert p == pseudonymise(synthetic_nhs_number(n), key)
    assert synthetic_nhs_number(n) not in p
    event = FeedbackReceived(
        submission_id="sub-1", episode_id="ep-1", provider_code="RJ1", patient_pseudonym=p, instrument="fft",
        authored_at=datetime(2026, 5, 20, tzinfo=timezone.utc), fft_answer=FftAnswer.GOOD,
    )
    assert event.patient_pseudonym == p


# ---------------------------------------------------------------------------------------------
# Submission
# ---------------------------------------------------------------------------------------------
def test_valid_fft_submission() -> None:
    s = Submission.model_validate(submission(nhs_number="999 000 0018"))
    assert s.nhs_number == "9990000018"
    assert isinstance(s.answers, FftAnswers)
    assert s.answers.fft_answer is FftAnswer.GOOD
    assert s.authored_at.tzinfo is not None


def test_submission_with_invalid_nhs_number_rejected() -> None:
    with pytest.raises(ValidationError, match="not a valid NHS number") as exc:
        Submission.model_validate(submission(nhs_number="9990000019"))
    assert exc.value.errors()[0]["loc"] == ("nhs_number",)


def test_submission_needs_a_time_zone() -> None:
    with pytest.raises(ValidationError, match="authored_at must include a time zone"):
        Submission.model_validate(submission(authored_at="2026-05-20T10:00:00"))


def test_submission_free_text_limit() -> None:
    assert Submission.model_validate(submission(free_text="x" * MAX_FREE_TEXT_CHARS)).free_text == "x" * MAX_FREE_TEXT_CHARS
    with pytest.raises(ValidationError, match="free_text"):
        Submission.model_validate(submission(free_text="x" * (MAX_FREE_TEXT_CHARS + 1)))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"answers": {"instrument": "hcahps", "score": 1}}, "answers"),
        ({"answers": {"fft_answer": 2}}, "answers"),
        ({"answers": {"instrument": "fft", "fft_answer": 7}}, "fft_answer"),
        ({"answers": {"instrument": "fft", "fft_answer": 2, "comment": "x"}}, "comment"),
        ({"answers": {"instrument": "patient_power", "patient_choice": "maybe"}}, "patient_choice"),
        ({"provider_code": "rj1"}, "provider_code"),
        ({"submission_id": ""}, "submission_id"),
        ({"name": "A Patient"}, "name"),
    ],
)
def test_submission_rejects(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Submission.model_validate(submission(**overrides))


def test_submission_discriminates_instruments() -> None:
    kinds = {
        "fft": ({"instrument": "fft", "fft_answer": 6}, FftAnswers),
        "patient_power": ({"instrument": "patient_power", "patient_choice": "hold_back"}, PatientPowerAnswers),
        "eq5d5l": (eq5d(), Eq5d5lAnswers),
        "ohs": (oxford([4] * 12), OxfordAnswers),
        "oks": (oxford([0] * 12, instrument="oks", timing="pre_op", procedure="primary_knee_replacement"), OxfordAnswers),
    }
    for name, (answers, cls) in kinds.items():
        s = Submission.model_validate(submission(answers=answers))
        assert isinstance(s.answers, cls)
        assert s.answers.instrument == name


# ---------------------------------------------------------------------------------------------
# Oxford Hip / Knee
# ---------------------------------------------------------------------------------------------
def test_oxford_items_out_of_range_rejected_with_message() -> None:
    items = [4] * 12
    items[2] = 5
    items[10] = -1
    with pytest.raises(ValidationError, match=r"items \[3, 11\] must be scored 0 to 4 \(current scoring, 4 best\)"):
        OxfordAnswers.model_validate(oxford(items))


@pytest.mark.parametrize("count", [0, 11, 13])
def test_oxford_needs_twelve_items(count: int) -> None:
    with pytest.raises(ValidationError, match="items"):
        OxfordAnswers.model_validate(oxford([2] * count))


def test_oxford_timing_and_procedure() -> None:
    with pytest.raises(ValidationError, match="timing"):
        OxfordAnswers.model_validate(oxford([2] * 12, timing="other"))
    with pytest.raises(ValidationError, match="procedure"):
        OxfordAnswers.model_validate(oxford([2] * 12, procedure="Hip Replacement"))


@PROPS
@given(st.lists(st.integers(0, 4), min_size=12, max_size=12))
def test_oxford_total(items: list[int]) -> None:
    a = OxfordAnswers.model_validate(oxford(items))
    assert oxford_total(a.items) == sum(items)
    assert 0 <= oxford_total(a.items) <= 48
    assert scores(a) == {"oxford_total": sum(items)}


def test_oxford_total_bounds() -> None:
    assert oxford_total((0,) * 12) == 0
    assert oxford_total((4,) * 12) == 48


# ---------------------------------------------------------------------------------------------
# EQ-5D-5L
# ---------------------------------------------------------------------------------------------
def test_eq5d_profile_string() -> None:
    a = Eq5d5lAnswers.model_validate(eq5d(mobility=2, self_care=1, usual_activities=1, pain_discomfort=4, anxiety_depression=3))
    assert eq5d_profile(a) == "21143"
    assert scores(a) == {"eq5d_profile": "21143", "eq_vas": 70}


@PROPS
@given(st.lists(st.integers(1, 5), min_size=5, max_size=5), st.integers(0, 100))
def test_eq5d_profile_property(levels: list[int], vas: int) -> None:
    names = ["mobility", "self_care", "usual_activities", "pain_discomfort", "anxiety_depression"]
    a = Eq5d5lAnswers.model_validate(eq5d(vas=vas, **dict(zip(names, levels))))
    profile = eq5d_profile(a)
    assert len(profile) == 5 and [int(c) for c in profile] == levels


@pytest.mark.parametrize(
    "overrides",
    [{"mobility": 0}, {"self_care": 6}, {"vas": 101}, {"vas": -1}, {"timing": "later"}, {"procedure": "Knee!"}, {"extra": 1}],
)
def test_eq5d_out_of_range_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=next(iter(overrides))):
        Eq5d5lAnswers.model_validate(eq5d(**overrides))


# ---------------------------------------------------------------------------------------------
# FFT scores
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "positive", "negative"),
    [
        (FftAnswer.VERY_GOOD, True, False),
        (FftAnswer.GOOD, True, False),
        (FftAnswer.NEITHER, False, False),
        (FftAnswer.POOR, False, True),
        (FftAnswer.VERY_POOR, False, True),
        (FftAnswer.DONT_KNOW, False, False),
    ],
)
def test_fft_positive_negative(answer: FftAnswer, positive: bool, negative: bool) -> None:
    assert fft_is_positive(answer) is positive
    assert fft_is_negative(answer) is negative
    assert scores(FftAnswers(fft_answer=answer)) == {"fft_positive": positive, "fft_negative": negative}


def test_patient_power_has_no_scores() -> None:
    assert scores(PatientPowerAnswers(patient_choice="not_sure")) == {}


def test_synthetic_nhs_number_rejects_negative_n() -> None:
    with pytest.raises(ValueError):
        synthetic_nhs_number(-1)


# ---------------------------------------------------------------------------------------------
# Remaining validation errors (each names its field)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("missing", ["submission_id", "episode_id", "provider_code", "nhs_number", "authored_at", "answers"])
def test_submission_required_fields(missing: str) -> None:
    body = submission()
    del body[missing]
    with pytest.raises(ValidationError) as exc:
        Submission.model_validate(body)
    assert exc.value.errors()[0]["loc"] == (missing,)
    assert exc.value.errors()[0]["type"] == "missing"


@pytest.mark.parametrize(
    ("overrides", "loc"),
    [
        ({"episode_id": "x" * 101}, ("episode_id",)),
        ({"episode_id": "has space"}, ("episode_id",)),
        ({"amends_submission_id": "-starts-with-dash"}, ("amends_submission_id",)),
        ({"provider_code": "RJ12"}, ("provider_code",)),
        ({"authored_at": "not a date"}, ("authored_at",)),
        ({"nhs_number": 9990000018}, ("nhs_number",)),
        ({"answers": {"instrument": "eq5d5l", "mobility": 1, "self_care": 1, "usual_activities": 1, "pain_discomfort": 1, "vas": 5}},
         ("answers", "eq5d5l", "anxiety_depression")),
        ({"answers": {"instrument": "ohs", "items": [1] * 12, "timing": "pre_op"}}, ("answers", "ohs", "procedure")),
        ({"answers": {"instrument": "patient_power"}}, ("answers", "patient_power", "patient_choice")),
    ],
)
def test_submission_error_locations(overrides: dict[str, Any], loc: tuple) -> None:
    with pytest.raises(ValidationError) as exc:
        Submission.model_validate(submission(**overrides))
    assert exc.value.errors()[0]["loc"] == loc


def test_validation_errors_do_not_echo_the_nhs_number() -> None:
    with pytest.raises(ValidationError) as exc:
        Submission.model_validate(submission(nhs_number="9990000019"))
    assert all("9990000019" not in str(e["msg"]) for e in exc.value.errors())


@pytest.mark.parametrize("timing", ["pre_op", "post_op", "other"])
def test_eq5d_timings(timing: str) -> None:
    assert Eq5d5lAnswers.model_validate(eq5d(timing=timing, procedure="primary_hip_replacement")).timing == timing


@pytest.mark.parametrize("text", ["nul\x00byte", "bell\x07", "esc\x1b[0m"])
def test_free_text_control_characters_rejected(text: str) -> None:
    with pytest.raises(ValidationError, match="free_text must not contain control characters"):
        Submission.model_validate(submission(free_text=text))


def test_free_text_keeps_newlines_and_tabs() -> None:
    assert Submission.model_validate(submission(free_text="line 1\n\tline 2\r\n")).free_text == "line 1\n\tline 2\r\n"


# ---------------------------------------------------------------------------------------------
# NHS numbers in free text, admission (trust boundary)
# ---------------------------------------------------------------------------------------------
def test_nhs_numbers_in_free_text_are_removed_before_anything_sees_them() -> None:
    from services.feedback.domain import NHS_NUMBER_REMOVED, Submission, redact_nhs_numbers

    for written in ("943 476 5919", "9434765919", "943-476-5919", "943 4765 919"):
        text, n = redact_nhs_numbers(f"my nhs number is {written}, thanks")
        assert (text, n) == (f"my nhs number is {NHS_NUMBER_REMOVED}, thanks", 1), written
    # Not NHS numbers: a bad check digit, a phone number, a longer run.
    for kept in ("943 476 5918", "07700 900123", "94347659190", "call 0800 123 4567"):
        assert redact_nhs_numbers(kept) == (kept, 0), kept
    sub = Submission.model_validate({
        "submission_id": "s", "episode_id": "e", "provider_code": "RJ1", "nhs_number": "943 476 5919",
        "authored_at": "2026-11-01T10:00:00Z", "answers": {"instrument": "fft", "fft_answer": 2},
        "free_text": "9434765919 and 943 476 5919"})
    assert sub.free_text == f"{NHS_NUMBER_REMOVED} and {NHS_NUMBER_REMOVED}" and sub.free_text_redactions == 2
    assert sub.nhs_number == "9434765919"  # the field itself is validated, then pseudonymised by the store


def test_admission_refuses_unknown_providers_and_implausible_times() -> None:
    from datetime import datetime, timezone

    from services.feedback.domain import Submission, admission_refusal, authored_window
    from shared.reference import load_reference

    ref = load_reference()
    now = datetime(2026, 12, 2, 12, tzinfo=timezone.utc)
    window = authored_window(now, 730, 300)

    def sub(**kw: object) -> Submission:
        body = {"submission_id": "s", "episode_id": "e", "provider_code": "RJ1", "nhs_number": "9434765919",
                "authored_at": "2026-11-01T10:00:00Z", "answers": {"instrument": "fft", "fft_answer": 2}, **kw}
        return Submission.model_validate(body)

    assert admission_refusal(sub(), ref, window) is None
    assert admission_refusal(sub(provider_code="RJ121"), ref, window) is None  # a listed site
    assert admission_refusal(sub(provider_code="ZZZ"), ref, window)[0] == "provider_code"  # type: ignore[index]
    assert admission_refusal(sub(provider_code="RJ1ZZ"), ref, window)[0] == "provider_code"  # type: ignore[index]
    assert admission_refusal(sub(authored_at="9999-12-31T23:59:59+00:00"), ref, window)[0] == "authored_at"  # type: ignore[index]
    assert admission_refusal(sub(authored_at="0001-01-01T00:00:00+00:00"), ref, window)[0] == "authored_at"  # type: ignore[index]
