"""The feedback service's PostgreSQL adapter: durable, idempotent acceptance with an outbox,
PROM pairing and the reporting queries."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
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
    for name in domain.OPTIONAL_PUBLICATION_FIELDS:  # added later: absent ones leave older hashes as they were
        if body.get(name) is None:
            body.pop(name, None)
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


def lock_name(sub: domain.Submission, pseudonym: str) -> str | None:
    """The advisory lock that serialises "first answer" for this submission: its episode for a
    decision-bearing answer, its patient, instrument and procedure for a paired PROM; else None."""
    if sub.answers.instrument in DECISION_INSTRUMENTS:
        return sub.episode_id
    pair_key = domain.prom_pair_key(sub.answers)
    if pair_key is not None:
        instrument, procedure, _timing = pair_key
        return f"{pseudonym}:{instrument}:{procedure}"
    return None


async def _lock_all(conn: asyncpg.Connection, names: set[str]) -> datetime:
    """Take these advisory locks (held to the end of the transaction) in sorted order, so two
    batches never wait on each other in a cycle; the clock once they are all held."""
    return await conn.fetchval(
        "SELECT clock_timestamp() FROM (SELECT count(pg_advisory_xact_lock(hashtext(k))) FROM unnest($1::text[]) AS k) l",
        sorted(names),
    )


async def lock_batch(conn: asyncpg.Connection, subs: list[domain.Submission], keys: domain.Keyring) -> datetime:
    """The locks :func:`accept` would take for each of ``subs``, all at once; the clock once held.

    A caller storing several submissions with :func:`accept` in one transaction passes
    ``received_at`` = this clock + n microseconds for the n-th, so they are ordered as given and
    stay before any later transaction's rows (as :func:`accept_batch` does)."""
    names = {name for sub in subs if (name := lock_name(sub, keys.pseudonym(sub.nhs_number))) is not None}
    return await _lock_all(conn, names)


async def accept(
    conn: asyncpg.Connection, sub: domain.Submission, *, keys: domain.Keyring, channel: str,
    correlation_id: str, causation_id: str | None = None,
    known: dict[str, asyncpg.Record] | None = None, outbox: list[tuple[str, bytes, bytes, str]] | None = None,
    received_at: datetime | None = None,
) -> Accepted:
    """Store the submission and its event in the caller's transaction. Idempotent on submission_id.

    - The first decision-bearing answer (FFT or patient power) per episode and patient is the
      decision; later ones, and any submission naming ``amends_submission_id``, are stored as
      amendments (new rows; nothing is overwritten).
    - PROMs: the first pre_op and first post_op per patient, instrument and procedure are paired
      (``prom_pairs``) and the health gain is returned in ``scores``; later ones are amendments.

    Batches pass ``known`` (prefetched rows, see :func:`known_submissions`), ``outbox`` (a list
    the event row is appended to, for the caller to enqueue before committing) and ``received_at``
    (from :func:`lock_batch`, so items of one transaction are ordered; default: the transaction's
    start time).
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
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", lock_name(sub, pseudonym))
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
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", lock_name(sub, pseudonym))
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
        " answers, scores, free_text, authored_at, channel, content_hash, amends_submission_id, is_amendment, procedure, timing,"
        " received_at, free_text_redactions, setting, collection_mode) VALUES ($1,$2,$3,$4,$5,$6,$7::jsonb,$8::jsonb,$9,$10,$11,"
        "$12,$13,$14,$15,$16, coalesce($17::timestamptz, now()), $18, $19, $20) ON CONFLICT DO NOTHING RETURNING 1",
        sub.submission_id, sub.episode_id, sub.provider_code, pseudonym, keys.current_id, answers.instrument,
        answers.model_dump_json(), json.dumps(scores), sub.free_text, sub.authored_at, channel, digest,
        amends, is_amendment, pair_key[1] if pair_key else None, pair_key[2] if pair_key else None, received_at,
        sub.free_text_redactions, sub.setting, sub.collection_mode,
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
# Batches (the Kafka intake)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Incoming:
    """One submission of a batch, with the ids of the message that carried it."""

    submission: domain.Submission
    correlation_id: str
    causation_id: str | None = None


class Raced(RuntimeError):
    """Another transaction stored one of the batch's submission ids meanwhile: roll back, go again."""


