"""Hand-built ledger.transfer-requested.v1 outbox rows are the rows the contract builds.

For every kind of transfer payments asks the ledger for (pay, hold in both hold models, settle,
release in full / in part, void, divert, appeal), the hand-built row must equal, byte for byte,
``shared.outbox.outbox_row`` around ``Envelope[TransferRequested]`` with the same event id and
time, and parse back through the contract to the same envelope.
"""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from services.payments import domain, outbox_rows
from services.payments.schemes import Scheme
from shared.contracts import Envelope, Leg, TransferCause, TransferRequested
from shared.money import InvariantError
from shared.outbox import event_headers, outbox_row
from shared.topics import LEDGER_TRANSFER_REQUESTS

SCHEME = Scheme(scheme_id="t-1", version=3, title="T", effective_from=date(2026, 4, 1))
EVENT_ID = "0b7e6c1a-3f2d-4e5b-9a8c-7d6e5f4a3b2c"
AT = datetime(2026, 11, 21, 12, 30, 5, 123_456, tzinfo=timezone.utc)
# Trace ids as they come: from an envelope (a UUID), an HTTP header, a scheduler; with
# characters JSON must escape.
TRACES = [("corr-1", EVENT_ID), ("corr-2", None), ("corr-3", ""), ('q"uo\\te\n\t\x01 é ✓ 😀', "cause é")]
_ENVELOPE = Envelope[TransferRequested]


def ep(model: domain.HoldModel = "two_phase", *, amount: int = 100_000, scheme: Scheme | None = SCHEME) -> domain.Episode:
    return domain.new_episode(payment_id="pay-1", episode_id="ep-1", commissioner_code="QWE", provider_code="RJ1",
                              region_code="Y56", service_type="inpatient", activity_date=date(2026, 5, 10),
                              amount_pence=amount, scheme=scheme, hold_model=model)


def reference(t: TransferRequested, correlation_id: str, causation_id: str | None,
              event_id: str = EVENT_ID, at: datetime = AT) -> tuple[tuple[str, bytes, bytes, str], Envelope]:
    """The row as the service built it through the contract before (store._transfer_rows)."""
    env = _ENVELOPE(event_id=uuid.UUID(event_id), type="ledger.transfer-requested.v1", occurred_at=at,
                    correlation_id=correlation_id, causation_id=causation_id, producer="payments", data=t)
    return outbox_row(LEDGER_TRANSFER_REQUESTS.name, t.key, env), env


def assert_same(row: tuple[str, bytes, bytes, str], ref: tuple[str, bytes, bytes, str], env: Envelope) -> None:
    assert row == ref  # topic, key, payload bytes and headers text, exactly
    assert _ENVELOPE.model_validate_json(row[2]) == env
    assert json.loads(row[3]) == event_headers(env)


def every_kind() -> list[TransferRequested]:
    """Every transfer payments emits, from the pure core."""
    out: list[TransferRequested] = []
    for model in domain.HOLD_MODELS:
        out += domain.payment_transfers(ep(model))
        out += domain.payment_transfers(ep(model, scheme=None))  # out of trial: no hold, no scheme
        e = ep(model)
        for released, diverted in ((10_000, 0), (4_000, 6_000), (0, 10_000)):
            out += domain.settlement_transfers(e, released_pence=released, diverted_pence=diverted, period=e.period)
        out.append(domain.appeal_transfer(e, diverted_pence=6_000, appeal_id="appeal:pay-1"))
    return out


def test_every_kind_is_covered() -> None:
    seen = {(t.kind, t.cause.kind, bool(t.legs)) for t in every_kind()}
    assert seen == {
        ("posted", "payment", True), ("pending", "payment_hold", True), ("posted", "payment_hold", True),
        ("posted", "settlement", True), ("post_pending", "release", False), ("post_pending", "release", True),
        ("void_pending", "release", False), ("posted", "diversion", True), ("posted", "appeal_upheld", True),
    }


@pytest.mark.parametrize("correlation_id,causation_id", TRACES)
def test_contract_rows_equal_the_pydantic_rows_for_every_kind(correlation_id: str, causation_id: str | None) -> None:
    for t in every_kind():
        row = outbox_rows.contract_row(t, correlation_id=correlation_id, causation_id=causation_id,
                                       event_id=EVENT_ID, occurred_at=outbox_rows.stamp(AT))
        assert_same(row, *reference(t, correlation_id, causation_id))


