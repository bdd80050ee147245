"""Judging fairly (services/payments/judgement.py and domain.settle): the gate, case mix,
improvement credit, exemption and the PROM weighting, as scheme options whose defaults are today's
rules. Property tests (hypothesis) for the acceptance of issue 16: the gate never diverts inside
the limits; a uniform case mix changes nothing; credit never exceeds the diversion it returns; an
exemption diverts nothing; held = released + diverted per episode, provider and fund."""

from __future__ import annotations

import math

from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.payments import domain, judgement, settlement
from services.payments.domain import InputError, Refused
from services.payments.handlers import AcceptPayment, RunSettlement
from services.payments.judgement import AnswerCount, Exemption, JudgementContext
from services.payments.schemes import (
    CaseMix, Gate, Improvement, Scheme, SchemeBook, SchemeError, Scope, Signals, check_scope, load_schemes, parse_scheme,
)
from services.payments.whatif import apply_transfers, replay
from shared.contracts import FeedbackReceived, PaymentRequested
from shared.money import InvariantError
from shared.reference import load_reference
from shared.stats import proportions as pr
from tests.unit.fakes_payments import FakePayments

REF = load_reference()
PROPS = settings(max_examples=150, deadline=None)
START = date(2020, 1, 1)
PERIOD = "2026-09"
ACTIVITY = date(2026, 9, 10)
TODAY = date(2026, 12, 2)
SHIPPED = Path(domain.__file__).parent / "schemes"
# provider, region, a commissioner holding a contract with it
PROVIDERS = [("RJ1", "Y56", "QWE"), ("RRV", "Y56", "QMJ"), ("RA7", "Y58", "QUY"), ("RH8", "Y58", "QJK"),
             ("RTD", "Y63", "QHM"), ("RTH", "Y59", "QU9")]
REGION = {p: r for p, r, _ in PROVIDERS}
ICB = {p: c for p, _, c in PROVIDERS}
AGE_BANDS = ("0-17", "18-44", "45-64", "65-74", "75+")
SETTINGS = ("inpatient", "a_and_e", "maternity", "outpatient")


def scheme(**kw: Any) -> Scheme:
    base: dict[str, Any] = {"scheme_id": "tt", "version": 1, "title": "T", "effective_from": START,
                            "min_responses_per_period": 0, "cap_bps": 1_000}
    return Scheme(**{**base, **kw})


PLAIN = scheme()
GATED = scheme(gate=Gate())


class World:
    """Episodes and answers of one period, built provider by provider."""

    def __init__(self, s: Scheme = PLAIN) -> None:
        self.scheme = s
        self.episodes: list[domain.Episode] = []
        self.answers: list[domain.Answer] = []

    def add(self, provider: str, code: int | None, *, service: str = "inpatient", age: str | None = None,
            imd: int | None = None, amount: int = 100_000, period: str = PERIOD) -> domain.Episode:
        i = len(self.episodes)
        day = date(int(period[:4]), int(period[5:]), 10)
        e = domain.new_episode(payment_id=f"pay-{i}", episode_id=f"ep-{i:05d}", commissioner_code=ICB[provider],
                               provider_code=provider, region_code=REGION[provider], service_type=service, activity_date=day,
                               amount_pence=amount, scheme=self.scheme, hold_model="two_phase", age_band=age, imd_decile=imd)
        self.episodes.append(e)
        if code is not None:
            at = datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc) + timedelta(days=2)
            self.answers.append(domain.Answer(f"s-{i:05d}", e.episode_id, "fft", at, code))
        return e

    def many(self, provider: str, codes: dict[int | None, int], **kw: Any) -> None:
        for code, n in codes.items():
            for _ in range(n):
                self.add(provider, code, **kw)

    def context(self, s: Scheme, period: str = PERIOD) -> JudgementContext:
        return JudgementContext(period, {(p, w): judgement.counts_from_records(self.episodes, self.answers, p, w)
                                         for p, w in judgement.count_sets(period, [s])})

    def settle(self, s: Scheme, provider: str, *, period: str = PERIOD, exemption: Exemption | None = None,
               context: JudgementContext | None | str = "auto") -> domain.SettlementReport:
        # Episodes are settled under whichever scheme is asked for: re-label them as governed by it.
        mine = [domain.Episode(**{**vars(e), "scheme_id": s.scheme_id, "scheme_version": s.version}) for e in self.episodes]
        ctx = self.context(s, period) if context == "auto" else context
        return domain.settle(mine, self.answers, s, provider_code=provider, period=period, context=ctx,  # type: ignore[arg-type]
                             exemption=exemption)


def lines_of(report: domain.SettlementReport) -> list[tuple[str, int, int]]:
    return [(x.episode.episode_id, x.released_pence, x.diverted_pence) for x in report.lines]


def check_money(report: domain.SettlementReport) -> None:
    for x in report.lines:
        assert x.released_pence + x.diverted_pence == x.episode.at_risk_pence
        assert 0 <= x.diverted_pence <= x.uncapped_diverted_pence
    assert report.released_pence + report.diverted_pence == report.held_pence
    assert report.diverted_pence <= report.cap_pence


# ---------------------------------------------------------------------------------------------
# Scheme options: validated, defaults = today's rules
# ---------------------------------------------------------------------------------------------
def test_defaults_are_todays_rules() -> None:
    pilot = load_schemes(SHIPPED, REF).schemes
    assert [s.key for s in pilot] == ["england-pilot@1"]
    for s in (pilot[0], PLAIN):
        assert s.gate is None and s.casemix is None and s.improvement is None
        assert s.measure == "fft_negative" and s.signals == Signals(fft_weight_bps=10_000, prom_weight_bps=0)
        assert not judgement.needs_counts(s)
        assert judgement.judge(s, provider_code="RJ1", region_code="Y56", context=None) is judgement.NEUTRAL
    assert Gate() == Gate(benchmark="national", limit="99.8", method="exact")
    assert CaseMix().by == ("service_type", "age_band", "imd_decile") and CaseMix().unknown == "coarser"
    assert Improvement().baseline == "year_before" and Improvement().credit_bps == 5_000 and Improvement().level == "95"


