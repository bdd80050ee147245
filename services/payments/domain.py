"""The payments service's pure core: holds, decisions and settlement with safeguards.

No I/O. Every function takes plain values and returns plain values, so the rules can be
unit-tested and property-tested, replayed offline (what-if) and explained step by step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from fractions import Fraction
from typing import Literal, NamedTuple

from services.payments import judgement
from services.payments.schemes import CHOICE_RELEASE_BPS, Scheme, SchemeBook
from shared.contracts import (
    FftAnswer, Leg, PatientChoice, PaymentRequested, TransferCause, TransferKind, TransferRequested,
)
from shared.money import BPS_WHOLE, bps_of, check, split_largest_remainder
from shared.periods import last_day_of, period_of
from shared.reference import ReferenceData


def commissioner_account(code: str) -> str:
    return f"commissioner:{code}"


def provider_account(code: str) -> str:
    return f"provider:{code}"


def held_account(code: str) -> str:
    return f"held:{code}"


def fund_account(region_code: str) -> str:
    return f"fund:{region_code}"


# Transfer ids are derived from the payment id, so a retry or a full replay asks the ledger for
# the same transfers and the ledger's idempotency makes them no-ops. A transfer id (TransferId,
# up to 128 characters) always has room for the longest prefix plus any payment id (ExternalId,
# up to 100), so the whole payment id is always readable in it.
MAX_TRANSFER_ID = 128


def derived_transfer_id(prefix: str, payment_id: str) -> str:
    transfer_id = f"{prefix}:{payment_id}"
    check(len(transfer_id) <= MAX_TRANSFER_ID, f"derived transfer id too long: {transfer_id!r}")
    return transfer_id


def hold_transfer_id(payment_id: str) -> str:
    return derived_transfer_id("hold", payment_id)


def pay_transfer_id(payment_id: str) -> str:
    return derived_transfer_id("pay", payment_id)


def settle_transfer_id(payment_id: str) -> str:
    return derived_transfer_id("settle", payment_id)


def release_transfer_id(payment_id: str) -> str:
    return derived_transfer_id("release", payment_id)


def divert_transfer_id(payment_id: str) -> str:
    return derived_transfer_id("divert", payment_id)


def appeal_transfer_id(payment_id: str) -> str:
    return derived_transfer_id("appeal", payment_id)


# How the at-risk part is held in the ledger, recorded per episode so a deployment can switch
# without stranding money held the other way:
# - "held_account": hold:<pid> posts commissioner -> provider (not at risk) + held:<provider>
#   (at risk); settle:<pid> posts held -> provider (released) + fund (diverted).
# - "two_phase": pay:<pid> posts commissioner -> provider (not at risk); hold:<pid> is a
#   PENDING commissioner -> provider transfer (at risk); at settlement release:<pid> posts it
#   in part (the released amount) or voids it, and divert:<pid> posts commissioner -> fund.
# Every transfer a payment causes carries ordering_key=<payment_id> (the Kafka key), so they
# reach the ledger on one partition, in order.
HoldModel = Literal["held_account", "two_phase"]
HOLD_MODELS: tuple[HoldModel, ...] = ("held_account", "two_phase")
# The one default: settings (PAYMENTS_LEDGER_HOLD_MODEL) and the what-if replay take it from here;
# everything else is told the model explicitly.
DEFAULT_HOLD_MODEL: HoldModel = "two_phase"


# ---------------------------------------------------------------------------------------------
# Holding
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Episode:
    payment_id: str
    episode_id: str
    commissioner_code: str
    provider_code: str
    region_code: str
    service_type: str
    activity_date: date
    amount_pence: int
    at_risk_pence: int
    scheme_id: str | None
    scheme_version: int | None
    hold_model: HoldModel
    # Optional case-mix fields of the payment request (never identifying); None: not sent.
    age_band: str | None = None
    imd_decile: int | None = None

    @property
    def period(self) -> str:
        return period_of(self.activity_date)


def new_episode(
    *,
    payment_id: str,
    episode_id: str,
    commissioner_code: str,
    provider_code: str,
    region_code: str,
    service_type: str,
    activity_date: date,
    amount_pence: int,
    scheme: Scheme | None,
    hold_model: HoldModel,
    age_band: str | None = None,
    imd_decile: int | None = None,
) -> Episode:
    """Out of trial (no scheme) means nothing is at risk: the whole amount is paid."""
    check(hold_model in HOLD_MODELS, f"unknown hold model {hold_model!r}")
    at_risk = bps_of(amount_pence, scheme.at_risk_bps) if scheme else 0
    return Episode(
        payment_id, episode_id, commissioner_code, provider_code, region_code, service_type, activity_date,
        amount_pence, at_risk, scheme.scheme_id if scheme else None, scheme.version if scheme else None, hold_model,
        age_band, imd_decile,
    )


def _cause(e: Episode, kind: str, **extra: object) -> TransferCause:
    return TransferCause(
        kind=kind, payment_id=e.payment_id, episode_id=e.episode_id, provider_code=e.provider_code,  # type: ignore[arg-type]
        period=e.period, scheme_id=e.scheme_id, scheme_version=e.scheme_version, **extra,  # type: ignore[arg-type]
    )


PlannedCause = Literal["payment", "payment_hold", "settlement", "release", "diversion"]


class PlannedTransfer(NamedTuple):
    """A ledger transfer that accepting or settling a payment asks for, in plain values.

    Accepting and settling plan every payment's transfers this way and encode them straight from
    these values (``services/payments/events.py``): building the ``TransferRequested`` models
    (legs, cause, the model validator) cost about as much as the rest of accepting a payment, and
    most of settling one. ``request()`` gives the validated contract model (the what-if replay
    applies those); tests check both encode to the contract's bytes.
    """

    transfer_id: str
    kind: TransferKind
    legs: tuple[tuple[str, int], ...]  # (account id, amount in pence: + credit, - debit)
    cause_kind: PlannedCause
    episode: Episode
    pending_id: str | None = None  # the pending hold a post_pending / void_pending names

    def request(self) -> TransferRequested:
        """The same transfer as a validated contract model (what the ledger will parse)."""
        return TransferRequested(
            transfer_id=self.transfer_id, kind=self.kind, ordering_key=self.episode.payment_id,
            legs=tuple(Leg(account_id=account, amount_pence=pence) for account, pence in self.legs),
            pending_id=self.pending_id, cause=_cause(self.episode, self.cause_kind),
        )


def _planned(transfer_id: str, kind: TransferKind, legs: tuple[tuple[str, int], ...], cause_kind: PlannedCause,
             e: Episode, pending_id: str | None = None) -> PlannedTransfer:
    # The checks the contract's validator would make on these legs, kept cheap: the pure core
    # never plans an unbalanced entry, a zero leg or a malformed two-phase step, even though no
    # model validates it here. The messages are only formatted when a check fails (settlement
    # plans a million of these a month).
    amounts = [pence for _, pence in legs]
    if kind in ("posted", "pending"):
        shape_ok = len(legs) >= 2 and pending_id is None
    else:
        shape_ok = pending_id is not None and (kind == "post_pending" or not legs)
    if not shape_ok or sum(amounts) or not all(amounts):
        _refuse_plan(transfer_id, kind, amounts, pending_id)
    return PlannedTransfer(transfer_id, kind, legs, cause_kind, e, pending_id)


def _refuse_plan(transfer_id: str, kind: TransferKind, amounts: list[int], pending_id: str | None) -> None:
    """Raise the InvariantError naming what is wrong with a planned transfer."""
    if kind in ("posted", "pending"):
        check(len(amounts) >= 2 and pending_id is None, f"{transfer_id}: a {kind} transfer needs two legs, no pending id")
    else:
        check(pending_id is not None, f"{transfer_id}: a {kind} transfer names its pending transfer")
        check(kind == "post_pending" or not amounts, f"{transfer_id}: void_pending takes no legs")
    check(sum(amounts) == 0, f"{transfer_id}: legs must sum to zero")
    check(all(amounts), f"{transfer_id}: a leg must move a non-zero amount")


def payment_plan(e: Episode) -> tuple[PlannedTransfer, ...]:
    """The ledger transfers that accept a payment, as plain values: pay the part not at risk at
    once, hold the rest. Every id and code in them was validated on the way in (the request's
    contract and the reference data), so no model re-validates them here."""
    check(0 <= e.at_risk_pence <= e.amount_pence, "at risk within the amount")
    paid_now_pence = e.amount_pence - e.at_risk_pence
    commissioner, provider = commissioner_account(e.commissioner_code), provider_account(e.provider_code)
    if e.hold_model == "held_account":
        legs = [(commissioner, -e.amount_pence)]
        if paid_now_pence:
            legs.append((provider, paid_now_pence))
        if e.at_risk_pence:
            legs.append((held_account(e.provider_code), e.at_risk_pence))
        return (_planned(hold_transfer_id(e.payment_id), "posted", tuple(legs), "payment_hold", e),)
    out = []
    if paid_now_pence:
        out.append(_planned(pay_transfer_id(e.payment_id), "posted",
                            ((commissioner, -paid_now_pence), (provider, paid_now_pence)), "payment", e))
    if e.at_risk_pence:
        out.append(_planned(hold_transfer_id(e.payment_id), "pending",
                            ((commissioner, -e.at_risk_pence), (provider, e.at_risk_pence)), "payment_hold", e))
    return tuple(out)


class InputError(ValueError):
    """A request that can never succeed (unknown code, ...). HTTP 422; on Kafka, dead-lettered."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def validate_codes(req: PaymentRequested, ref: ReferenceData) -> str:
    """Check codes against reference data; returns the provider's region.

    A payment names the trust (3 characters, the ledger's account), not one of its sites, and only
    a trust the commissioner holds a contract with."""
    if req.commissioner_code not in ref.commissioners:
        raise InputError("commissioner_code", f"{req.commissioner_code} is not a known integrated care board")
    if req.provider_code not in ref.providers:
        if ref.trust_of(req.provider_code) is not None:
            raise InputError("provider_code", f"{req.provider_code} is a site; payments name its trust"
                                              f" ({ref.trust_of(req.provider_code)})")
        raise InputError("provider_code", f"{req.provider_code} is not a known provider")
    if not ref.commissions(req.commissioner_code, req.provider_code):
        raise InputError("provider_code", f"{req.commissioner_code} holds no contract with {req.provider_code}")
    return ref.providers[req.provider_code].region_code


