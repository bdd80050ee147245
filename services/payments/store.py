"""The payments service's PostgreSQL adapter: ``ports.PaymentsStore`` bound to one transaction.

It reads what a handler's decision is made against and writes what the decision says: episodes,
answers, the ledger's answers, settlements, appeals, and the ledger transfer requests in the
outbox (``shared.outbox.enqueue``), all in the caller's transaction (``shared.uow.PgUnitOfWork``),
so nothing is half-written and nothing is lost if Kafka is down. No rule is decided here: the
handlers (``handlers.py``, ``settlement.py``) ask the pure core. Every batch is a fixed number of
statements whatever its size; settlement's statements hold at most ``SETTLE_STATEMENT_ROWS`` rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from services.payments import domain, judgement, queries, review
from services.payments.queries import answer_of, episode_of
from services.payments.intake import Stored
from services.payments.ports import AppealRecord, AppealTarget, EpisodeRow, NewAppeal, ReviewRecord, Unit
from services.payments.reconcile import Answered, Tracked
from shared.contracts import FeedbackReceived, TransferPosted
from shared.events import Row
from shared.outbox import enqueue
from shared.periods import period_utc_bounds

T = TypeVar("T")

# Rows per statement when a batch or a settlement unit is read and written. A big trust has
# hundreds of thousands of episodes in a month; the whole unit still settles in one transaction
# (its cap and minimum sample are computed over all of it), but no single statement grows with
# it, so none meets the pool's 30 s per-statement timeout. Found by the full "one England day":
# the one UPDATE of the largest trust's month ran past it and the month's settlement failed.
# 20,000 rows cost the same per episode as one statement per unit (bench/payments --settlement).
SETTLE_STATEMENT_ROWS = 20_000


def slices(items: Sequence[T]) -> list[Sequence[T]]:
    n = SETTLE_STATEMENT_ROWS
    return [items[i:i + n] for i in range(0, len(items), n)]


# What a decision reads of an episode: not the stored request unless a repeat is compared with it.
_EPISODE_COLUMNS = ("payment_id, episode_id, commissioner_code, provider_code, region_code, service_type,"
                    " activity_date, amount_pence, at_risk_pence, scheme_id, scheme_version, hold_model")
_ANSWER_COLUMNS = "submission_id, episode_id, instrument, authored_at, fft_answer, patient_choice"

# The one spelling of an episode's insert, for a batch of any size (an HTTP request is one).
_INSERT_EPISODES = (
    "INSERT INTO episodes(episode_id, payment_id, commissioner_code, provider_code, region_code, service_type,"
    " activity_date, period, amount_pence, at_risk_pence, scheme_id, scheme_version, request_fingerprint, request,"
    " correlation_id, status, hold_model, age_band, imd_decile)"
    " SELECT e, p, c, pr, r, st, d, pe, a, ar, si, sv, f, q::jsonb, ci, s, h, ab, im"
    " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::date[], $8::text[],"
    "             $9::bigint[], $10::bigint[], $11::text[], $12::int[], $13::text[], $14::text[], $15::text[],"
    "             $16::text[], $17::text[], $18::text[], $19::smallint[])"
    "      AS t(e, p, c, pr, r, st, d, pe, a, ar, si, sv, f, q, ci, s, h, ab, im)"
    " ON CONFLICT DO NOTHING RETURNING episode_id"
)

# The judgement's counts (judgement.counts_from_records computes the same from values): each
# episode of the period once, by its first FFT answer authored from its activity date (00:00 UTC)
# to the end of day activity date + the window; ties on authored_at by submission id in code point
# order, as domain.decide sorts them. One statement per period, aggregated in the database.
_JUDGEMENT_COUNTS = (
    "SELECT e.provider_code, e.region_code, e.service_type, e.age_band, e.imd_decile, f.fft_answer, count(*) AS episodes"
    " FROM episodes e LEFT JOIN LATERAL ("
    "   SELECT a.fft_answer FROM answers a"
    "    WHERE a.episode_id = e.episode_id AND a.instrument = 'fft' AND a.fft_answer IS NOT NULL"
    "      AND a.authored_at >= (e.activity_date::timestamp AT TIME ZONE 'UTC')"
    "      AND a.authored_at < ((e.activity_date + ($2::int + 1))::timestamp AT TIME ZONE 'UTC')"
    "    ORDER BY a.authored_at, a.submission_id COLLATE \"C\" LIMIT 1) f ON true"
    " WHERE e.period = $1 GROUP BY 1, 2, 3, 4, 5, 6"
)


def decision_json(line: domain.EpisodeSettlement) -> str:
    """The decision an episode row keeps: the decision's fields in order, its steps and the ids
    of its transfers. ``vars`` instead of ``asdict``: the fields are plain values and tuples of
    strings, which asdict would only copy, recursively, at a cost per episode."""
    return json.dumps({**vars(line.decision), "steps": list(line.steps),
                       "transfer_ids": [p.transfer_id for p in line.plan]}, default=str)


class PgPaymentsStore:
    """``ports.PaymentsStore`` on one connection inside the unit of work's transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    # -- payment requests -------------------------------------------------------------------------
    async def stored_episodes(self, payment_ids: Sequence[str], episode_ids: Sequence[str]) -> list[Stored]:
        rows = await self.conn.fetch(
            f"SELECT {_EPISODE_COLUMNS}, request_fingerprint, request::text AS request, status FROM episodes"
            " WHERE payment_id = ANY($1::text[]) OR episode_id = ANY($2::text[])",
            payment_ids, episode_ids,
        )
        return [Stored(episode_of(r), r["request_fingerprint"], r["request"], r["status"]) for r in rows]

    async def insert_episodes(self, rows: Sequence[EpisodeRow]) -> int:
        if not rows:
            return 0
        columns: list[list[Any]] = [[] for _ in range(19)]
        for e, fingerprint, request_json, status, correlation_id in rows:
            for column, value in zip(columns, (
                e.episode_id, e.payment_id, e.commissioner_code, e.provider_code, e.region_code, e.service_type,
                e.activity_date, e.period, e.amount_pence, e.at_risk_pence, e.scheme_id, e.scheme_version, fingerprint,
                request_json, correlation_id, status, e.hold_model, e.age_band, e.imd_decile,
            )):
                column.append(value)
        return len(await self.conn.fetch(_INSERT_EPISODES, *columns))

    async def request_transfers(self, tracked: Sequence[Tracked], rows: Sequence[Row]) -> None:
        for part in slices(tracked):
            await self.conn.execute(
                "INSERT INTO ledger_transfers(transfer_id, episode_id, kind, expected_status)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING",
                [t.transfer_id for t in part], [t.episode_id for t in part], [t.kind for t in part],
                [t.expected_status for t in part],
            )
        for rows_part in slices(rows):  # ids in row order, as enqueue gives them: the relay publishes in that order
            await enqueue(self.conn, rows_part)

    # -- answers ------------------------------------------------------------------------------
    async def insert_answers(self, answers: Sequence[FeedbackReceived]) -> set[str]:
        if not answers:
            return set()
        rows = await self.conn.fetch(
            "INSERT INTO answers(submission_id, episode_id, provider_code, instrument, fft_answer, patient_choice,"
            " authored_at, amends_submission_id)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::text[],"
            "                      $7::timestamptz[], $8::text[])"
            " ON CONFLICT DO NOTHING RETURNING submission_id",
            [fb.submission_id for fb in answers], [fb.episode_id for fb in answers], [fb.provider_code for fb in answers],
            [fb.instrument for fb in answers], [int(fb.fft_answer) if fb.fft_answer is not None else None for fb in answers],
            [fb.patient_choice for fb in answers], [fb.authored_at for fb in answers],
            [fb.amends_submission_id for fb in answers],
        )
        return {r["submission_id"] for r in rows}

    async def insert_prom_outcomes(self, outcomes: Sequence[judgement.PromOutcome]) -> None:
        if not outcomes:
            return
        await self.conn.execute(
            "INSERT INTO prom_outcomes(submission_id, provider_code, instrument, health_gain, authored_at)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::timestamptz[]) ON CONFLICT DO NOTHING",
            [o.submission_id for o in outcomes], [o.provider_code for o in outcomes], [o.instrument for o in outcomes],
            [o.health_gain for o in outcomes], [o.authored_at for o in outcomes])

    async def record_ledger_answers(self, final: Sequence[TransferPosted]) -> list[Answered]:
        if not final:
            return []
        rows = await self.conn.fetch(
            "UPDATE ledger_transfers t SET status = d.s, entry_seq = d.q, reason = d.r, answered_at = now()"
            " FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[]) AS d(id, s, q, r)"
            " WHERE t.transfer_id = d.id AND t.status <> 'posted' RETURNING t.transfer_id, t.expected_status, t.discrepancy",
            [a.transfer_id for a in final], [a.status for a in final], [a.entry_seq for a in final], [a.reason for a in final],
        )
        return [Answered(r["transfer_id"], r["expected_status"], r["discrepancy"]) for r in rows]

    async def record_discrepancies(self, found: Sequence[tuple[str, str]]) -> None:
        if not found:
            return
        await self.conn.execute(
            "UPDATE ledger_transfers t SET discrepancy = d.why, discrepancy_at = now()"
            " FROM unnest($1::text[], $2::text[]) AS d(id, why) WHERE t.transfer_id = d.id",
            [f[0] for f in found], [f[1] for f in found],
        )

    # -- settlement ---------------------------------------------------------------------------
    async def held_units(self, period: str, provider_code: str | None, region_code: str | None) -> list[Unit]:
        rows = await self.conn.fetch(
            "SELECT DISTINCT provider_code, scheme_id, scheme_version FROM episodes"
            " WHERE period = $1 AND status = 'held' AND ($2::text IS NULL OR provider_code = $2)"
            " AND ($3::text IS NULL OR region_code = $3)"
            " ORDER BY provider_code, scheme_id, scheme_version",
            period, provider_code, region_code,
        )
        return [Unit(r["provider_code"], r["scheme_id"], r["scheme_version"]) for r in rows]

    async def lock_held_episodes(self, unit: Unit, period: str) -> list[domain.Episode]:
        episodes: list[domain.Episode] = []
        after = ""
        while True:  # keyset pages, each locked: the unit is read whole inside this transaction
            rows = await self.conn.fetch(
                f"SELECT {_EPISODE_COLUMNS} FROM episodes WHERE provider_code = $1 AND period = $2 AND scheme_id = $3"
                " AND scheme_version = $4 AND status = 'held' AND episode_id > $5 ORDER BY episode_id LIMIT $6 FOR UPDATE",
                unit.provider_code, period, unit.scheme_id, unit.scheme_version, after, SETTLE_STATEMENT_ROWS,
            )
            episodes += [episode_of(r) for r in rows]
            if len(rows) < SETTLE_STATEMENT_ROWS:
                return episodes
            after = rows[-1]["episode_id"]

    async def answers_of(self, episode_ids: Sequence[str]) -> list[domain.Answer]:
        answers: list[domain.Answer] = []
        for part in slices(episode_ids):
            answers += [answer_of(r) for r in await self.conn.fetch(
                f"SELECT {_ANSWER_COLUMNS} FROM answers WHERE episode_id = ANY($1::text[])", part)]
        return answers

    async def count_settlements(self, unit: Unit, period: str) -> int:
        return await self.conn.fetchval(
            "SELECT count(*) FROM settlements WHERE provider_code = $1 AND period = $2 AND scheme_id = $3"
            " AND scheme_version = $4", unit.provider_code, period, unit.scheme_id, unit.scheme_version)

    async def insert_settlement(self, settlement_id: str, unit: Unit, report: domain.SettlementReport, run_by: str) -> bool:
        inserted = await self.conn.fetchval(
            "INSERT INTO settlements(settlement_id, provider_code, region_code, period, scheme_id, scheme_version, run_by,"
            " billed_pence, held_pence, released_pence, diverted_pence, responses, episodes, min_sample_applied,"
            " cap_applied, cap_pence, exempted, exemption_reason, gate_applied, gate_opened, measured_responses,"
            " measured_events, benchmark_pct, adjusted_expected_pct, upper_limit_count, casemix_factor, credit_pence,"
            " judgement_steps) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,"
            " $23,$24,$25,$26,$27,$28::jsonb)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            settlement_id, unit.provider_code, report.region_code, report.period, unit.scheme_id, unit.scheme_version, run_by,
            report.billed_pence, report.held_pence, report.released_pence, report.diverted_pence, report.responses,
            report.episodes, report.min_sample_applied, report.cap_applied, report.cap_pence, report.exempted,
            report.exemption_reason, report.gate_applied, report.gate_opened, report.measured_responses,
            report.measured_events, report.benchmark_pct, report.adjusted_expected_pct, report.upper_limit_count,
            report.casemix_factor, report.credit_pence, json.dumps(list(report.judgement_steps)),
        )
        return bool(inserted)

    # -- judging fairly (judgement.py) --------------------------------------------------------------
    async def prom_outcomes(self, period: str) -> dict[tuple[str, str], tuple[int, int]]:
        start, end = period_utc_bounds(period)
        rows = await self.conn.fetch(
            "SELECT provider_code, instrument, count(*) FILTER (WHERE health_gain > 0) AS improved, count(*) AS pairs"
            " FROM prom_outcomes WHERE authored_at >= $1 AND authored_at < $2 GROUP BY 1, 2 ORDER BY 1, 2", start, end)
        return {(r["provider_code"], r["instrument"]): (int(r["improved"]), int(r["pairs"])) for r in rows}

    async def judgement_counts(self, period: str, window_days: int) -> judgement.PeriodCounts:
        rows = await self.conn.fetch(_JUDGEMENT_COUNTS, period, window_days)
        counts = (judgement.AnswerCount(r["provider_code"], r["region_code"], r["service_type"], r["age_band"],
                                        r["imd_decile"], r["fft_answer"], int(r["episodes"])) for r in rows)
        return judgement.PeriodCounts(period, window_days, tuple(sorted(counts, key=judgement.row_order)))

    async def exemption_of(self, provider_code: str, period: str) -> judgement.Exemption | None:
        # Serialises settling and exempting one provider-period (until the transaction ends), so
        # an exemption either lands before the settlement reads it or is refused as too late. Two
        # statements on purpose: the read's snapshot is taken after the lock is held, so it sees
        # whatever the lock's previous holder committed.
        await self.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"exemption:{provider_code}:{period}")
        r = await self.conn.fetchrow("SELECT provider_code, period, reason, exempted_by, exempted_at FROM exemptions"
                                     " WHERE provider_code = $1 AND period = $2", provider_code, period)
        return None if r is None else judgement.Exemption(r["provider_code"], r["period"], r["reason"], r["exempted_by"],
                                                          r["exempted_at"])

    async def provider_period_settled(self, provider_code: str, period: str) -> bool:
        return bool(await self.conn.fetchval("SELECT EXISTS (SELECT 1 FROM settlements WHERE provider_code = $1 AND period = $2)",
                                             provider_code, period))

    async def insert_exemption(self, exemption: judgement.Exemption) -> bool:
        e = exemption
        return bool(await self.conn.fetchval(
            "INSERT INTO exemptions(provider_code, period, reason, exempted_by, exempted_at) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT DO NOTHING RETURNING 1", e.provider_code, e.period, e.reason, e.exempted_by, e.exempted_at))

    async def mark_settled(self, settlement_id: str, lines: Sequence[domain.EpisodeSettlement]) -> None:
        for part in slices(lines):  # one statement per slice, not per episode
            await self.conn.execute(
                "UPDATE episodes SET status = 'settled', settlement_id = $1, released_pence = d.released,"
                " diverted_pence = d.diverted, decision = d.decision::jsonb"
                " FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::text[]) AS d(episode_id, released, diverted, decision)"
                " WHERE episodes.episode_id = d.episode_id",
                settlement_id,
                [line.episode.episode_id for line in part],
                [line.released_pence for line in part],
                [line.diverted_pence for line in part],
                [decision_json(line) for line in part],
            )

    # -- statements (review.py) ---------------------------------------------------------------
    async def statement_of_unit(self, unit: Unit, period: str) -> review.Statement | None:
        r = await self.conn.fetchrow(
            f"SELECT {queries.STATEMENT_COLUMNS} FROM statements WHERE provider_code = $1 AND period = $2 AND scheme_id = $3"
            " AND scheme_version = $4 FOR UPDATE", unit.provider_code, period, unit.scheme_id, unit.scheme_version)
        return None if r is None else queries.statement_of(r)

    async def statement(self, statement_id: str, *, lock: bool) -> review.Statement | None:
        r = await self.conn.fetchrow(f"SELECT {queries.STATEMENT_COLUMNS} FROM statements WHERE statement_id = $1"
                                     + (" FOR UPDATE" if lock else ""), statement_id)
        return None if r is None else queries.statement_of(r)

    async def insert_statement(self, statement: review.Statement, *, created_by: str, report: dict[str, Any]) -> bool:
        s = statement
        return bool(await self.conn.fetchval(
            "INSERT INTO statements(statement_id, provider_code, region_code, period, scheme_id, scheme_version, status,"
            " created_by, created_at, window_closes_at, episode_ids, report)"
            " VALUES ($1, $2, $3, $4, $5, $6, 'provisional', $7, $8, $9, $10, $11::jsonb) ON CONFLICT DO NOTHING RETURNING 1",
            s.statement_id, s.provider_code, s.region_code, s.period, s.scheme_id, s.scheme_version, created_by, s.created_at,
            s.window_closes_at, list(s.episode_ids), json.dumps(report, default=str)))

    async def add_statement_step(self, statement_id: str, *, step: str, actor: str, reason: str | None, at: datetime,
                                 episode_id: str | None = None, action: str | None = None) -> bool:
        return bool(await self.conn.fetchval(
            "INSERT INTO statement_events(statement_id, step, actor, reason, episode_id, action, at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING 1",
            statement_id, step, actor, reason, episode_id, action, at))

    async def statement_steps(self, statement_id: str) -> list[dict[str, Any]]:
        return await queries.statement_steps(self.conn, statement_id)

    async def accept_statement(self, statement_id: str, *, by: str, at: datetime) -> None:
        await self.conn.execute("UPDATE statements SET accepted_by = $2, accepted_at = $3 WHERE statement_id = $1"
                                " AND status = 'provisional'", statement_id, by, at)

    async def finalise_statement(self, statement_id: str, *, settlement_id: str, by: str, at: datetime,
                                 final_report: dict[str, Any]) -> None:
        await self.conn.execute(
            "UPDATE statements SET status = 'final', settlement_id = $2, finalised_by = $3, finalised_at = $4,"
            " final_report = $5::jsonb WHERE statement_id = $1 AND status = 'provisional'",
            statement_id, settlement_id, by, at, json.dumps(final_report, default=str))

    async def due_statements(self, now: datetime, limit: int) -> list[review.Statement]:
        rows = await self.conn.fetch(
            f"SELECT {queries.STATEMENT_COLUMNS} FROM statements WHERE status = 'provisional'"
            " AND (accepted_at IS NOT NULL OR window_closes_at <= $1) ORDER BY window_closes_at, statement_id LIMIT $2",
            now, limit)
        return [queries.statement_of(r) for r in rows]

    async def publish(self, rows: Sequence[Row]) -> None:
        for part in slices(rows):
            await enqueue(self.conn, part)

    async def statement_view(self, statement_id: str) -> dict[str, Any] | None:
        return await queries.statement_view(self.conn, statement_id)

    # -- appeals ------------------------------------------------------------------------------
    async def appeal_target(self, episode_id: str, *, lock: bool) -> AppealTarget | None:
        r = await self.conn.fetchrow(
            "SELECT e.*, s.run_at AS settled_at FROM episodes e LEFT JOIN settlements s USING (settlement_id)"
            " WHERE e.episode_id = $1" + (" FOR UPDATE OF e" if lock else ""), episode_id)
        if r is None:
            return None
        return AppealTarget(episode_of(r), r["status"], r["diverted_pence"], r["settled_at"])

    async def appeal(self, episode_id: str, *, lock: bool) -> AppealRecord | None:
        a = await self.conn.fetchrow(
            "SELECT appeal_id, episode_id, status, diverted_pence, appealed_by, reason FROM appeals WHERE episode_id = $1"
            + (" FOR UPDATE" if lock else ""), episode_id)
        return AppealRecord(*a) if a is not None else None

    async def insert_appeal(self, appeal: NewAppeal) -> bool:
        e = appeal.episode
        inserted = await self.conn.fetchval(
            "INSERT INTO appeals(appeal_id, episode_id, payment_id, provider_code, region_code, period, diverted_pence,"
            " reason, appealed_by, appealed_at, deadline) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            appeal.appeal_id, e.episode_id, e.payment_id, e.provider_code, e.region_code, e.period, appeal.diverted_pence,
            appeal.reason, appeal.appealed_by, appeal.appealed_at, appeal.deadline,
        )
        return bool(inserted)

    async def decide_appeal(self, appeal_id: str, *, outcome: domain.AppealOutcome, decided_by: str, reason: str,
                            at: datetime, transfer_id: str | None) -> None:
        await self.conn.execute(
            "UPDATE appeals SET status = $2, decided_by = $3, decided_at = $4, decision_reason = $5, transfer_id = $6"
            " WHERE appeal_id = $1",
            appeal_id, outcome, decided_by, at, reason, transfer_id,
        )

    async def add_appeal_step(self, appeal_id: str, *, step: str, actor: str, reason: str, at: datetime) -> None:
        await self.conn.execute("INSERT INTO appeal_events(appeal_id, step, actor, reason, at) VALUES ($1,$2,$3,$4,$5)",
                                appeal_id, step, actor, reason, at)

    async def appeal_review(self, episode_id: str, *, lock: bool) -> ReviewRecord | None:
        a = await self.conn.fetchrow(
            "SELECT appeal_id, episode_id, status, diverted_pence, appealed_by, decided_by, decided_at, review_status,"
            " review_requested_by, review_request_reason FROM appeals WHERE episode_id = $1"
            + (" FOR UPDATE" if lock else ""), episode_id)
        return ReviewRecord(*a) if a is not None else None

    async def request_review(self, appeal_id: str, *, requested_by: str, reason: str, at: datetime) -> None:
        await self.conn.execute(
            "UPDATE appeals SET review_status = 'requested', review_requested_by = $2, review_requested_at = $3,"
            " review_request_reason = $4 WHERE appeal_id = $1 AND review_status IS NULL", appeal_id, requested_by, at, reason)

    async def decide_review(self, appeal_id: str, *, outcome: domain.AppealOutcome, decided_by: str, reason: str,
                            at: datetime, transfer_id: str | None) -> None:
        await self.conn.execute(
            "UPDATE appeals SET review_status = $2, review_decided_by = $3, review_decided_at = $4, review_decision_reason = $5,"
            " review_transfer_id = $6 WHERE appeal_id = $1 AND review_status = 'requested'",
            appeal_id, outcome, decided_by, at, reason, transfer_id)

    async def appeal_view(self, episode_id: str) -> dict[str, Any] | None:
        return await queries.appeal_view(self.conn, episode_id)