@dataclass
class _New:
    """A submission of the batch to be inserted, worked out in memory."""

    sub: domain.Submission
    pseudonym: str
    digest: str
    scores: dict[str, Any]
    is_amendment: bool
    amends: str | None
    pair_key: tuple[str, str, str] | None
    pair: tuple[str, str, str, domain.PromPair] | None = None  # (pre id, post id, provider, pair)
    received_at: datetime | None = None


_FIRST_DECISIONS = (
    "SELECT DISTINCT ON (q.g) q.g, s.submission_id FROM unnest($1::int[], $2::text[], $3::text[]) AS q(g, ep, ps)"
    " JOIN submissions s ON s.episode_id = q.ep AND s.patient_pseudonym = q.ps"
    " WHERE s.instrument = ANY($4::text[]) AND NOT s.is_amendment ORDER BY q.g, s.received_at, s.submission_id"
)
_FIRST_PROMS = (
    "SELECT DISTINCT ON (q.g) q.g, s.submission_id, s.provider_code, s.authored_at, s.scores"
    " FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[]) AS q(g, ps, inst, proc, tim)"
    " JOIN submissions s ON s.patient_pseudonym = q.ps AND s.instrument = q.inst AND s.procedure = q.proc AND s.timing = q.tim"
    " WHERE NOT s.is_amendment ORDER BY q.g, s.received_at, s.submission_id"
)
_INSERT_MANY = (
    "INSERT INTO submissions(submission_id, episode_id, provider_code, patient_pseudonym, pseudonym_key_id, instrument,"
    " answers, scores, free_text, authored_at, channel, content_hash, amends_submission_id, is_amendment, procedure, timing,"
    " received_at, free_text_redactions, setting, collection_mode)"
    " SELECT u.sid, u.ep, u.prov, u.ps, $5, u.inst, u.answers::jsonb, u.scores::jsonb, u.free_text, u.authored, $11,"
    " u.digest, u.amends, u.is_amendment, u.proc, u.tim, u.received, u.redactions, u.setting, u.mode"
    " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $6::text[], $7::text[], $8::text[], $9::text[],"
    " $10::timestamptz[], $12::text[], $13::text[], $14::bool[], $15::text[], $16::text[], $17::timestamptz[], $18::smallint[],"
    " $19::text[], $20::text[])"
    " AS u(sid, ep, prov, ps, inst, answers, scores, free_text, authored, digest, amends, is_amendment, proc, tim, received,"
    " redactions, setting, mode)"
    " ON CONFLICT DO NOTHING RETURNING submission_id"
)
_INSERT_PAIR = (
    "INSERT INTO prom_pairs(pre_submission_id, post_submission_id, patient_pseudonym, provider_code, instrument,"
    " procedure, pre_score, post_score, health_gain) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) ON CONFLICT DO NOTHING"
)