def test_example_schemes_parse_and_name_real_codes() -> None:
    for name in ("england-gated-v1.toml", "england-fair-v1.toml"):
        path = SHIPPED / "examples" / name
        s = parse_scheme(path.read_text(encoding="utf-8"), name)
        check_scope(s, REF, name)
        assert s.gate is not None and judgement.needs_counts(s)
    fair = parse_scheme((SHIPPED / "examples" / "england-fair-v1.toml").read_text(encoding="utf-8"))
    assert fair.casemix is not None and fair.improvement is not None and fair.gate is not None
    assert fair.gate.benchmark == "regional" and fair.gate.method == "wilson" and fair.gate.limit == "95"


BASE_TOML = 'scheme_id = "x-1"\nversion = 1\ntitle = "X"\neffective_from = 2026-01-01\n'


@pytest.mark.parametrize(("extra", "named"), [
    ('[gate]\nlimit = "90"\n', "gate.limit"),
    ('[gate]\nmethod = "normal"\n', "gate.method"),
    ('[gate]\nbenchmark = "local"\n', "gate.benchmark"),
    ('measure = "fft_positive"\n', "measure"),
    ("[casemix]\nby = []\n", "casemix.by"),
    ('[casemix]\nby = ["age_band", "age_band"]\n', "casemix.by"),
    ('[casemix]\nby = ["postcode"]\n', "casemix.by"),
    ('[improvement]\nbaseline = "fixed"\n', "improvement"),
    ('[improvement]\nbaseline_period = "2025-10"\n', "improvement"),
    ("[improvement]\ncredit_bps = 10001\n", "improvement.credit_bps"),
    ("[signals]\nprom_weight_bps = 3000\n", "signals"),
    ('[gate]\nbenchmark = "national"\n[casemix]\nbenchmark = "regional"\n', "casemix.benchmark"),
])
def test_bad_judgement_options_are_named(extra: str, named: str) -> None:
    with pytest.raises(SchemeError) as exc:
        parse_scheme(BASE_TOML + extra, "bad.toml")
    assert "bad.toml" in str(exc.value) and named.split(".")[0] in str(exc.value)


def test_baseline_periods_and_count_sets() -> None:
    year = scheme(improvement=Improvement())
    fixed = scheme(scheme_id="ff", improvement=Improvement(baseline="fixed", baseline_period="2025-04"), decision_window_days=30)
    assert judgement.baseline_period(year, "2026-01") == "2025-01"
    assert judgement.baseline_period(fixed, "2026-09") == "2025-04"
    assert judgement.baseline_period(GATED, "2026-09") is None
    assert judgement.count_sets("2026-09", [PLAIN]) == []
    assert judgement.count_sets("2026-09", [GATED, year, fixed, PLAIN]) == [("2025-04", 30), ("2025-09", 56), ("2026-09", 30),
                                                                           ("2026-09", 56)]


# ---------------------------------------------------------------------------------------------
# The counts: one per episode, by its first FFT answer within the window
# ---------------------------------------------------------------------------------------------
def test_counts_take_each_episodes_first_fft_answer_in_its_window() -> None:
    w = World()
    a = w.add("RJ1", None, age="75+", imd=1)
    b = w.add("RJ1", None)
    c = w.add("RRV", None, service="maternity")
    d = w.add("RRV", None)
    w.add("RA7", 5, period="2026-10")  # another period: not counted
    day = datetime(2026, 9, 10, tzinfo=timezone.utc)
    w.answers += [
        domain.Answer("z-late", a.episode_id, "fft", day + timedelta(days=1), 1),
        domain.Answer("a-early", a.episode_id, "fft", day + timedelta(hours=1), 5),  # first: decides the count
        domain.Answer("b-pp", b.episode_id, "patient_power", day + timedelta(hours=1), None, "hold_back"),  # not FFT
        domain.Answer("b-before", b.episode_id, "fft", day - timedelta(seconds=1), 5),  # before the activity date
        domain.Answer("c-last", c.episode_id, "fft", day + timedelta(days=57) - timedelta(seconds=1), 4),  # last second
        domain.Answer("d-after", d.episode_id, "fft", day + timedelta(days=57), 4),  # window closed
        domain.Answer("c-tie-b", c.episode_id, "fft", day + timedelta(days=57) - timedelta(seconds=1), 1),  # a tie: id order
    ]
    counts = judgement.counts_from_records(w.episodes, w.answers, PERIOD, 56)
    got = {(r.provider_code, r.service_type, r.age_band, r.imd_decile, r.fft_answer): r.episodes for r in counts.rows}
    assert got == {("RJ1", "inpatient", "75+", 1, 5): 1, ("RJ1", "inpatient", None, None, None): 1,
                   ("RRV", "maternity", None, None, 4): 1, ("RRV", "inpatient", None, None, None): 1}
    assert counts.period == PERIOD and counts.window_days == 56


# ---------------------------------------------------------------------------------------------
# The gate
# ---------------------------------------------------------------------------------------------
def ordinary_month() -> World:
    """RJ1: 7 negative of 40; the rest of England: 33 of 300; national 40 / 340 = 11.8%."""
    w = World()
    w.many("RJ1", {5: 7, 1: 33, 6: 3, None: 4})
    w.many("RRV", {5: 13, 2: 137})
    w.many("RA7", {4: 20, 1: 130})
    return w


