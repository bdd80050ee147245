"""Event contracts shared by the three services: pydantic v2 models, one place.

Every event travels in an :class:`Envelope` (event_id, type, occurred_at, correlation_id,
causation_id, producer) whose ``data`` is one of the payload models below. The ``type`` string
names the payload and its version; the topic name carries the same version (see topics.py).
Payloads never carry an NHS number or free text.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timezone
from enum import IntEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, StringConstraints, model_serializer,
    model_validator,
)

# ---------------------------------------------------------------------------------------------
# Identifiers and codes
# ---------------------------------------------------------------------------------------------
EXTERNAL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,99}$"
ExternalId = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")
]
"""A client-chosen id (payment, episode, submission, transfer). It is also the idempotency key."""

TransferId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")
]
"""A ledger transfer id. Longer than ExternalId so that ids derived from a client's id
(``settle:<payment_id>``, ``release:<payment_id>``) always fit."""

def no_nul(value: str) -> str:
    # PostgreSQL text and jsonb cannot hold U+0000: refuse it here (422 / dead letter), not in the database.
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (U+0000)")
    return value


FreeText = Annotated[str, AfterValidator(no_nul)]
"""A free-form string that is stored: anything but NUL."""

OdsCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{3}([A-Z0-9]{2})?$")]
"""An ODS organisation code: 3 characters (trust, ICB) or 5 (trust site)."""

IcbCode = Annotated[str, StringConstraints(pattern=r"^Q[A-Z0-9]{2}$")]
RegionCode = Annotated[str, StringConstraints(pattern=r"^Y[0-9]{2}$")]
AccountId = Annotated[
    str, StringConstraints(pattern=r"^(commissioner|provider|held|fund):[A-Z0-9]{3,5}$")
]

ServiceType = Literal[
    "inpatient",
    "a_and_e",
    "outpatient",
    "maternity",
    "mental_health",
    "community",
    "gp",
    "dental",
    "ambulance",
]


class FftAnswer(IntEnum):
    """Friends and Family Test answer codes as in NHS England's pipeline."""

    VERY_GOOD = 1
    GOOD = 2
    NEITHER = 3
    POOR = 4
    VERY_POOR = 5
    DONT_KNOW = 6


PatientChoice = Literal["pay_in_full", "hold_back", "not_sure"]

AgeBand = Literal["0-17", "18-44", "45-64", "65-74", "75+"]
"""Age bands for case-mix adjustment: broad enough never to identify anyone."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# Envelope
# ---------------------------------------------------------------------------------------------
T = TypeVar("T", bound=Contract)


class Envelope(Contract, Generic[T]):
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    occurred_at: datetime = Field(default_factory=utcnow)
    correlation_id: FreeText = Field(min_length=1, max_length=200)
    causation_id: FreeText | None = Field(default=None, max_length=200)
    producer: FreeText = Field(min_length=1, max_length=100)
    data: T


# ---------------------------------------------------------------------------------------------
# Payloads
# ---------------------------------------------------------------------------------------------
class PaymentRequested(Contract):
    """A commissioner's request to pay a provider for one care episode."""

    payment_id: ExternalId
    episode_id: ExternalId
    commissioner_code: IcbCode
    provider_code: OdsCode
    service_type: ServiceType
    activity_date: date
    amount_pence: int = Field(gt=0, le=10_000_000_000, strict=True)  # up to £100m per episode
    # Optional case-mix fields (added later; absent in earlier events), never identifying: the
    # patient's age band and the Index of Multiple Deprivation decile of where they live (1 most
    # deprived, 10 least), which a commissioner's system derives from the postcode and sends
    # instead of it. Schemes with ``[casemix]`` judge against the benchmark for these strata.
    # A request without them stores nothing for them: its fingerprint is as before.
    age_band: AgeBand | None = Field(default=None, description="The patient's age band at the activity date")
    imd_decile: int | None = Field(default=None, ge=1, le=10, strict=True,
                                   description="IMD decile of the patient's area (1 = most deprived 10%, 10 = least)")

    @model_serializer(mode="wrap")
    def _without_absent_casemix(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Absent, not null, when not sent: a request from before these fields existed serialises
        # (and so fingerprints, and replays as a duplicate) byte for byte as it did.
        out = handler(self)
        for name in _CASEMIX_FIELDS:
            if out.get(name, 0) is None:
                del out[name]
        return out


_CASEMIX_FIELDS = ("age_band", "imd_decile")


class FeedbackReceived(Contract):
    """A validated, pseudonymised patient answer about one episode (no free text, no NHS number)."""

    submission_id: ExternalId
    episode_id: ExternalId
    provider_code: OdsCode
    patient_pseudonym: str = Field(pattern=r"^[0-9a-f]{64}$")
    instrument: Literal["fft", "patient_power", "eq5d5l", "ohs", "oks"]
    authored_at: datetime
    fft_answer: FftAnswer | None = None
    patient_choice: PatientChoice | None = None
    amends_submission_id: ExternalId | None = None
    # Optional (added later; absent in earlier events): what improvement work is measured by.
    setting: ServiceType | None = None
    procedure: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,40}$")
    timing: Literal["pre_op", "post_op", "other"] | None = None
    prom_score: int | None = Field(default=None, ge=0, le=100, description="Oxford total (0-48) or EQ VAS (0-100)")
    health_gain: int | None = Field(default=None, ge=-100, le=100, description="post - pre, when this answer completes a pair")

    @model_validator(mode="after")
    def _answer_present(self) -> "FeedbackReceived":
        if self.instrument == "fft" and self.fft_answer is None:
            raise ValueError("fft feedback needs fft_answer")
        if self.instrument == "patient_power" and self.patient_choice is None:
            raise ValueError("patient_power feedback needs patient_choice")
        return self


