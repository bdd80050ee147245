"""Month-end reads for finance teams: finding transfers, closed periods, remittance runs, and the
ledger's side of a remittance file. Reads never take the chain head's lock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg

from services.ledger import domain
from services.ledger.remittance import LedgerPayment
from shared.periods import period_dates

# A search that would scan too much of a large journal is stopped rather than left to run:
# the caller narrows it (a time range, a payment or episode id).
SEARCH_TIMEOUT_MS = 15_000


@dataclass(frozen=True)
class TransferFilter:
    payment_id: str | None = None
    episode_id: str | None = None
    kind: str | None = None          # entry kind: posted, pending, post_pending, void_pending, expire
    cause: str | None = None         # cause kind: payment, settlement, release, ...
    period: str | None = None        # the cause's period (the activity month a payment belongs to)
    provider_codes: Sequence[str] | None = None   # the cause names one of these trusts/sites ...
    provider_accounts: Sequence[str] | None = None  # ... or a leg moves one of these accounts
    region_accounts: Sequence[str] | None = None  # a leg moves one of the region's accounts ...
    region_providers: Sequence[str] | None = None  # ... or the cause names one of its trusts
    visible_accounts: Sequence[str] | None = None  # the token's binding: a leg moves one of these (None: national)
    posted_from: datetime | None = None
    posted_to: datetime | None = None
    accounting_from: date | None = None
    accounting_to: date | None = None


_TOUCHES = ("EXISTS (SELECT 1 FROM legs l WHERE l.entry_seq = e.seq AND l.posted_at = e.posted_at"
            " AND l.account_id = ANY(${}::text[]))")

SEARCH_COLUMNS = ("e.seq, e.transfer_id, e.kind, e.posted_at, e.accounting_date, e.cause_kind, e.payment_id, e.episode_id,"
                  " e.provider_code, e.period, e.grant_id, e.pending_id, e.reverses, e.hash, e.correlation_id,"
                  " (SELECT array_agg(l.account_id ORDER BY l.account_id) FROM legs l"
                  "   WHERE l.entry_seq = e.seq AND l.posted_at = e.posted_at) AS accounts,"
                  " (SELECT array_agg(l.amount_pence ORDER BY l.account_id) FROM legs l"
                  "   WHERE l.entry_seq = e.seq AND l.posted_at = e.posted_at) AS amounts,"
                  " (SELECT array_agg(l.pending_pence ORDER BY l.account_id) FROM legs l"
                  "   WHERE l.entry_seq = e.seq AND l.posted_at = e.posted_at) AS pendings")


def search_sql(f: TransferFilter, after: tuple[datetime, int] | None, limit: int) -> tuple[str, list[Any]]:
    """One parameterised query for a filter (values are never spliced into the SQL)."""
    where: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    for column, value in (("payment_id", f.payment_id), ("episode_id", f.episode_id), ("kind", f.kind),
                          ("cause_kind", f.cause), ("period", f.period)):
        if value is not None:
            where.append(f"e.{column} = {arg(value)}")
    if f.provider_codes is not None:
        where.append(f"(e.provider_code = ANY({arg(list(f.provider_codes))}::text[]) OR "
                     + _TOUCHES.format(len(args) + 1) + ")")
        args.append(list(f.provider_accounts or ()))
    if f.region_accounts is not None:
        where.append(f"(e.provider_code = ANY({arg(list(f.region_providers or ()))}::text[]) OR "
                     + _TOUCHES.format(len(args) + 1) + ")")
        args.append(list(f.region_accounts))
    if f.visible_accounts is not None:
        where.append(_TOUCHES.format(len(args) + 1))
        args.append(list(f.visible_accounts))
    if f.posted_from is not None:
        where.append(f"e.posted_at >= {arg(f.posted_from)}")
    if f.posted_to is not None:
        where.append(f"e.posted_at < {arg(f.posted_to)}")
    if f.accounting_from is not None:
        where.append(f"e.accounting_date >= {arg(f.accounting_from)}")
        # an entry is never dated after the UK day it was posted: skip the older partitions
        lo = f.accounting_from
        where.append(f"e.posted_at >= {arg(datetime(lo.year, lo.month, lo.day, tzinfo=domain.UK))}")
    if f.accounting_to is not None:
        where.append(f"e.accounting_date < {arg(f.accounting_to)}")
    if after is not None:
        where.append(f"(e.posted_at, e.seq) > ({arg(after[0])}, {arg(after[1])})")
    sql = (f"SELECT {SEARCH_COLUMNS} FROM entries e"
           + (" WHERE " + " AND ".join(where) if where else "")
           + f" ORDER BY e.posted_at, e.seq LIMIT {arg(limit)}")
    return sql, args


async def search_transfers(conn: asyncpg.Connection, f: TransferFilter, *, after: tuple[datetime, int] | None,
                           limit: int) -> list[dict[str, Any]]:
    sql, args = search_sql(f, after, limit)
    async with conn.transaction(readonly=True):
        await conn.execute(f"SET LOCAL statement_timeout = {SEARCH_TIMEOUT_MS}")
        rows = await conn.fetch(sql, *args)
    return [_transfer_row(r) for r in rows]


def _transfer_row(r: asyncpg.Record) -> dict[str, Any]:
    legs = [{"account_id": a, "amount_pence": int(m), "pending_pence": int(p)}
            for a, m, p in zip(r["accounts"] or [], r["amounts"] or [], r["pendings"] or [])]
    return {
        "entry_seq": r["seq"], "transfer_id": r["transfer_id"], "kind": r["kind"],
        "status": domain.STATUS_OF_KIND[r["kind"]], "posted_at": r["posted_at"], "accounting_date": r["accounting_date"],
        "cause_kind": r["cause_kind"], "payment_id": r["payment_id"], "episode_id": r["episode_id"],
        "provider_code": r["provider_code"], "period": r["period"], "grant_id": r["grant_id"],
        "pending_id": r["pending_id"], "reverses": r["reverses"], "hash": r["hash"], "correlation_id": r["correlation_id"],
        "legs": legs,
    }


# ---------------------------------------------------------------------------------------------
# Periods
# ---------------------------------------------------------------------------------------------
async def close_state(conn: asyncpg.Connection) -> dict[str, Any]:
    r = await conn.fetchrow("SELECT closed_through, closed_at_seq, closed_at FROM chain_head WHERE id = 1")
    return {"closed_through": r["closed_through"], "closed_at_seq": r["closed_at_seq"], "closed_at": r["closed_at"]}


async def list_closes(conn: asyncpg.Connection, *, after: str | None, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT period, closed_at, closed_by, head_seq, head_hash, statement_sha256, key_id FROM period_closes"
        " WHERE ($1::text IS NULL OR period < $1) ORDER BY period DESC LIMIT $2", after, limit)
    return [dict(r) for r in rows]


async def period_close(conn: asyncpg.Connection, period: str) -> dict[str, Any] | None:
    r = await conn.fetchrow(
        "SELECT period, closed_at, closed_by, head_seq, head_hash, statement, statement_sha256, signature, key_id"
        " FROM period_closes WHERE period = $1", period)
    if r is None:
        return None
    out = dict(r)
    out["statement"] = bytes(r["statement"])
    out["signature"] = bytes(r["signature"])
    return out


# ---------------------------------------------------------------------------------------------
# Remittances
# ---------------------------------------------------------------------------------------------
async def payments_paid(conn: asyncpg.Connection, commissioner: str, period: str) -> dict[str, LedgerPayment]:
    """What the ledger shows ``commissioner:<ICB>`` paid out for each payment of ``period``:
    minus the sum of its posted legs on the commissioner's account, per payment id."""
    first, _ = period_dates(period)
    rows = await conn.fetch(
        "SELECT e.payment_id, (-sum(l.amount_pence))::bigint AS paid, min(e.provider_code) AS provider"
        " FROM legs l JOIN entries e ON e.seq = l.entry_seq AND e.posted_at = l.posted_at"
        " WHERE l.account_id = $1 AND l.posted_at >= $2 AND e.period = $3 AND e.payment_id IS NOT NULL"
        " GROUP BY e.payment_id",
        f"commissioner:{commissioner}", datetime(first.year, first.month, 1, tzinfo=domain.UK), period)
    return {r["payment_id"]: LedgerPayment(r["payment_id"], int(r["paid"]), r["provider"]) for r in rows}


