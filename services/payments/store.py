"""The payments service's PostgreSQL adapter: accepting payments, recording answers, settling.

Every state change and the ledger transfer requests it causes commit in one transaction (the
outbox), so nothing is half-written and nothing is lost if Kafka is down.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import date, datetime
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import asyncpg

from services.payments import domain, metrics, outbox_rows, reconcile
from services.payments.domain import InputError  # re-exported: api and consumer catch store.InputError
from services.payments.schemes import Scheme, SchemeBook
from shared.contracts import FeedbackReceived, PaymentRequested, TransferPosted, TransferRequested
from shared.outbox import enqueue
from shared.money import check
from shared.reference import ReferenceData

PRODUCER = outbox_rows.PRODUCER
T = TypeVar("T")


class Conflict(ValueError):
    """The same id was used before with different content. HTTP 409; on Kafka, dead-lettered."""


@dataclass(frozen=True)
class Accepted:
    payment_id: str
    episode_id: str
    status: Literal["created", "duplicate"]
    episode_status: str
    at_risk_pence: int
    scheme_id: str | None
    scheme_version: int | None
    hold_transfer_id: str
    transfer_ids: tuple[str, ...] = ()


def request_fingerprint(req: PaymentRequested) -> str:
    return hashlib.sha256(req.model_dump_json().encode()).hexdigest()


async def _track_transfers(conn: asyncpg.Connection, rows: list[tuple[str, str, str, str]]) -> None:
    """Remember each requested transfer (transfer_id, episode_id, cause kind, transfer kind) to
    follow its fate: the ledger's answer is compared with what it should be (reconcile.py)."""
    await conn.execute(
        "INSERT INTO ledger_transfers(transfer_id, episode_id, kind, expected_status)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING",
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [reconcile.expected_status(r[3]) for r in rows],  # type: ignore[arg-type]
    )


async def _request_transfers(conn: asyncpg.Connection, transfers: list[tuple[TransferRequested, str]],
                             correlation_id: str, causation_id: str | None) -> None:
    """Track and enqueue transfers built as contract models (settlement, appeals). Each row is
    keyed by the transfer's ordering key (the payment id): a pending hold and the transfer that
    posts or voids it land on one partition, in order."""
    if not transfers:
        return
    await _track_transfers(conn, [(t.transfer_id, episode, t.cause.kind, t.kind) for t, episode in transfers])
    occurred_at = outbox_rows.occurred_now()
    await enqueue(conn, [
        outbox_rows.contract_row(t, correlation_id=correlation_id, causation_id=causation_id, event_id=event_id,
                                 occurred_at=occurred_at)
        for (t, _), event_id in zip(transfers, outbox_rows.event_ids(len(transfers)))
    ])


async def _request_planned(conn: asyncpg.Connection, plan: tuple[domain.PlannedTransfer, ...],
                           correlation_id: str, causation_id: str | None) -> None:
    """Track and enqueue one payment's planned transfers (accept_payment, one event)."""
    if not plan:
        return
    await _track_transfers(conn, [(p.transfer_id, p.episode.episode_id, p.cause_kind, p.kind) for p in plan])
    await enqueue(conn, outbox_rows.planned_rows(plan, correlation_id=correlation_id, causation_id=causation_id,
                                                 event_ids=outbox_rows.event_ids(len(plan)),
                                                 occurred_at=outbox_rows.occurred_now()))


async def accept_payment(
    conn: asyncpg.Connection, req: PaymentRequested, *, book: SchemeBook, ref: ReferenceData,
    correlation_id: str, causation_id: str | None = None, hold_model: domain.HoldModel = "held_account",
    window: domain.ActivityWindow | None = None,
) -> Accepted:
    """Idempotent on payment_id and episode_id. Caller provides the transaction."""
    episode = domain.episode_for_request(req, book=book, ref=ref, hold_model=hold_model, window=window)
    plan = domain.payment_plan(episode)
    fp = request_fingerprint(req)
    status = "held" if episode.at_risk_pence else "paid_in_full"
    inserted = await conn.fetchval(
        "INSERT INTO episodes(episode_id, payment_id, commissioner_code, provider_code, region_code, service_type,"
        " activity_date, period, amount_pence, at_risk_pence, scheme_id, scheme_version, request_fingerprint, request,"
        " correlation_id, status, hold_model)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14::jsonb,$15,$16,$17) ON CONFLICT DO NOTHING RETURNING 1",
        req.episode_id, req.payment_id, req.commissioner_code, req.provider_code, episode.region_code, req.service_type,
        req.activity_date, episode.period, req.amount_pence, episode.at_risk_pence, episode.scheme_id,
        episode.scheme_version, fp, req.model_dump_json(), correlation_id, status, hold_model,
    )
    if not inserted:
        prior = await conn.fetchrow(
            "SELECT * FROM episodes WHERE payment_id = $1 OR episode_id = $2 ORDER BY (payment_id = $1) DESC LIMIT 1",
            req.payment_id, req.episode_id,
        )
        if prior is None:  # pragma: no cover - the conflicting row must exist
            raise RuntimeError("insert conflicted but no prior row found")
        known = _Known.of_row(prior)
        if known.fingerprint != fp:
            raise known.conflict(req.model_dump_json())
        return known.duplicate(req)
    await _request_planned(conn, plan, correlation_id, causation_id)
    return Accepted(req.payment_id, req.episode_id, "created", status, episode.at_risk_pence,
                    episode.scheme_id, episode.scheme_version, plan[-1].transfer_id,
                    tuple(p.transfer_id for p in plan))


