"""The payments command handlers (services/payments/handlers.py) over the in-memory store port.

What the handlers promise, in milliseconds: one outcome per command in order, whatever the batch
(a single HTTP request is a batch of one); duplicates and conflicts within and across batches;
nothing written for a rejection; a race with another writer retried on a fresh view; answers and
the ledger's answers (reconciliation); settlement once per unit, one unit of work each, late
units released in full; appeals with separation of duties; metrics only after commit, only for
new facts. tests/integration/test_payments_store.py holds the PostgreSQL adapter to the fake's behaviour.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.payments import domain
from services.payments.domain import InputError, NotFound, NotYet, Refused, SameActor
from services.payments.handlers import AcceptPayment, DecideAppeal, OpenAppeal, RunSettlement
from services.payments.intake import Accepted, Conflict
from services.payments.ports import EpisodeRow
from services.payments.schemes import Scheme, SchemeBook, Scope
from shared.contracts import FeedbackReceived, PaymentRequested, TransferPosted
from shared.reference import load_reference
from shared.uow import Raced
from tests.unit.fakes_payments import EpisodeRecord, FakePayments, State

REF = load_reference()
TODAY = date(2026, 12, 2)
ACTIVITY = date(2026, 9, 10)  # its period's decision windows have closed by TODAY
PERIOD = "2026-09"
START = date(2020, 1, 1)
BOOK = SchemeBook([
    Scheme(scheme_id="open", version=1, title="No safeguards", effective_from=START, min_responses_per_period=0,
           cap_bps=1_000, scope=Scope(providers=("RJ1",))),
    Scheme(scheme_id="capped", version=1, title="A cap", effective_from=START, min_responses_per_period=0, cap_bps=20,
           scope=Scope(providers=("RRV",))),
])


def world(**kw: Any) -> FakePayments:
    return FakePayments(book=BOOK, ref=REF, today=TODAY, **kw)


def req(n: int | str = 1, **overrides: Any) -> PaymentRequested:
    body = {"payment_id": f"pay-{n}", "episode_id": f"ep-{n}", "commissioner_code": "QWE", "provider_code": "RJ1",
            "service_type": "maternity", "activity_date": ACTIVITY, "amount_pence": 100_000}
    return PaymentRequested.model_validate({**body, **overrides})


def cmd(r: PaymentRequested, cid: str = "c", cause: str | None = None) -> AcceptPayment:
    return AcceptPayment(r, cid, cause)


def answer(sid: str, episode: int | str = 1, fft: int = 5, *, days: int = 3, instrument: str = "fft",
           provider: str = "RJ1") -> FeedbackReceived:
    body: dict[str, Any] = {"submission_id": sid, "episode_id": f"ep-{episode}", "provider_code": provider,
                            "patient_pseudonym": "a" * 64, "instrument": instrument,
                            "authored_at": datetime(ACTIVITY.year, ACTIVITY.month, ACTIVITY.day, 10, tzinfo=timezone.utc)
                            + timedelta(days=days)}
    if instrument == "fft":
        body["fft_answer"] = fft
    if instrument == "patient_power":
        body["patient_choice"] = "hold_back"
    return FeedbackReceived.model_validate(body)


def kinds(outcomes: list[Any]) -> list[str]:
    return [o.status if isinstance(o, Accepted) else type(o).__name__ for o in outcomes]


def outbox(w: FakePayments) -> list[dict[str, Any]]:
    return [json.loads(r[2]) for r in w.state.outbox]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def billed() -> float:
    return metric("payments_billed_pence_total", region_code="Y56")


# ---------------------------------------------------------------------------------------------
# Payment requests
# ---------------------------------------------------------------------------------------------
async def test_a_batch_gets_one_outcome_per_request_in_order() -> None:
    w = world()
    before = billed()
    batch = [cmd(req(1), "c1", "ev1"), cmd(req(2, provider_code="ZZZ")), cmd(req(1), "c1b"), cmd(req(1, amount_pence=5)),
             cmd(req(3, amount_pence=9), "c3"), cmd(req(4, activity_date=TODAY + timedelta(days=3)))]
    outcomes = await w.handlers.accept_payments(batch)
    assert kinds(outcomes) == ["created", "InputError", "duplicate", "Conflict", "created", "InputError"]
    assert outcomes[0] == Accepted("pay-1", "ep-1", "created", "held", 10_000, "open", 1, "hold:pay-1", ("pay:pay-1", "hold:pay-1"))
    assert outcomes[2] == Accepted("pay-1", "ep-1", "duplicate", "held", 10_000, "open", 1, "hold:pay-1", ("pay:pay-1", "hold:pay-1"))
    assert isinstance(outcomes[3], Conflict) and "amount_pence" in str(outcomes[3])
    assert isinstance(outcomes[1], InputError) and outcomes[1].field == "provider_code"
    assert (w.uow.commits, w.uow.rollbacks) == (1, 0)  # one unit of work
    assert set(w.state.episodes) == {"ep-1", "ep-3"}
    assert w.state.episodes["ep-1"].row.correlation_id == "c1" and w.state.episodes["ep-3"].status == "paid_in_full"
    # The transfers: pay + pending hold for ep-1, only pay for ep-3 (nothing at risk), each traced.
    events = outbox(w)
    assert [(e["data"]["transfer_id"], e["data"]["kind"], e["correlation_id"], e["causation_id"]) for e in events] == [
        ("pay:pay-1", "posted", "c1", "ev1"), ("hold:pay-1", "pending", "c1", "ev1"), ("pay:pay-3", "posted", "c3", None)]
    assert {t: (v["kind"], v["expected_status"]) for t, v in w.state.transfers.items()} == {
        "pay:pay-1": ("payment", "posted"), "hold:pay-1": ("payment_hold", "pending"), "pay:pay-3": ("payment", "posted")}
    assert billed() - before == 100_009  # new payments only, after the commit


async def test_a_single_request_is_a_batch_of_one_with_the_same_outcomes() -> None:
    w = world()
    for r, want in ((req(1), "created"), (req(1), "duplicate"), (req(1, amount_pence=1), "Conflict"),
                    (req(2, commissioner_code="QQQ"), "InputError"), (req(2, provider_code="RTD"), "InputError")):
        assert kinds(await w.handlers.accept_payments([cmd(r)])) == [want]
    assert w.uow.commits == 5 and len(w.state.outbox) == 2


async def test_duplicates_and_conflicts_across_batches_write_nothing() -> None:
    w = world(hold_model="held_account")
    await w.handlers.accept_payments([cmd(req(1)), cmd(req(2))])
    before = json.dumps(outbox(w)), dict(w.state.transfers), billed()
    again = await w.handlers.accept_payments([cmd(req(2)), cmd(req(1)), cmd(req(1, episode_id="ep-9")),
                                              cmd(req(9, episode_id="ep-1"))])
    assert kinds(again) == ["duplicate", "duplicate", "Conflict", "Conflict"]
    assert again[0].transfer_ids == ("hold:pay-2",)  # type: ignore[union-attr] # held-account: one transfer
    assert "episode_id" in str(again[2]) and "payment_id" in str(again[3])
    assert (json.dumps(outbox(w)), dict(w.state.transfers), billed()) == before


async def test_an_old_accepted_payment_replayed_stays_a_duplicate() -> None:
    old = req(1, activity_date=date(2025, 1, 10))
    w = world()
    w.now = datetime(2025, 1, 11, 9, tzinfo=timezone.utc)
    assert kinds(await w.handlers.accept_payments([cmd(old)])) == ["created"]
    w.now = datetime(2027, 6, 1, 9, tzinfo=timezone.utc)  # more than 730 days after the activity date
    assert kinds(await w.handlers.accept_payments([cmd(old), cmd(req(2, activity_date=date(2025, 1, 10)))])) == [
        "duplicate", "InputError"]


async def test_a_race_with_another_writer_is_run_again_on_a_fresh_view() -> None:
    w = world()
    rival_request = req(2, amount_pence=5_000)

    def rival(state: State) -> None:  # another instance commits pay-2 after this batch has read
        e = domain.episode_for_request(rival_request, region="Y56", book=BOOK, hold_model="two_phase")
        state.episodes["ep-2"] = EpisodeRecord(EpisodeRow(e, "other-fingerprint", rival_request.model_dump_json(), "held",
                                                          "rival"), "held")

    w.rivals["insert_episodes"] = rival
    before = billed()
    outcomes = await w.handlers.accept_payments([cmd(req(1)), cmd(req(2)), cmd(req(3))])
    assert kinds(outcomes) == ["created", "Conflict", "created"] and "amount_pence" in str(outcomes[1])
    assert (w.uow.rollbacks, w.uow.commits) == (1, 1)  # the first pass rolled back whole
    assert sorted(w.state.episodes) == ["ep-1", "ep-2", "ep-3"] and w.state.episodes["ep-2"].row.correlation_id == "rival"
    assert sorted(e["data"]["transfer_id"] for e in outbox(w)) == ["hold:pay-1", "hold:pay-3", "pay:pay-1", "pay:pay-3"]
    assert billed() - before == 200_000  # counted once, for what committed


async def test_a_race_on_every_attempt_gives_up_with_nothing_written() -> None:
    w = world()
    real = w.uow._tx_of

    async def insert_taken(rows: Any) -> int:
        return 0  # every insert finds its ids taken by another writer

    def tx_of(draft: State) -> Any:
        tx = real(draft)
        tx.insert_episodes = insert_taken
        return tx

    w.uow._tx_of = tx_of
    with pytest.raises(Raced):
        await w.handlers.accept_payments([cmd(req(5))])
    assert (w.uow.commits, w.uow.rollbacks) == (0, 3) and w.state.outbox == [] and w.state.transfers == {}


async def test_payments_and_answers_of_one_consumer_batch_are_one_unit_of_work() -> None:
    w = world()
    outcomes, recorded = await w.handlers.record_episode_events(
        [cmd(req(1)), cmd(req(1, amount_pence=3))],
        [answer("s0", 1), answer("s1", 2), answer("s0", 1), answer("s2", 1, instrument="eq5d5l"),
         answer("s3", 1, instrument="patient_power")])
    assert kinds(outcomes) == ["created", "Conflict"]
    assert recorded == [True, True, False, False, True]  # the answer of ep-2 comes before its payment: kept
    assert w.uow.commits == 1 and set(w.state.answers) == {"s0", "s1", "s3"}
    assert await w.handlers.record_answers([answer("s0", 1), answer("s4", 1)]) == [False, True]
    assert await w.handlers.record_answers([]) == [] and await w.handlers.accept_payments([]) == []


# ---------------------------------------------------------------------------------------------
# The ledger's answers (reconciliation)
# ---------------------------------------------------------------------------------------------
async def test_the_ledgers_answers_are_reconciled_and_a_discrepancy_counted_once() -> None:
    w = world()
    await w.handlers.accept_payments([cmd(req(1)), cmd(req(2))])
    counted = metric("payments_ledger_discrepancies_total")
    found = await w.handlers.record_ledger_answers([
        TransferPosted(transfer_id="pay:pay-1", status="posted", entry_seq=1),
        TransferPosted(transfer_id="hold:pay-1", status="pending", entry_seq=2),
        TransferPosted(transfer_id="pay:pay-2", status="posted", entry_seq=3),
        TransferPosted(transfer_id="pay:pay-2", status="rejected", reason="late"),  # posted is final
        TransferPosted(transfer_id="hold:pay-2", status="rejected", reason="floor"),
        TransferPosted(transfer_id="nobody:asked", status="posted", entry_seq=4),
    ])
    assert found == [("hold:pay-2", "the ledger answered rejected, expected pending: floor")]
    t = w.state.transfers
    assert {k: (v["status"], v["entry_seq"]) for k, v in t.items()} == {
        "pay:pay-1": ("posted", 1), "hold:pay-1": ("pending", 2), "pay:pay-2": ("posted", 3), "hold:pay-2": ("rejected", None)}
    assert t["hold:pay-2"]["discrepancy"] == found[0][1]
    # Redelivered: the same end state, no second discrepancy.
    assert await w.handlers.record_ledger_answers([TransferPosted(transfer_id="hold:pay-2", status="rejected", reason="floor")]) == []
    assert metric("payments_ledger_discrepancies_total") - counted == 1


# ---------------------------------------------------------------------------------------------
# Settlement
# ---------------------------------------------------------------------------------------------
def settle_cmd(**kw: Any) -> RunSettlement:
    return RunSettlement(**{"period": PERIOD, "run_by": "finance.lead", "correlation_id": "settle-1", **kw})


async def month(w: FakePayments) -> None:
    """RJ1: two very poor, one good, one unanswered; RRV (a cap that bites): two very poor."""
    await w.handlers.accept_payments([cmd(req(i)) for i in range(4)]
                                     + [cmd(req(f"r{i}", commissioner_code="QMJ", provider_code="RRV")) for i in range(2)])
    await w.handlers.record_answers([answer("s0", 0), answer("s1", 1), answer("s2", 2, fft=1),
                                     answer("sr0", "r0", provider="RRV"), answer("sr1", "r1", provider="RRV")])


async def test_settlement_settles_each_unit_once_in_its_own_unit_of_work() -> None:
    w = world()
    await month(w)
    commits, units_before = w.uow.commits, metric("settlement_duration_seconds_count")
    reports = await w.handlers.run_settlement(settle_cmd())
    assert [(r["settlement_id"], r["held_pence"], r["released_pence"], r["diverted_pence"], r["cap_applied"]) for r in reports] == [
        ("RJ1:2026-09:open@1", 40_000, 20_000, 20_000, False), ("RRV:2026-09:capped@1", 20_000, 19_600, 400, True)]
    assert w.uow.commits - commits == 3  # the units read, then one unit of work per unit
    assert metric("settlement_duration_seconds_count") - units_before == 2
    for r in w.state.episodes.values():  # held = released + diverted, per episode
        assert r.status == "settled" and r.released_pence + r.diverted_pence == r.row.episode.at_risk_pence  # type: ignore[operator]
    assert w.state.settlements["RJ1:2026-09:open@1"]["run_by"] == "finance.lead"
    ep0 = w.state.episodes["ep-0"]
    assert ep0.decision["transfer_ids"] == ["release:pay-0", "divert:pay-0"]  # type: ignore[index]
    settled = [e for e in outbox(w) if e["data"]["cause"]["kind"] in ("release", "diversion")]
    assert {(e["data"]["transfer_id"], e["data"]["kind"]) for e in settled if "pay-0" in e["data"]["transfer_id"]} == {
        ("release:pay-0", "void_pending"), ("divert:pay-0", "posted")}
    assert {e["correlation_id"] for e in settled} == {"settle-1"} and {e["causation_id"] for e in settled} == {None}
    assert w.state.transfers["release:pay-0"]["expected_status"] == "voided"
    # Again: nothing held, nothing new.
    rows = len(w.state.outbox)
    assert await w.handlers.run_settlement(settle_cmd()) == [] and len(w.state.outbox) == rows


async def test_late_episodes_are_settled_apart_and_released_in_full() -> None:
    w = world()
    await month(w)
    await w.handlers.run_settlement(settle_cmd())
    await w.handlers.accept_payments([cmd(req("late-a")), cmd(req("late-b"))])
    await w.handlers.record_answers([answer("sl", "late-a")])  # very poor, but the period has closed
    (late,) = await w.handlers.run_settlement(settle_cmd())
    assert (late["settlement_id"], late["diverted_pence"], late["released_pence"]) == ("RJ1:2026-09:open@1:late-1", 0, 20_000)
    assert any("late episode released in full" in s for s in w.state.episodes["ep-late-a"].decision["steps"])  # type: ignore[index]
    await w.handlers.accept_payments([cmd(req("later"))])
    (later,) = await w.handlers.run_settlement(settle_cmd())
    assert later["settlement_id"] == "RJ1:2026-09:open@1:late-2"


async def test_settlement_refuses_a_period_whose_windows_are_open_and_settles_only_whom_it_may() -> None:
    w = world()
    await month(w)
    with pytest.raises(NotYet) as caught:
        await w.handlers.run_settlement(settle_cmd(period="2026-11"))
    assert caught.value.opens_on == date(2027, 1, 26)  # 30 Nov + 56 days + 1
    reports = await w.handlers.run_settlement(settle_cmd(may_settle=lambda ods: ods == "RRV"))
    assert [r["provider_code"] for r in reports] == ["RRV"]
    assert [r["provider_code"] for r in await w.handlers.run_settlement(settle_cmd(region_code="Y56"))] == ["RJ1"]


async def test_a_unit_whose_scheme_is_gone_is_refused_and_a_racing_run_is_retried() -> None:
    w = world()
    await month(w)
    w.handlers.book = SchemeBook([s for s in BOOK.schemes if s.scheme_id == "open"])
    with pytest.raises(InputError, match="capped@1 is no longer loaded"):
        await w.handlers.run_settlement(settle_cmd())
    assert w.state.episodes["ep-0"].status == "settled"  # the unit before it committed
    w.handlers.book = BOOK

    def rival(state: State) -> None:  # another run wrote RRV's report between this unit's read and its insert
        state.settlements["RRV:2026-09:capped@1"] = {"provider_code": "RRV", "scheme_id": "capped", "scheme_version": 1,
                                                     "period": PERIOD, "run_at": w.now}
        for r in state.episodes.values():
            if r.row.episode.provider_code == "RRV":
                r.status = "settled"

    w.rivals["insert_settlement"] = rival
    rollbacks = w.uow.rollbacks
    assert await w.handlers.run_settlement(settle_cmd()) == []  # run again: nothing held any more
    assert w.uow.rollbacks - rollbacks == 1


# ---------------------------------------------------------------------------------------------
# Appeals
# ---------------------------------------------------------------------------------------------
async def settled_month(w: FakePayments) -> None:
    await month(w)
    await w.handlers.run_settlement(settle_cmd())


async def test_an_appeal_is_opened_once_and_decided_by_someone_else() -> None:
    w = world()
    await settled_month(w)
    back = metric("payments_appealed_back_pence_total", region_code="Y56")
    opened = await w.handlers.open_appeal(OpenAppeal("ep-0", "trust.lead", "miscoded"))
    assert opened.changed and opened.appeal["status"] == "open" and opened.appeal["diverted_pence"] == 10_000
    assert opened.appeal["deadline"] == w.now + timedelta(days=30)
    again = await w.handlers.open_appeal(OpenAppeal("ep-0", "trust.lead", "miscoded"))
    assert not again.changed and again.appeal == opened.appeal
    with pytest.raises(Refused, match=r"already has an appeal \(open\)"):
        await w.handlers.open_appeal(OpenAppeal("ep-0", "trust.lead", "another reason"))
    with pytest.raises(SameActor):
        await w.handlers.decide_appeal(DecideAppeal("ep-0", "upheld", "trust.lead", "mine", "c-own"))
    upheld = await w.handlers.decide_appeal(DecideAppeal("ep-0", "upheld", "panel", "agreed", "c-panel"))
    assert upheld.changed and upheld.appeal["transfer_id"] == "appeal:pay-0"
    assert [(h["step"], h["actor"]) for h in upheld.appeal["history"]] == [("appealed", "trust.lead"), ("upheld", "panel")]
    (event,) = [e for e in outbox(w) if e["data"]["transfer_id"] == "appeal:pay-0"]
    assert (event["correlation_id"], event["causation_id"]) == ("c-panel", "appeal:pay-0")
    assert [(leg["account_id"], leg["amount_pence"]) for leg in event["data"]["legs"]] == [("fund:Y56", -10_000), ("provider:RJ1", 10_000)]
    assert w.state.transfers["appeal:pay-0"]["kind"] == "appeal_upheld"
    same = await w.handlers.decide_appeal(DecideAppeal("ep-0", "upheld", "panel", "agreed", "c-panel"))
    assert not same.changed
    with pytest.raises(Refused, match="already upheld"):
        await w.handlers.decide_appeal(DecideAppeal("ep-0", "rejected", "panel", "no", "c"))
    assert metric("payments_appealed_back_pence_total", region_code="Y56") - back == 10_000  # once


async def test_appeals_the_rules_refuse() -> None:
    w = world()
    await settled_month(w)
    await w.handlers.accept_payments([cmd(req("fresh"))])
    for episode, why in (("ep-2", "nothing was diverted"), ("ep-3", "nothing was diverted"),  # good answer; unanswered
                         ("ep-fresh", "only a settled episode")):
        with pytest.raises(Refused, match=why):
            await w.handlers.open_appeal(OpenAppeal(episode, "trust.lead", "why"))
    with pytest.raises(NotFound):
        await w.handlers.open_appeal(OpenAppeal("ep-none", "trust.lead", "why"))
    with pytest.raises(NotFound):
        await w.handlers.decide_appeal(DecideAppeal("ep-1", "upheld", "panel", "no appeal", "c"))
    w.advance(days=30, seconds=1)
    with pytest.raises(Refused, match="appeal window"):
        await w.handlers.open_appeal(OpenAppeal("ep-1", "trust.lead", "too late"))
    rejected_w = world()
    await settled_month(rejected_w)
    await rejected_w.handlers.open_appeal(OpenAppeal("ep-1", "trust.lead", "why"))
    r = await rejected_w.handlers.decide_appeal(DecideAppeal("ep-1", "rejected", "panel", "answer stands", "c"))
    assert r.changed and r.appeal["status"] == "rejected" and r.appeal["transfer_id"] is None
    assert not [e for e in outbox(rejected_w) if e["data"]["transfer_id"].startswith("appeal:")]


def test_no_default_hold_model_hides_in_the_core() -> None:
    import inspect

    for fn in (domain.new_episode, domain.episode_for_request):
        assert inspect.signature(fn).parameters["hold_model"].default is inspect.Parameter.empty
    assert domain.DEFAULT_HOLD_MODEL == "two_phase"
    from services.payments.settings import PaymentsSettings
    from services.payments.whatif import replay

    assert PaymentsSettings.model_fields["ledger_hold_model"].default == domain.DEFAULT_HOLD_MODEL
    assert inspect.signature(replay).parameters["hold_model"].default == domain.DEFAULT_HOLD_MODEL


async def test_a_batch_beyond_the_limit_is_refused_before_anything_is_read() -> None:
    from services.payments.handlers import MAX_BATCH_COMMANDS

    w = world()
    with pytest.raises(ValueError, match="at most"):
        await w.handlers.accept_payments([cmd(req(1))] * (MAX_BATCH_COMMANDS + 1))
    assert w.calls["stored_episodes"] == 0 and w.uow.commits == 0
