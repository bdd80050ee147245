"""Judging fairly: whether, and how much of, a provider-period's diversions apply. Pure, no I/O.

Today each patient's answer moves money, under a minimum sample and a cap (``domain.settle``).
A scheme may add (each an optional table of its file, see ``schemes.py``; absent = today's rule):

* **gate** (``[gate]``): the period's diversions apply only when the provider's measure (by
  default the FFT negative share: Poor + Very poor over the answers with an opinion) is worse than
  the benchmark (national or regional, the same period, case-mix adjusted when the scheme says so)
  beyond the funnel limit for its number of responses (95% or 99.8%; exact or Wilson limits).
  The decision is made on integer counts: diversions apply when the negative count is above
  ``upper_limit_count``, the largest count within the limit (a float computes the limit, never the
  comparison that moves money).
* **case mix** (``[casemix]``): the benchmark's expected share for *this provider's* patients by
  indirect standardisation over setting (service type), age band and IMD decile
  (``shared/stats/casemix.py``). The gate tests against that expected share; and the diversions
  are scaled by ``min(1, benchmark share / expected share)``, so a provider whose patients are,
  everywhere, more likely to answer badly loses no more for it (the cap then applies to the
  adjusted total). With a uniform case mix the expected share is the benchmark share and the
  factor is 1 (property-tested).
* **improvement** (``[improvement]``): a provider whose measure is significantly better (below the
  lower funnel limit) than its own baseline period's (a year earlier, or a fixed period) earns back
  ``credit_bps`` of its period's diversions. Credit never exceeds the diversion it returns.
* **signals** (``[signals]``): a weighted combination of the FFT negative share and the share of
  the provider's PROM pairs completed in the period that did *not* improve (``prom_from_records``,
  the store's ``prom_outcomes``); with enough pairs, the diversions are scaled by
  ``min(1, combined / FFT share)`` (``signal_factor``): good outcomes soften a poor experience
  month, bad outcomes never add to what the patients' own answers decided.

Exemption (a provider-period exempted for extraordinary circumstances by an authorised person)
is not a scheme option: it applies under every scheme (``domain.settle``'s ``exemption``).

The inputs are counts, one ``AnswerCount`` per provider, stratum and FFT answer: how many of the
period's episodes had that answer as their first FFT answer within the decision window (the store
query ``PaymentsStore.judgement_counts`` and ``counts_from_records`` here compute the same).
``JudgementContext`` holds them for the period (and the baseline periods), computed once per
settlement job and passed to every unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from fractions import Fraction
from typing import TYPE_CHECKING

from services.payments.schemes import Benchmark, CaseMix, Scheme
from shared.money import check
from shared.periods import period_utc_bounds
from shared.stats import casemix as cm
from shared.stats import proportions as pr

if TYPE_CHECKING:  # domain imports this module; the types only
    from services.payments.domain import Answer, Episode
    from shared.contracts import FeedbackReceived

PROM_INSTRUMENTS = frozenset({"eq5d5l", "ohs", "oks"})  # the paired PROMs whose pairs can weigh in (``[signals]``)

COVERAGE: dict[str, float] = {"95": 0.95, "99.8": 0.998}

# measure -> (FFT answer codes that count as events, codes that make the denominator)
MEASURES: dict[str, tuple[frozenset[int], frozenset[int]]] = {
    "fft_negative": (frozenset({4, 5}), frozenset({1, 2, 3, 4, 5})),
    "fft_negative_all": (frozenset({4, 5}), frozenset({1, 2, 3, 4, 5, 6})),
    "fft_not_positive": (frozenset({3, 4, 5}), frozenset({1, 2, 3, 4, 5})),
}
MEASURE_WORDS: dict[str, str] = {"fft_negative": "negative", "fft_negative_all": "negative", "fft_not_positive": "not positive"}
FACTOR_WORDS: dict[str, str] = {"service_type": "setting", "age_band": "age band", "imd_decile": "IMD decile"}


# ---------------------------------------------------------------------------------------------
# The context: counts for the period (and the baselines), computed once per settlement job
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AnswerCount:
    """How many of a period's episodes of one provider and stratum had this first FFT answer in
    their decision window (``fft_answer`` None: no FFT answer in the window)."""

    provider_code: str
    region_code: str
    service_type: str
    age_band: str | None
    imd_decile: int | None
    fft_answer: int | None
    episodes: int


@dataclass(frozen=True)
class PeriodCounts:
    """The counts of one period, episodes' answers taken within ``window_days`` of the activity date."""

    period: str
    window_days: int
    rows: tuple[AnswerCount, ...] = ()