ActivityWindow = tuple[date, date]
"""The plausible activity dates (earliest, latest), both included: care cannot be dated in the
future, and a payment for care years ago is a typing error, not a claim (and would sit in a period
settled long ago)."""


def activity_window(today: date, max_age_days: int) -> ActivityWindow:
    # One day of slack: an English date runs an hour ahead of UTC in summer time.
    return today - timedelta(days=max_age_days), today + timedelta(days=1)


def check_activity_date(activity_date: date, window: ActivityWindow) -> None:
    earliest, latest = window
    if activity_date > latest:
        raise InputError("activity_date", f"{activity_date.isoformat()} is in the future (latest {latest.isoformat()})")
    if activity_date < earliest:
        raise InputError("activity_date", f"{activity_date.isoformat()} is earlier than {earliest.isoformat()}")


def episode_for_request(req: PaymentRequested, *, region: str, book: SchemeBook, hold_model: HoldModel) -> Episode:
    """The episode a payment request creates once its codes are known good (``validate_codes``
    gives the provider's region): the governing scheme chosen, the at-risk share computed.

    Shared by the service (``intake.decide_payments``, which also checks the plausible activity
    dates, for new episodes only) and the offline what-if replay, so both apply exactly the same
    acceptance rules.
    """
    scheme = book.select(activity_date=req.activity_date, region=region, commissioner=req.commissioner_code,
                         provider=req.provider_code, service_type=req.service_type)
    return new_episode(
        payment_id=req.payment_id, episode_id=req.episode_id, commissioner_code=req.commissioner_code,
        provider_code=req.provider_code, region_code=region, service_type=req.service_type,
        activity_date=req.activity_date, amount_pence=req.amount_pence, scheme=scheme, hold_model=hold_model,
        age_band=req.age_band, imd_decile=req.imd_decile,
    )


