"""Unit and property tests for shared/money.py (integer pence, basis points, largest remainder)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.money import BPS_WHOLE, InvariantError, bps_of, check, format_pence, split_largest_remainder

PROPS = settings(max_examples=200, deadline=None)

amounts = st.integers(min_value=0, max_value=10**12)
rates = st.integers(min_value=0, max_value=BPS_WHOLE)
weight_lists = st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=30)


# ---------------------------------------------------------------------------------------------
# check / InvariantError
# ---------------------------------------------------------------------------------------------
def test_check_passes_silently_when_condition_holds() -> None:
    assert check(True, "never raised") is None


def test_check_raises_invariant_error_with_message() -> None:
    with pytest.raises(InvariantError, match="books do not balance"):
        check(False, "books do not balance")


def test_invariant_error_is_not_a_value_error() -> None:
    # pydantic converts ValueError into a validation error; an invariant must never be swallowed.
    assert issubclass(InvariantError, RuntimeError)
    assert not issubclass(InvariantError, ValueError)


# ---------------------------------------------------------------------------------------------
# bps_of
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("amount", "rate", "expected"),
    [
        (100_000, 1_000, 10_000),  # 10% of £1,000
        (999, 1_000, 99),  # 99.9 rounds down
        (1, 9_999, 0),  # 0.9999 rounds down
        (12_345, 0, 0),
        (12_345, BPS_WHOLE, 12_345),
        (0, 5_000, 0),
        (3, 5_000, 1),  # 1.5 -> 1
        (10_000_000_000, 300, 300_000_000),
    ],
)
def test_bps_of_examples(amount: int, rate: int, expected: int) -> None:
    assert bps_of(amount, rate) == expected


@pytest.mark.parametrize(
    ("amount", "rate"),
    [(-1, 100), (100, -1), (100, BPS_WHOLE + 1), (100.0, 100), (100, 10.5), ("100", 100)],
)
def test_bps_of_rejects_bad_inputs(amount: object, rate: object) -> None:
    with pytest.raises(InvariantError):
        bps_of(amount, rate)  # type: ignore[arg-type]


@PROPS
@given(amounts, rates)
def test_bps_of_rounds_down_to_the_penny(amount: int, rate: int) -> None:
    result = bps_of(amount, rate)
    exact = Fraction(amount * rate, BPS_WHOLE)
    assert isinstance(result, int)
    assert 0 <= result <= amount
    assert result <= exact < result + 1


@PROPS
@given(amounts, rates, rates)
def test_bps_of_is_monotone_in_rate(amount: int, r1: int, r2: int) -> None:
    lo, hi = sorted((r1, r2))
    assert bps_of(amount, lo) <= bps_of(amount, hi)


@PROPS
@given(amounts, amounts, rates)
def test_bps_of_is_monotone_and_never_overshoots_on_sums(a: int, b: int, rate: int) -> None:
    # Rounding each part down never gives more than rounding the whole down.
    assert bps_of(a, rate) + bps_of(b, rate) <= bps_of(a + b, rate) <= bps_of(a, rate) + bps_of(b, rate) + 1


# ---------------------------------------------------------------------------------------------
# split_largest_remainder
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        (100, [1, 1, 1], [34, 33, 33]),  # tie on remainder goes to the earliest weight
        (10, [1, 2], [3, 7]),  # 3.33 / 6.67: the larger remainder gets the penny
        (9_000, [10_000, 5_000, 0], [6_000, 3_000, 0]),
        (10, [111, 111, 112], [3, 3, 4]),
        (5, [0, 3, 0], [0, 5, 0]),
        (0, [5, 7], [0, 0]),
        (0, [0, 0], [0, 0]),
        (0, [], []),
        (7, [1], [7]),
        (2, [1, 1, 1], [1, 1, 0]),
    ],
)
def test_split_examples(total: int, weights: list[int], expected: list[int]) -> None:
    assert split_largest_remainder(total, weights) == expected


@pytest.mark.parametrize(
    ("total", "weights", "message"),
    [
        (-1, [1, 1], "total must be non-negative"),
        (10, [1, -1], "weights must be non-negative"),
        (5, [], "no weights"),
        (5, [0, 0], "zero weights"),
    ],
)
def test_split_rejects_impossible_splits(total: int, weights: list[int], message: str) -> None:
    with pytest.raises(InvariantError, match=message):
        split_largest_remainder(total, weights)


def test_split_accepts_a_tuple_and_does_not_mutate_weights() -> None:
    weights = [3, 1, 2]
    assert split_largest_remainder(12, tuple(weights)) == [6, 2, 4]
    assert weights == [3, 1, 2]


@PROPS
@given(amounts, weight_lists.filter(lambda w: sum(w) > 0))
def test_split_parts_add_up_and_stay_within_a_penny(total: int, weights: list[int]) -> None:
    parts = split_largest_remainder(total, weights)
    weight_sum = sum(weights)
    assert len(parts) == len(weights)
    assert sum(parts) == total
    for part, w in zip(parts, weights):
        exact = Fraction(total * w, weight_sum)
        assert part >= 0
        assert abs(part - exact) < 1
        # Largest remainder only ever rounds up from the floor.
        assert part in (exact.numerator // exact.denominator, exact.numerator // exact.denominator + 1)
        if w == 0:
            assert part == 0


@PROPS
@given(amounts, weight_lists.filter(lambda w: sum(w) > 0))
def test_split_is_monotone_in_weight_and_prefers_earlier_on_ties(total: int, weights: list[int]) -> None:
    parts = split_largest_remainder(total, weights)
    for i in range(len(weights)):
        for j in range(len(weights)):
            if weights[i] > weights[j]:
                assert parts[i] >= parts[j]
            if weights[i] == weights[j] and i < j:
                assert parts[j] <= parts[i] <= parts[j] + 1


@PROPS
@given(amounts, weight_lists.filter(lambda w: sum(w) > 0), st.integers(min_value=1, max_value=1000))
def test_split_is_scale_invariant_and_deterministic(total: int, weights: list[int], k: int) -> None:
    parts = split_largest_remainder(total, weights)
    assert split_largest_remainder(total, weights) == parts
    assert split_largest_remainder(total, [w * k for w in weights]) == parts


@PROPS
@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=30))
def test_split_of_the_weight_sum_gives_back_the_weights(weights: list[int]) -> None:
    assert split_largest_remainder(sum(weights), weights) == weights


@PROPS
@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=30), st.data())
def test_split_below_the_weight_sum_never_exceeds_any_weight(weights: list[int], data: st.DataObject) -> None:
    # The settlement cap relies on this: scaling diversions down never raises any one of them.
    total = data.draw(st.integers(min_value=0, max_value=sum(weights)))
    parts = split_largest_remainder(total, weights)
    assert all(0 <= p <= w for p, w in zip(parts, weights))


# ---------------------------------------------------------------------------------------------
# format_pence
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pence", "text"),
    [
        (0, "£0.00"),
        (5, "£0.05"),
        (99, "£0.99"),
        (100, "£1.00"),
        (123_456_789, "£1,234,567.89"),
        (-100_000, "-£1,000.00"),
        (-1, "-£0.01"),
        (10_000_000_000, "£100,000,000.00"),
    ],
)
def test_format_pence_examples(pence: int, text: str) -> None:
    assert format_pence(pence) == text


@PROPS
@given(st.integers(min_value=-(10**13), max_value=10**13))
def test_format_pence_round_trips(pence: int) -> None:
    text = format_pence(pence)
    negative = text.startswith("-")
    body = text.removeprefix("-")
    assert body.startswith("£")
    pounds, pence_part = body[1:].split(".")
    assert len(pence_part) == 2
    value = int(pounds.replace(",", "")) * 100 + int(pence_part)
    assert (-value if negative else value) == pence
    assert negative == (pence < 0)