class Leg(Contract):
    account_id: AccountId
    amount_pence: int = Field(strict=True)  # + credit, - debit; legs of an entry sum to zero


PeriodCode = Annotated[str, StringConstraints(pattern=r"^20[0-9]{2}-(0[1-9]|1[0-2])$")]
"""A settlement period, YYYY-MM (years 2000-2099)."""

ReferenceText = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@\-]*$")]
"""An id built by a producer from other ids (a settlement id, an appeal id, a scheme id)."""


class TransferCause(Contract):
    """Why money moved: enough to explain the transfer to an auditor. Every field is bounded: a
    cause is hashed into the append-only journal and kept forever."""

    kind: Literal["payment", "payment_hold", "settlement", "diversion", "release", "appeal_upheld", "reversal", "expiry",
                  "manual", "grant_reserve", "grant_payment", "grant_release"]
    payment_id: ExternalId | None = None
    episode_id: ExternalId | None = None
    provider_code: OdsCode | None = None
    period: PeriodCode | None = None
    scheme_id: ReferenceText | None = None
    scheme_version: int | None = Field(default=None, ge=1, le=1_000_000)
    settlement_id: ReferenceText | None = None
    appeal_id: ReferenceText | None = None
    grant_id: ReferenceText | None = None
    note: FreeText | None = Field(default=None, max_length=500)


MAX_LEGS = 16


TransferKind = Literal["posted", "pending", "post_pending", "void_pending"]