def test_a_bad_but_ordinary_month_diverts_nothing_behind_the_gate() -> None:
    w = ordinary_month()
    plain = w.settle(PLAIN, "RJ1")
    gated = w.settle(GATED, "RJ1")
    assert plain.diverted_pence == 7 * 10_000 and not plain.gate_applied and plain.gate_opened is None
    assert gated.diverted_pence == 0 and gated.released_pence == gated.held_pence
    limit = pr.upper_critical_count(40, 40 / 340, 0.998) - 1  # type: ignore[operator]
    assert gated.gate_applied and gated.gate_opened is False and gated.upper_limit_count == limit == 12
    assert (gated.measured_events, gated.measured_responses) == (7, 40)
    assert gated.benchmark_pct == gated.adjusted_expected_pct == round(40 / 340 * 100, 4)
    step = "gate: 7 negative of 40 (17.5%) is within the 99.8% exact limit 12 for the national 11.8%: nothing diverted"
    assert step in gated.judgement_steps
    for line in gated.lines:
        assert step in line.steps and line.steps[-1].startswith("released 10000p to provider:RJ1, diverted 0p")
    check_money(gated)


def test_a_significantly_bad_month_passes_the_gate_and_diverts_as_today() -> None:
    w = ordinary_month()
    w.many("RJ1", {5: 20})  # 27 negative of 60 against about 13%
    plain, gated = w.settle(PLAIN, "RJ1"), w.settle(GATED, "RJ1")
    assert gated.gate_opened is True and gated.diverted_pence == plain.diverted_pence == 27 * 10_000
    assert lines_of(gated) == lines_of(plain)
    assert any(s.startswith("gate: 27 negative of 60 (45.0%) is above the 99.8% exact limit") for s in gated.judgement_steps)


def test_regional_benchmark_and_wilson_limits() -> None:
    w = ordinary_month()
    w.many("RH8", {5: 60, 1: 60})  # RA7's region is bad this month
    w.many("RA7", {5: 8})  # RA7: 28 negative of 158, 17.7%; regional (88 of 278) 31.7%; national (108 of 468) 23.1%
    w.many("RTD", {1: 400})  # a good month elsewhere: national 108 of 868, 12.4%
    regional = scheme(gate=Gate(benchmark="regional", limit="95", method="wilson"))
    national = scheme(gate=Gate(benchmark="national", limit="95", method="wilson"))
    r = w.settle(regional, "RA7")
    assert r.gate_opened is False and r.benchmark_pct == round(88 / 278 * 100, 4) and r.diverted_pence == 0
    n = w.settle(national, "RA7")
    up = pr.funnel_limits(158, 108 / 868, 0.95, "wilson")[1]
    assert n.benchmark_pct == round(108 / 868 * 100, 4)
    assert n.upper_limit_count == int(up * 158) == 27 and n.gate_opened is True and n.diverted_pence == 20 * 5_000 + 8 * 10_000  # poor, very poor
    assert "95% Wilson limit" in " ".join(n.judgement_steps)


def test_no_fft_answer_or_no_benchmark_keeps_the_gate_closed() -> None:
    w = World()
    w.many("RJ1", {None: 3, 6: 2})  # nobody with an opinion
    w.answers.append(domain.Answer("pp", w.episodes[0].episode_id, "patient_power", datetime(2026, 9, 11, tzinfo=timezone.utc),
                                   None, "hold_back"))
    r = w.settle(GATED, "RJ1")
    assert r.gate_opened is False and r.diverted_pence == 0 and r.responses == 3  # the patient-power answer counts for the sample
    assert any("no" in s and "nothing diverted" in s for s in r.judgement_steps)


def test_a_judging_scheme_without_its_context_stops_loudly() -> None:
    w = ordinary_month()
    with pytest.raises(InvariantError, match="JudgementContext"):
        w.settle(GATED, "RJ1", context=None)
    with pytest.raises(InvariantError, match="no counts"):
        w.settle(GATED, "RJ1", context=JudgementContext(PERIOD))


@st.composite
def gate_worlds(draw):  # type: ignore[no-untyped-def]
    codes = st.sampled_from([1, 1, 1, 2, 2, 3, 4, 5, 6, None])  # an ordinary month: about one in five negative
    chosen = draw(st.lists(st.sampled_from([p for p, _, _ in PROVIDERS]), min_size=1, max_size=4, unique=True))
    w = World()
    answers: dict[str, list[int | None]] = {}
    bad = st.sampled_from([1, 4, 5, 5, 5, 6, None])  # the provider judged, half the time: a bad month
    for p in chosen:
        size = draw(st.integers(0, 60))
        answers[p] = draw(st.lists(bad if p == chosen[0] and draw(st.booleans()) else codes, min_size=size, max_size=size))
        for code in answers[p]:
            w.add(p, code, amount=draw(st.integers(1, 2_000_000)))
    g = Gate(benchmark=draw(st.sampled_from(["national", "regional"])), limit=draw(st.sampled_from(["95", "99.8"])),
             method=draw(st.sampled_from(["exact", "wilson"])))
    measure = draw(st.sampled_from(list(judgement.MEASURES)))
    cap = draw(st.integers(0, 1_000))
    return w, chosen[0], answers, g, measure, cap


@PROPS
@given(gate_worlds())
def test_the_gate_never_diverts_inside_the_limits(case) -> None:  # type: ignore[no-untyped-def]
    w, provider, answers, g, measure, cap = case
    events, denominator = judgement.MEASURES[measure]
    mine = [c for c in answers[provider] if c in denominator]
    population = [c for p, cs in answers.items() if g.benchmark == "national" or REGION[p] == REGION[provider]
                  for c in cs if c in denominator]
    n, observed = len(mine), sum(1 for c in mine if c in events)
    gated = w.settle(scheme(gate=g, measure=measure, cap_bps=cap), provider)
    plain = w.settle(scheme(measure=measure, cap_bps=cap), provider)
    check_money(gated)
    assert gated.gate_applied
    if n == 0 or not population:
        inside = True
    else:
        p0 = sum(1 for c in population if c in events) / len(population)
        coverage = judgement.COVERAGE[g.limit]
        if g.method == "wilson":
            upper = pr.funnel_limits(n, p0, coverage, "wilson")[1]
            assume(abs(observed / n - upper) > 1e-9)  # a tie at the limit in the last bit of a float says nothing
        inside = not pr.is_above_upper_limit(observed, n, p0, coverage, g.method)
    event("inside the limits" if inside else "beyond the limit")
    if inside:
        assert gated.gate_opened is False and gated.diverted_pence == 0
        assert all(x.diverted_pence == 0 for x in gated.lines)
    else:
        assert gated.gate_opened is True and observed > gated.upper_limit_count  # type: ignore[operator]
        assert lines_of(gated) == lines_of(plain)  # an open gate is today's rule


