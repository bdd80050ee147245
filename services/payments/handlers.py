"""The payments service's application layer: the one write path.

Every write comes here as a batch of commands (an HTTP request is a batch of one; an HTTP batch
and a Kafka batch are batches), from the HTTP routes (``api.py``), the Kafka subscribers
(``consumer.py``) and the settlement schedule (``app.py``), which only parse, authorise and call.
A handler runs its batch in one unit of work (``shared.uow``): it reads what the decision needs
through the store port (``ports.PaymentsStore``), asks the pure core to decide (``intake``,
``domain``, ``reconcile``), writes rows and the ledger transfer requests (``events``) through the
port, and returns one outcome per command, in order. An insert that met a concurrent writer's
raises ``Raced``: the unit of work rolls back and runs the work again, which then sees the other
writer's rows, so nothing is decided on a stale view. Metrics move after the commit, and only for
new facts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

from services.payments import domain, events, intake, judgement, metrics, reconcile, review, settlement
from services.payments.intake import Outcome
from services.payments.ports import EpisodeRow, NewAppeal, PaymentsStore, Unit
from services.payments.schemes import SchemeBook
from services.payments.settlement import RunSettlement
from shared.contracts import FeedbackReceived, PaymentRequested, TransferPosted
from shared.money import InvariantError, check
from shared.reference import ReferenceData
from shared.uow import Raced, UnitOfWork


log = logging.getLogger(__name__)

# The most commands one unit of work takes: the Kafka batch (PAYMENTS_BATCH_MAX_RECORDS) and the
# HTTP batch (PAYMENTS_BATCH_MAX_ITEMS) are both capped at this by their settings.
MAX_BATCH_COMMANDS = 10_000


def check_batch(n: int) -> None:
    if n > MAX_BATCH_COMMANDS:
        raise ValueError(f"a batch holds at most {MAX_BATCH_COMMANDS} commands, not {n}")


@dataclass(frozen=True, slots=True)
class AcceptPayment:
    """A commissioner's payment request with the ids tracing where it came from."""

    request: PaymentRequested
    correlation_id: str
    causation_id: str | None = None  # the event that carried it (Kafka), none over HTTP


@dataclass(frozen=True)
class OpenAppeal:
    episode_id: str
    appealed_by: str  # the token's subject, never a name from a request body
    reason: str


@dataclass(frozen=True)
class DecideAppeal:
    episode_id: str
    outcome: domain.AppealOutcome
    decided_by: str  # the token's subject; never the appellant
    reason: str
    correlation_id: str


@dataclass(frozen=True)
class QueryStatement:
    statement_id: str
    asked_by: str  # the token's subject
    reason: str
    episode_id: str | None = None


@dataclass(frozen=True)
class CorrectStatement:
    statement_id: str
    episode_id: str
    action: str
    corrected_by: str  # the token's subject: a regional or national reviewer, never the trust
    reason: str


class StatementResult(NamedTuple):
    statement: dict[str, Any]  # as GET /v1/statements/{id} shows it
    changed: bool


# The most due statements one finalisation takes (each its own unit of work); the rest wait for the next.
MAX_DUE_STATEMENTS = 5_000


@dataclass(frozen=True)
class RequestReview:
    episode_id: str
    requested_by: str  # the token's subject: the appellant's side
    reason: str


@dataclass(frozen=True)
class DecideReview:
    episode_id: str
    outcome: domain.AppealOutcome
    decided_by: str  # the token's subject: never the appellant, the first decider or the requester
    reason: str
    correlation_id: str