class TransferRequested(Contract):
    """Ask the ledger to record one journal entry. ``transfer_id`` is the idempotency key.

    Kinds (two-phase transfers, as in TigerBeetle):
    - ``posted``: a balanced multi-leg entry that moves money now.
    - ``pending``: reserves the legs' amounts (shown as pending, not posted) until a later
      ``post_pending`` or ``void_pending`` names it in ``pending_id``, or ``timeout_s`` passes
      (then it voids itself).
    - ``post_pending``: posts a pending transfer, in full (no legs) or in part (legs on the same
      accounts, same signs, each no larger than the pending leg, balanced); the rest is released.
    - ``void_pending``: releases a pending transfer in full (no legs).
    ``reverses`` names a posted transfer this one corrects; its legs must be the exact negation.
    Transfers that must apply in order (a pending and its post) share ``ordering_key``, which is
    the Kafka message key, so they land on one partition in order.
    """

    transfer_id: TransferId
    kind: TransferKind = "posted"
    legs: tuple[Leg, ...] = Field(default=(), max_length=MAX_LEGS)
    pending_id: TransferId | None = None
    timeout_s: int | None = Field(default=None, ge=1, le=366 * 86_400)
    reverses: TransferId | None = None
    ordering_key: ExternalId | None = None
    cause: TransferCause
    # The accounting date (UK, Europe/London) the entry belongs to, when not the day it is posted:
    # a finance team dating an adjustment into a month still open. Never in the future, and
    # refused once its month is closed (the ledger's period close); left out of the canonical
    # request when absent, so entries written before the field existed hash the same.
    value_date: date | None = None

    @model_validator(mode="after")
    def _shape(self) -> "TransferRequested":
        if self.kind in ("posted", "pending") and len(self.legs) < 2:
            raise ValueError(f"a {self.kind} transfer needs at least two legs")
        if self.kind == "void_pending" and self.legs:
            raise ValueError("void_pending takes no legs")
        if self.kind in ("post_pending", "void_pending") and not self.pending_id:
            raise ValueError(f"{self.kind} needs pending_id")
        if self.kind in ("posted", "pending") and self.pending_id:
            raise ValueError(f"pending_id is only for post_pending and void_pending, not {self.kind}")
        if self.timeout_s is not None and self.kind != "pending":
            raise ValueError("timeout_s is only for pending transfers")
        if self.reverses is not None and self.kind != "posted":
            raise ValueError("only a posted transfer can reverse another")
        if self.value_date is not None and not date(2000, 1, 1) <= self.value_date <= date(2099, 12, 31):
            raise ValueError("value_date must be in 2000-2099")
        if self.legs:
            if sum(leg.amount_pence for leg in self.legs) != 0:
                raise ValueError("legs must sum to zero (debits equal credits)")
            if any(leg.amount_pence == 0 for leg in self.legs):
                raise ValueError("a leg must move a non-zero amount")
            if len({leg.account_id for leg in self.legs}) != len(self.legs):
                raise ValueError("each account may appear once per entry")
        return self

    @property
    def key(self) -> str:
        """The Kafka message key: ordering_key when set, else the transfer id."""
        return self.ordering_key or self.transfer_id


class TransferPosted(Contract):
    """The ledger's answer to a transfer request: posted (with its place in the chain) or rejected."""

    transfer_id: TransferId
    status: Literal["posted", "pending", "voided", "rejected"]
    entry_seq: int | None = None
    entry_hash: str | None = None
    reason: FreeText | None = Field(default=None, max_length=2000)  # stored by payments


EVENT_TYPES: dict[str, type[Contract]] = {
    "payments.requested.v1": PaymentRequested,
    "feedback.received.v1": FeedbackReceived,
    "ledger.transfer-requested.v1": TransferRequested,
    "ledger.posted.v1": TransferPosted,
}


def envelope(
    data: Contract,
    type_: str,
    *,
    producer: str,
    correlation_id: str,
    causation_id: str | None = None,
    event_id: uuid.UUID | None = None,
) -> Envelope:
    return Envelope[type(data)](  # type: ignore[misc]
        event_id=event_id or uuid.uuid4(),
        type=type_,
        correlation_id=correlation_id,
        causation_id=causation_id,
        producer=producer,
        data=data,
    )


def parse_envelope(raw: bytes, payload: type[T]) -> Envelope[T]:
    """Parse and validate an event; raises pydantic.ValidationError with a readable reason."""
    return Envelope[payload].model_validate_json(raw)  # type: ignore[valid-type]


