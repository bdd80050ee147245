"""Trial schemes: versioned configuration files (TOML) validated on load.

A scheme says which episodes it covers (scope, effective dates), how much of each payment is at
risk, how each answer releases or diverts it, and the safeguards (minimum sample, cap, appeals).
Defaults and why they were chosen are documented on each field and in README.md.
"""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.contracts import FftAnswer, IcbCode, OdsCode, PatientChoice, RegionCode, ServiceType
from shared.reference import ReferenceData


class SchemeError(ValueError):
    """A scheme file that cannot be used; the message names the file and the field."""


class Scope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # An empty list means "any". Codes are checked for shape here and against the deployment's
    # reference data when the folder is loaded (check_scope), so a typo cannot silently take a
    # provider out of the trial.
    regions: tuple[RegionCode, ...] = ()
    commissioners: tuple[IcbCode, ...] = ()
    providers: tuple[OdsCode, ...] = ()
    service_types: tuple[ServiceType, ...] = ()

    def covers(self, *, region: str, commissioner: str, provider: str, service_type: str) -> bool:
        return all(
            not allowed or value in allowed
            for allowed, value in (
                (self.regions, region),
                (self.commissioners, commissioner),
                (self.providers, provider),
                (self.service_types, service_type),
            )
        )


class FftRelease(BaseModel):
    """Share of the at-risk amount released to the provider for each FFT answer, in bps."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    very_good: int = Field(default=10_000, ge=0, le=10_000)
    good: int = Field(default=10_000, ge=0, le=10_000)
    # FFT's own "% negative" counts only Poor and Very poor, so a neutral answer releases in full.
    neither: int = Field(default=10_000, ge=0, le=10_000)
    # Graded so the choice between two negative words is not all-or-nothing.
    poor: int = Field(default=5_000, ge=0, le=10_000)
    very_poor: int = Field(default=0, ge=0, le=10_000)
    # "Don't know" never diverts money: fixed by policy, not configurable.
    dont_know: Literal[10_000] = 10_000

    def for_answer(self, answer: FftAnswer) -> int:
        return {
            FftAnswer.VERY_GOOD: self.very_good,
            FftAnswer.GOOD: self.good,
            FftAnswer.NEITHER: self.neither,
            FftAnswer.POOR: self.poor,
            FftAnswer.VERY_POOR: self.very_poor,
            FftAnswer.DONT_KNOW: self.dont_know,
        }[answer]


CHOICE_RELEASE_BPS: dict[PatientChoice, int] = {"pay_in_full": 10_000, "hold_back": 0, "not_sure": 10_000}


# ---------------------------------------------------------------------------------------------
# Judging fairly (issue 16): each an optional table of a scheme file; absent = today's rules.
# The rules themselves are in ``judgement.py``; these are only their validated settings.
# ---------------------------------------------------------------------------------------------
Benchmark = Literal["national", "regional"]
# Funnel limits as published (Spiegelhalter 2005): 95% (about 2 SD) and 99.8% (about 3 SD), two-sided.
Level = Literal["95", "99.8"]
LimitMethod = Literal["exact", "wilson"]
# What counts as a bad answer, and over which answers (see judgement.MEASURES):
# - fft_negative: Poor + Very poor over the answers with an opinion (Don't know left out);
# - fft_negative_all: Poor + Very poor over every FFT answer, Don't know included (the FFT
#   publication's own "% negative");
# - fft_not_positive: Neither + Poor + Very poor over the answers with an opinion.
Measure = Literal["fft_negative", "fft_negative_all", "fft_not_positive"]
CaseMixFactor = Literal["service_type", "age_band", "imd_decile"]


class Gate(BaseModel):
    """Diversions apply only when the provider-period's measure is worse than the benchmark beyond
    the funnel limit for its number of responses (NHS Best Practice Tariffs pay hip and knee
    providers unless their outcomes are significantly below the national figure; PROM outliers
    are judged on 95% / 99.8% funnels)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # The same period's figure over every provider (national) or the provider's region's.
    benchmark: Benchmark = "national"
    # 99.8%: a provider is called worse than the benchmark only at about 3 SD, 1 in 1,000 by
    # chance for a provider exactly at the benchmark; 95% calls 1 in 40 ordinary providers worse.
    limit: Level = "99.8"
    # exact: the exact one-sided binomial test (right for small numbers); wilson: the Wilson score
    # limits p0 +- z sqrt(p0 (1 - p0) / n) as UKHSA Fingertips draws them.
    method: LimitMethod = "exact"


