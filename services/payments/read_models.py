"""Payments' read models: the SQL behind read_api.py, and the checks its figures must pass.

Every query is bounded: by period lists of at most ``MAX_RANGE_MONTHS`` months, by one provider,
region, commissioner or settlement, and by page size. Episodes are found through the
(period, provider_code) and (period, region_code) indexes; a settlement's episodes through its
provider and period (a settlement id names both), never by scanning the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

import asyncpg

from shared.money import check
from shared.periods import next_period, period_of

MAX_RANGE_MONTHS = 36
EPISODE_PAGE_MAX = 1000
CSV_PAGE_ROWS = 5000  # rows per query while a CSV streams: memory stays one page
SETTLEMENT_PAGE_MAX = 100


def month_range(first: str, last: str) -> list[str]:
    """Every YYYY-MM from ``first`` to ``last`` inclusive (both valid YYYY-MM), or the first
    MAX_RANGE_MONTHS + 1 of them when there are more (the caller refuses those): the walk never
    costs more than the longest allowed range, and it stops at ``last`` itself, so 9999-12 (after
    which comes "10000-01", which sorts before it) ends it too."""
    out, period = [first], first
    while period < last and len(out) <= MAX_RANGE_MONTHS:
        period = next_period(period)
        out.append(period)
    return out


def months_back(today: date, count: int) -> tuple[str, str]:
    """The ``count`` months ending with this one, as (first, last)."""
    year, month = today.year, today.month
    for _ in range(count - 1):
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return period_of(date(year, month, 1)), period_of(today)


# ---------------------------------------------------------------------------------------------
# Eligible episodes (response rates)
# ---------------------------------------------------------------------------------------------
async def eligible_episodes(conn: asyncpg.Connection, periods: Sequence[str]) -> list[dict[str, Any]]:
    """Episodes of care per provider, region and service type with activity in these periods:
    everyone who could have answered, whether or not they did."""
    rows = await conn.fetch(
        "SELECT provider_code, region_code, service_type, count(*) AS episodes FROM episodes"
        " WHERE period = ANY($1::text[]) GROUP BY 1, 2, 3 ORDER BY 1, 3", list(periods))
    return [{"provider_code": r["provider_code"], "region_code": r["region_code"], "service_type": r["service_type"],
             "episodes": int(r["episodes"])} for r in rows]


# ---------------------------------------------------------------------------------------------
# A provider's money by month
# ---------------------------------------------------------------------------------------------
_MONEY_BY_MONTH = """
SELECT e.period,
       count(*)                                                              AS episodes,
       coalesce(sum(e.amount_pence), 0)                                      AS billed_pence,
       coalesce(sum(e.at_risk_pence), 0)                                     AS at_risk_pence,
       coalesce(sum(e.released_pence), 0)                                    AS released_pence,
       coalesce(sum(e.diverted_pence), 0)                                    AS diverted_pence,
       coalesce(sum(e.at_risk_pence) FILTER (WHERE e.status = 'held'), 0)    AS still_held_pence,
       coalesce(sum(a.diverted_pence) FILTER (WHERE 'upheld' IN (a.status, a.review_status)), 0) AS appealed_back_pence,
       count(a.appeal_id)                                                    AS appeals_lodged,
       count(a.appeal_id) FILTER (WHERE 'upheld' IN (a.status, a.review_status))                 AS appeals_upheld,
       count(a.appeal_id) FILTER (WHERE a.status = 'rejected' AND a.review_status IS DISTINCT FROM 'upheld') AS appeals_rejected
  FROM episodes e LEFT JOIN appeals a ON a.episode_id = e.episode_id
 WHERE e.provider_code = $1 AND e.period = ANY($2::text[])
 GROUP BY e.period