async def record_answer(conn: asyncpg.Connection, fb: FeedbackReceived) -> bool:
    """Keep an answer that can decide an episode. Returns False for duplicates and other instruments."""
    if fb.instrument not in ("fft", "patient_power"):
        return False
    inserted = await conn.fetchval(
        "INSERT INTO answers(submission_id, episode_id, provider_code, instrument, fft_answer, patient_choice,"
        " authored_at, amends_submission_id) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT DO NOTHING RETURNING 1",
        fb.submission_id, fb.episode_id, fb.provider_code, fb.instrument,
        int(fb.fft_answer) if fb.fft_answer is not None else None, fb.patient_choice, fb.authored_at,
        fb.amends_submission_id,
    )
    return bool(inserted)


async def record_ledger_answer(conn: asyncpg.Connection, posted: TransferPosted) -> list[tuple[str, str]]:
    return await record_ledger_answers(conn, [posted])


# ---------------------------------------------------------------------------------------------
# Batches (the Kafka consumer): the same outcomes as the functions above called once per event,
# in order, with a fixed number of statements per batch instead of several per event.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PaymentItem:
    """One payment request from a consumer batch, with the ids of the event that carried it."""

    request: PaymentRequested
    correlation_id: str
    causation_id: str | None = None


class Raced(Exception):
    """Another writer inserted one of a batch's ids after the batch looked. The caller rolls its
    transaction back and runs the batch again (it then sees that row); nothing was decided on a
    stale view."""


@dataclass(frozen=True)
class _Known:
    """An episode row as accept_payment compares a request with it (stored, or earlier in the batch)."""

    payment_id: str
    episode_id: str
    fingerprint: str
    request_json: str
    status: str
    at_risk_pence: int
    scheme_id: str | None
    scheme_version: int | None
    transfer_ids: tuple[str, ...] | None = None  # None: derived from the row when needed
    row: asyncpg.Record | None = None

    @classmethod
    def of_row(cls, r: asyncpg.Record) -> "_Known":
        return cls(r["payment_id"], r["episode_id"], r["request_fingerprint"], r["request"], r["status"],
                   r["at_risk_pence"], r["scheme_id"], r["scheme_version"], row=r)

    def conflict(self, request_json: str) -> Conflict:
        before = json.loads(self.request_json)
        after = json.loads(request_json)
        diff = sorted(k for k in after if before.get(k) != after.get(k))
        return Conflict(f"payment {self.payment_id} / episode {self.episode_id} was already requested with different "
                        f"{', '.join(diff)}")

    def duplicate(self, req: PaymentRequested) -> Accepted:
        ids = self.transfer_ids
        if ids is None:
            assert self.row is not None
            ids = tuple(p.transfer_id for p in domain.payment_plan(_episode(self.row)))
        return Accepted(req.payment_id, req.episode_id, "duplicate", self.status, self.at_risk_pence, self.scheme_id,
                        self.scheme_version, ids[-1], ids)


_INSERT_EPISODES = (
    "INSERT INTO episodes(episode_id, payment_id, commissioner_code, provider_code, region_code, service_type,"
    " activity_date, period, amount_pence, at_risk_pence, scheme_id, scheme_version, request_fingerprint, request,"
    " correlation_id, status, hold_model)"
    " SELECT e, p, c, pr, r, st, d, pe, a, ar, si, sv, f, q::jsonb, ci, s, h"
    " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::date[], $8::text[],"
    "             $9::bigint[], $10::bigint[], $11::text[], $12::int[], $13::text[], $14::text[], $15::text[],"
    "             $16::text[], $17::text[]) AS t(e, p, c, pr, r, st, d, pe, a, ar, si, sv, f, q, ci, s, h)"
    " ON CONFLICT DO NOTHING RETURNING episode_id"
)