@dataclass(frozen=True)
class Exemption:
    """A provider-period exempted for extraordinary circumstances: nothing of it is diverted."""

    provider_code: str
    period: str
    reason: str
    exempted_by: str
    exempted_at: datetime


@dataclass(frozen=True)
class JudgementContext:
    """What the rules need beyond a unit's own episodes, for one settlement period.

    ``counts`` holds one ``PeriodCounts`` per (period, window days) that ``count_sets`` names:
    the period itself and each scheme's baseline period. ``prom_improved``: per (trust, PROM
    instrument), (pairs with a health gain above 0, pairs) completed in the period; filled when a
    scheme weights PROMs (``needs_proms``)."""

    period: str
    counts: Mapping[tuple[str, int], PeriodCounts] = field(default_factory=dict)
    prom_improved: Mapping[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    def counts_for(self, period: str, window_days: int) -> PeriodCounts | None:
        return self.counts.get((period, window_days))


def needs_counts(scheme: Scheme) -> bool:
    """Whether settling under this scheme reads the period's counts (a scheme without the new
    tables settles from its own episodes, exactly as before)."""
    return scheme.gate is not None or scheme.casemix is not None or scheme.improvement is not None \
        or scheme.signals.prom_weight_bps > 0


def needs_proms(schemes: Iterable[Scheme]) -> bool:
    """Whether settling under any of these schemes reads the period's PROM pairs."""
    return any(s.signals.prom_weight_bps > 0 for s in schemes)


@dataclass(frozen=True, slots=True)
class PromOutcome:
    """An answer that completed a patient's pre/post PROM pair (feedback pairs them and sends the
    gain on ``feedback.received.v1``), under its trust (a site's answers count for its trust)."""

    submission_id: str
    provider_code: str
    instrument: str
    health_gain: int
    authored_at: datetime


def prom_outcomes_of(feedback: Iterable["FeedbackReceived"], trust_of: Callable[[str], str | None]) -> list[PromOutcome]:
    """The PROM pair completions among these events, first per submission id (what payments keeps)."""
    seen: set[str] = set()
    out = []
    for fb in feedback:
        if fb.health_gain is None or fb.instrument not in PROM_INSTRUMENTS or fb.submission_id in seen:
            continue
        trust = trust_of(fb.provider_code)
        if trust is None:
            continue
        seen.add(fb.submission_id)
        out.append(PromOutcome(fb.submission_id, trust, fb.instrument, fb.health_gain, fb.authored_at))
    return out


def tally_proms(outcomes: Iterable[PromOutcome], period: str) -> dict[tuple[str, str], tuple[int, int]]:
    """Per (trust, instrument): (pairs with a gain above 0, pairs) completed in the period (the
    store's ``prom_outcomes`` query computes the same)."""
    # PROM pairs count in the month their post-operative answer was authored, as the feedback
    # service's PROM publication counts them.
    start, end = period_utc_bounds(period)
    out: dict[tuple[str, str], list[int]] = {}
    for o in outcomes:
        if start <= o.authored_at < end:
            t = out.setdefault((o.provider_code, o.instrument), [0, 0])
            t[0] += o.health_gain > 0
            t[1] += 1
    return {k: (v[0], v[1]) for k, v in sorted(out.items())}


def prom_from_records(feedback: Iterable["FeedbackReceived"], period: str, trust_of: Callable[[str], str | None]
                      ) -> dict[tuple[str, str], tuple[int, int]]:
    """The PROM figure from feedback events, as the service computes it from what it kept."""
    return tally_proms(prom_outcomes_of(feedback, trust_of), period)


def baseline_period(scheme: Scheme, period: str) -> str | None:
    """The period the scheme's improvement credit compares with, or None (no improvement rule)."""
    imp = scheme.improvement
    if imp is None:
        return None
    if imp.baseline == "fixed":
        return imp.baseline_period
    return f"{int(period[:4]) - 1:04d}-{period[5:7]}"


def count_sets(period: str, schemes: Iterable[Scheme]) -> list[tuple[str, int]]:
    """The (period, window days) counts a context must hold to settle ``period`` under these schemes."""
    out: set[tuple[str, int]] = set()
    for s in schemes:
        if not needs_counts(s):
            continue
        out.add((period, s.decision_window_days))
        base = baseline_period(s, period)
        if base is not None:
            out.add((base, s.decision_window_days))
    return sorted(out)


def _window(activity_date: date, window_days: int) -> tuple[datetime, datetime]:
    start = datetime(activity_date.year, activity_date.month, activity_date.day, tzinfo=timezone.utc)
    return start, start + timedelta(days=window_days + 1)


def counts_from_records(episodes: Iterable[Episode], answers: Iterable[Answer], period: str, window_days: int) -> PeriodCounts:
    """``PeriodCounts`` from episodes and answers, as the store query computes them: each episode of
    the period counts once, by its first FFT answer (earliest ``authored_at``, then submission id)
    authored from its activity date (00:00 UTC) to the end of day ``activity date + window_days``.
    Used by the what-if replay and the test fakes."""
    mine = [e for e in episodes if e.period == period]
    dates = {e.episode_id: e.activity_date for e in mine}
    first: dict[str, tuple[datetime, str, int]] = {}
    for a in answers:
        if a.instrument != "fft" or a.fft_answer is None or a.episode_id not in dates:
            continue
        start, end = _window(dates[a.episode_id], window_days)
        if not start <= a.authored_at < end:
            continue
        prior = first.get(a.episode_id)
        if prior is None or (a.authored_at, a.submission_id) < prior[:2]:
            first[a.episode_id] = (a.authored_at, a.submission_id, int(a.fft_answer))
    tally: dict[tuple[str, str, str, str | None, int | None, int | None], int] = {}
    for e in mine:
        got = first.get(e.episode_id)
        k = (e.provider_code, e.region_code, e.service_type, e.age_band, e.imd_decile, got[2] if got else None)
        tally[k] = tally.get(k, 0) + 1
    rows = tuple(AnswerCount(*k, n) for k, n in tally.items())
    return PeriodCounts(period, window_days, tuple(sorted(rows, key=row_order)))


def excluding(context: JudgementContext, episodes: Sequence[Episode], answers: Iterable[Answer],
              scheme: Scheme) -> JudgementContext:
    """The context without these episodes' answers in the period's counts (a reviewer excluded
    them: e.g. an answer attributed to the wrong trust must not count in its measure either).
    Each excluded episode stays counted, as an episode with no FFT answer."""
    window = scheme.decision_window_days
    counts = context.counts_for(context.period, window)
    if counts is None or not episodes:
        return context
    removed = counts_from_records(episodes, answers, context.period, window)
    tally: dict[tuple[object, ...], int] = {}
    for r in counts.rows:
        k = (r.provider_code, r.region_code, r.service_type, r.age_band, r.imd_decile, r.fft_answer)
        tally[k] = tally.get(k, 0) + r.episodes
    for r in removed.rows:
        if r.fft_answer is None:
            continue  # counted as unanswered already
        k = (r.provider_code, r.region_code, r.service_type, r.age_band, r.imd_decile, r.fft_answer)
        check(tally.get(k, 0) >= r.episodes, "an excluded episode is in the period's counts")
        tally[k] -= r.episodes
        unanswered = (*k[:5], None)
        tally[unanswered] = tally.get(unanswered, 0) + r.episodes
    rows = tuple(sorted((AnswerCount(*k, n) for k, n in tally.items() if n), key=row_order))  # type: ignore[arg-type]
    return JudgementContext(context.period, {**context.counts, (context.period, window): PeriodCounts(context.period, window, rows)},
                            context.prom_improved)


def row_order(r: AnswerCount) -> tuple[object, ...]:
    return (r.provider_code, r.region_code, r.service_type, r.age_band or "", r.imd_decile or 0, r.fft_answer or 0)


# ---------------------------------------------------------------------------------------------
# Measures and case mix
# ---------------------------------------------------------------------------------------------
Stratum = tuple[object, ...]


def _stratum(row: AnswerCount, by: Sequence[str]) -> Stratum:
    return tuple(getattr(row, f) for f in by)


def _measured(rows: Iterable[AnswerCount], measure: str) -> Iterable[tuple[AnswerCount, int, int]]:
    """(row, events, responses) of each row under the measure."""
    events_codes, denominator_codes = MEASURES[measure]
    for r in rows:
        if r.fft_answer is None or r.fft_answer not in denominator_codes:
            continue
        yield r, (r.episodes if r.fft_answer in events_codes else 0), r.episodes


@dataclass(frozen=True)
class Expected:
    """A provider-period's measure against its benchmark, case-mix adjusted or not."""

    responses: int  # n: the provider's answers in the measure's denominator
    observed: int  # O: of which events (e.g. negative)
    benchmark_rate: Fraction | None  # r: the population's crude share (None: no benchmark responses)
    expected: Fraction | None  # E: expected events for this provider's patients (n x r without case mix)
    fallback_records: int = 0  # responses rated by a coarser stratum or the overall rate

    @property
    def observed_rate(self) -> Fraction | None:
        return Fraction(self.observed, self.responses) if self.responses else None

    @property
    def expected_rate(self) -> Fraction | None:
        """E / n: the share expected of this provider's patients (the benchmark share without case mix)."""
        if self.expected is None or not self.responses:
            return self.benchmark_rate
        return self.expected / self.responses


def benchmark_of(scheme: Scheme) -> Benchmark:
    """The population every rule of the scheme compares with: the gate's, else the case mix's, else national."""
    if scheme.gate is not None:
        return scheme.gate.benchmark
    if scheme.casemix is not None and scheme.casemix.benchmark is not None:
        return scheme.casemix.benchmark
    return "national"


def _population(rows: Sequence[AnswerCount], benchmark: Benchmark, region_code: str) -> list[AnswerCount]:
    return list(rows) if benchmark == "national" else [r for r in rows if r.region_code == region_code]


def standardise(provider_rows: Sequence[AnswerCount], population: Sequence[AnswerCount], measure: str,
                casemix: CaseMix | None) -> Expected:
    """O, n, r and E for one provider against a population (which includes it).

    Without case mix E = n x r. With it, E = sum over the provider's responses of the benchmark
    rate of each one's stratum (indirect standardisation, ``shared.stats.casemix``). A response
    whose stratum has an unknown factor (no age band or decile on the payment request) is rated,
    under ``unknown = "coarser"``, by the stratum of its known factors (computed over the
    population's responses that know them), under ``"overall"`` by r. A stratum with fewer than
    ``min_records_per_stratum`` population responses falls back to the overall rate (casemix.py)."""
    mine = list(_measured(provider_rows, measure))
    n = sum(d for _, _, d in mine)
    observed = sum(ev for _, ev, _ in mine)
    pop = list(_measured(population, measure))
    pop_n = sum(d for _, _, d in pop)
    if pop_n == 0:
        return Expected(n, observed, None, None)
    r = Fraction(sum(ev for _, ev, _ in pop), pop_n)
    if casemix is None:
        return Expected(n, observed, r, n * r)
    by = casemix.by
    # The provider's responses grouped by which factors are known (a pattern), then by stratum.
    patterns: dict[tuple[str, ...], dict[Stratum, list[int]]] = {}
    for row, ev, d in mine:
        known = tuple(f for f in by if getattr(row, f) is not None)
        if casemix.unknown == "overall" and known != tuple(by):
            known = ()
        tally = patterns.setdefault(known, {}).setdefault(_stratum(row, known), [0, 0])
        tally[0] += d
        tally[1] += ev
    expected = Fraction(0)
    fallback = 0
    for known, strata in sorted(patterns.items(), key=lambda kv: repr(kv[0])):
        records = sum(t[0] for t in strata.values())
        reference = [cm.StratumCount(_stratum(row, known), d, ev) for row, ev, d in pop
                     if all(getattr(row, f) is not None for f in known)]
        if not known or not reference:
            expected += records * r
            fallback += records
            continue
        bench = cm.benchmark_from_counts(reference, min_records_per_stratum=casemix.min_records_per_stratum)
        result = cm.indirectly_standardise_counts([cm.StratumCount(s, t[0], t[1]) for s, t in strata.items()], bench)
        expected += result.expected
        fallback += records if known != tuple(by) else result.fallback_records
    return Expected(n, observed, r, expected, fallback)


# ---------------------------------------------------------------------------------------------
# Funnel limits as integer counts (the comparison that moves money is on counts)
# ---------------------------------------------------------------------------------------------
def upper_limit_count(n: int, p0: Fraction, level: str, method: str) -> int:
    """The largest count of events out of ``n`` within the upper funnel limit around ``p0``: a
    count above it is significantly worse. exact: one less than the smallest count whose upper
    tail P(X >= r) is at most (1 - c) / 2 (``upper_critical_count``; n when none is); wilson: the
    largest count whose share is not above the upper Wilson/normal limit p0 + z sqrt(p0 (1 - p0) / n)."""
    check(n >= 0, "a count of responses")
    if n == 0:
        return 0
    coverage, p = COVERAGE[level], min(1.0, max(0.0, float(p0)))
    if method == "exact":
        critical = pr.upper_critical_count(n, p, coverage)
        return n if critical is None else critical - 1
    upper = pr.funnel_limits(n, p, coverage, "wilson")[1]
    return min(n, math.floor(upper * n))


def lower_limit_count(n: int, p0: Fraction, level: str, method: str) -> int:
    """The largest count of events out of ``n`` significantly below ``p0`` (better, when events are
    bad); -1 when none is. exact: ``lower_critical_count``; wilson: the largest count whose share is
    below the lower limit p0 - z sqrt(p0 (1 - p0) / n)."""
    check(n >= 0, "a count of responses")
    if n == 0:
        return -1
    coverage, p = COVERAGE[level], min(1.0, max(0.0, float(p0)))
    if method == "exact":
        critical = pr.lower_critical_count(n, p, coverage)
        return -1 if critical is None else critical
    lower = pr.funnel_limits(n, p, coverage, "wilson")[0]
    return max(-1, math.ceil(lower * n) - 1)


def weighted_signal(fft_share: Fraction, prom_improved_share: Fraction | None, *, fft_weight_bps: int,
                    prom_weight_bps: int) -> Fraction:
    """One "how bad" figure from the FFT share (bad answers) and the PROM share *not* improved,
    weighted in bps (the weights add up to 10000). No PROM figure, or no PROM weight: the FFT share."""
    check(fft_weight_bps >= 0 and prom_weight_bps >= 0, "weights are non-negative")
    check(Fraction(0) <= fft_share <= 1, "a share")
    if prom_improved_share is None or prom_weight_bps == 0:
        return fft_share
    check(Fraction(0) <= prom_improved_share <= 1, "a share")
    return (fft_weight_bps * fft_share + prom_weight_bps * (1 - prom_improved_share)) / (fft_weight_bps + prom_weight_bps)


def signal_factor(fft_share: Fraction, combined: Fraction) -> Fraction:
    """What the diversions are scaled by for outcomes: min(1, combined / FFT share), in [0, 1]. An
    FFT share of 0 diverts nothing anyway (factor 1)."""
    check(Fraction(0) <= fft_share <= 1 and Fraction(0) <= combined <= 1, "shares")
    if fft_share == 0:
        return Fraction(1)
    return min(Fraction(1), combined / fft_share)


def _pct(x: Fraction | None) -> str:
    return "n/a" if x is None else f"{float(x) * 100:.1f}%"


# ---------------------------------------------------------------------------------------------
# The verdict for one provider-period under one scheme
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateResult:
    opened: bool
    observed: int
    responses: int
    upper_limit_count: int


@dataclass(frozen=True)
class ImprovementResult:
    baseline_period: str
    baseline_responses: int
    baseline_observed: int
    baseline_rate: Fraction | None  # the share compared with (case-mix adjusted to this period's patients)
    lower_limit_count: int | None  # None: no usable baseline
    improved: bool


@dataclass(frozen=True)
class Verdict:
    """What the rules say about a provider-period before the money is split."""

    expected: Expected | None = None
    gate: GateResult | None = None
    casemix_factor: Fraction = Fraction(1)  # multiplies the diversions; never above 1
    improvement: ImprovementResult | None = None
    credit_bps: int = 0
    signal: Fraction | None = None
    signal_factor: Fraction = Fraction(1)  # multiplies the diversions with the case-mix factor; never above 1
    steps: tuple[str, ...] = ()

    @property
    def factor(self) -> Fraction:
        """What the diversions are scaled by before the cap: case mix times outcomes, in [0, 1]."""
        return self.casemix_factor * self.signal_factor

    @property
    def diverts(self) -> bool:
        """False when a gate is applied and did not open."""
        return self.gate is None or self.gate.opened


NEUTRAL = Verdict()


def judge(scheme: Scheme, *, provider_code: str, region_code: str, context: JudgementContext | None) -> Verdict:
    """The verdict for a provider-period under ``scheme`` (NEUTRAL for a scheme without the new rules)."""
    if not needs_counts(scheme):
        return NEUTRAL
    check(context is not None, f"{scheme.key} judges against the period's counts: settle it with a JudgementContext")
    assert context is not None  # for the type checker; checked above
    counts = context.counts_for(context.period, scheme.decision_window_days)
    check(counts is not None, f"the context holds no counts for {context.period} ({scheme.decision_window_days}-day window)")
    assert counts is not None
    words = MEASURE_WORDS[scheme.measure]
    bench_name = benchmark_of(scheme)
    mine = [r for r in counts.rows if r.provider_code == provider_code]
    expected = standardise(mine, _population(counts.rows, bench_name, region_code), scheme.measure, scheme.casemix)
    steps: list[str] = []
    n, observed = expected.responses, expected.observed
    share_text = f"{observed} {words} of {n} ({_pct(expected.observed_rate)})"
    bench_text = f"the {bench_name} {_pct(expected.benchmark_rate)}"
    factor = Fraction(1)
    if scheme.casemix is not None and expected.benchmark_rate is not None:
        exp_rate = expected.expected_rate
        if exp_rate is not None and exp_rate > 0:
            factor = min(Fraction(1), expected.benchmark_rate / exp_rate)
        by = ", ".join(FACTOR_WORDS[f] for f in scheme.casemix.by)
        fell = f"; {expected.fallback_records} of {n} responses rated by a coarser stratum or the overall rate" \
            if expected.fallback_records else ""
        steps.append(f"case mix ({by}): {_pct(exp_rate)} {words} expected for this provider's patients against {bench_text}"
                     f"{fell}; diversions scaled by {float(factor):.4f}")
        bench_text += f" (case-mix expected {_pct(exp_rate)})"
    gate = None
    if scheme.gate is not None:
        g = scheme.gate
        p0 = expected.expected_rate
        if p0 is None or n == 0:
            gate = GateResult(False, observed, n, 0)
            steps.append(f"gate: {share_text}, no {bench_name} benchmark to compare with: nothing diverted"
                         if p0 is None else "gate: no FFT answers to judge: nothing diverted")
        else:
            limit = upper_limit_count(n, p0, g.limit, g.method)
            opened = observed > limit
            gate = GateResult(opened, observed, n, limit)
            how = f"the {g.limit}% {'exact' if g.method == 'exact' else 'Wilson'} limit {limit} for {bench_text}"
            steps.append(f"gate: {share_text} is above {how}: diversions apply" if opened
                         else f"gate: {share_text} is within {how}: nothing diverted")
    improvement, credit_bps = None, 0
    if scheme.improvement is not None:
        improvement = _improvement(scheme, provider_code, region_code, context, expected)
        imp = scheme.improvement
        low = improvement.lower_limit_count
        if low is None and improvement.baseline_responses < imp.min_baseline_responses:
            steps.append(f"improvement: baseline {improvement.baseline_period} has {improvement.baseline_responses} responses"
                         f" (fewer than {imp.min_baseline_responses}): no credit")
        elif low is None:
            steps.append("improvement: no FFT answers to judge this period: no credit")
        else:
            limit_text = f"{imp.level}% {imp.method} limit {low}" if low >= 0 else f"no count of {n} is below the {imp.level}% limit"
            against = f"the baseline {improvement.baseline_period}'s {_pct(improvement.baseline_rate)} ({limit_text})"
            if improvement.improved:
                credit_bps = imp.credit_bps
                steps.append(f"improvement: {share_text} is significantly below {against}: {credit_bps} bps of the"
                             " diversions earned back")
            else:
                steps.append(f"improvement: {share_text} is not significantly below {against}: no credit")
    signal, outcome = None, Fraction(1)
    sig = scheme.signals
    if sig.prom_weight_bps > 0 and expected.observed_rate is not None:
        counts = [context.prom_improved.get((provider_code, i), (0, 0)) for i in sig.prom_instruments]
        improved, pairs = sum(c[0] for c in counts), sum(c[1] for c in counts)
        instruments = "/".join(sig.prom_instruments)
        if pairs < sig.min_prom_pairs:
            steps.append(f"signal: {pairs} PROM pairs ({instruments}) completed in the period, fewer than"
                         f" {sig.min_prom_pairs}: FFT only")
        else:
            prom_share = Fraction(improved, pairs)
            signal = weighted_signal(expected.observed_rate, prom_share, fft_weight_bps=sig.fft_weight_bps,
                                     prom_weight_bps=sig.prom_weight_bps)
            outcome = signal_factor(expected.observed_rate, signal)
            text = (f"signal: FFT {_pct(expected.observed_rate)} {words} x {sig.fft_weight_bps} bps, PROM"
                    f" {_pct(1 - prom_share)} not improved ({pairs - improved} of {pairs} {instruments} pairs)"
                    f" x {sig.prom_weight_bps} bps = {_pct(signal)}")
            steps.append(text + (f": diversions scaled by {float(outcome):.4f}" if outcome < 1
                                 else ": outcomes no better than experience, diversions unchanged"))
    return Verdict(expected, gate, factor, improvement, credit_bps, signal, outcome, tuple(steps))


def _improvement(scheme: Scheme, provider_code: str, region_code: str, context: JudgementContext,
                 current: Expected) -> ImprovementResult:
    imp = scheme.improvement
    assert imp is not None
    base = baseline_period(scheme, context.period)
    assert base is not None
    counts = context.counts_for(base, scheme.decision_window_days)
    check(counts is not None, f"the context holds no counts for the baseline {base} ({scheme.decision_window_days}-day window)")
    assert counts is not None
    mine = [r for r in counts.rows if r.provider_code == provider_code]
    before = standardise(mine, _population(counts.rows, benchmark_of(scheme), region_code), scheme.measure, scheme.casemix)
    if before.responses < imp.min_baseline_responses or current.responses == 0:
        return ImprovementResult(base, before.responses, before.observed, before.observed_rate, None, False)
    p0 = Fraction(before.observed, before.responses)
    # With case mix, the baseline's observed/expected ratio applied to this period's patients.
    if scheme.casemix is not None and before.expected and current.expected is not None:
        p0 = min(Fraction(1), before.observed / before.expected * current.expected / current.responses)
    limit = lower_limit_count(current.responses, p0, imp.level, imp.method)
    return ImprovementResult(base, before.responses, before.observed, p0, limit, current.observed <= limit)


def credit_pence(diverted_pence: int, credit_bps: int) -> int:
    """The improvement credit on a diversion: ``credit_bps`` of it, rounded down (never more than it)."""
    check(diverted_pence >= 0 and 0 <= credit_bps <= 10_000, "a diversion and a share in bps")
    credit = diverted_pence * credit_bps // 10_000
    check(credit <= diverted_pence, "credit never exceeds the diversion it returns")
    return credit


def adjusted_total(uncapped_total_pence: int, factor: Fraction) -> int:
    """The case-mix adjusted diversion: the patients' total times the factor (at most 1), rounded down."""
    check(uncapped_total_pence >= 0 and Fraction(0) <= factor <= 1, "a total and a factor in [0, 1]")
    return math.floor(uncapped_total_pence * factor)
