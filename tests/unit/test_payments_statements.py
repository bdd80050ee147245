"""Provisional, then final (scheme option ``[review]``, services/payments/review.py) through the
handlers over the in-memory store: settling writes a provisional statement and moves nothing;
queries, corrections and acceptance within the window, recorded with who, what, why and when;
finalisation is the unit's settlement run again with the corrections applied, once; the final
figures reflect the corrections. Without ``[review]`` nothing changes (the other handler tests)."""

from __future__ import annotations

import asyncio
import json
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.payments import judgement, review
from services.payments.domain import InputError, NotFound, Refused
from services.payments.handlers import AcceptPayment, CorrectStatement, QueryStatement, RunSettlement
from services.payments.schemes import SchemeError, Scheme, SchemeBook, Scope, parse_scheme
from shared.contracts import FeedbackReceived, PaymentRequested, SettlementStatement
from shared.reference import load_reference
from tests.unit.fakes_payments import FakePayments

REF = load_reference()
TODAY = date(2026, 12, 2)
ACTIVITY = date(2026, 9, 10)
PERIOD = "2026-09"
START = date(2020, 1, 1)
REVIEWED = Scheme(scheme_id="reviewed", version=1, title="Provisional first", effective_from=START, min_responses_per_period=0,
                  cap_bps=1_000, review={"correction_window_days": 14}, scope=Scope(providers=("RJ1",)))
BOOK = SchemeBook([REVIEWED])
SID = f"RJ1:{PERIOD}:reviewed@1"


def world() -> FakePayments:
    return FakePayments(book=BOOK, ref=REF, today=TODAY)


def req(n: int) -> PaymentRequested:
    return PaymentRequested.model_validate({
        "payment_id": f"pay-{n}", "episode_id": f"ep-{n}", "commissioner_code": "QWE", "provider_code": "RJ1",
        "service_type": "maternity", "activity_date": ACTIVITY, "amount_pence": 100_000})


def very_poor(n: int) -> FeedbackReceived:
    return FeedbackReceived.model_validate({
        "submission_id": f"s-{n}", "episode_id": f"ep-{n}", "provider_code": "RJ1", "patient_pseudonym": "a" * 64,
        "instrument": "fft", "fft_answer": 5,
        "authored_at": datetime(ACTIVITY.year, ACTIVITY.month, ACTIVITY.day, 10, tzinfo=timezone.utc) + timedelta(days=3)})


async def provisional(w: FakePayments) -> None:
    await w.handlers.accept_payments([AcceptPayment(req(n), "c") for n in (1, 2)])
    await w.handlers.record_answers([very_poor(1), very_poor(2)])
    assert await w.handlers.run_settlement(RunSettlement(period=PERIOD, run_by="finance@nhs", correlation_id="run-1")) == []


def events_of(w: FakePayments, type_: str) -> list[dict[str, Any]]:
    return [json.loads(r[2]) for r in w.state.outbox if r[0] == "payments.statements.v1" and json.loads(r[2])["type"] == type_]


def transfers(w: FakePayments) -> set[str]:
    return set(w.state.transfers)


def test_the_review_option_is_validated() -> None:
    base = 'scheme_id = "sch"\nversion = 1\ntitle = "t"\neffective_from = 2026-01-01\n'
    assert parse_scheme(base).review is None  # absent: final at once
    assert parse_scheme(base + "[review]\ncorrection_window_days = 30\n").review.correction_window_days == 30  # type: ignore[union-attr]
    for bad in ("0", "91", '"30"'):
        with pytest.raises(SchemeError, match="review.correction_window_days"):
            parse_scheme(base + f"[review]\ncorrection_window_days = {bad}\n")
    with pytest.raises(SchemeError, match="review"):
        parse_scheme(base + "[review]\n")


async def test_settling_writes_a_provisional_statement_and_moves_no_money() -> None:
    w = world()
    await provisional(w)
    before = transfers(w)
    assert not w.state.settlements
    assert {r.status for r in w.state.episodes.values()} == {"held"}
    st = w.state.statements[SID]
    assert st["status"] == "provisional" and st["created_by"] == "finance@nhs"
    assert st["window_closes_at"] == w.now + timedelta(days=14)
    assert st["report"]["diverted_pence"] == 20_000 and st["report"]["released_pence"] == 0
    assert [x["episode_id"] for x in st["report"]["lines"]] == ["ep-1", "ep-2"]
    [event] = events_of(w, "payments.statement-provisional.v1")
    body = SettlementStatement.model_validate(event["data"])
    assert body.status == "provisional" and body.diverted_pence == 20_000 and body.settlement_id is None
    assert [r[1] for r in w.state.outbox if r[0] == "payments.statements.v1"] == [b"RJ1"]  # keyed by provider
    # Settling again while it is provisional and in its window: nothing new.
    assert await w.handlers.run_settlement(RunSettlement(period=PERIOD, run_by="x", correlation_id="run-2")) == []
    assert len(w.state.statements) == 1 and transfers(w) == before
    assert await w.handlers.finalise_due(run_by="scheduler", correlation_id="f") == []