async def accept_payments(
    conn: asyncpg.Connection, items: list[PaymentItem], *, book: SchemeBook, ref: ReferenceData,
    hold_model: domain.HoldModel = "held_account", window: domain.ActivityWindow | None = None,
) -> list[Accepted | InputError | Conflict]:
    """accept_payment for a batch, in the caller's transaction: item i gets exactly the outcome
    accept_payment would give it after items 0..i-1 (a repeat inside the batch is a duplicate or
    a conflict of the earlier one), in four statements whatever the batch size.

    Rejections (InputError, Conflict) are returned in place, not raised, and nothing is written for
    them: they are decided before anything is written (codes by the pure core, conflicts against
    the rows read first). Raises Raced if another writer got in between the read and the insert.
    """
    if not items:
        return []
    prepared: list[tuple[domain.Episode, str, str] | InputError] = []
    for item in items:
        try:
            episode = domain.episode_for_request(item.request, book=book, ref=ref, hold_model=hold_model, window=window)
        except InputError as exc:
            prepared.append(exc)
            continue
        request_json = item.request.model_dump_json()
        prepared.append((episode, hashlib.sha256(request_json.encode()).hexdigest(), request_json))
    rows = await conn.fetch(
        "SELECT * FROM episodes WHERE payment_id = ANY($1::text[]) OR episode_id = ANY($2::text[])",
        [i.request.payment_id for i in items], [i.request.episode_id for i in items],
    )
    by_payment = {r["payment_id"]: r for r in rows}
    by_episode = {r["episode_id"]: r for r in rows}
    known_payment: dict[str, _Known] = {}
    known_episode: dict[str, _Known] = {}

    def prior_of(req: PaymentRequested) -> _Known | None:
        # As accept_payment: the row with this payment id first, else the one with this episode id.
        for known, stored, key in ((known_payment, by_payment, req.payment_id), (known_episode, by_episode, req.episode_id)):
            if key in known:
                return known[key]
            if key in stored:
                return _Known.of_row(stored[key])
        return None

    outcomes: list[Accepted | InputError | Conflict] = []
    new: list[tuple[PaymentItem, domain.Episode, str, str, str, tuple[domain.PlannedTransfer, ...]]] = []
    for item, prep in zip(items, prepared):
        if isinstance(prep, InputError):
            outcomes.append(prep)
            continue
        episode, fp, request_json = prep
        req = item.request
        prior = prior_of(req)
        if prior is not None:
            outcomes.append(prior.duplicate(req) if prior.fingerprint == fp else prior.conflict(request_json))
            continue
        plan = domain.payment_plan(episode)
        status = "held" if episode.at_risk_pence else "paid_in_full"
        ids = tuple(p.transfer_id for p in plan)
        known = _Known(req.payment_id, req.episode_id, fp, request_json, status, episode.at_risk_pence,
                       episode.scheme_id, episode.scheme_version, ids)
        known_payment[req.payment_id] = known_episode[req.episode_id] = known
        new.append((item, episode, fp, request_json, status, plan))
        outcomes.append(Accepted(req.payment_id, req.episode_id, "created", status, episode.at_risk_pence,
                                 episode.scheme_id, episode.scheme_version, ids[-1], ids))
    if not new:
        return outcomes
    columns: list[list[Any]] = [[] for _ in range(17)]
    for item, episode, fp, request_json, status, _plan in new:
        req = item.request
        for col, value in zip(columns, (
            req.episode_id, req.payment_id, req.commissioner_code, req.provider_code, episode.region_code,
            req.service_type, req.activity_date, episode.period, req.amount_pence, episode.at_risk_pence,
            episode.scheme_id, episode.scheme_version, fp, request_json, item.correlation_id, status, hold_model,
        )):
            col.append(value)
    inserted = await conn.fetch(_INSERT_EPISODES, *columns)
    if len(inserted) != len(new):
        raise Raced(f"{len(new) - len(inserted)} of {len(new)} episodes were inserted by another writer meanwhile")
    await _track_transfers(conn, [(p.transfer_id, item.request.episode_id, p.cause_kind, p.kind)
                                  for item, *_, plan in new for p in plan])
    await conn.copy_records_to_table("outbox", records=_batch_rows(new), columns=["topic", "key", "payload", "headers"])
    return outcomes


def _batch_rows(new: list[tuple[PaymentItem, domain.Episode, str, str, str, tuple[domain.PlannedTransfer, ...]]]
                ) -> list[outbox_rows.Row]:
    """The outbox rows of a batch's new payments, in order: event ids from one draw for the
    batch, one occurred_at (the batch commits as one)."""
    ids = outbox_rows.event_ids(sum(len(plan) for *_, plan in new))
    occurred_at = outbox_rows.occurred_now()
    rows: list[outbox_rows.Row] = []
    for item, *_, plan in new:
        start = len(rows)
        rows += outbox_rows.planned_rows(plan, correlation_id=item.correlation_id, causation_id=item.causation_id,
                                         event_ids=ids[start:start + len(plan)], occurred_at=occurred_at)
    return rows


async def record_answers(conn: asyncpg.Connection, answers: list[FeedbackReceived]) -> list[bool]:
    """record_answer for a batch, in one statement: the same result per answer as calling it on
    each in order (True for a new answer; False for a duplicate, also one earlier in the batch,
    and for instruments that cannot decide an episode). The first of two answers with one
    submission id is kept, as one by one."""
    first: dict[str, int] = {}
    for i, fb in enumerate(answers):
        if fb.instrument in ("fft", "patient_power") and fb.submission_id not in first:
            first[fb.submission_id] = i
    if not first:
        return [False] * len(answers)
    keep = [answers[i] for i in first.values()]
    rows = await conn.fetch(
        "INSERT INTO answers(submission_id, episode_id, provider_code, instrument, fft_answer, patient_choice,"
        " authored_at, amends_submission_id)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::text[],"
        "                      $7::timestamptz[], $8::text[])"
        " ON CONFLICT DO NOTHING RETURNING submission_id",
        [fb.submission_id for fb in keep], [fb.episode_id for fb in keep], [fb.provider_code for fb in keep],
        [fb.instrument for fb in keep], [int(fb.fft_answer) if fb.fft_answer is not None else None for fb in keep],
        [fb.patient_choice for fb in keep], [fb.authored_at for fb in keep], [fb.amends_submission_id for fb in keep],
    )
    new = {r["submission_id"] for r in rows}
    return [first.get(fb.submission_id) == i and fb.submission_id in new for i, fb in enumerate(answers)]


