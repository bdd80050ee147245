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
from datetime import date
from typing import Any

from services.payments import domain, events, judgement, metrics, reconcile
from services.payments.ports import PaymentsStore, Unit
from services.payments.schemes import Scheme, SchemeBook
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
                         today: date) -> list[dict[str, Any]]:
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
            summary = await uow.run(lambda tx: settle_unit(tx, unit, scheme, cmd))  # noqa: B023 - awaited at once
        metrics.unit_settled(summary)  # committed: only a new report counts
        if summary:
            reports.append(summary)
    return reports


async def load_context(tx: PaymentsStore, period: str, schemes: Iterable[Scheme]) -> judgement.JudgementContext:
    """The period-wide inputs of the judgement rules for settling ``period`` under these schemes:
    one ``judgement_counts`` statement per (period, window) of ``judgement.count_sets`` (none when
    no scheme has a gate, case mix, improvement or PROM weight). Computed once per job, it serves
    every unit: the counts do not depend on what has settled."""
    needed = judgement.count_sets(period, schemes)
    return judgement.JudgementContext(period, {key: await tx.judgement_counts(*key) for key in needed})


async def settle_unit(tx: PaymentsStore, unit: Unit, scheme: Scheme, cmd: RunSettlement,
                      context: judgement.JudgementContext | None = None) -> dict[str, Any] | None:
    """Settle one unit in the unit of work's transaction; None when nothing is held any more.

    ``context``: the period's ``load_context`` (for ``scheme`` at least); None reads it here when
    the scheme needs it. The provider-period's exemption is read here, always, under its lock."""
    episodes = await tx.lock_held_episodes(unit, cmd.period)
    if not episodes:
        return None
    answers = await tx.answers_of([e.episode_id for e in episodes])
    settlement_id, divert = domain.unit_settlement(unit.provider_code, cmd.period, scheme,
                                                   await tx.count_settlements(unit, cmd.period))
    exemption = await tx.exemption_of(unit.provider_code, cmd.period)
    if context is None and divert and judgement.needs_counts(scheme):
        context = await load_context(tx, cmd.period, [scheme])
    report = domain.settle(episodes, answers, scheme, provider_code=unit.provider_code, period=cmd.period, divert=divert,
                           context=context, exemption=exemption)
    if not await tx.insert_settlement(settlement_id, unit, report, cmd.run_by):
        raise Raced(f"settlement {settlement_id} was written by another run meanwhile")
    await tx.mark_settled(settlement_id, report.lines)
    plan = [p for line in report.lines for p in line.plan]
    await tx.request_transfers(reconcile.tracked(plan), events.transfer_rows([(plan, cmd.correlation_id, None)]))
    return summary(settlement_id, report)


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