def settlement_plan(e: Episode, *, released_pence: int, diverted_pence: int) -> tuple[PlannedTransfer, ...]:
    """The ledger transfers that settle an episode's held amount, as plain values:
    released + diverted = at risk."""
    check(released_pence >= 0 and diverted_pence >= 0, "settled amounts are non-negative")
    check(released_pence + diverted_pence == e.at_risk_pence, "held = released + diverted")
    if not e.at_risk_pence:
        return ()
    provider, fund = provider_account(e.provider_code), fund_account(e.region_code)
    if e.hold_model == "held_account":
        legs = [(held_account(e.provider_code), -e.at_risk_pence)]
        if released_pence:
            legs.append((provider, released_pence))
        if diverted_pence:
            legs.append((fund, diverted_pence))
        return (_planned(settle_transfer_id(e.payment_id), "posted", tuple(legs), "settlement", e),)
    commissioner = commissioner_account(e.commissioner_code)
    hold_id, release_id = hold_transfer_id(e.payment_id), release_transfer_id(e.payment_id)
    if released_pence == e.at_risk_pence:  # posts the pending hold in full
        release = _planned(release_id, "post_pending", (), "release", e, hold_id)
    elif released_pence:  # posts part of it; the ledger releases the rest
        release = _planned(release_id, "post_pending", ((commissioner, -released_pence), (provider, released_pence)),
                           "release", e, hold_id)
    else:
        release = _planned(release_id, "void_pending", (), "release", e, hold_id)
    if not diverted_pence:
        return (release,)
    divert = _planned(divert_transfer_id(e.payment_id), "posted", ((commissioner, -diverted_pence), (fund, diverted_pence)),
                      "diversion", e)
    return (release, divert)


