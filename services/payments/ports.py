"""What payments' command handlers need from storage, bound to one transaction.

``store.PgPaymentsStore`` is the PostgreSQL adapter; ``tests/unit/fakes_payments.py`` keeps the
same in memory, so handler tests run in milliseconds. The reads here are the ones a decision is
made against, inside the transaction that then writes (the read models the API shows are in
``queries.py``). Inserts never overwrite: an insert that finds its key taken says so (a count or
False), and the handler then raises ``shared.uow.Raced`` so the unit of work runs it again on a
fresh view, unless the rules say a taken key is simply a duplicate (answers).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from services.payments import domain, judgement, review
from services.payments.intake import Stored
from services.payments.reconcile import Answered, Tracked
from shared.contracts import FeedbackReceived, TransferPosted
from shared.events import Row


class EpisodeRow(NamedTuple):
    """A new episode as stored: the episode, its request, and the id tracing the request."""

    episode: domain.Episode
    fingerprint: str
    request_json: str
    status: str
    correlation_id: str


class Unit(NamedTuple):
    """What settles together: one provider's held episodes of a period under one scheme version."""

    provider_code: str
    scheme_id: str
    scheme_version: int


class AppealTarget(NamedTuple):
    """An episode as an appeal against it is judged."""

    episode: domain.Episode
    status: str
    diverted_pence: int | None
    settled_at: datetime | None


class AppealRecord(NamedTuple):
    appeal_id: str
    episode_id: str
    status: domain.AppealStatus
    diverted_pence: int
    appealed_by: str
    reason: str


class ReviewRecord(NamedTuple):
    """An appeal as a second-level review of it is judged."""

    appeal_id: str
    episode_id: str
    status: domain.AppealStatus
    diverted_pence: int
    appealed_by: str
    decided_by: str | None
    decided_at: datetime | None
    review_status: domain.ReviewStatus | None
    review_requested_by: str | None
    review_request_reason: str | None


class NewAppeal(NamedTuple):
    appeal_id: str
    episode: domain.Episode
    diverted_pence: int
    reason: str
    appealed_by: str
    appealed_at: datetime
    deadline: datetime


