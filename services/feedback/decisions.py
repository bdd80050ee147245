"""What a submission becomes when it is stored: the rules, as functions of plain values (no I/O).

The command handler (``handlers.AcceptSubmissions``) reads what the store holds and hands it
here with the batch's items in order; :func:`decide` answers, item by item, as if each had been
stored alone in that order:

- **Idempotency**: a submission id already stored (or earlier in the batch) with the same content
  hash is a duplicate (the stored result is returned, nothing is written), with other content a
  conflict (nothing is written for it; the other items go on). The stored hash was made with the
  pseudonym of the key current at the time, so across a key rotation the comparison uses that key.
- **First answer to a question**: an answer's *question* is what a later answer would amend:
  for the decision instruments (``fft``, ``patient_power``) the episode, the patient and the
  instrument (each instrument on its own); for a paired PROM the patient, instrument, procedure and
  timing. The first answer received to a question is not an amendment; every later one is (it is
  stored as a new row with ``is_amendment`` and ``amends_submission_id`` naming the first), and so
  is any submission that names ``amends_submission_id`` itself. Feedback only records this:
  which answer decides an episode's money is the payments scheme's call (``patient_choice_overrides``,
  ``allow_amendments``), so a "hold back" after an FFT rating is a first answer here.
- **PROM pairing**: the first pre-operative and the first post-operative answer per patient,
  instrument and procedure are paired as soon as both are stored, if the post-operative one was
  authored after the pre-operative one; the answer that completes the pair gets ``health_gain``
  and ``paired_with`` in its scores. The pair's provider is the post-operative answer's.
- **Order**: new rows get ``received_at`` = the clock once the batch's locks are held plus one
  microsecond per new row in batch order, so "first" (by ``received_at``) is first in batch order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from services.feedback import domain
from shared.contracts import FeedbackReceived

DECISION_INSTRUMENTS = ("fft", "patient_power")
Channel = Literal["http", "http-batch", "fhir", "kafka"]


def content_hash(sub: domain.Submission, pseudonym: str) -> str:
    """Hash of what was submitted, with the pseudonym in place of the NHS number."""
    body = sub.model_dump(mode="json", exclude={"nhs_number"})
    for name in domain.OPTIONAL_PUBLICATION_FIELDS:  # added later: absent ones leave older hashes as they were
        if body.get(name) is None:
            body.pop(name, None)
    body["patient"] = pseudonym
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Questions: what a later answer amends
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Question:
    """What an answer answers. ``patient`` is the pseudonym under the current key; the store
    looks the question up under every key of the keyring (see ``Prepared.patient_aliases``)."""

    patient: str
    instrument: str
    episode_id: str | None = None  # decision instruments: one question per episode
    procedure: str | None = None  # paired PROMs: one question per procedure and timing
    timing: Literal["pre_op", "post_op"] | None = None

    @property
    def is_prom(self) -> bool:
        return self.timing is not None

    def counterpart(self) -> "Question":
        """A PROM's other half: the same patient, instrument and procedure at the other timing."""
        if self.timing is None:
            raise ValueError("only a paired PROM has a counterpart")
        return replace(self, timing="post_op" if self.timing == "pre_op" else "pre_op")

    @property
    def lock_name(self) -> str:
        """The advisory lock that serialises "first answer" for this question across transactions:
        the episode for a decision (both instruments: one lock per episode, as before), the
        patient, instrument and procedure for a PROM (both timings, so pairing is serialised too)."""
        if self.is_prom:
            return f"{self.patient}:{self.instrument}:{self.procedure}"
        return self.episode_id or ""


def question_of(sub: domain.Submission, pseudonym: str) -> Question | None:
    """The question ``sub`` answers, or None (EQ-5D-5L without a procedure and timing stands alone)."""
    instrument = sub.answers.instrument
    if instrument in DECISION_INSTRUMENTS:
        return Question(pseudonym, instrument, episode_id=sub.episode_id)
    pair_key = domain.prom_pair_key(sub.answers)
    if pair_key is None:
        return None
    _, procedure, timing = pair_key
    return Question(pseudonym, instrument, procedure=procedure, timing=timing)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# What the store holds, what the core decides
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredSubmission:
    """A stored row, as much as judging a retry of its id needs."""

    submission_id: str
    content_hash: str
    pseudonym_key_id: str
    is_amendment: bool
    scores: Mapping[str, Any]


@dataclass(frozen=True)
class EarlierAnswer:
    """The first answer stored to a question (not an amendment; earliest ``received_at``, then id)."""

    submission_id: str
    provider_code: str
    authored_at: datetime
    scores: Mapping[str, Any]