def test_contract_rows_cover_the_fields_payments_never_sets() -> None:
    t = TransferRequested(
        transfer_id="x:1", kind="pending", timeout_s=3600, ordering_key=None,
        legs=(Leg(account_id="fund:Y56", amount_pence=-5), Leg(account_id="provider:RJ1", amount_pence=5)),
        cause=TransferCause(kind="manual", settlement_id="s-1", note='a "note" \\ é\n'),
    )
    r = TransferRequested(transfer_id="x:2", reverses="x:0", cause=TransferCause(kind="reversal"),
                          legs=(Leg(account_id="fund:Y56", amount_pence=7), Leg(account_id="provider:RJ1", amount_pence=-7)))
    for transfer in (t, r):
        row = outbox_rows.contract_row(transfer, correlation_id="c", causation_id=None, event_id=EVENT_ID,
                                       occurred_at=outbox_rows.stamp(AT))
        assert_same(row, *reference(transfer, "c", None))


@pytest.mark.parametrize("model", domain.HOLD_MODELS)
@pytest.mark.parametrize("amount,scheme", [(100_000, SCHEME), (7, SCHEME), (100_000, None),
                                           (100_000, SCHEME.model_copy(update={"at_risk_bps": 10_000}))])
@pytest.mark.parametrize("correlation_id,causation_id", TRACES)
def test_planned_rows_equal_the_pydantic_rows(model: domain.HoldModel, amount: int, scheme: Scheme | None,
                                              correlation_id: str, causation_id: str | None) -> None:
    plan = domain.payment_plan(ep(model, amount=amount, scheme=scheme))
    ids = [str(uuid.uuid4()) for _ in plan]
    rows = outbox_rows.planned_rows(plan, correlation_id=correlation_id, causation_id=causation_id, event_ids=ids,
                                    occurred_at=outbox_rows.stamp(AT))
    assert len(rows) == len(plan) >= 1
    for row, p, event_id in zip(rows, plan, ids):
        assert_same(row, *reference(p.request(), correlation_id, causation_id, event_id))


def test_plan_is_what_payment_transfers_were() -> None:
    # payment_transfers is built from the plan; this pins the plan to the contract's shape.
    e = ep("two_phase")
    pay, hold = domain.payment_plan(e)
    assert (pay.transfer_id, pay.kind, pay.legs, pay.cause_kind) == (
        "pay:pay-1", "posted", (("commissioner:QWE", -90_000), ("provider:RJ1", 90_000)), "payment")
    assert (hold.transfer_id, hold.kind, hold.legs, hold.cause_kind) == (
        "hold:pay-1", "pending", (("commissioner:QWE", -10_000), ("provider:RJ1", 10_000)), "payment_hold")
    (held,) = domain.payment_plan(ep("held_account"))
    assert held.legs == (("commissioner:QWE", -100_000), ("provider:RJ1", 90_000), ("held:RJ1", 10_000))


def test_planned_legs_keep_the_money_invariants() -> None:
    e = ep()
    with pytest.raises(InvariantError, match="sum to zero"):
        domain._planned("pay:pay-1", "posted", (("commissioner:QWE", -5), ("provider:RJ1", 4)), "payment", e)
    with pytest.raises(InvariantError, match="non-zero"):
        domain._planned("pay:pay-1", "posted", (("commissioner:QWE", 0), ("provider:RJ1", 0)), "payment", e)
    with pytest.raises(InvariantError, match="two legs"):
        domain._planned("pay:pay-1", "posted", (("commissioner:QWE", 0),), "payment", e)


@pytest.mark.parametrize("correlation_id,causation_id", [("", None), ("x" * 201, None), ("a\x00b", None),
                                                          ("c", "y" * 201), ("c", "a\x00")])
def test_trace_ids_the_contract_refuses_are_refused_as_before(correlation_id: str, causation_id: str | None) -> None:
    t = domain.payment_transfers(ep())[0]
    with pytest.raises(ValidationError):
        reference(t, correlation_id, causation_id)
    with pytest.raises(ValidationError):
        outbox_rows.contract_row(t, correlation_id=correlation_id, causation_id=causation_id, event_id=EVENT_ID,
                                 occurred_at=outbox_rows.stamp(AT))
    plan = domain.payment_plan(ep())
    with pytest.raises(ValidationError):
        outbox_rows.planned_rows(plan, correlation_id=correlation_id, causation_id=causation_id,
                                 event_ids=[EVENT_ID] * len(plan), occurred_at=outbox_rows.stamp(AT))


