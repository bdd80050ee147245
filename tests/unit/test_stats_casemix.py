"""Tests for shared/stats/casemix.py: indirect standardisation, exact in rationals."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.stats.casemix import (
    StratumCount,
    benchmark_from_counts,
    build_benchmark,
    counts_from_records,
    indirectly_standardise,
    indirectly_standardise_counts,
)

PROPS = settings(max_examples=200, deadline=None)

strata = st.tuples(
    st.sampled_from(["inpatient", "maternity", "outpatient", "a&e"]),
    st.sampled_from(["18-39", "40-64", "65+"]),
    st.integers(min_value=1, max_value=10),  # deprivation decile
)
records = st.lists(st.tuples(strata, st.booleans()), max_size=120)


def reference_population() -> list[tuple[str, bool]]:
    # Maternity: 20 records, 2 negative (10%); A&E: 10 records, 4 negative (40%).
    return [("maternity", i < 2) for i in range(20)] + [("a&e", i < 4) for i in range(10)]


def test_worked_example_by_hand() -> None:
    benchmark = build_benchmark(reference_population())
    assert benchmark.strata["maternity"].rate == Fraction(1, 10)
    assert benchmark.strata["a&e"].rate == Fraction(2, 5)
    assert benchmark.overall_rate == Fraction(6, 30)
    # A unit with 5 maternity and 5 A&E records, 3 negatives.
    unit = [("maternity", False)] * 5 + [("a&e", i < 3) for i in range(5)]
    result = indirectly_standardise(unit, benchmark)
    assert result.records == 10 and result.observed == 3
    assert result.expected == 5 * Fraction(1, 10) + 5 * Fraction(2, 5)  # 2.5
    assert result.observed_to_expected == Fraction(6, 5)
    assert result.adjusted_proportion == Fraction(6, 5) * Fraction(1, 5)  # 0.24
    assert result.crude_proportion == Fraction(3, 10)
    assert result.fallback_records == 0 and result.fallback_strata == ()


def test_unknown_strata_fall_back_to_the_overall_rate() -> None:
    benchmark = build_benchmark(reference_population())
    result = indirectly_standardise([("community", True), ("community", False), ("maternity", False)], benchmark)
    assert result.expected == 2 * Fraction(1, 5) + Fraction(1, 10)
    assert result.fallback_records == 2 and result.fallback_strata == ("community",)


def test_strata_below_the_minimum_size_fall_back_but_count_overall() -> None:
    benchmark = build_benchmark(reference_population() + [("dental", True)], min_records_per_stratum=5)
    assert "dental" not in benchmark.strata
    assert benchmark.overall_rate == Fraction(7, 31)
    assert benchmark.rate_for("dental") == (Fraction(7, 31), True)


def test_undefined_ratios_are_none_not_nan() -> None:
    benchmark = build_benchmark([("gp", False)] * 10 + [("dental", True)])
    empty = indirectly_standardise([], benchmark)
    assert empty.expected == 0
    assert empty.observed_to_expected is None and empty.adjusted_proportion is None
    assert empty.crude_proportion is None
    zero_rate = indirectly_standardise([("gp", True)], benchmark)  # expected 0, observed 1
    assert zero_rate.expected == 0 and zero_rate.observed_to_expected is None


@PROPS
@given(
    reference_sizes=st.dictionaries(strata, st.integers(min_value=1, max_value=30), min_size=1, max_size=15),
    events_per_denominator=st.integers(min_value=0, max_value=7),
    unit=records,
)
def test_a_uniform_case_mix_gives_the_crude_figures(reference_sizes, events_per_denominator, unit) -> None:
    # Every reference stratum has the same rate e/7, so adjustment must change nothing, even for
    # unit strata the benchmark has never seen (they fall back to the same overall rate).
    counts = [StratumCount(stratum, 7 * size, events_per_denominator * size) for stratum, size in reference_sizes.items()]
    benchmark = benchmark_from_counts(counts)
    rate = Fraction(events_per_denominator, 7)
    assert benchmark.overall_rate == rate
    result = indirectly_standardise(unit, benchmark)
    assert result.expected == len(unit) * rate
    if result.expected > 0:
        assert result.adjusted_proportion == result.crude_proportion


@PROPS
@given(reference=records.filter(bool))
def test_the_reference_population_is_exactly_as_expected(reference) -> None:
    benchmark = build_benchmark(reference)
    result = indirectly_standardise(reference, benchmark)
    assert result.expected == result.observed
    if result.observed:
        assert result.observed_to_expected == 1
        assert result.adjusted_proportion == benchmark.overall_rate == result.crude_proportion


@PROPS
@given(reference=records.filter(bool), unit=records)
def test_expected_is_the_sum_over_records_of_their_strata_rates(reference, unit) -> None:
    benchmark = build_benchmark(reference)
    result = indirectly_standardise(unit, benchmark)
    assert result.expected == sum((benchmark.rate_for(stratum)[0] for stratum, _ in unit), Fraction(0))
    assert result.observed == sum(outcome for _, outcome in unit)
    assert indirectly_standardise_counts(counts_from_records(unit), benchmark) == result


@PROPS
@given(reference=records.filter(bool), unit=records)
def test_observed_over_expected_moves_with_observed(reference, unit) -> None:
    # Turning one of the unit's non-events into an event never lowers O/E.
    benchmark = build_benchmark(reference)
    before = indirectly_standardise(unit, benchmark)
    for position, (stratum, outcome) in enumerate(unit):
        if not outcome:
            changed = unit[:position] + [(stratum, True)] + unit[position + 1 :]
            after = indirectly_standardise(changed, benchmark)
            assert after.expected == before.expected
            if before.observed_to_expected is not None:
                assert after.observed_to_expected > before.observed_to_expected
            break


@pytest.mark.parametrize(
    "call",
    [
        lambda: build_benchmark([]),
        lambda: build_benchmark([("gp", 2)]),
        lambda: build_benchmark([("gp", "yes")]),
        lambda: build_benchmark([("gp",)]),
        lambda: build_benchmark([("gp", True)], min_records_per_stratum=0),
        lambda: StratumCount("gp", 3, 4),
        lambda: StratumCount("gp", -1, 0),
        lambda: StratumCount("gp", 2.0, 1),
        lambda: benchmark_from_counts([StratumCount("gp", 0, 0)]),
        lambda: indirectly_standardise([("gp", True)], "not a benchmark"),
    ],
)
def test_invalid_input_raises_value_error(call) -> None:
    with pytest.raises(ValueError):
        call()