def final_ledger_answers(answers: list[TransferPosted]) -> list[TransferPosted]:
    """What record_ledger_answer called on each answer in order leaves per transfer: a "posted"
    answer is final (later answers do not overwrite it), otherwise the last answer stands."""
    final: dict[str, TransferPosted] = {}
    for a in answers:
        current = final.get(a.transfer_id)
        if current is None or current.status != "posted":
            final[a.transfer_id] = a
    return list(final.values())


async def record_ledger_answers(conn: asyncpg.Connection, answers: list[TransferPosted]) -> list[tuple[str, str]]:
    """Record what the ledger did with each transfer, in two statements for the batch (same end
    state as one by one, in order), and any answer that is not the one payments expects
    (reconcile.py). Returns the new discrepancies as (transfer id, why)."""
    final = final_ledger_answers(answers)
    if not final:
        return []
    rows = await conn.fetch(
        "UPDATE ledger_transfers t SET status = d.s, entry_seq = d.q, reason = d.r, answered_at = now()"
        " FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[]) AS d(id, s, q, r)"
        " WHERE t.transfer_id = d.id AND t.status <> 'posted' RETURNING t.transfer_id, t.expected_status, t.discrepancy",
        [a.transfer_id for a in final], [a.status for a in final], [a.entry_seq for a in final], [a.reason for a in final],
    )
    by_id = {a.transfer_id: a for a in final}
    found = []
    for r in rows:
        answer = by_id[r["transfer_id"]]
        why = reconcile.discrepancy(r["expected_status"], answer.status, answer.reason)
        if why is not None and r["discrepancy"] != why:
            found.append((r["transfer_id"], why))
    if found:
        await conn.execute(
            "UPDATE ledger_transfers t SET discrepancy = d.why, discrepancy_at = now()"
            " FROM unnest($1::text[], $2::text[]) AS d(id, why) WHERE t.transfer_id = d.id",
            [f[0] for f in found], [f[1] for f in found],
        )
    return found


# ---------------------------------------------------------------------------------------------
# Settlement
# ---------------------------------------------------------------------------------------------
def _episode(r: asyncpg.Record) -> domain.Episode:
    return domain.Episode(
        r["payment_id"], r["episode_id"], r["commissioner_code"], r["provider_code"], r["region_code"],
        r["service_type"], r["activity_date"], r["amount_pence"], r["at_risk_pence"], r["scheme_id"], r["scheme_version"],
        r["hold_model"],
    )


def _answer(r: asyncpg.Record) -> domain.Answer:
    return domain.Answer(r["submission_id"], r["episode_id"], r["instrument"], r["authored_at"],
                         r["fft_answer"], r["patient_choice"])


# What settlement reads: not the stored request (a few hundred bytes an episode it never uses).
_EPISODE_COLUMNS = ("payment_id, episode_id, commissioner_code, provider_code, region_code, service_type,"
                    " activity_date, amount_pence, at_risk_pence, scheme_id, scheme_version, hold_model")
_ANSWER_COLUMNS = "submission_id, episode_id, instrument, authored_at, fft_answer, patient_choice"


def decision_json(line: domain.EpisodeSettlement) -> str:
    """The decision an episode row keeps: the decision's fields in order, its steps and the ids
    of its transfers. ``vars`` instead of ``asdict``: the fields are plain values and tuples of
    strings, which asdict would only copy, recursively, at a cost per episode."""
    return json.dumps({**vars(line.decision), "steps": list(line.steps),
                       "transfer_ids": [p.transfer_id for p in line.plan]}, default=str)


async def _request_settlement(conn: asyncpg.Connection, plan: list[domain.PlannedTransfer], correlation_id: str) -> None:
    """Track and enqueue a unit's planned settlement transfers, rows written by hand, by COPY in
    slices (ids in row order, as enqueue gives them: the relay publishes them in that order)."""
    if not plan:
        return
    for part in _slices(plan):
        await _track_transfers(conn, [(p.transfer_id, p.episode.episode_id, p.cause_kind, p.kind) for p in part])
    rows = outbox_rows.planned_rows(plan, correlation_id=correlation_id, causation_id=None,
                                    event_ids=outbox_rows.event_ids(len(plan)), occurred_at=outbox_rows.occurred_now())
    for part in _slices(rows):
        await conn.copy_records_to_table("outbox", records=part, columns=["topic", "key", "payload", "headers"])


# Rows per statement when a settlement unit is read and written. A big trust has hundreds of
# thousands of episodes in a month; the whole unit still settles in one transaction (its cap and
# minimum sample are computed over all of it), but no single statement grows with it, so none
# meets the pool's 30 s per-statement timeout. Found by the full "one England day": the one
# UPDATE of the largest trust's month ran past it and the month's settlement failed. 20,000
# rows cost the same per episode as one statement per unit (bench/payments --settlement).
SETTLE_STATEMENT_ROWS = 20_000