def test_trace_ids_at_the_limit_are_kept() -> None:
    t = domain.payment_transfers(ep())[0]
    row = outbox_rows.contract_row(t, correlation_id="c" * 200, causation_id="d" * 200, event_id=EVENT_ID,
                                   occurred_at=outbox_rows.stamp(AT))
    assert_same(row, *reference(t, "c" * 200, "d" * 200))


@pytest.mark.parametrize("at", [AT, AT.replace(microsecond=0), AT.replace(microsecond=1)])
def test_stamp_is_how_the_contract_writes_a_utc_time(at: datetime) -> None:
    assert f'"{outbox_rows.stamp(at)}"'.encode() == TypeAdapter(datetime).dump_json(at)
    assert TypeAdapter(datetime).validate_json(f'"{outbox_rows.occurred_now()}"').tzinfo is not None


def test_event_ids_are_distinct_version_4_uuids() -> None:
    assert outbox_rows.event_ids(0) == []
    ids = outbox_rows.event_ids(2_000)
    assert len(set(ids)) == len(ids) == 2_000
    for s in ids:
        u = uuid.UUID(s)
        assert (u.version, u.variant, str(u)) == (4, uuid.RFC_4122, s)


_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,99}", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(payment_id=_IDS, episode_id=_IDS, amount=st.integers(1, 10_000_000_000), at_risk_bps=st.integers(0, 10_000),
       in_trial=st.booleans(), model=st.sampled_from(domain.HOLD_MODELS),
       correlation_id=st.text(min_size=1, max_size=200).filter(lambda s: "\x00" not in s),
       causation_id=st.none() | st.uuids().map(str))
def test_planned_rows_property(payment_id: str, episode_id: str, amount: int, at_risk_bps: int, in_trial: bool,
                               model: domain.HoldModel, correlation_id: str, causation_id: str | None) -> None:
    scheme = SCHEME.model_copy(update={"at_risk_bps": at_risk_bps}) if in_trial else None
    e = domain.new_episode(payment_id=payment_id, episode_id=episode_id, commissioner_code="QWE", provider_code="RJ1",
                           region_code="Y56", service_type="gp", activity_date=date(2026, 5, 10), amount_pence=amount,
                           scheme=scheme, hold_model=model)
    plan = domain.payment_plan(e)
    assert tuple(p.request() for p in plan) == domain.payment_transfers(e)
    ids = outbox_rows.event_ids(len(plan))
    rows = outbox_rows.planned_rows(plan, correlation_id=correlation_id, causation_id=causation_id, event_ids=ids,
                                    occurred_at=outbox_rows.stamp(AT))
    for row, p, event_id in zip(rows, plan, ids, strict=True):
        assert_same(row, *reference(p.request(), correlation_id, causation_id, event_id))


# -- settlement: planned as plain values, rows by hand (store.settle_unit) ------------------------
# (released, diverted) of a 10,000p hold: release in full, in part (with a diversion), void (all
# diverted); and an episode with nothing at risk, which settles with no transfer.
SPLITS = [(10_000, 0), (4_000, 6_000), (0, 10_000)]


@pytest.mark.parametrize("model", domain.HOLD_MODELS)
@pytest.mark.parametrize("released,diverted", SPLITS)
def test_settlement_plan_is_what_settlement_transfers_build(model: domain.HoldModel, released: int, diverted: int) -> None:
    e = ep(model)
    plan = domain.settlement_plan(e, released_pence=released, diverted_pence=diverted)
    assert tuple(p.request() for p in plan) == domain.settlement_transfers(
        e, released_pence=released, diverted_pence=diverted, period=e.period)
    assert all(p.episode == e for p in plan)


def test_settlement_plan_covers_every_settlement_kind() -> None:
    seen = {(p.kind, p.cause_kind, bool(p.legs), p.pending_id is not None)
            for model in domain.HOLD_MODELS for released, diverted in SPLITS
            for p in domain.settlement_plan(ep(model), released_pence=released, diverted_pence=diverted)}
    assert seen == {
        ("posted", "settlement", True, False),  # held_account: held -> provider + fund
        ("post_pending", "release", False, True), ("post_pending", "release", True, True),  # in full, in part
        ("void_pending", "release", False, True), ("posted", "diversion", True, False),
    }


@pytest.mark.parametrize("model", domain.HOLD_MODELS)
def test_nothing_at_risk_settles_with_no_transfer(model: domain.HoldModel) -> None:
    e = ep(model, scheme=SCHEME.model_copy(update={"at_risk_bps": 0}))
    assert domain.settlement_plan(e, released_pence=0, diverted_pence=0) == ()
    with pytest.raises(InvariantError):
        domain.settlement_plan(ep(model), released_pence=1, diverted_pence=1)  # held = released + diverted


