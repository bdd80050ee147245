"""What the feedback command handler needs from storage, bound to one transaction.

``store.FeedbackTx`` is the PostgreSQL adapter; ``tests/unit/fakes_feedback.py`` keeps the same
in memory so handler tests run in milliseconds. The handler takes the batch's locks first, so
everything it then reads is the state its decisions are made against (another writer of the same
questions waits for this transaction); ``insert_submissions`` reports ids another writer without
those locks stored meanwhile, and the handler then runs the batch again (``shared.uow.Raced``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from services.feedback.decisions import EarlierAnswer, PairRow, Question, StoredSubmission, SubmissionRow
from shared.events import Row


class FeedbackStore(Protocol):
    async def lock(self, names: Sequence[str]) -> datetime:
        """Take these advisory locks (held to the end of the transaction) in sorted order, whatever
        order they come in; the clock once they are all held (``received_at`` starts there)."""

    async def stored(self, submission_ids: Sequence[str]) -> dict[str, StoredSubmission]:
        """The stored rows for these ids (absent ids are not in the result)."""

    async def first_answers(self, questions: Mapping[Question, Sequence[str]]) -> dict[Question, EarlierAnswer]:
        """For each question (with the patient's pseudonyms under every key), its first stored
        answer that is not an amendment (earliest ``received_at``, then submission id), if any."""

    async def insert_submissions(self, rows: Sequence[SubmissionRow]) -> set[str]:
        """Insert the rows; the ids inserted. An id already stored (a concurrent writer's) is
        skipped, not overwritten: the caller compares and raises ``Raced``."""

    async def insert_pairs(self, pairs: Sequence[PairRow]) -> None:
        """Insert PROM pairs (a pair already stored is left as it is)."""

    async def enqueue(self, events: Sequence[Row]) -> None:
        """Add outbox rows (``shared.events``) in this transaction, in the given order."""