class AppealResult(NamedTuple):
    appeal: dict[str, Any]  # as GET /v1/episodes/{id}/appeal shows it
    changed: bool  # False: the same appeal or decision again, nothing written


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class PaymentsHandlers:
    def __init__(self, uow: UnitOfWork[PaymentsStore], *, book: SchemeBook, ref: ReferenceData, hold_model: domain.HoldModel,
                 activity_date_max_age_days: int, clock: Callable[[], datetime] = utc_now) -> None:
        check(hold_model in domain.HOLD_MODELS, f"unknown hold model {hold_model!r}")
        self.uow = uow
        self.book = book
        self.ref = ref
        self.hold_model = hold_model  # for new episodes; each stored one keeps its own
        self.activity_date_max_age_days = activity_date_max_age_days
        self.clock = clock

    # -- payment requests and answers ---------------------------------------------------------------
    async def accept_payments(self, commands: Sequence[AcceptPayment]) -> list[Outcome]:
        """One outcome per request, in order: ``Accepted`` (created or duplicate), ``InputError``
        or ``Conflict``; nothing is written for a rejection."""
        check_batch(len(commands))
        window = self._window()
        outcomes, created = await self.uow.run(lambda tx: self._accept(tx, commands, window))
        metrics.payments_accepted(created)
        return outcomes

    async def record_answers(self, answers: Sequence[FeedbackReceived]) -> list[bool]:
        """Keep the answers that can decide an episode; True for each recorded now."""
        check_batch(len(answers))
        return await self.uow.run(lambda tx: _record_answers(tx, answers, self.ref))

    async def record_episode_events(self, commands: Sequence[AcceptPayment],
                                    answers: Sequence[FeedbackReceived]) -> tuple[list[Outcome], list[bool]]:
        """Payment requests and answers of one consumer batch, in one unit of work. Order between
        the two does not matter: accepting never reads answers and recording an answer never reads
        episodes (decisions are derived from the answers when shown or settled)."""
        check_batch(len(commands) + len(answers))
        window = self._window()

        async def work(tx: PaymentsStore) -> tuple[tuple[list[Outcome], list[domain.Episode]], list[bool]]:
            return await self._accept(tx, commands, window), await _record_answers(tx, answers, self.ref)

        (outcomes, created), recorded = await self.uow.run(work)
        metrics.payments_accepted(created)
        return outcomes, recorded

    def _window(self) -> domain.ActivityWindow:
        return domain.activity_window(self.clock().date(), self.activity_date_max_age_days)

    async def _accept(self, tx: PaymentsStore, commands: Sequence[AcceptPayment],
                      window: domain.ActivityWindow) -> tuple[list[Outcome], list[domain.Episode]]:
        if not commands:
            return [], []
        requests = [c.request for c in commands]
        stored = await tx.stored_episodes([r.payment_id for r in requests], [r.episode_id for r in requests])
        verdicts = intake.decide_payments(requests, stored, book=self.book, ref=self.ref, hold_model=self.hold_model,
                                          window=window)
        new = verdicts.new
        if new:
            rows = [EpisodeRow(n.episode, n.fingerprint, n.request_json, n.status, commands[n.index].correlation_id)
                    for n in new]
            inserted = await tx.insert_episodes(rows)
            if inserted != len(rows):
                raise Raced(f"{len(rows) - inserted} of {len(rows)} episodes were inserted by another writer meanwhile")
            traced = [(n.plan, commands[n.index].correlation_id, commands[n.index].causation_id) for n in new]
            await tx.request_transfers(reconcile.tracked(p for n in new for p in n.plan), events.transfer_rows(traced))
        return verdicts.outcomes, [n.episode for n in new]

    # -- the ledger's answers -----------------------------------------------------------------
    async def record_ledger_answers(self, answers: Sequence[TransferPosted]) -> list[tuple[str, str]]:
        """Record what the ledger did with each transfer (the same end state as one at a time, in
        order) and the answers that are not the ones expected; the new discrepancies, counted and
        logged after the commit."""
        check_batch(len(answers))

        async def work(tx: PaymentsStore) -> list[tuple[str, str]]:
            final = reconcile.final_answers(answers)
            found = reconcile.new_discrepancies(await tx.record_ledger_answers(final), final)
            await tx.record_discrepancies(found)
            return found

        found = await self.uow.run(work)
        metrics.ledger_discrepancies(found)
        return found

    # -- settlement ---------------------------------------------------------------------------
    async def run_settlement(self, cmd: RunSettlement) -> list[dict[str, Any]]:
        """Settle a period's units, one unit of work each (``settlement.py``); the new reports."""
        now = self.clock()
        return await settlement.run_settlement(self.uow, self.book, cmd, today=now.date(), now=now)

    # -- statements (scheme option [review], review.py) ---------------------------------------------
    async def finalise_due(self, *, run_by: str, correlation_id: str, may_settle: Callable[[str], bool] | None = None,
                           trigger: str = "api", limit: int = MAX_DUE_STATEMENTS) -> list[dict[str, Any]]:
        """Finalise the provisional statements that are due (accepted by the trust, or past their
        window) among the providers ``may_settle`` allows: each is its unit's settlement run again,
        corrections applied (``settlement.settle_unit``), in its own unit of work. Idempotent: a
        statement finalised meanwhile has nothing held left, and is skipped. The new reports."""
        now = self.clock()
        due = await self.uow.run(lambda tx: tx.due_statements(now, limit))
        reports = []
        for st in due:
            if may_settle is not None and not may_settle(st.provider_code):
                continue
            scheme = self.book.get(st.scheme_id, st.scheme_version)
            if scheme is None:  # reported, and the others go on (one unloadable scheme must not hold every trust's money)
                log.error("statement %s cannot be finalised: scheme %s@%s is no longer loaded", st.statement_id,
                          st.scheme_id, st.scheme_version)
                continue
            unit = Unit(st.provider_code, st.scheme_id, st.scheme_version)
            cmd = RunSettlement(period=st.period, run_by=run_by, correlation_id=correlation_id, trigger=trigger)
            with metrics.SETTLEMENT_SECONDS.time():
                done = await self.uow.run(lambda tx: settlement.settle_unit(tx, unit, scheme, cmd, now=now))  # noqa: B023
            metrics.unit_settled(done)  # committed
            if done:
                reports.append(done)
        return reports

    async def query_statement(self, cmd: QueryStatement) -> StatementResult:
        """The trust asks about its provisional statement (or one episode of it) within the window.
        The same question by the same person again changes nothing."""
        review.check_reason("reason", cmd.reason)
        now = self.clock()

        async def work(tx: PaymentsStore) -> StatementResult:
            st = await self._statement(tx, cmd.statement_id)
            if cmd.episode_id is not None:
                review.check_episode(st, cmd.episode_id)
            steps = await tx.statement_steps(st.statement_id)
            if any(h["step"] == "query" and (h["actor"], h["reason"], h["episode_id"]) == (cmd.asked_by, cmd.reason, cmd.episode_id)
                   for h in steps):
                return StatementResult(await tx.statement_view(st.statement_id) or {}, False)
            refusal = review.query_refusal(st, now)
            if refusal:
                raise domain.Refused(refusal)
            await tx.add_statement_step(st.statement_id, step="query", actor=cmd.asked_by, reason=cmd.reason, at=now,
                                        episode_id=cmd.episode_id)
            return StatementResult(await tx.statement_view(st.statement_id) or {}, True)

        return await self.uow.run(work)

    async def correct_statement(self, cmd: CorrectStatement) -> StatementResult:
        """An authorised reviewer corrects a provisional statement within its window, before the trust
        accepts it: ``exclude`` an episode (released in full instead of being judged), once per
        episode. The same correction by the same person again changes nothing; another is Refused."""
        review.check_reason("reason", cmd.reason)
        if cmd.action not in ("exclude",):
            raise domain.InputError("action", f"{cmd.action!r} is not a correction (exclude)")
        now = self.clock()

        async def work(tx: PaymentsStore) -> StatementResult:
            st = await self._statement(tx, cmd.statement_id)
            review.check_episode(st, cmd.episode_id)
            steps = await tx.statement_steps(st.statement_id)
            earlier = next((h for h in steps if h["step"] == "correction" and h["episode_id"] == cmd.episode_id), None)
            if earlier is not None:
                if (earlier["actor"], earlier["action"], earlier["reason"]) == (cmd.corrected_by, cmd.action, cmd.reason):
                    return StatementResult(await tx.statement_view(st.statement_id) or {}, False)
                raise domain.Refused(f"episode {cmd.episode_id} was corrected already by {earlier['actor']} ({earlier['reason']})")
            refusal = review.correction_refusal(st, now)
            if refusal:
                raise domain.Refused(refusal)
            if not await tx.add_statement_step(st.statement_id, step="correction", actor=cmd.corrected_by, reason=cmd.reason,
                                               at=now, episode_id=cmd.episode_id, action=cmd.action):
                raise Raced(f"episode {cmd.episode_id} was corrected by another request meanwhile")
            return StatementResult(await tx.statement_view(st.statement_id) or {}, True)

        return await self.uow.run(work)

    async def accept_statement(self, statement_id: str, *, accepted_by: str) -> StatementResult:
        """The trust accepts its provisional statement: it is due, and the next finalisation moves
        the money. Accepting again changes nothing; a final statement is Refused."""
        now = self.clock()

        async def work(tx: PaymentsStore) -> StatementResult:
            st = await self._statement(tx, statement_id)
            if st.accepted_at is not None:
                return StatementResult(await tx.statement_view(statement_id) or {}, False)
            refusal = review.accept_refusal(st)
            if refusal:
                raise domain.Refused(refusal)
            await tx.accept_statement(statement_id, by=accepted_by, at=now)
            await tx.add_statement_step(statement_id, step="accepted", actor=accepted_by, reason=None, at=now)
            return StatementResult(await tx.statement_view(statement_id) or {}, True)

        return await self.uow.run(work)

    @staticmethod
    async def _statement(tx: PaymentsStore, statement_id: str) -> review.Statement:
        st = await tx.statement(statement_id, lock=True)
        if st is None:
            raise domain.NotFound(f"no statement {statement_id}")
        return st

    # -- appeals ------------------------------------------------------------------------------
    async def open_appeal(self, cmd: OpenAppeal) -> AppealResult:
        """A provider appeals a settled episode's diversion, within the scheme's window. The same
        person and reason again is the existing appeal (changed False); anything else the rules
        refuse (``Refused``); no such episode is ``NotFound``."""
        now = self.clock()

        async def work(tx: PaymentsStore) -> AppealResult:
            target = await tx.appeal_target(cmd.episode_id, lock=True)  # one appeal decision at a time per episode
            if target is None:
                raise domain.NotFound(f"no episode {cmd.episode_id}")
            existing = await tx.appeal(cmd.episode_id, lock=False)
            if existing is not None and domain.is_same_appeal(cmd.appealed_by, cmd.reason, existing_by=existing.appealed_by,
                                                              existing_reason=existing.reason):
                return AppealResult(await tx.appeal_view(cmd.episode_id) or {}, False)
            e = target.episode
            scheme = self.book.get(e.scheme_id, e.scheme_version) if e.scheme_id is not None else None  # type: ignore[arg-type]
            refusal = domain.appeal_refusal(status=target.status, diverted_pence=target.diverted_pence,
                                            settled_at=target.settled_at, now=now, scheme=scheme,
                                            existing=existing.status if existing is not None else None)
            if refusal:
                raise domain.Refused(refusal)
            if scheme is None or target.settled_at is None or not target.diverted_pence:
                raise InvariantError("appeal_refusal checks the scheme, the settlement and the diversion")
            appeal_id = domain.appeal_transfer_id(e.payment_id)
            opened = NewAppeal(appeal_id, e, target.diverted_pence, cmd.reason, cmd.appealed_by, now,
                               domain.appeal_deadline(target.settled_at, scheme))
            if not await tx.insert_appeal(opened):
                raise Raced(f"episode {cmd.episode_id} was appealed by another request meanwhile")
            await tx.add_appeal_step(appeal_id, step="appealed", actor=cmd.appealed_by, reason=cmd.reason, at=now)
            return AppealResult(await tx.appeal_view(cmd.episode_id) or {}, True)

        return await self.uow.run(work)

    async def decide_appeal(self, cmd: DecideAppeal) -> AppealResult:
        """Uphold (the ledger moves the diverted money fund -> provider) or reject an open appeal.
        Never by the appellant (``SameActor``); deciding again the same way changes nothing; the
        other way is ``Refused``; no appeal is ``NotFound``."""
        now = self.clock()

        async def work(tx: PaymentsStore) -> AppealResult:
            a = await tx.appeal(cmd.episode_id, lock=True)
            if a is None:
                raise domain.NotFound(f"episode {cmd.episode_id} has no appeal")
            domain.check_decider(cmd.decided_by, a.appealed_by)
            refusal = domain.decision_refusal(a.status, cmd.outcome)
            if refusal:
                raise domain.Refused(refusal)
            if a.status == cmd.outcome:
                return AppealResult(await tx.appeal_view(cmd.episode_id) or {}, False)
            transfer_id = None
            if cmd.outcome == "upheld":
                transfer_id = await _request_money_back(tx, cmd.episode_id, domain.appeal_transfer, a.diverted_pence,
                                                        a.appeal_id, cmd.correlation_id)
            await tx.decide_appeal(a.appeal_id, outcome=cmd.outcome, decided_by=cmd.decided_by, reason=cmd.reason, at=now,
                                   transfer_id=transfer_id)
            await tx.add_appeal_step(a.appeal_id, step=cmd.outcome, actor=cmd.decided_by, reason=cmd.reason, at=now)
            return AppealResult(await tx.appeal_view(cmd.episode_id) or {}, True)

        result = await self.uow.run(work)
        metrics.appeal_decided(result.appeal, result.changed)  # committed
        return result

    # -- second-level review -------------------------------------------------------------------
    async def request_review(self, cmd: RequestReview) -> AppealResult:
        """The appellant's side asks, once, for an independent review of a rejected appeal, within
        the scheme's appeal window after the decision. The same request again changes nothing."""
        now = self.clock()

        async def work(tx: PaymentsStore) -> AppealResult:
            target = await tx.appeal_target(cmd.episode_id, lock=True)  # the episode's lock, as for the appeal itself
            a = await tx.appeal_review(cmd.episode_id, lock=True)
            if target is None or a is None:
                raise domain.NotFound(f"episode {cmd.episode_id} has no appeal")
            if a.review_status is not None and (a.review_requested_by, a.review_request_reason) == (cmd.requested_by, cmd.reason):
                return AppealResult(await tx.appeal_view(cmd.episode_id) or {}, False)
            e = target.episode
            scheme = self.book.get(e.scheme_id, e.scheme_version) if e.scheme_id is not None else None  # type: ignore[arg-type]
            refusal = domain.review_request_refusal(status=a.status, review_status=a.review_status, decided_at=a.decided_at,
                                                    now=now, scheme=scheme)
            if refusal:
                raise domain.Refused(refusal)
            await tx.request_review(a.appeal_id, requested_by=cmd.requested_by, reason=cmd.reason, at=now)
            await tx.add_appeal_step(a.appeal_id, step="review_requested", actor=cmd.requested_by, reason=cmd.reason, at=now)
            return AppealResult(await tx.appeal_view(cmd.episode_id) or {}, True)

        return await self.uow.run(work)

    async def decide_review(self, cmd: DecideReview) -> AppealResult:
        """An independent authorised person decides a requested review. Upheld (of a rejected appeal):
        the ledger moves the diverted money fund -> provider (``appeal-review:<payment_id>``). Never by
        the appellant, the first decider or the requester (``SameActor``); the same decision again
        changes nothing; the other way is ``Refused``."""
        now = self.clock()

        async def work(tx: PaymentsStore) -> AppealResult:
            a = await tx.appeal_review(cmd.episode_id, lock=True)
            if a is None:
                raise domain.NotFound(f"episode {cmd.episode_id} has no appeal")
            domain.check_reviewer(cmd.decided_by, appealed_by=a.appealed_by, decided_by=a.decided_by,
                                  requested_by=a.review_requested_by)
            refusal = domain.review_decision_refusal(a.review_status, cmd.outcome)
            if refusal:
                raise domain.Refused(refusal)
            if a.review_status == cmd.outcome:
                return AppealResult(await tx.appeal_view(cmd.episode_id) or {}, False)
            if a.status != "rejected":
                raise InvariantError("only a rejected appeal is reviewed (review_request_refusal, a database constraint)")
            transfer_id = None
            if cmd.outcome == "upheld":
                transfer_id = await _request_money_back(tx, cmd.episode_id, domain.review_transfer, a.diverted_pence,
                                                        a.appeal_id, cmd.correlation_id)
            await tx.decide_review(a.appeal_id, outcome=cmd.outcome, decided_by=cmd.decided_by, reason=cmd.reason, at=now,
                                   transfer_id=transfer_id)
            await tx.add_appeal_step(a.appeal_id, step=f"review_{cmd.outcome}", actor=cmd.decided_by, reason=cmd.reason, at=now)
            return AppealResult(await tx.appeal_view(cmd.episode_id) or {}, True)

        result = await self.uow.run(work)
        if result.changed and (result.appeal.get("review") or {}).get("status") == "upheld":  # committed: count it once
            metrics.appeal_decided({**result.appeal, "status": "upheld"}, True)
        return result

    # -- exemptions ---------------------------------------------------------------------------
    async def exempt(self, *, provider_code: str, period: str, reason: str, exempted_by: str) -> tuple[Any, bool]:
        """An authorised person (``exempted_by``: the token's subject) exempts a provider-period for
        extraordinary circumstances, with a reason: nothing of it will be diverted. Only before the
        provider-period settles (after, a diversion is corrected by appeal): ``Refused``. The same
        person and reason again is the existing exemption (changed False); another one is ``Refused``;
        an unknown provider or a bad period or reason is ``InputError``. (the exemption, changed)."""
        if provider_code not in self.ref.providers:
            raise domain.InputError("provider_code", f"{provider_code} is not a known provider")
        if not (len(period) == 7 and period[4] == "-" and period[:4].isdigit() and period[5:].isdigit()
                and 1 <= int(period[5:]) <= 12):
            raise domain.InputError("period", f"{period!r} is not YYYY-MM")
        if not reason.strip() or len(reason) > 2000 or "\x00" in reason:
            raise domain.InputError("reason", "a reason of 1 to 2000 characters is required")
        now = self.clock()

        async def work(tx: PaymentsStore) -> tuple[Any, bool]:
            existing = await tx.exemption_of(provider_code, period)  # takes the provider-period's lock
            if existing is not None:
                if existing.exempted_by == exempted_by and existing.reason == reason:
                    return existing, False
                raise domain.Refused(f"{provider_code} {period} was already exempted by {existing.exempted_by}"
                                     f" ({existing.reason})")
            if await tx.provider_period_settled(provider_code, period):
                raise domain.Refused(f"{provider_code} {period} has settled; a settled diversion is corrected by appeal")
            exemption = judgement.Exemption(provider_code, period, reason, exempted_by, now)
            if not await tx.insert_exemption(exemption):
                raise Raced(f"{provider_code} {period} was exempted by another request meanwhile")
            return exemption, True

        return await self.uow.run(work)