# ---------------------------------------------------------------------------------------------
# Case mix
# ---------------------------------------------------------------------------------------------
def test_case_mix_judges_a_and_e_against_a_and_e() -> None:
    """A&E answers are less positive everywhere (30% negative) than maternity's (10%). RJ1 is all
    A&E at 30%: worse than the national mix beyond the limit, but exactly as expected for its patients."""
    w = World()
    w.many("RJ1", {5: 36, 1: 84}, service="a_and_e")
    w.many("RRV", {5: 30, 1: 70}, service="a_and_e")
    w.many("RA7", {5: 40, 1: 360}, service="maternity")
    w.many("RTD", {5: 40, 1: 360}, service="maternity")
    plain_gate, adjusted_gate = scheme(gate=Gate()), scheme(gate=Gate(), casemix=CaseMix(by=("service_type",)))
    crude = w.settle(plain_gate, "RJ1")
    assert crude.gate_opened is True and crude.diverted_pence == 36 * 10_000  # 30% against the national 14.6%
    adjusted = w.settle(adjusted_gate, "RJ1")
    assert adjusted.adjusted_expected_pct == round(66 / 220 * 100, 4)  # A&E's own rate
    assert adjusted.gate_opened is False and adjusted.diverted_pence == 0
    # Without a gate, case mix scales the diversions by national / expected = (146/1020) / (66/220).
    only_casemix = w.settle(scheme(casemix=CaseMix(by=("service_type",))), "RJ1")
    factor = Fraction(146, 1020) / Fraction(66, 220)
    assert only_casemix.casemix_factor == round(float(factor), 6)
    assert only_casemix.diverted_pence == int(36 * 10_000 * factor)
    assert any(s.startswith("case mix (setting): 30.0% negative expected") for s in only_casemix.judgement_steps)
    check_money(only_casemix)
    # A provider whose patients are easier than the national mix is never scaled up.
    easy = w.settle(scheme(casemix=CaseMix(by=("service_type",))), "RA7")
    assert easy.casemix_factor == 1.0 and easy.diverted_pence == 40 * 10_000


def test_unknown_strata_fall_back_to_coarser_strata_or_the_overall_rate() -> None:
    w = World()
    w.many("RRV", {5: 40, 1: 60}, service="a_and_e", age="75+")  # A&E, 75+: 40%
    w.many("RRV", {5: 10, 1: 90}, service="a_and_e", age="18-44")  # A&E, 18-44: 10%
    w.many("RA7", {5: 10, 1: 190}, service="maternity", age="18-44")  # maternity: 5%
    w.many("RJ1", {5: 5, 1: 15}, service="a_and_e")  # no age band sent
    counts = judgement.counts_from_records(w.episodes, w.answers, PERIOD, 56)
    mine = [r for r in counts.rows if r.provider_code == "RJ1"]
    coarser = judgement.standardise(mine, counts.rows, "fft_negative", CaseMix(by=("service_type", "age_band")))
    assert coarser.expected == 20 * Fraction(55, 220)  # A&E's rate over every A&E response that knows its age
    assert coarser.fallback_records == 20
    overall = judgement.standardise(mine, counts.rows, "fft_negative", CaseMix(by=("service_type", "age_band"), unknown="overall"))
    assert overall.expected == 20 * Fraction(65, 420) and overall.benchmark_rate == Fraction(65, 420)
    thin = judgement.standardise(mine, counts.rows, "fft_negative", CaseMix(by=("service_type",), min_records_per_stratum=500))
    assert thin.expected == 20 * Fraction(65, 420) and thin.fallback_records == 20  # no stratum has 500: overall rate


STRATA = st.tuples(st.sampled_from(SETTINGS), st.sampled_from([*AGE_BANDS, None]), st.sampled_from([*range(1, 11), None]))


@PROPS
@given(st.integers(1, 6), st.data(), st.lists(STRATA, min_size=1, max_size=8, unique=True),
       st.lists(st.sampled_from(["service_type", "age_band", "imd_decile"]), min_size=1, max_size=3, unique=True),
       st.sampled_from(["coarser", "overall"]), st.integers(1, 40), st.sampled_from(["national", "regional"]))
def test_a_uniform_case_mix_changes_nothing(m, data, strata, by, unknown, min_records, bench) -> None:  # type: ignore[no-untyped-def]
    j = data.draw(st.integers(0, m))  # every stratum's negative rate is j / m
    rows = []
    for p, region, _ in PROVIDERS[:4]:
        for service, age, imd in strata:
            k = data.draw(st.integers(0, 4))
            rows += [AnswerCount(p, region, service, age, imd, 5, k * j), AnswerCount(p, region, service, age, imd, 1, k * (m - j)),
                     # Don't know and no answer are outside the measure: any number of them changes nothing.
                     AnswerCount(p, region, service, age, imd, 6, data.draw(st.integers(0, 3))),
                     AnswerCount(p, region, service, age, imd, None, data.draw(st.integers(0, 3)))]
    rows = [r for r in rows if r.episodes]
    mix = CaseMix(by=tuple(by), unknown=unknown, min_records_per_stratum=min_records)
    ctx = JudgementContext(PERIOD, {(PERIOD, 56): judgement.PeriodCounts(PERIOD, 56, tuple(rows))})
    for provider, region, _ in PROVIDERS[:4]:
        mine = [r for r in rows if r.provider_code == provider]
        pop = rows if bench == "national" else [r for r in rows if r.region_code == region]
        adjusted = judgement.standardise(mine, pop, "fft_negative", mix)
        crude = judgement.standardise(mine, pop, "fft_negative", None)
        assert adjusted.expected == crude.expected and adjusted.expected_rate == crude.expected_rate
        assert (adjusted.responses, adjusted.observed, adjusted.benchmark_rate) == (crude.responses, crude.observed,
                                                                                    crude.benchmark_rate)
        with_mix = judgement.judge(scheme(gate=Gate(benchmark=bench), casemix=mix), provider_code=provider, region_code=region,
                                   context=ctx)
        without = judgement.judge(scheme(gate=Gate(benchmark=bench)), provider_code=provider, region_code=region, context=ctx)
        assert with_mix.casemix_factor == 1 and with_mix.gate == without.gate


