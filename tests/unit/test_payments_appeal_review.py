"""Second-level appeal review: the pure rules and the handlers over the in-memory store. Once, of
a rejected appeal, asked for by the appellant's side, decided by someone independent (not the
appellant, the first decider or the requester); upheld, it moves the diverted money fund ->
provider under ``appeal-review:<payment_id>``, never the appeal's own id; every step in the history."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.payments import domain
from services.payments.domain import NotFound, Refused, SameActor
from services.payments.handlers import DecideAppeal, DecideReview, OpenAppeal, RequestReview
from shared.namespaces import owner_of
from tests.unit.test_payments_appeals import SCHEME, ep
from tests.unit.test_payments_handlers import metric, outbox, settled_month, world

DECIDED = datetime(2026, 7, 20, 9, tzinfo=timezone.utc)


def request_refusal(**kw) -> str | None:  # type: ignore[no-untyped-def]
    base = {"status": "rejected", "review_status": None, "decided_at": DECIDED, "now": DECIDED + timedelta(days=1),
            "scheme": SCHEME}
    return domain.review_request_refusal(**{**base, **kw})


def test_a_review_is_asked_for_once_of_a_rejected_appeal_in_time() -> None:
    assert request_refusal() is None
    assert request_refusal(now=DECIDED + timedelta(days=30)) is None
    assert "until" in (request_refusal(now=DECIDED + timedelta(days=30, seconds=1)) or "")
    assert "upheld: there is nothing to review" in (request_refusal(status="upheld") or "")
    assert "not been decided" in (request_refusal(status="open", decided_at=None) or "")
    assert "asked for once" in (request_refusal(review_status="requested") or "")
    assert "no longer loaded" in (request_refusal(scheme=None) or "")


def test_the_reviewer_is_independent_and_decides_once() -> None:
    for who in ("trust.lead", "panel", "trust.ceo"):
        with pytest.raises(SameActor):
            domain.check_reviewer(who, appealed_by="trust.lead", decided_by="panel", requested_by="trust.ceo")
    domain.check_reviewer("national.reviewer", appealed_by="trust.lead", decided_by="panel", requested_by="trust.ceo")
    assert domain.review_decision_refusal("requested", "upheld") is None
    assert domain.review_decision_refusal("upheld", "upheld") is None  # the same again: a no-op
    assert "already upheld" in (domain.review_decision_refusal("upheld", "rejected") or "")
    assert "no review" in (domain.review_decision_refusal(None, "upheld") or "")


def test_the_review_transfer_has_an_id_of_its_own_namespace() -> None:
    e = ep()
    t = domain.review_transfer(e, diverted_pence=1_000, appeal_id="appeal:pay-1")
    assert t.transfer_id == "appeal-review:pay-1" != domain.appeal_transfer_id(e.payment_id)
    assert owner_of(t.transfer_id) == "payments"
    # A payment id with a colon cannot make the appeal's id equal another payment's review id.
    assert domain.appeal_transfer_id("review:pay-1") != t.transfer_id
    assert sum(leg.amount_pence for leg in t.legs) == 0
    assert [(leg.account_id, leg.amount_pence) for leg in t.legs] == [("fund:Y56", -1_000), ("provider:RJ1", 1_000)]
    assert t.cause.kind == "appeal_upheld" and t.cause.note == "second-level review upheld"


async def test_an_upheld_review_of_a_rejected_appeal_moves_the_money_once() -> None:
    w = world()
    await settled_month(w)
    h = w.handlers
    await h.open_appeal(OpenAppeal("ep-0", "trust.lead", "miscoded"))
    with pytest.raises(Refused, match="not been decided"):
        await h.request_review(RequestReview("ep-0", "trust.lead", "please"))
    await h.decide_appeal(DecideAppeal("ep-0", "rejected", "panel", "answer stands", "c1"))
    with pytest.raises(Refused, match="no review"):
        await h.decide_review(DecideReview("ep-0", "upheld", "national.reviewer", "early", "c"))
    asked = await h.request_review(RequestReview("ep-0", "trust.ceo", "the panel did not see the ward's evidence"))
    assert asked.changed and asked.appeal["review"]["status"] == "requested"
    assert not (await h.request_review(RequestReview("ep-0", "trust.ceo", "the panel did not see the ward's evidence"))).changed
    with pytest.raises(Refused, match="asked for once"):
        await h.request_review(RequestReview("ep-0", "trust.lead", "another"))
    for who in ("trust.lead", "panel", "trust.ceo"):
        with pytest.raises(SameActor):
            await h.decide_review(DecideReview("ep-0", "upheld", who, "mine", "c"))
    back = metric("payments_appealed_back_pence_total", region_code="Y56")
    r = await h.decide_review(DecideReview("ep-0", "upheld", "national.reviewer", "evidence accepted", "c-review"))
    assert r.changed and r.appeal["status"] == "rejected" and r.appeal["review"]["status"] == "upheld"
    assert r.appeal["review"]["transfer_id"] == "appeal-review:pay-0" and r.appeal["transfer_id"] is None
    assert [(s["step"], s["actor"]) for s in r.appeal["history"]] == [
        ("appealed", "trust.lead"), ("rejected", "panel"), ("review_requested", "trust.ceo"),
        ("review_upheld", "national.reviewer")]
    (event,) = [e for e in outbox(w) if e["data"]["transfer_id"].startswith("appeal")]
    assert event["data"]["transfer_id"] == "appeal-review:pay-0" and (event["correlation_id"], event["causation_id"]) == (
        "c-review", "appeal:pay-0")
    assert [leg["amount_pence"] for leg in event["data"]["legs"]] == [-10_000, 10_000]
    assert w.state.transfers["appeal-review:pay-0"]["kind"] == "appeal_upheld"
    same = await h.decide_review(DecideReview("ep-0", "upheld", "national.reviewer", "evidence accepted", "c-review"))
    assert not same.changed
    with pytest.raises(Refused, match="already upheld"):
        await h.decide_review(DecideReview("ep-0", "rejected", "other.reviewer", "no", "c"))
    assert len([e for e in outbox(w) if e["data"]["transfer_id"].startswith("appeal")]) == 1  # the money moved once
    assert metric("payments_appealed_back_pence_total", region_code="Y56") - back == 10_000


async def test_a_rejected_review_moves_nothing_and_an_upheld_appeal_is_not_reviewed() -> None:
    w = world()
    await settled_month(w)
    h = w.handlers
    with pytest.raises(NotFound):
        await h.request_review(RequestReview("ep-0", "trust.lead", "no appeal yet"))
    await h.open_appeal(OpenAppeal("ep-0", "trust.lead", "miscoded"))
    await h.decide_appeal(DecideAppeal("ep-0", "rejected", "panel", "answer stands", "c1"))
    await h.request_review(RequestReview("ep-0", "trust.lead", "please look again"))
    r = await h.decide_review(DecideReview("ep-0", "rejected", "national.reviewer", "the panel was right", "c"))
    assert r.appeal["review"]["status"] == "rejected" and r.appeal["review"]["transfer_id"] is None
    assert not [e for e in outbox(w) if e["data"]["transfer_id"].startswith("appeal")]

    w2 = world()
    await settled_month(w2)
    await w2.handlers.open_appeal(OpenAppeal("ep-0", "trust.lead", "miscoded"))
    await w2.handlers.decide_appeal(DecideAppeal("ep-0", "upheld", "panel", "agreed", "c1"))
    with pytest.raises(Refused, match="nothing to review"):
        await w2.handlers.request_review(RequestReview("ep-0", "trust.lead", "more"))
    w2.advance(days=400)
    w3 = world()
    await settled_month(w3)
    await w3.handlers.open_appeal(OpenAppeal("ep-0", "trust.lead", "miscoded"))
    await w3.handlers.decide_appeal(DecideAppeal("ep-0", "rejected", "panel", "no", "c1"))
    w3.advance(days=31)
    with pytest.raises(Refused, match="could be asked for until"):
        await w3.handlers.request_review(RequestReview("ep-0", "trust.lead", "too late"))
