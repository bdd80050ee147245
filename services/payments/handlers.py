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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

from services.payments import domain, events, intake, metrics, reconcile, settlement
from services.payments.intake import Outcome
from services.payments.ports import EpisodeRow, NewAppeal, PaymentsStore
from services.payments.schemes import SchemeBook
from services.payments.settlement import RunSettlement
from shared.contracts import FeedbackReceived, PaymentRequested, TransferPosted
from shared.money import InvariantError, check
from shared.reference import ReferenceData
from shared.uow import Raced, UnitOfWork


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
        return await self.uow.run(lambda tx: _record_answers(tx, answers))

    async def record_episode_events(self, commands: Sequence[AcceptPayment],
                                    answers: Sequence[FeedbackReceived]) -> tuple[list[Outcome], list[bool]]:
        """Payment requests and answers of one consumer batch, in one unit of work. Order between
        the two does not matter: accepting never reads answers and recording an answer never reads
        episodes (decisions are derived from the answers when shown or settled)."""
        check_batch(len(commands) + len(answers))
        window = self._window()

        async def work(tx: PaymentsStore) -> tuple[tuple[list[Outcome], list[domain.Episode]], list[bool]]:
            return await self._accept(tx, commands, window), await _record_answers(tx, answers)

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
        return await settlement.run_settlement(self.uow, self.book, cmd, today=self.clock().date())

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
                target = await tx.appeal_target(cmd.episode_id, lock=False)
                if target is None:
                    raise InvariantError("an appeal's episode exists (a foreign key)")
                transfer = domain.appeal_transfer(target.episode, diverted_pence=a.diverted_pence, appeal_id=a.appeal_id)
                await tx.request_transfers([reconcile.tracked_request(transfer, cmd.episode_id)],
                                           [events.request_row(transfer, correlation_id=cmd.correlation_id,
                                                               causation_id=a.appeal_id)])
                transfer_id = transfer.transfer_id
            await tx.decide_appeal(a.appeal_id, outcome=cmd.outcome, decided_by=cmd.decided_by, reason=cmd.reason, at=now,
                                   transfer_id=transfer_id)
            await tx.add_appeal_step(a.appeal_id, step=cmd.outcome, actor=cmd.decided_by, reason=cmd.reason, at=now)
            return AppealResult(await tx.appeal_view(cmd.episode_id) or {}, True)

        result = await self.uow.run(work)
        metrics.appeal_decided(result.appeal, result.changed)  # committed
        return result

    # -- exemptions ---------------------------------------------------------------------------
    async def exempt(self, *, provider_code: str, period: str, reason: str, exempted_by: str) -> tuple[Any, bool]:
        """An authorised person (``exempted_by``: the token's subject) exempts a provider-period for
        extraordinary circumstances, with a reason: nothing of it will be diverted. Only before the
        provider-period settles (after, a diversion is corrected by appeal): ``Refused``. The same
        person and reason again is the existing exemption (changed False); another one is ``Refused``;
        an unknown provider or a bad period or reason is ``InputError``. (the exemption, changed)."""
        from services.payments import judgement  # kept local: this method is all judgement adds here

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


async def _record_answers(tx: PaymentsStore, answers: Sequence[FeedbackReceived]) -> list[bool]:
    kept = intake.answers_to_keep(answers)
    if not kept:
        return [False] * len(answers)
    stored_now = await tx.insert_answers([answers[i] for i in kept.values()])
    return intake.answer_outcomes(answers, kept, stored_now)


__all__ = ["AcceptPayment", "AppealResult", "DecideAppeal", "OpenAppeal", "PaymentsHandlers", "RunSettlement"]
