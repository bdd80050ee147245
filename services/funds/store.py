"""The funds service's PostgreSQL adapter for writes (``ports.FundsStore``), bound to one
transaction. Reads for the API are in ``queries.py`` (they share ``load_grants``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import asyncpg

from services.funds.domain import Answer, Grant, Milestone, Step
from services.funds.tally import Counted, TallyPlan
from shared.contracts import GrantMeasure
from shared.events import Row
from shared.outbox import enqueue
from shared.uow import Raced

_GRANT_COLS = ("grant_id, region_code, title, aim, measure::text AS measure, start_date, end_date, amount_pence, proposed_by,"
               " proposed_at, fingerprint, decision, decided_by, decided_at, decision_reason, cancelled_by, cancelled_at,"
               " cancel_reason")
_MILESTONE_COLS = ("grant_id, n, title, provider_code, amount_pence, due_date, reserve_requested, timeout_s, reserve_status,"
                   " reserve_reason, reserve_seq, expired, met_by, met_at, met_note, pay_status, pay_reason, pay_seq,"
                   " release_why, release_requested_at, release_status, release_reason, release_seq")


def _answer(status: str | None, reason: str | None, seq: int | None) -> Answer | None:
    return Answer(status, reason, seq) if status is not None else None


def _milestone(r: asyncpg.Record) -> Milestone:
    return Milestone(
        n=r["n"], title=r["title"], provider_code=r["provider_code"], amount_pence=r["amount_pence"], due_date=r["due_date"],
        reserve_requested=r["reserve_requested"], timeout_s=r["timeout_s"],
        reserve=_answer(r["reserve_status"], r["reserve_reason"], r["reserve_seq"]), expired=r["expired"],
        met_by=r["met_by"], met_at=r["met_at"], met_note=r["met_note"], pay=_answer(r["pay_status"], r["pay_reason"], r["pay_seq"]),
        release_why=r["release_why"], release_requested_at=r["release_requested_at"],
        release=_answer(r["release_status"], r["release_reason"], r["release_seq"]))


async def load_grants(conn: asyncpg.Connection, grant_ids: Sequence[str], *, lock: bool = False) -> dict[str, Grant]:
    if not grant_ids:
        return {}
    ids = sorted(set(grant_ids))
    rows = await conn.fetch(f"SELECT {_GRANT_COLS} FROM grants WHERE grant_id = ANY($1::text[]) ORDER BY grant_id"
                            + (" FOR UPDATE" if lock else ""), ids)
    if not rows:
        return {}
    found = [r["grant_id"] for r in rows]
    milestones: dict[str, list[Milestone]] = {g: [] for g in found}
    for r in await conn.fetch(f"SELECT {_MILESTONE_COLS} FROM milestones WHERE grant_id = ANY($1::text[]) ORDER BY grant_id, n",
                              found):
        milestones[r["grant_id"]].append(_milestone(r))
    return {r["grant_id"]: Grant(
        grant_id=r["grant_id"], region_code=r["region_code"], title=r["title"], aim=r["aim"],
        measure=GrantMeasure.model_validate_json(r["measure"]), start_date=r["start_date"], end_date=r["end_date"],
        amount_pence=r["amount_pence"], milestones=tuple(milestones[r["grant_id"]]), proposed_by=r["proposed_by"],
        proposed_at=r["proposed_at"], fingerprint=r["fingerprint"], decision=r["decision"], decided_by=r["decided_by"],
        decided_at=r["decided_at"], decision_reason=r["decision_reason"], cancelled_by=r["cancelled_by"],
        cancelled_at=r["cancelled_at"], cancel_reason=r["cancel_reason"]) for r in rows}


def _milestone_values(grant_id: str, m: Milestone) -> tuple[Any, ...]:
    def parts(a: Answer | None) -> tuple[Any, Any, Any]:
        return (a.status, a.reason, a.entry_seq) if a is not None else (None, None, None)

    return (grant_id, m.n, m.status, m.reserve_requested, m.timeout_s, *parts(m.reserve), m.expired, m.met_by, m.met_at,
            m.met_note, *parts(m.pay), m.release_why, m.release_requested_at, *parts(m.release))


_SAVE_MILESTONE = (
    "UPDATE milestones SET status = $3, reserve_requested = $4, timeout_s = $5, reserve_status = $6, reserve_reason = $7,"
    " reserve_seq = $8, expired = $9, met_by = $10, met_at = $11, met_note = $12, pay_status = $13, pay_reason = $14,"
    " pay_seq = $15, release_why = $16, release_requested_at = $17, release_status = $18, release_reason = $19,"
    " release_seq = $20 WHERE grant_id = $1 AND n = $2")


class FundsTx:
    """``ports.FundsStore`` on one PostgreSQL connection inside its transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def grants(self, grant_ids: Sequence[str], *, lock: bool) -> dict[str, Grant]:
        return await load_grants(self.conn, grant_ids, lock=lock)

    async def insert_grant(self, g: Grant, correlation_id: str) -> bool:
        inserted = await self.conn.fetchval(
            "INSERT INTO grants (grant_id, region_code, title, aim, measure, start_date, end_date, amount_pence, providers, status,"
            " proposed_by, proposed_at, fingerprint, correlation_id, updated_at)"
            " VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, $12, $13, $14, $12)"
            " ON CONFLICT (grant_id) DO NOTHING RETURNING true",
            g.grant_id, g.region_code, g.title, g.aim, g.measure.model_dump_json(), g.start_date, g.end_date, g.amount_pence,
            list(g.providers), g.status, g.proposed_by, g.proposed_at, g.fingerprint, correlation_id)
        if not inserted:
            return False
        await self.conn.executemany(
            "INSERT INTO milestones (grant_id, n, title, provider_code, amount_pence, due_date, status)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [(g.grant_id, m.n, m.title, m.provider_code, m.amount_pence, m.due_date, m.status) for m in g.milestones])
        return True

    async def save(self, g: Grant) -> None:
        await self.conn.execute(
            "UPDATE grants SET status = $2, decision = $3, decided_by = $4, decided_at = $5, decision_reason = $6,"
            " cancelled_by = $7, cancelled_at = $8, cancel_reason = $9, updated_at = $10 WHERE grant_id = $1",
            g.grant_id, g.status, g.decision, g.decided_by, g.decided_at, g.decision_reason, g.cancelled_by, g.cancelled_at,
            g.cancel_reason, datetime.now(timezone.utc))
        await self.conn.executemany(_SAVE_MILESTONE, [_milestone_values(g.grant_id, m) for m in g.milestones])

    async def add_steps(self, grant_id: str, steps: Sequence[Step]) -> None:
        if steps:
            await self.conn.executemany(
                "INSERT INTO grant_steps (grant_id, at, step, actor, milestone, reason) VALUES ($1, $2, $3, $4, $5, $6)",
                [(grant_id, s.at, s.step, s.actor, s.milestone, s.reason) for s in steps])

    async def add_discrepancies(self, grant_id: str, found: Sequence[tuple[str, str]], at: datetime) -> None:
        if found:
            await self.conn.executemany(
                "INSERT INTO ledger_discrepancies (transfer_id, grant_id, detail, found_at) VALUES ($1, $2, $3, $4)",
                [(tid, grant_id, what, at) for tid, what in found])

    async def enqueue(self, rows: Sequence[Row]) -> None:
        await enqueue(self.conn, rows)

    # -- feedback tallies ---------------------------------------------------------------------
    async def counted(self, submission_ids: Sequence[str]) -> dict[str, Counted]:
        if not submission_ids:
            return {}
        rows = await self.conn.fetch(f"SELECT {_COUNTED_COLS} FROM counted_answers WHERE submission_id = ANY($1::text[])",
                                     list(set(submission_ids)))
        return {r["submission_id"]: _counted(r) for r in rows}

    async def current(self, root_ids: Sequence[str]) -> dict[str, Counted]:
        if not root_ids:
            return {}
        rows = await self.conn.fetch(f"SELECT {_COUNTED_COLS} FROM counted_answers WHERE root_id = ANY($1::text[]) AND current"
                                     " ORDER BY root_id FOR UPDATE", sorted(set(root_ids)))
        return {r["root_id"]: _counted(r) for r in rows}

    async def apply_tally(self, plan: TallyPlan) -> None:
        conn = self.conn
        if plan.superseded:
            await conn.execute("UPDATE counted_answers SET current = false WHERE submission_id = ANY($1::text[])",
                               plan.superseded)
        if plan.new:
            try:
                inserted = await conn.fetchval(
                    "WITH ins AS (INSERT INTO counted_answers (submission_id, root_id, current, kind, provider_code, answered_on,"
                    " setting, positive, negative, instrument, procedure, score, gain)"
                    " SELECT * FROM unnest($1::text[], $2::text[], $3::boolean[], $4::text[], $5::text[], $6::date[], $7::text[],"
                    " $8::smallint[], $9::smallint[], $10::text[], $11::text[], $12::int[], $13::int[])"
                    " ON CONFLICT (submission_id) DO NOTHING RETURNING 1) SELECT count(*) FROM ins",
                    *map(list, zip(*[(c.submission_id, c.root_id, c.submission_id in plan.current, c.kind, c.provider_code,
                                      c.answered_on, c.setting, c.positive, c.negative, c.instrument, c.procedure, c.score,
                                      c.gain) for c in plan.new])))
            except asyncpg.UniqueViolationError as exc:  # another instance counted an answer to the same question
                raise Raced("a concurrent writer counted an answer to one of this batch's questions") from exc
            if inserted != len(plan.new):
                raise Raced(f"{len(plan.new) - inserted} of this batch's answers were counted by another writer meanwhile")
        if plan.fft:
            keys = sorted(plan.fft)  # one order for every writer: no crosswise waits
            await conn.execute(
                "INSERT INTO fft_tallies AS t (grain, period_start, provider_code, setting, responses, positive, negative)"
                " SELECT * FROM unnest($1::text[], $2::date[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[])"
                " ON CONFLICT (grain, provider_code, period_start, setting) DO UPDATE SET"
                " responses = t.responses + EXCLUDED.responses, positive = t.positive + EXCLUDED.positive,"
                " negative = t.negative + EXCLUDED.negative",
                [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [k[3] for k in keys],
                [plan.fft[k][0] for k in keys], [plan.fft[k][1] for k in keys], [plan.fft[k][2] for k in keys])
        if plan.prom:
            keys_p = sorted(plan.prom)
            await conn.execute(
                "INSERT INTO prom_tallies AS t (grain, period_start, provider_code, instrument, procedure, scores, score_sum, gains,"
                " gain_sum) SELECT * FROM unnest($1::text[], $2::date[], $3::text[], $4::text[], $5::text[], $6::bigint[],"
                " $7::bigint[], $8::bigint[], $9::bigint[])"
                " ON CONFLICT (grain, provider_code, instrument, procedure, period_start) DO UPDATE SET"
                " scores = t.scores + EXCLUDED.scores, score_sum = t.score_sum + EXCLUDED.score_sum,"
                " gains = t.gains + EXCLUDED.gains, gain_sum = t.gain_sum + EXCLUDED.gain_sum",
                [k[0] for k in keys_p], [k[1] for k in keys_p], [k[2] for k in keys_p], [k[3] for k in keys_p],
                [k[4] for k in keys_p], *[[plan.prom[k][i] for k in keys_p] for i in range(4)])


_COUNTED_COLS = ("submission_id, root_id, kind, provider_code, answered_on, setting, positive, negative, instrument, procedure,"
                 " score, gain")


def _counted(r: asyncpg.Record) -> Counted:
    return Counted(submission_id=r["submission_id"], root_id=r["root_id"], kind=r["kind"], provider_code=r["provider_code"],
                   answered_on=r["answered_on"], setting=r["setting"], positive=r["positive"], negative=r["negative"],
                   instrument=r["instrument"], procedure=r["procedure"], score=r["score"], gain=r["gain"])

