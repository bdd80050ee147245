"""Running a settlement: the command handler's side (the SQL is in the store, the rules in the core).

A run settles every unsettled unit of a period (one provider's held episodes under one scheme
version), optionally one provider's or one region's, and only the providers the caller may act
for; each unit in its own unit of work, so a big month is many modest transactions and a unit
that fails leaves the others settled. A unit reads its held episodes locked, with their answers,
asks the pure core to settle them (``domain.settle``: decisions, minimum sample, cap), writes the
report, the episodes and the ledger transfers, commits, and only then counts. Settling is
idempotent: a unit settled already has no held episode left, and a repeat finds nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from services.payments import domain, events, judgement, metrics, reconcile, review
from services.payments.ports import PaymentsStore, Unit
from services.payments.schemes import Scheme, SchemeBook
from shared.contracts import SettlementStatement
from shared.money import InvariantError
from shared.uow import Raced, UnitOfWork


@dataclass(frozen=True)
class RunSettlement:
    period: str
    run_by: str  # who ran it: the token's subject, or "scheduler"
    correlation_id: str
    provider_code: str | None = None
    region_code: str | None = None
    may_settle: Callable[[str], bool] | None = None  # the providers the caller acts for (None: every one)
    trigger: str = "api"


async def run_settlement(uow: UnitOfWork[PaymentsStore], book: SchemeBook, cmd: RunSettlement, *,
                         today: date, now: datetime | None = None) -> list[dict[str, Any]]:
    """Settle the period's units, one unit of work each; the new reports, in unit order.

    Refuses (``domain.NotYet``) a period whose decision windows are still open on ``today``, and
    (``InputError``) a unit whose scheme is no longer loaded; units settled before that stay so."""
    units = await uow.run(lambda tx: tx.held_units(cmd.period, cmd.provider_code, cmd.region_code))
    schemes = [book.get(u.scheme_id, u.scheme_version) for u in units]
    # The longest window among the units' schemes decides; with nothing held, every loaded scheme's.
    windows = [s.decision_window_days for s in schemes if s is not None] or [s.decision_window_days for s in book.schemes]
    domain.require_settleable(cmd.period, windows, today)
    metrics.settlement_run(cmd.trigger)
    reports = []
    for unit, scheme in zip(units, schemes):
        if cmd.may_settle is not None and not cmd.may_settle(unit.provider_code):
            continue
        if scheme is None:
            raise domain.InputError("scheme", f"{unit.scheme_id}@{unit.scheme_version} is no longer loaded; cannot settle")
        with metrics.SETTLEMENT_SECONDS.time():
            summary = await uow.run(lambda tx: settle_unit(tx, unit, scheme, cmd, now=now))  # noqa: B023 - awaited at once
        metrics.unit_settled(summary)  # committed: only a new report counts
        if summary:
            reports.append(summary)
    return reports


async def load_context(tx: PaymentsStore, period: str, schemes: Iterable[Scheme]) -> judgement.JudgementContext:
    """The period-wide inputs of the judgement rules for settling ``period`` under these schemes:
    one ``judgement_counts`` statement per (period, window) of ``judgement.count_sets`` (none when
    no scheme has a gate, case mix, improvement or PROM weight). Computed once per job, it serves
    every unit: the counts do not depend on what has settled."""
    schemes = list(schemes)
    needed = judgement.count_sets(period, schemes)
    proms = await tx.prom_outcomes(period) if judgement.needs_proms(schemes) else {}
    return judgement.JudgementContext(period, {key: await tx.judgement_counts(*key) for key in needed}, proms)


async def settle_unit(tx: PaymentsStore, unit: Unit, scheme: Scheme, cmd: RunSettlement,
                      context: judgement.JudgementContext | None = None, *,
                      now: datetime | None = None) -> dict[str, Any] | None:
    """Settle one unit in the unit of work's transaction; None when nothing is held any more, or
    (scheme ``[review]``) when it wrote a provisional statement or its statement is not due yet.

    ``context``: the period's ``load_context`` (for ``scheme`` at least); None reads it here when
    the scheme needs it. The provider-period's exemption is read here, always, under its lock.

    Under ``[review]`` the unit's first settlement goes through a statement (``review.py``): the
    first run writes it, provisional, and moves nothing; a run once it is due (accepted, or its
    window passed) settles the statement's episodes here, as any unit, with the reviewers'
    corrections applied, and marks it final. Late episodes (a supplementary settlement) are
    released in full at once, as without it."""
    now = now or datetime.now(timezone.utc)
    episodes = await tx.lock_held_episodes(unit, cmd.period)
    if not episodes:
        return None
    settlement_id, divert = domain.unit_settlement(unit.provider_code, cmd.period, scheme,
                                                   await tx.count_settlements(unit, cmd.period))
    statement, excluded = None, None
    if scheme.review is not None and divert:
        statement = await tx.statement_of_unit(unit, cmd.period)  # locked: serialised with corrections and acceptance
        if statement is not None and statement.status != "provisional":
            raise InvariantError(f"statement {statement.statement_id} is final but {settlement_id} is not written")
        if statement is not None and not review.is_due(statement, now):
            return None  # provisional, in its window: nothing moves yet
        if statement is not None:
            on_it = set(statement.episode_ids)
            episodes = [e for e in episodes if e.episode_id in on_it]  # a later arrival settles after, as late
            if not episodes:
                raise InvariantError(f"statement {statement.statement_id} is provisional but none of its episodes is held")
            steps = await tx.statement_steps(statement.statement_id)
            excluded = review.exclusions([review.Correction(h["episode_id"], h["action"], h["reason"], h["actor"], h["at"])
                                          for h in steps if h["step"] == "correction"])
    answers = await tx.answers_of([e.episode_id for e in episodes])
    exemption = await tx.exemption_of(unit.provider_code, cmd.period)
    if context is None and divert and judgement.needs_counts(scheme):
        context = await load_context(tx, cmd.period, [scheme])
    report = domain.settle(episodes, answers, scheme, provider_code=unit.provider_code, period=cmd.period, divert=divert,
                           context=context, exemption=exemption, excluded=excluded)
    if scheme.review is not None and divert and statement is None:
        await _provisional(tx, unit, scheme, cmd, settlement_id, report, now)
        return None
    if not await tx.insert_settlement(settlement_id, unit, report, cmd.run_by):
        raise Raced(f"settlement {settlement_id} was written by another run meanwhile")
    await tx.mark_settled(settlement_id, report.lines)
    plan = [p for line in report.lines for p in line.plan]
    await tx.request_transfers(reconcile.tracked(plan), events.transfer_rows([(plan, cmd.correlation_id, None)]))
    done = summary(settlement_id, report)
    if statement is not None:
        await tx.finalise_statement(statement.statement_id, settlement_id=settlement_id, by=cmd.run_by, at=now,
                                    final_report=review.report_document(settlement_id, report, done))
        await tx.add_statement_step(statement.statement_id, step="finalised", actor=cmd.run_by, at=now,
                                    reason="accepted by the trust" if statement.accepted_at is not None
                                    else "the correction window passed")
        await tx.publish([events.statement_row(_event(statement.statement_id, "final", report, len(excluded or {}),
                                                      statement.window_closes_at, settlement_id, cmd.run_by, now),
                                               correlation_id=cmd.correlation_id)])
        done["statement_id"] = statement.statement_id
    return done


async def _provisional(tx: PaymentsStore, unit: Unit, scheme: Scheme, cmd: RunSettlement, settlement_id: str,
                       report: domain.SettlementReport, now: datetime) -> None:
    """Record the unit's provisional statement (the report the settlement would produce) and publish it."""
    closes = review.window_closes_at(now, scheme)
    statement = review.Statement(settlement_id, unit.provider_code, report.region_code, cmd.period, unit.scheme_id,
                                 unit.scheme_version, "provisional", now, closes,
                                 tuple(line.episode.episode_id for line in report.lines))
    if not await tx.insert_statement(statement, created_by=cmd.run_by,
                                     report=review.report_document(settlement_id, report, summary(settlement_id, report))):
        raise Raced(f"statement {settlement_id} was written by another run meanwhile")
    await tx.add_statement_step(settlement_id, step="provisional", actor=cmd.run_by, at=now,
                                reason=f"correction window of {scheme.review.correction_window_days} days"  # type: ignore[union-attr]
                                       f" closes {closes.isoformat()}")
    await tx.publish([events.statement_row(_event(settlement_id, "provisional", report, 0, closes, None, cmd.run_by, now),
                                           correlation_id=cmd.correlation_id)])