def _slices(items: list[T]) -> list[list[T]]:
    n = SETTLE_STATEMENT_ROWS
    return [items[i:i + n] for i in range(0, len(items), n)]


async def settle_unit(
    conn: asyncpg.Connection, scheme: Scheme, *, provider_code: str, period: str, run_by: str, correlation_id: str,
) -> dict[str, Any] | None:
    """Settle one provider-period-scheme unit in the caller's transaction. Idempotent: held
    episodes only, so a second run finds nothing to do and returns None."""
    episodes: list[domain.Episode] = []
    after = ""
    while True:  # keyset pages, each locked: the unit is read whole inside this transaction
        rows = await conn.fetch(
            f"SELECT {_EPISODE_COLUMNS} FROM episodes WHERE provider_code = $1 AND period = $2 AND scheme_id = $3"
            " AND scheme_version = $4 AND status = 'held' AND episode_id > $5 ORDER BY episode_id LIMIT $6 FOR UPDATE",
            provider_code, period, scheme.scheme_id, scheme.version, after, SETTLE_STATEMENT_ROWS,
        )
        episodes += [_episode(r) for r in rows]
        if len(rows) < SETTLE_STATEMENT_ROWS:
            break
        after = rows[-1]["episode_id"]
    if not episodes:
        return None
    answers = []
    for part in _slices([e.episode_id for e in episodes]):
        answers += [_answer(r) for r in await conn.fetch(
            f"SELECT {_ANSWER_COLUMNS} FROM answers WHERE episode_id = ANY($1::text[])", part)]
    base_id = f"{provider_code}:{period}:{scheme.key}"
    earlier = await conn.fetchval("SELECT count(*) FROM settlements WHERE settlement_id LIKE $1", base_id + "%")
    # A period settles once. Episodes that arrive after it closed are released in full in a
    # supplementary settlement: the cap and minimum sample cannot be applied fairly twice.
    late = earlier > 0
    report = domain.settle(episodes, answers, scheme, provider_code=provider_code, period=period, divert=not late)
    settlement_id = base_id if not late else f"{base_id}:late-{earlier}"
    await conn.execute(
        "INSERT INTO settlements(settlement_id, provider_code, region_code, period, scheme_id, scheme_version, run_by,"
        " billed_pence, held_pence, released_pence, diverted_pence, responses, episodes, min_sample_applied,"
        " cap_applied, cap_pence) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16)",
        settlement_id, provider_code, report.region_code, period, scheme.scheme_id, scheme.version, run_by,
        report.billed_pence, report.held_pence, report.released_pence, report.diverted_pence, report.responses,
        report.episodes, report.min_sample_applied, report.cap_applied, report.cap_pence,
    )
    for part in _slices(report.lines):  # one statement per slice, not per episode
        await conn.execute(
            "UPDATE episodes SET status = 'settled', settlement_id = $1, released_pence = d.released,"
            " diverted_pence = d.diverted, decision = d.decision::jsonb"
            " FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::text[]) AS d(episode_id, released, diverted, decision)"
            " WHERE episodes.episode_id = d.episode_id",
            settlement_id,
            [line.episode.episode_id for line in part],
            [line.released_pence for line in part],
            [line.diverted_pence for line in part],
            [decision_json(line) for line in part],
        )
    await _request_settlement(conn, [p for line in report.lines for p in line.plan], correlation_id)
    return settlement_summary(settlement_id, report)


def settlement_summary(settlement_id: str, report: domain.SettlementReport) -> dict[str, Any]:
    return {
        "settlement_id": settlement_id,
        "provider_code": report.provider_code,
        "region_code": report.region_code,
        "period": report.period,
        "scheme": report.scheme_key,
        "billed_pence": report.billed_pence,
        "held_pence": report.held_pence,
        "released_pence": report.released_pence,
        "diverted_pence": report.diverted_pence,
        "responses": report.responses,
        "episodes": report.episodes,
        "min_sample_applied": report.min_sample_applied,
        "cap_applied": report.cap_applied,
        "cap_pence": report.cap_pence,
    }


class NotYet(ValueError):
    """A period whose decision windows have not all closed: nothing settles before ``opens_on``."""

    def __init__(self, period: str, opens_on: date) -> None:
        super().__init__(f"period {period} may be settled from {opens_on.isoformat()}, once every episode's decision window"
                         " has closed")
        self.period = period
        self.opens_on = opens_on


