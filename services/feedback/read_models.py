"""Feedback's read models for publication: FFT results per provider for a month or a quarter
(by setting, by mode of collection, against the previous period), a provider's FFT series by
month or ISO week, and PROM health gain for a period. SQL at the top, pure shaping below.

What counts (the rule of ``store.fft_counts``): each patient's first FFT answer per episode,
first by ``received_at`` then ``submission_id``; later ones are amendments. The answer counts in
the period its ``authored_at`` (UTC) falls in.

Suppression (NHS England's FFT publication rule, ``domain.fft_report``, generalised so that
tables published side by side cannot be subtracted from each other):
- primary: a figure from 1-4 responses is withheld (zero is shown);
- secondary, within one table: when exactly one figure of a table with a published total is
  withheld, the next smallest one is withheld too (ties: by key), as ``domain.fft_report`` does;
- across periods: a provider's quarter total (the league table) is the sum of its months (the
  provider's chart and the monthly tables), so each quarter is treated as one grid of providers
  by months whose published margins are every month's national total, every provider's quarter
  total and the quarter's national total. The secondary rule is applied to every margin until
  nothing changes (``suppress_grid``): no margin then has exactly one withheld figure in it.
- breakdowns (settings, modes, a trust's sites) are tables whose total is the provider's figure:
  the secondary rule within each; everything under a withheld provider is withheld.
What is not protected by construction, and why: weekly series are checked within each quarter
(weeks grouped by the quarter of their Thursday, as ISO weeks are) but not reconciled against
monthly figures, whose boundaries cut through weeks; tables filtered by setting are suppressed
within themselves, not against the all-settings tables. Both need linking several published
tables' cells by hand; full statistical disclosure control (cell-level linear programming) is
out of scope here.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Literal

import asyncpg

from services.feedback import domain
from shared.contracts import FftAnswer
from shared.periods import first_of_next_month, period_dates, period_of

SuppressionReason = Literal["none", "primary", "secondary"]
PeriodKind = Literal["month", "quarter", "week"]
Level = Literal["trust", "site"]
NOT_RECORDED = "not_recorded"  # a breakdown's part for answers sent without a setting or mode

# Any year here: the routes accept 2000-2099 (the patterns below), and the period before 2000-01
# is 1999-12.
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_QUARTER = re.compile(r"^(\d{4})-Q([1-4])$")
_WEEK = re.compile(r"^(\d{4})-W(0[1-9]|[1-4]\d|5[0-3])$")
MONTH_PATTERN = r"^20[0-9]{2}-(0[1-9]|1[0-2])$"
QUARTER_PATTERN = r"^20[0-9]{2}-Q[1-4]$"
WEEK_PATTERN = r"^20[0-9]{2}-W(0[1-9]|[1-4][0-9]|5[0-3])$"
MONTH_OR_QUARTER_PATTERN = r"^20[0-9]{2}-((0[1-9]|1[0-2])|Q[1-4])$"
MONTH_OR_WEEK_PATTERN = r"^20[0-9]{2}-((0[1-9]|1[0-2])|W(0[1-9]|[1-4][0-9]|5[0-3]))$"
MAX_SERIES_MONTHS = 60
MAX_SERIES_WEEKS = 260


# ---------------------------------------------------------------------------------------------
# Periods (pure)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Period:
    """A month (YYYY-MM), a quarter (YYYY-Qn) or an ISO week (YYYY-Www): [start, end) in UTC."""

    code: str
    kind: PeriodKind
    start: date
    end: date  # exclusive


def parse_period(code: str) -> Period:
    """ValueError for anything that is not a real month, quarter or ISO week."""
    if m := _MONTH.fullmatch(code):
        year, month = int(m.group(1)), int(m.group(2))
        return Period(code, "month", *period_dates(code))
    if m := _QUARTER.fullmatch(code):
        year, q = int(m.group(1)), int(m.group(2))
        return Period(code, "quarter", date(year, 3 * q - 2, 1), first_of_next_month(date(year, 3 * q, 1)))
    if m := _WEEK.fullmatch(code):
        year, week = int(m.group(1)), int(m.group(2))
        try:
            start = date.fromisocalendar(year, week, 1)
        except ValueError:
            raise ValueError(f"{code}: {year} has no ISO week {week}") from None
        return Period(code, "week", start, start + timedelta(days=7))
    raise ValueError(f"{code!r} is not YYYY-MM, YYYY-Qn or YYYY-Www")


def quarter_code(d: date) -> str:
    return f"{d.year:04d}-Q{(d.month - 1) // 3 + 1}"


def week_code(d: date) -> str:
    year, week, _ = d.isocalendar()
    return f"{year:04d}-W{week:02d}"


def months_of(period: Period) -> list[str]:
    """The months a month or quarter covers."""
    out, d = [], period.start
    while d < period.end:
        out.append(period_of(d))
        d = first_of_next_month(d)
    return out


def quarter_of(period_code: str) -> str:
    """The quarter a month or an ISO week belongs to (a week: the quarter of its Thursday)."""
    p = parse_period(period_code)
    if p.kind == "quarter":
        return p.code
    if p.kind == "week":
        return quarter_code(p.start + timedelta(days=3))
    return quarter_code(p.start)


def previous_period(period: Period) -> Period:
    if period.kind == "month":
        return parse_period(period_of(period.start - timedelta(days=1)))
    if period.kind == "quarter":
        return parse_period(quarter_code(period.start - timedelta(days=1)))
    return parse_period(week_code(period.start - timedelta(days=7)))


def series_periods(first: Period, last: Period) -> list[str]:
    """Every month (or ISO week) from ``first`` to ``last`` inclusive."""
    out: list[str] = []
    p = first
    while p.start <= last.start:
        out.append(p.code)
        p = parse_period(period_of(p.end) if p.kind == "month" else week_code(p.end))
    return out


def utc_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    return (datetime(start.year, start.month, start.day, tzinfo=timezone.utc),
            datetime(end.year, end.month, end.day, tzinfo=timezone.utc))


# ---------------------------------------------------------------------------------------------
# SQL
# ---------------------------------------------------------------------------------------------
# The first FFT answer per episode and patient (store.fft_counts' rule), found by looking for an
# earlier one through the (episode_id, patient_pseudonym) index instead of ranking every FFT
# answer ever stored; only answers authored in the window are read.
_FIRST_FFT = """
SELECT {bucket} AS bucket, s.provider_code, s.setting, s.collection_mode, (s.answers->>'fft_answer')::int AS answer,
       count(*) AS n
  FROM submissions s
 WHERE s.instrument = 'fft' AND s.authored_at >= $1 AND s.authored_at < $2
   AND ($3::text IS NULL OR s.setting = $3)
   AND NOT EXISTS (SELECT 1 FROM submissions p
                    WHERE p.episode_id = s.episode_id AND p.patient_pseudonym = s.patient_pseudonym
                      AND p.instrument = 'fft' AND (p.received_at, p.submission_id) < (s.received_at, s.submission_id))
 GROUP BY 1, 2, 3, 4, 5
