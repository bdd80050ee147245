"""An in-memory ``ports.PaymentsStore`` for handler tests, with ``shared.uow.FakeUnitOfWork``.

``FakePayments`` holds the committed state; each unit of work runs on a copy of it and keeps the
copy only when the work returns (``FakeUnitOfWork``), as a PostgreSQL transaction would. Inserts
behave like the real ones' ``ON CONFLICT DO NOTHING``: a taken id is skipped and reported (a count,
or False). ``rival`` simulates another writer committing between a handler's read and its insert:
the rival's rows land in the committed state and in the running transaction's view of the unique
keys, exactly what makes the real insert skip them; the next run of the work sees them. The
PostgreSQL adapter is proven against the same behaviours in tests/integration/test_payments_store.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from services.payments import domain, judgement, review
from services.payments.handlers import PaymentsHandlers
from services.payments.intake import Stored
from services.payments.ports import AppealRecord, AppealTarget, EpisodeRow, NewAppeal, ReviewRecord, Unit
from services.payments.reconcile import Answered, Tracked
from services.payments.schemes import SchemeBook
from shared.contracts import FeedbackReceived, TransferPosted
from shared.events import Row
from shared.reference import ReferenceData
from shared.uow import FakeUnitOfWork


@dataclass
class EpisodeRecord:
    row: EpisodeRow
    status: str
    settlement_id: str | None = None
    released_pence: int | None = None
    diverted_pence: int | None = None
    decision: dict[str, Any] | None = None


@dataclass
class State:
    episodes: dict[str, EpisodeRecord] = field(default_factory=dict)  # by episode id
    answers: dict[str, FeedbackReceived] = field(default_factory=dict)  # by submission id
    prom_outcomes: dict[str, judgement.PromOutcome] = field(default_factory=dict)  # by submission id
    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)  # ledger_transfers, by transfer id
    outbox: list[Row] = field(default_factory=list)
    settlements: dict[str, dict[str, Any]] = field(default_factory=dict)
    appeals: dict[str, dict[str, Any]] = field(default_factory=dict)  # by episode id
    appeal_steps: list[dict[str, Any]] = field(default_factory=list)
    exemptions: dict[tuple[str, str], judgement.Exemption] = field(default_factory=dict)  # by (provider, period)
    statements: dict[str, dict[str, Any]] = field(default_factory=dict)  # by statement id: the row, as stored
    statement_steps: list[dict[str, Any]] = field(default_factory=list)

    def by_payment(self, payment_id: str) -> EpisodeRecord | None:
        return next((r for r in self.episodes.values() if r.row.episode.payment_id == payment_id), None)


Rival = Callable[[State], None]  # commits rows of another writer into a state


class FakePaymentsStore:
    """``ports.PaymentsStore`` over one transaction's copy of the state."""

    def __init__(self, state: State, world: FakePayments) -> None:
        self.s = state
        self.world = world

    def _call(self, name: str) -> None:
        self.world.calls[name] += 1

    def _rival(self, name: str) -> None:
        """Another writer commits now (once): into the committed state and into this view."""
        rival = self.world.rivals.pop(name, None)
        if rival is not None:
            rival(self.world.uow.state)
            rival(self.s)

    # -- payment requests ---------------------------------------------------------------------
    async def stored_episodes(self, payment_ids: Sequence[str], episode_ids: Sequence[str]) -> list[Stored]:
        self._call("stored_episodes")
        pids, eids = set(payment_ids), set(episode_ids)
        return [Stored(r.row.episode, r.row.fingerprint, r.row.request_json, r.status) for r in self.s.episodes.values()
                if r.row.episode.payment_id in pids or r.row.episode.episode_id in eids]

    async def insert_episodes(self, rows: Sequence[EpisodeRow]) -> int:
        self._call("insert_episodes")
        self._rival("insert_episodes")
        inserted = 0
        for row in rows:
            e = row.episode
            if e.episode_id in self.s.episodes or self.s.by_payment(e.payment_id) is not None:
                continue
            self.s.episodes[e.episode_id] = EpisodeRecord(row, row.status)
            inserted += 1
        return inserted

    async def request_transfers(self, tracked: Sequence[Tracked], rows: Sequence[Row]) -> None:
        self._call("request_transfers")
        for t in tracked:
            self.s.transfers.setdefault(t.transfer_id, {"episode_id": t.episode_id, "kind": t.kind,
                                                        "expected_status": t.expected_status, "status": "requested",
                                                        "entry_seq": None, "reason": None, "discrepancy": None})
        self.s.outbox.extend(rows)

    # -- answers ------------------------------------------------------------------------------
    async def insert_prom_outcomes(self, outcomes: Sequence[judgement.PromOutcome]) -> None:
        self._call("insert_prom_outcomes")
        for o in outcomes:
            self.s.prom_outcomes.setdefault(o.submission_id, o)

    async def insert_answers(self, answers: Sequence[FeedbackReceived]) -> set[str]:
        self._call("insert_answers")
        new = set()
        for fb in answers:
            if fb.submission_id not in self.s.answers:
                self.s.answers[fb.submission_id] = fb
                new.add(fb.submission_id)
        return new

    async def record_ledger_answers(self, final: Sequence[TransferPosted]) -> list[Answered]:
        self._call("record_ledger_answers")
        out = []
        for a in final:
            t = self.s.transfers.get(a.transfer_id)
            if t is None or t["status"] == "posted":
                continue
            t.update(status=a.status, entry_seq=a.entry_seq, reason=a.reason)
            out.append(Answered(a.transfer_id, t["expected_status"], t["discrepancy"]))
        return out

    async def record_discrepancies(self, found: Sequence[tuple[str, str]]) -> None:
        self._call("record_discrepancies")
        for transfer_id, why in found:
            self.s.transfers[transfer_id]["discrepancy"] = why

    # -- settlement ---------------------------------------------------------------------------
    def _held(self, period: str) -> list[EpisodeRecord]:
        return [r for r in self.s.episodes.values() if r.status == "held" and r.row.episode.period == period]

    async def held_units(self, period: str, provider_code: str | None, region_code: str | None) -> list[Unit]:
        self._call("held_units")
        return sorted({Unit(r.row.episode.provider_code, r.row.episode.scheme_id, r.row.episode.scheme_version)  # type: ignore[arg-type]
                       for r in self._held(period)
                       if provider_code in (None, r.row.episode.provider_code)
                       and region_code in (None, r.row.episode.region_code)})

    async def lock_held_episodes(self, unit: Unit, period: str) -> list[domain.Episode]:
        self._call("lock_held_episodes")
        return sorted((r.row.episode for r in self._held(period)
                       if (r.row.episode.provider_code, r.row.episode.scheme_id, r.row.episode.scheme_version) == unit),
                      key=lambda e: e.episode_id)

    async def answers_of(self, episode_ids: Sequence[str]) -> list[domain.Answer]:
        self._call("answers_of")
        ids = set(episode_ids)
        return [domain.Answer(a.submission_id, a.episode_id, a.instrument, a.authored_at,  # type: ignore[arg-type]
                              a.fft_answer, a.patient_choice)
                for a in self.s.answers.values() if a.episode_id in ids]

    async def count_settlements(self, unit: Unit, period: str) -> int:
        self._call("count_settlements")
        return sum(1 for s in self.s.settlements.values()
                   if (s["provider_code"], s["scheme_id"], s["scheme_version"]) == unit and s["period"] == period)

    async def insert_settlement(self, settlement_id: str, unit: Unit, report: domain.SettlementReport, run_by: str) -> bool:
        self._call("insert_settlement")
        self._rival("insert_settlement")
        if settlement_id in self.s.settlements:
            return False
        self.s.settlements[settlement_id] = {
            "settlement_id": settlement_id, "provider_code": unit.provider_code, "scheme_id": unit.scheme_id,
            "scheme_version": unit.scheme_version, "period": report.period, "region_code": report.region_code,
            "run_by": run_by, "run_at": self.world.clock(), "released_pence": report.released_pence,
            "diverted_pence": report.diverted_pence, "held_pence": report.held_pence, "exempted": report.exempted,
            "gate_applied": report.gate_applied, "gate_opened": report.gate_opened, "credit_pence": report.credit_pence,
            "upper_limit_count": report.upper_limit_count, "judgement_steps": list(report.judgement_steps)}
        return True

    # -- judging fairly -----------------------------------------------------------------------
    async def judgement_counts(self, period: str, window_days: int) -> judgement.PeriodCounts:
        self._call("judgement_counts")
        episodes = [r.row.episode for r in self.s.episodes.values()]
        answers = [domain.Answer(a.submission_id, a.episode_id, a.instrument, a.authored_at,  # type: ignore[arg-type]
                                 a.fft_answer, a.patient_choice) for a in self.s.answers.values()]
        return judgement.counts_from_records(episodes, answers, period, window_days)

    async def prom_outcomes(self, period: str) -> dict[tuple[str, str], tuple[int, int]]:
        self._call("prom_outcomes")
        return judgement.tally_proms(self.s.prom_outcomes.values(), period)

    async def exemption_of(self, provider_code: str, period: str) -> judgement.Exemption | None:
        self._call("exemption_of")
        return self.s.exemptions.get((provider_code, period))

    async def provider_period_settled(self, provider_code: str, period: str) -> bool:
        self._call("provider_period_settled")
        return any(s["provider_code"] == provider_code and s["period"] == period for s in self.s.settlements.values())

    async def insert_exemption(self, exemption: judgement.Exemption) -> bool:
        self._call("insert_exemption")
        self._rival("insert_exemption")
        key = (exemption.provider_code, exemption.period)
        if key in self.s.exemptions:
            return False
        self.s.exemptions[key] = exemption
        return True

    async def mark_settled(self, settlement_id: str, lines: Sequence[domain.EpisodeSettlement]) -> None:
        self._call("mark_settled")
        for line in lines:
            r = self.s.episodes[line.episode.episode_id]
            r.status, r.settlement_id = "settled", settlement_id
            r.released_pence, r.diverted_pence = line.released_pence, line.diverted_pence
            r.decision = {**vars(line.decision), "steps": list(line.steps), "transfer_ids": [p.transfer_id for p in line.plan]}

    # -- statements -------------------------------------------------------------------------
    @staticmethod
    def _st(row: dict[str, Any]) -> review.Statement:
        return review.Statement(**{k: row[k] for k in review.Statement.__dataclass_fields__})

    async def statement_of_unit(self, unit: Unit, period: str) -> review.Statement | None:
        self._call("statement_of_unit")
        row = next((r for r in self.s.statements.values()
                    if (r["provider_code"], r["scheme_id"], r["scheme_version"]) == unit and r["period"] == period), None)
        return None if row is None else self._st(row)

    async def statement(self, statement_id: str, *, lock: bool) -> review.Statement | None:
        self._call("statement")
        row = self.s.statements.get(statement_id)
        return None if row is None else self._st(row)

    async def insert_statement(self, statement: review.Statement, *, created_by: str, report: dict[str, Any]) -> bool:
        self._call("insert_statement")
        self._rival("insert_statement")
        if statement.statement_id in self.s.statements:
            return False
        self.s.statements[statement.statement_id] = {**vars(statement), "created_by": created_by, "report": report,
                                                     "finalised_by": None, "finalised_at": None, "settlement_id": None,
                                                     "final_report": None}
        return True

    async def add_statement_step(self, statement_id: str, *, step: str, actor: str, reason: str | None, at: datetime,
                                 episode_id: str | None = None, action: str | None = None) -> bool:
        self._call("add_statement_step")
        if step == "correction" and any(h["statement_id"] == statement_id and h["step"] == "correction"
                                        and h["episode_id"] == episode_id for h in self.s.statement_steps):
            return False
        self.s.statement_steps.append({"statement_id": statement_id, "step": step, "actor": actor, "reason": reason,
                                       "episode_id": episode_id, "action": action, "at": at})
        return True

    async def statement_steps(self, statement_id: str) -> list[dict[str, Any]]:
        self._call("statement_steps")
        return [{k: v for k, v in h.items() if k != "statement_id"} for h in self.s.statement_steps
                if h["statement_id"] == statement_id]

    async def accept_statement(self, statement_id: str, *, by: str, at: datetime) -> None:
        self._call("accept_statement")
        self.s.statements[statement_id].update(accepted_by=by, accepted_at=at)

    async def finalise_statement(self, statement_id: str, *, settlement_id: str, by: str, at: datetime,
                                 final_report: dict[str, Any]) -> None:
        self._call("finalise_statement")
        row = self.s.statements[statement_id]
        assert row["status"] == "provisional" and settlement_id in self.s.settlements  # the real table's checks
        row.update(status="final", settlement_id=settlement_id, finalised_by=by, finalised_at=at, final_report=final_report)

    async def due_statements(self, now: datetime, limit: int) -> list[review.Statement]:
        self._call("due_statements")
        due = [self._st(r) for r in self.s.statements.values()
               if r["status"] == "provisional" and (r["accepted_at"] is not None or r["window_closes_at"] <= now)]
        return sorted(due, key=lambda st: (st.window_closes_at, st.statement_id))[:limit]

    async def publish(self, rows: Sequence[Row]) -> None:
        self._call("publish")
        self.s.outbox.extend(rows)

    async def statement_view(self, statement_id: str) -> dict[str, Any] | None:
        row = self.s.statements.get(statement_id)
        if row is None:
            return None
        history = await self.statement_steps(statement_id)
        return {**row, "corrections": [h for h in history if h["step"] == "correction"],
                "queries": [h for h in history if h["step"] == "query"], "history": history}

    # -- appeals ------------------------------------------------------------------------------
    async def appeal_target(self, episode_id: str, *, lock: bool) -> AppealTarget | None:
        self._call("appeal_target")
        r = self.s.episodes.get(episode_id)
        if r is None:
            return None
        settled_at = self.s.settlements[r.settlement_id]["run_at"] if r.settlement_id else None
        return AppealTarget(r.row.episode, r.status, r.diverted_pence, settled_at)

    async def appeal(self, episode_id: str, *, lock: bool) -> AppealRecord | None:
        self._call("appeal")
        a = self.s.appeals.get(episode_id)
        if a is None:
            return None
        return AppealRecord(a["appeal_id"], episode_id, a["status"], a["diverted_pence"], a["appealed_by"], a["reason"])

    async def insert_appeal(self, appeal: NewAppeal) -> bool:
        self._call("insert_appeal")
        self._rival("insert_appeal")
        e = appeal.episode
        if e.episode_id in self.s.appeals:
            return False
        self.s.appeals[e.episode_id] = {
            "appeal_id": appeal.appeal_id, "episode_id": e.episode_id, "payment_id": e.payment_id,
            "provider_code": e.provider_code, "region_code": e.region_code, "period": e.period,
            "diverted_pence": appeal.diverted_pence, "status": "open", "reason": appeal.reason,
            "appealed_by": appeal.appealed_by, "appealed_at": appeal.appealed_at, "deadline": appeal.deadline,
            "decided_by": None, "decided_at": None, "decision_reason": None, "transfer_id": None,
            "review_status": None, "review_requested_by": None, "review_requested_at": None, "review_request_reason": None,
            "review_decided_by": None, "review_decided_at": None, "review_decision_reason": None, "review_transfer_id": None}
        return True

    async def decide_appeal(self, appeal_id: str, *, outcome: domain.AppealOutcome, decided_by: str, reason: str,
                            at: datetime, transfer_id: str | None) -> None:
        self._call("decide_appeal")
        a = next(a for a in self.s.appeals.values() if a["appeal_id"] == appeal_id)
        a.update(status=outcome, decided_by=decided_by, decided_at=at, decision_reason=reason, transfer_id=transfer_id)

    async def add_appeal_step(self, appeal_id: str, *, step: str, actor: str, reason: str, at: datetime) -> None:
        self._call("add_appeal_step")
        self.s.appeal_steps.append({"appeal_id": appeal_id, "step": step, "actor": actor, "reason": reason, "at": at})

    async def appeal_review(self, episode_id: str, *, lock: bool) -> ReviewRecord | None:
        self._call("appeal_review")
        a = self.s.appeals.get(episode_id)
        if a is None:
            return None
        return ReviewRecord(a["appeal_id"], episode_id, a["status"], a["diverted_pence"], a["appealed_by"], a["decided_by"],
                            a["decided_at"], a["review_status"], a["review_requested_by"], a["review_request_reason"])

    async def request_review(self, appeal_id: str, *, requested_by: str, reason: str, at: datetime) -> None:
        self._call("request_review")
        a = next(a for a in self.s.appeals.values() if a["appeal_id"] == appeal_id)
        assert a["status"] == "rejected" and a["review_status"] is None  # the real table's checks
        a.update(review_status="requested", review_requested_by=requested_by, review_requested_at=at,
                 review_request_reason=reason)

    async def decide_review(self, appeal_id: str, *, outcome: domain.AppealOutcome, decided_by: str, reason: str,
                            at: datetime, transfer_id: str | None) -> None:
        self._call("decide_review")
        a = next(a for a in self.s.appeals.values() if a["appeal_id"] == appeal_id)
        assert decided_by not in (a["appealed_by"], a["decided_by"], a["review_requested_by"])  # the real table's check
        a.update(review_status=outcome, review_decided_by=decided_by, review_decided_at=at, review_decision_reason=reason,
                 review_transfer_id=transfer_id)

    async def appeal_view(self, episode_id: str) -> dict[str, Any] | None:
        a = self.s.appeals.get(episode_id)
        if a is None:
            return None
        history = [{k: s[k] for k in ("step", "actor", "reason", "at")} for s in self.s.appeal_steps
                   if s["appeal_id"] == a["appeal_id"]]
        review = None if a["review_status"] is None else {
            "status": a["review_status"], "requested_by": a["review_requested_by"], "requested_at": a["review_requested_at"],
            "reason": a["review_request_reason"], "decided_by": a["review_decided_by"], "decided_at": a["review_decided_at"],
            "decision_reason": a["review_decision_reason"], "transfer_id": a["review_transfer_id"]}
        return {**{k: v for k, v in a.items() if not k.startswith("review_")}, "review": review, "history": history}


class FakePayments:
    """The handlers over the fake store: ``.handlers``, ``.state`` (committed), ``.uow``."""

    def __init__(self, *, book: SchemeBook, ref: ReferenceData, hold_model: domain.HoldModel = "two_phase",
                 today: date = date(2026, 12, 2), activity_date_max_age_days: int = 730) -> None:
        self.now = datetime(today.year, today.month, today.day, 9, tzinfo=timezone.utc)
        self.calls: Counter[str] = Counter()
        self.rivals: dict[str, Rival] = {}
        self.uow: FakeUnitOfWork[FakePaymentsStore] = FakeUnitOfWork(State(), lambda draft: FakePaymentsStore(draft, self))
        self.handlers = PaymentsHandlers(self.uow, book=book, ref=ref, hold_model=hold_model,
                                         activity_date_max_age_days=activity_date_max_age_days, clock=self.clock)

    @property
    def state(self) -> State:
        return self.uow.state

    def clock(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)