async def run_settlement(
    pool: asyncpg.Pool, book: SchemeBook, *, period: str, provider_code: str | None, run_by: str, correlation_id: str,
    today: date, region_code: str | None = None, may_settle: Callable[[str], bool] | None = None, trigger: str = "api",
) -> list[dict[str, Any]]:
    """Settle every unsettled unit of a period (optionally one provider or region, and only the
    providers ``may_settle`` allows), one transaction each. Refuses (NotYet) a period whose
    decision windows are still open on ``today``: an answer could still arrive and change money."""
    async with pool.acquire() as conn:
        units = await conn.fetch(
            "SELECT DISTINCT provider_code, scheme_id, scheme_version FROM episodes"
            " WHERE period = $1 AND status = 'held' AND ($2::text IS NULL OR provider_code = $2)"
            " AND ($3::text IS NULL OR region_code = $3)"
            " ORDER BY provider_code, scheme_id, scheme_version",
            period, provider_code, region_code,
        )
    schemes = [book.get(u["scheme_id"], u["scheme_version"]) for u in units]
    windows = [s.decision_window_days for s in schemes if s is not None] or [s.decision_window_days for s in book.schemes]
    opens_on = domain.settlement_opens_on(period, windows)
    if today < opens_on:
        raise NotYet(period, opens_on)
    metrics.settlement_run(trigger)
    reports = []
    for unit, scheme in zip(units, schemes):
        if may_settle is not None and not may_settle(unit["provider_code"]):
            continue
        if scheme is None:
            raise InputError("scheme", f"{unit['scheme_id']}@{unit['scheme_version']} is no longer loaded; cannot settle")
        with metrics.SETTLEMENT_SECONDS.time():
            async with pool.acquire() as conn:
                async with conn.transaction():
                    summary = await settle_unit(conn, scheme, provider_code=unit["provider_code"], period=period,
                                                run_by=run_by, correlation_id=correlation_id)
        metrics.unit_settled(summary)  # committed: only a new report counts
        if summary:
            reports.append(summary)
    return reports


# ---------------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------------
def _answer_role(submission_id: str, decision: dict[str, Any] | None) -> str:
    if decision is None:
        return "recorded (episode not in trial)"
    if submission_id == decision.get("deciding_submission_id"):
        return "deciding"
    if submission_id in decision.get("amendments", ()):
        return "amendment (kept; changes money only if the scheme allows amendments)"
    if submission_id in decision.get("ignored", ()):
        return "ignored (outside the decision window)"
    return "received after settlement (kept; does not change money)"


async def episode_view(conn: asyncpg.Connection, episode_id: str, book: SchemeBook) -> dict[str, Any] | None:
    r = await conn.fetchrow(
        "SELECT e.*, s.run_at AS settled_at FROM episodes e LEFT JOIN settlements s USING (settlement_id)"
        " WHERE e.episode_id = $1", episode_id)
    if r is None:
        return None
    answers = await conn.fetch("SELECT * FROM answers WHERE episode_id = $1 ORDER BY authored_at, submission_id", episode_id)
    transfers = await conn.fetch("SELECT * FROM ledger_transfers WHERE episode_id = $1 ORDER BY requested_at, transfer_id", episode_id)
    scheme = book.get(r["scheme_id"], r["scheme_version"]) if r["scheme_id"] is not None else None
    decision: dict[str, Any] | None
    if r["decision"] is not None:
        decision = {**json.loads(r["decision"]), "final": True}
    elif scheme is not None:
        d = domain.decide(_episode(r), [_answer(a) for a in answers], scheme)
        decision = {**asdict(d), "final": False}
    else:
        decision = None
    appeal = await appeal_view(conn, episode_id)
    appeal_info: dict[str, Any] = {"appeal": appeal}
    if appeal is None and r["status"] == "settled" and scheme is not None and r["settled_at"] is not None:
        appeal_info["appealable_until"] = domain.appeal_deadline(r["settled_at"], scheme) if r["diverted_pence"] else None
    return {
        "episode_id": r["episode_id"],
        "payment_id": r["payment_id"],
        "commissioner_code": r["commissioner_code"],
        "provider_code": r["provider_code"],
        "region_code": r["region_code"],
        "service_type": r["service_type"],
        "activity_date": r["activity_date"],
        "period": r["period"],
        "status": r["status"],
        "amount_pence": r["amount_pence"],
        "at_risk_pence": r["at_risk_pence"],
        "released_pence": r["released_pence"],
        "diverted_pence": r["diverted_pence"],
        "appealed_back_pence": appeal["diverted_pence"] if appeal and appeal["status"] == "upheld" else 0,
        "paid_now_pence": r["amount_pence"] - r["at_risk_pence"],
        "hold_model": r["hold_model"],
        "scheme": {"scheme_id": r["scheme_id"], "version": r["scheme_version"]} if r["scheme_id"] else None,
        "settlement_id": r["settlement_id"],
        "settled_at": r["settled_at"],
        "decision": decision,
        "answers": [
            {"submission_id": a["submission_id"], "instrument": a["instrument"], "fft_answer": a["fft_answer"],
             "patient_choice": a["patient_choice"], "authored_at": a["authored_at"], "received_at": a["received_at"],
             "amends_submission_id": a["amends_submission_id"], "role": _answer_role(a["submission_id"], decision)}
            for a in answers
        ],
        "ledger_transfers": [
            {"transfer_id": t["transfer_id"], "kind": t["kind"], "status": t["status"], "entry_seq": t["entry_seq"],
             "reason": t["reason"]}
            for t in transfers
        ],
        **appeal_info,
    }


# ---------------------------------------------------------------------------------------------
# Appeals
# ---------------------------------------------------------------------------------------------
class NotFound(LookupError):
    """No such episode or appeal. HTTP 404."""


class Refused(ValueError):
    """A request the rules do not allow now (window closed, nothing diverted, decided). HTTP 409."""


class SameActor(PermissionError):
    """The person who appealed tried to decide the appeal (separation of duties). HTTP 403."""


