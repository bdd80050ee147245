"""The feedback service's PostgreSQL adapter: durable, idempotent acceptance with an outbox."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from services.feedback import domain
from shared.contracts import FeedbackReceived, envelope
from shared.outbox import enqueue, outbox_row
from shared.topics import FEEDBACK_RECEIVED

PRODUCER = "feedback"
DECISION_INSTRUMENTS = ("fft", "patient_power")


class Conflict(ValueError):
    """The submission id was used before with different content."""


@dataclass(frozen=True)
class Accepted:
    submission_id: str
    status: Literal["created", "duplicate"]
    is_amendment: bool
    scores: dict[str, Any]


def content_hash(sub: domain.Submission, pseudonym: str) -> str:
    """Hash of what was submitted, with the pseudonym in place of the NHS number."""
    body = sub.model_dump(mode="json", exclude={"nhs_number"})
    body["patient"] = pseudonym
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


async def accept(
    conn: asyncpg.Connection, sub: domain.Submission, *, key: bytes, key_id: str, channel: str,
    correlation_id: str, causation_id: str | None = None,
) -> Accepted:
    """Store the submission and its event in the caller's transaction. Idempotent on submission_id."""
    pseudonym = domain.pseudonymise(sub.nhs_number, key)
    digest = content_hash(sub, pseudonym)
    answers = sub.answers
    scores = domain.scores(answers)
    is_amendment = False
    if answers.instrument in DECISION_INSTRUMENTS:
        # Serialise answers for one episode so "first answer decides" is well defined.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", sub.episode_id)
        is_amendment = bool(await conn.fetchval(
            "SELECT 1 FROM submissions WHERE episode_id = $1 AND patient_pseudonym = $2 AND instrument = ANY($3::text[])"
            " AND submission_id <> $4 LIMIT 1",
            sub.episode_id, pseudonym, list(DECISION_INSTRUMENTS), sub.submission_id,
        ))
    inserted = await conn.fetchval(
        "INSERT INTO submissions(submission_id, episode_id, provider_code, patient_pseudonym, pseudonym_key_id, instrument,"
        " answers, scores, free_text, authored_at, channel, content_hash, amends_submission_id, is_amendment)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7::jsonb,$8::jsonb,$9,$10,$11,$12,$13,$14) ON CONFLICT DO NOTHING RETURNING 1",
        sub.submission_id, sub.episode_id, sub.provider_code, pseudonym, key_id, answers.instrument,
        answers.model_dump_json(), json.dumps(scores), sub.free_text, sub.authored_at, channel, digest,
        sub.amends_submission_id, is_amendment,
    )
    if not inserted:
        prior = await conn.fetchrow("SELECT content_hash, is_amendment, scores FROM submissions WHERE submission_id = $1", sub.submission_id)
        if prior["content_hash"] != digest:
            raise Conflict(f"submission {sub.submission_id} was already received with different content")
        return Accepted(sub.submission_id, "duplicate", prior["is_amendment"], json.loads(prior["scores"]))
    event = FeedbackReceived(
        submission_id=sub.submission_id,
        episode_id=sub.episode_id,
        provider_code=sub.provider_code,
        patient_pseudonym=pseudonym,
        instrument=answers.instrument,
        authored_at=sub.authored_at,
        fft_answer=getattr(answers, "fft_answer", None),
        patient_choice=getattr(answers, "patient_choice", None),
        amends_submission_id=sub.amends_submission_id,
    )
    env = envelope(event, "feedback.received.v1", producer=PRODUCER, correlation_id=correlation_id, causation_id=causation_id)
    await enqueue(conn, [outbox_row(FEEDBACK_RECEIVED.name, sub.episode_id, env)])
    return Accepted(sub.submission_id, "created", is_amendment, scores)