class PaymentsStore(Protocol):
    # -- payment requests -------------------------------------------------------------------------
    async def stored_episodes(self, payment_ids: Sequence[str], episode_ids: Sequence[str]) -> list[Stored]:
        """Every stored episode with one of these payment ids or episode ids."""

    async def insert_episodes(self, rows: Sequence[EpisodeRow]) -> int:
        """Insert the episodes whose ids are still free; how many were inserted."""

    async def request_transfers(self, tracked: Sequence[Tracked], rows: Sequence[Row]) -> None:
        """Remember the transfers asked for (to compare the ledger's answers with) and put their
        ``ledger.transfer-requests.v1`` rows in the outbox, in order."""

    # -- answers ------------------------------------------------------------------------------
    async def insert_answers(self, answers: Sequence[FeedbackReceived]) -> set[str]:
        """Store the answers whose submission ids are new; the submission ids stored now."""

    async def insert_prom_outcomes(self, outcomes: Sequence[judgement.PromOutcome]) -> None:
        """Keep the PROM pair completions whose submission ids are new (``[signals]`` reads them)."""

    async def record_ledger_answers(self, final: Sequence[TransferPosted]) -> list[Answered]:
        """Record each answer on its tracked transfer unless that one is posted already (posted is
        final); the transfers updated, with their expected status and recorded discrepancy."""

    async def record_discrepancies(self, found: Sequence[tuple[str, str]]) -> None:
        """Mark each (transfer id, why) as a discrepancy, now."""

    # -- settlement ---------------------------------------------------------------------------
    async def held_units(self, period: str, provider_code: str | None, region_code: str | None) -> list[Unit]:
        """The units of a period with held episodes, ordered by provider, scheme id and version."""

    async def lock_held_episodes(self, unit: Unit, period: str) -> list[domain.Episode]:
        """The unit's held episodes, in episode id order, locked to the end of the transaction."""

    async def answers_of(self, episode_ids: Sequence[str]) -> list[domain.Answer]:
        """Every stored answer about these episodes."""

    async def count_settlements(self, unit: Unit, period: str) -> int:
        """Settlement reports the unit has already."""

    async def insert_settlement(self, settlement_id: str, unit: Unit, report: domain.SettlementReport, run_by: str) -> bool:
        """Store the unit's report; False if the id was taken meanwhile."""

    async def mark_settled(self, settlement_id: str, lines: Sequence[domain.EpisodeSettlement]) -> None:
        """Each line's episode: settled by this settlement, released and diverted, its decision."""

    # -- judging fairly (judgement.py) --------------------------------------------------------------
    async def judgement_counts(self, period: str, window_days: int) -> judgement.PeriodCounts:
        """The period's episodes counted by provider, region, stratum (service type, age band, IMD
        decile) and first FFT answer within ``window_days`` (``judgement.counts_from_records``)."""

    async def prom_outcomes(self, period: str) -> dict[tuple[str, str], tuple[int, int]]:
        """Per (trust, instrument): PROM pairs completed in the period that improved, and all of
        them (``judgement.tally_proms``)."""

    async def exemption_of(self, provider_code: str, period: str) -> judgement.Exemption | None:
        """The provider-period's exemption, if any; holds the provider-period's exemption lock to the
        end of the transaction (settling and exempting it are serialised)."""

    async def provider_period_settled(self, provider_code: str, period: str) -> bool:
        """Whether any unit of the provider-period has a settlement report."""

    async def insert_exemption(self, exemption: judgement.Exemption) -> bool:
        """Record the exemption; False if the provider-period has one already."""

    # -- statements (scheme option [review], review.py) -------------------------------------------
    async def statement_of_unit(self, unit: Unit, period: str) -> review.Statement | None:
        """The unit's statement, locked to the end of the transaction."""

    async def statement(self, statement_id: str, *, lock: bool) -> review.Statement | None:
        """A statement, locked to the end of the transaction if ``lock``."""

    async def insert_statement(self, statement: review.Statement, *, created_by: str, report: dict[str, Any]) -> bool:
        """Record a provisional statement; False if the unit (or the id) has one already."""

    async def add_statement_step(self, statement_id: str, *, step: str, actor: str, reason: str | None, at: datetime,
                                 episode_id: str | None = None, action: str | None = None) -> bool:
        """Append a step to the statement's history; False for a second correction of one episode."""

    async def statement_steps(self, statement_id: str) -> list[dict[str, Any]]:
        """The statement's history in order: step, actor, reason, episode_id, action, at."""

    async def accept_statement(self, statement_id: str, *, by: str, at: datetime) -> None:
        """Record the trust's acceptance of a provisional statement."""

    async def finalise_statement(self, statement_id: str, *, settlement_id: str, by: str, at: datetime,
                                 final_report: dict[str, Any]) -> None:
        """Mark the statement final: the settlement that moved its money, who finalised it, the final report."""

    async def due_statements(self, now: datetime, limit: int) -> list[review.Statement]:
        """Provisional statements accepted or past their window, oldest window first."""

    async def publish(self, rows: Sequence[Row]) -> None:
        """Put event rows (not ledger transfers) in the outbox, in order."""

    async def statement_view(self, statement_id: str) -> dict[str, Any] | None:
        """The statement as the API shows it, with its history, as this transaction sees it."""

    # -- appeals ------------------------------------------------------------------------------
    async def appeal_target(self, episode_id: str, *, lock: bool) -> AppealTarget | None:
        """The episode and its settlement, locked to the end of the transaction if ``lock``."""

    async def appeal(self, episode_id: str, *, lock: bool) -> AppealRecord | None:
        """The episode's appeal, locked to the end of the transaction if ``lock``."""

    async def insert_appeal(self, appeal: NewAppeal) -> bool:
        """Open the appeal; False if the episode has one already (another writer meanwhile)."""

    async def decide_appeal(self, appeal_id: str, *, outcome: domain.AppealOutcome, decided_by: str, reason: str,
                            at: datetime, transfer_id: str | None) -> None:
        """Record an open appeal's decision."""

    async def add_appeal_step(self, appeal_id: str, *, step: str, actor: str, reason: str, at: datetime) -> None:
        """Append a step (appealed, upheld, rejected) to the appeal's history."""

    async def appeal_review(self, episode_id: str, *, lock: bool) -> ReviewRecord | None:
        """The episode's appeal with its review, locked to the end of the transaction if ``lock``."""

    async def request_review(self, appeal_id: str, *, requested_by: str, reason: str, at: datetime) -> None:
        """Record that the appellant's side asked for an independent review of a decided appeal."""

    async def decide_review(self, appeal_id: str, *, outcome: domain.AppealOutcome, decided_by: str, reason: str,
                            at: datetime, transfer_id: str | None) -> None:
        """Record a requested review's decision."""

    async def appeal_view(self, episode_id: str) -> dict[str, Any] | None:
        """The appeal as the API shows it, with its history, as this transaction sees it."""