@pytest.mark.parametrize("correlation_id,causation_id", TRACES)
def test_settlement_rows_equal_the_contract_rows(correlation_id: str, causation_id: str | None) -> None:
    """A unit's rows in one call, several payments: each keyed by its own payment id."""
    episodes = [domain.new_episode(payment_id=f"pay-{i}", episode_id=f"ep-{i}", commissioner_code="QWE",
                                   provider_code="RJ1", region_code="Y56", service_type="inpatient",
                                   activity_date=date(2026, 5, 10), amount_pence=100_000, scheme=SCHEME, hold_model=model)
                for i, model in enumerate(domain.HOLD_MODELS * 3)]
    plan, reference_transfers = [], []
    for e, (released, diverted) in zip(episodes, SPLITS * 2):
        plan += domain.settlement_plan(e, released_pence=released, diverted_pence=diverted)
        reference_transfers += domain.settlement_transfers(e, released_pence=released, diverted_pence=diverted,
                                                           period=e.period)
    ids = outbox_rows.event_ids(len(plan))
    rows = outbox_rows.planned_rows(plan, correlation_id=correlation_id, causation_id=causation_id, event_ids=ids,
                                    occurred_at=outbox_rows.stamp(AT))
    assert len(rows) == len(reference_transfers) == 8
    for row, t, event_id in zip(rows, reference_transfers, ids, strict=True):
        assert_same(row, *reference(t, correlation_id, causation_id, event_id))
        contract = outbox_rows.contract_row(t, correlation_id=correlation_id, causation_id=causation_id,
                                            event_id=event_id, occurred_at=outbox_rows.stamp(AT))
        assert row == contract  # what settle_unit wrote before, through the contract


def test_planned_two_phase_steps_keep_the_contract_shape() -> None:
    e = ep()
    with pytest.raises(InvariantError, match="pending"):
        domain._planned("release:pay-1", "post_pending", (), "release", e)  # names no pending hold
    with pytest.raises(InvariantError, match="no legs"):
        domain._planned("release:pay-1", "void_pending", (("commissioner:QWE", -5), ("provider:RJ1", 5)), "release", e,
                        "hold:pay-1")
    with pytest.raises(InvariantError, match="sum to zero"):
        domain._planned("release:pay-1", "post_pending", (("commissioner:QWE", -5), ("provider:RJ1", 4)), "release", e,
                        "hold:pay-1")
    with pytest.raises(InvariantError, match="no pending id"):
        domain._planned("divert:pay-1", "posted", (("commissioner:QWE", -5), ("fund:Y56", 5)), "diversion", e,
                        "hold:pay-1")


@settings(max_examples=150, deadline=None)
@given(payment_id=_IDS, episode_id=_IDS, amount=st.integers(1, 10_000_000_000), at_risk_bps=st.integers(0, 10_000),
       released_share=st.floats(0, 1), model=st.sampled_from(domain.HOLD_MODELS),
       correlation_id=st.text(min_size=1, max_size=200).filter(lambda s: "\x00" not in s))
def test_settlement_rows_property(payment_id: str, episode_id: str, amount: int, at_risk_bps: int, released_share: float,
                                  model: domain.HoldModel, correlation_id: str) -> None:
    e = domain.new_episode(payment_id=payment_id, episode_id=episode_id, commissioner_code="QWE", provider_code="RJ1",
                           region_code="Y56", service_type="gp", activity_date=date(2026, 5, 10), amount_pence=amount,
                           scheme=SCHEME.model_copy(update={"at_risk_bps": at_risk_bps}), hold_model=model)
    released = int(e.at_risk_pence * released_share)
    diverted = e.at_risk_pence - released
    plan = domain.settlement_plan(e, released_pence=released, diverted_pence=diverted)
    want = domain.settlement_transfers(e, released_pence=released, diverted_pence=diverted, period=e.period)
    assert tuple(p.request() for p in plan) == want
    ids = outbox_rows.event_ids(len(plan))
    rows = outbox_rows.planned_rows(plan, correlation_id=correlation_id, causation_id=None, event_ids=ids,
                                    occurred_at=outbox_rows.stamp(AT))
    for row, t, event_id in zip(rows, want, ids, strict=True):
        assert_same(row, *reference(t, correlation_id, None, event_id))
