"""The feedback service's pure core: instruments, validation, scoring and pseudonymisation.

Licensing: no question wording is shipped for EQ-5D-5L (EuroQol) or the Oxford Hip and Knee
Scores (Oxford University Innovation). Only item ids and level codes are stored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Literal, Union

import nhs_number
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from shared.contracts import ExternalId, FftAnswer, OdsCode, PatientChoice, ServiceType
from shared.reference import ReferenceData
from shared.stats.eq5d import ValueSet
from shared.tracing import nhs_check_digit_ok

MAX_FREE_TEXT_CHARS = 2000
# Modes of collection as the national FFT publication groups them.
CollectionMode = Literal["sms", "app", "online", "tablet", "paper", "telephone", "other"]
OPTIONAL_PUBLICATION_FIELDS = ("setting", "collection_mode")


def valid_nhs_number(value: str) -> str:
    """Normalise (strip spaces and dashes) and check the modulus-11 check digit."""
    digits = nhs_number.standardise_format(value) if isinstance(value, str) else ""
    if len(digits) != 10 or not digits.isdigit() or not nhs_number.is_valid(digits):
        raise ValueError("not a valid NHS number (10 digits with a correct check digit)")
    return digits


def pseudonymise(nhs_number_digits: str, key: bytes) -> str:
    """Keyed HMAC-SHA256 pseudonym: stable for one key, useless without it."""
    return hmac.new(key, nhs_number_digits.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Keyring:
    """The current pseudonym key and the keys it replaced (by key id), for lookups across a rotation."""

    current_id: str
    current: bytes
    previous: dict[str, bytes]

    def __post_init__(self) -> None:
        if len(self.current) < 16:
            raise ValueError("the pseudonym key must be at least 16 bytes")
        if self.current_id in self.previous:
            raise ValueError("the current key id must not also be a previous key id")

    def pseudonym(self, nhs_number_digits: str) -> str:
        return pseudonymise(nhs_number_digits, self.current)

    def all_pseudonyms(self, nhs_number_digits: str) -> list[str]:
        """The patient's pseudonym under the current key, then under each previous key."""
        return [self.pseudonym(nhs_number_digits)] + [pseudonymise(nhs_number_digits, k) for k in self.previous.values()]

    def key_for(self, key_id: str) -> bytes | None:
        return self.current if key_id == self.current_id else self.previous.get(key_id)


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
    # Optional, for FFT publication parity (NHS England publishes FFT results by setting and mode
    # of collection): the care setting the answer is about and how it was collected.
    setting: ServiceType | None = Field(default=None, description="The care setting (inpatient, a_and_e, maternity, ...)")
    collection_mode: CollectionMode | None = Field(default=None, description="How the answer was collected")

    @field_validator("nhs_number")
    @classmethod
    def _nhs(cls, v: str) -> str:
        return valid_nhs_number(v)

    @field_validator("free_text")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        # PostgreSQL text cannot hold NUL; other control characters are never what a patient typed.
        if v is not None and any(ord(c) < 32 and c not in "\t\n\r" for c in v):
            raise ValueError("free_text must not contain control characters")
        return v

    @field_validator("authored_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("authored_at must include a time zone")
        return v

    # How many NHS numbers were removed from free_text before anything else saw it.
    _free_text_redactions: int = PrivateAttr(default=0)

    @model_validator(mode="after")
    def _no_nhs_numbers_in_free_text(self) -> "Submission":
        # Patients write their NHS number into comments ("my nhs number is 943 476 5919"). Free
        # text is stored, so it is redacted here, on every channel, before it is hashed or stored.
        if self.free_text:
            cleaned, removed = redact_nhs_numbers(self.free_text)
            if removed:
                redacted = self.model_copy(update={"free_text": cleaned})
                redacted._free_text_redactions = removed
                return redacted
        return self

    @property
    def free_text_redactions(self) -> int:
        return self._free_text_redactions


# ---------------------------------------------------------------------------------------------
# Admission: what a channel refuses whatever the submission's shape
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuthoredWindow:
    """The plausible authored_at instants: not in the future (bar clock skew) nor years old."""

    earliest: datetime
    latest: datetime


def authored_window(now: datetime, max_age_days: int, skew_s: int) -> AuthoredWindow:
    """From ``now``: at most ``max_age_days`` old, at most ``skew_s`` ahead (FEEDBACK_AUTHORED_AT_MAX_* settings)."""
    return AuthoredWindow(now - timedelta(days=max_age_days), now + timedelta(seconds=skew_s))


def admission_refusal(sub: Submission, ref: ReferenceData, window: AuthoredWindow) -> tuple[str, str] | None:
    """(field, why) a submission is refused on any channel, or None: the provider (a trust or one
    of its sites) must be known to the reference data, and authored_at plausible."""
    if ref.trust_of(sub.provider_code) is None:
        return "provider_code", f"{sub.provider_code} is not a known trust or site"
    if sub.authored_at > window.latest:
        return "authored_at", f"{sub.authored_at.isoformat()} is in the future"
    if sub.authored_at < window.earliest:
        return "authored_at", f"{sub.authored_at.isoformat()} is earlier than {window.earliest.date().isoformat()}"
    return None


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


# ---------------------------------------------------------------------------------------------
# PROM pairing and health gain
# ---------------------------------------------------------------------------------------------
PROM_INSTRUMENTS = ("eq5d5l", "ohs", "oks")


def prom_pair_key(answers: FftAnswers | PatientPowerAnswers | Eq5d5lAnswers | OxfordAnswers) -> tuple[str, str, str] | None:
    """(instrument, procedure, timing) for a PROM that can be paired pre/post-operatively, else None.

    Oxford scores always pair; EQ-5D-5L pairs only when sent with a procedure and a pre_op or
    post_op timing. FFT and the patient power question never pair.
    """
    if isinstance(answers, OxfordAnswers):
        return (answers.instrument, answers.procedure, answers.timing)
    if isinstance(answers, Eq5d5lAnswers) and answers.procedure and answers.timing in ("pre_op", "post_op"):
        return (answers.instrument, answers.procedure, answers.timing)
    return None


def prom_score(instrument: str, scores_: dict[str, object]) -> int:
    """The number health gain is computed on: Oxford total (0-48) or EQ VAS (0-100); higher is better."""
    if instrument in ("ohs", "oks"):
        value = scores_["oxford_total"]
    elif instrument == "eq5d5l":
        value = scores_["eq_vas"]
    else:
        raise ValueError(f"{instrument} is not a paired PROM")
    if not isinstance(value, int):
        raise ValueError("PROM score must be an integer")
    return value


@dataclass(frozen=True)
class PromPair:
    """A patient's first pre-operative and first post-operative PROM for one procedure."""

    instrument: str
    procedure: str
    pre_score: int
    post_score: int
    pre_profile: str | None = None  # EQ-5D-5L health states, for information
    post_profile: str | None = None

    @property
    def health_gain(self) -> int:
        """post − pre on the instrument's own scale (Oxford 0-48 total; EQ VAS 0-100). Positive is better."""
        return self.post_score - self.pre_score


def pair_proms(
    instrument: str, procedure: str,
    pre: tuple[datetime, dict[str, object]], post: tuple[datetime, dict[str, object]],
) -> PromPair | None:
    """Pair a pre-operative and a post-operative PROM (authored_at, scores); None if post precedes pre."""
    (pre_at, pre_scores), (post_at, post_scores) = pre, post
    if post_at <= pre_at:
        return None
    return PromPair(
        instrument, procedure, prom_score(instrument, pre_scores), prom_score(instrument, post_scores),
        pre_scores.get("eq5d_profile") if instrument == "eq5d5l" else None,  # type: ignore[arg-type]
        post_scores.get("eq5d_profile") if instrument == "eq5d5l" else None,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class PromGroup:
    provider_code: str
    instrument: str
    procedure: str
    pairs: int
    avg_pre: float | None
    avg_post: float | None
    avg_health_gain: float | None
    suppressed: bool
    pct_improved: float | None = None  # pairs with a health gain above 0, % to 1 dp
    avg_index_gain: float | None = None  # EQ-5D-5L: mean index(post) - index(pre) under value_set, 3 dp
    value_set: str | None = None  # "<id>@<version>" of the value set behind avg_index_gain


def prom_report(rows: Sequence[tuple], min_count: int, value_set: "ValueSet | None" = None) -> list[PromGroup]:
    """Per (provider, instrument, procedure) from rows (provider, instrument, procedure, pre, post[,
    pre profile, post profile]): average pre, post and health gain, the % of pairs that improved
    (gain above 0) and, for EQ-5D-5L pairs with both health states and a value set, the average
    index gain under it.

    Groups with fewer than ``min_count`` pairs are suppressed: the count is shown, nothing else.
    Averages are rounded to one decimal place (half away from zero), the index gain to three.
    """
    if min_count < 1:
        raise ValueError("min_count must be at least 1")
    groups: dict[tuple[str, str, str], list[tuple]] = {}
    for row in rows:
        provider, instrument, procedure, pre, post = row[:5]
        profiles = tuple(row[5:7]) if len(row) >= 7 else (None, None)
        groups.setdefault((provider, instrument, procedure), []).append((pre, post, *profiles))
    out = []
    for (provider, instrument, procedure), scores_ in sorted(groups.items()):
        n = len(scores_)
        if n < min_count:
            out.append(PromGroup(provider, instrument, procedure, n, None, None, None, True))
            continue
        pre_sum = sum(x[0] for x in scores_)
        post_sum = sum(x[1] for x in scores_)
        improved = sum(1 for x in scores_ if x[1] > x[0])
        index_gain, key = None, None
        if value_set is not None and instrument == "eq5d5l":
            key = value_set.key
            gains = [value_set.index(b) - value_set.index(a) for _, _, a, b in scores_ if a and b]
            if gains:
                index_gain = float((sum(gains) / len(gains)).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP))
        out.append(PromGroup(provider, instrument, procedure, n, _avg(pre_sum, n), _avg(post_sum, n),
                             _avg(post_sum - pre_sum, n), False, _avg(improved * 100, n), index_gain, key))
    return out


def prom_index_rule(value_set: ValueSet | None) -> str:
    """How a PROM report's index gain was computed, for its ``rule`` text."""
    if value_set is None:
        return "No EQ-5D-5L value set is configured: no index gain."
    return (f"EQ-5D-5L avg_index_gain: mean of index(post state) − index(pre state) under value set {value_set.key}"
            f" ({value_set.country}; {value_set.source}).")


def _avg(total: int, n: int) -> float:
    """total / n to one decimal place, rounded half away from zero, with integer arithmetic."""
    sign = -1 if total < 0 else 1
    tenths = (abs(total) * 20 + n) // (2 * n)
    return sign * tenths / 10


# ---------------------------------------------------------------------------------------------
# FFT reporting with NHS-style suppression
# ---------------------------------------------------------------------------------------------
SUPPRESSION_THRESHOLD = 5  # nhsengland/fft_pipeline src/fft/config.py: 1-4 responses are suppressed


@dataclass(frozen=True)
class FftRow:
    """One provider's FFT results for a period. ``None`` marks a suppressed value."""

    provider_code: str
    responses: int | None
    counts: dict[str, int] | None  # very_good, good, neither, poor, very_poor, dont_know
    pct_positive: int | None
    pct_negative: int | None
    suppression: Literal["none", "primary", "secondary"]


FFT_COUNT_NAMES = {a: a.name.lower() for a in FftAnswer}


def pct(part: int, whole: int) -> int | None:
    """Whole percent, rounded half up (integer arithmetic); None when there is nothing to divide."""
    if whole <= 0:
        return None
    return (200 * part + whole) // (2 * whole)


def fft_report(counts: dict[str, dict[FftAnswer, int]]) -> tuple[list[FftRow], FftRow]:
    """FFT % positive and % negative per provider, and the total, with suppression.

    Rules (as NHS England publishes the FFT, nhsengland/fft_pipeline ``suppression.py``):
    - primary: a provider with 1-4 responses shows nothing (responses, counts, percentages);
      a provider with zero responses is shown as zero;
    - secondary: when exactly one provider is primary-suppressed, the total minus the others
      would reveal its responses, so the next-smallest provider with responses (ties: by
      provider code) also hides its responses and counts (its percentages stay, as in NHS
      publication). With two or more primary suppressions only their sum is recoverable;
    - the total row is never suppressed (it is the sum over all providers).
    """
    rows: dict[str, FftRow] = {}
    for provider, by_answer in sorted(counts.items()):
        full = {name: int(by_answer.get(answer, 0)) for answer, name in FFT_COUNT_NAMES.items()}
        rows[provider] = _fft_row(provider, full)
    primary = [p for p, r in rows.items() if 0 < (r.responses or 0) < SUPPRESSION_THRESHOLD]
    for p in primary:
        rows[p] = FftRow(p, None, None, None, None, "primary")
    if len(primary) == 1:
        candidates = sorted((r.responses, p) for p, r in rows.items() if r.suppression == "none" and r.responses)
        if candidates:
            _, p = candidates[0]
            r = rows[p]
            rows[p] = FftRow(p, None, None, r.pct_positive, r.pct_negative, "secondary")
    total_counts = {name: sum(int(c.get(a, 0)) for c in counts.values()) for a, name in FFT_COUNT_NAMES.items()}
    return list(rows.values()), _fft_row("ALL", total_counts)


def _fft_row(provider: str, full: dict[str, int]) -> FftRow:
    n = sum(full.values())
    positive = full["very_good"] + full["good"]
    negative = full["poor"] + full["very_poor"]
    return FftRow(provider, n, full, pct(positive, n), pct(negative, n), "none")


# ---------------------------------------------------------------------------------------------
# Redaction (dead letters, log messages)
# ---------------------------------------------------------------------------------------------
_TEN_DIGITS = re.compile(r"\d(?:[ -]?\d){9,}")
_TEN_DIGITS_B = re.compile(rb"\d(?:[ -]?\d){9,}")
REDACTED = "[redacted]"


NHS_NUMBER_REMOVED = "[NHS number removed]"
# Ten digits with at most one space, dash or dot between any two, not inside a longer digit run.
_NHS_IN_TEXT = re.compile(r"(?<!\d)\d(?:[ .\-]?\d){9}(?!\d)")


def redact_nhs_numbers(text: str) -> tuple[str, int]:
    """``text`` with every NHS-number-shaped value (ten digits, however spaced, with a valid
    check digit) replaced, and how many were replaced. A ten-digit run that fails the check (a
    phone number, a reference) is left alone: free text is the patient's, kept as written."""
    removed = 0

    def replace(m: re.Match[str]) -> str:
        nonlocal removed
        if nhs_check_digit_ok(re.sub(r"[ .\-]", "", m.group(0))):
            removed += 1
            return NHS_NUMBER_REMOVED
        return m.group(0)

    return _NHS_IN_TEXT.sub(replace, text), removed


def redact(text: str) -> str:
    """Replace every run of 10 or more digits (optionally split by single spaces or dashes) by ``[redacted]``.

    Deliberately over-inclusive: it does not check the check digit (a mistyped NHS number is
    redacted too) and it takes longer runs whole, because an NHS number can sit next to other
    digits (``\x14`` + number in a logged byte string reads as 12 digits).
    """
    return _TEN_DIGITS.sub(REDACTED, text)


def redact_bytes(raw: bytes | None) -> bytes | None:
    return None if raw is None else _TEN_DIGITS_B.sub(REDACTED.encode(), raw)


def redact_dead_letter(raw: bytes | None) -> bytes | None:
    """An intake message made safe for the dead-letter topic: free text blanked, 10-digit runs redacted.

    A message that is a JSON envelope keeps its shape (so the reason can be understood and the
    message repaired); anything else is redacted as bytes.
    """
    if raw is None:
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        return redact_bytes(raw)
    data = body.get("data") if isinstance(body, dict) else None
    if isinstance(data, dict) and data.get("free_text") is not None:
        data["free_text"] = REDACTED
    return redact_bytes(json.dumps(body, ensure_ascii=False).encode())
