"""Accounting periods: calendar months written ``YYYY-MM``.

Settlement, the ledger's period close, the PROM judgement and the feedback reports all count by
the month, so they share one spelling of it. A period's instants are bounded in UTC; the ledger
decides which period a posting falls in by its UK value date before it asks for the bounds.
A year ``datetime`` cannot hold (10000) raises ``ValueError``, which the APIs turn into a 4xx.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone


def period_of(day: date) -> str:
    """The period of a day, e.g. ``2026-11``."""
    return f"{day.year:04d}-{day.month:02d}"


def next_period(period: str) -> str:
    year, month = int(period[:4]), int(period[5:7])
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


def first_of_next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def period_dates(period: str) -> tuple[date, date]:
    """[first day, first day of the next period)."""
    first = date(int(period[:4]), int(period[5:7]), 1)
    return first, first_of_next_month(first)


def period_utc_bounds(period: str) -> tuple[datetime, datetime]:
    """[start, end) of the period as UTC instants."""
    first, end = period_dates(period)
    return (datetime(first.year, first.month, 1, tzinfo=timezone.utc),
            datetime(end.year, end.month, 1, tzinfo=timezone.utc))


def last_day_of(period: str) -> date:
    return period_dates(period)[1] - timedelta(days=1)