async def chain_head_seq(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT seq FROM chain_head WHERE id = 1"))


_RUN_COLS = ("run_id, commissioner, period, imported_at, imported_by, file_name, file_sha256, file_rows, matched, missing,"
             " different, unknown, file_pence, ledger_pence, head_seq")


async def remittance_run(conn: asyncpg.Connection, run_id: str) -> dict[str, Any] | None:
    r = await conn.fetchrow(f"SELECT {_RUN_COLS} FROM remittance_runs WHERE run_id = $1", run_id)
    return None if r is None else dict(r)


async def remittance_runs(conn: asyncpg.Connection, *, commissioners: Sequence[str] | None, period: str | None,
                          after: tuple[datetime, str] | None, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {_RUN_COLS} FROM remittance_runs"
        " WHERE ($1::text[] IS NULL OR commissioner = ANY($1::text[])) AND ($2::text IS NULL OR period = $2)"
        " AND ($3::timestamptz IS NULL OR (imported_at, run_id) < ($3, $4))"
        " ORDER BY imported_at DESC, run_id DESC LIMIT $5",
        None if commissioners is None else list(commissioners), period, after[0] if after else None,
        after[1] if after else None, limit)
    return [dict(r) for r in rows]


async def remittance_lines(conn: asyncpg.Connection, run_id: str, *, statuses: Sequence[str] | None,
                           after: str | None, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT payment_id, status, file_date, file_pence, ledger_pence, difference_pence, provider_code"
        " FROM remittance_lines WHERE run_id = $1 AND ($2::text[] IS NULL OR status = ANY($2::text[]))"
        " AND ($3::text IS NULL OR payment_id > $3) ORDER BY payment_id LIMIT $4",
        run_id, None if statuses is None else list(statuses), after, limit)
    return [dict(r) for r in rows]
