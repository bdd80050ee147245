"""The feedback service's pure core: instruments, validation, scoring and pseudonymisation.

Licensing: no question wording is shipped for EQ-5D-5L (EuroQol) or the Oxford Hip and Knee
Scores (Oxford University Innovation). Only item ids and level codes are stored.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Annotated, Literal, Union

import nhs_number
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.contracts import ExternalId, FftAnswer, OdsCode, PatientChoice

MAX_FREE_TEXT_CHARS = 2000


def valid_nhs_number(value: str) -> str:
    """Normalise (strip spaces and dashes) and check the modulus-11 check digit."""
    digits = nhs_number.normalise_number(value) if isinstance(value, str) else ""
    if len(digits) != 10 or not digits.isdigit() or not nhs_number.is_valid(digits):
        raise ValueError("not a valid NHS number (10 digits with a correct check digit)")
    return digits


def pseudonymise(nhs_number_digits: str, key: bytes) -> str:
    """Keyed HMAC-SHA256 pseudonym: stable for one key, useless without it."""
    return hmac.new(key, nhs_number_digits.encode(), hashlib.sha256).hexdigest()


_SYNTHETIC: list[str] = []
_SYNTHETIC_START = 999_000_000  # nine-digit stem of 999 000 000x
_SYNTHETIC_LIMIT = 10_000_000


def synthetic_nhs_number(n: int) -> str:
    """The n-th (0-based) valid NHS number in the 999 000 0000 test range: never a real patient.

    Stems whose check digit would be 10 are skipped, so the numbers are distinct for distinct n.
    Generated lazily and cached (amortised O(1) per number).
    """
    if not 0 <= n < _SYNTHETIC_LIMIT:
        raise ValueError(f"n must be in 0..{_SYNTHETIC_LIMIT - 1}")
    stem = _SYNTHETIC_START + (int(_SYNTHETIC[-1][:9]) - _SYNTHETIC_START + 1 if _SYNTHETIC else 0)
    while len(_SYNTHETIC) <= n:
        digits = f"{stem:09d}"
        total = sum(int(d) * w for d, w in zip(digits, range(10, 1, -1)))
        check_digit = 11 - total % 11
        if check_digit == 11:
            check_digit = 0
        if check_digit != 10:
            _SYNTHETIC.append(digits + str(check_digit))
        stem += 1
    return _SYNTHETIC[n]


# ---------------------------------------------------------------------------------------------
# Instruments
# ---------------------------------------------------------------------------------------------
class _Answers(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FftAnswers(_Answers):
    instrument: Literal["fft"] = "fft"
    fft_answer: FftAnswer = Field(description="1 Very good, 2 Good, 3 Neither good nor poor, 4 Poor, 5 Very poor, 6 Don't know")


class PatientPowerAnswers(_Answers):
    instrument: Literal["patient_power"] = "patient_power"
    patient_choice: PatientChoice = Field(description="Was the care good enough for the provider to be paid in full?")


Level5 = Annotated[int, Field(ge=1, le=5)]


class Eq5d5lAnswers(_Answers):
    instrument: Literal["eq5d5l"] = "eq5d5l"
    mobility: Level5
    self_care: Level5
    usual_activities: Level5
    pain_discomfort: Level5
    anxiety_depression: Level5
    vas: int = Field(ge=0, le=100, description="EQ VAS, 0 worst to 100 best imaginable health")
    timing: Literal["pre_op", "post_op", "other"] = "other"
    procedure: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,40}$")


class OxfordAnswers(_Answers):
    instrument: Literal["ohs", "oks"]
    items: tuple[int, ...] = Field(min_length=12, max_length=12, description="Twelve item scores, each 0 (worst) to 4 (best)")
    timing: Literal["pre_op", "post_op"]
    procedure: str = Field(pattern=r"^[a-z0-9_]{1,40}$", description="e.g. primary_hip_replacement")

    @field_validator("items")
    @classmethod
    def _item_range(cls, items: tuple[int, ...]) -> tuple[int, ...]:
        bad = [i + 1 for i, v in enumerate(items) if not 0 <= v <= 4]
        if bad:
            raise ValueError(f"items {bad} must be scored 0 to 4 (current scoring, 4 best)")
        return items


Answers = Annotated[
    Union[FftAnswers, PatientPowerAnswers, Eq5d5lAnswers, OxfordAnswers], Field(discriminator="instrument")
]


class Submission(BaseModel):
    """One patient's answer to one instrument about one episode, as an app backend sends it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    submission_id: ExternalId
    episode_id: ExternalId
    provider_code: OdsCode
    nhs_number: str = Field(description="10 digits; validated, then replaced by a pseudonym before storage")
    authored_at: datetime
    answers: Answers
    free_text: str | None = Field(default=None, max_length=MAX_FREE_TEXT_CHARS)
    amends_submission_id: ExternalId | None = None

    @field_validator("nhs_number")
    @classmethod
    def _nhs(cls, v: str) -> str:
        return valid_nhs_number(v)

    @field_validator("authored_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("authored_at must include a time zone")
        return v


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------
def fft_is_positive(answer: FftAnswer) -> bool:
    return answer in (FftAnswer.VERY_GOOD, FftAnswer.GOOD)


def fft_is_negative(answer: FftAnswer) -> bool:
    return answer in (FftAnswer.POOR, FftAnswer.VERY_POOR)


def oxford_total(items: tuple[int, ...]) -> int:
    """Oxford Hip/Knee Score total, 0-48, higher is better (current 0-4 item scoring)."""
    return sum(items)


def eq5d_profile(a: Eq5d5lAnswers) -> str:
    """The 5-digit health state, e.g. '21143'."""
    return f"{a.mobility}{a.self_care}{a.usual_activities}{a.pain_discomfort}{a.anxiety_depression}"


def scores(answers: FftAnswers | PatientPowerAnswers | Eq5d5lAnswers | OxfordAnswers) -> dict[str, object]:
    if isinstance(answers, FftAnswers):
        return {"fft_positive": fft_is_positive(answers.fft_answer), "fft_negative": fft_is_negative(answers.fft_answer)}
    if isinstance(answers, Eq5d5lAnswers):
        return {"eq5d_profile": eq5d_profile(answers), "eq_vas": answers.vas}
    if isinstance(answers, OxfordAnswers):
        return {"oxford_total": oxford_total(answers.items)}
    return {}