def test_one_stratum_for_everyone_is_the_crude_figure() -> None:
    w = World()
    w.many("RJ1", {5: 9, 1: 21}, service="maternity", age="18-44", imd=3)
    w.many("RRV", {5: 3, 1: 47}, service="maternity", age="18-44", imd=3)
    with_mix = w.settle(scheme(gate=Gate(), casemix=CaseMix()), "RJ1")
    without = w.settle(scheme(gate=Gate()), "RJ1")
    assert with_mix.adjusted_expected_pct == without.adjusted_expected_pct == with_mix.benchmark_pct == 15.0
    assert lines_of(with_mix) == lines_of(without) and with_mix.casemix_factor == 1.0


# ---------------------------------------------------------------------------------------------
# Improvement credit
# ---------------------------------------------------------------------------------------------
def improving_world() -> World:
    w = World()
    w.many("RJ1", {5: 20, 1: 30}, period="2025-09")  # baseline: 40% negative
    w.many("RRV", {5: 10, 1: 90}, period="2025-09")
    w.many("RJ1", {5: 8, 1: 42})  # now 16%
    w.many("RRV", {5: 10, 1: 90})
    return w


def test_significant_improvement_earns_back_its_share() -> None:
    w = improving_world()
    credit = scheme(improvement=Improvement(credit_bps=4_000))
    plain, with_credit = w.settle(PLAIN, "RJ1"), w.settle(credit, "RJ1")
    assert plain.diverted_pence == 80_000
    assert with_credit.credit_pence == 32_000 and with_credit.diverted_pence == 48_000
    assert any(s.startswith("improvement: 8 negative of 50 (16.0%) is significantly below the baseline 2025-09's 40.0%")
               for s in with_credit.judgement_steps)
    assert "improvement credit: 4000 bps of 80000p = 32000p released instead of diverted" in with_credit.judgement_steps
    check_money(with_credit)


def test_no_credit_without_a_significant_change_or_a_usable_baseline() -> None:
    w = improving_world()
    w.many("RJ1", {5: 10})  # now 18 of 60 (30%) against 40%: not significant at 95%
    r = w.settle(scheme(improvement=Improvement()), "RJ1")
    assert r.credit_pence == 0 and r.diverted_pence == 180_000
    assert any("is not significantly below the baseline 2025-09" in s for s in r.judgement_steps)
    small = w.settle(scheme(improvement=Improvement(min_baseline_responses=51)), "RJ1")
    assert small.credit_pence == 0 and any("has 50 responses (fewer than 51): no credit" in s for s in small.judgement_steps)
    fixed = w.settle(scheme(improvement=Improvement(baseline="fixed", baseline_period="2024-01")), "RJ1")
    assert fixed.credit_pence == 0 and any("baseline 2024-01 has 0 responses" in s for s in fixed.judgement_steps)


@PROPS
@given(st.data(), st.integers(0, 10_000), st.integers(0, 1_000), st.sampled_from(["exact", "wilson"]), st.sampled_from(["95", "99.8"]))
def test_credit_never_exceeds_the_diversion_it_returns(data, credit_bps, cap, method, level) -> None:  # type: ignore[no-untyped-def]
    w = World()
    worse, better = st.sampled_from([1, 2, 4, 5, 5, 6]), st.sampled_from([1, 1, 1, 2, 3, 4, 5, 6])
    for p in ("RJ1", "RRV"):
        for period, codes in (("2025-09", worse), (PERIOD, better)):
            size = data.draw(st.integers(0, 50))
            for c in data.draw(st.lists(codes, min_size=size, max_size=size)):
                w.add(p, c, period=period, amount=data.draw(st.integers(1, 3_000_000)))
    imp = Improvement(credit_bps=credit_bps, method=method, level=level, min_baseline_responses=data.draw(st.integers(1, 10)))
    with_credit = w.settle(scheme(improvement=imp, cap_bps=cap), "RJ1")
    without = w.settle(scheme(cap_bps=cap), "RJ1")
    check_money(with_credit)
    event("credit earned" if with_credit.credit_pence else "no credit")
    assert 0 <= with_credit.credit_pence <= without.diverted_pence
    assert with_credit.diverted_pence + with_credit.credit_pence == without.diverted_pence
    for a, b in zip(with_credit.lines, without.lines):
        assert a.diverted_pence <= b.diverted_pence
    for d in (0, 1, 99, 10_001, 123_456_789):
        assert judgement.credit_pence(d, credit_bps) <= d


# ---------------------------------------------------------------------------------------------
# Exemption, PROM weighting, the invariants through the replay
# ---------------------------------------------------------------------------------------------
EXEMPT = Exemption("RJ1", PERIOD, "flood closed the maternity unit", "regional-director", datetime(2026, 10, 2, tzinfo=timezone.utc))

JUDGING = st.builds(lambda g, c, i, cap, m: scheme(gate=g, casemix=c, improvement=i, cap_bps=cap, min_responses_per_period=m),
                    st.none() | st.builds(Gate, benchmark=st.sampled_from(["national", "regional"]),
                                          limit=st.sampled_from(["95", "99.8"]), method=st.sampled_from(["exact", "wilson"])),
                    st.none() | st.just(CaseMix()), st.none() | st.just(Improvement(min_baseline_responses=1)),
                    st.integers(0, 1_000), st.integers(0, 5))


