"""The feedback service's application layer: the one write path for submissions.

Every channel (``POST /v1/submissions``, its batch, FHIR, the Kafka intake) parses and admits its
input, then calls :class:`AcceptSubmissions` with a batch of commands (a single request is a batch
of one). The handler owns the unit of work: in ONE transaction it takes the batch's locks, reads
what the store holds for the batch's ids and questions, lets the pure core decide each item in
order (``decisions.decide``), writes the new rows, the PROM pairs and one ``feedback.received.v1``
event per new row (``shared.events`` encodes, ``shared.outbox`` writes), and commits; metrics move
after the commit. Batch and one-at-a-time give the same result by construction: the same code
decides both, a batch of n is n items in order.

Races: the locks serialise writers of the same episode or PROM, so what the batch read stays true
until it commits. Another writer without those locks can still store one of the batch's ids
meanwhile (the same id sent twice at once): the insert skips it, the handler raises
``shared.uow.Raced`` and the unit of work runs the batch again, which then finds the other
writer's row (a duplicate or a conflict). Deadlocks and serialisation failures are retried the
same way (``shared.retry.RACE``); what still fails after that is raised to the adapter.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import Counter

from services.feedback import decisions, domain
from services.feedback.decisions import Accepted, Channel, Conflict, Decided, Outcome, Prepared
from services.feedback.ports import FeedbackStore
from services.feedback.settings import MAX_BATCH_ITEMS
from shared import events
from shared.topics import FEEDBACK_RECEIVED
from shared.uow import Raced, UnitOfWork

log = logging.getLogger(__name__)

PRODUCER = "feedback"
EVENT_TYPE = "feedback.received.v1"

SUBMISSIONS = Counter("feedback_submissions_total", "Submissions handled, by channel and outcome (counted after commit)",
                      ["channel", "outcome"])

__all__ = ["AcceptSubmissions", "Accepted", "Conflict", "Outcome", "SubmitFeedback"]


@dataclass(frozen=True)
class SubmitFeedback:
    """Store this validated, admitted submission (idempotent on its id) and announce it."""

    submission: domain.Submission
    channel: Channel
    correlation_id: str  # into the event's envelope and headers (already made safe by the adapter)
    causation_id: str | None = None  # the intake message's event id; None for HTTP


class AcceptSubmissions:
    """``await accept(commands)``: one outcome per command, in order (``Accepted`` created or
    duplicate, or ``Conflict``), once the batch has committed."""

    def __init__(self, uow: UnitOfWork[FeedbackStore], keys: domain.Keyring, *, max_commands: int = MAX_BATCH_ITEMS) -> None:
        self.uow = uow
        self.keys = keys
        self.max_commands = max_commands

    async def __call__(self, commands: Sequence[SubmitFeedback]) -> list[Outcome]:
        if not commands:
            return []
        if len(commands) > self.max_commands:
            raise ValueError(f"a batch holds at most {self.max_commands} submissions, not {len(commands)}")
        # Pseudonyms and hashes once, outside the transaction: a rerun after a race reuses them.
        items = [decisions.prepare(c.submission, c.channel, self.keys) for c in commands]

        async def work(tx: FeedbackStore) -> Decided:
            return await self._write(tx, commands, items)

        decided = await self.uow.run(work)
        _count(commands, decided.outcomes)
        return decided.outcomes

    async def _write(self, tx: FeedbackStore, commands: Sequence[SubmitFeedback], items: list[Prepared]) -> Decided:
        # Locks first: a concurrent writer of the same episodes or PROMs has committed (or waits)
        # before anything below is read.
        received_from = await tx.lock(decisions.lock_names(items))
        stored = await tx.stored(list(dict.fromkeys(item.submission.submission_id for item in items)))
        new = [item for item in items if item.submission.submission_id not in stored]
        first = await tx.first_answers(decisions.questions_to_look_up(new)) if new else {}
        decided = decisions.decide(items, stored, first, self.keys, received_from)
        rows = [row for _, row in decided.rows]
        inserted = await tx.insert_submissions(rows)
        if len(inserted) != len(rows):
            log.info("a batch of %d met a concurrent insert of %d of its ids; running it again",
                     len(items), len(rows) - len(inserted))
            raise Raced(f"{len(rows) - len(inserted)} of the batch's submission ids were stored by another transaction")
        await tx.insert_pairs(decided.pairs)
        await tx.enqueue(_events(commands, decided))
        return decided


def _events(commands: Sequence[SubmitFeedback], decided: Decided) -> list[events.Row]:
    """One ``feedback.received.v1`` outbox row per new row, in batch order, with its command's trace ids."""
    ids = events.event_ids(len(decided.rows))
    occurred_at = events.occurred_now()  # the batch's events commit together
    return [events.model_row(FEEDBACK_RECEIVED.name, row.episode_id, EVENT_TYPE, decisions.received_event(row),
                             producer=PRODUCER, correlation_id=commands[index].correlation_id,
                             causation_id=commands[index].causation_id, event_id=event_id, occurred_at=occurred_at)
            for (index, row), event_id in zip(decided.rows, ids)]


def _count(commands: Sequence[SubmitFeedback], outcomes: Sequence[Outcome]) -> None:
    tally = collections.Counter(
        (c.channel, o.status if isinstance(o, Accepted) else "conflict") for c, o in zip(commands, outcomes))
    for (channel, outcome), n in tally.items():
        SUBMISSIONS.labels(channel, outcome).inc(n)
