"""The funds service's one write path (services/funds/handlers.py) on an in-memory store, its
transfer requests answered by the real ledger's pure core (tests/unit/fakes_funds.LedgerModel):
proposals, maker-checker, reservations, payments, cancellation, redeliveries, and the tallies."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from services.funds import domain
from services.funds.handlers import Answered, Cancel, Decide, FundsHandlers, MarkMet, Propose
from services.ledger import admission
from shared.contracts import Envelope, FeedbackReceived, TransferPosted
from shared.uow import FakeUnitOfWork
from tests.unit.fakes_funds import REF, T0, FakeFundsTx, FundsState, LedgerModel, grant_events, transfers_in
from tests.unit.test_funds_domain import CHECKER, MAKER, MANAGER, proposal

pytestmark = pytest.mark.asyncio


class Harness:
    def __init__(self, fund_pence: int) -> None:
        self.uow = FakeUnitOfWork(FundsState(), FakeFundsTx)
        self.h = FundsHandlers(self.uow, ref=REF, limits=domain.Limits(), clock=lambda: T0)
        self.ledger = LedgerModel()
        self.ledger.fund("Y56", fund_pence, "divert:seed")
        self.sent = 0
        self.answers: list[TransferPosted] = []

    @property
    def state(self) -> FundsState:
        return self.uow.state

    def grant(self, gid: str) -> domain.Grant:
        return self.state.grants[gid]

    def new_rows(self) -> list:
        rows = self.state.outbox[self.sent:]
        self.sent = len(self.state.outbox)
        return rows

    async def round_trip(self) -> list[TransferPosted]:
        """New transfer requests to the ledger (one batch, in outbox order), its answers back."""
        rows = self.new_rows()
        requests = []
        for req, producer in transfers_in(rows):
            assert producer == "funds" and admission.refusal(req, producer, REF) is None
            requests.append(req)
        answers = self.ledger.post(requests) if requests else []
        self.answers.extend(answers)
        await self.h.record_ledger_answers([Answered(a, "c-ledger", f"e-{i}") for i, a in enumerate(answers)])
        return answers

    async def settle(self) -> None:
        for _ in range(5):  # follow-ups (voids after a refusal) take another trip
            if not await self.round_trip():
                return


def visible(_g: domain.Grant) -> bool:
    return True


def decide(gid: str, actor: str, outcome: str = "approved") -> Decide:
    return Decide(gid, outcome, "meets the fund's criteria", actor, visible, "c-decide")  # type: ignore[arg-type]


async def test_propose_approve_reserve_and_pay_two_milestones() -> None:
    t = Harness(100_000)
    g, created = await t.h.propose(Propose(proposal(), MAKER, "c-propose"))
    assert created and g.status == "proposed"
    again, created = await t.h.propose(Propose(proposal(), MAKER, "c-propose"))
    assert not created and again == g
    with pytest.raises(domain.Conflict):
        await t.h.propose(Propose(proposal(title="Another project"), MAKER, "c"))
    with pytest.raises(domain.Conflict):  # the same proposal by someone else: the id is taken
        await t.h.propose(Propose(proposal(), "someone.else", "c"))
    [(type_, event)] = grant_events(t.new_rows())
    assert type_ == "funds.grant-proposed.v1" and event["proposed_by"] == MAKER and "title" not in event  # no free text

    commits = t.uow.commits
    with pytest.raises(domain.SameActor):
        await t.h.decide(decide("g1", MAKER))
    assert t.uow.commits == commits  # nothing written for a refusal

    change = await t.h.decide(decide("g1", CHECKER))
    assert change.grant.status == "reserving"
    rows = t.state.outbox[t.sent:]
    assert [r[1] for r in rows if r[0] == "ledger.transfer-requests.v1"] == [b"g1", b"g1"]  # keyed by the grant: in order
    assert json.loads(rows[0][3])["correlation_id"] == "c-decide"
    await t.settle()
    assert t.grant("g1").status == "reserved"
    assert t.ledger.balance("fund:Y56").pending_debits_pence == 60_000 and t.ledger.available("fund:Y56") == 40_000
    events = [e for e, _ in grant_events(t.state.outbox)]
    assert events == ["funds.grant-proposed.v1", "funds.grant-decided.v1", "funds.grant-reserved.v1"]

    # the ledger's answers again (a redelivered batch): nothing changes, nothing is sent
    before = (t.state.grants["g1"], len(t.state.outbox))
    await t.h.record_ledger_answers([Answered(a, "c", "e") for a in t.answers])
    assert (t.state.grants["g1"], len(t.state.outbox)) == before

    with pytest.raises(domain.SameActor):
        await t.h.mark_met(MarkMet("g1", 1, "done", MAKER, visible, "c"))
    for n in (1, 2):
        await t.h.mark_met(MarkMet("g1", n, f"milestone {n} evidence", MANAGER, visible, "c-met"))
        await t.settle()
    g = t.grant("g1")
    assert g.status == "completed" and [m.status for m in g.milestones] == ["paid", "paid"]
    assert t.ledger.balance("provider:RJ1").posted_pence == 25_000 and t.ledger.balance("provider:RRV").posted_pence == 35_000
    assert t.ledger.balance("fund:Y56").posted_pence == 40_000 and t.ledger.total() == 0
    paid = [e for e in grant_events(t.state.outbox) if e[0] == "funds.milestone-paid.v1"]
    assert [(e["n"], e["met_by"], e["grant_status"]) for _, e in paid] == [(1, MANAGER, "reserved"), (2, MANAGER, "completed")]
    steps = [(s.step, s.actor) for s in t.state.steps["g1"]]
    assert steps == [("proposed", MAKER), ("approved", CHECKER), ("reserved", "ledger"), ("milestone_met", MANAGER),
                     ("milestone_paid", "ledger"), ("milestone_met", MANAGER), ("milestone_paid", "ledger"),
                     ("completed", "ledger")]


async def test_a_grant_outside_the_binding_is_not_found_and_a_cancel_voids_the_unpaid_rest() -> None:
    t = Harness(100_000)
    await t.h.propose(Propose(proposal(amounts=(20_000, 30_000, 10_000), providers=("RJ1",)), MAKER, "c"))
    with pytest.raises(domain.NotFound):
        await t.h.decide(Decide("g1", "approved", "ok", CHECKER, lambda g: False, "c"))
    with pytest.raises(domain.NotFound):
        await t.h.decide(decide("nope", CHECKER))
    await t.h.decide(decide("g1", CHECKER))
    await t.settle()
    await t.h.mark_met(MarkMet("g1", 1, "done", MANAGER, visible, "c"))
    await t.settle()
    change = await t.h.cancel(Cancel("g1", "the ward closed", MANAGER, visible, "c"))
    assert [tr.transfer_id for tr in change.transfers] == ["grant:g1:m2:void", "grant:g1:m3:void"]
    await t.settle()
    g = t.grant("g1")
    m = domain.money(g)
    assert g.status == "cancelled" and (m.paid_pence, m.released_pence, m.committed_pence) == (20_000, 40_000, 0)
    assert t.ledger.available("fund:Y56") == 80_000 and t.ledger.balance("fund:Y56").pending_debits_pence == 0
    assert not (await t.h.cancel(Cancel("g1", "again", MANAGER, visible, "c"))).changed


async def test_two_approvals_that_exceed_the_fund_reserve_one_and_refuse_the_other() -> None:
    t = Harness(100_000)
    await t.h.propose(Propose(proposal("a", amounts=(40_000, 30_000)), MAKER, "c"))
    await t.h.propose(Propose(proposal("b", amounts=(30_000, 30_000)), MAKER, "c"))
    t.new_rows()
    await t.h.decide(decide("a", CHECKER))
    await t.h.decide(decide("b", "checker2@y56"))
    await t.settle()  # both grants' reservations reach the ledger in one batch
    assert (t.grant("a").status, t.grant("b").status) == ("reserved", "refused")
    assert [m.status for m in t.grant("b").milestones] == ["released", "refused"]
    assert t.ledger.balance("fund:Y56").pending_debits_pence == 70_000
    reserved = [e for e in grant_events(t.state.outbox) if e[0] == "funds.grant-reserved.v1"]
    assert [(e["grant_id"], e["outcome"]) for _, e in reserved] == [("a", "reserved"), ("b", "refused")]
    assert "below its floor" in (reserved[1][1]["reason"] or "")
    step = next(s for s in t.state.steps["b"] if s.step == "refused_by_ledger")
    assert step.actor == "ledger" and (step.reason or "").startswith("insufficient funds")


async def test_unexpected_answers_are_recorded_as_discrepancies_and_unknown_grants_ignored() -> None:
    t = Harness(100_000)
    await t.h.propose(Propose(proposal(), MAKER, "c"))
    await t.h.decide(decide("g1", CHECKER))
    await t.settle()
    odd = TransferPosted(transfer_id="grant:g1:m1:pay", status="posted", entry_seq=99, entry_hash="0" * 64)  # never requested
    other = TransferPosted(transfer_id="grant:elsewhere:m1", status="pending", entry_seq=5, entry_hash="0" * 64)
    payments = TransferPosted(transfer_id="hold:pay-1", status="pending", entry_seq=6, entry_hash="0" * 64)
    changes = await t.h.record_ledger_answers([Answered(a, "c", None) for a in (odd, other, payments)])
    assert len(changes) == 1 and changes[0].discrepancies
    assert t.state.discrepancies == [("g1", "grant:g1:m1:pay", "an answer to a pay never requested")]
    assert t.grant("g1").status == "reserved"


async def test_a_hold_the_ledger_expires_lapses_and_its_late_payment_is_refused() -> None:
    t = Harness(100_000)
    await t.h.propose(Propose(proposal(), MAKER, "c"))
    await t.h.decide(decide("g1", CHECKER))
    await t.settle()
    expired = t.ledger.expire(T0 + timedelta(days=61 + 31))  # milestone 2 due on day 60, and milestone 1 long before
    await t.h.record_ledger_answers([Answered(a, "c", None) for a in expired])
    g = t.grant("g1")
    assert [m.status for m in g.milestones] == ["lapsed", "lapsed"] and g.status == "completed"
    assert t.ledger.available("fund:Y56") == 100_000
    released = [e for _, e in grant_events(t.state.outbox) if e.get("why") == "lapsed"]
    assert [e["n"] for e in released] == [1, 2]


def answer(sid: str, fft: int, **kw: object) -> FeedbackReceived:
    return FeedbackReceived.model_validate({"submission_id": sid, "episode_id": f"ep-{sid}", "provider_code": "RJ1",
                                            "patient_pseudonym": "c" * 64, "instrument": "fft", "authored_at": T0,
                                            "fft_answer": fft, **kw})


async def test_feedback_is_tallied_once_and_an_amendment_replaces_what_it_amends() -> None:
    t = Harness(1)
    batch = [answer("s1", 1), answer("s2", 5), answer("s3", 2)]
    await t.h.record_feedback(batch)
    await t.h.record_feedback(batch)  # redelivered
    week = ("week", T0.date(), "RJ1", "unspecified")
    assert t.state.fft[week] == [3, 2, 1]
    await t.h.record_feedback([answer("s4", 1, amends_submission_id="s2")])
    await t.h.record_feedback([answer("s5", 4, amends_submission_id="s4")])  # amends the amendment: still one answer
    assert t.state.fft[week] == [3, 2, 1] and t.state.current == {"s1": "s1", "s2": "s5", "s3": "s3"}
    env = Envelope[FeedbackReceived](type="feedback.received.v1", correlation_id="c", producer="feedback", data=answer("s6", 1))
    assert "patient_pseudonym" not in str(t.state.counted) and env.data.patient_pseudonym not in str(t.state.counted)
