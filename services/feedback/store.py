"""The feedback service's PostgreSQL adapter for the command handler (``ports.FeedbackStore``),
bound to one connection in one transaction (``shared.uow.PgUnitOfWork``).

A few set-based statements per batch, whatever its size: the locks, the stored rows of the
batch's ids, the first answer to each of its questions (under every key of the keyring), one
insert of the new rows, one of the PROM pairs and one outbox write. The rules are not here: the
handler lets ``decisions.decide`` apply them in memory between the reads and the writes. Reports
read through ``queries.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime

import asyncpg

from services.feedback.decisions import DECISION_INSTRUMENTS, EarlierAnswer, PairRow, Question, StoredSubmission, SubmissionRow
from shared import outbox
from shared.events import Row

# The advisory locks in the order given (the caller's sorted list), then the clock once all are held.
_LOCK = "SELECT clock_timestamp() FROM (SELECT count(pg_advisory_xact_lock(hashtext(k))) FROM unnest($1::text[]) AS k) l"
_STORED = ("SELECT submission_id, content_hash, pseudonym_key_id, is_amendment, scores FROM submissions"
           " WHERE submission_id = ANY($1::text[])")
# The first answer per question, in one statement per kind of question: q.g numbers the
# question, one input row per pseudonym of the patient (current key, then previous keys).
_FIRST_DECISIONS = (
    "SELECT DISTINCT ON (q.g) q.g, s.submission_id, s.provider_code, s.authored_at, s.scores"
    " FROM unnest($1::int[], $2::text[], $3::text[], $4::text[]) AS q(g, ep, ps, inst)"
    " JOIN submissions s ON s.episode_id = q.ep AND s.patient_pseudonym = q.ps AND s.instrument = q.inst"
    " WHERE NOT s.is_amendment ORDER BY q.g, s.received_at, s.submission_id"
)
_FIRST_PROMS = (
    "SELECT DISTINCT ON (q.g) q.g, s.submission_id, s.provider_code, s.authored_at, s.scores"
    " FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[]) AS q(g, ps, inst, proc, tim)"
    " JOIN submissions s ON s.patient_pseudonym = q.ps AND s.instrument = q.inst AND s.procedure = q.proc AND s.timing = q.tim"
    " WHERE NOT s.is_amendment ORDER BY q.g, s.received_at, s.submission_id"
)
_INSERT_SUBMISSIONS = (
    "INSERT INTO submissions(submission_id, episode_id, provider_code, patient_pseudonym, pseudonym_key_id, instrument,"
    " answers, scores, free_text, authored_at, channel, content_hash, amends_submission_id, is_amendment, procedure, timing,"
    " received_at, free_text_redactions, setting, collection_mode)"
    " SELECT u.sid, u.ep, u.prov, u.ps, u.key_id, u.inst, u.answers::jsonb, u.scores::jsonb, u.free_text, u.authored,"
    " u.channel, u.digest, u.amends, u.is_amendment, u.proc, u.tim, u.received, u.redactions, u.setting, u.mode"
    " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],"
    " $9::text[], $10::timestamptz[], $11::text[], $12::text[], $13::text[], $14::bool[], $15::text[], $16::text[],"
    " $17::timestamptz[], $18::smallint[], $19::text[], $20::text[])"
    " AS u(sid, ep, prov, ps, key_id, inst, answers, scores, free_text, authored, channel, digest, amends, is_amendment,"
    " proc, tim, received, redactions, setting, mode)"
    " ON CONFLICT DO NOTHING RETURNING submission_id"
)
_INSERT_PAIRS = (
    "INSERT INTO prom_pairs(pre_submission_id, post_submission_id, patient_pseudonym, provider_code, instrument,"
    " procedure, pre_score, post_score, health_gain, pre_profile, post_profile)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], $8::int[],"
    " $9::int[], $10::text[], $11::text[]) ON CONFLICT DO NOTHING"
)


class FeedbackTx:
    """``ports.FeedbackStore`` on one PostgreSQL connection, inside the caller's transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def lock(self, names: Sequence[str]) -> datetime:
        return await self.conn.fetchval(_LOCK, sorted(set(names)))

    async def stored(self, submission_ids: Sequence[str]) -> dict[str, StoredSubmission]:
        rows = await self.conn.fetch(_STORED, list(submission_ids))
        return {r["submission_id"]: StoredSubmission(r["submission_id"], r["content_hash"], r["pseudonym_key_id"],
                                                     r["is_amendment"], json.loads(r["scores"])) for r in rows}

    async def first_answers(self, questions: Mapping[Question, Sequence[str]]) -> dict[Question, EarlierAnswer]:
        numbered = list(questions.items())
        decisions = [(g, q, aliases) for g, (q, aliases) in enumerate(numbered) if not q.is_prom]
        proms = [(g, q, aliases) for g, (q, aliases) in enumerate(numbered) if q.is_prom]
        found: dict[Question, EarlierAnswer] = {}
        if decisions:
            cols: tuple[list, ...] = ([], [], [], [])
            for g, q, aliases in decisions:
                if q.instrument not in DECISION_INSTRUMENTS:
                    raise ValueError(f"{q.instrument} is not a decision instrument")
                for alias in aliases:
                    for col, value in zip(cols, (g, q.episode_id, alias, q.instrument)):
                        col.append(value)
            found.update(self._firsts(numbered, await self.conn.fetch(_FIRST_DECISIONS, *cols)))
        if proms:
            cols = ([], [], [], [], [])
            for g, q, aliases in proms:
                for alias in aliases:
                    for col, value in zip(cols, (g, alias, q.instrument, q.procedure, q.timing)):
                        col.append(value)
            found.update(self._firsts(numbered, await self.conn.fetch(_FIRST_PROMS, *cols)))
        return found

    @staticmethod
    def _firsts(numbered: list[tuple[Question, Sequence[str]]], rows: list[asyncpg.Record]) -> dict[Question, EarlierAnswer]:
        return {numbered[r["g"]][0]: EarlierAnswer(r["submission_id"], r["provider_code"], r["authored_at"],
                                                   json.loads(r["scores"])) for r in rows}

    async def insert_submissions(self, rows: Sequence[SubmissionRow]) -> set[str]:
        if not rows:
            return set()
        # In id order: two batches that share ids then wait on each other's rows in one order,
        # never in a cycle. (Order of arrival is received_at, not the physical order.)
        rows = sorted(rows, key=lambda r: r.submission_id)
        inserted = await self.conn.fetch(
            _INSERT_SUBMISSIONS,
            [r.submission_id for r in rows], [r.episode_id for r in rows], [r.provider_code for r in rows],
            [r.patient_pseudonym for r in rows], [r.pseudonym_key_id for r in rows], [r.instrument for r in rows],
            [r.answers_json for r in rows], [json.dumps(r.scores) for r in rows], [r.free_text for r in rows],
            [r.authored_at for r in rows], [r.channel for r in rows], [r.content_hash for r in rows],
            [r.amends_submission_id for r in rows], [r.is_amendment for r in rows], [r.procedure for r in rows],
            [r.timing for r in rows], [r.received_at for r in rows], [r.free_text_redactions for r in rows],
            [r.setting for r in rows], [r.collection_mode for r in rows],
        )
        return {r["submission_id"] for r in inserted}

    async def insert_pairs(self, pairs: Sequence[PairRow]) -> None:
        if not pairs:
            return
        pairs = sorted(pairs, key=lambda p: p.pre_submission_id)
        await self.conn.execute(
            _INSERT_PAIRS,
            [p.pre_submission_id for p in pairs], [p.post_submission_id for p in pairs], [p.patient_pseudonym for p in pairs],
            [p.provider_code for p in pairs], [p.pair.instrument for p in pairs], [p.pair.procedure for p in pairs],
            [p.pair.pre_score for p in pairs], [p.pair.post_score for p in pairs], [p.pair.health_gain for p in pairs],
            [p.pair.pre_profile for p in pairs], [p.pair.post_profile for p in pairs],
        )

    async def enqueue(self, events: Sequence[Row]) -> None:
        await outbox.enqueue(self.conn, events)