async def accept_batch(conn: asyncpg.Connection, items: list[Incoming], *, keys: domain.Keyring,
                       channel: str) -> list[Accepted | Conflict]:
    """Store a batch in the caller's transaction: one result per item, in order.

    Each item gets what :func:`accept` would give it alone, in its own transaction, in this
    order: later items see earlier ones (a second decision-bearing answer for an episode is an
    amendment, a PROM pairs with one earlier in the batch, a repeated id is a duplicate or a
    conflict). The same rules as :func:`accept`, worked out in memory from a few set-based
    queries instead of three statements per item:

    1. the duplicate check (:func:`known_submissions`);
    2. the advisory locks of every episode (decision answers) and patient/instrument/procedure
       (PROMs) of the new items, in sorted order (two batches never wait on each other in a cycle);
    3. the first stored decision per episode and patient, and the first stored pre- and
       post-operative PROM per patient, instrument and procedure (under every key of the keyring);
    4. one insert of the new rows, the PROM pairs, and one outbox insert.

    ``received_at`` is the clock once the locks are held plus one microsecond per row in batch
    order, so "first by ``received_at``" (first decision, PROM pairing, the FFT report) means
    first in this order, and stays before any later transaction's rows (a batch takes far longer
    than a microsecond a row).

    A conflict (same id, other content) is returned, not raised: nothing is written for it and the
    other items are kept. :class:`Raced` (another transaction inserted one of the ids meanwhile)
    and any other error are raised; the caller's transaction must then be rolled back.
    """
    known = await known_submissions(conn, [it.submission.submission_id for it in items])
    results: list[Accepted | Conflict | _New | None] = []
    batch: dict[str, _New] = {}  # new rows by submission id, to answer a repeat within the batch
    new: list[tuple[int, Incoming, _New]] = []
    for it in items:
        sub = it.submission
        try:
            prior = await _prior(conn, sub, keys, known)
        except Conflict as exc:
            results.append(exc)
            continue
        if prior is not None:
            results.append(prior)
            continue
        if sub.submission_id in batch:  # repeated within the batch: the first one decides
            results.append(None)
            continue
        pseudonym = keys.pseudonym(sub.nhs_number)
        digest = content_hash(sub, pseudonym)
        row = _New(sub, pseudonym, digest, domain.scores(sub.answers), sub.amends_submission_id is not None,
                   sub.amends_submission_id, domain.prom_pair_key(sub.answers))
        batch[sub.submission_id] = row
        new.append((len(results), it, row))
        results.append(row)
    if new:
        await _store_new(conn, new, keys, channel)
    out: list[Accepted | Conflict] = []
    for r, it in zip(results, items):
        sub = it.submission
        if r is None:  # as _prior would answer once the first one is stored
            row = batch[sub.submission_id]
            if row.digest != content_hash(sub, keys.pseudonym(sub.nhs_number)):
                out.append(Conflict(f"submission {sub.submission_id} was already received with different content"))
            else:
                out.append(Accepted(sub.submission_id, "duplicate", row.is_amendment, row.scores))
        elif isinstance(r, _New):
            out.append(Accepted(sub.submission_id, "created", r.is_amendment, r.scores))
        else:
            out.append(r)
    return out