"""
_MONEY_FIELDS = ("episodes", "billed_pence", "at_risk_pence", "released_pence", "diverted_pence", "still_held_pence",
                 "appealed_back_pence", "appeals_lodged", "appeals_upheld", "appeals_rejected")


async def provider_money(conn: asyncpg.Connection, provider_code: str, periods: Sequence[str]) -> list[dict[str, Any]]:
    """Per month (every month asked for, zeros where nothing happened): what was put at risk,
    released, diverted, is still held, and the appeals against the month's diversions."""
    found = {r["period"]: r for r in await conn.fetch(_MONEY_BY_MONTH, provider_code, list(periods))}
    out = []
    for period in periods:
        r = found.get(period)
        month = {"period": period, **{k: int(r[k]) if r else 0 for k in _MONEY_FIELDS}}
        # Every penny at risk is released, diverted or still held; a settled episode's split is
        # checked by the database, this checks the month adds up as published.
        check(month["released_pence"] + month["diverted_pence"] + month["still_held_pence"] == month["at_risk_pence"],
              f"{provider_code} {period}: released + diverted + still held differs from what was put at risk")
        check(month["appealed_back_pence"] <= month["diverted_pence"], f"{provider_code} {period}: more appealed back than diverted")
        out.append(month)
    return out


# ---------------------------------------------------------------------------------------------
# A region's fund: inflows by provider
# ---------------------------------------------------------------------------------------------
async def fund_inflows(conn: asyncpg.Connection, region_code: str, periods: Sequence[str]) -> list[dict[str, Any]]:
    """Per provider of the region: diverted into the fund from these periods' episodes, what
    upheld appeals sent back, and the net."""
    rows = await conn.fetch(
        "SELECT e.provider_code, coalesce(sum(e.diverted_pence), 0) AS diverted_pence,"
        " coalesce(sum(a.diverted_pence) FILTER (WHERE 'upheld' IN (a.status, a.review_status)), 0) AS appealed_back_pence"
        " FROM episodes e LEFT JOIN appeals a ON a.episode_id = e.episode_id"
        " WHERE e.region_code = $1 AND e.period = ANY($2::text[]) GROUP BY 1 ORDER BY 1", region_code, list(periods))
    out = []
    for r in rows:
        diverted, back = int(r["diverted_pence"]), int(r["appealed_back_pence"])
        check(back <= diverted, f"{r['provider_code']}: more appealed back than diverted")
        out.append({"provider_code": r["provider_code"], "diverted_pence": diverted, "appealed_back_pence": back,
                    "net_diverted_pence": diverted - back})
    return out


async def equity_tallies(conn: asyncpg.Connection, periods: Sequence[str], region_code: str | None) -> list[Any]:
    """The settled episodes of these periods (one region's, or England's) tallied per stratum of
    each equity dimension; one pass over the periods' episodes (the (period, region_code) index)."""
    from services.payments.equity import StratumTally

    rows = await conn.fetch(
        "SELECT v.dimension, coalesce(v.stratum, 'unknown') AS stratum, count(*) AS episodes,"
        " count(*) FILTER (WHERE e.decision->>'deciding_submission_id' IS NOT NULL) AS responses,"
        " count(*) FILTER (WHERE e.diverted_pence > 0) AS diverted_episodes,"
        " coalesce(sum(e.at_risk_pence), 0) AS held_pence, coalesce(sum(e.diverted_pence), 0) AS diverted_pence"
        " FROM episodes e CROSS JOIN LATERAL (VALUES ('imd_decile', e.imd_decile::text), ('age_band', e.age_band),"
        "   ('setting', e.service_type)) AS v(dimension, stratum)"
        " WHERE e.status = 'settled' AND e.period = ANY($1::text[]) AND ($2::text IS NULL OR e.region_code = $2)"
        " GROUP BY 1, 2", list(periods), region_code)
    return [StratumTally(r["dimension"], r["stratum"], int(r["episodes"]), int(r["responses"]), int(r["diverted_episodes"]),
                         int(r["held_pence"]), int(r["diverted_pence"])) for r in rows]


# ---------------------------------------------------------------------------------------------
# Settlements and the episodes behind them
# ---------------------------------------------------------------------------------------------
_SETTLEMENT_COLUMNS = ("settlement_id, provider_code, region_code, period, scheme_id, scheme_version, run_at, run_by,"
                       " billed_pence, held_pence, released_pence, diverted_pence, responses, episodes, min_sample_applied,"
                       " cap_applied, cap_pence")