async def appeal_view(conn: asyncpg.Connection, episode_id: str) -> dict[str, Any] | None:
    a = await conn.fetchrow("SELECT * FROM appeals WHERE episode_id = $1", episode_id)
    if a is None:
        return None
    events = await conn.fetch("SELECT step, actor, reason, at FROM appeal_events WHERE appeal_id = $1 ORDER BY id", a["appeal_id"])
    return {
        "appeal_id": a["appeal_id"],
        "episode_id": a["episode_id"],
        "payment_id": a["payment_id"],
        "provider_code": a["provider_code"],
        "region_code": a["region_code"],
        "period": a["period"],
        "diverted_pence": a["diverted_pence"],
        "status": a["status"],
        "reason": a["reason"],
        "appealed_by": a["appealed_by"],
        "appealed_at": a["appealed_at"],
        "deadline": a["deadline"],
        "decided_by": a["decided_by"],
        "decided_at": a["decided_at"],
        "decision_reason": a["decision_reason"],
        "transfer_id": a["transfer_id"],
        "history": [dict(e) for e in events],
    }


async def open_appeal(
    conn: asyncpg.Connection, episode_id: str, *, appealed_by: str, reason: str, book: SchemeBook, now: datetime,
) -> tuple[dict[str, Any], bool]:
    """Record a provider's appeal against an episode's diversion. Returns (appeal, created).

    Idempotent: the same person and reason again returns the existing appeal (created False)."""
    r = await conn.fetchrow(
        "SELECT e.*, s.run_at AS settled_at FROM episodes e LEFT JOIN settlements s USING (settlement_id)"
        " WHERE e.episode_id = $1 FOR UPDATE OF e", episode_id)
    if r is None:
        raise NotFound(f"no episode {episode_id}")
    existing = await conn.fetchrow("SELECT * FROM appeals WHERE episode_id = $1", episode_id)
    if existing is not None and existing["appealed_by"] == appealed_by and existing["reason"] == reason:
        return (await appeal_view(conn, episode_id)) or {}, False
    scheme = book.get(r["scheme_id"], r["scheme_version"]) if r["scheme_id"] is not None else None
    refusal = domain.appeal_refusal(
        status=r["status"], diverted_pence=r["diverted_pence"], settled_at=r["settled_at"], now=now, scheme=scheme,
        existing=existing["status"] if existing is not None else None,
    )
    if refusal:
        raise Refused(refusal)
    check(scheme is not None and r["settled_at"] is not None, "appeal_refusal checks scheme and settlement")
    ep = _episode(r)
    appeal_id = domain.appeal_transfer_id(ep.payment_id)
    await conn.execute(
        "INSERT INTO appeals(appeal_id, episode_id, payment_id, provider_code, region_code, period, diverted_pence,"
        " reason, appealed_by, appealed_at, deadline) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
        appeal_id, episode_id, ep.payment_id, ep.provider_code, ep.region_code, ep.period, r["diverted_pence"],
        reason, appealed_by, now, domain.appeal_deadline(r["settled_at"], scheme),
    )
    await conn.execute("INSERT INTO appeal_events(appeal_id, step, actor, reason, at) VALUES ($1,'appealed',$2,$3,$4)",
                       appeal_id, appealed_by, reason, now)
    return (await appeal_view(conn, episode_id)) or {}, True


async def decide_appeal(
    conn: asyncpg.Connection, episode_id: str, *, outcome: Literal["upheld", "rejected"], decided_by: str, reason: str,
    now: datetime, correlation_id: str,
) -> tuple[dict[str, Any], bool]:
    """Uphold (the ledger moves the diverted money fund -> provider) or reject an open appeal.

    Returns (appeal, changed). Deciding again the same way changes nothing; the other way is refused."""
    a = await conn.fetchrow("SELECT * FROM appeals WHERE episode_id = $1 FOR UPDATE", episode_id)
    if a is None:
        raise NotFound(f"episode {episode_id} has no appeal")
    if decided_by == a["appealed_by"]:
        raise SameActor(f"{decided_by} opened this appeal and cannot decide it; another authorised person must")
    refusal = domain.decision_refusal(a["status"], outcome)
    if refusal:
        raise Refused(refusal)
    if a["status"] == outcome:
        return (await appeal_view(conn, episode_id)) or {}, False
    transfer_id = None
    if outcome == "upheld":
        r = await conn.fetchrow("SELECT * FROM episodes WHERE episode_id = $1", episode_id)
        transfer = domain.appeal_transfer(_episode(r), diverted_pence=a["diverted_pence"], appeal_id=a["appeal_id"])
        transfer_id = transfer.transfer_id
        await _request_transfers(conn, [(transfer, episode_id)], correlation_id, a["appeal_id"])
    await conn.execute(
        "UPDATE appeals SET status = $2, decided_by = $3, decided_at = $4, decision_reason = $5, transfer_id = $6"
        " WHERE appeal_id = $1",
        a["appeal_id"], outcome, decided_by, now, reason, transfer_id,
    )
    await conn.execute("INSERT INTO appeal_events(appeal_id, step, actor, reason, at) VALUES ($1,$2,$3,$4,$5)",
                       a["appeal_id"], outcome, decided_by, reason, now)
    return (await appeal_view(conn, episode_id)) or {}, True


