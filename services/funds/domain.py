"""The funds service's pure core: improvement grants, maker-checker, and the money they move.

No I/O. Handlers load a grant, call one of the commands below with plain values (the actor is
the token's subject, ``now`` the clock), and write what it returns: the grant's new state, the
steps to record, the ledger transfer requests and the events.

Lifecycle (``grant_status``, derived from recorded facts, never typed in)::

    proposed ──refuse──▶ refused
       │  └─cancel──▶ withdrawn
       └─approve──▶ reserving ──(ledger: every milestone reserved)──▶ reserved ──(all paid or lapsed)──▶ completed
                       │                                                 │
                       └─(ledger: a milestone refused: insufficient      └─cancel──▶ cancelled (the unpaid rest released)
                          funds; the others are released)──▶ refused

Money (integer pence, ``shared.money``): approval asks the ledger for one **pending** transfer per
milestone, ``fund:<region>`` → ``provider:<ods>`` (``grant:<grant_id>:m<n>``); the fund's floor in
the ledger decides whether the fund can cover it, so concurrent approvals race there and at most
what the fund holds is ever reserved. A milestone met posts its reservation in full
(``...:pay``); cancellation voids the reservations not yet paid (``...:void``); a reservation not
met by its due date plus the grace lapses (the ledger voids it at its timeout). Every transfer
names the grant as ``ordering_key``, so one grant's requests reach the ledger in order (a void
after the reservation it releases). Each milestone's status is a function of the ledger's
answers, which may arrive in any order and more than once.

Maker-checker: the person who proposed a grant can neither approve (or refuse) it nor record its
milestones met; every step records the actor.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from services.funds import measure as measures
from shared.contracts import (
    MAX_GRANT_MILESTONES,
    MAX_GRANT_PENCE,
    Contract,
    GrantCancelled,
    GrantDecided,
    GrantId,
    GrantMeasure,
    GrantMilestoneTerms,
    GrantProposed,
    GrantReserved,
    GrantStatus,
    Leg,
    MilestonePaid,
    MilestoneReleased,
    RegionCode,
    TransferCause,
    TransferRequested,
    no_nul,
)
from shared.money import BPS_WHOLE, check, split_largest_remainder
from shared.reference import ReferenceData
from shared.tracing import holds_nhs_number

MAX_PROVIDERS_PER_GRANT = 8
LEDGER_HOLD_MAX_S = 366 * 86_400  # TransferRequested.timeout_s
FEEDBACK_MAX_AGE_DAYS = 730  # the feedback service refuses answers older than this: no baseline before
MAX_BASELINE_PERIODS = {"week": 104, "month": 36}
LEDGER = "ledger"  # the actor of steps the ledger's answers cause

MilestoneStatus = Literal["planned", "reserving", "reserved", "paying", "paid", "releasing", "released", "lapsed", "refused",
                          "discrepancy"]
TransferStep = Literal["reserve", "pay", "release"]
Outcome = Literal["approved", "refused"]


# ---------------------------------------------------------------------------------------------
# Errors (the API maps them to 422, 404, 403 and 409)
# ---------------------------------------------------------------------------------------------
class GrantError(Exception):
    def __init__(self, message: str, field: str = "(request)") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InputError(GrantError):
    """The proposal breaks a rule (422); ``errors`` names each field."""

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors), errors[0][0] if errors else "(body)")
        self.errors = list(errors)


class NotFound(GrantError):
    pass


class SameActor(GrantError):
    """Maker-checker: the proposer may not take this step (403)."""


class Refused(GrantError):
    """Not in the grant's present state (409), with the reason."""


class Conflict(GrantError):
    """The grant id is taken by another proposal (409)."""


# ---------------------------------------------------------------------------------------------
# What a fund manager proposes (the HTTP body)
# ---------------------------------------------------------------------------------------------
def no_nhs_number(value: str) -> str:
    # Typed by staff about a project, and kept: never a patient's NHS number.
    if holds_nhs_number(value.replace(" ", "")):
        raise ValueError("must not hold an NHS number")
    return value


ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True), AfterValidator(no_nul),
                      AfterValidator(no_nhs_number)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=2000, strip_whitespace=True), AfterValidator(no_nul),
                     AfterValidator(no_nhs_number)]
TrustCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{3}$")]


class MilestoneProposal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    title: ShortText
    provider_code: TrustCode = Field(description="The trust paid when the milestone is met (3-character ODS code)")
    due_date: date
    amount_pence: int | None = Field(default=None, gt=0, le=MAX_GRANT_PENCE, strict=True,
                                     description="This milestone's amount; or give every milestone share_bps instead")
    share_bps: int | None = Field(default=None, ge=1, le=BPS_WHOLE, strict=True,
                                  description="This milestone's share of amount_pence in basis points (largest remainder)")

    @model_validator(mode="after")
    def _one_amount(self) -> "MilestoneProposal":
        if (self.amount_pence is None) == (self.share_bps is None):
            raise ValueError("give exactly one of amount_pence and share_bps")
        return self


class GrantProposal(BaseModel):
    """A grant from a region's fund to its providers for a named project."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    grant_id: GrantId = Field(description="Chosen by the proposer; the idempotency key")
    region_code: RegionCode
    title: ShortText
    aim: LongText
    measure: GrantMeasure
    start_date: date = Field(description="When the improvement work starts: the measure's 'after' period begins here")
    end_date: date
    amount_pence: int = Field(gt=0, le=MAX_GRANT_PENCE, strict=True)
    milestones: tuple[MilestoneProposal, ...] = Field(min_length=1, max_length=MAX_GRANT_MILESTONES)


def fingerprint(p: GrantProposal) -> str:
    """The proposal's identity for idempotency: same content, same fingerprint."""
    return hashlib.sha256(json.dumps(p.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Limits:
    """The terms a deployment allows (``FundsSettings``)."""

    grace_days: int = 30
    max_span_days: int = 300
    backdate_max_days: int = 90
    min_points_baseline: int = 12


# ---------------------------------------------------------------------------------------------
# Grants as the core sees them
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """The ledger's answer to one of the grant's transfer requests."""

    status: str  # posted | pending | voided | rejected
    reason: str | None = None
    entry_seq: int | None = None


@dataclass(frozen=True)
class Milestone:
    n: int
    title: str
    provider_code: str
    amount_pence: int
    due_date: date
    reserve_requested: bool = False
    timeout_s: int | None = None
    reserve: Answer | None = None
    expired: bool = False  # the ledger voided the reservation at its timeout
    met_by: str | None = None
    met_at: datetime | None = None
    met_note: str | None = None
    pay: Answer | None = None
    release_why: Literal["cancelled", "refused"] | None = None
    release_requested_at: datetime | None = None
    release: Answer | None = None

    @property
    def status(self) -> MilestoneStatus:
        return milestone_status(self)


@dataclass(frozen=True)
class Grant:
    grant_id: str
    region_code: str
    title: str
    aim: str
    measure: GrantMeasure
    start_date: date
    end_date: date
    amount_pence: int
    milestones: tuple[Milestone, ...]
    proposed_by: str
    proposed_at: datetime
    fingerprint: str
    decision: Outcome | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_reason: str | None = None
    cancelled_by: str | None = None
    cancelled_at: datetime | None = None
    cancel_reason: str | None = None

    @property
    def status(self) -> GrantStatus:
        return grant_status(self)

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(sorted({m.provider_code for m in self.milestones}))

    def milestone(self, n: int) -> Milestone:
        for m in self.milestones:
            if m.n == n:
                return m
        raise NotFound(f"grant {self.grant_id} has no milestone {n}", "n")


def _expiry_refusal(a: Answer | None) -> bool:
    return a is not None and a.status == "rejected" and "pending expired" in (a.reason or "")


def milestone_status(m: Milestone) -> MilestoneStatus:
    """A milestone's status from the ledger's answers, whatever order they came in."""
    if not m.reserve_requested:
        return "planned"
    r = m.reserve
    if r is not None and r.status == "rejected":
        return "refused"  # never held: nothing to pay or release
    if m.pay is not None and m.pay.status == "posted":
        return "paid"
    if m.release is not None and m.release.status == "voided":
        return "released"
    if m.expired or _expiry_refusal(m.pay) or _expiry_refusal(m.release):
        return "lapsed"  # the ledger voided the hold at its timeout: back in the fund
    if m.pay is not None:
        return "discrepancy"  # a payment refused for another reason: an operator looks
    if m.release is not None:
        # a void refused before the reservation's own answer came: wait for it (refused, or odd)
        return "releasing" if r is None else "discrepancy"
    if r is None:
        return "releasing" if m.release_why else "reserving"
    if r.status != "pending":
        return "discrepancy"
    if m.met_by is not None:
        return "paying"
    if m.release_why is not None:
        return "releasing"
    return "reserved"


def grant_status(g: Grant) -> GrantStatus:
    if g.decision is None:
        return "withdrawn" if g.cancelled_by else "proposed"
    if g.decision == "refused":
        return "refused"
    if g.cancelled_by:
        return "cancelled"
    statuses = [milestone_status(m) for m in g.milestones]
    if "refused" in statuses:
        return "refused"  # insufficient funds: the ledger's floor said no to a milestone
    if "reserving" in statuses:
        return "reserving"
    if all(s in ("paid", "lapsed") for s in statuses):
        return "completed"
    return "reserved"


@dataclass(frozen=True)
class Money:
    """Where a grant's amount is, in pence, as far as this service knows; the parts add up to
    ``amount_pence``.

    ``committed_pence`` counts only reservations the ledger has confirmed and that nothing is
    releasing: a void asked for, or a hold past its lapse time, is ``releasing`` at once (the
    ledger's own hold ends no earlier). So, whatever the delay of the ledger's answers, what this
    service counts as committed or paid is always held or paid in the ledger too: committed + paid
    never exceeds what the fund received (property-tested), and the ledger may show more reserved
    only while answers are on their way (``in_flight`` in the fund's figures).
    """

    amount_pence: int
    unreserved_pence: int  # not (yet) asked of the ledger, or refused by it
    awaiting_ledger_pence: int  # asked, not yet answered
    committed_pence: int  # reserved in the fund, to be paid when met
    releasing_pence: int  # reserved, on its way back to the fund (voided, or past its lapse time)
    paid_pence: int  # fund -> provider
    released_pence: int  # back in the fund (cancelled, refused, lapsed)
    discrepancy_pence: int  # an answer nobody expected: an operator looks

    @property
    def unpaid_pence(self) -> int:
        return self.amount_pence - self.paid_pence


Bucket = Literal["unreserved", "awaiting", "committed", "releasing", "paid", "released", "discrepancy"]


def bucket(status: MilestoneStatus, reserve_answered: bool, lapse_passed: bool = False) -> Bucket:
    """Where a milestone's amount is, from its status; while releasing, whether the ledger has
    answered its reservation yet (until then the money may never have been held); for a reserved
    milestone, whether its lapse time has passed (nobody can record it met now: it goes back)."""
    if status in ("planned", "refused"):
        return "unreserved"
    if status == "reserving" or (status == "releasing" and not reserve_answered):
        return "awaiting"
    if status == "releasing" or (status == "reserved" and lapse_passed):
        return "releasing"
    if status in ("reserved", "paying"):
        return "committed"
    if status == "paid":
        return "paid"
    if status in ("released", "lapsed"):
        return "released"
    return "discrepancy"


def money_of(amount_pence: int, parts: dict[str, int]) -> Money:
    out = Money(amount_pence, parts.get("unreserved", 0), parts.get("awaiting", 0), parts.get("committed", 0),
                parts.get("releasing", 0), parts.get("paid", 0), parts.get("released", 0), parts.get("discrepancy", 0))
    check(sum(parts.values()) == amount_pence, "money by where it is must add up to the amount")
    return out


def money(g: Grant, now: datetime | None = None) -> Money:
    """The grant's money; with ``now``, reservations past their lapse time count as releasing."""
    parts: dict[str, int] = {}
    for m in g.milestones:
        lapse = lapses_at(g, m)
        b = bucket(milestone_status(m), m.reserve is not None, now is not None and lapse is not None and now >= lapse)
        parts[b] = parts.get(b, 0) + m.amount_pence
    return money_of(g.amount_pence, parts)


# ---------------------------------------------------------------------------------------------
# Milestone amounts and the proposal's rules
# ---------------------------------------------------------------------------------------------
def milestone_amounts(total_pence: int, shares_bps: Sequence[int]) -> list[int]:
    """Split a grant's amount by the milestones' shares (largest remainder): the parts add up to
    the whole exactly and each is within a penny of its exact share."""
    check(sum(shares_bps) == BPS_WHOLE, "milestone shares must add up to 10000 bps")
    parts = split_largest_remainder(total_pence, list(shares_bps))
    check(sum(parts) == total_pence, "milestone amounts must add up to the grant's amount")
    return parts


def _amounts(p: GrantProposal, errors: list[tuple[str, str]]) -> list[int]:
    by_amount = [m.amount_pence for m in p.milestones]
    by_share = [m.share_bps for m in p.milestones]
    if all(a is not None for a in by_amount):
        amounts = [int(a) for a in by_amount]  # type: ignore[arg-type]
        if sum(amounts) != p.amount_pence:
            errors.append(("milestones", f"the milestones' amounts add up to {sum(amounts)} pence, not amount_pence"
                                         f" {p.amount_pence}"))
        return amounts
    if all(s is not None for s in by_share):
        shares = [int(s) for s in by_share]  # type: ignore[arg-type]
        if sum(shares) != BPS_WHOLE:
            errors.append(("milestones", f"the milestones' shares add up to {sum(shares)} bps, not 10000"))
            return [0] * len(shares)
        amounts = milestone_amounts(p.amount_pence, shares)
        for i, a in enumerate(amounts):
            if a <= 0:
                errors.append((f"milestones.{i}.share_bps", "this share of amount_pence is less than a penny"))
        return amounts
    errors.append(("milestones", "give every milestone amount_pence, or every milestone share_bps"))
    return [0] * len(p.milestones)


def proposal_errors(p: GrantProposal, *, ref: ReferenceData, today: date, limits: Limits) -> list[tuple[str, str]]:
    """Every rule the proposal breaks, as (field, message); empty when it may be recorded."""
    errors: list[tuple[str, str]] = []
    if p.region_code not in ref.regions:
        errors.append(("region_code", f"{p.region_code} is not a known NHS England region"))
    for i, m in enumerate(p.milestones):
        field_name = f"milestones.{i}.provider_code"
        org = ref.providers.get(m.provider_code)
        if org is None:
            errors.append((field_name, f"{m.provider_code} is not a trust the reference data knows"))
        elif org.region_code != p.region_code:
            errors.append((field_name, f"{m.provider_code} is in region {org.region_code}, not {p.region_code}: a grant pays"
                                       " providers of its own region"))
        if m.due_date < today:
            errors.append((f"milestones.{i}.due_date", "must not be in the past"))
        if m.due_date > p.end_date:
            errors.append((f"milestones.{i}.due_date", "must not be after end_date"))
        if i and m.due_date < p.milestones[i - 1].due_date:
            errors.append((f"milestones.{i}.due_date", "milestones are listed in the order they fall due"))
    if len({m.provider_code for m in p.milestones}) > MAX_PROVIDERS_PER_GRANT:
        errors.append(("milestones", f"at most {MAX_PROVIDERS_PER_GRANT} providers per grant"))
    _amounts(p, errors)
    if p.end_date < p.start_date:
        errors.append(("end_date", "must not be before start_date"))
    if p.end_date > today + timedelta(days=limits.max_span_days):
        errors.append(("end_date", f"a grant runs at most {limits.max_span_days} days from its proposal (every milestone's"
                                   " reservation must fit the ledger's longest hold); propose a longer project as"
                                   " successive grants"))
    if p.start_date < today - timedelta(days=limits.backdate_max_days):
        errors.append(("start_date", f"at most {limits.backdate_max_days} days before the proposal"))
    ms = p.measure
    if ms.baseline_to >= p.start_date:
        errors.append(("measure.baseline_to", "the baseline must end before start_date"))
    if ms.baseline_from < today - timedelta(days=FEEDBACK_MAX_AGE_DAYS):
        errors.append(("measure.baseline_from", f"at most {FEEDBACK_MAX_AGE_DAYS} days back: feedback keeps no older answers"))
    else:
        periods = len(measures.whole_periods(ms.interval, ms.baseline_from, ms.baseline_to))
        if periods < limits.min_points_baseline:
            errors.append(("measure.baseline_from", f"the baseline holds {periods} whole {ms.interval}s; at least"
                                                    f" {limits.min_points_baseline} are needed for control limits"))
        if periods > MAX_BASELINE_PERIODS[ms.interval]:
            errors.append(("measure.baseline_from", f"at most {MAX_BASELINE_PERIODS[ms.interval]} {ms.interval}s of baseline"))
    return errors


def new_grant(p: GrantProposal, *, actor: str, now: datetime, ref: ReferenceData, limits: Limits) -> Grant:
    """A proposed grant (nothing reserved yet), or ``InputError`` naming every broken rule."""
    errors = proposal_errors(p, ref=ref, today=now.date(), limits=limits)
    amounts = _amounts(p, [])
    if errors:
        raise InputError(errors)
    milestones = tuple(Milestone(i + 1, m.title, m.provider_code, a, m.due_date)
                       for i, (m, a) in enumerate(zip(p.milestones, amounts)))
    return Grant(p.grant_id, p.region_code, p.title, p.aim, p.measure, p.start_date, p.end_date, p.amount_pence, milestones,
                 actor, now, fingerprint(p))


# ---------------------------------------------------------------------------------------------
# Ledger transfers
# ---------------------------------------------------------------------------------------------
_TRANSFER_ID = re.compile(r"^grant:(?P<gid>[A-Za-z0-9][A-Za-z0-9._\-]{0,59}):m(?P<n>[1-9][0-9]?)(?::(?P<step>pay|void))?$")


def reserve_id(grant_id: str, n: int) -> str:
    return f"grant:{grant_id}:m{n}"


def pay_id(grant_id: str, n: int) -> str:
    return f"{reserve_id(grant_id, n)}:pay"


def release_id(grant_id: str, n: int) -> str:
    return f"{reserve_id(grant_id, n)}:void"


def parse_transfer_id(transfer_id: str) -> tuple[str, int, TransferStep] | None:
    """(grant id, milestone, step) of one of the funds service's transfers, else None."""
    found = _TRANSFER_ID.fullmatch(transfer_id)
    if found is None:
        return None
    step: TransferStep = {"pay": "pay", "void": "release", None: "reserve"}[found["step"]]  # type: ignore[assignment]
    return found["gid"], int(found["n"]), step


def hold_timeout_s(due_date: date, grace_days: int, now: datetime) -> int:
    """Seconds from ``now`` to the end of the milestone's grace (its due date plus ``grace_days``,
    to the end of that day, UTC): the ledger voids the reservation then if nobody met it."""
    lapses_at = datetime.combine(due_date + timedelta(days=grace_days + 1), time(0), tzinfo=timezone.utc)
    return math.ceil((lapses_at - now).total_seconds())


def lapses_at(g: Grant, m: Milestone) -> datetime | None:
    if g.decided_at is None or m.timeout_s is None:
        return None
    return g.decided_at + timedelta(seconds=m.timeout_s)


def _cause(kind: str, g: Grant, m: Milestone) -> TransferCause:
    # Only ids and codes: the cause is hashed into the append-only journal and kept for ever.
    return TransferCause(kind=kind, grant_id=g.grant_id, provider_code=m.provider_code,  # type: ignore[arg-type]
                         note=f"milestone {m.n} of {len(g.milestones)}")


def reserve_transfer(g: Grant, m: Milestone) -> TransferRequested:
    check(m.timeout_s is not None and 1 <= m.timeout_s <= LEDGER_HOLD_MAX_S, "a grant's hold carries a timeout")
    return TransferRequested(
        transfer_id=reserve_id(g.grant_id, m.n), kind="pending",
        legs=(Leg(account_id=f"fund:{g.region_code}", amount_pence=-m.amount_pence),
              Leg(account_id=f"provider:{m.provider_code}", amount_pence=m.amount_pence)),
        timeout_s=m.timeout_s, ordering_key=g.grant_id, cause=_cause("grant_reserve", g, m))


def pay_transfer(g: Grant, m: Milestone) -> TransferRequested:
    return TransferRequested(transfer_id=pay_id(g.grant_id, m.n), kind="post_pending", pending_id=reserve_id(g.grant_id, m.n),
                             ordering_key=g.grant_id, cause=_cause("grant_payment", g, m))


def release_transfer(g: Grant, m: Milestone) -> TransferRequested:
    return TransferRequested(transfer_id=release_id(g.grant_id, m.n), kind="void_pending",
                             pending_id=reserve_id(g.grant_id, m.n), ordering_key=g.grant_id, cause=_cause("grant_release", g, m))


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One line of a grant's history: who did what, when, and why."""

    step: str
    actor: str
    at: datetime
    milestone: int | None = None
    reason: str | None = None


@dataclass
class Change:
    """What a command decided: the grant after it and what to write (nothing when not changed)."""

    grant: Grant
    changed: bool
    transfers: list[TransferRequested] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    events: list[tuple[str, Contract]] = field(default_factory=list)
    discrepancies: list[tuple[str, str]] = field(default_factory=list)  # (transfer id, what was unexpected)


def proposed_event(g: Grant) -> tuple[str, Contract]:
    return "funds.grant-proposed.v1", GrantProposed(
        grant_id=g.grant_id, region_code=g.region_code, amount_pence=g.amount_pence, start_date=g.start_date,
        end_date=g.end_date, measure=g.measure, proposed_by=g.proposed_by, proposed_at=g.proposed_at,
        milestones=tuple(GrantMilestoneTerms(n=m.n, provider_code=m.provider_code, amount_pence=m.amount_pence,
                                             due_date=m.due_date) for m in g.milestones))


def propose(g: Grant) -> Change:
    return Change(g, True, steps=[Step("proposed", g.proposed_by, g.proposed_at)], events=[proposed_event(g)])


def same_proposal(existing: Grant, new: Grant) -> None:
    """A proposal again: the same one by the same person is a duplicate; anything else a conflict."""
    if existing.fingerprint != new.fingerprint or existing.proposed_by != new.proposed_by:
        raise Conflict(f"grant_id {existing.grant_id} is already used by another proposal", "grant_id")


def decide(g: Grant, *, actor: str, outcome: Outcome, reason: str, now: datetime, grace_days: int) -> Change:
    """The checker's decision. Never by the proposer; the same decision again changes nothing;
    the other one is refused. Approval asks the ledger to reserve every milestone."""
    if actor == g.proposed_by:
        raise SameActor(f"{actor} proposed grant {g.grant_id} and cannot decide it: a second authorised person must",
                        "(token)")
    if g.decision is not None:
        if g.decision == outcome:
            return Change(g, False)
        raise Refused(f"grant {g.grant_id} was already {g.decision}", "outcome")
    if g.cancelled_by:
        raise Refused(f"grant {g.grant_id} was withdrawn", "outcome")
    if outcome == "refused":
        new = replace(g, decision="refused", decided_by=actor, decided_at=now, decision_reason=reason)
        return Change(new, True, steps=[Step("refused", actor, now, reason=reason)], events=[_decided(new)])
    milestones = []
    for m in g.milestones:
        if m.due_date < now.date():
            raise Refused(f"milestone {m.n} was due on {m.due_date}, before this approval: propose the grant again with"
                          " new dates", "outcome")
        timeout = hold_timeout_s(m.due_date, grace_days, now)
        if not 1 <= timeout <= LEDGER_HOLD_MAX_S:
            raise Refused(f"milestone {m.n} falls due too late for a ledger hold (at most 366 days with its grace)", "outcome")
        milestones.append(replace(m, reserve_requested=True, timeout_s=timeout))
    new = replace(g, milestones=tuple(milestones), decision="approved", decided_by=actor, decided_at=now, decision_reason=reason)
    return Change(new, True, transfers=[reserve_transfer(new, m) for m in new.milestones],
                  steps=[Step("approved", actor, now, reason=reason)], events=[_decided(new)])


def _decided(g: Grant) -> tuple[str, Contract]:
    check(g.decision is not None and g.decided_by is not None and g.decided_at is not None, "a decided grant has a decider")
    return "funds.grant-decided.v1", GrantDecided(grant_id=g.grant_id, region_code=g.region_code, outcome=g.decision,  # type: ignore[arg-type]
                                                  decided_by=g.decided_by, decided_at=g.decided_at, grant_status=g.status)  # type: ignore[arg-type]


def mark_met(g: Grant, n: int, *, actor: str, note: str, now: datetime) -> Change:
    """A milestone met: its reservation is posted in full to the provider. Never recorded by the
    proposer (who would otherwise pay their own grant out alone); again changes nothing."""
    if actor == g.proposed_by:
        raise SameActor(f"{actor} proposed grant {g.grant_id} and cannot record its milestones met", "(token)")
    m = g.milestone(n)
    if m.met_by is not None:
        return Change(g, False)
    if g.status != "reserved":
        raise Refused(f"grant {g.grant_id} is {g.status}: milestones are paid only from a reserved grant", "n")
    if m.status != "reserved":
        raise Refused(f"milestone {n} is {m.status}", "n")
    lapse = lapses_at(g, m)
    if lapse is not None and now >= lapse:
        raise Refused(f"milestone {n}'s reservation lapsed at {lapse.isoformat()}: the money is back in the fund", "n")
    met = replace(m, met_by=actor, met_at=now, met_note=note)
    new = _with(g, met)
    return Change(new, True, transfers=[pay_transfer(new, met)], steps=[Step("milestone_met", actor, now, n, note)])


def cancel(g: Grant, *, actor: str, reason: str, now: datetime) -> Change:
    """Withdraw a proposal, or cancel an approved grant: every reservation not yet paid (or being
    paid) is voided, so exactly the unpaid rest goes back to the fund. Again changes nothing."""
    status = g.status
    if status in ("withdrawn", "cancelled"):
        return Change(g, False)
    if status in ("refused", "completed"):
        raise Refused(f"grant {g.grant_id} is {status}: there is nothing to cancel", "(request)")
    if status == "proposed":
        new = replace(g, cancelled_by=actor, cancelled_at=now, cancel_reason=reason)
        return Change(new, True, steps=[Step("withdrawn", actor, now, reason=reason)],
                      events=[_cancelled(new, 0)])
    releasing = [replace(m, release_why="cancelled", release_requested_at=now) for m in g.milestones
                 if m.status in ("reserving", "reserved")]
    new = g
    for m in releasing:
        new = _with(new, m)
    new = replace(new, cancelled_by=actor, cancelled_at=now, cancel_reason=reason)
    return Change(new, True, transfers=[release_transfer(new, m) for m in releasing],
                  steps=[Step("cancelled", actor, now, reason=reason)],
                  events=[_cancelled(new, sum(m.amount_pence for m in releasing))])


def _cancelled(g: Grant, releasing_pence: int) -> tuple[str, Contract]:
    return "funds.grant-cancelled.v1", GrantCancelled(grant_id=g.grant_id, region_code=g.region_code,
                                                      cancelled_by=g.cancelled_by, cancelled_at=g.cancelled_at,  # type: ignore[arg-type]
                                                      releasing_pence=releasing_pence, grant_status=g.status)


def _with(g: Grant, m: Milestone) -> Grant:
    return replace(g, milestones=tuple(m if x.n == m.n else x for x in g.milestones))


@dataclass(frozen=True)
class LedgerAnswer:
    """One ``ledger.posted.v1`` answer about one of this grant's transfers."""

    n: int
    step: TransferStep
    answer: Answer
    transfer_id: str


def _record(m: Milestone, a: LedgerAnswer) -> tuple[Milestone, str | None]:
    """The milestone with the answer recorded, and what was unexpected about it (None: nothing)."""
    new = a.answer
    if a.step == "reserve":
        if not m.reserve_requested:
            return m, "an answer to a reservation never requested"
        if m.reserve is None:
            if new.status == "voided":  # only a hold that was made can lapse: its own answer is on the way
                return replace(m, reserve=Answer("pending", None, None), expired=True), None
            return replace(m, reserve=new), None
        if m.reserve.status == new.status:
            return m, None  # the ledger answering a duplicate again
        if m.reserve.status == "pending" and new.status == "voided":
            return replace(m, expired=True), None  # the hold's timeout passed: the ledger released it
        return m, f"reservation answered {new.status} after {m.reserve.status}"
    slot = "pay" if a.step == "pay" else "release"
    requested = m.met_by is not None if a.step == "pay" else m.release_why is not None
    if not requested:
        return m, f"an answer to a {slot} never requested"
    old: Answer | None = getattr(m, slot)
    if old is None:
        return replace(m, **{slot: new}), None
    if old.status == new.status:
        return m, None
    return m, f"{slot} answered {new.status} after {old.status}"


def apply_answers(g: Grant, answers: Sequence[LedgerAnswer], *, now: datetime) -> Change:
    """Record the ledger's answers (any order, repeats welcome) and what follows: when a
    milestone's reservation is refused (the fund cannot cover it) the grant is refused and every
    other reservation is released; the events and steps of every transition."""
    before = g
    discrepancies: list[tuple[str, str]] = []
    for a in answers:
        m, odd = _record(g.milestone(a.n), a)
        if odd:
            discrepancies.append((a.transfer_id, odd))
        g = _with(g, m)
    transfers: list[TransferRequested] = []
    if g.status == "refused" and g.decision == "approved" and not g.cancelled_by:
        for m in g.milestones:
            if m.release_why is None and m.met_by is None and m.status in ("reserving", "reserved"):
                released = replace(m, release_why="refused", release_requested_at=now)
                g = _with(g, released)
                transfers.append(release_transfer(g, released))
    change = Change(g, g != before, transfers=transfers, discrepancies=discrepancies)
    _transitions(before, g, change, now)
    return change


def _transitions(before: Grant, after: Grant, change: Change, now: datetime) -> None:
    status = after.status
    for old, new in zip(before.milestones, after.milestones):
        was, became = old.status, new.status
        if was == became:
            continue
        if became == "paid":
            change.steps.append(Step("milestone_paid", LEDGER, now, new.n))
            change.events.append(("funds.milestone-paid.v1", MilestonePaid(
                grant_id=after.grant_id, region_code=after.region_code, n=new.n, provider_code=new.provider_code,
                amount_pence=new.amount_pence, transfer_id=pay_id(after.grant_id, new.n), met_by=new.met_by,  # type: ignore[arg-type]
                entry_seq=new.pay.entry_seq if new.pay else None, grant_status=status)))
        elif became in ("released", "lapsed") and was != "planned":
            why = "lapsed" if became == "lapsed" else (new.release_why or "cancelled")
            change.steps.append(Step(f"milestone_{became}", LEDGER, now, new.n,
                                     (new.release or new.pay or new.reserve or Answer("voided")).reason))
            change.events.append(("funds.milestone-released.v1", MilestoneReleased(
                grant_id=after.grant_id, region_code=after.region_code, n=new.n, provider_code=new.provider_code,
                amount_pence=new.amount_pence, why=why, grant_status=status,  # type: ignore[arg-type]
                transfer_id=release_id(after.grant_id, new.n) if became == "released" else reserve_id(after.grant_id, new.n))))
        elif became == "refused":
            change.steps.append(Step("milestone_refused", LEDGER, now, new.n, new.reserve.reason if new.reserve else None))
        elif became == "discrepancy":
            change.steps.append(Step("discrepancy", LEDGER, now, new.n, "an answer from the ledger nobody expected"))
    was, became = before.status, status
    if was == "reserving" and became == "reserved":
        change.steps.append(Step("reserved", LEDGER, now))
        change.events.append(("funds.grant-reserved.v1", GrantReserved(
            grant_id=after.grant_id, region_code=after.region_code, outcome="reserved", reserved_pence=after.amount_pence,
            grant_status=became)))
    elif was == "reserving" and became == "refused":
        reason = next((m.reserve.reason for m in after.milestones if m.reserve and m.reserve.status == "rejected"), None)
        change.steps.append(Step("refused_by_ledger", LEDGER, now, reason=f"insufficient funds: {reason}" if reason else None))
        change.events.append(("funds.grant-reserved.v1", GrantReserved(
            grant_id=after.grant_id, region_code=after.region_code, outcome="refused", reserved_pence=0,
            reason=(reason or "")[:2000] or None, grant_status=became)))
    elif was != became and became == "completed":
        change.steps.append(Step("completed", LEDGER, now))