class CaseMix(BaseModel):
    """Indirect standardisation of the expected measure by the episodes' setting, age band and
    deprivation decile (the national PROMs programme adjusts for case mix)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    by: tuple[CaseMixFactor, ...] = ("service_type", "age_band", "imd_decile")
    # An episode without an age band or decile: "coarser" rates it by the stratum of the factors
    # it has (a maternity episode of unknown age by maternity's rate); "overall" by the overall
    # benchmark rate (neutral: neither credits nor penalises). Either way the report counts them.
    unknown: Literal["coarser", "overall"] = "coarser"
    # A stratum with fewer reference responses has no stable rate of its own: its episodes are
    # rated by the overall benchmark rate (shared/stats/casemix.py's fallback).
    min_records_per_stratum: int = Field(default=20, ge=1, le=100_000)
    # The reference population; None: the gate's benchmark, else national.
    benchmark: Benchmark | None = None

    @field_validator("by")
    @classmethod
    def _factors(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("name at least one factor (service_type, age_band, imd_decile)")
        if len(set(v)) != len(v):
            raise ValueError("each factor once")
        return v


class Improvement(BaseModel):
    """A provider significantly better than its own baseline period earns back a share of its
    diversions (CMS Hospital Value-Based Purchasing scores improvement on the hospital's own
    baseline as well as achievement)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # year_before: the same month a year earlier; fixed: ``baseline_period``.
    baseline: Literal["year_before", "fixed"] = "year_before"
    baseline_period: str | None = Field(default=None, pattern=r"^20[0-9]{2}-(0[1-9]|1[0-2])$")
    method: LimitMethod = "exact"
    # 95%: credit returns money to a provider, so a lower bar than the gate's is acceptable.
    level: Level = "95"
    # Half of the period's diversions back: improvement is rewarded without cancelling the signal.
    credit_bps: int = Field(default=5_000, ge=0, le=10_000)
    # A baseline with fewer responses is too noisy to improve on: no credit.
    min_baseline_responses: int = Field(default=30, ge=1, le=100_000)

    @model_validator(mode="after")
    def _baseline(self) -> "Improvement":
        if (self.baseline == "fixed") != (self.baseline_period is not None):
            raise ValueError('baseline_period is required with baseline = "fixed", and only then')
        return self


PromInstrument = Literal["eq5d5l", "ohs", "oks"]


