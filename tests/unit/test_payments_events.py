"""Every ledger transfer request payments writes is, byte for byte, the contract's event.

For every kind of transfer payments asks the ledger for (pay; hold, two-phase and held-account;
release in full, in part, void; divert; settle; appeal), the outbox row ``services/payments/events``
builds with ``shared.events`` must carry exactly ``Envelope[TransferRequested].model_dump_json()``
of the transfer the rules call for (``tests/unit/payments_reference.py``, built independently of
the pure core's plans), keyed by the payment id, with the relay's headers. Hypothesis draws the
ids, amounts, shares and trace ids (with characters JSON must escape).
"""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from services.payments import domain, events
from services.payments.schemes import Scheme
from shared.contracts import Envelope, TransferRequested
from shared.topics import LEDGER_TRANSFER_REQUESTS
from tests.unit.payments_reference import payment_transfers, settlement_transfers

SCHEME = Scheme(scheme_id="t-1", version=3, title="T", effective_from=date(2026, 4, 1))
_ENVELOPE = Envelope[TransferRequested]
_WHEN = TypeAdapter(datetime)

IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,99}", fullmatch=True)
TRACE = st.text(min_size=1, max_size=200).filter(lambda s: "\x00" not in s)
CAUSE = st.none() | st.uuids().map(str) | TRACE


@st.composite
def episodes(draw: st.DrawFn) -> domain.Episode:
    in_trial = draw(st.booleans())
    scheme = SCHEME.model_copy(update={"at_risk_bps": draw(st.integers(0, 10_000))}) if in_trial else None
    return domain.new_episode(payment_id=draw(IDS), episode_id=draw(IDS), commissioner_code="QWE", provider_code="RJ1",
                              region_code="Y56", service_type="gp", activity_date=date(2026, 5, 10),
                              amount_pence=draw(st.integers(1, 10_000_000_000)), scheme=scheme,
                              hold_model=draw(st.sampled_from(domain.HOLD_MODELS)))


def assert_contract_rows(rows: list, transfers: tuple[TransferRequested, ...] | list[TransferRequested],
                         correlation_id: str, causation_id: str | None) -> None:
    assert len(rows) == len(transfers)
    for (topic, key, payload, headers), t in zip(rows, transfers, strict=True):
        written = json.loads(payload)
        want = _ENVELOPE(event_id=uuid.UUID(written["event_id"]), type="ledger.transfer-requested.v1",
                         occurred_at=_WHEN.validate_python(written["occurred_at"]), correlation_id=correlation_id,
                         causation_id=causation_id, producer="payments", data=t)
        assert payload == want.model_dump_json().encode()  # the contract's bytes, exactly
        assert (topic, key) == (LEDGER_TRANSFER_REQUESTS.name, t.ordering_key.encode())  # type: ignore[union-attr]
        expected_headers = {"event_type": "ledger.transfer-requested.v1", "event_id": written["event_id"],
                            "correlation_id": correlation_id}
        if causation_id:
            expected_headers["causation_id"] = causation_id
        assert json.loads(headers) == expected_headers


@settings(max_examples=200, deadline=None)
@given(episodes(), TRACE, CAUSE)
def test_a_payments_transfers_are_the_contracts_events(e: domain.Episode, correlation_id: str, causation_id: str | None) -> None:
    plan = domain.payment_plan(e)
    assert tuple(p.request() for p in plan) == payment_transfers(e)
    assert_contract_rows(events.transfer_rows([(plan, correlation_id, causation_id)]), payment_transfers(e), correlation_id,
                         causation_id)


@settings(max_examples=200, deadline=None)
@given(episodes(), st.sampled_from(["full", "none", "part"]), st.floats(0, 1), TRACE)
def test_a_settlements_transfers_are_the_contracts_events(e: domain.Episode, split: str, share: float, correlation_id: str) -> None:
    released = {"full": e.at_risk_pence, "none": 0, "part": int(e.at_risk_pence * share)}[split]
    diverted = e.at_risk_pence - released
    plan = domain.settlement_plan(e, released_pence=released, diverted_pence=diverted)
    want = settlement_transfers(e, released_pence=released, diverted_pence=diverted)
    assert tuple(p.request() for p in plan) == want
    assert_contract_rows(events.transfer_rows([(plan, correlation_id, None)]), want, correlation_id, None)


