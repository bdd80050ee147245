"""The ledger's PostgreSQL adapter for writes (``ports.LedgerStore``), bound to one transaction.

The chain head row is locked FOR UPDATE first, which makes the ledger single-writer on the chain
(entries get gap-free sequence numbers and each links to the one before) while readers are never
blocked. Everything a batch writes goes in with COPY or one set-based statement per table (no
per-row round trips): entries, legs, kept rejections, new pending transfers, resolved pendings, one
balance update per touched account (a hot regional fund gets one UPDATE per batch however many
transfers land in it), the chain head, and the ledger.posted.v1 events into the outbox. Reads are
in ``queries.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import asyncpg

from services.ledger import domain, finance_queries, remittance
from services.ledger.periods import Movement
from services.ledger.ports import ClosedMark, Head, Loaded, RemittanceRun, StoredStatement, Submitted
from services.ledger.remittance import LedgerPayment
from shared import events
from shared.contracts import TransferRequested
from shared.outbox import enqueue
from shared.topics import LEDGER_POSTED

PRODUCER = "ledger"
EVENT_TYPE = "ledger.posted.v1"
ENTRY_COLUMNS = ["seq", "transfer_id", "kind", "fingerprint", "request", "pending_id", "reverses", "posted_at", "expires_at",
                 "prev_hash", "hash", "correlation_id", "causation_id", "accounting_date", "cause_kind", "payment_id",
                 "episode_id", "provider_code", "period", "grant_id"]


class LedgerTx:
    """``ports.LedgerStore`` on one PostgreSQL connection inside its transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def lock_head(self) -> Head:
        r = await self.conn.fetchrow(
            "SELECT seq, hash, posted_at, partitions_from, partitions_through, closed_through FROM chain_head WHERE id = 1"
            " FOR UPDATE")
        return Head(r["seq"], r["hash"], r["posted_at"], r["partitions_through"], r["closed_through"], r["partitions_from"])

    async def ensure_partitions(self, first: date, through: date) -> None:
        await self.conn.execute(
            "SELECT ledger_ensure_month(m::date) FROM generate_series($1::timestamp, $2::timestamp, interval '1 month') AS m",
            datetime(first.year, first.month, 1), datetime(through.year, through.month, 1))

    async def due_expiries(self, at: datetime, limit: int) -> list[str]:
        rows = await self.conn.fetch(
            "SELECT transfer_id FROM pending_transfers WHERE status = 'pending' AND expires_at <= $1"
            " ORDER BY expires_at, transfer_id LIMIT $2", at, limit)
        return [r["transfer_id"] for r in rows]

    async def load(self, requests: Sequence[TransferRequested], expiries: Sequence[domain.Expire]) -> Loaded:
        conn = self.conn
        loaded = Loaded()
        ids = list({r.transfer_id for r in requests})
        if ids:
            for r in await conn.fetch(
                "SELECT e.transfer_id, e.seq, e.fingerprint, e.hash, e.request, e.kind, NULL AS reason"
                " FROM transfer_ids t JOIN entries e ON e.seq = t.seq AND e.posted_at = t.posted_at"
                " WHERE t.transfer_id = ANY($1::text[])"
                " UNION ALL SELECT transfer_id, NULL, fingerprint, NULL, request, 'rejected', reason FROM rejections"
                " WHERE transfer_id = ANY($1::text[])",
                ids,
            ):
                status = "rejected" if r["kind"] == "rejected" else domain.STATUS_OF_KIND[r["kind"]]
                loaded.existing[r["transfer_id"]] = domain.ExistingEntry(
                    r["seq"], r["fingerprint"], r["hash"], r["request"], status, r["reason"])  # type: ignore[arg-type]
        pending_ids = {r.pending_id for r in requests if r.pending_id} | {e.pending_id for e in expiries}
        if pending_ids:
            for r in await conn.fetch(
                "SELECT transfer_id, legs::text AS legs, expires_at, status, correlation_id FROM pending_transfers"
                " WHERE transfer_id = ANY($1::text[])",
                list(pending_ids),
            ):
                loaded.pendings[r["transfer_id"]] = domain.PendingState(
                    r["transfer_id"], tuple((a, int(m)) for a, m in json.loads(r["legs"])), r["expires_at"], r["status"])
                loaded.pending_correlation_ids[r["transfer_id"]] = r["correlation_id"]
        reversed_ids = {r.reverses for r in requests if r.reverses}
        if reversed_ids:
            for r in await conn.fetch(
                "SELECT e.transfer_id, e.kind, array_agg(l.account_id) AS accounts, array_agg(l.amount_pence) AS amounts,"
                " (SELECT x.transfer_id FROM transfer_ids x WHERE x.reverses = e.transfer_id) AS reversed_by"
                " FROM transfer_ids t JOIN entries e ON e.seq = t.seq AND e.posted_at = t.posted_at"
                " JOIN legs l ON l.entry_seq = e.seq AND l.posted_at = e.posted_at"
                " WHERE t.transfer_id = ANY($1::text[]) AND e.kind IN ('posted', 'post_pending')"
                " GROUP BY e.seq, e.posted_at, e.transfer_id, e.kind",
                list(reversed_ids),
            ):
                loaded.originals[r["transfer_id"]] = domain.PostedOriginal(
                    r["transfer_id"], r["kind"], tuple((a, int(m)) for a, m in zip(r["accounts"], r["amounts"]) if m),
                    r["reversed_by"])
        account_ids = {leg.account_id for r in requests for leg in r.legs}
        for p in loaded.pendings.values():
            account_ids.update(a for a, _ in p.legs)
        if account_ids:
            for r in await conn.fetch(
                "SELECT account_id, posted_pence, pending_debits_pence, pending_credits_pence FROM accounts"
                " WHERE account_id = ANY($1::text[])",
                list(account_ids),
            ):
                loaded.balances[r["account_id"]] = domain.AccountState(
                    r["posted_pence"], r["pending_debits_pence"], r["pending_credits_pence"])
            missing = sorted(account_ids - loaded.balances.keys())
            if missing:
                await conn.execute(
                    "INSERT INTO accounts(account_id, type, floor_pence)"
                    " SELECT a, split_part(a, ':', 1), f FROM unnest($1::text[], $2::bigint[]) AS t(a, f)"
                    " ON CONFLICT (account_id) DO NOTHING",
                    missing,
                    [domain.account_floor(a) for a in missing],
                )
        return loaded

    async def write(self, plan: domain.BatchPlan, batch: Sequence[Submitted], loaded: Loaded, stamp: datetime) -> None:
        conn = self.conn
        sources = {s.request.transfer_id: s for s in batch}

        def trace(transfer_id: str, pending_id: str | None) -> tuple[str | None, str | None]:
            """(correlation id, causation id) of an entry: its request's, or an expiry's pending transfer's."""
            src = sources.get(transfer_id)
            if src is not None:
                return src.correlation_id, src.causation_id
            return (loaded.pending_correlation_ids.get(pending_id) if pending_id else None), None

        if plan.entries:
            def cause_of(transfer_id: str) -> tuple[Any, ...]:
                src = sources.get(transfer_id)
                if src is None:  # an expiry, written by the ledger itself
                    return ("expiry", None, None, None, None, None)
                c = src.request.cause
                return (c.kind, c.payment_id, c.episode_id, c.provider_code, c.period, c.grant_id)

            await conn.copy_records_to_table(
                "transfer_ids",
                records=[(e.transfer_id, e.seq, e.posted_at, e.reverses) for e in plan.entries],
                columns=["transfer_id", "seq", "posted_at", "reverses"],
            )
            await conn.copy_records_to_table(
                "entries",
                records=[(e.seq, e.transfer_id, e.kind, e.fingerprint, e.request_json, e.pending_id, e.reverses, e.posted_at,
                          e.expires_at, e.prev_hash, e.hash, *trace(e.transfer_id, e.pending_id), e.accounting_date,
                          *cause_of(e.transfer_id)) for e in plan.entries],
                columns=ENTRY_COLUMNS,
            )
            await conn.copy_records_to_table(
                "legs",
                records=[(e.seq, leg.account_id, leg.amount_pence, leg.pending_pence, leg.balance_after_pence,
                          leg.pending_debits_after_pence, leg.pending_credits_after_pence, e.posted_at)
                         for e in plan.entries for leg in e.legs],
                columns=["entry_seq", "account_id", "amount_pence", "pending_pence", "balance_after_pence",
                         "pending_debits_after_pence", "pending_credits_after_pence", "posted_at"],
            )
            changed = sorted((a, d) for a, d in plan.deltas.items() if any(d))
            if changed:
                await conn.execute(
                    "UPDATE accounts SET posted_pence = posted_pence + d.p, pending_debits_pence = pending_debits_pence + d.pd,"
                    " pending_credits_pence = pending_credits_pence + d.pc"
                    " FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS d(id, p, pd, pc)"
                    " WHERE accounts.account_id = d.id",
                    [a for a, _ in changed], [d[0] for _, d in changed], [d[1] for _, d in changed], [d[2] for _, d in changed],
                )
            await conn.execute("UPDATE chain_head SET seq = $1, hash = $2, posted_at = $3 WHERE id = 1",
                               plan.head_seq, plan.head_hash, stamp)
        if plan.new_pendings:
            seq_of = {e.transfer_id: e.seq for e in plan.entries if e.kind == "pending"}
            await conn.copy_records_to_table(
                "pending_transfers",
                records=[(p.transfer_id, seq_of[p.transfer_id], json.dumps([list(leg) for leg in p.legs]), p.expires_at,
                          "pending", None, sources[p.transfer_id].correlation_id if p.transfer_id in sources else None)
                         for p in plan.new_pendings],
                columns=["transfer_id", "entry_seq", "legs", "expires_at", "status", "resolved_seq", "correlation_id"],
            )
        if plan.resolved_pendings:
            items = sorted(plan.resolved_pendings.items())
            await conn.execute(
                "UPDATE pending_transfers SET status = d.s, resolved_seq = d.q"
                " FROM unnest($1::text[], $2::text[], $3::bigint[]) AS d(id, s, q) WHERE transfer_id = d.id",
                [k for k, _ in items], [v[0] for _, v in items], [v[1] for _, v in items],
            )
        if plan.rejections:
            await conn.copy_records_to_table(
                "rejections",
                records=[(r.transfer_id, r.fingerprint, r.request_json, r.reason, stamp, *trace(r.transfer_id, None))
                         for r in plan.rejections],
                columns=["transfer_id", "fingerprint", "request", "reason", "rejected_at", "correlation_id", "causation_id"],
            )
        await enqueue(conn, posted_rows(plan, batch))

    # -- closing a period (services/ledger/periods.py) -------------------------------------------
    async def mark_closed(self, period: str, head: Head, at: datetime, by: str) -> None:
        await self.conn.execute(
            "UPDATE chain_head SET closed_through = $1, closed_at_seq = $2, closed_at_hash = $3, closed_at = $4, closed_by = $5"
            " WHERE id = 1", period, head.seq, head.hash, at, by)

    async def close_mark(self) -> ClosedMark | None:
        r = await self.conn.fetchrow("SELECT closed_through, closed_at_seq, closed_at_hash, closed_at, closed_by FROM chain_head"
                                     " WHERE id = 1")
        if r is None or r["closed_through"] is None:
            return None
        return ClosedMark(r["closed_through"], r["closed_at_seq"], r["closed_at_hash"], r["closed_at"], r["closed_by"])

    async def close_mark_before(self, period: str) -> str | None:
        return await self.conn.fetchval("SELECT max(period) FROM period_closes WHERE period < $1", period)

    async def statement_of(self, period: str) -> StoredStatement | None:
        r = await self.conn.fetchrow("SELECT period, statement, statement_sha256, signature, key_id FROM period_closes"
                                     " WHERE period = $1", period)
        return None if r is None else StoredStatement(r["period"], bytes(r["statement"]), r["statement_sha256"],
                                                      bytes(r["signature"]), r["key_id"])

    async def period_movements(self, first_day: date | None, end_day: date, through_seq: int) -> tuple[int, list[Movement]]:
        """Entries dated in [first_day, end_day) (all before end_day when first_day is None), at or
        before ``through_seq``, and each account's debits and credits in them."""
        lo = first_day or date(2000, 1, 1)
        # An entry is never dated after the UK day it was posted, so none of the period's entries
        # was posted before its first day: the older partitions are not read.
        posted_from = datetime(lo.year, lo.month, lo.day, tzinfo=domain.UK)
        n = await self.conn.fetchval(
            "SELECT count(*) FROM entries WHERE accounting_date >= $1 AND accounting_date < $2 AND seq <= $3 AND posted_at >= $4",
            lo, end_day, through_seq, posted_from)
        rows = await self.conn.fetch(
            "SELECT l.account_id, sum(least(l.amount_pence, 0))::bigint AS debits, sum(greatest(l.amount_pence, 0))::bigint AS credits"
            " FROM entries e JOIN legs l ON l.entry_seq = e.seq AND l.posted_at = e.posted_at"
            " WHERE e.accounting_date >= $1 AND e.accounting_date < $2 AND e.seq <= $3 AND e.posted_at >= $4"
            " GROUP BY l.account_id ORDER BY l.account_id",
            lo, end_day, through_seq, posted_from)
        return int(n), [Movement(r["account_id"], int(r["debits"]), int(r["credits"])) for r in rows]

    async def record_statement(self, period: str, mark: ClosedMark, body: bytes, sha256: str, signature: bytes,
                               key_id: str) -> bool:
        """Store a period's signed statement; False when one is already there (another finisher won)."""
        status = await self.conn.execute(
            "INSERT INTO period_closes(period, closed_at, closed_by, head_seq, head_hash, statement, statement_sha256,"
            " signature, key_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (period) DO NOTHING",
            period, mark.closed_at, mark.closed_by, mark.head_seq, mark.head_hash, body, sha256, signature, key_id)
        return status.endswith(" 1")

    # -- reconciling a remittance file (services/ledger/remittance.py) ------------------------------
    async def payments_paid(self, commissioner: str, period: str) -> tuple[int, dict[str, LedgerPayment]]:
        head = await finance_queries.chain_head_seq(self.conn)
        return head, await finance_queries.payments_paid(self.conn, commissioner, period)

    async def record_remittance(self, run: RemittanceRun, result: remittance.Result) -> None:
        await self.conn.execute(
            "INSERT INTO remittance_runs(run_id, commissioner, period, imported_at, imported_by, file_name, file_sha256, file_rows,"
            " matched, missing, different, unknown, file_pence, ledger_pence, head_seq)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            run.run_id, run.commissioner, run.period, run.imported_at, run.imported_by, run.file_name, run.file_sha256,
            run.file_rows, result.counts["matched"], result.counts["missing"], result.counts["different"],
            result.counts["unknown"], result.file_pence, result.ledger_pence, run.head_seq)
        if result.lines:
            await self.conn.copy_records_to_table(
                "remittance_lines",
                records=[(run.run_id, x.payment_id, x.status, x.file_date, x.file_pence, x.ledger_pence, x.difference_pence,
                          x.provider_code) for x in result.lines],
                columns=["run_id", "payment_id", "status", "file_date", "file_pence", "ledger_pence", "difference_pence",
                         "provider_code"])

    async def declare_account(self, account_id: str, metadata: dict[str, Any]) -> None:
        await self.conn.execute(
            "INSERT INTO accounts(account_id, type, floor_pence, metadata) VALUES ($1, split_part($1, ':', 1), $2, $3::jsonb)"
            " ON CONFLICT (account_id) DO UPDATE SET metadata = EXCLUDED.metadata",
            account_id, domain.account_floor(account_id), json.dumps(metadata),
        )