class Signals(BaseModel):
    """How experience (FFT negative share) and outcome (PROM share *not* improved) are weighted, in
    bps (``judgement.weighted_signal``). With a PROM weight, a provider-period whose patients'
    outcomes are better than its experience answers say diverts less: its diversions are scaled by
    min(1, combined signal / FFT share) (``judgement.signal_factor``). Never more: each episode's
    money moves on its own patient's answer, and a PROM figure (other patients, months after their
    operation) may soften that, never add to it. The PROM figure is the provider's pre/post pairs
    completed in the period (feedback's pairing, carried on ``feedback.received.v1``): the share
    with a health gain above 0, over the scheme's ``prom_instruments``, used only with at least
    ``min_prom_pairs`` pairs (fewer: FFT only, as noise)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fft_weight_bps: int = Field(default=10_000, ge=0, le=10_000)
    prom_weight_bps: int = Field(default=0, ge=0, le=10_000)
    prom_instruments: tuple[PromInstrument, ...] = ("eq5d5l", "ohs", "oks")
    min_prom_pairs: int = Field(default=30, ge=1, le=100_000)

    @field_validator("prom_instruments")
    @classmethod
    def _instruments(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or len(set(v)) != len(v):
            raise ValueError("one or more instruments, each once")
        return v

    @model_validator(mode="after")
    def _weights(self) -> "Signals":
        if self.fft_weight_bps + self.prom_weight_bps != 10_000:
            raise ValueError("fft_weight_bps + prom_weight_bps must be 10000")
        return self


class Review(BaseModel):
    """Provisional, then final: settling a unit writes a provisional statement (the report the
    settlement would produce) and moves no money; within ``correction_window_days`` the trust may
    query it or accept it, and an authorised reviewer may correct it; it is finalised (the money
    moves, corrections applied) once the trust accepts or the window has passed. Absent: final at
    once, as before (``review.py``, README "Judging fairly")."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # At least a day to look; at most 90 days (US VBP's exception window) so a month never stays open a quarter.
    correction_window_days: int = Field(ge=1, le=90, strict=True)


class Scheme(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme_id: str = Field(pattern=r"^[a-z0-9][a-z0-9\-]{1,62}$")
    version: int = Field(ge=1)
    title: str = Field(min_length=1, max_length=200)
    effective_from: date
    effective_to: date | None = None  # inclusive; None = open-ended
    # Higher priority wins when two schemes cover the same episode (e.g. a maternity pilot inside
    # a region-wide scheme).
    priority: int = Field(default=0, ge=0, le=1000)
    scope: Scope = Scope()
    # 10% at risk: the figure reported for the pilot design (see DOMAIN.md).
    at_risk_bps: int = Field(default=1_000, ge=0, le=10_000)
    # Patients are asked "some weeks after treatment": 8 weeks covers the contact plus reminders.
    decision_window_days: int = Field(default=56, ge=0, le=366)
    fft_release_bps: FftRelease = FftRelease()
    # The patient power question asks exactly "should the provider be paid in full?", so an
    # explicit choice is the more direct answer and overrides the FFT rating by default.
    patient_choice_overrides: bool = True
    settlement_period: Literal["monthly"] = "monthly"
    # Small numbers make noisy judgements (wards "failing" on one response). 30 responses a month
    # per provider before any diversion; HCAHPS uses 100 a year for a comparable purpose.
    min_responses_per_period: int = Field(default=30, ge=0, le=100_000)
    # The most a provider can lose in a period, as bps of its in-scope billed amount: 3%, above
    # CQUIN's 1.25-2.5% so the signal is felt, well below the 10% at risk so no provider is
    # destabilised by one bad month.
    cap_bps: int = Field(default=300, ge=0, le=10_000)
    # One decision per episode: later answers are recorded but move money only if allowed.
    allow_amendments: bool = False
    # US VBP allows 90 days to ask for an exception; 30 days keeps the monthly cycle short.
    appeal_window_days: int = Field(default=30, ge=0, le=366)
    # Judging fairly (README "Money decisions"): all absent by default, so a scheme without these
    # tables settles exactly as before.
    measure: Measure = "fft_negative"
    gate: Gate | None = None
    casemix: CaseMix | None = None
    improvement: Improvement | None = None
    signals: Signals = Signals()
    review: Review | None = None  # absent: each unit's settlement is final at once

    @field_validator("effective_to")
    @classmethod
    def _dates(cls, v: date | None, info):  # type: ignore[no-untyped-def]
        start = info.data.get("effective_from")
        if v is not None and start is not None and v < start:
            raise ValueError("effective_to must not be before effective_from")
        return v

    @model_validator(mode="after")
    def _cap_within_risk(self) -> "Scheme":
        if self.cap_bps > self.at_risk_bps:
            raise ValueError("cap_bps cannot exceed at_risk_bps (a provider cannot lose more than was at risk)")
        return self

    @model_validator(mode="after")
    def _one_benchmark(self) -> "Scheme":
        # One reference population for every rule of a scheme, so the gate and the case mix agree.
        if self.gate is not None and self.casemix is not None and self.casemix.benchmark not in (None, self.gate.benchmark):
            raise ValueError("casemix.benchmark must be the gate's benchmark (or left out)")
        return self

    @property
    def key(self) -> str:
        return f"{self.scheme_id}@{self.version}"

    def applies(self, *, activity_date: date, region: str, commissioner: str, provider: str, service_type: str) -> bool:
        if activity_date < self.effective_from:
            return False
        if self.effective_to is not None and activity_date > self.effective_to:
            return False
        return self.scope.covers(region=region, commissioner=commissioner, provider=provider, service_type=service_type)


def parse_scheme(text: str, source: str = "<scheme>") -> Scheme:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SchemeError(f"{source}: not valid TOML: {exc}") from exc
    except RecursionError as exc:  # tomllib recurses into nested arrays and inline tables
        raise SchemeError(f"{source}: not valid TOML: nested too deeply") from exc
    try:
        return Scheme.model_validate(data)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}" for e in exc.errors()
        )
        raise SchemeError(f"{source}: {reasons}") from exc