# ---------------------------------------------------------------------------------------------
# Deciding
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    submission_id: str
    episode_id: str
    instrument: Literal["fft", "patient_power"]
    authored_at: datetime
    fft_answer: FftAnswer | None = None
    patient_choice: PatientChoice | None = None


@dataclass(frozen=True)
class Decision:
    release_bps: int
    deciding_submission_id: str | None
    basis: str  # human-readable: why this release share
    valid_answers: int
    amendments: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()


def window_end(activity_date: date, scheme: Scheme) -> datetime:
    """Answers authored up to the end of this instant count."""
    end_day = activity_date + timedelta(days=scheme.decision_window_days + 1)
    return datetime(end_day.year, end_day.month, end_day.day, tzinfo=timezone.utc)


def _release_for(answer: Answer, scheme: Scheme) -> tuple[int, str]:
    if answer.instrument == "patient_power":
        check(answer.patient_choice is not None, "patient_power answer needs a choice")
        return CHOICE_RELEASE_BPS[answer.patient_choice], f"patient chose {answer.patient_choice}"  # type: ignore[index]
    check(answer.fft_answer is not None, "fft answer needs a code")
    name = FftAnswer(answer.fft_answer).name.lower()
    return scheme.fft_release_bps.for_answer(FftAnswer(answer.fft_answer)), f"FFT answer {name}"


def decide(episode: Episode, answers: Sequence[Answer], scheme: Scheme) -> Decision:
    """The one decision for an episode, from whatever answers exist, in any order.

    Valid answers are those authored from the activity date to the end of the decision window.
    The earliest valid answer decides (ties broken by submission id, so arrival order never
    matters); later ones are amendments and change the decision only if the scheme allows it.
    An explicit patient choice overrides an FFT rating when the scheme says so.
    No valid answer: released in full.
    """
    start = datetime(episode.activity_date.year, episode.activity_date.month, episode.activity_date.day, tzinfo=timezone.utc)
    end = window_end(episode.activity_date, scheme)
    mine = [a for a in answers if a.episode_id == episode.episode_id]
    valid = sorted((a for a in mine if start <= a.authored_at < end), key=lambda a: (a.authored_at, a.submission_id))
    ignored = tuple(sorted(a.submission_id for a in mine if not (start <= a.authored_at < end)))
    if not valid:
        return Decision(BPS_WHOLE, None, "no answer within the decision window: released in full", 0, (), ignored)
    pool = valid
    if scheme.patient_choice_overrides and any(a.instrument == "patient_power" for a in valid):
        pool = [a for a in valid if a.instrument == "patient_power"]
    chosen = pool[-1] if scheme.allow_amendments else pool[0]
    release_bps, why = _release_for(chosen, scheme)
    amendments = tuple(a.submission_id for a in valid if a.submission_id != chosen.submission_id)
    if chosen is not valid[0]:
        why += " (amended answer)" if scheme.allow_amendments else " (patient choice overrides rating)"
    return Decision(release_bps, chosen.submission_id, why, len(valid), amendments, ignored)


# ---------------------------------------------------------------------------------------------
# Settling
# ---------------------------------------------------------------------------------------------
def settlement_opens_on(period: str, decision_window_days: Sequence[int]) -> date:
    """The first day a period may be settled: every episode's decision window has closed, the last
    being that of care on the period's last day (``window_end``; the longest window among the
    schemes that govern the period's episodes)."""
    window = max(decision_window_days, default=0)
    return last_day_of(period) + timedelta(days=window + 1)


def latest_settleable_period(today: date, decision_window_days: int) -> str:
    """The most recent period whose decision windows have all closed by ``today``."""
    candidate = today.replace(day=1) - timedelta(days=1)  # last day of the previous month
    while settlement_opens_on(period_of(candidate), [decision_window_days]) > today:
        candidate = candidate.replace(day=1) - timedelta(days=1)
    return period_of(candidate)