@dataclass(frozen=True)
class Prepared:
    """One command's submission with what the rules need computed once (not again on a rerun)."""

    submission: domain.Submission
    channel: Channel
    pseudonym: str
    patient_aliases: tuple[str, ...]  # the pseudonym under the current key, then each previous key
    content_hash: str
    scores: Mapping[str, Any]
    question: Question | None


def prepare(sub: domain.Submission, channel: Channel, keys: domain.Keyring) -> Prepared:
    pseudonym = keys.pseudonym(sub.nhs_number)
    return Prepared(sub, channel, pseudonym, tuple(keys.all_pseudonyms(sub.nhs_number)), content_hash(sub, pseudonym),
                    domain.scores(sub.answers), question_of(sub, pseudonym))


@dataclass(frozen=True)
class SubmissionRow:
    """A new row of ``submissions``."""

    submission_id: str
    episode_id: str
    provider_code: str
    patient_pseudonym: str
    pseudonym_key_id: str
    instrument: str
    answers_json: str
    scores: Mapping[str, Any]
    free_text: str | None
    free_text_redactions: int
    authored_at: datetime
    received_at: datetime
    channel: Channel
    content_hash: str
    amends_submission_id: str | None
    is_amendment: bool
    procedure: str | None
    timing: str | None
    setting: str | None
    collection_mode: str | None
    fft_answer: int | None
    patient_choice: str | None


@dataclass(frozen=True)
class PairRow:
    """A new row of ``prom_pairs``: a patient's first pre- and first post-operative PROM."""

    pre_submission_id: str
    post_submission_id: str
    patient_pseudonym: str
    provider_code: str  # the post-operative answer's: the provider that operated
    pair: domain.PromPair


@dataclass(frozen=True)
class Accepted:
    submission_id: str
    status: Literal["created", "duplicate"]
    is_amendment: bool
    scores: Mapping[str, Any]


@dataclass(frozen=True)
class Conflict:
    """The submission id was used before with different content: nothing is written for it."""

    submission_id: str

    @property
    def detail(self) -> str:
        return f"submission {self.submission_id} was already received with different content"


Outcome = Accepted | Conflict


@dataclass(frozen=True)
class Decided:
    """:func:`decide`'s answer: one outcome per item, in order, and what to write."""

    outcomes: list[Outcome]
    rows: list[tuple[int, SubmissionRow]]  # (index of the item, its new row), in batch order
    pairs: list[PairRow]


# ---------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------
def same_content(item: Prepared, stored: StoredSubmission, keys: domain.Keyring) -> bool:
    """Does ``item`` carry what was stored under its id? The stored hash was made with the key of
    ``stored.pseudonym_key_id``; a key no longer in the keyring recognises nothing."""
    if stored.pseudonym_key_id == keys.current_id:
        return stored.content_hash == item.content_hash
    key = keys.key_for(stored.pseudonym_key_id)
    return key is not None and stored.content_hash == content_hash(
        item.submission, domain.pseudonymise(item.submission.nhs_number, key))


def retry_outcome(item: Prepared, stored: StoredSubmission, keys: domain.Keyring) -> Outcome:
    """A submission id seen before: the stored result (a duplicate), or a conflict."""
    if not same_content(item, stored, keys):
        return Conflict(item.submission.submission_id)
    return Accepted(stored.submission_id, "duplicate", stored.is_amendment, dict(stored.scores))


def lock_names(items: Sequence[Prepared]) -> list[str]:
    """The advisory locks a batch takes, sorted: two batches never wait on each other in a cycle."""
    return sorted({item.question.lock_name for item in items if item.question is not None})


def questions_to_look_up(items: Sequence[Prepared]) -> dict[Question, tuple[str, ...]]:
    """Every question whose first stored answer the batch's rules need (a PROM's counterpart too),
    with the patient's pseudonyms under every key."""
    out: dict[Question, tuple[str, ...]] = {}
    for item in items:
        q = item.question
        if q is None:
            continue
        out[q] = item.patient_aliases
        if q.is_prom:
            out[q.counterpart()] = item.patient_aliases
    return out


def pair_with(item: Prepared, scores: Mapping[str, Any], counterpart: EarlierAnswer) -> PairRow | None:
    """Pair a first PROM with the first answer at the other timing (None: post not after pre)."""
    q, sub = item.question, item.submission
    if q is None or not q.is_prom or q.procedure is None:
        raise ValueError("only a paired PROM pairs")
    mine, theirs = (sub.authored_at, dict(scores)), (counterpart.authored_at, dict(counterpart.scores))
    pre, post = (mine, theirs) if q.timing == "pre_op" else (theirs, mine)
    pair = domain.pair_proms(q.instrument, q.procedure, pre, post)
    if pair is None:
        return None
    if q.timing == "pre_op":
        return PairRow(sub.submission_id, counterpart.submission_id, item.pseudonym, counterpart.provider_code, pair)
    return PairRow(counterpart.submission_id, sub.submission_id, item.pseudonym, sub.provider_code, pair)