class SchemeBook:
    """All loaded scheme versions; picks the one governing an episode."""

    def __init__(self, schemes: list[Scheme]) -> None:
        seen: dict[str, Scheme] = {}
        for s in schemes:
            if s.key in seen:
                raise SchemeError(f"{s.key} is defined twice")
            seen[s.key] = s
        self.schemes = sorted(schemes, key=lambda s: (s.scheme_id, s.version))
        self._by_key = seen

    def get(self, scheme_id: str, version: int) -> Scheme | None:
        return self._by_key.get(f"{scheme_id}@{version}")

    def select(self, *, activity_date: date, region: str, commissioner: str, provider: str, service_type: str) -> Scheme | None:
        """Highest priority, then the latest version, of the schemes that apply; None = out of trial."""
        candidates = [
            s
            for s in self.schemes
            if s.applies(activity_date=activity_date, region=region, commissioner=commissioner, provider=provider, service_type=service_type)
        ]
        if not candidates:
            return None
        return max(candidates, key=lambda s: (s.priority, s.effective_from, s.version, s.scheme_id))


def check_scope(scheme: Scheme, ref: ReferenceData, source: str = "<scheme>") -> None:
    """Every code in the scope must exist in the reference data; the error names file and field."""
    known = {
        "regions": ref.regions,
        "commissioners": ref.commissioners,
        "providers": ref.providers,
    }
    problems = []
    for name, table in known.items():
        for i, code in enumerate(getattr(scheme.scope, name)):
            if code not in table:
                problems.append(f"scope.{name}.{i}: {code} is not in the reference data")
    if problems:
        raise SchemeError(f"{source}: " + "; ".join(problems))


def load_schemes(folder: str | Path, reference: ReferenceData | None = None) -> SchemeBook:
    """Load and validate every ``*.toml`` in ``folder``; with ``reference``, check scope codes too."""
    base = Path(folder)
    if not base.is_dir():
        raise SchemeError(f"{base}: scheme folder not found")
    files = sorted(base.glob("*.toml"))
    schemes: list[Scheme] = []
    sources: dict[str, str] = {}
    for p in files:
        scheme = parse_scheme(p.read_text(encoding="utf-8"), p.name)
        if reference is not None:
            check_scope(scheme, reference, p.name)
        if scheme.key in sources:
            raise SchemeError(f"{p.name}: {scheme.key} is defined twice (also in {sources[scheme.key]})")
        sources[scheme.key] = p.name
        schemes.append(scheme)
    return SchemeBook(schemes)