class NotYet(ValueError):
    """A period whose decision windows have not all closed: nothing settles before ``opens_on``."""

    def __init__(self, period: str, opens_on: date) -> None:
        super().__init__(f"period {period} may be settled from {opens_on.isoformat()}, once every episode's decision window"
                         " has closed")
        self.period = period
        self.opens_on = opens_on


def require_settleable(period: str, decision_window_days: Sequence[int], today: date) -> None:
    """Refuse (NotYet) a period whose decision windows are still open on ``today``: an answer could
    still arrive and change money."""
    opens_on = settlement_opens_on(period, decision_window_days)
    if today < opens_on:
        raise NotYet(period, opens_on)


def unit_settlement(provider_code: str, period: str, scheme: Scheme, earlier_settlements: int) -> tuple[str, bool]:
    """(settlement id, whether it may divert) for a unit with ``earlier_settlements`` reports already.

    A period settles once. Episodes that arrive after it closed are released in full in a
    supplementary settlement, ``<provider>:<period>:<scheme>:late-N``: the cap and the minimum
    sample cannot be applied fairly twice."""
    check(earlier_settlements >= 0, "a count of settlements")
    base_id = f"{provider_code}:{period}:{scheme.key}"
    if earlier_settlements == 0:
        return base_id, True
    return f"{base_id}:late-{earlier_settlements}", False


@dataclass(frozen=True)
class EpisodeSettlement:
    episode: Episode
    decision: Decision
    uncapped_diverted_pence: int
    diverted_pence: int
    released_pence: int
    steps: tuple[str, ...]
    plan: tuple[PlannedTransfer, ...]  # plain values, encoded straight into outbox rows


@dataclass
class SettlementReport:
    provider_code: str
    region_code: str
    period: str
    scheme_key: str
    billed_pence: int = 0
    held_pence: int = 0
    released_pence: int = 0
    diverted_pence: int = 0
    responses: int = 0
    episodes: int = 0
    min_sample_applied: bool = False
    cap_applied: bool = False
    cap_pence: int = 0
    lines: list[EpisodeSettlement] = field(default_factory=list)
    # Judging fairly (judgement.py); the defaults are what a scheme without the new rules reports.
    exempted: bool = False  # the provider-period was exempted: nothing diverted
    exemption_reason: str | None = None
    gate_applied: bool = False  # the scheme's gate was evaluated (not when exempted, late or below the minimum sample)
    gate_opened: bool | None = None
    measured_responses: int | None = None  # the measure's denominator (e.g. FFT answers with an opinion)
    measured_events: int | None = None  # and its events (e.g. Poor + Very poor)
    benchmark_pct: float | None = None  # the benchmark's share, % (display only; decisions use counts and Fractions)
    adjusted_expected_pct: float | None = None  # the case-mix expected share for this provider's patients, %
    upper_limit_count: int | None = None  # the largest count within the gate's limit
    casemix_factor: float | None = None  # what the case mix scaled the diversions by (display)
    credit_pence: int = 0  # improvement credit: diversion earned back
    judgement_steps: tuple[str, ...] = ()


def _pct(x: Fraction | None) -> float | None:
    return None if x is None else round(float(x) * 100, 4)