# ---------------------------------------------------------------------------------------------
# Improvement funds (services/funds): the grant lifecycle on ``funds.grants.v1``, keyed by
# grant id. Like every payload here they carry no free text: titles, aims and reasons typed by
# people stay in the funds database (and its API); the events carry ids, codes, amounts, dates
# and the actor (the token's subject).
# ---------------------------------------------------------------------------------------------
GrantId = Annotated[str, StringConstraints(min_length=1, max_length=60, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")]
"""A grant's id, chosen by the proposer: the proposal's idempotency key. No ``:``, so the ledger
transfer ids built from it (``grant:<grant_id>:m<n>``, ``...:pay``, ``...:void``) parse back
unambiguously; at most 60 characters, so they fit ``TransferId``."""

ActorId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@|+\-]{0,199}$")]
"""Who acted: a bearer token's ``sub`` (shared/auth.py SUBJECT_RE)."""

MAX_GRANT_MILESTONES = 12
MAX_GRANT_PENCE = 10_000_000_000  # £100m: far above any regional fund's year
GrantStatus = Literal["proposed", "withdrawn", "refused", "reserving", "reserved", "completed", "cancelled"]
MeasureKind = Literal["fft_positive", "fft_negative", "prom_health_gain", "prom_post_op_score"]
PromInstrument = Literal["eq5d5l", "ohs", "oks"]
FFT_MEASURES: tuple[str, ...] = ("fft_positive", "fft_negative")
PROM_MEASURES: tuple[str, ...] = ("prom_health_gain", "prom_post_op_score")


class GrantMeasure(Contract):
    """What a project is judged by: an FFT share (for one care setting, or all) or a PROM (one
    instrument and procedure), per ISO week or calendar month, with its baseline period."""

    kind: MeasureKind
    interval: Literal["week", "month"]
    setting: ServiceType | None = None
    instrument: PromInstrument | None = None
    procedure: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,40}$")
    baseline_from: date
    baseline_to: date

    @model_validator(mode="after")
    def _shape(self) -> "GrantMeasure":
        if self.kind in FFT_MEASURES and (self.instrument is not None or self.procedure is not None):
            raise ValueError("an FFT measure takes a setting (or none for all settings), not an instrument or procedure")
        if self.kind in PROM_MEASURES and (self.instrument is None or self.procedure is None or self.setting is not None):
            raise ValueError("a PROM measure needs instrument and procedure, and takes no setting")
        if self.baseline_to < self.baseline_from:
            raise ValueError("baseline_to must not be before baseline_from")
        return self


class GrantMilestoneTerms(Contract):
    n: int = Field(ge=1, le=MAX_GRANT_MILESTONES)
    provider_code: OdsCode
    amount_pence: int = Field(gt=0, le=MAX_GRANT_PENCE, strict=True)
    due_date: date


class GrantProposed(Contract):
    """A fund manager proposed a grant from ``fund:<region_code>`` (nothing is reserved yet)."""

    grant_id: GrantId
    region_code: RegionCode
    amount_pence: int = Field(gt=0, le=MAX_GRANT_PENCE, strict=True)
    start_date: date
    end_date: date
    measure: GrantMeasure
    milestones: tuple[GrantMilestoneTerms, ...] = Field(min_length=1, max_length=MAX_GRANT_MILESTONES)
    proposed_by: ActorId
    proposed_at: datetime

    @model_validator(mode="after")
    def _adds_up(self) -> "GrantProposed":
        if [m.n for m in self.milestones] != list(range(1, len(self.milestones) + 1)):
            raise ValueError("milestones are numbered 1..N in order")
        if sum(m.amount_pence for m in self.milestones) != self.amount_pence:
            raise ValueError("the milestones' amounts must add up to amount_pence exactly")
        return self


class GrantDecided(Contract):
    """A second authorised person approved (reservation requested) or refused the proposal."""

    grant_id: GrantId
    region_code: RegionCode
    outcome: Literal["approved", "refused"]
    decided_by: ActorId
    decided_at: datetime
    grant_status: GrantStatus


class GrantReserved(Contract):
    """The ledger's verdict on an approved grant: every milestone reserved from the fund, or
    refused (the fund could not cover it: its floor decided; anything reserved is released)."""

    grant_id: GrantId
    region_code: RegionCode
    outcome: Literal["reserved", "refused"]
    reserved_pence: int = Field(ge=0, le=MAX_GRANT_PENCE, strict=True)
    reason: FreeText | None = Field(default=None, max_length=2000)  # the ledger's, for a refusal
    grant_status: GrantStatus


