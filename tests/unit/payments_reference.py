"""Test-only reference for payments: the ledger transfers each rule asks for, built as validated
contract models directly from the rules (README "Ledger transfers"), independently of the pure
core's plans. Tests compare the plans, their encoded outbox rows and the what-if replay with these.

Moved here from ``services/payments/domain.py`` (``hold``, ``payment_transfers``,
``settlement_transfers``, ``EpisodeSettlement.transfers/transfer``): no production code uses them.
"""

from __future__ import annotations

from datetime import date

from services.payments import domain
from services.payments.domain import Episode, EpisodeSettlement
from services.payments.schemes import Scheme
from shared.contracts import Leg, TransferCause, TransferRequested
from shared.money import check


def cause(e: Episode, kind: str, **extra: object) -> TransferCause:
    return TransferCause(kind=kind, payment_id=e.payment_id, episode_id=e.episode_id, provider_code=e.provider_code,  # type: ignore[arg-type]
                         period=e.period, scheme_id=e.scheme_id, scheme_version=e.scheme_version, **extra)  # type: ignore[arg-type]


def _legs(*pairs: tuple[str, int]) -> tuple[Leg, ...]:
    return tuple(Leg(account_id=account, amount_pence=pence) for account, pence in pairs if pence)


def payment_transfers(e: Episode) -> tuple[TransferRequested, ...]:
    """Accepting a payment: the part not at risk paid at once, the rest held (README table)."""
    paid_now = e.amount_pence - e.at_risk_pence
    commissioner = domain.commissioner_account(e.commissioner_code)
    provider = domain.provider_account(e.provider_code)
    if e.hold_model == "held_account":
        legs = _legs((commissioner, -e.amount_pence), (provider, paid_now), (domain.held_account(e.provider_code), e.at_risk_pence))
        return (TransferRequested(transfer_id=f"hold:{e.payment_id}", legs=legs, ordering_key=e.payment_id,
                                  cause=cause(e, "payment_hold")),)
    out = []
    if paid_now:
        out.append(TransferRequested(transfer_id=f"pay:{e.payment_id}", legs=_legs((commissioner, -paid_now), (provider, paid_now)),
                                     ordering_key=e.payment_id, cause=cause(e, "payment")))
    if e.at_risk_pence:
        out.append(TransferRequested(transfer_id=f"hold:{e.payment_id}", kind="pending", ordering_key=e.payment_id,
                                     legs=_legs((commissioner, -e.at_risk_pence), (provider, e.at_risk_pence)),
                                     cause=cause(e, "payment_hold")))
    return tuple(out)


def settlement_transfers(e: Episode, *, released_pence: int, diverted_pence: int) -> tuple[TransferRequested, ...]:
    """Settling an episode's held amount: released + diverted = at risk."""
    check(released_pence >= 0 and diverted_pence >= 0, "settled amounts are non-negative")
    check(released_pence + diverted_pence == e.at_risk_pence, "held = released + diverted")
    if not e.at_risk_pence:
        return ()
    provider, fund = domain.provider_account(e.provider_code), domain.fund_account(e.region_code)
    if e.hold_model == "held_account":
        legs = _legs((domain.held_account(e.provider_code), -e.at_risk_pence), (provider, released_pence), (fund, diverted_pence))
        return (TransferRequested(transfer_id=f"settle:{e.payment_id}", legs=legs, ordering_key=e.payment_id,
                                  cause=cause(e, "settlement")),)
    commissioner = domain.commissioner_account(e.commissioner_code)
    hold_id, release_id = f"hold:{e.payment_id}", f"release:{e.payment_id}"
    if released_pence == e.at_risk_pence:
        release = TransferRequested(transfer_id=release_id, kind="post_pending", pending_id=hold_id,
                                    ordering_key=e.payment_id, cause=cause(e, "release"))
    elif released_pence:
        release = TransferRequested(transfer_id=release_id, kind="post_pending", pending_id=hold_id, ordering_key=e.payment_id,
                                    cause=cause(e, "release"),
                                    legs=_legs((commissioner, -released_pence), (provider, released_pence)))
    else:
        release = TransferRequested(transfer_id=release_id, kind="void_pending", pending_id=hold_id,
                                    ordering_key=e.payment_id, cause=cause(e, "release"))
    if not diverted_pence:
        return (release,)
    divert = TransferRequested(transfer_id=f"divert:{e.payment_id}", ordering_key=e.payment_id, cause=cause(e, "diversion"),
                               legs=_legs((commissioner, -diverted_pence), (fund, diverted_pence)))
    return (release, divert)


def line_transfers(line: EpisodeSettlement) -> tuple[TransferRequested, ...]:
    """A settlement line's transfers as contract models (was ``EpisodeSettlement.transfers``)."""
    return tuple(p.request() for p in line.plan)


def line_transfer(line: EpisodeSettlement) -> TransferRequested | None:
    """The first (for the held-account model, the only) one (was ``EpisodeSettlement.transfer``)."""
    return line.plan[0].request() if line.plan else None


def hold(
    *, payment_id: str, episode_id: str, commissioner_code: str, provider_code: str, region_code: str, service_type: str,
    activity_date: date, amount_pence: int, scheme: Scheme | None,
) -> tuple[Episode, TransferRequested]:
    """Accept a payment under the held-account model: the episode and its one transfer."""
    episode = domain.new_episode(
        payment_id=payment_id, episode_id=episode_id, commissioner_code=commissioner_code, provider_code=provider_code,
        region_code=region_code, service_type=service_type, activity_date=activity_date, amount_pence=amount_pence,
        scheme=scheme, hold_model="held_account",
    )
    (transfer,) = (p.request() for p in domain.payment_plan(episode))
    return episode, transfer
