"""The feedback service's PostgreSQL adapter: durable, idempotent acceptance with an outbox,
PROM pairing and the reporting queries."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import asyncpg

from services.feedback import domain
from shared.contracts import FeedbackReceived, FftAnswer, envelope
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


_PRIOR = "SELECT submission_id, content_hash, pseudonym_key_id, is_amendment, scores FROM submissions"


async def known_submissions(conn: asyncpg.Connection, submission_ids: list[str]) -> dict[str, asyncpg.Record]:
    """Stored rows for these ids, in one query (a batch's duplicate check)."""
    return {r["submission_id"]: r for r in await conn.fetch(_PRIOR + " WHERE submission_id = ANY($1::text[])", submission_ids)}


async def _prior(conn: asyncpg.Connection, sub: domain.Submission, keys: domain.Keyring,
                 known: dict[str, asyncpg.Record] | None = None) -> Accepted | None:
    """The stored result for this submission id, or None; Conflict if its content differs.

    ``known``: rows fetched beforehand by :func:`known_submissions` (then no query is made).
    The stored hash was made with the pseudonym of the key current at the time, so across a key
    rotation the comparison uses that (previous) key.
    """
    if known is not None:
        prior = known.get(sub.submission_id)
    else:
        prior = await conn.fetchrow(_PRIOR + " WHERE submission_id = $1", sub.submission_id)
    if prior is None:
        return None
    key = keys.key_for(prior["pseudonym_key_id"])
    same = key is not None and prior["content_hash"] == content_hash(sub, domain.pseudonymise(sub.nhs_number, key))
    if not same:
        raise Conflict(f"submission {sub.submission_id} was already received with different content")
    return Accepted(sub.submission_id, "duplicate", prior["is_amendment"], json.loads(prior["scores"]))


async def accept(
    conn: asyncpg.Connection, sub: domain.Submission, *, keys: domain.Keyring, channel: str,
    correlation_id: str, causation_id: str | None = None,
    known: dict[str, asyncpg.Record] | None = None, outbox: list[tuple[str, bytes, bytes, str]] | None = None,
) -> Accepted:
    """Store the submission and its event in the caller's transaction. Idempotent on submission_id.

    - The first decision-bearing answer (FFT or patient power) per episode and patient is the
      decision; later ones, and any submission naming ``amends_submission_id``, are stored as
      amendments (new rows; nothing is overwritten).
    - PROMs: the first pre_op and first post_op per patient, instrument and procedure are paired
      (``prom_pairs``) and the health gain is returned in ``scores``; later ones are amendments.

    Batches pass ``known`` (prefetched rows, see :func:`known_submissions`) and ``outbox`` (a list
    the event row is appended to, for the caller to enqueue before committing).
    """
    prior = await _prior(conn, sub, keys, known)
    if prior is not None:
        return prior
    pseudonym = keys.pseudonym(sub.nhs_number)
    aliases = keys.all_pseudonyms(sub.nhs_number)
    digest = content_hash(sub, pseudonym)
    answers = sub.answers
    scores = domain.scores(answers)
    is_amendment = sub.amends_submission_id is not None
    amends = sub.amends_submission_id
    pair_key = domain.prom_pair_key(answers)
    counterpart: asyncpg.Record | None = None
    if answers.instrument in DECISION_INSTRUMENTS:
        # Serialise answers for one episode so "first answer decides" is well defined.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", sub.episode_id)
        first = await conn.fetchval(
            "SELECT submission_id FROM submissions WHERE episode_id = $1 AND patient_pseudonym = ANY($2::text[])"
            " AND instrument = ANY($3::text[]) AND NOT is_amendment ORDER BY received_at, submission_id LIMIT 1",
            sub.episode_id, aliases, list(DECISION_INSTRUMENTS),
        )
        if first is not None:
            is_amendment = True
            amends = amends or first
    elif pair_key is not None:
        instrument, procedure, timing = pair_key
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{pseudonym}:{instrument}:{procedure}")
        first = await conn.fetchval(
            "SELECT submission_id FROM submissions WHERE patient_pseudonym = ANY($1::text[]) AND instrument = $2"
            " AND procedure = $3 AND timing = $4 AND NOT is_amendment ORDER BY received_at, submission_id LIMIT 1",
            aliases, instrument, procedure, timing,
        )
        if first is not None:
            is_amendment = True
            amends = amends or first
        if not is_amendment:
            counterpart = await conn.fetchrow(
                "SELECT submission_id, provider_code, authored_at, scores FROM submissions WHERE patient_pseudonym = ANY($1::text[])"
                " AND instrument = $2 AND procedure = $3 AND timing = $4 AND NOT is_amendment"
                " ORDER BY received_at, submission_id LIMIT 1",
                aliases, instrument, procedure, "post_op" if timing == "pre_op" else "pre_op",
            )
    pair: domain.PromPair | None = None
    if counterpart is not None and pair_key is not None:
        mine = (sub.authored_at, scores)
        theirs = (counterpart["authored_at"], json.loads(counterpart["scores"]))
        pre, post = (mine, theirs) if pair_key[2] == "pre_op" else (theirs, mine)
        pair = domain.pair_proms(pair_key[0], pair_key[1], pre, post)
        if pair is not None:
            scores = {**scores, "health_gain": pair.health_gain, "paired_with": counterpart["submission_id"]}
    inserted = await conn.fetchval(
        "INSERT INTO submissions(submission_id, episode_id, provider_code, patient_pseudonym, pseudonym_key_id, instrument,"
        " answers, scores, free_text, authored_at, channel, content_hash, amends_submission_id, is_amendment, procedure, timing)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7::jsonb,$8::jsonb,$9,$10,$11,$12,$13,$14,$15,$16) ON CONFLICT DO NOTHING RETURNING 1",
        sub.submission_id, sub.episode_id, sub.provider_code, pseudonym, keys.current_id, answers.instrument,
        answers.model_dump_json(), json.dumps(scores), sub.free_text, sub.authored_at, channel, digest,
        amends, is_amendment, pair_key[1] if pair_key else None, pair_key[2] if pair_key else None,
    )
    if not inserted:  # a concurrent request with the same id won the race
        again = await _prior(conn, sub, keys)
        if again is None:  # pragma: no cover - the row that blocked the insert must exist
            raise RuntimeError(f"submission {sub.submission_id} neither inserted nor found")
        return again
    if pair is not None and counterpart is not None and pair_key is not None:
        # The post-operative answer's provider is the one that operated.
        if pair_key[2] == "pre_op":
            pre_id, post_id, provider = sub.submission_id, counterpart["submission_id"], counterpart["provider_code"]
        else:
            pre_id, post_id, provider = counterpart["submission_id"], sub.submission_id, sub.provider_code
        await conn.execute(
            "INSERT INTO prom_pairs(pre_submission_id, post_submission_id, patient_pseudonym, provider_code, instrument,"
            " procedure, pre_score, post_score, health_gain) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) ON CONFLICT DO NOTHING",
            pre_id, post_id, pseudonym, provider, pair.instrument, pair.procedure, pair.pre_score, pair.post_score, pair.health_gain,
        )
    event = FeedbackReceived(
        submission_id=sub.submission_id,
        episode_id=sub.episode_id,
        provider_code=sub.provider_code,
        patient_pseudonym=pseudonym,
        instrument=answers.instrument,
        authored_at=sub.authored_at,
        fft_answer=getattr(answers, "fft_answer", None),
        patient_choice=getattr(answers, "patient_choice", None),
        amends_submission_id=amends,
    )
    env = envelope(event, "feedback.received.v1", producer=PRODUCER, correlation_id=correlation_id, causation_id=causation_id)
    row = outbox_row(FEEDBACK_RECEIVED.name, sub.episode_id, env)
    if outbox is not None:
        outbox.append(row)
    else:
        await enqueue(conn, [row])
    return Accepted(sub.submission_id, "created", is_amendment, scores)


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------
def month_bounds(period: str) -> tuple[datetime, datetime]:
    year, month = int(period[:4]), int(period[5:7])
    start = datetime(year, month, 1, tzinfo=timezone.utc)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=timezone.utc)
    return start, end