@PROPS
@given(st.data(), JUDGING)
def test_an_exemption_diverts_nothing(data, s: Scheme) -> None:  # type: ignore[no-untyped-def]
    w = World()
    for p in ("RJ1", "RRV", "RA7"):
        for c in data.draw(st.lists(st.sampled_from([1, 4, 5, 5, 6, None]), max_size=30)):
            w.add(p, c, amount=data.draw(st.integers(1, 2_000_000)))
    r = w.settle(s, "RJ1", exemption=EXEMPT)
    assert r.exempted and r.exemption_reason == EXEMPT.reason and r.diverted_pence == 0
    assert all(x.released_pence == x.episode.at_risk_pence for x in r.lines)
    assert not r.gate_applied and not r.min_sample_applied and r.credit_pence == 0
    if r.lines:
        assert "exempted for extraordinary circumstances by regional-director" in r.lines[0].steps[3]
    check_money(r)


def test_weighted_signal_combines_fft_and_prom() -> None:
    assert judgement.weighted_signal(Fraction(1, 5), None, fft_weight_bps=7_000, prom_weight_bps=3_000) == Fraction(1, 5)
    assert judgement.weighted_signal(Fraction(1, 5), Fraction(3, 5), fft_weight_bps=10_000, prom_weight_bps=0) == Fraction(1, 5)
    # 70% of 20% negative + 30% of (1 - 60% improved) = 0.14 + 0.12
    assert judgement.weighted_signal(Fraction(1, 5), Fraction(3, 5), fft_weight_bps=7_000, prom_weight_bps=3_000) == Fraction(26, 100)
    w = ordinary_month()
    s = scheme(signals=Signals(fft_weight_bps=7_000, prom_weight_bps=3_000))
    plain = w.settle(PLAIN, "RJ1").diverted_pence
    # Outcomes worse than experience (60% improved, 40% not): the combined signal is above the FFT
    # share, and a PROM figure never adds to what the patients' own answers decided.
    ctx = JudgementContext(PERIOD, w.context(s).counts, prom_improved={("RJ1", "ohs"): (30, 50)})
    verdict = judgement.judge(s, provider_code="RJ1", region_code="Y56", context=ctx)
    assert verdict.signal == Fraction(7, 10) * Fraction(7, 40) + Fraction(3, 10) * Fraction(2, 5)
    assert verdict.diverts and verdict.casemix_factor == 1 and verdict.signal_factor == 1 and verdict.credit_bps == 0
    r = w.settle(s, "RJ1", context=ctx)
    assert r.diverted_pence == plain
    assert any(x.startswith("signal: FFT 17.5% negative x 7000 bps, PROM 40.0% not improved (20 of 50 eq5d5l/ohs/oks pairs)"
                            " x 3000 bps = 24.2%: outcomes no better than experience") for x in r.judgement_steps)
    # Good outcomes (48 of 50 improved) soften a poor experience month: scaled by combined / FFT share.
    ctx = JudgementContext(PERIOD, w.context(s).counts, prom_improved={("RJ1", "ohs"): (40, 42), ("RJ1", "oks"): (8, 8)})
    verdict = judgement.judge(s, provider_code="RJ1", region_code="Y56", context=ctx)
    combined = Fraction(7, 10) * Fraction(7, 40) + Fraction(3, 10) * Fraction(2, 50)
    assert verdict.signal == combined and verdict.signal_factor == combined / Fraction(7, 40) < 1
    r = w.settle(s, "RJ1", context=ctx)
    assert r.diverted_pence == math.floor(plain * combined / Fraction(7, 40)) < plain
    assert any("diversions scaled by 0.7686" in x for x in r.judgement_steps)
    # Too few pairs, or only instruments the scheme does not weigh: FFT only.
    for few in ({("RJ1", "ohs"): (29, 29)}, {("RJ1", "eq5d5l"): (50, 50)}):
        only = scheme(signals=Signals(fft_weight_bps=7_000, prom_weight_bps=3_000, prom_instruments=("ohs", "oks")))
        ctx = JudgementContext(PERIOD, w.context(only).counts, prom_improved=few)
        assert w.settle(only, "RJ1", context=ctx).diverted_pence == plain
    with pytest.raises(ValidationError):
        Signals(fft_weight_bps=5_000, prom_weight_bps=0)


def test_schemes_without_the_new_rules_settle_as_before_with_or_without_a_context() -> None:
    w = ordinary_month()
    w.many("RJ1", {4: 9, 5: 30})
    for s in (PLAIN, scheme(cap_bps=300, min_responses_per_period=30)):
        bare = w.settle(s, "RJ1", context=None)
        full = w.settle(s, "RJ1", context=w.context(GATED))
        assert lines_of(bare) == lines_of(full) and [x.steps for x in bare.lines] == [x.steps for x in full.lines]
        assert not bare.gate_applied and bare.benchmark_pct is None and bare.credit_pence == 0 and not bare.exempted


@st.composite
def replay_worlds(draw):  # type: ignore[no-untyped-def]
    payments, feedback = [], []
    for i in range(draw(st.integers(1, 40))):
        provider, _, icb = draw(st.sampled_from(PROVIDERS[:4]))
        month = draw(st.sampled_from([date(2025, 9, 1), date(2026, 9, 1)]))
        activity = month + timedelta(days=draw(st.integers(0, 27)))
        payments.append(PaymentRequested(
            payment_id=f"pay-{i}", episode_id=f"ep-{i}", commissioner_code=icb, provider_code=provider,
            service_type=draw(st.sampled_from(SETTINGS)), activity_date=activity, amount_pence=draw(st.integers(1, 5_000_000)),
            age_band=draw(st.sampled_from([*AGE_BANDS, None])), imd_decile=draw(st.sampled_from([*range(1, 11), None]))))
        code = draw(st.sampled_from([1, 2, 3, 4, 5, 5, 6, None]))
        if code is not None:
            feedback.append(FeedbackReceived(
                submission_id=f"s-{i}", episode_id=f"ep-{i}", provider_code=provider, patient_pseudonym="a" * 64,
                instrument="fft", authored_at=datetime(activity.year, activity.month, activity.day, 9, tzinfo=timezone.utc)
                + timedelta(days=draw(st.integers(0, 60))), fft_answer=code))
    return payments, feedback