async def provider_settlements(conn: asyncpg.Connection, provider_code: str, *, first: str | None, last: str | None,
                               after: tuple[str, str] | None, limit: int) -> list[dict[str, Any]]:
    """A provider's settlement reports, newest period first (then by id, descending)."""
    rows = await conn.fetch(
        f"SELECT {_SETTLEMENT_COLUMNS} FROM settlements WHERE provider_code = $1"
        " AND ($2::text IS NULL OR period >= $2) AND ($3::text IS NULL OR period <= $3)"
        " AND ($4::text IS NULL OR (period, settlement_id) < ($4, $5))"
        " ORDER BY period DESC, settlement_id DESC LIMIT $6",
        provider_code, first, last, after[0] if after else None, after[1] if after else "", limit)
    return [dict(r) for r in rows]


async def settlement(conn: asyncpg.Connection, settlement_id: str) -> dict[str, Any] | None:
    r = await conn.fetchrow(f"SELECT {_SETTLEMENT_COLUMNS} FROM settlements WHERE settlement_id = $1", settlement_id)
    return None if r is None else dict(r)


_EPISODES = """
SELECT e.episode_id, e.payment_id, e.commissioner_code, e.service_type, e.activity_date, e.amount_pence, e.at_risk_pence,
       e.released_pence, e.diverted_pence, (e.decision->>'release_bps')::int AS release_bps, e.decision->>'basis' AS basis,
       e.decision->>'deciding_submission_id' AS deciding_submission_id, x.instrument, x.fft_answer, x.patient_choice,
       a.status AS appeal_status, CASE WHEN 'upheld' IN (a.status, a.review_status) THEN a.diverted_pence ELSE 0 END AS appealed_back_pence
  FROM episodes e
  LEFT JOIN answers x ON x.submission_id = e.decision->>'deciding_submission_id'
  LEFT JOIN appeals a ON a.episode_id = e.episode_id
 WHERE e.period = $1 AND e.provider_code = $2 AND e.settlement_id = $3 AND e.episode_id > $4
 ORDER BY e.episode_id
 LIMIT $5
"""


async def settlement_episodes(conn: asyncpg.Connection, settled: dict[str, Any], *, after: str, limit: int) -> list[dict[str, Any]]:
    """One page of a settlement's episodes in episode id order, each with its split, the answer
    that decided it and any appeal."""
    rows = await conn.fetch(_EPISODES, settled["period"], settled["provider_code"], settled["settlement_id"], after, limit)
    out = []
    for r in rows:
        line = dict(r)
        check(line["released_pence"] + line["diverted_pence"] == line["at_risk_pence"],
              f"episode {line['episode_id']}: released + diverted differs from what was held")
        out.append(line)
    return out


# ---------------------------------------------------------------------------------------------
# A commissioner's month by provider
# ---------------------------------------------------------------------------------------------
async def commissioner_providers(conn: asyncpg.Connection, commissioner_code: str, period: str) -> list[dict[str, Any]]:
    """Per provider the commissioner paid in the period: billed, paid at once, still held,
    released, diverted and appealed back. billed = paid at once + still held + released + diverted."""
    rows = await conn.fetch(
        "SELECT e.provider_code, count(*) AS episodes, coalesce(sum(e.amount_pence), 0) AS billed_pence,"
        " coalesce(sum(e.amount_pence - e.at_risk_pence), 0) AS paid_now_pence,"
        " coalesce(sum(e.at_risk_pence) FILTER (WHERE e.status = 'held'), 0) AS still_held_pence,"
        " coalesce(sum(e.released_pence), 0) AS released_pence, coalesce(sum(e.diverted_pence), 0) AS diverted_pence,"
        " coalesce(sum(a.diverted_pence) FILTER (WHERE 'upheld' IN (a.status, a.review_status)), 0) AS appealed_back_pence"
        " FROM episodes e LEFT JOIN appeals a ON a.episode_id = e.episode_id"
        " WHERE e.period = $1 AND e.commissioner_code = $2 GROUP BY 1 ORDER BY 1", period, commissioner_code)
    out = []
    for r in rows:
        row = {k: (int(v) if k != "provider_code" else v) for k, v in dict(r).items()}
        check(row["paid_now_pence"] + row["still_held_pence"] + row["released_pence"] + row["diverted_pence"] == row["billed_pence"],
              f"{commissioner_code} {period} {row['provider_code']}: paid + held + released + diverted differs from billed")
        out.append(row)
    return out