def decide(items: Sequence[Prepared], stored: Mapping[str, StoredSubmission], first: Mapping[Question, EarlierAnswer],
           keys: domain.Keyring, received_from: datetime) -> Decided:
    """Each item's outcome, in order, as if stored alone one after another (module docstring).

    ``stored``: the rows already stored under the batch's ids; ``first``: the first stored answer
    to each question of :func:`questions_to_look_up` that has one; ``received_from``: the clock
    once the batch's locks are held."""
    first_so_far = dict(first)  # new rows become first answers for the items after them
    seen: dict[str, StoredSubmission] = dict(stored)  # and new ids are "stored" for repeats
    outcomes: list[Outcome] = []
    rows: list[tuple[int, SubmissionRow]] = []
    pairs: list[PairRow] = []
    for index, item in enumerate(items):
        sid = item.submission.submission_id
        prior = seen.get(sid)
        if prior is not None:
            outcomes.append(retry_outcome(item, prior, keys))
            continue
        row, pair = _new_row(item, first_so_far, keys.current_id, received_from + timedelta(microseconds=len(rows)))
        seen[sid] = StoredSubmission(sid, row.content_hash, row.pseudonym_key_id, row.is_amendment, row.scores)
        rows.append((index, row))
        if pair is not None:
            pairs.append(pair)
        outcomes.append(Accepted(sid, "created", row.is_amendment, dict(row.scores)))
    return Decided(outcomes, rows, pairs)


def _new_row(item: Prepared, first: dict[Question, EarlierAnswer], key_id: str,
             received_at: datetime) -> tuple[SubmissionRow, PairRow | None]:
    """A new submission's row (and pair); records it as its question's first answer when it is."""
    sub, q = item.submission, item.question
    amends = sub.amends_submission_id
    is_amendment = amends is not None  # the client says so: an amendment, never a first answer
    scores = dict(item.scores)
    pair: PairRow | None = None
    if q is not None:
        earlier = first.get(q)
        if earlier is not None:
            is_amendment = True
            amends = amends or earlier.submission_id
        elif not is_amendment:
            counterpart = first.get(q.counterpart()) if q.is_prom else None
            if counterpart is not None:
                pair = pair_with(item, scores, counterpart)
                if pair is not None:
                    scores |= {"health_gain": pair.pair.health_gain, "paired_with": counterpart.submission_id}
            first[q] = EarlierAnswer(sub.submission_id, sub.provider_code, sub.authored_at, scores)
    answers = sub.answers
    return SubmissionRow(
        submission_id=sub.submission_id, episode_id=sub.episode_id, provider_code=sub.provider_code,
        patient_pseudonym=item.pseudonym, pseudonym_key_id=key_id, instrument=answers.instrument,
        answers_json=answers.model_dump_json(), scores=scores, free_text=sub.free_text,
        free_text_redactions=sub.free_text_redactions, authored_at=sub.authored_at, received_at=received_at,
        channel=item.channel, content_hash=item.content_hash, amends_submission_id=amends, is_amendment=is_amendment,
        procedure=q.procedure if q is not None else None, timing=q.timing if q is not None else None,
        setting=sub.setting, collection_mode=sub.collection_mode,
        fft_answer=getattr(answers, "fft_answer", None), patient_choice=getattr(answers, "patient_choice", None),
    ), pair


def received_event(row: SubmissionRow) -> FeedbackReceived:
    """The ``feedback.received.v1`` payload of a new row: the pseudonym, never the NHS number or free text."""
    # What improvement work is measured by (funds, portal): the setting, and for a PROM its
    # procedure, timing, score and, when this answer completes a pre/post pair, the health gain.
    prom = row.instrument in domain.PROM_INSTRUMENTS
    score = row.scores.get("oxford_total") if row.instrument in ("ohs", "oks") else row.scores.get("eq_vas") if prom else None
    gain = row.scores.get("health_gain")
    return FeedbackReceived(
        submission_id=row.submission_id, episode_id=row.episode_id, provider_code=row.provider_code,
        patient_pseudonym=row.patient_pseudonym, instrument=row.instrument, authored_at=row.authored_at,  # type: ignore[arg-type]
        fft_answer=row.fft_answer, patient_choice=row.patient_choice, amends_submission_id=row.amends_submission_id,  # type: ignore[arg-type]
        setting=row.setting,  # type: ignore[arg-type]
        procedure=row.procedure if prom else None, timing=row.timing if prom else None,  # type: ignore[arg-type]
        prom_score=score if isinstance(score, int) else None, health_gain=gain if isinstance(gain, int) else None,
    )