@PROPS
@given(replay_worlds(), JUDGING, st.sets(st.sampled_from([p for p, _, _ in PROVIDERS[:4]])), st.sampled_from(domain.HOLD_MODELS))
def test_held_is_released_plus_diverted_per_episode_provider_and_fund(world, s: Scheme, exempt, model) -> None:  # type: ignore[no-untyped-def]
    payments, feedback = world
    exemptions = {(p, PERIOD): Exemption(p, PERIOD, "storm", "director", datetime(2026, 10, 1, tzinfo=timezone.utc))
                  for p in exempt}
    r = replay(payments, feedback, SchemeBook([s.model_copy(update={"effective_from": date(2025, 1, 1)})]), REF,
               hold_model=model, exemptions=exemptions)
    by_region: dict[str, int] = defaultdict(int)
    for rep in r.reports:
        check_money(rep)
        by_region[rep.region_code] += rep.diverted_pence
        if (rep.provider_code, rep.period) in exemptions:
            assert rep.exempted and rep.diverted_pence == 0
        mine = [t for t in r.transfers if t.cause.provider_code == rep.provider_code and t.cause.period == rep.period]
        balances, pending = apply_transfers(mine)
        assert pending == {}
        billed = sum(p.amount_pence for p in payments if p.provider_code == rep.provider_code
                     and domain.period_of(p.activity_date) == rep.period)  # with episodes paid in full (nothing at risk)
        assert balances.get(f"provider:{rep.provider_code}", 0) == billed - rep.diverted_pence
    b = r.balances_pence
    assert sum(b.values()) == 0
    for region, diverted in by_region.items():
        assert b.get(f"fund:{region}", 0) == diverted
    assert -sum(v for k, v in b.items() if k.startswith("commissioner:")) == sum(p.amount_pence for p in payments)


# ---------------------------------------------------------------------------------------------
# Limits as counts
# ---------------------------------------------------------------------------------------------
@PROPS
@given(st.integers(0, 400), st.fractions(0, 1, max_denominator=1000), st.sampled_from(["95", "99.8"]))
def test_limit_counts_are_the_exact_tests(n, p0, level) -> None:  # type: ignore[no-untyped-def]
    up = judgement.upper_limit_count(n, p0, level, "exact")
    low = judgement.lower_limit_count(n, p0, level, "exact")
    assert 0 <= up <= n and -1 <= low <= n
    c = judgement.COVERAGE[level]
    for k in {0, max(0, low), low + 1, up, min(n, up + 1), n} - {-1}:
        if k <= n:
            assert (k > up) == pr.is_above_upper_limit(k, n, float(p0), c, "exact")
            assert (k <= low) == pr.is_below_lower_limit(k, n, float(p0), c, "exact")


# ---------------------------------------------------------------------------------------------
# The request's case-mix fields, intake, and the handlers (exemption; context computed per unit)
# ---------------------------------------------------------------------------------------------
def req(n: int, **kw: Any) -> PaymentRequested:
    body: dict[str, Any] = {"payment_id": f"pay-{n}", "episode_id": f"ep-{n}", "commissioner_code": "QWE",
                            "provider_code": "RJ1", "service_type": "maternity", "activity_date": ACTIVITY,
                            "amount_pence": 100_000}
    return PaymentRequested.model_validate({**body, **kw})


def test_case_mix_fields_are_optional_validated_and_absent_when_not_sent() -> None:
    old = ('{"payment_id":"pay-1","episode_id":"ep-1","commissioner_code":"QWE","provider_code":"RJ1",'
           '"service_type":"maternity","activity_date":"2026-09-10","amount_pence":100000}')
    assert req(1).model_dump_json() == old  # a request from before the fields: the same bytes, the same fingerprint
    assert req(1, age_band="75+", imd_decile=1).model_dump_json() == old[:-1] + ',"age_band":"75+","imd_decile":1}'
    assert PaymentRequested.model_validate_json(old) == req(1)
    for bad in ({"age_band": "80+"}, {"age_band": "75"}, {"imd_decile": 0}, {"imd_decile": 11}, {"imd_decile": "3"},
                {"imd_decile": True}, {"postcode": "LS1 1AA"}):
        with pytest.raises(ValidationError):
            req(1, **bad)


async def test_intake_carries_the_fields_and_a_changed_field_is_a_conflict() -> None:
    book = SchemeBook([GATED.model_copy(update={"scope": Scope(providers=("RJ1", "RRV"))})])
    fake = FakePayments(book=book, ref=REF, today=TODAY)
    out = await fake.handlers.accept_payments([AcceptPayment(req(1, age_band="45-64", imd_decile=2), "c"),
                                               AcceptPayment(req(2), "c")])
    assert [o.status for o in out] == ["created", "created"]  # type: ignore[union-attr]
    e1, e2 = fake.state.episodes["ep-1"].row.episode, fake.state.episodes["ep-2"].row.episode
    assert (e1.age_band, e1.imd_decile, e2.age_band, e2.imd_decile) == ("45-64", 2, None, None)
    again = await fake.handlers.accept_payments([AcceptPayment(req(1, age_band="45-64", imd_decile=2), "c"),
                                                 AcceptPayment(req(2, imd_decile=9), "c")])
    assert again[0].status == "duplicate"  # type: ignore[union-attr]
    assert "imd_decile" in str(again[1])


def fb(sid: str, episode: int, code: int, provider: str = "RJ1") -> FeedbackReceived:
    return FeedbackReceived(submission_id=sid, episode_id=f"ep-{episode}", provider_code=provider, patient_pseudonym="b" * 64,
                            instrument="fft", authored_at=datetime(2026, 9, 12, 9, tzinfo=timezone.utc), fft_answer=code)