def posted_rows(plan: domain.BatchPlan, batch: Sequence[Submitted]) -> list[events.Row]:
    """The ``ledger.posted.v1`` rows of a plan: each expiry (by the sweep, or found when a late post
    or void arrived), then one answer per request, in order."""
    occurred = events.occurred_now()
    n_exp = len(plan.outcomes) - len(batch)
    answers: list[tuple[str, str, int | None, str | None, str | None, str, str | None]] = []
    for o in plan.outcomes[:n_exp]:  # timeouts found by the expiry sweep
        answers.append((o.transfer_id, "voided", o.entry_seq, o.entry_hash, o.reason, f"expiry:{o.transfer_id}", None))
    for pending_id, seq, digest in plan.expiries:  # timeouts found when a post or void arrived late
        answers.append((pending_id, "voided", seq, digest, "pending expired", f"expiry:{pending_id}", None))
    for src, o in zip(batch, plan.outcomes[n_exp:]):
        answers.append((o.transfer_id, o.event_status, o.entry_seq, o.entry_hash, o.reason, src.correlation_id, src.causation_id))
    ids = events.event_ids(len(answers))
    return [events.row(LEDGER_POSTED.name, tid, EVENT_TYPE, events.transfer_posted(tid, status, seq, digest, reason),
                       producer=PRODUCER, correlation_id=cid, causation_id=cause, event_id=event_id, occurred_at=occurred)
            for (tid, status, seq, digest, reason, cid, cause), event_id in zip(answers, ids)]