def settle(
    episodes: Sequence[Episode],
    answers: Sequence[Answer],
    scheme: Scheme,
    *,
    provider_code: str,
    period: str,
    divert: bool = True,
    context: judgement.JudgementContext | None = None,
    exemption: judgement.Exemption | None = None,
    excluded: Mapping[str, str] | None = None,
) -> SettlementReport:
    """Settle one provider's episodes for one period under one scheme.

    1. Each episode's decision gives its uncapped diversion: at-risk × (1 − release share),
       rounded down (rounding favours the provider).
    2. Exemption: a provider-period exempted for extraordinary circumstances diverts nothing.
    3. Minimum sample: fewer valid responses than the scheme's minimum → nothing is diverted.
    4. Gate (scheme ``[gate]``): nothing is diverted unless the provider-period's measure is worse
       than the benchmark beyond the funnel limit (``judgement.judge``, from ``context``).
    5. Case mix (``[casemix]``): the total is scaled by min(1, benchmark / case-mix expected share);
       outcomes (``[signals]`` with a PROM weight and enough pairs) scale it by min(1, combined
       signal / FFT share) too.
    6. Cap: total diversion above cap_bps of the billed amount → the cap.
    7. Improvement credit (``[improvement]``): ``credit_bps`` of that total is earned back.
    8. The total is split over the episodes in proportion to their uncapped diversions, by largest
       remainder so the pennies add up exactly (unchanged when no rule reduced it); each episode's
       held amount goes to the provider (released) and the region's fund (diverted).

    ``excluded`` (episode id -> why, from a reviewer's correction of a provisional statement,
    ``review.py``): those episodes are not judged: released in full, not counted as responses,
    and their answers are taken out of the provider's counts the gate and case mix read.
    """
    mine = sorted(
        (e for e in episodes if e.provider_code == provider_code and e.period == period and e.scheme_id == scheme.scheme_id
         and e.scheme_version == scheme.version),
        key=lambda e: e.episode_id,
    )
    check(len({e.episode_id for e in mine}) == len(mine), "one settlement line per episode")
    check(exemption is None or (exemption.provider_code, exemption.period) == (provider_code, period),
          "an exemption of this provider-period")
    region = mine[0].region_code if mine else ""
    report = SettlementReport(provider_code, region, period, scheme.key)
    # decide() keeps an episode's own answers; handing it only those makes a unit linear in its
    # episodes instead of episodes x answers (a big trust has thousands of each a month).
    answers_of: dict[str, list[Answer]] = {}
    for a in answers:
        answers_of.setdefault(a.episode_id, []).append(a)
    excluded = excluded or {}
    decisions = [Decision(BPS_WHOLE, None, f"excluded by correction: {excluded[e.episode_id]}: released in full", 0)
                 if e.episode_id in excluded else decide(e, answers_of.get(e.episode_id, ()), scheme) for e in mine]
    if excluded and context is not None:
        context = judgement.excluding(context, [e for e in mine if e.episode_id in excluded], answers, scheme)
    uncapped = [bps_of(e.at_risk_pence, BPS_WHOLE - d.release_bps) for e, d in zip(mine, decisions)]
    report.billed_pence = sum(e.amount_pence for e in mine)
    report.held_pence = sum(e.at_risk_pence for e in mine)
    report.responses = sum(1 for d in decisions if d.deciding_submission_id is not None)
    report.episodes = len(mine)
    report.cap_pence = bps_of(report.billed_pence, scheme.cap_bps)
    steps_common: list[str] = []
    total_uncapped = sum(uncapped)
    if not divert:
        diverted = [0] * len(mine)
        steps_common.append("period already settled: late episode released in full")
    elif exemption is not None:
        report.exempted, report.exemption_reason = True, exemption.reason
        diverted = [0] * len(mine)
        steps_common.append(f"exempted for extraordinary circumstances by {exemption.exempted_by}"
                            f" ({exemption.exempted_at.isoformat()}): {exemption.reason}: nothing diverted")
    elif report.responses < scheme.min_responses_per_period:
        report.min_sample_applied = total_uncapped > 0
        diverted = [0] * len(mine)
        steps_common.append(
            f"minimum sample not met ({report.responses} < {scheme.min_responses_per_period} responses): nothing diverted"
        )
    else:
        verdict = judgement.judge(scheme, provider_code=provider_code, region_code=region, context=context)
        _report_verdict(report, verdict, scheme)
        steps_common.extend(verdict.steps)
        if not verdict.diverts:
            target = 0
        else:
            target = judgement.adjusted_total(total_uncapped, verdict.factor)
            if target > report.cap_pence:
                report.cap_applied = True
                steps_common.append(
                    f"cap applied: diversions of {target}p exceed {scheme.cap_bps} bps of {report.billed_pence}p billed"
                    f" = {report.cap_pence}p; scaled down by largest remainder"
                )
                target = report.cap_pence
            if verdict.credit_bps:
                report.credit_pence = judgement.credit_pence(target, verdict.credit_bps)
                steps_common.append(f"improvement credit: {verdict.credit_bps} bps of {target}p = {report.credit_pence}p"
                                    " released instead of diverted")
        if target == total_uncapped:
            diverted = uncapped
        elif target == 0:
            diverted = [0] * len(mine)
        else:
            diverted = split_largest_remainder(target, uncapped)
            if verdict.factor < 1:
                steps_common.append(f"{target}p diverted in all, shared in proportion to each episode's uncapped diversion")
        if report.credit_pence:
            # The credit is taken back from the diversions just shared, in proportion to them, and
            # not by sharing the smaller total afresh: the largest remainder method is not monotone
            # in its total (a smaller total can give one episode a penny more), and no episode may
            # divert more because its provider improved.
            back = split_largest_remainder(report.credit_pence, diverted)
            diverted = [d - b for d, b in zip(diverted, back)]
            steps_common.append(f"{target - report.credit_pence}p diverted in all: the credit taken back in proportion"
                                " to each episode's diversion")
    report.judgement_steps = tuple(steps_common)
    for e, d, u, dv in zip(mine, decisions, uncapped, diverted):
        check(0 <= dv <= u <= e.at_risk_pence, "diversion within at-risk amount")
        released = e.at_risk_pence - dv
        steps = (
            f"amount {e.amount_pence}p, at risk {scheme.at_risk_bps} bps = {e.at_risk_pence}p (rounded down)",
            f"decision: {d.basis}; release {d.release_bps} bps",
            f"uncapped diversion {u}p",
            *steps_common,
            f"released {released}p to {provider_account(e.provider_code)}, diverted {dv}p to {fund_account(e.region_code)}",
        )
        plan = settlement_plan(e, released_pence=released, diverted_pence=dv)
        report.lines.append(EpisodeSettlement(e, d, u, dv, released, steps, plan))
        report.released_pence += released
        report.diverted_pence += dv
    check(report.released_pence + report.diverted_pence == report.held_pence, "held = released + diverted")
    check(report.diverted_pence <= report.cap_pence, "diversion within cap")
    check(not report.exempted or report.diverted_pence == 0, "an exempted provider-period diverts nothing")
    check(report.gate_opened is not False or report.diverted_pence == 0, "a closed gate diverts nothing")
    return report