async def list_appeals(conn: asyncpg.Connection, *, status: str | None, provider_code: str | None, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT episode_id FROM appeals WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR provider_code = $2)"
        " ORDER BY appealed_at, appeal_id LIMIT $3", status, provider_code, limit)
    return [v for r in rows if (v := await appeal_view(conn, r["episode_id"])) is not None]


# ---------------------------------------------------------------------------------------------
# Figures per period
# ---------------------------------------------------------------------------------------------
_FIGURES = """
SELECT count(*)                                                        AS episodes,
       coalesce(sum(e.amount_pence), 0)                                AS billed_pence,
       coalesce(sum(e.amount_pence) FILTER (WHERE e.scheme_id IS NOT NULL), 0) AS in_scope_billed_pence,
       coalesce(sum(e.amount_pence - e.at_risk_pence), 0)              AS paid_now_pence,
       coalesce(sum(e.at_risk_pence), 0)                               AS held_pence,
       coalesce(sum(e.at_risk_pence) FILTER (WHERE e.status = 'held'), 0) AS still_held_pence,
       coalesce(sum(e.released_pence), 0)                              AS released_pence,
       coalesce(sum(e.diverted_pence), 0)                              AS diverted_pence,
       coalesce(sum(a.diverted_pence) FILTER (WHERE a.status = 'upheld'), 0) AS appealed_back_pence,
       count(a.appeal_id) FILTER (WHERE a.status = 'open')             AS appeals_open,
       count(a.appeal_id) FILTER (WHERE a.status = 'upheld')           AS appeals_upheld,
       count(a.appeal_id) FILTER (WHERE a.status = 'rejected')         AS appeals_rejected,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM answers x WHERE x.episode_id = e.episode_id)) AS responses
  FROM episodes e LEFT JOIN appeals a ON a.episode_id = e.episode_id
 WHERE e.period = $1 AND {where}
"""


def _figures(row: asyncpg.Record) -> dict[str, Any]:
    out = {k: int(row[k]) for k in row.keys()}
    out["net_diverted_pence"] = out["diverted_pence"] - out["appealed_back_pence"]
    return out


async def provider_figures(conn: asyncpg.Connection, provider_code: str, period: str) -> dict[str, Any]:
    """What a provider billed, had held, got released, lost, won back on appeal, in one period.

    ``responses`` counts episodes with at least one answer received so far; the settlement
    reports carry the count that was used (answers within each decision window)."""
    row = await conn.fetchrow(_FIGURES.format(where="e.provider_code = $2"), period, provider_code)
    settlements = await conn.fetch(
        "SELECT settlement_id, scheme_id, scheme_version, run_at, run_by, responses, min_sample_applied, cap_applied,"
        " cap_pence, diverted_pence FROM settlements WHERE provider_code = $1 AND period = $2 ORDER BY settlement_id",
        provider_code, period)
    return {"provider_code": provider_code, "period": period, **_figures(row),
            "settlements": [dict(s) for s in settlements]}


async def fund_figures(conn: asyncpg.Connection, region_code: str, period: str) -> dict[str, Any]:
    """What a region's fund received from one period's episodes, net of upheld appeals, by provider."""
    row = await conn.fetchrow(_FIGURES.format(where="e.region_code = $2"), period, region_code)
    by_provider = await conn.fetch(
        "SELECT e.provider_code, coalesce(sum(e.diverted_pence), 0) AS diverted_pence,"
        " coalesce(sum(a.diverted_pence) FILTER (WHERE a.status = 'upheld'), 0) AS appealed_back_pence"
        " FROM episodes e LEFT JOIN appeals a ON a.episode_id = e.episode_id"
        " WHERE e.period = $1 AND e.region_code = $2 GROUP BY e.provider_code ORDER BY e.provider_code",
        period, region_code)
    return {"region_code": region_code, "period": period, **_figures(row),
            "providers": [{"provider_code": p["provider_code"], "diverted_pence": int(p["diverted_pence"]),
                           "appealed_back_pence": int(p["appealed_back_pence"]),
                           "net_diverted_pence": int(p["diverted_pence"]) - int(p["appealed_back_pence"])}
                          for p in by_provider]}


def current_period(today: date) -> str:
    return domain.period_of(today)


async def ledger_discrepancies(conn: asyncpg.Connection, *, overdue_s: int, limit: int) -> list[dict[str, Any]]:
    """Transfers with a discrepancy (reconcile.py) and those still unanswered after ``overdue_s``,
    oldest first."""
    rows = await conn.fetch(
        "SELECT t.transfer_id, t.episode_id, t.kind, t.expected_status, t.status, t.reason, t.discrepancy,"
        " t.requested_at, t.answered_at, e.provider_code, e.region_code, e.payment_id"
        " FROM ledger_transfers t JOIN episodes e ON e.episode_id = t.episode_id"
        " WHERE t.discrepancy IS NOT NULL"
        " OR (t.status = 'requested' AND t.requested_at < now() - make_interval(secs => $1))"
        " ORDER BY t.requested_at, t.transfer_id LIMIT $2",
        overdue_s, limit,
    )
    return [{**dict(r), "problem": r["discrepancy"] or f"no answer from the ledger after {overdue_s} s"} for r in rows]
