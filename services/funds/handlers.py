"""The funds service's application layer: the one write path.

Every write comes here as a command (an HTTP request) or a batch of them (a Kafka consumer
batch): one unit of work (``shared.uow``) loads and locks the grants it needs, lets the pure core
(``domain``, ``tally``) decide, writes the grant, its history, the ledger transfer requests and
the grant events through the store port (outbox: they commit together), commits, and only then
counts. The HTTP routes and the Kafka subscribers only parse, authorise and call; the binding
rule for an existing grant (404 outside it) is a predicate checked here, on the row as locked.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from prometheus_client import Counter

from services.funds import domain, events, tally
from services.funds.domain import Change, Grant, GrantProposal, LedgerAnswer, Limits
from services.funds.ports import FundsStore
from shared.contracts import FeedbackReceived, TransferPosted
from shared.money import check
from shared.reference import ReferenceData
from shared.uow import Raced, UnitOfWork

log = logging.getLogger(__name__)

GRANT_STEPS = Counter("funds_grant_steps_total", "Steps recorded in grants' histories", ["step"])
MONEY = Counter("funds_pence_total", "Money moved for grants, by what happened (reserved, paid, released)",
                ["what", "region_code"])
DISCREPANCIES = Counter("funds_ledger_discrepancies_total", "Answers from the ledger about grants that nobody expected")
ANSWERS = Counter("funds_feedback_answers_total", "Feedback answers seen by the tallies", ["outcome"])
REGIONS = ("Y56", "Y58", "Y59", "Y60", "Y61", "Y62", "Y63")  # metric labels stay bounded


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


Visible = Callable[[Grant], bool]


@dataclass(frozen=True)
class Propose:
    proposal: GrantProposal
    actor: str  # the token's subject
    correlation_id: str


@dataclass(frozen=True)
class Decide:
    grant_id: str
    outcome: domain.Outcome
    reason: str
    actor: str
    visible: Visible
    correlation_id: str


@dataclass(frozen=True)
class MarkMet:
    grant_id: str
    n: int
    note: str
    actor: str
    visible: Visible
    correlation_id: str


@dataclass(frozen=True)
class Cancel:
    grant_id: str
    reason: str
    actor: str
    visible: Visible
    correlation_id: str


@dataclass(frozen=True)
class Answered:
    """A ``ledger.posted.v1`` answer with the ids of the event that carried it."""

    answer: TransferPosted
    correlation_id: str
    causation_id: str | None


class FundsHandlers:
    def __init__(self, uow: UnitOfWork[FundsStore], *, ref: ReferenceData, limits: Limits,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.uow = uow
        self.ref = ref
        self.limits = limits
        self.clock = clock

    # -- proposals ----------------------------------------------------------------------------
    async def propose(self, cmd: Propose) -> tuple[Grant, bool]:
        """(the grant, True) when recorded now; (the existing one, False) for the same proposal by
        the same person again. ``InputError`` for a broken rule, ``Conflict`` for a taken id."""
        now = self.clock()
        g = domain.new_grant(cmd.proposal, actor=cmd.actor, now=now, ref=self.ref, limits=self.limits)

        async def work(tx: FundsStore) -> tuple[Grant, bool]:
            existing = (await tx.grants([g.grant_id], lock=False)).get(g.grant_id)
            if existing is not None:
                domain.same_proposal(existing, g)
                return existing, False
            if not await tx.insert_grant(g, cmd.correlation_id):
                raise Raced(f"grant {g.grant_id} was proposed by another request meanwhile")
            await self._write(tx, domain.propose(g), cmd.correlation_id, None)
            return g, True

        grant, created = await self.uow.run(work)
        if created:
            GRANT_STEPS.labels("proposed").inc()
        return grant, created

    # -- steps on one grant -------------------------------------------------------------------
    async def decide(self, cmd: Decide) -> Change:
        now = self.clock()
        return await self._on_grant(cmd.grant_id, cmd.visible, cmd.correlation_id, lambda g: domain.decide(
            g, actor=cmd.actor, outcome=cmd.outcome, reason=cmd.reason, now=now, grace_days=self.limits.grace_days))

    async def mark_met(self, cmd: MarkMet) -> Change:
        now = self.clock()
        return await self._on_grant(cmd.grant_id, cmd.visible, cmd.correlation_id,
                                    lambda g: domain.mark_met(g, cmd.n, actor=cmd.actor, note=cmd.note, now=now))

    async def cancel(self, cmd: Cancel) -> Change:
        now = self.clock()
        return await self._on_grant(cmd.grant_id, cmd.visible, cmd.correlation_id,
                                    lambda g: domain.cancel(g, actor=cmd.actor, reason=cmd.reason, now=now))

    async def _on_grant(self, grant_id: str, visible: Visible, correlation_id: str,
                        decide: Callable[[Grant], Change]) -> Change:
        async def work(tx: FundsStore) -> Change:
            g = (await tx.grants([grant_id], lock=True)).get(grant_id)  # one step at a time per grant
            if g is None or not visible(g):
                raise domain.NotFound(f"no grant {grant_id}", "grant_id")
            change = decide(g)
            if change.changed:
                await self._write(tx, change, correlation_id, None)
            return change

        change = await self.uow.run(work)
        _count(change)
        return change

    # -- the ledger's answers -----------------------------------------------------------------
    async def record_ledger_answers(self, batch: Sequence[Answered]) -> list[Change]:
        """Apply a batch of the ledger's answers (only ``grant:`` transfers; others are not ours)
        grant by grant, in one unit of work; the same end state as one answer at a time."""
        by_grant: dict[str, list[LedgerAnswer]] = defaultdict(list)
        trace: dict[str, Answered] = {}
        for item in batch:
            parsed = domain.parse_transfer_id(item.answer.transfer_id)
            if parsed is None:
                continue
            gid, n, step = parsed
            a = item.answer
            by_grant[gid].append(LedgerAnswer(n, step, domain.Answer(a.status, a.reason, a.entry_seq), a.transfer_id))
            trace.setdefault(gid, item)
        if not by_grant:
            return []
        now = self.clock()

        async def work(tx: FundsStore) -> list[Change]:
            grants = await tx.grants(sorted(by_grant), lock=True)
            changes = []
            for gid in sorted(by_grant):
                g = grants.get(gid)
                if g is None:
                    log.warning("ledger answered %d transfer(s) of grant %s, which this service does not hold", len(by_grant[gid]),
                                gid)
                    continue
                known = [a for a in by_grant[gid] if a.n <= len(g.milestones)]
                change = domain.apply_answers(g, known, now=now)
                change.discrepancies.extend((a.transfer_id, "an answer about a milestone the grant does not have")
                                            for a in by_grant[gid] if a.n > len(g.milestones))
                if change.changed or change.discrepancies:
                    await self._write(tx, change, trace[gid].correlation_id, trace[gid].causation_id)
                changes.append(change)
            return changes

        changes = await self.uow.run(work)
        for change in changes:
            _count(change)
            for tid, what in change.discrepancies:
                DISCREPANCIES.inc()
                log.error("ledger answer about %s not expected: %s", tid, what)
        return changes

    # -- feedback -----------------------------------------------------------------------------
    async def record_feedback(self, answers: Sequence[FeedbackReceived]) -> tally.TallyPlan:
        """Tally a batch of answers in one unit of work (each answer once; an amendment replaces
        the answer it amends). Every provider must be known (the consumer checks first)."""
        if not answers:
            return tally.TallyPlan()

        async def work(tx: FundsStore) -> tally.TallyPlan:
            amended = [a.amends_submission_id for a in answers if a.amends_submission_id]
            known = await tx.counted([a.submission_id for a in answers] + amended)
            roots = {a.amends_submission_id or a.submission_id for a in answers}
            roots |= {known[x].root_id for x in amended if x in known}
            current = await tx.current(sorted(roots))
            plan = tally.plan(answers, ref=self.ref, known=known, current=current)
            await tx.apply_tally(plan)
            return plan

        plan = await self.uow.run(work)
        ANSWERS.labels("counted").inc(len(plan.new))
        ANSWERS.labels("amendment").inc(len(plan.superseded))
        ANSWERS.labels("duplicate").inc(plan.duplicates)
        ANSWERS.labels("unmeasured").inc(plan.unmeasured)
        return plan

    # -- writing a change ---------------------------------------------------------------------
    @staticmethod
    async def _write(tx: FundsStore, change: Change, correlation_id: str, causation_id: str | None) -> None:
        g = change.grant
        check(all(t.cause.grant_id == g.grant_id and t.ordering_key == g.grant_id for t in change.transfers),
              "a grant's transfers carry its id as cause and ordering key")
        domain.money(g)  # its parts add up to its amount (checked: a broken invariant stops here)
        await tx.save(g)
        await tx.add_steps(g.grant_id, change.steps)
        await tx.add_discrepancies(g.grant_id, change.discrepancies, datetime.now(timezone.utc))
        await tx.enqueue(events.transfer_rows(change.transfers, correlation_id=correlation_id, causation_id=causation_id)
                         + events.grant_rows(g.grant_id, change.events, correlation_id=correlation_id,
                                             causation_id=causation_id))


def _count(change: Change) -> None:
    """Counters after the commit, for what changed."""
    region = change.grant.region_code if change.grant.region_code in REGIONS else "other"
    for s in change.steps:
        GRANT_STEPS.labels(s.step).inc()
    for type_, model in change.events:
        amount = getattr(model, "amount_pence", None)
        if type_ == "funds.milestone-paid.v1" and amount:
            MONEY.labels("paid", region).inc(amount)
        elif type_ == "funds.milestone-released.v1" and amount:
            MONEY.labels("released", region).inc(amount)
        elif type_ == "funds.grant-reserved.v1" and getattr(model, "reserved_pence", 0):
            MONEY.labels("reserved", region).inc(model.reserved_pence)  # type: ignore[attr-defined]