@settings(max_examples=100, deadline=None)
@given(episodes(), st.integers(1, 10_000), IDS, TRACE)
def test_an_upheld_appeals_transfer_is_the_contracts_event(e: domain.Episode, diverted: int, appeal_id: str,
                                                           correlation_id: str) -> None:
    e = domain.new_episode(payment_id=e.payment_id, episode_id=e.episode_id, commissioner_code="QWE", provider_code="RJ1",
                           region_code="Y56", service_type="gp", activity_date=e.activity_date, amount_pence=100_000,
                           scheme=SCHEME, hold_model=e.hold_model)
    t = domain.appeal_transfer(e, diverted_pence=diverted, appeal_id=appeal_id)
    assert_contract_rows([events.request_row(t, correlation_id=correlation_id, causation_id=appeal_id)], [t],
                         correlation_id, appeal_id)


def test_every_kind_payments_asks_for_is_drawn() -> None:
    """The kinds the tests above cover, from the core: nothing payments emits is left out."""
    seen = set()
    for model in domain.HOLD_MODELS:
        e = domain.new_episode(payment_id="p", episode_id="e", commissioner_code="QWE", provider_code="RJ1", region_code="Y56",
                               service_type="gp", activity_date=date(2026, 5, 10), amount_pence=100_000, scheme=SCHEME,
                               hold_model=model)
        plans = [domain.payment_plan(e)] + [domain.settlement_plan(e, released_pence=r, diverted_pence=10_000 - r)
                                            for r in (10_000, 4_000, 0)]
        seen |= {(p.kind, p.cause_kind, bool(p.legs)) for plan in plans for p in plan}
    seen.add(("posted", "appeal_upheld", True))  # domain.appeal_transfer: one kind, both models
    assert seen == {
        ("posted", "payment", True), ("pending", "payment_hold", True), ("posted", "payment_hold", True),
        ("posted", "settlement", True), ("post_pending", "release", False), ("post_pending", "release", True),
        ("void_pending", "release", False), ("posted", "diversion", True), ("posted", "appeal_upheld", True),
    }


def test_a_batch_draws_distinct_event_ids_and_shares_one_time() -> None:
    plans = [domain.payment_plan(domain.new_episode(
        payment_id=f"p{i}", episode_id=f"e{i}", commissioner_code="QWE", provider_code="RJ1", region_code="Y56",
        service_type="gp", activity_date=date(2026, 5, 10), amount_pence=100_000, scheme=SCHEME, hold_model="two_phase"))
        for i in range(50)]
    rows = events.transfer_rows([(plan, f"c{i}", None) for i, plan in enumerate(plans)])
    payloads = [json.loads(r[2]) for r in rows]
    assert len({p["event_id"] for p in payloads}) == len(rows) == 100
    assert len({p["occurred_at"] for p in payloads}) == 1
    assert [p["correlation_id"] for p in payloads] == [f"c{i // 2}" for i in range(100)]  # each plan its own trace
    assert events.transfer_rows([((), "c", None)]) == []


def test_trace_ids_the_envelope_refuses_are_refused_and_those_at_its_limit_kept() -> None:
    import pytest

    plan = domain.payment_plan(domain.new_episode(
        payment_id="p", episode_id="e", commissioner_code="QWE", provider_code="RJ1", region_code="Y56", service_type="gp",
        activity_date=date(2026, 5, 10), amount_pence=100_000, scheme=SCHEME, hold_model="two_phase"))
    for correlation_id, causation_id in (("", None), ("x" * 201, None), ("a\x00b", None), ("c", "y" * 201), ("c", "a\x00")):
        with pytest.raises(ValueError):
            events.transfer_rows([(plan, correlation_id, causation_id)])
    rows = events.transfer_rows([(plan, "c" * 200, "d" * 200)])
    assert_contract_rows(rows, payment_transfers(plan[0].episode), "c" * 200, "d" * 200)