async def test_a_correction_turns_a_diversion_into_a_release_in_the_final_figures() -> None:
    w = world()
    await provisional(w)
    h = w.handlers
    r = await h.query_statement(QueryStatement(SID, "trust.finance@rj1", "ep-1's answer is not ours", "ep-1"))
    assert r.changed and [(q["actor"], q["episode_id"]) for q in r.statement["queries"]] == [("trust.finance@rj1", "ep-1")]
    assert not (await h.query_statement(QueryStatement(SID, "trust.finance@rj1", "ep-1's answer is not ours", "ep-1"))).changed
    with pytest.raises(InputError) as bad:
        await h.query_statement(QueryStatement(SID, "trust.finance@rj1", "why?", "ep-9"))
    assert bad.value.field == "episode_id"
    fix = CorrectStatement(SID, "ep-1", "exclude", "region.reviewer@nhs", "answer attributed to the wrong trust")
    r = await h.correct_statement(fix)
    assert r.changed and [(c["actor"], c["episode_id"], c["action"]) for c in r.statement["corrections"]] == [
        ("region.reviewer@nhs", "ep-1", "exclude")]
    assert not (await h.correct_statement(fix)).changed  # the same again
    with pytest.raises(Refused, match="corrected already"):
        await h.correct_statement(CorrectStatement(SID, "ep-1", "exclude", "someone.else", "another reason"))
    with pytest.raises(InputError) as bad:
        await h.correct_statement(CorrectStatement(SID, "ep-1", "double", "region.reviewer@nhs", "x"))
    assert bad.value.field == "action"
    r = await h.accept_statement(SID, accepted_by="trust.finance@rj1")
    assert r.changed and r.statement["accepted_by"] == "trust.finance@rj1"
    with pytest.raises(Refused, match="accepted"):
        await h.correct_statement(CorrectStatement(SID, "ep-2", "exclude", "region.reviewer@nhs", "too late"))

    [report] = await h.finalise_due(run_by="finance@nhs", correlation_id="fin")
    assert report["released_pence"] == 10_000 and report["diverted_pence"] == 10_000
    st = w.state.statements[SID]
    assert st["status"] == "final" and st["finalised_by"] == "finance@nhs" and st["settlement_id"] == SID
    lines = {x["episode_id"]: x for x in st["final_report"]["lines"]}
    assert lines["ep-1"]["diverted_pence"] == 0 and "excluded by correction: region.reviewer@nhs" in lines["ep-1"]["basis"]
    assert lines["ep-2"]["diverted_pence"] == 10_000
    ep1, ep2 = w.state.episodes["ep-1"], w.state.episodes["ep-2"]
    assert (ep1.status, ep1.released_pence, ep1.diverted_pence) == ("settled", 10_000, 0)
    assert (ep2.released_pence, ep2.diverted_pence) == (0, 10_000)
    assert "divert:pay-1" not in w.state.transfers and "divert:pay-2" in w.state.transfers
    assert {"release:pay-1", "release:pay-2"} <= transfers(w)
    assert "answer attributed to the wrong trust" in " ".join(ep1.decision["steps"])  # type: ignore[index]
    [event] = events_of(w, "payments.statement-finalised.v1")
    assert event["data"]["settlement_id"] == SID and event["data"]["corrections"] == 1 and event["data"]["by"] == "finance@nhs"
    assert [x["step"] for x in (await h.accept_statement(SID, accepted_by="x")).statement["history"]] == [
        "provisional", "query", "correction", "accepted", "finalised"]

    # Finalising (or settling) twice moves money once.
    rows = len(w.state.outbox)
    assert await h.finalise_due(run_by="again", correlation_id="fin-2") == []
    assert await h.run_settlement(RunSettlement(period=PERIOD, run_by="again", correlation_id="run-3")) == []
    assert len(w.state.outbox) == rows and len(w.state.settlements) == 1
    with pytest.raises(Refused, match="final"):
        await h.query_statement(QueryStatement(SID, "trust.finance@rj1", "one more question"))


async def test_the_window_passing_makes_it_due_and_closes_queries_and_corrections() -> None:
    w = world()
    await provisional(w)
    w.advance(days=14)
    with pytest.raises(Refused, match="window closed"):
        await w.handlers.query_statement(QueryStatement(SID, "trust", "late question"))
    with pytest.raises(Refused, match="window closed"):
        await w.handlers.correct_statement(CorrectStatement(SID, "ep-1", "exclude", "reviewer", "late"))
    # A settlement job for the period finalises a due statement too (the same unit, the same code).
    [report] = await w.handlers.run_settlement(RunSettlement(period=PERIOD, run_by="scheduler", correlation_id="s"))
    assert report["diverted_pence"] == 20_000 and w.state.statements[SID]["finalised_by"] == "scheduler"
    with pytest.raises(NotFound):
        await w.handlers.accept_statement("nope", accepted_by="x")


