"""Case-mix adjustment by indirect standardisation.

A provider that treats more of the patients who are, everywhere, more likely to report a poor
experience (a setting, an age band, a deprivation decile) should not be judged as if it served
the average case mix. Indirect standardisation compares what it observed with what the
reference population's rates would have produced *for its own patients*:

* benchmark rate of stratum s:   r_s = events_s / records_s   (reference population)
* overall benchmark rate:        r   = Σ events_s / Σ records_s
* a unit's expected count:       E   = Σ over the unit's records of r_(its stratum)
                                     = Σ_s records_unit,s × r_s
* observed count:                O   = the unit's events
* standardised ratio:            O / E            (1 = as expected for its case mix)
* adjusted proportion:           (O / E) × r      (on the same scale as a crude proportion)

If every stratum's rate equals r, then E = records × r and the adjusted proportion is
(O / (records × r)) × r = O / records, the crude proportion: adjustment changes nothing when
the case mix carries no risk. The tests prove this by a property test.

Fallback: a unit's record whose stratum is absent from the benchmark (or has fewer than
``min_records_per_stratum`` reference records, too few for a stable rate) is given the
overall rate r. That is the neutral choice (it neither credits nor penalises the unit for a
stratum nobody can rate) and the result reports how many records and which strata fell back,
so a reader can see how much of E rests on it.

All arithmetic is exact (``fractions.Fraction``): the same inputs give the same figures on every
machine, and a decision can be re-derived by hand. Convert with ``float()`` for display.
Undefined ratios are None, never NaN: O/E needs E > 0.

Reference: the method as used for standardised ratios in England (e.g. SHMI, and Spiegelhalter,
"Funnel plots for comparing institutional performance", Stat Med 2005, which plots O/E
against E). A unit's adjusted proportion can be compared with r on a funnel with n = its records.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType

Stratum = Hashable
MAX_STRATA = 1_000_000  # far beyond setting × age band × decile; more is a keying bug


@dataclass(frozen=True)
class StratumCount:
    """Records and events (e.g. negative responses) of one stratum."""

    stratum: Stratum
    records: int
    events: int

    def __post_init__(self) -> None:
        _require_counts(self.records, self.events, f"stratum {self.stratum!r}")

    @property
    def rate(self) -> Fraction:
        if self.records == 0:
            raise ValueError(f"stratum {self.stratum!r} has no records, so no rate")
        return Fraction(self.events, self.records)


@dataclass(frozen=True)
class CaseMixBenchmark:
    """Benchmark rates per stratum and overall, from a reference population."""

    strata: Mapping[Stratum, StratumCount]  # only strata with enough records to be rated
    records: int
    events: int
    min_records_per_stratum: int

    @property
    def overall_rate(self) -> Fraction:
        return Fraction(self.events, self.records)

    def rate_for(self, stratum: Stratum) -> tuple[Fraction, bool]:
        """(rate, fell_back): the stratum's rate, or the overall rate when it has none."""
        counted = self.strata.get(stratum)
        if counted is None:
            return self.overall_rate, True
        return counted.rate, False


@dataclass(frozen=True)
class IndirectStandardisation:
    """Observed against expected for one unit (provider, ward, service)."""

    records: int
    observed: int
    expected: Fraction
    overall_benchmark_rate: Fraction
    fallback_records: int
    fallback_strata: tuple[Stratum, ...]

    @property
    def crude_proportion(self) -> Fraction | None:
        return Fraction(self.observed, self.records) if self.records else None

    @property
    def observed_to_expected(self) -> Fraction | None:
        """O / E; None when E = 0 (no records, or only strata whose rate is 0)."""
        return Fraction(self.observed) / self.expected if self.expected > 0 else None

    @property
    def adjusted_proportion(self) -> Fraction | None:
        """(O / E) × overall benchmark rate; None when O / E is undefined."""
        ratio = self.observed_to_expected
        return None if ratio is None else ratio * self.overall_benchmark_rate


