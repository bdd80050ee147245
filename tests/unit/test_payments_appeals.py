"""Appeals rules (pure core) and deterministic transfer ids."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from services.payments import domain
from services.payments.schemes import Scheme
from shared.contracts import TransferRequested
from shared.money import InvariantError

SCHEME = Scheme(scheme_id="t-1", version=1, title="T", effective_from=date(2026, 4, 1), appeal_window_days=30)
SETTLED = datetime(2026, 7, 10, 9, 0, tzinfo=timezone.utc)


def ep(model: domain.HoldModel = "held_account") -> domain.Episode:
    return domain.new_episode(payment_id="pay-1", episode_id="ep-1", commissioner_code="QWE", provider_code="RJ1",
                              region_code="Y56", service_type="inpatient", activity_date=date(2026, 5, 10),
                              amount_pence=100_000, scheme=SCHEME, hold_model=model)


def payment_transfers(e: domain.Episode) -> tuple[TransferRequested, ...]:
    return tuple(p.request() for p in domain.payment_plan(e))


def settlement_transfers(e: domain.Episode, *, released_pence: int, diverted_pence: int) -> tuple[TransferRequested, ...]:
    return tuple(p.request() for p in domain.settlement_plan(e, released_pence=released_pence, diverted_pence=diverted_pence))


def refusal(**kw) -> str | None:  # type: ignore[no-untyped-def]
    base = {"status": "settled", "diverted_pence": 10_000, "settled_at": SETTLED, "now": SETTLED + timedelta(days=1),
            "scheme": SCHEME, "existing": None}
    return domain.appeal_refusal(**{**base, **kw})


def test_appeal_allowed_within_the_window() -> None:
    assert refusal() is None
    assert refusal(now=SETTLED + timedelta(days=30)) is None  # the deadline itself is still in time
    assert domain.appeal_deadline(SETTLED, SCHEME) == SETTLED + timedelta(days=30)


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"now": SETTLED + timedelta(days=30, seconds=1)}, "appeal window (30 days after settlement) closed"),
        ({"status": "held", "settled_at": None}, "only a settled episode"),
        ({"diverted_pence": 0}, "nothing was diverted"),
        ({"diverted_pence": None}, "nothing was diverted"),
        ({"existing": "open"}, "already has an appeal (open)"),
        ({"existing": "rejected"}, "already has an appeal (rejected)"),
        ({"scheme": None}, "no longer loaded"),
    ],
)
def test_appeal_refused(kw, why: str) -> None:  # type: ignore[no-untyped-def]
    assert why in (refusal(**kw) or "")


def test_zero_day_window_allows_appeal_only_at_settlement() -> None:
    s = SCHEME.model_copy(update={"appeal_window_days": 0})
    assert refusal(scheme=s, now=SETTLED) is None
    assert refusal(scheme=s, now=SETTLED + timedelta(microseconds=1)) is not None


def test_decision_rules() -> None:
    assert domain.decision_refusal("open", "upheld") is None
    assert domain.decision_refusal("open", "rejected") is None
    assert domain.decision_refusal("upheld", "upheld") is None  # idempotent retry
    assert domain.decision_refusal("upheld", "rejected") == "the appeal was already upheld"
    assert domain.decision_refusal("rejected", "upheld") == "the appeal was already rejected"


@pytest.mark.parametrize("model", domain.HOLD_MODELS)
def test_upheld_appeal_moves_the_diversion_from_fund_to_provider(model: domain.HoldModel) -> None:
    t = domain.appeal_transfer(ep(model), diverted_pence=7_000, appeal_id="appeal:pay-1")
    assert isinstance(t, TransferRequested)
    assert (t.transfer_id, t.kind, t.ordering_key, t.key) == ("appeal:pay-1", "posted", "pay-1", "pay-1")
    assert [(leg.account_id, leg.amount_pence) for leg in t.legs] == [("fund:Y56", -7_000), ("provider:RJ1", 7_000)]
    assert (t.cause.kind, t.cause.appeal_id, t.cause.payment_id, t.cause.period) == ("appeal_upheld", "appeal:pay-1", "pay-1", "2026-05")


def test_appeal_transfer_limits() -> None:
    with pytest.raises(InvariantError):
        domain.appeal_transfer(ep(), diverted_pence=0, appeal_id="a")
    with pytest.raises(InvariantError):
        domain.appeal_transfer(ep(), diverted_pence=10_001, appeal_id="a")


@pytest.mark.parametrize("length", [1, 50, 93, 100])
def test_derived_transfer_ids_hold_the_whole_payment_id(length: int) -> None:
    pid = "p" * length
    makers = (domain.hold_transfer_id, domain.pay_transfer_id, domain.settle_transfer_id,
              domain.release_transfer_id, domain.divert_transfer_id, domain.appeal_transfer_id)
    ids = [f(pid) for f in makers]
    assert ids == [f"{p}:{pid}" for p in ("hold", "pay", "settle", "release", "divert", "appeal")]
    for t in ids:  # valid transfer ids for the ledger
        TransferRequested(transfer_id=t, kind="void_pending", pending_id=t, cause={"kind": "manual"})
    assert len(set(ids)) == len(ids)


def test_two_phase_transfers_for_partial_full_and_no_release() -> None:
    e = ep("two_phase")
    pay, hold = payment_transfers(e)
    assert (pay.transfer_id, pay.kind, hold.transfer_id, hold.kind) == ("pay:pay-1", "posted", "hold:pay-1", "pending")
    assert [(leg.account_id, leg.amount_pence) for leg in hold.legs] == [("commissioner:QWE", -10_000), ("provider:RJ1", 10_000)]
    full = settlement_transfers(e, released_pence=10_000, diverted_pence=0)
    assert [(t.transfer_id, t.kind, t.pending_id, t.legs) for t in full] == [("release:pay-1", "post_pending", "hold:pay-1", ())]
    part = settlement_transfers(e, released_pence=4_000, diverted_pence=6_000)
    assert [(t.transfer_id, t.kind) for t in part] == [("release:pay-1", "post_pending"), ("divert:pay-1", "posted")]
    assert [(leg.account_id, leg.amount_pence) for leg in part[0].legs] == [("commissioner:QWE", -4_000), ("provider:RJ1", 4_000)]
    assert [(leg.account_id, leg.amount_pence) for leg in part[1].legs] == [("commissioner:QWE", -6_000), ("fund:Y56", 6_000)]
    none = settlement_transfers(e, released_pence=0, diverted_pence=10_000)
    assert [(t.transfer_id, t.kind) for t in none] == [("release:pay-1", "void_pending"), ("divert:pay-1", "posted")]
    with pytest.raises(InvariantError):
        settlement_transfers(e, released_pence=1, diverted_pence=1)


def test_separation_of_duties_and_repeats() -> None:
    domain.check_decider("panel", "trust.lead")
    with pytest.raises(domain.SameActor, match="trust.lead opened this appeal and cannot decide it"):
        domain.check_decider("trust.lead", "trust.lead")
    assert domain.is_same_appeal("a", "why", existing_by="a", existing_reason="why")
    assert not domain.is_same_appeal("a", "why not", existing_by="a", existing_reason="why")
    assert not domain.is_same_appeal("b", "why", existing_by="a", existing_reason="why")
