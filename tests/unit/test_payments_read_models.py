"""payments read models: the month walk behind the publication's ranges."""

from __future__ import annotations

from services.payments.read_models import MAX_RANGE_MONTHS, month_range


def test_a_range_lists_every_month_from_first_to_last() -> None:
    assert month_range("2026-11", "2027-02") == ["2026-11", "2026-12", "2027-01", "2027-02"]
    assert month_range("2026-05", "2026-05") == ["2026-05"]


def test_the_walk_stops_one_past_the_limit_and_at_the_last_month_there_is() -> None:
    # The API refuses ranges longer than MAX_RANGE_MONTHS, so the walk never needs more than one
    # past it; and after 9999-12 comes "10000-01", which sorts before it (a walk that compared
    # strings alone never ended). HTTP only lets years 2000-2099 through; the function holds anyway.
    assert len(month_range("0001-01", "9999-12")) == MAX_RANGE_MONTHS + 1
    assert month_range("9999-11", "9999-12") == ["9999-11", "9999-12"]