def _require_counts(records: object, events: object, where: str) -> None:
    for name, value in (("records", records), ("events", events)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: {name} must be an int, got {value!r}")
        if value < 0:
            raise ValueError(f"{where}: {name} must be >= 0, got {value}")
    if events > records:  # type: ignore[operator]
        raise ValueError(f"{where}: events ({events}) cannot exceed records ({records})")


def _outcome_as_event(outcome: object, position: int) -> int:
    # Accept bool or 0/1 only: a 2 or a "yes" means the caller mapped answers wrongly.
    if outcome is True or outcome is False:
        return int(outcome)
    if isinstance(outcome, int) and outcome in (0, 1):
        return outcome
    raise ValueError(f"record {position}: outcome must be a bool or 0/1, got {outcome!r}")


def counts_from_records(records: Iterable[tuple[Stratum, object]]) -> tuple[StratumCount, ...]:
    """Aggregate (stratum, outcome) records into one StratumCount per stratum (first-seen order)."""
    totals: dict[Stratum, list[int]] = {}
    for position, record in enumerate(records):
        try:
            stratum, outcome = record
        except (TypeError, ValueError):
            raise ValueError(f"record {position} must be a (stratum, outcome) pair, got {record!r}") from None
        event = _outcome_as_event(outcome, position)
        tally = totals.get(stratum)
        if tally is None:
            if len(totals) >= MAX_STRATA:
                raise ValueError(f"more than {MAX_STRATA} strata")
            tally = totals[stratum] = [0, 0]
        tally[0] += 1
        tally[1] += event
    return tuple(StratumCount(stratum, records_count, events) for stratum, (records_count, events) in totals.items())


def _merge(counts: Iterable[StratumCount]) -> dict[Stratum, tuple[int, int]]:
    merged: dict[Stratum, tuple[int, int]] = {}
    for counted in counts:
        if not isinstance(counted, StratumCount):
            raise ValueError(f"expected StratumCount, got {counted!r}")
        records, events = merged.get(counted.stratum, (0, 0))
        merged[counted.stratum] = (records + counted.records, events + counted.events)
        if len(merged) > MAX_STRATA:
            raise ValueError(f"more than {MAX_STRATA} strata")
    return merged


def benchmark_from_counts(counts: Iterable[StratumCount], *, min_records_per_stratum: int = 1) -> CaseMixBenchmark:
    """Benchmark from per-stratum counts (repeated strata are added together).

    Strata with fewer than ``min_records_per_stratum`` records still count towards the overall
    rate but get no rate of their own: their records fall back to the overall rate.
    """
    minimum = min_records_per_stratum
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
        raise ValueError(f"min_records_per_stratum must be an int >= 1, got {min_records_per_stratum!r}")
    merged = _merge(counts)
    total_records = sum(records for records, _ in merged.values())
    total_events = sum(events for _, events in merged.values())
    if total_records == 0:
        raise ValueError("the reference population has no records, so there is no benchmark")
    rated = {
        stratum: StratumCount(stratum, records, events)
        for stratum, (records, events) in merged.items()
        if records >= min_records_per_stratum
    }
    return CaseMixBenchmark(
        strata=MappingProxyType(rated),
        records=total_records,
        events=total_events,
        min_records_per_stratum=min_records_per_stratum,
    )


def build_benchmark(
    reference_records: Iterable[tuple[Stratum, object]], *, min_records_per_stratum: int = 1
) -> CaseMixBenchmark:
    """Benchmark from a reference population of (stratum, outcome) records; outcome True = event."""
    counts = counts_from_records(reference_records)
    return benchmark_from_counts(counts, min_records_per_stratum=min_records_per_stratum)


def indirectly_standardise_counts(
    unit_counts: Iterable[StratumCount], benchmark: CaseMixBenchmark
) -> IndirectStandardisation:
    """O, E and the derived figures for one unit given its per-stratum counts."""
    if not isinstance(benchmark, CaseMixBenchmark):
        raise ValueError(f"benchmark must be a CaseMixBenchmark, got {benchmark!r}")
    expected = Fraction(0)
    records_total = observed = fallback_records = 0
    fallback_strata: list[Stratum] = []
    for stratum, (records, events) in _merge(unit_counts).items():
        rate, fell_back = benchmark.rate_for(stratum)
        expected += records * rate
        records_total += records
        observed += events
        if fell_back and records:
            fallback_records += records
            fallback_strata.append(stratum)
    return IndirectStandardisation(
        records=records_total,
        observed=observed,
        expected=expected,
        overall_benchmark_rate=benchmark.overall_rate,
        fallback_records=fallback_records,
        fallback_strata=tuple(fallback_strata),
    )


def indirectly_standardise(
    unit_records: Iterable[tuple[Stratum, object]], benchmark: CaseMixBenchmark
) -> IndirectStandardisation:
    """O, E and the derived figures for one unit from its (stratum, outcome) records."""
    return indirectly_standardise_counts(counts_from_records(unit_records), benchmark)