async def _store_new(conn: asyncpg.Connection, new: list[tuple[int, Incoming, _New]], keys: domain.Keyring,
                     channel: str) -> None:
    """Decide amendments and pairs for the batch's new rows, in order, and write them."""
    decision_keys: dict[tuple[str, str], int] = {}  # (episode, pseudonym) -> group
    prom_keys: dict[tuple[str, str, str, str], int] = {}  # (pseudonym, instrument, procedure, timing) -> group
    aliases: dict[str, list[str]] = {}
    locks: set[str] = set()
    for _, _, row in new:
        sub = row.sub
        if row.pseudonym not in aliases:
            aliases[row.pseudonym] = keys.all_pseudonyms(sub.nhs_number)
        name = lock_name(sub, row.pseudonym)
        if name is not None:
            locks.add(name)
        if sub.answers.instrument in DECISION_INSTRUMENTS:
            decision_keys.setdefault((sub.episode_id, row.pseudonym), len(decision_keys))
        elif row.pair_key is not None:
            instrument, procedure, _timing = row.pair_key
            for timing in ("pre_op", "post_op"):
                prom_keys.setdefault((row.pseudonym, instrument, procedure, timing), len(prom_keys))
    # Held to the end of the transaction, like accept's; the clock is read once they are all held.
    base = await _lock_all(conn, locks)
    first_decision: dict[tuple[str, str], str] = {}
    if decision_keys:
        g, ep, ps = [], [], []
        for (episode, pseudonym), group in decision_keys.items():
            for alias in aliases[pseudonym]:
                g.append(group), ep.append(episode), ps.append(alias)
        by_group = {r["g"]: r["submission_id"] for r in await conn.fetch(_FIRST_DECISIONS, g, ep, ps, list(DECISION_INSTRUMENTS))}
        first_decision = {k: by_group[group] for k, group in decision_keys.items() if group in by_group}
    first_prom: dict[tuple[str, str, str, str], tuple[str, str, datetime, dict[str, Any]]] = {}
    if prom_keys:
        g, ps, inst, proc, tim = [], [], [], [], []
        for (pseudonym, instrument, procedure, timing), group in prom_keys.items():
            for alias in aliases[pseudonym]:
                g.append(group), ps.append(alias), inst.append(instrument), proc.append(procedure), tim.append(timing)
        by_group_p = {r["g"]: (r["submission_id"], r["provider_code"], r["authored_at"], json.loads(r["scores"]))
                      for r in await conn.fetch(_FIRST_PROMS, g, ps, inst, proc, tim)}
        first_prom = {k: by_group_p[group] for k, group in prom_keys.items() if group in by_group_p}
    # The rules of accept(), item by item in order; each new row is visible to the ones after it.
    for n, (_, _, row) in enumerate(new):
        sub = row.sub
        row.received_at = base + timedelta(microseconds=n)
        if sub.answers.instrument in DECISION_INSTRUMENTS:
            first = first_decision.get((sub.episode_id, row.pseudonym))
            if first is not None:
                row.is_amendment = True
                row.amends = row.amends or first
            elif not row.is_amendment:
                first_decision[(sub.episode_id, row.pseudonym)] = sub.submission_id
        elif row.pair_key is not None:
            instrument, procedure, timing = row.pair_key
            mine_key = (row.pseudonym, instrument, procedure, timing)
            first_same = first_prom.get(mine_key)
            if first_same is not None:
                row.is_amendment = True
                row.amends = row.amends or first_same[0]
            if not row.is_amendment:
                other = "post_op" if timing == "pre_op" else "pre_op"
                counterpart = first_prom.get((row.pseudonym, instrument, procedure, other))
                if counterpart is not None:
                    mine = (sub.authored_at, row.scores)
                    theirs = (counterpart[2], counterpart[3])
                    pre, post = (mine, theirs) if timing == "pre_op" else (theirs, mine)
                    pair = domain.pair_proms(instrument, procedure, pre, post)
                    if pair is not None:
                        row.scores = {**row.scores, "health_gain": pair.health_gain, "paired_with": counterpart[0]}
                        if timing == "pre_op":
                            row.pair = (sub.submission_id, counterpart[0], counterpart[1], pair)
                        else:
                            row.pair = (counterpart[0], sub.submission_id, sub.provider_code, pair)
                first_prom[mine_key] = (sub.submission_id, sub.provider_code, sub.authored_at, row.scores)
    rows = [row for _, _, row in new]
    inserted = await conn.fetch(
        _INSERT_MANY,
        [r.sub.submission_id for r in rows], [r.sub.episode_id for r in rows], [r.sub.provider_code for r in rows],
        [r.pseudonym for r in rows], keys.current_id, [r.sub.answers.instrument for r in rows],
        [r.sub.answers.model_dump_json() for r in rows], [json.dumps(r.scores) for r in rows],
        [r.sub.free_text for r in rows], [r.sub.authored_at for r in rows], channel, [r.digest for r in rows],
        [r.amends for r in rows], [r.is_amendment for r in rows],
        [r.pair_key[1] if r.pair_key else None for r in rows], [r.pair_key[2] if r.pair_key else None for r in rows],
        [r.received_at for r in rows], [r.sub.free_text_redactions for r in rows],
        [r.sub.setting for r in rows], [r.sub.collection_mode for r in rows],
    )
    if len(inserted) != len(rows):
        raise Raced(f"{len(rows) - len(inserted)} of the batch's submission ids were stored by another transaction")
    pairs = [(pre_id, post_id, r.pseudonym, provider, p.instrument, p.procedure, p.pre_score, p.post_score, p.health_gain)
             for r in rows if r.pair is not None for pre_id, post_id, provider, p in [r.pair]]
    if pairs:
        await conn.executemany(_INSERT_PAIR, pairs)
    outbox: list[tuple[str, bytes, bytes, str]] = []
    for _, it, r in new:
        event = FeedbackReceived(
            submission_id=r.sub.submission_id, episode_id=r.sub.episode_id, provider_code=r.sub.provider_code,
            patient_pseudonym=r.pseudonym, instrument=r.sub.answers.instrument, authored_at=r.sub.authored_at,
            fft_answer=getattr(r.sub.answers, "fft_answer", None),
            patient_choice=getattr(r.sub.answers, "patient_choice", None), amends_submission_id=r.amends,
        )
        env = envelope(event, "feedback.received.v1", producer=PRODUCER, correlation_id=it.correlation_id,
                       causation_id=it.causation_id)
        outbox.append(outbox_row(FEEDBACK_RECEIVED.name, r.sub.episode_id, env))
    await enqueue(conn, outbox)


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
