"""What comes in, decided without I/O: commissioners' payment requests and patients' answers.

A batch of payment requests (an HTTP request of one, an HTTP batch, a Kafka batch: one path) is
decided here, item by item in order, against the episodes already stored with either of its ids
and against the batch's earlier items:

- codes unknown to the reference data, or a trust the commissioner holds no contract with:
  ``InputError`` (HTTP 422; dead-lettered on Kafka);
- the same payment id (else the same episode id) seen before with the same request fingerprint:
  a duplicate, answered exactly as the original was accepted, however old its activity date;
- the same id with another request: ``Conflict``, naming the fields that differ (HTTP 409);
- otherwise a new episode, if its activity date is plausible (``InputError`` if not): the
  governing scheme, the at-risk share, and the ledger transfers to ask for.

An item is decided as if the items before it had been handled one at a time, so a batch gives
each item the outcome it would have had alone, in that order: a repeat inside the batch is a
duplicate or a conflict of the earlier item. Nothing is written for a rejection.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from services.payments import domain
from services.payments.domain import Episode, HoldModel, InputError, PlannedTransfer
from services.payments.schemes import SchemeBook
from shared.contracts import FeedbackReceived, PaymentRequested
from shared.reference import ReferenceData

# The instruments whose answers can decide an episode; payments keeps no others.
DECISIVE_INSTRUMENTS = frozenset({"fft", "patient_power"})


class Conflict(ValueError):
    """The same id was used before with different content. HTTP 409; on Kafka, dead-lettered."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """A payment request accepted now (``created``) or before (``duplicate``)."""

    payment_id: str
    episode_id: str
    status: Literal["created", "duplicate"]
    episode_status: str
    at_risk_pence: int
    scheme_id: str | None
    scheme_version: int | None
    hold_transfer_id: str
    transfer_ids: tuple[str, ...] = ()


Outcome = Accepted | InputError | Conflict


class Stored(NamedTuple):
    """An episode already stored, as a request is compared with it."""

    episode: Episode
    fingerprint: str
    request_json: str
    status: str


class NewEpisode(NamedTuple):
    """An episode a batch creates: the row to insert and the transfers to ask the ledger for."""

    index: int  # the request's position in the batch
    episode: Episode
    fingerprint: str
    request_json: str
    status: str
    plan: tuple[PlannedTransfer, ...]


@dataclass
class Verdicts:
    outcomes: list[Outcome] = field(default_factory=list)  # one per request, in order
    new: list[NewEpisode] = field(default_factory=list)  # in request order


def fingerprint_of(request_json: str) -> str:
    """A request's fingerprint: equal fingerprints are the same request (a retry or a replay)."""
    return hashlib.sha256(request_json.encode()).hexdigest()


def episode_status(e: Episode) -> str:
    """Nothing at risk (out of trial, or rounded down to nothing): paid in full at once."""
    return "held" if e.at_risk_pence else "paid_in_full"


@dataclass(frozen=True, slots=True)
class _Known:
    """A request already decided (stored, or earlier in this batch), as a repeat is compared with it."""

    payment_id: str
    episode_id: str
    fingerprint: str
    request_json: str
    status: str
    episode: Episode
    transfer_ids: tuple[str, ...] | None  # None: derived from the episode when a duplicate needs them

    def repeat(self, req: PaymentRequested, fingerprint: str, request_json: str) -> Accepted | Conflict:
        if fingerprint != self.fingerprint:
            return self.conflict(request_json)
        ids = self.transfer_ids
        if ids is None:
            ids = tuple(p.transfer_id for p in domain.payment_plan(self.episode))
        e = self.episode
        return Accepted(req.payment_id, req.episode_id, "duplicate", self.status, e.at_risk_pence, e.scheme_id,
                        e.scheme_version, ids[-1], ids)

    def conflict(self, request_json: str) -> Conflict:
        return Conflict(f"payment {self.payment_id} / episode {self.episode_id} was already requested with different "
                        f"{', '.join(differing_fields(self.request_json, request_json))}")


def differing_fields(before_json: str, after_json: str) -> list[str]:
    """The request fields whose values differ (a field present in only one of them included), sorted."""
    before, after = json.loads(before_json), json.loads(after_json)
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def decide_payments(
    requests: Sequence[PaymentRequested], stored: Sequence[Stored], *, book: SchemeBook, ref: ReferenceData,
    hold_model: HoldModel, window: domain.ActivityWindow,
) -> Verdicts:
    """Decide a batch of payment requests in order (see the module's docstring).

    ``stored`` holds every stored episode with one of the batch's payment ids or episode ids.
    A repeat is compared with the episode holding its payment id if there is one, else the one
    holding its episode id; a new episode takes both ids for the rest of the batch.
    """
    by_payment: dict[str, _Known] = {}
    by_episode: dict[str, _Known] = {}
    for s in stored:
        e = s.episode
        known = _Known(e.payment_id, e.episode_id, s.fingerprint, s.request_json, s.status, e, None)
        by_payment[e.payment_id] = by_episode[e.episode_id] = known
    verdicts = Verdicts()
    for index, req in enumerate(requests):
        try:
            region = domain.validate_codes(req, ref)
        except InputError as exc:
            verdicts.outcomes.append(exc)
            continue
        request_json = req.model_dump_json()  # the case-mix fields only when sent (contracts.py)
        fingerprint = fingerprint_of(request_json)
        prior = by_payment.get(req.payment_id) or by_episode.get(req.episode_id)
        if prior is not None:
            verdicts.outcomes.append(prior.repeat(req, fingerprint, request_json))
            continue
        try:  # only a request that would create an episode must have a plausible activity date
            domain.check_activity_date(req.activity_date, window)
        except InputError as exc:
            verdicts.outcomes.append(exc)
            continue
        episode = domain.episode_for_request(req, region=region, book=book, hold_model=hold_model)
        plan = domain.payment_plan(episode)
        status = episode_status(episode)
        ids = tuple(p.transfer_id for p in plan)
        by_payment[req.payment_id] = by_episode[req.episode_id] = _Known(
            req.payment_id, req.episode_id, fingerprint, request_json, status, episode, ids)
        verdicts.new.append(NewEpisode(index, episode, fingerprint, request_json, status, plan))
        verdicts.outcomes.append(Accepted(req.payment_id, req.episode_id, "created", status, episode.at_risk_pence,
                                          episode.scheme_id, episode.scheme_version, ids[-1], ids))
    return verdicts


# ---------------------------------------------------------------------------------------------
# Patients' answers
# ---------------------------------------------------------------------------------------------
def answers_to_keep(answers: Sequence[FeedbackReceived]) -> dict[str, int]:
    """submission id -> the position of the answer to store for it: the first of the batch's
    answers with that id, and only answers of an instrument that can decide an episode."""
    first: dict[str, int] = {}
    for i, fb in enumerate(answers):
        if fb.instrument in DECISIVE_INSTRUMENTS and fb.submission_id not in first:
            first[fb.submission_id] = i
    return first


def answer_outcomes(answers: Sequence[FeedbackReceived], kept: dict[str, int], stored_now: set[str]) -> list[bool]:
    """Per answer, in order: True for an answer recorded now; False for a duplicate (of a stored
    answer or of one earlier in the batch) and for an instrument that cannot decide an episode."""
    return [kept.get(fb.submission_id) == i and fb.submission_id in stored_now for i, fb in enumerate(answers)]