async def fft_counts(conn: asyncpg.Connection, period: str) -> dict[str, dict[FftAnswer, int]]:
    """Per provider, the number of each FFT answer authored in the month (UTC).

    Only each patient's first FFT answer per episode counts (later ones are amendments).
    Every provider that has ever had an FFT answer appears, with zeros if it had none this month.
    """
    start, end = month_bounds(period)
    rows = await conn.fetch(
        "WITH firsts AS ("
        "  SELECT DISTINCT ON (episode_id, patient_pseudonym) provider_code, authored_at, (answers->>'fft_answer')::int AS a"
        "  FROM submissions WHERE instrument = 'fft' ORDER BY episode_id, patient_pseudonym, received_at, submission_id)"
        " SELECT provider_code, a, count(*) AS n FROM firsts WHERE authored_at >= $1 AND authored_at < $2"
        " GROUP BY provider_code, a",
        start, end,
    )
    providers = await conn.fetch("SELECT DISTINCT provider_code FROM submissions WHERE instrument = 'fft'")
    out: dict[str, dict[FftAnswer, int]] = {r["provider_code"]: {} for r in providers}
    for r in rows:
        out[r["provider_code"]][FftAnswer(r["a"])] = r["n"]
    return out


async def prom_pairs(conn: asyncpg.Connection, procedure: str | None) -> list[tuple[str, str, str, int, int]]:
    rows = await conn.fetch(
        "SELECT provider_code, instrument, procedure, pre_score, post_score FROM prom_pairs"
        " WHERE $1::text IS NULL OR procedure = $1",
        procedure,
    )
    return [(r["provider_code"], r["instrument"], r["procedure"], r["pre_score"], r["post_score"]) for r in rows]
