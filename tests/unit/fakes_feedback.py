"""An in-memory feedback store (``services.feedback.ports.FeedbackStore``) for handler tests.

``FakeFeedback().uow`` is a ``shared.uow.FakeUnitOfWork`` over :class:`FeedbackState`: each run
works on a copy and commits it only when the work returns, as a transaction would. The fake keeps
the store's contract (tests/integration/test_feedback_store.py holds the PostgreSQL adapter to the
same behaviour): ``stored`` by id, ``first_answers`` by question under every pseudonym of the
patient ignoring amendments (earliest ``received_at``, then id), inserts that skip ids already
committed by someone else. ``commit_concurrently`` plays another writer that commits a row just
before this transaction's next insert, the race the handler must survive.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from services.feedback.decisions import EarlierAnswer, PairRow, Question, StoredSubmission, SubmissionRow
from shared.events import Row
from shared.uow import FakeUnitOfWork

START = datetime(2026, 11, 1, 9, tzinfo=timezone.utc)


@dataclass
class FeedbackState:
    """What the database holds once committed."""

    submissions: dict[str, SubmissionRow] = field(default_factory=dict)
    pairs: dict[str, PairRow] = field(default_factory=dict)  # by pre-operative submission id
    outbox: list[Row] = field(default_factory=list)

    def __deepcopy__(self, memo: dict) -> "FeedbackState":
        # What a transaction works on: new containers, the same rows (frozen, never changed in
        # place), so a copy per unit of work costs a dict copy, not a walk of every row.
        return FeedbackState(dict(self.submissions), dict(self.pairs), list(self.outbox))

    def events(self) -> list[dict]:
        """The outbox payloads, decoded, in order."""
        return [json.loads(payload) for _topic, _key, payload, _headers in self.outbox]


def _matches(row: SubmissionRow, q: Question, aliases: Sequence[str]) -> bool:
    if row.is_amendment or row.patient_pseudonym not in aliases or row.instrument != q.instrument:
        return False
    if q.is_prom:
        return row.procedure == q.procedure and row.timing == q.timing
    return row.episode_id == q.episode_id


class FakeFeedbackTx:
    def __init__(self, draft: FeedbackState, world: "FakeFeedback") -> None:
        self.draft = draft
        self.world = world

    async def lock(self, names: Sequence[str]) -> datetime:
        self.world.locks_taken.append(sorted(set(names)))
        return self.world.tick()

    async def stored(self, submission_ids: Sequence[str]) -> dict[str, StoredSubmission]:
        rows = self.draft.submissions
        return {sid: StoredSubmission(sid, rows[sid].content_hash, rows[sid].pseudonym_key_id, rows[sid].is_amendment,
                                      json.loads(json.dumps(rows[sid].scores)))
                for sid in submission_ids if sid in rows}

    async def first_answers(self, questions: Mapping[Question, Sequence[str]]) -> dict[Question, EarlierAnswer]:
        ordered = sorted(self.draft.submissions.values(), key=lambda r: (r.received_at, r.submission_id))
        found: dict[Question, EarlierAnswer] = {}
        for q, aliases in questions.items():
            first = next((r for r in ordered if _matches(r, q, aliases)), None)
            if first is not None:
                found[q] = EarlierAnswer(first.submission_id, first.provider_code, first.authored_at,
                                         json.loads(json.dumps(first.scores)))
        return found

    async def insert_submissions(self, rows: Sequence[SubmissionRow]) -> set[str]:
        self.world.run_concurrent_writers()
        committed = self.world.uow.state.submissions  # ON CONFLICT sees rows others committed meanwhile
        inserted = set()
        for row in rows:
            if row.submission_id in self.draft.submissions or row.submission_id in committed:
                continue
            self.draft.submissions[row.submission_id] = row
            inserted.add(row.submission_id)
        return inserted

    async def insert_pairs(self, pairs: Sequence[PairRow]) -> None:
        for pair in pairs:
            self.draft.pairs.setdefault(pair.pre_submission_id, pair)

    async def enqueue(self, events: Sequence[Row]) -> None:
        self.draft.outbox.extend(events)


class FakeFeedback:
    """The fake store and its unit of work; ``state`` is what has been committed."""

    def __init__(self) -> None:
        self.uow: FakeUnitOfWork[FakeFeedbackTx] = FakeUnitOfWork(FeedbackState(), self._begin)
        self.locks_taken: list[list[str]] = []  # each transaction's lock names, in the order taken
        self._now = START
        self._concurrent: list[SubmissionRow] = []
        self._one_per_transaction: list[SubmissionRow] = []

    def _begin(self, draft: FeedbackState) -> FakeFeedbackTx:
        if self._one_per_transaction:
            self._concurrent.append(self._one_per_transaction.pop(0))
        return FakeFeedbackTx(draft, self)

    @property
    def state(self) -> FeedbackState:
        return self.uow.state

    def tick(self) -> datetime:
        """The clock: a millisecond per lock statement (the real one moves on too, whatever rolls back)."""
        self._now += timedelta(milliseconds=1)
        return self._now

    def commit_concurrently(self, *rows: SubmissionRow) -> None:
        """Another writer commits these rows just before the next insert of any transaction."""
        self._concurrent.extend(rows)

    def commit_concurrently_in_each_transaction(self, *rows: SubmissionRow) -> None:
        """One of these rows per transaction, committed by another writer just before its insert."""
        self._one_per_transaction.extend(rows)

    def run_concurrent_writers(self) -> None:
        rows, self._concurrent = self._concurrent, []
        for row in rows:
            self.uow.state.submissions.setdefault(row.submission_id, row)