async def gated_fake() -> FakePayments:
    """RJ1: 3 negative of 12; RRV: 6 of 60 (national 15%): RJ1's month is bad but ordinary."""
    book = SchemeBook([GATED.model_copy(update={"scope": Scope(providers=("RJ1", "RRV"))})])
    fake = FakePayments(book=book, ref=REF, today=TODAY)
    reqs, answers = [], []
    for i in range(72):
        provider, icb = ("RJ1", "QWE") if i < 12 else ("RRV", "QMJ")
        reqs.append(AcceptPayment(req(i, provider_code=provider, commissioner_code=icb), "c"))
        bad = i < 3 or 12 <= i < 18
        answers.append(fb(f"s-{i}", i, 5 if bad else 1, provider))
    await fake.handlers.accept_payments(reqs)
    await fake.handlers.record_answers(answers)
    return fake


async def test_settlement_reads_the_context_for_a_judging_scheme_and_keeps_an_ordinary_month() -> None:
    fake = await gated_fake()
    reports = await fake.handlers.run_settlement(RunSettlement(period=PERIOD, run_by="t", correlation_id="c"))
    by = {r["provider_code"]: r for r in reports}
    assert by["RJ1"]["gate_applied"] and by["RJ1"]["gate_opened"] is False and by["RJ1"]["diverted_pence"] == 0
    assert by["RRV"]["gate_opened"] is False and by["RRV"]["benchmark_pct"] == 12.5
    assert fake.calls["judgement_counts"] == 2 and fake.calls["exemption_of"] == 2  # per unit when none is passed
    steps = fake.state.episodes["ep-0"].decision["steps"]  # type: ignore[index]
    assert any(s.startswith("gate: 3 negative of 12 (25.0%) is within the 99.8% exact limit") for s in steps)


async def test_a_context_passed_in_is_used_as_is() -> None:
    fake = await gated_fake()
    ctx = await fake.uow.run(lambda tx: settlement.load_context(tx, PERIOD, fake.handlers.book.schemes))
    assert set(ctx.counts) == {(PERIOD, 56)} and fake.calls["judgement_counts"] == 1
    units = await fake.uow.run(lambda tx: tx.held_units(PERIOD, None, None))
    cmd = RunSettlement(period=PERIOD, run_by="t", correlation_id="c")
    s = fake.handlers.book.schemes[0]
    summaries = [await fake.uow.run(lambda tx, u=u: settlement.settle_unit(tx, u, s, cmd, ctx)) for u in units]
    assert fake.calls["judgement_counts"] == 1 and all(x and x["gate_opened"] is False for x in summaries)


async def test_an_exempted_provider_period_diverts_nothing_and_says_why() -> None:
    fake = await gated_fake()
    fake.handlers.book = SchemeBook([PLAIN.model_copy(update={"scope": Scope(providers=("RJ1", "RRV"))})])
    for i in range(72):  # plain scheme governs now: re-label the stored episodes
        rec = fake.state.episodes[f"ep-{i}"]
        rec.row = rec.row._replace(episode=domain.Episode(**{**vars(rec.row.episode), "scheme_id": "tt"}))
    exemption, changed = await fake.handlers.exempt(provider_code="RJ1", period=PERIOD, reason="cyber attack on the EPR",
                                                    exempted_by="national-director")
    assert changed and exemption.exempted_at == fake.now
    same, changed = await fake.handlers.exempt(provider_code="RJ1", period=PERIOD, reason="cyber attack on the EPR",
                                               exempted_by="national-director")
    assert not changed and same == exemption
    with pytest.raises(Refused, match="already exempted"):
        await fake.handlers.exempt(provider_code="RJ1", period=PERIOD, reason="other", exempted_by="someone-else")
    with pytest.raises(InputError):
        await fake.handlers.exempt(provider_code="ZZZ", period=PERIOD, reason="x", exempted_by="d")
    with pytest.raises(InputError):
        await fake.handlers.exempt(provider_code="RJ1", period="2026-13", reason="x", exempted_by="d")
    with pytest.raises(InputError):
        await fake.handlers.exempt(provider_code="RJ1", period=PERIOD, reason="  ", exempted_by="d")
    reports = await fake.handlers.run_settlement(RunSettlement(period=PERIOD, run_by="t", correlation_id="c"))
    by = {r["provider_code"]: r for r in reports}
    assert by["RJ1"]["exempted"] and by["RJ1"]["diverted_pence"] == 0 and by["RJ1"]["released_pence"] == 12 * 10_000
    assert by["RRV"]["diverted_pence"] == 6 * 10_000 and not by["RRV"]["exempted"]
    steps = fake.state.episodes["ep-0"].decision["steps"]  # type: ignore[index]
    assert any("exempted for extraordinary circumstances by national-director" in s and "cyber attack" in s for s in steps)
    with pytest.raises(Refused, match="has settled"):
        await fake.handlers.exempt(provider_code="RRV", period=PERIOD, reason="too late", exempted_by="d")


@given(st.integers(0, 200), st.integers(1, 200), st.integers(0, 200), st.integers(0, 200), st.integers(0, 10_000))
def test_outcomes_only_ever_soften_the_diversions(bad: int, n: int, improved: int, pairs: int, prom_bps: int) -> None:
    """signal_factor is in [0, 1]; it is 1 without a PROM weight; better outcomes never scale less."""
    fft = Fraction(min(bad, n), n)
    improved = min(improved, pairs)
    share = Fraction(improved, pairs) if pairs else None
    combined = judgement.weighted_signal(fft, share, fft_weight_bps=10_000 - prom_bps, prom_weight_bps=prom_bps)
    factor = judgement.signal_factor(fft, combined)
    assert 0 <= factor <= 1
    if prom_bps == 0 or share is None:
        assert factor == 1
    if share is not None and improved < pairs:  # one more patient improved: never a larger factor
        better = judgement.weighted_signal(fft, Fraction(improved + 1, pairs), fft_weight_bps=10_000 - prom_bps,
                                           prom_weight_bps=prom_bps)
        assert judgement.signal_factor(fft, better) <= factor