async def _request_money_back(tx: PaymentsStore, episode_id: str, build: Callable[..., Any], diverted_pence: int,
                              appeal_id: str, correlation_id: str) -> str:
    """An upheld appeal or review: ask the ledger to move the episode's diverted money fund -> provider
    (``build`` is ``domain.appeal_transfer`` or ``domain.review_transfer``: distinct transfer ids), tracked for
    reconciliation, in the caller's transaction. Returns the transfer id."""
    target = await tx.appeal_target(episode_id, lock=False)
    if target is None:
        raise InvariantError("an appeal's episode exists (a foreign key)")
    transfer = build(target.episode, diverted_pence=diverted_pence, appeal_id=appeal_id)
    await tx.request_transfers([reconcile.tracked_request(transfer, episode_id)],
                               [events.request_row(transfer, correlation_id=correlation_id, causation_id=appeal_id)])
    return transfer.transfer_id


async def _record_answers(tx: PaymentsStore, answers: Sequence[FeedbackReceived], ref: ReferenceData) -> list[bool]:
    """The answers that can decide an episode, and the answers that completed a PROM pair (for
    schemes that weigh outcomes, ``[signals]``); the outcomes are for the former."""
    await tx.insert_prom_outcomes(judgement.prom_outcomes_of(answers, ref.trust_of))
    kept = intake.answers_to_keep(answers)
    if not kept:
        return [False] * len(answers)
    stored_now = await tx.insert_answers([answers[i] for i in kept.values()])
    return intake.answer_outcomes(answers, kept, stored_now)


__all__ = ["AcceptPayment", "AppealResult", "CorrectStatement", "DecideAppeal", "DecideReview", "OpenAppeal", "RequestReview", "PaymentsHandlers", "QueryStatement",
           "RunSettlement", "StatementResult"]