def _report_verdict(report: SettlementReport, verdict: judgement.Verdict, scheme: Scheme) -> None:
    ex = verdict.expected
    if ex is None:
        return
    report.measured_responses, report.measured_events = ex.responses, ex.observed
    report.benchmark_pct = _pct(ex.benchmark_rate)
    report.adjusted_expected_pct = _pct(ex.expected_rate)  # the benchmark's share itself without case mix
    if scheme.casemix is not None:
        report.casemix_factor = round(float(verdict.casemix_factor), 6)
    if verdict.gate is not None:
        report.gate_applied, report.gate_opened = True, verdict.gate.opened
        report.upper_limit_count = verdict.gate.upper_limit_count


# ---------------------------------------------------------------------------------------------
# Appeals
# ---------------------------------------------------------------------------------------------
AppealStatus = Literal["open", "upheld", "rejected"]
AppealOutcome = Literal["upheld", "rejected"]


class NotFound(LookupError):
    """No such episode or appeal. HTTP 404."""


class Refused(ValueError):
    """A request the rules do not allow now (window closed, nothing diverted, decided). HTTP 409."""


class SameActor(PermissionError):
    """The person who appealed tried to decide the appeal (separation of duties). HTTP 403."""


def appeal_deadline(settled_at: datetime, scheme: Scheme) -> datetime:
    """A provider may appeal until this instant: the settlement time plus the scheme's window."""
    return settled_at + timedelta(days=scheme.appeal_window_days)


def appeal_refusal(
    *, status: str, diverted_pence: int | None, settled_at: datetime | None, now: datetime, scheme: Scheme | None,
    existing: AppealStatus | None,
) -> str | None:
    """Why this episode cannot be appealed now, or None if it can.

    Only a settled episode with money diverted can be appealed, once, within the scheme's
    appeal window after its settlement.
    """
    if existing is not None:
        return f"this episode already has an appeal ({existing})"
    if status != "settled" or settled_at is None:
        return "only a settled episode can be appealed"
    if not diverted_pence:
        return "nothing was diverted from this episode, so there is nothing to appeal"
    if scheme is None:
        return "the episode's scheme is no longer loaded"
    deadline = appeal_deadline(settled_at, scheme)
    if now > deadline:
        return f"the appeal window ({scheme.appeal_window_days} days after settlement) closed at {deadline.isoformat()}"
    return None


def is_same_appeal(appealed_by: str, reason: str, *, existing_by: str, existing_reason: str) -> bool:
    """The same person appealing again for the same reason: the existing appeal, unchanged (a retry)."""
    return appealed_by == existing_by and reason == existing_reason


def check_decider(decided_by: str, appealed_by: str) -> None:
    """Separation of duties: whoever opened an appeal never decides it (SameActor, HTTP 403)."""
    if decided_by == appealed_by:
        raise SameActor(f"{decided_by} opened this appeal and cannot decide it; another authorised person must")