"""
_BUCKETS = {
    "month": "to_char(s.authored_at AT TIME ZONE 'UTC', 'YYYY-MM')",
    "week": "to_char(s.authored_at AT TIME ZONE 'UTC', 'IYYY-\"W\"IW')",
}


@dataclass(frozen=True)
class CountRow:
    bucket: str  # YYYY-MM or YYYY-Www
    provider_code: str  # as submitted: a trust or one of its sites
    setting: str | None
    collection_mode: str | None
    answer: FftAnswer
    n: int


async def first_fft_counts(conn: asyncpg.Connection, start: date, end: date, *, bucket: Literal["month", "week"],
                           setting: str | None = None) -> list[CountRow]:
    """Counts of first FFT answers authored in [start, end), by bucket, provider code, setting,
    mode and answer."""
    lo, hi = utc_bounds(start, end)
    rows = await conn.fetch(_FIRST_FFT.format(bucket=_BUCKETS[bucket]), lo, hi, setting)
    return [CountRow(r["bucket"], r["provider_code"], r["setting"], r["collection_mode"], FftAnswer(r["answer"]), int(r["n"]))
            for r in rows]


async def fft_month_bounds(conn: asyncpg.Connection, provider_codes: Sequence[str] | None) -> tuple[str | None, str | None]:
    """The first and the latest month (UTC) with an FFT answer, over every provider (None) or
    these codes; each bound is one index probe, not a scan."""
    if provider_codes is None:
        first, latest = await conn.fetchrow(
            "SELECT (SELECT min(authored_at) FROM submissions WHERE instrument = 'fft'),"
            " (SELECT max(authored_at) FROM submissions WHERE instrument = 'fft')")
    else:
        first, latest = await conn.fetchrow(
            "SELECT min(lo), max(hi) FROM unnest($1::text[]) AS c(code),"
            " LATERAL (SELECT min(authored_at) AS lo, max(authored_at) AS hi FROM submissions"
            "          WHERE instrument = 'fft' AND provider_code = c.code) b", list(provider_codes))
    as_month = (lambda t: None if t is None else period_of(t.astimezone(timezone.utc).date()))
    return as_month(first), as_month(latest)


async def prom_pairs_in(conn: asyncpg.Connection, start: date, end: date) -> list[tuple]:
    """(provider, instrument, procedure, pre, post, pre profile, post profile) of PROM pairs completed
    in [start, end): the post-operative answer authored in the window (its provider is the pair's)."""
    lo, hi = utc_bounds(start, end)
    rows = await conn.fetch(
        "SELECT p.provider_code, p.instrument, p.procedure, p.pre_score, p.post_score, p.pre_profile, p.post_profile"
        " FROM prom_pairs p"
        " JOIN submissions s ON s.submission_id = p.post_submission_id WHERE s.authored_at >= $1 AND s.authored_at < $2",
        lo, hi)
    return [(r["provider_code"], r["instrument"], r["procedure"], r["pre_score"], r["post_score"], r["pre_profile"],
             r["post_profile"]) for r in rows]


# ---------------------------------------------------------------------------------------------
# Suppression (pure)
# ---------------------------------------------------------------------------------------------
def _threshold_reason(n: int) -> SuppressionReason:
    return "primary" if 0 < n < domain.SUPPRESSION_THRESHOLD else "none"


def _hide_next_smallest(values: Mapping[str, int], hidden: Mapping[str, SuppressionReason]) -> str | None:
    """The key to withhold next when exactly one non-zero figure of a table is withheld: the
    smallest visible non-zero one (ties by key), as domain.fft_report chooses; None otherwise."""
    withheld = [k for k, n in values.items() if n and hidden.get(k, "none") != "none"]
    if len(withheld) != 1:
        return None
    candidates = sorted((n, k) for k, n in values.items() if n and hidden.get(k, "none") == "none")
    return candidates[0][1] if candidates else None


@dataclass(frozen=True)
class GridSuppression:
    """What one quarter's grid (providers by months) withholds: each cell, each provider's total."""

    cells: dict[tuple[str, str], SuppressionReason]
    totals: dict[str, SuppressionReason]

    def cell(self, row: str, column: str) -> SuppressionReason:
        return self.cells.get((row, column), "none")

    def total(self, row: str) -> SuppressionReason:
        return self.totals.get(row, "none")


def suppress_grid(responses: Mapping[tuple[str, str], int], rows: Iterable[str], columns: Sequence[str]) -> GridSuppression:
    """Primary and secondary suppression of a grid whose published margins are each column's
    total over rows, each row's total over the columns and the grand total (see module docstring).

    Repeats until stable; each pass withholds at least one more figure or stops, so it ends.
    A row whose total is withheld to protect another row always has a withheld cell as well,
    or its total could be added up from its cells."""
    rows = sorted(set(rows))
    value = {(r, c): int(responses.get((r, c), 0)) for r in rows for c in columns}
    totals = {r: sum(value[(r, c)] for c in columns) for r in rows}
    cells: dict[tuple[str, str], SuppressionReason] = {k: _threshold_reason(n) for k, n in value.items()}
    row_totals: dict[str, SuppressionReason] = {r: _threshold_reason(n) for r, n in totals.items()}
    changed = True
    while changed:
        changed = False
        for c in columns:  # each column's total (a month's national figure) is published
            col = {r: value[(r, c)] for r in rows}
            pick = _hide_next_smallest(col, {r: cells[(r, c)] for r in rows})
            if pick is not None:
                cells[(pick, c)], changed = "secondary", True
        for r in rows:  # each published row total (a provider's quarter) is the sum of its cells
            if row_totals[r] != "none":
                continue
            pick = _hide_next_smallest({c: value[(r, c)] for c in columns}, {c: cells[(r, c)] for c in columns})
            if pick is not None:
                cells[(r, pick)], changed = "secondary", True
        pick_row = _hide_next_smallest(totals, row_totals)  # the grand total is published
        if pick_row is not None:
            row_totals[pick_row], changed = "secondary", True
            if not any(cells[(pick_row, c)] != "none" and value[(pick_row, c)] for c in columns):
                smallest = min((value[(pick_row, c)], c) for c in columns if value[(pick_row, c)])
                cells[(pick_row, smallest[1])] = "secondary"
    return GridSuppression({k: v for k, v in cells.items() if v != "none"}, {k: v for k, v in row_totals.items() if v != "none"})


# ---------------------------------------------------------------------------------------------
# Figures (pure)
# ---------------------------------------------------------------------------------------------
Tally = dict[FftAnswer, int]


def _add(tally: Tally, answer: FftAnswer, n: int) -> None:
    tally[answer] = tally.get(answer, 0) + n


@dataclass(frozen=True)
class FftFigures:
    """A provider's (or a part's) FFT figures for a period; None marks a withheld value.

    Primary suppression withholds everything; secondary withholds the counts and keeps the
    percentages (whole numbers, rounded half up), as NHS England publishes them."""

    responses: int | None
    counts: dict[str, int] | None  # very_good, good, neither, poor, very_poor, dont_know
    positive: int | None
    negative: int | None
    pct_positive: int | None
    pct_negative: int | None
    suppression: SuppressionReason


def figures(tally: Mapping[FftAnswer, int], suppression: SuppressionReason) -> FftFigures:
    full = {name: int(tally.get(answer, 0)) for answer, name in domain.FFT_COUNT_NAMES.items()}
    n = sum(full.values())
    positive = full["very_good"] + full["good"]
    negative = full["poor"] + full["very_poor"]
    if suppression == "primary":
        return FftFigures(None, None, None, None, None, None, "primary")
    pct_pos, pct_neg = domain.pct(positive, n), domain.pct(negative, n)
    if suppression == "secondary":
        return FftFigures(None, None, None, None, pct_pos, pct_neg, "secondary")
    return FftFigures(n, full, positive, negative, pct_pos, pct_neg, "none")


@dataclass(frozen=True)
class Part:
    """One part of a breakdown (a setting, a mode of collection, a site)."""

    key: str
    figures: FftFigures


def breakdown(parts: Mapping[str, Tally], parent: SuppressionReason) -> list[Part]:
    """A breakdown of one provider's figure, suppressed within itself (domain.fft_report: its
    total is the provider's figure); under a primary-withheld provider everything is withheld,
    under a secondary-withheld one every count is (its parts' counts would add up to it)."""
    if parent != "none":
        return [Part(k, figures(t, "primary" if parent == "primary" or _threshold_reason(sum(t.values())) == "primary"
                                else "secondary")) for k, t in sorted(parts.items())]
    rows, _total = domain.fft_report({k: dict(t) for k, t in parts.items()})
    return [Part(r.provider_code, figures(parts[r.provider_code], r.suppression)) for r in rows]


@dataclass(frozen=True)
class PreviousFigures:
    period: str
    responses: int | None
    pct_positive: int | None
    suppression: SuppressionReason


@dataclass(frozen=True)
class ProviderFigures:
    provider_code: str  # a trust (level=trust) or a site or trust code (level=site)
    trust_code: str
    region_code: str | None
    figures: FftFigures
    by_setting: list[Part]
    by_mode: list[Part]
    previous: PreviousFigures | None = None


@dataclass(frozen=True)
class Publication:
    period: str
    kind: PeriodKind
    level: Level
    setting: str | None
    providers: list[ProviderFigures]
    total: FftFigures  # over every provider the caller sees; never suppressed (as published)
    total_by_setting: list[Part] = field(default_factory=list)
    total_by_mode: list[Part] = field(default_factory=list)


@dataclass(frozen=True)
class Organisation:
    """How a submitted provider code sits in the reference data."""

    trust_code: str
    region_code: str | None


def publish(rows: Sequence[CountRow], period: Period, *, level: Level, setting: str | None,
            organisation: Callable[[str], Organisation], visible: Callable[[str], bool]) -> Publication:
    """The publication of a month or a quarter from the count rows of its whole quarter (or
    quarters), keeping only what ``visible`` lets the caller see: suppression is computed over
    exactly that (README "Threat model": recomputed within what a token sees)."""
    if period.kind == "week":
        raise ValueError("publications are by month or quarter")
    months = months_of(period)
    quarters = sorted({quarter_of(m) for m in months})
    mine = [r for r in rows if visible(r.provider_code)]
    trust_of = {r.provider_code: organisation(r.provider_code) for r in mine}
    # The grid: providers (trusts) by month, one per quarter; its verdicts decide each trust.
    by_trust_month: dict[tuple[str, str], int] = defaultdict(int)
    for r in mine:
        by_trust_month[(trust_of[r.provider_code].trust_code, r.bucket)] += r.n
    trusts = sorted({o.trust_code for o in trust_of.values()})
    verdict: dict[str, SuppressionReason] = {}
    for q in quarters:
        q_months = months_of(parse_period(q))
        grid = suppress_grid({k: v for k, v in by_trust_month.items() if k[1] in q_months}, trusts, q_months)
        for t in trusts:
            verdict[t] = grid.total(t) if period.kind == "quarter" else grid.cell(t, period.code)
    in_period = [r for r in mine if r.bucket in months]
    tally: dict[str, Tally] = defaultdict(dict)
    settings: dict[str, dict[str, Tally]] = defaultdict(lambda: defaultdict(dict))
    modes: dict[str, dict[str, Tally]] = defaultdict(lambda: defaultdict(dict))
    sites: dict[str, dict[str, Tally]] = defaultdict(lambda: defaultdict(dict))
    total: Tally = {}
    total_settings: dict[str, Tally] = defaultdict(dict)
    total_modes: dict[str, Tally] = defaultdict(dict)
    for r in in_period:
        t = trust_of[r.provider_code].trust_code
        _add(tally[t], r.answer, r.n)
        _add(settings[t][r.setting or NOT_RECORDED], r.answer, r.n)
        _add(modes[t][r.collection_mode or NOT_RECORDED], r.answer, r.n)
        _add(sites[t][r.provider_code], r.answer, r.n)
        _add(total, r.answer, r.n)
        _add(total_settings[r.setting or NOT_RECORDED], r.answer, r.n)
        _add(total_modes[r.collection_mode or NOT_RECORDED], r.answer, r.n)
    region_of = {o.trust_code: o.region_code for o in trust_of.values()}
    providers: list[ProviderFigures] = []
    for t in trusts:
        reason = verdict.get(t, "none")
        region = region_of.get(t)
        if level == "trust":
            providers.append(ProviderFigures(t, t, region, figures(tally.get(t, {}), reason),
                                             breakdown(settings.get(t, {}), reason), breakdown(modes.get(t, {}), reason)))
            continue
        for part in breakdown(sites.get(t, {}), reason):  # a trust's sites are a breakdown of it
            providers.append(ProviderFigures(part.key, t, region, part.figures, [], []))
    return Publication(period.code, period.kind, level, setting, providers, figures(total, "none"),
                       breakdown(total_settings, "none"), breakdown(total_modes, "none"))


def with_previous(current: Publication, previous: Publication) -> Publication:
    """``current`` with each provider's figures for the previous period beside them."""
    before = {p.provider_code: p.figures for p in previous.providers}
    rows = []
    for p in current.providers:
        f = before.get(p.provider_code)
        prev = PreviousFigures(previous.period, f.responses if f else 0, f.pct_positive if f else None,
                               f.suppression if f else "none")
        rows.append(ProviderFigures(p.provider_code, p.trust_code, p.region_code, p.figures, p.by_setting, p.by_mode, prev))
    return Publication(current.period, current.kind, current.level, current.setting, rows, current.total,
                       current.total_by_setting, current.total_by_mode)


@dataclass(frozen=True)
class SeriesPoint:
    period: str  # YYYY-MM or YYYY-Www
    figures: FftFigures


def provider_series(rows: Sequence[CountRow], trust: str, periods: Sequence[str], *,
                    organisation: Callable[[str], Organisation], visible: Callable[[str], bool]) -> list[SeriesPoint]:
    """One trust's figures per month (or ISO week), each suppressed as every publication of that
    period is. Months: the quarter grids over every visible provider (the same verdicts as the
    monthly tables and the league table). Weeks: primary, then the secondary rule within each
    quarter of weeks (a week belongs to the quarter of its Thursday)."""
    mine = [r for r in rows if visible(r.provider_code)]
    by_cell: dict[tuple[str, str], int] = defaultdict(int)
    tally: dict[str, Tally] = defaultdict(dict)
    for r in mine:
        t = organisation(r.provider_code).trust_code
        by_cell[(t, r.bucket)] += r.n
        if t == trust:
            _add(tally[r.bucket], r.answer, r.n)
    weekly = bool(periods) and parse_period(periods[0]).kind == "week"
    trusts = {t for t, _ in by_cell} | {trust}
    verdict: dict[str, SuppressionReason] = {}
    groups: dict[str, list[str]] = defaultdict(list)
    for p in periods:
        groups[quarter_of(p)].append(p)
    for q, members in groups.items():
        if weekly:
            grid = suppress_grid({k: v for k, v in by_cell.items() if k[0] == trust}, [trust], members)
        else:
            q_months = months_of(parse_period(q))  # the whole quarter, even where the range cuts it
            grid = suppress_grid({k: v for k, v in by_cell.items() if k[1] in q_months}, trusts, q_months)
        for p in members:
            verdict[p] = grid.cell(trust, p)
    return [SeriesPoint(p, figures(tally.get(p, {}), verdict[p])) for p in periods]
