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
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

# ---------------------------------------------------------------------------------------------
# Identifiers and codes
# ---------------------------------------------------------------------------------------------
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
                  "manual"]
    payment_id: ExternalId | None = None
    episode_id: ExternalId | None = None
    provider_code: OdsCode | None = None
    period: PeriodCode | None = None
    scheme_id: ReferenceText | None = None
    scheme_version: int | None = Field(default=None, ge=1, le=1_000_000)
    settlement_id: ReferenceText | None = None
    appeal_id: ReferenceText | None = None
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