def decision_refusal(status: AppealStatus, outcome: AppealOutcome) -> str | None:
    """An appeal is decided once; deciding it again the same way is an idempotent no-op (None)."""
    if status == "open" or status == outcome:
        return None
    return f"the appeal was already {status}"


def appeal_transfer(e: Episode, *, diverted_pence: int, appeal_id: str) -> TransferRequested:
    """An upheld appeal gives the provider back what was diverted: fund -> provider."""
    check(diverted_pence > 0, "an upheld appeal returns a positive diversion")
    check(diverted_pence <= e.at_risk_pence, "an appeal cannot return more than was at risk")
    return TransferRequested(
        transfer_id=appeal_transfer_id(e.payment_id), ordering_key=e.payment_id,
        cause=_cause(e, "appeal_upheld", appeal_id=appeal_id),
        legs=(Leg(account_id=fund_account(e.region_code), amount_pence=-diverted_pence),
              Leg(account_id=provider_account(e.provider_code), amount_pence=diverted_pence)),
    )


# ---------------------------------------------------------------------------------------------
# Second-level appeal review
# ---------------------------------------------------------------------------------------------
ReviewStatus = Literal["requested", "upheld", "rejected"]


def appeal_review_transfer_id(payment_id: str) -> str:
    """``appeal-review:<payment_id>``: a namespace of its own (shared/namespaces.py), so it can never
    be the appeal's ``appeal:<payment_id>`` whatever the payment id (which may hold colons)."""
    return derived_transfer_id("appeal-review", payment_id)


def review_deadline(decided_at: datetime, scheme: Scheme) -> datetime:
    """A review may be asked for until this instant: the first decision plus the scheme's appeal window."""
    return decided_at + timedelta(days=scheme.appeal_window_days)


def review_request_refusal(*, status: AppealStatus, review_status: ReviewStatus | None, decided_at: datetime | None,
                           now: datetime, scheme: Scheme | None) -> str | None:
    """Why an independent review cannot be asked for now, or None if it can: once, of a rejected
    appeal, within the scheme's appeal window after the first decision."""
    if review_status is not None:
        return f"a review of this appeal was already asked for ({review_status}); it is asked for once"
    if status == "open" or decided_at is None:
        return "the appeal has not been decided yet"
    if status == "upheld":
        return "the appeal was upheld: there is nothing to review"
    if scheme is None:
        return "the episode's scheme is no longer loaded"
    deadline = review_deadline(decided_at, scheme)
    if now > deadline:
        return f"a review could be asked for until {deadline.isoformat()} ({scheme.appeal_window_days} days after the decision)"
    return None


def check_reviewer(reviewer: str, *, appealed_by: str, decided_by: str | None, requested_by: str | None) -> None:
    """Independence: the reviewer is not the appellant, the first-level decider, nor whoever asked
    for the review (SameActor, HTTP 403; also a database constraint)."""
    for who, role in ((appealed_by, "opened this appeal"), (decided_by, "decided this appeal"),
                      (requested_by, "asked for this review")):
        if reviewer == who:
            raise SameActor(f"{reviewer} {role} and cannot review it; an independent authorised person must")


def review_decision_refusal(review_status: ReviewStatus | None, outcome: AppealOutcome) -> str | None:
    """A review is decided once; deciding it again the same way is an idempotent no-op (None)."""
    if review_status is None:
        return "no review of this appeal has been asked for"
    if review_status == "requested" or review_status == outcome:
        return None
    return f"the review was already {review_status}"


def review_transfer(e: Episode, *, diverted_pence: int, appeal_id: str) -> TransferRequested:
    """An upheld review of a rejected appeal gives the provider back what was diverted, exactly as an
    upheld appeal does (fund -> provider), under its own transfer id."""
    check(diverted_pence > 0, "an upheld review returns a positive diversion")
    check(diverted_pence <= e.at_risk_pence, "a review cannot return more than was at risk")
    return TransferRequested(
        transfer_id=appeal_review_transfer_id(e.payment_id), ordering_key=e.payment_id,
        cause=_cause(e, "appeal_upheld", appeal_id=appeal_id, note="second-level review upheld"),
        legs=(Leg(account_id=fund_account(e.region_code), amount_pence=-diverted_pence),
              Leg(account_id=provider_account(e.provider_code), amount_pence=diverted_pence)),
    )
