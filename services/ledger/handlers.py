"""The ledger's application layer: the one write path for transfers, expiries and accounts.

Every write comes here as a batch of commands, from the Kafka consumer (a consumer batch) or the
HTTP API (requests joined into a batch by ``group_commit.GroupCommit``): one unit of work takes
the chain head's lock, loads what the batch needs, lets the pure core (``domain.plan_batch``)
decide every request in order, writes the plan and its ``ledger.posted.v1`` events, commits, and
only then counts. What the ledger admits at all (namespaces, known organisations) is decided
before, by the adapters (``admission.refusal``), since a refusal there leaves no trace.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

from prometheus_client import Counter, Gauge

from services.ledger import domain, periods, remittance
from services.ledger.ports import ClosedMark, Head, LedgerStore, RemittanceRun, StoredStatement, Submitted
from shared.periods import period_dates
from shared.uow import UnitOfWork

TRANSFERS = Counter("ledger_transfers_total", "Transfer requests handled", ["outcome"])
CHAIN_HEAD = Gauge("ledger_chain_head_seq", "Sequence number of the last journal entry this process wrote")
CLOSES = Counter("ledger_periods_closed_total", "Accounting periods closed (statement signed)")
RECONCILED = Counter("ledger_remittance_lines_total", "Remittance lines reconciled, by what was found", ["status"])
EXPIRED = Counter("ledger_pending_expired_total", "Pending transfers voided by the expiry task after their timeout")


# Partitions are made this many months ahead of the batch being written, so a month turning
# over never finds its partition missing (there is no default partition to fall into).
PARTITION_MONTHS_AHEAD = 2


def partitions_needed(head: Head, stamp: datetime) -> date | None:
    """The month to create partitions through before writing at ``stamp``, or None when they exist."""
    first = month = stamp.astimezone(timezone.utc).date().replace(day=1)
    for _ in range(PARTITION_MONTHS_AHEAD):
        month = (month + timedelta(days=32)).replace(day=1)
    if (head.partitions_through is not None and head.partitions_through >= month
            and head.partitions_from is not None and head.partitions_from <= first):
        return None
    return month


async def prepare(tx: LedgerStore, head: Head, stamp: datetime) -> None:
    through = partitions_needed(head, stamp)
    if through is not None:
        await tx.ensure_partitions(stamp.astimezone(timezone.utc).date(), through)


def stamp_after(head: Head, now: datetime | None) -> datetime:
    """The time a batch is stamped with: now, but never before the chain head's (posted_at never
    goes backwards along the chain, so as-of queries agree with seq order)."""
    stamp = now or datetime.now(timezone.utc)
    return max(stamp, head.posted_at) if head.posted_at is not None else stamp


class LedgerHandlers:
    def __init__(self, uow: UnitOfWork[LedgerStore]) -> None:
        self.uow = uow

    async def post(self, batch: Sequence[Submitted], *, now: datetime | None = None) -> list[domain.Outcome]:
        """Decide and write a batch in one transaction; one outcome per request, in order."""
        if not batch:
            return []

        async def work(tx: LedgerStore) -> list[domain.Outcome]:
            head = await tx.lock_head()
            stamp = stamp_after(head, now)
            await prepare(tx, head, stamp)
            requests = [s.request for s in batch]
            loaded = await tx.load(requests, [])
            plan = domain.plan_batch(requests, balances=loaded.balances, existing=loaded.existing, pendings=loaded.pendings,
                                     originals=loaded.originals, head_seq=head.seq, head_hash=head.hash, now=stamp,
                                     closed_through=head.closed_through)
            await tx.write(plan, batch, loaded, stamp)
            return plan.outcomes

        outcomes = await self.uow.run(work)
        count(outcomes)
        return outcomes

    async def expire_due(self, *, limit: int, now: datetime | None = None) -> list[domain.Outcome]:
        """Void up to ``limit`` pending transfers whose timeout has passed, as chain entries."""

        async def work(tx: LedgerStore) -> list[domain.Outcome]:
            head = await tx.lock_head()
            stamp = stamp_after(head, now)
            due = await tx.due_expiries(stamp, limit)
            if not due:
                return []
            await prepare(tx, head, stamp)
            expiries = [domain.Expire(t) for t in due]
            loaded = await tx.load([], expiries)
            plan = domain.plan_batch(expiries, balances=loaded.balances, existing=loaded.existing, pendings=loaded.pendings,
                                     head_seq=head.seq, head_hash=head.hash, now=stamp)
            await tx.write(plan, [], loaded, stamp)
            return plan.outcomes

        expired = await self.uow.run(work)
        EXPIRED.inc(len(expired))
        if expired:
            CHAIN_HEAD.set(max(o.entry_seq or 0 for o in expired))
        return expired

    async def declare_account(self, account_id: str, metadata: dict[str, Any]) -> None:
        async def work(tx: LedgerStore) -> None:
            await tx.declare_account(account_id, metadata)

        await self.uow.run(work)

    async def close_period(self, period: str, *, closed_by: str, signer: periods.Signer,
                           now: datetime | None = None) -> tuple[StoredStatement, bool]:
        """Close ``period`` and sign its statement; (statement, True) when this call closed it,
        (the statement, False) when it was already closed. Raises periods.CloseRefused.

        Step 1 takes the chain head's lock only to move ``closed_through``; step 2 reads the
        period's totals without it (see periods.py), so closing never holds up the writer.
        """

        async def mark(tx: LedgerStore) -> ClosedMark | StoredStatement:
            head = await tx.lock_head()
            done = await tx.statement_of(period)
            if done is not None:
                return done
            last = await tx.close_mark()
            if last is not None and last.period == period:
                return last  # marked by a close that stopped before its statement: finish it
            if last is not None and await tx.statement_of(last.period) is None:
                raise periods.CloseRefused(f"period {last.period} is closing; close it again to finish its statement first")
            stamp = stamp_after(head, now)
            periods.may_close(period, closed_through=head.closed_through, today=domain.accounting_date(stamp))
            await tx.mark_closed(period, head, stamp, closed_by)
            return ClosedMark(period, head.seq, head.hash, stamp, closed_by)

        marked = await self.uow.run(mark)
        if isinstance(marked, StoredStatement):
            return marked, False

        async def state(tx: LedgerStore) -> StoredStatement:
            before = await tx.close_mark_before(period)
            previous = await tx.statement_of(before) if before else None
            first, end = period_dates(period)
            entries, movements = await tx.period_movements(first if previous else None, end, marked.head_seq)
            statement = periods.build_statement(
                period=period, closed_through_before=before, closed_at=marked.closed_at, closed_by=marked.closed_by,
                head_seq=marked.head_seq, head_hash=marked.head_hash, entries=entries, movements=movements,
                previous=None if previous is None else json.loads(previous.body),
                previous_sha256=None if previous is None else previous.sha256, key_id=signer.key_id)
            body = periods.canonical_bytes(statement)
            stored = StoredStatement(period, body, periods.sha256_hex(body), signer.sign(body), signer.key_id)
            if not await tx.record_statement(period, marked, stored.body, stored.sha256, stored.signature, stored.key_id):
                theirs = await tx.statement_of(period)
                assert theirs is not None
                return theirs
            return stored

        stored = await self.uow.run(state)
        CLOSES.inc()
        return stored, True


    async def reconcile(self, *, commissioner: str, period: str, lines: Sequence[remittance.FileLine], imported_by: str,
                        file_name: str | None, file_sha256: str, now: datetime | None = None) -> tuple[RemittanceRun, remittance.Result]:
        """Match a remittance file against the ledger and keep the run (one transaction)."""

        async def work(tx: LedgerStore) -> tuple[RemittanceRun, remittance.Result]:
            head_seq, paid = await tx.payments_paid(commissioner, period)
            result = remittance.match(lines, paid)
            run = RemittanceRun(str(uuid.uuid4()), commissioner, period, now or datetime.now(timezone.utc), imported_by,
                                file_name, file_sha256, len(lines), head_seq)
            await tx.record_remittance(run, result)
            return run, result

        run, result = await self.uow.run(work)
        for status, n in result.counts.items():
            RECONCILED.labels(status).inc(n)
        return run, result


def count(outcomes: Sequence[domain.Outcome]) -> None:
    """Counters after commit: one increment per outcome kind, the chain head this process wrote."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    for status, n in counts.items():
        TRANSFERS.labels(status).inc(n)
    head = max((o.entry_seq or 0 for o in outcomes if o.status in ("posted", "pending", "voided")), default=0)
    if head:
        CHAIN_HEAD.set(head)