async def test_an_episode_arriving_after_the_provisional_statement_settles_after_it_in_full() -> None:
    w = world()
    await provisional(w)
    await w.handlers.accept_payments([AcceptPayment(req(3), "c")])
    await w.handlers.record_answers([very_poor(3)])
    await w.handlers.accept_statement(SID, accepted_by="trust")
    [final] = await w.handlers.finalise_due(run_by="finance", correlation_id="f")
    assert final["episodes"] == 2 and w.state.episodes["ep-3"].status == "held"
    [late] = await w.handlers.run_settlement(RunSettlement(period=PERIOD, run_by="finance", correlation_id="l"))
    assert late["settlement_id"] == f"{SID}:late-1" and late["diverted_pence"] == 0


def test_excluding_an_episode_takes_its_answer_out_of_the_counts() -> None:
    from services.payments import domain

    eps = [domain.Episode(f"p{n}", f"e{n}", "QWE", "RJ1", "Y56", "maternity", ACTIVITY, 1000, 100, "reviewed", 1, "two_phase")
           for n in (1, 2)]
    at = datetime(ACTIVITY.year, ACTIVITY.month, ACTIVITY.day, 10, tzinfo=timezone.utc)
    answers = [domain.Answer(f"s{n}", f"e{n}", "fft", at, 5) for n in (1, 2)]
    counts = judgement.counts_from_records(eps, answers, PERIOD, 56)
    ctx = judgement.JudgementContext(PERIOD, {(PERIOD, 56): counts})
    scheme = REVIEWED.model_copy(update={"decision_window_days": 56})
    out = judgement.excluding(ctx, eps[:1], answers, scheme).counts_for(PERIOD, 56)
    assert out is not None
    assert sorted((r.fft_answer or 0, r.episodes) for r in out.rows) == [(0, 1), (5, 1)]
    assert review.exclusions([review.Correction("e1", "exclude", "wrong trust", "rev", at)]) == {
        "e1": f"rev ({at.isoformat()}): wrong trust"}


async def test_a_statement_whose_scheme_is_gone_is_skipped_and_the_others_finalise() -> None:
    w = world()
    await provisional(w)
    await w.handlers.accept_statement(SID, accepted_by="trust")
    w.handlers.book = SchemeBook([])
    assert await w.handlers.finalise_due(run_by="scheduler", correlation_id="f") == []
    assert w.state.statements[SID]["status"] == "provisional" and not w.state.settlements


def _month(answers: list[int | None], amounts: list[int]) -> tuple[list[AcceptPayment], list[FeedbackReceived]]:
    payments = [AcceptPayment(PaymentRequested.model_validate({**req(n).model_dump(), "amount_pence": amounts[n]}), "c")
                for n in range(len(answers))]
    feedback = [FeedbackReceived.model_validate({**very_poor(n).model_dump(), "fft_answer": a})
                for n, a in enumerate(answers) if a is not None]
    return payments, feedback


def _money(w: FakePayments) -> tuple[Any, ...]:
    """What moved and what the episodes say: transfer requests as sent (ids, legs, cause) and each
    episode's figures and explanation."""
    sent = sorted(json.dumps({k: v for k, v in json.loads(r[2])["data"].items()}, sort_keys=True)
                  for r in w.state.outbox if r[0] == "ledger.transfer-requests.v1")
    episodes = {eid: (e.status, e.released_pence, e.diverted_pence, json.dumps(e.decision, sort_keys=True))
                for eid, e in w.state.episodes.items()}
    return tuple(sent), episodes


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(1, 6)), min_size=1, max_size=25), st.data(), st.booleans())
def test_provisional_then_final_without_corrections_equals_settling_at_once(answers: list[int | None], data: st.DataObject,
                                                                           accept_early: bool) -> None:
    amounts = [data.draw(st.integers(10_000, 10_000_000)) for _ in answers]
    payments, feedback = _month(answers, amounts)
    at_once = Scheme.model_validate({**REVIEWED.model_dump(), "review": None})

    async def scenario() -> tuple[Any, Any, Any, Any]:
        reviewed, direct = world(), FakePayments(book=SchemeBook([at_once]), ref=REF, today=TODAY)
        for w in (reviewed, direct):
            await w.handlers.accept_payments(payments)
            await w.handlers.record_answers(feedback)
        [one_step] = await direct.handlers.run_settlement(RunSettlement(period=PERIOD, run_by="finance@nhs", correlation_id="r"))
        assert await reviewed.handlers.run_settlement(RunSettlement(period=PERIOD, run_by="finance@nhs", correlation_id="r")) == []
        if accept_early:
            await reviewed.handlers.accept_statement(SID, accepted_by="trust.finance@rj1")
            [final] = await reviewed.handlers.finalise_due(run_by="finance@nhs", correlation_id="r")
        else:
            reviewed.advance(days=14)
            [final] = await reviewed.handlers.run_settlement(RunSettlement(period=PERIOD, run_by="finance@nhs", correlation_id="r"))
        return one_step, final, _money(direct), _money(reviewed)

    one_step, final, direct_money, reviewed_money = asyncio.run(scenario())
    figures = ("billed_pence", "held_pence", "released_pence", "diverted_pence", "responses", "episodes", "cap_applied",
               "min_sample_applied", "settlement_id")
    assert {k: final[k] for k in figures} == {k: one_step[k] for k in figures}
    assert reviewed_money == direct_money  # the same transfers, byte for byte, and the same explanations