def _event(statement_id: str, status: str, report: domain.SettlementReport, corrections: int, closes: datetime,
           settlement_id: str | None, by: str, at: datetime) -> SettlementStatement:
    return SettlementStatement(
        statement_id=statement_id, status=status, provider_code=report.provider_code,  # type: ignore[arg-type]
        region_code=report.region_code, period=report.period, scheme_id=report.scheme_key.split("@")[0],
        scheme_version=int(report.scheme_key.split("@")[1]), episodes=report.episodes, responses=report.responses,
        billed_pence=report.billed_pence, held_pence=report.held_pence, released_pence=report.released_pence,
        diverted_pence=report.diverted_pence, corrections=corrections, window_closes_at=closes, settlement_id=settlement_id,
        by=by, at=at)


def summary(settlement_id: str, report: domain.SettlementReport) -> dict[str, Any]:
    """A unit's report as the API lists it."""
    return {
        "settlement_id": settlement_id,
        "provider_code": report.provider_code,
        "region_code": report.region_code,
        "period": report.period,
        "scheme": report.scheme_key,
        "billed_pence": report.billed_pence,
        "held_pence": report.held_pence,
        "released_pence": report.released_pence,
        "diverted_pence": report.diverted_pence,
        "responses": report.responses,
        "episodes": report.episodes,
        "min_sample_applied": report.min_sample_applied,
        "cap_applied": report.cap_applied,
        "cap_pence": report.cap_pence,
        "exempted": report.exempted,
        "gate_applied": report.gate_applied,
        "gate_opened": report.gate_opened,
        "benchmark_pct": report.benchmark_pct,
        "adjusted_expected_pct": report.adjusted_expected_pct,
        "upper_limit_count": report.upper_limit_count,
        "credit_pence": report.credit_pence,
        # episodes by what happened to their at-risk money (for the jobs' metrics)
        "episodes_by_outcome": {
            "diverted": sum(1 for x in report.lines if x.diverted_pence and not x.released_pence),
            "released": sum(1 for x in report.lines if x.released_pence and not x.diverted_pence),
            "mixed": sum(1 for x in report.lines if x.released_pence and x.diverted_pence),
        },
    }
