"""The ledger's read models: an account's balance history, day by day or month by month.

Each point is one index probe on ``legs_account_time`` (the last leg before the point's end,
read backwards), so a history costs as many probes as it has points (at most
``MAX_HISTORY_POINTS``), whatever the size of the journal. The balance is the posted balance
(``balance_after_pence`` of that leg), as statements show it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Literal

import asyncpg

from shared.periods import first_of_next_month, period_of

Interval = Literal["day", "month"]
MAX_HISTORY_POINTS = 366


@dataclass(frozen=True)
class Bucket:
    label: str  # YYYY-MM-DD (day) or YYYY-MM (month)
    end: datetime  # exclusive: the balance is the one just before this instant


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)


def buckets(first: date, last: date, interval: Interval) -> list[Bucket]:
    """The points of a history from ``first`` to ``last`` inclusive (UTC days): each day, or each
    month touched, a month's point being at its end or at the end of ``last``, whichever is first."""
    if last < first:
        raise ValueError("last is before first")
    out: list[Bucket] = []
    if interval == "day":
        d = first
        while d <= last:
            out.append(Bucket(d.isoformat(), _midnight(d + timedelta(days=1))))
            d += timedelta(days=1)
        return out
    d = date(first.year, first.month, 1)
    stop = last + timedelta(days=1)
    while d <= last:
        end = min(first_of_next_month(d), stop)
        out.append(Bucket(period_of(d), _midnight(end)))
        d = first_of_next_month(d)
    return out


_BALANCE_BEFORE = """
SELECT b.i, (SELECT l.balance_after_pence FROM legs l
              WHERE l.account_id = $1 AND l.posted_at < b.at
              ORDER BY l.posted_at DESC, l.entry_seq DESC LIMIT 1) AS balance
  FROM unnest($2::timestamptz[]) WITH ORDINALITY AS b(at, i)
 ORDER BY b.i
"""


async def balances_before(conn: asyncpg.Connection, account_id: str, instants: Sequence[datetime]) -> list[int]:
    """The account's posted balance just before each instant (0 before its first leg)."""
    rows = await conn.fetch(_BALANCE_BEFORE, account_id, list(instants))
    return [int(r["balance"] or 0) for r in rows]
