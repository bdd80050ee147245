"""shared.periods: the one spelling of a month that settlement, the ledger's close, the PROM
judgement and the feedback reports share."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.periods import first_of_next_month, last_day_of, next_period, period_dates, period_of, period_utc_bounds


def test_december_rolls_into_the_next_year() -> None:
    assert next_period("2026-12") == "2027-01"
    assert period_dates("2026-12") == (date(2026, 12, 1), date(2027, 1, 1))
    assert period_utc_bounds("2026-12") == (datetime(2026, 12, 1, tzinfo=timezone.utc), datetime(2027, 1, 1, tzinfo=timezone.utc))
    assert last_day_of("2028-02") == date(2028, 2, 29)
    assert period_of(date(987, 1, 1)) == "0987-01"


def test_a_period_past_the_last_year_a_datetime_holds_is_a_value_error() -> None:
    # The APIs answer 422 on this ValueError; it must not be anything else.
    with pytest.raises(ValueError):
        period_utc_bounds("9999-12")


@given(st.dates(max_value=date(9999, 11, 30)))
def test_every_day_lies_in_its_own_period_and_periods_tile_the_calendar(day: date) -> None:
    period = period_of(day)
    first, end = period_dates(period)
    assert first <= day < end and first.day == 1 and end.day == 1 and first_of_next_month(day) == end
    assert period_of(end) == next_period(period)
    assert last_day_of(period) == end - timedelta(days=1) and period_of(last_day_of(period)) == period
    start_utc, end_utc = period_utc_bounds(period)
    assert (start_utc.date(), end_utc.date()) == (first, end) and start_utc.tzinfo is timezone.utc
