"""The funds service's reads: grants and their history, measure tallies, fund totals.

Every list is bounded (``limit``, keyset cursor on grant id); every query names the binding's
regions and trusts, so a token sees only what it reaches (``None``: national).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import asyncpg

from services.funds import domain
from services.funds.measure import Tally, next_period, period_start, whole_periods
from services.funds.store import load_grants
from shared.contracts import FFT_MEASURES, GrantMeasure


@dataclass(frozen=True)
class Scope:
    """What a binding reaches: regions and trusts (None: national, everything)."""

    regions: Sequence[str] | None
    providers: Sequence[str] = ()


_VISIBLE = "($1::text[] IS NULL OR region_code = ANY($1::text[]) OR providers && $2::text[])"


async def grant_ids(conn: asyncpg.Connection, scope: Scope, *, region_code: str | None, status: str | Sequence[str] | None,
                    after: str | None, limit: int) -> list[str]:
    statuses = None if status is None else [status] if isinstance(status, str) else list(status)
    rows = await conn.fetch(
        f"SELECT grant_id FROM grants WHERE {_VISIBLE} AND ($3::text IS NULL OR region_code = $3)"
        " AND ($4::text[] IS NULL OR status = ANY($4::text[])) AND ($5::text IS NULL OR grant_id > $5) ORDER BY grant_id LIMIT $6",
        None if scope.regions is None else list(scope.regions), list(scope.providers), region_code, statuses, after, limit)
    return [r["grant_id"] for r in rows]


async def grants(conn: asyncpg.Connection, ids: Sequence[str]) -> list[domain.Grant]:
    found = await load_grants(conn, ids)
    return [found[i] for i in ids if i in found]


async def steps(conn: asyncpg.Connection, grant_id: str, limit: int = 1000) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT at, step, actor, milestone, reason FROM grant_steps WHERE grant_id = $1 ORDER BY id LIMIT $2",
                            grant_id, limit)
    return [dict(r) for r in rows]


async def discrepancies(conn: asyncpg.Connection, grant_id: str, limit: int = 100) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT transfer_id, detail, found_at FROM ledger_discrepancies WHERE grant_id = $1 ORDER BY id"
                            " LIMIT $2", grant_id, limit)
    return [dict(r) for r in rows]


async def paid_on(conn: asyncpg.Connection, grant_id: str) -> dict[int, Any]:
    """When each paid milestone's payment was confirmed by the ledger."""
    rows = await conn.fetch("SELECT milestone, min(at) AS at FROM grant_steps WHERE grant_id = $1 AND step = 'milestone_paid'"
                            " GROUP BY milestone", grant_id)
    return {r["milestone"]: r["at"] for r in rows}


async def tallies(conn: asyncpg.Connection, measure: GrantMeasure, providers: Sequence[str], start_date: date,
                  today: date) -> list[Tally]:
    """The measure's per-period tallies over ``providers``, from the baseline to today."""
    first = period_start(measure.interval, measure.baseline_from)
    last = max(today, next_period(measure.interval, start_date))
    if measure.kind in FFT_MEASURES:
        column = "positive" if measure.kind == "fft_positive" else "negative"
        rows = await conn.fetch(
            f"SELECT period_start, sum(responses)::bigint AS n, sum({column})::bigint AS total FROM fft_tallies"
            " WHERE grain = $1 AND provider_code = ANY($2::text[]) AND period_start BETWEEN $3 AND $4"
            " AND ($5::text IS NULL OR setting = $5) GROUP BY period_start ORDER BY period_start",
            measure.interval, list(providers), first, last, measure.setting)
    else:
        n, total = ("gains", "gain_sum") if measure.kind == "prom_health_gain" else ("scores", "score_sum")
        rows = await conn.fetch(
            f"SELECT period_start, sum({n})::bigint AS n, sum({total})::bigint AS total FROM prom_tallies"
            " WHERE grain = $1 AND provider_code = ANY($2::text[]) AND period_start BETWEEN $3 AND $4"
            " AND instrument = $5 AND procedure = $6 GROUP BY period_start ORDER BY period_start",
            measure.interval, list(providers), first, last, measure.instrument, measure.procedure)
    out = [Tally(r["period_start"], int(r["n"]), int(r["total"])) for r in rows]
    # bounded by construction: one row per period between the baseline and today
    if len(out) > len(whole_periods(measure.interval, first, last)) + 2:
        raise ValueError("more tally rows than periods")
    return out


async def fund_money(conn: asyncpg.Connection, region_code: str) -> tuple[int, dict[str, int], dict[str, int]]:
    """(the amount of every approved grant of the region, its money by bucket, grants by status)."""
    by_bucket: dict[str, int] = {}
    total = 0
    for r in await conn.fetch(
            "SELECT m.status, m.reserve_status IS NOT NULL AS answered,"
            " coalesce(g.decided_at + make_interval(secs => m.timeout_s) <= now(), false) AS lapse_passed,"
            " sum(m.amount_pence)::bigint AS pence"
            " FROM milestones m JOIN grants g USING (grant_id) WHERE g.region_code = $1 AND g.decision = 'approved'"
            " GROUP BY 1, 2, 3", region_code):
        b = domain.bucket(r["status"], r["answered"], r["lapse_passed"])
        by_bucket[b] = by_bucket.get(b, 0) + int(r["pence"])
        total += int(r["pence"])
    statuses = {r["status"]: int(r["n"]) for r in await conn.fetch(
        "SELECT status, count(*) AS n FROM grants WHERE region_code = $1 GROUP BY status", region_code)}
    return total, by_bucket, statuses