class MilestonePaid(Contract):
    """A milestone met: its reservation posted in full, fund -> provider."""

    grant_id: GrantId
    region_code: RegionCode
    n: int = Field(ge=1, le=MAX_GRANT_MILESTONES)
    provider_code: OdsCode
    amount_pence: int = Field(gt=0, le=MAX_GRANT_PENCE, strict=True)
    transfer_id: TransferId
    met_by: ActorId
    entry_seq: int | None = None
    grant_status: GrantStatus


class MilestoneReleased(Contract):
    """A milestone's reservation went back to the fund: the grant was cancelled, refused (another
    milestone could not be reserved) or the hold lapsed (not met by its due date plus grace)."""

    grant_id: GrantId
    region_code: RegionCode
    n: int = Field(ge=1, le=MAX_GRANT_MILESTONES)
    provider_code: OdsCode
    amount_pence: int = Field(gt=0, le=MAX_GRANT_PENCE, strict=True)
    why: Literal["cancelled", "refused", "lapsed"]
    transfer_id: TransferId
    grant_status: GrantStatus


class GrantCancelled(Contract):
    """A grant withdrawn before its decision, or cancelled after: ``releasing_pence`` (the unpaid
    rest still reserved) goes back to the fund."""

    grant_id: GrantId
    region_code: RegionCode
    cancelled_by: ActorId
    cancelled_at: datetime
    releasing_pence: int = Field(ge=0, le=MAX_GRANT_PENCE, strict=True)
    grant_status: GrantStatus


FUNDS_EVENT_TYPES: dict[str, type[Contract]] = {
    "funds.grant-proposed.v1": GrantProposed,
    "funds.grant-decided.v1": GrantDecided,
    "funds.grant-reserved.v1": GrantReserved,
    "funds.milestone-paid.v1": MilestonePaid,
    "funds.milestone-released.v1": MilestoneReleased,
    "funds.grant-cancelled.v1": GrantCancelled,
}


# ---------------------------------------------------------------------------------------------
# Payments' settlement statements (scheme option [review], services/payments/review.py)
# ---------------------------------------------------------------------------------------------
MAX_STATEMENT_PENCE = 10**15  # far above any provider's month


class SettlementStatement(Contract):
    """A unit's settlement statement (one provider's held episodes of a period under one scheme
    version): provisional (the report the settlement would produce; no money has moved) or final
    (the money moved: ``settlement_id`` names the settlement report). Figures only: the reasons of
    queries and corrections stay in payments' API (``GET /v1/statements/{statement_id}``)."""

    statement_id: ReferenceText
    status: Literal["provisional", "final"]
    provider_code: OdsCode
    region_code: RegionCode
    period: PeriodCode
    scheme_id: ReferenceText
    scheme_version: int = Field(ge=1, le=1_000_000)
    episodes: int = Field(ge=0, strict=True)
    responses: int = Field(ge=0, strict=True)
    billed_pence: int = Field(ge=0, le=MAX_STATEMENT_PENCE, strict=True)
    held_pence: int = Field(ge=0, le=MAX_STATEMENT_PENCE, strict=True)
    released_pence: int = Field(ge=0, le=MAX_STATEMENT_PENCE, strict=True)
    diverted_pence: int = Field(ge=0, le=MAX_STATEMENT_PENCE, strict=True)
    corrections: int = Field(ge=0, strict=True)
    window_closes_at: datetime
    settlement_id: ReferenceText | None = None
    by: ActorId  # who settled (provisional) or finalised it: a token's subject, or "scheduler"
    at: datetime

    @model_validator(mode="after")
    def _adds_up(self) -> "SettlementStatement":
        if self.released_pence + self.diverted_pence != self.held_pence:
            raise ValueError("released_pence + diverted_pence must equal held_pence")
        if (self.status == "final") != (self.settlement_id is not None):
            raise ValueError("a final statement names its settlement, a provisional one none")
        return self


PAYMENTS_EVENT_TYPES: dict[str, type[Contract]] = {
    "payments.statement-provisional.v1": SettlementStatement,
    "payments.statement-finalised.v1": SettlementStatement,
}
