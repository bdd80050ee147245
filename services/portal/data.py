"""From the services' JSON to the pages' view models. Pure: no HTTP, no FastAPI.

Every interval, limit and signal comes from ``shared.stats``: Wilson intervals for each
provider's % positive, Spiegelhalter's exact funnel limits around the benchmark (the national
proportion of the providers shown), the exact one-sided binomial test to place each provider
against them (``is_above_upper_limit`` / ``is_below_lower_limit``: colour by the test, not by
where the point falls against the drawn line, see shared/stats/proportions.py), and XmR charts
with Making Data Count's rules (``shared.stats.xmr``). A figure the feedback service withheld
arrives as null with a suppression reason and becomes ``views.SUPPRESSED``: it is never turned
into a number here, and nothing is computed from it (a withheld month is a gap in the XmR
chart, which is built from the published months only).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from services.portal import charts, views
from services.portal.views import SUPPRESSED, SUPPRESSED_SECONDARY
from shared.reference import ReferenceData
from shared.stats import funnel_limits, is_above_upper_limit, is_below_lower_limit, wilson_interval, xmr

FUNNEL_LIMIT_POINTS = 20
SETTING_LABELS = {
    "inpatient": "Inpatient", "a_and_e": "A&E", "outpatient": "Outpatient", "maternity": "Maternity",
    "mental_health": "Mental health", "community": "Community", "gp": "GP", "dental": "Dental",
    "ambulance": "Ambulance", "not_recorded": "Not recorded",
}
MODE_LABELS = {
    "sms": "SMS", "app": "NHS App or other app", "online": "Online", "tablet": "Tablet or kiosk", "paper": "Paper",
    "telephone": "Telephone", "other": "Other", "not_recorded": "Not recorded",
}
FFT_ANSWERS = {1: "Very good", 2: "Good", 3: "Neither good nor poor", 4: "Poor", 5: "Very poor", 6: "Don't know"}
CHOICES = {"pay_in_full": "Pay in full", "hold_back": "Hold back", "not_sure": "Not sure"}
INSTRUMENTS = {"ohs": ("Oxford Hip Score", "0 to 48, higher is better"),
               "oks": ("Oxford Knee Score", "0 to 48, higher is better"),
               "eq5d5l": ("EQ-5D-5L visual analogue scale", "0 to 100, higher is better")}
RULES = {  # the Making Data Count rule that decided a point, in words (shared/stats/spc.py's precedence)
    "astronomical": "a point beyond a process limit",
    "trend_up": "seven points in a row each higher than the last",
    "trend_down": "seven points in a row each lower than the last",
    "two_of_three": "two of three points close to a process limit",
    "shift": "seven points in a row on one side of the mean",
}
VARIATION_SIGNAL = {"special_cause_improvement": "improvement", "special_cause_concern": "concern",
                    "special_cause_neither": "neutral"}


def when(instant: Any) -> str:
    """An ISO 8601 instant as people read it: '2026-12-02T13:28:04.8Z' -> '2 December 2026, 13:28:04 UTC'."""
    try:
        t = datetime.fromisoformat(str(instant).replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return str(instant)
    return f"{t.day} {t:%B %Y}, {t:%H:%M:%S} UTC"


def name_of(ref: ReferenceData, code: str) -> str:
    if code in ref.providers:
        return ref.providers[code].name
    site = ref.sites.get(code)
    return site.name if site else code


def _suppressed(reason: str) -> views.Suppressed:
    return SUPPRESSED_SECONDARY if reason == "secondary" else SUPPRESSED


def _published(figures: Mapping[str, Any]) -> bool:
    return figures.get("suppression", "none") == "none" and figures.get("responses") is not None


# ---------------------------------------------------------------------------------------------
# League table
# ---------------------------------------------------------------------------------------------
def eligible_by_provider(eligible: Mapping[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in eligible.get("items", []):
        out[item["provider_code"]] = out.get(item["provider_code"], 0) + int(item["episodes"])
    return out


def health_gains(prom: Mapping[str, Any] | None) -> dict[str, tuple[views.HealthGain, ...]]:
    out: dict[str, list[views.HealthGain]] = {}
    for g in (prom or {}).get("groups", []):
        instrument, scale = INSTRUMENTS.get(g["instrument"], (g["instrument"], ""))
        average = None if g["suppressed"] or g["avg_health_gain"] is None else float(g["avg_health_gain"])
        out.setdefault(g["provider_code"], []).append(
            views.HealthGain(instrument, g["procedure"].replace("_", " "), int(g["pairs"]), average, scale))
    return {k: tuple(v) for k, v in out.items()}


def funnel_band(positive: int, n: int, benchmark: float) -> charts.FunnelBand:
    """Where a provider stands against the benchmark, by the exact one-sided tests (positive
    answers are good: above the upper limit is better than expected)."""
    if is_above_upper_limit(positive, n, benchmark, 0.998):
        return "high_998"
    if is_below_lower_limit(positive, n, benchmark, 0.998):
        return "low_998"
    if is_above_upper_limit(positive, n, benchmark, 0.95):
        return "high_95"
    if is_below_lower_limit(positive, n, benchmark, 0.95):
        return "low_95"
    return "within"


def funnel_curve(benchmark: float, largest_n: int, points: int = FUNNEL_LIMIT_POINTS) -> tuple[charts.FunnelLimit, ...]:
    """The 95% and 99.8% limits at ``points`` numbers of responses, spaced evenly on a log scale
    from 5 (the smallest count ever published) to a little beyond the largest provider."""
    top = max(10, math.ceil(largest_n * 1.1))
    ns = sorted({max(5, round(5 * (top / 5) ** (i / (points - 1)))) for i in range(points)})
    out = []
    for n in ns:
        lo95, hi95 = funnel_limits(n, benchmark, 0.95)
        lo998, hi998 = funnel_limits(n, benchmark, 0.998)
        out.append(charts.FunnelLimit(float(n), lo95, hi95, min(lo998, lo95), max(hi998, hi95)))
    return tuple(out)


def league_table(quarter: str, publication: Mapping[str, Any], eligible: Mapping[str, Any], prom: Mapping[str, Any] | None,
                 ref: ReferenceData, *, previous_quarter: str | None, next_quarter: str | None,
                 csv_href: str | None = None) -> views.LeagueTablePage:
    total = publication["total"]
    benchmark = (total["positive"] / total["responses"]) if total.get("responses") else 0.0
    episodes = eligible_by_provider(eligible)
    gains = health_gains(prom)
    published: list[tuple[int, int, str, dict[str, Any]]] = []
    hidden: list[views.LeagueTableRow] = []
    for row in publication["providers"]:
        code, f = row["provider_code"], row["figures"]
        if not _published(f):
            mark = _suppressed(f["suppression"])
            hidden.append(views.LeagueTableRow(code, name_of(ref, code), mark, mark, None, None, None,
                                               eligible_episodes=episodes.get(code, 0), response_rate=mark,
                                               health_gain=gains.get(code, ())))
        elif f["responses"] > 0:  # a provider with no responses this quarter has nothing to rank
            published.append((int(f["positive"]), int(f["responses"]), code, row))
    # Highest % positive first (compared as fractions, exactly); ties share a rank, then more
    # responses first, then by code.
    order = sorted(published, key=lambda t: (-t[0] / t[1], -t[1], t[2]))
    rows: list[views.LeagueTableRow] = []
    rank = 0
    for i, (x, n, code, _row) in enumerate(order):
        if i == 0 or x * order[i - 1][1] != order[i - 1][0] * n:
            rank = i + 1
        low, high = wilson_interval(x, n, 0.95)
        p = x / n
        eligible_n = episodes.get(code, 0)  # payments knows every episode the trial paid for: none is 0
        rows.append(views.LeagueTableRow(
            code, name_of(ref, code), n, p, views.Interval(min(low, p), max(high, p)), funnel_band(x, n, benchmark), rank,
            eligible_episodes=eligible_n, response_rate=(n / eligible_n) if eligible_n else None,
            health_gain=gains.get(code, ())))
    largest = max((n for _, n, _, _ in order), default=10)
    return views.LeagueTablePage(
        quarter=quarter, benchmark_proportion=benchmark, rows=tuple(rows) + tuple(sorted(hidden, key=lambda r: r.ods_code)),
        funnel_limits=funnel_curve(benchmark, largest) if order else (), previous_quarter=previous_quarter,
        next_quarter=next_quarter, csv_href=csv_href, prom_min_pairs=(prom or {}).get("min_count"))


# The national FFT publication's Trusts sheet (see services/feedback/read_api.py for what is
# matched and what is not), with Total Eligible filled in from payments' episodes.
CSV_COLUMNS = ["Period", "Setting", "Region Code", "Region Name", "Trust Code", "Trust Name", "Total Responses",
               "Total Eligible", "Response Rate", "Percentage Positive", "Percentage Negative", "Very Good", "Good",
               "Neither Good nor Poor", "Poor", "Very Poor", "Don't Know"]
WITHHELD = "*"


def league_csv(publication: Mapping[str, Any], eligible: Mapping[str, Any], ref: ReferenceData) -> Iterable[str]:
    """The quarter's rows as CSV lines; a withheld figure (and its response rate) is "*"."""
    episodes = eligible_by_provider(eligible)

    def line(values: Sequence[Any]) -> str:
        out = io.StringIO()
        csv.writer(out).writerow(values)
        return out.getvalue()

    yield line(CSV_COLUMNS)
    for row in publication["providers"]:
        code, f = row["provider_code"], row["figures"]
        region = row.get("region_code") or ""
        lead = [publication["period"], publication.get("setting") or "all", region, ref.regions.get(region, ""), code,
                name_of(ref, code)]
        n_eligible = episodes.get(code, 0)
        if not _published(f):
            yield line(lead + [WITHHELD, n_eligible, WITHHELD, WITHHELD, WITHHELD] + [WITHHELD] * 6)
            continue
        n = f["responses"]
        counts = f["counts"]
        rate = f"{n / n_eligible:.4f}" if n_eligible else ""
        pct = [f"{f['pct_positive'] / 100:.2f}" if f["pct_positive"] is not None else "",
               f"{f['pct_negative'] / 100:.2f}" if f["pct_negative"] is not None else ""]
        yield line(lead + [n, n_eligible, rate, *pct] + [counts[k] for k in ("very_good", "good", "neither", "poor",
                                                                             "very_poor", "dont_know")])


# ---------------------------------------------------------------------------------------------
# Provider page
# ---------------------------------------------------------------------------------------------
def _rule(point: Any) -> str:
    if point.astronomical:
        return RULES["astronomical"]
    if point.trend:
        return RULES["trend_up" if point.signal_direction == "up" else "trend_down"]
    if point.two_of_three:
        return RULES["two_of_three"]
    return RULES["shift"]


def fft_periods(series: Mapping[str, Any]) -> tuple[views.FftMonth, ...]:
    """The provider's months (or weeks) with the XmR chart's limits and signals, computed over
    the published periods with responses; withheld periods are gaps (and carry the limits only)."""
    points = series.get("points", [])
    values: list[float] = []
    plotted: list[int] = []
    for i, p in enumerate(points):
        f = p["figures"]
        if _published(f) and f["responses"] > 0:
            values.append(f["positive"] / f["responses"])
            plotted.append(i)
    chart = xmr(values, improvement_direction="increase")
    by_index = {plotted[k]: chart.points[k] for k in range(len(plotted))}
    # One stretch of limits (no rebasing): from the first plotted period on, the periods between
    # and after plotted ones show the same lines; before the first there is nothing to limit.
    segment = chart.segments[0] if chart.segments and chart.segments[0].has_limits else None
    first_plotted = plotted[0] if plotted else len(points)
    out = []
    for i, p in enumerate(points):
        f = p["figures"]
        pt = by_index.get(i)
        mean, lo, hi, lo2, hi2 = ((segment.mean, segment.lower_process_limit, segment.upper_process_limit,
                                   segment.lower_two_sigma, segment.upper_two_sigma)
                                  if segment and i >= first_plotted else (None,) * 5)
        if not _published(f):
            mark = _suppressed(f["suppression"])
            out.append(views.FftMonth(p["period"], mark, mark, mean, lo, hi, lo2, hi2))
            continue
        if pt is None:  # published, no responses
            out.append(views.FftMonth(p["period"], int(f["responses"]), None, mean, lo, hi, lo2, hi2))
            continue
        cause = None
        if pt.variation in VARIATION_SIGNAL:
            cause = views.SpecialCause(VARIATION_SIGNAL[pt.variation], _rule(pt))  # type: ignore[arg-type]
        if pt.mean is not None:
            mean, lo, hi, lo2, hi2 = pt.mean, pt.lower_process_limit, pt.upper_process_limit, pt.lower_two_sigma, pt.upper_two_sigma
        out.append(views.FftMonth(p["period"], int(f["responses"]), pt.value, mean, lo, hi, lo2, hi2, cause))
    return tuple(out)


def money_months(money: Mapping[str, Any]) -> tuple[views.MoneyMonth, ...]:
    return tuple(views.MoneyMonth(m["period"], int(m["at_risk_pence"]), int(m["released_pence"]), int(m["diverted_pence"]))
                 for m in money.get("months", []))


def appeal_months(money: Mapping[str, Any]) -> tuple[views.AppealMonth, ...]:
    return tuple(views.AppealMonth(m["period"], int(m["appeals_lodged"]), int(m["appeals_upheld"]),
                                   int(m["appeals_rejected"]), int(m["appealed_back_pence"]))
                 for m in money.get("months", []) if m["appeals_lodged"])


def _breakdown(parts: Sequence[Mapping[str, Any]], labels: Mapping[str, str]) -> tuple[views.BreakdownRow, ...]:
    out = []
    for part in parts:
        f = part["figures"]
        label = labels.get(part["key"], part["key"])
        if not _published(f):
            mark = _suppressed(f["suppression"])
            out.append(views.BreakdownRow(label, mark, mark))
        else:
            out.append(views.BreakdownRow(label, int(f["responses"]), f["pct_positive"]))
    return tuple(out)


def provider_quarter(quarter: str, row: Mapping[str, Any] | None, site_rows: Sequence[Mapping[str, Any]],
                     eligible_episodes: int | None, ref: ReferenceData, previous_quarter: str) -> views.ProviderQuarter:
    """The trust's quarter from the publication's trust row and its site rows."""
    if row is None:
        return views.ProviderQuarter(quarter, 0, None, previous_quarter, 0, None, eligible_episodes, None)
    f, before = row["figures"], row.get("previous") or {}
    if _published(f):
        responses: Any = int(f["responses"])
        percent: Any = f["pct_positive"]
        rate: Any = (responses / eligible_episodes) if eligible_episodes else None
    else:
        responses = percent = rate = _suppressed(f["suppression"])
    if before.get("suppression", "none") == "none" and before.get("responses") is not None:
        prev_responses: Any = int(before["responses"])
        prev_percent: Any = before.get("pct_positive")
    else:
        prev_responses = prev_percent = _suppressed(before.get("suppression", "primary"))
    sites = [{"key": f"{name_of(ref, s['provider_code'])} ({s['provider_code']})" if s["provider_code"] != s["trust_code"]
              else "The trust (no site named)", "figures": s["figures"]} for s in site_rows]
    return views.ProviderQuarter(
        quarter, responses, percent, previous_quarter, prev_responses, prev_percent, eligible_episodes, rate,
        by_setting=_breakdown(row.get("by_setting", []), SETTING_LABELS), by_mode=_breakdown(row.get("by_mode", []), MODE_LABELS),
        by_site=_breakdown(sites, {}) if len(sites) > 1 else ())


def provider_page(ods: str, ref: ReferenceData, series: Mapping[str, Any], money: Mapping[str, Any],
                  quarter: views.ProviderQuarter | None) -> views.ProviderPage:
    region = ref.providers[ods].region_code
    return views.ProviderPage(
        ods_code=ods, provider_name=ref.providers[ods].name, region_code=region, region_name=ref.regions[region],
        fft_months=fft_periods(series), money_months=money_months(money), appeals=appeal_months(money),
        interval=series.get("interval", "month"), quarter=quarter)


# ---------------------------------------------------------------------------------------------
# Region page
# ---------------------------------------------------------------------------------------------
def region_page(code: str, ref: ReferenceData, history: Mapping[str, Any], inflows: Mapping[str, Any],
                grants: Mapping[str, Any] | None = None) -> views.RegionPage:
    """``grants``: the funds service's published grants, None when it did not answer."""
    balances = tuple(views.BalancePoint(p["period"], int(p["closing_balance_pence"])) for p in history.get("points", []))
    rows = tuple(views.InflowRow(r["provider_code"], name_of(ref, r["provider_code"]), int(r["diverted_pence"]),
                                 int(r["appealed_back_pence"])) for r in inflows.get("providers", []))
    grant_rows = None if grants is None else tuple(
        views.GrantRow(g["grant_id"], g["title"], tuple((p, name_of(ref, p)) for p in g["providers"]), g["status"],
                       int(g["amount_pence"]), int(g["paid_pence"]), g["measure_status"])
        for g in grants.get("grants", []))
    return views.RegionPage(code, ref.regions[code], balances, rows, inflows["from"], inflows["to"], grant_rows,
                            more_grants=bool(grants and grants.get("next_cursor")))


# ---------------------------------------------------------------------------------------------
# Finance pages
# ---------------------------------------------------------------------------------------------
def statement(report: Mapping[str, Any], ods: str, **extra: Any) -> views.SettlementStatement:
    sid = report["settlement_id"]
    base = f"/finance/trusts/{ods}/statements/{sid}"
    return views.SettlementStatement(
        period=report["period"], scheme_id=report["scheme_id"], scheme_version=int(report["scheme_version"]),
        billed_pence=int(report["billed_pence"]), at_risk_pence=int(report["held_pence"]),
        released_pence=int(report["released_pence"]), diverted_pence=int(report["diverted_pence"]),
        responses=int(report["responses"]), minimum_sample_applied=bool(report["min_sample_applied"]),
        cap_applied=bool(report["cap_applied"]), settled_at=when(report["run_at"]), csv_href=f"{base}/episodes.csv",
        settlement_id=sid, **({"href": base} | extra))


def trust_statements(ods: str, ref: ReferenceData, page: Mapping[str, Any], next_href: str | None) -> views.TrustStatementsPage:
    return views.TrustStatementsPage(ods, name_of(ref, ods), tuple(statement(r, ods) for r in page.get("items", [])),
                                     next_page_href=next_href)


def _answer(line: Mapping[str, Any]) -> str | None:
    if line.get("instrument") == "fft" and line.get("fft_answer") in FFT_ANSWERS:
        return f"FFT: {FFT_ANSWERS[line['fft_answer']]}"
    if line.get("instrument") == "patient_power" and line.get("patient_choice") in CHOICES:
        return f"Patient choice: {CHOICES[line['patient_choice']]}"
    return None


def _decision(line: Mapping[str, Any]) -> str:
    text = line.get("basis") or "released in full"
    if line.get("appeal_status") == "upheld":
        text += f"; appeal upheld, {views.format_pence_text(int(line['appealed_back_pence']))} returned"
    elif line.get("appeal_status"):
        text += f"; appeal {line['appeal_status']}"
    return text


def statement_with_episodes(ods: str, ref: ReferenceData, body: Mapping[str, Any], next_href: str | None) -> views.TrustStatementsPage:
    lines = tuple(views.EpisodeLine(e["episode_id"], e["commissioner_code"], int(e["amount_pence"]), int(e["at_risk_pence"]),
                                    int(e["released_pence"]), int(e["diverted_pence"]), _answer(e), _decision(e))
                  for e in body.get("episodes", []))
    report = body["settlement"]
    st = statement(report, ods, episodes=lines, episodes_total=max(int(report["episodes"]), len(lines)),
                   episodes_next_href=next_href, href=None)
    return views.TrustStatementsPage(ods, name_of(ref, ods), (st,), single=True)


def commissioner_page(icb: str, ref: ReferenceData, body: Mapping[str, Any]) -> views.CommissionerPage:
    rows = tuple(views.CommissionerRow(r["provider_code"], name_of(ref, r["provider_code"]), int(r["paid_now_pence"]),
                                       int(r["still_held_pence"]), int(r["released_pence"]), int(r["diverted_pence"]))
                 for r in body.get("providers", []))
    return views.CommissionerPage(icb, ref.commissioners[icb].name, body["period"], rows)


def _describe(line: Mapping[str, Any]) -> str:
    cause = line.get("cause") or {}
    kind, provider, episode = cause.get("kind"), cause.get("provider_code"), cause.get("episode_id")
    about = f" (episode {episode})" if episode else ""
    if kind == "diversion":
        return f"Diverted from {provider}{about}"
    if kind == "appeal_upheld":
        return f"Appeal upheld: returned to {provider}{about}"
    if kind == "manual":
        return "Manual transfer" + (f": {cause['note']}" if cause.get("note") else "")
    return (kind or line.get("kind") or "entry").replace("_", " ").capitalize() + about


def region_ledger(code: str, ref: ReferenceData, body: Mapping[str, Any], *, date_from: str, date_to: str,
                  continued: bool, next_href: str | None, csv_href: str) -> views.RegionLedgerPage:
    lines = body.get("lines", [])
    entries = tuple(views.LedgerEntry(when(line["posted_at"]), line["transfer_id"], _describe(line), int(line["amount_pence"]),
                                      int(line["balance_after_pence"])) for line in lines)
    if continued and entries:
        opening = entries[0].balance_pence - entries[0].amount_pence
    else:
        opening = int(body["opening_balance_pence"])
    closing = entries[-1].balance_pence if entries else opening
    return views.RegionLedgerPage(code, ref.regions[code], date_from, date_to, opening, entries, closing,
                                  csv_href=csv_href, next_page_href=next_href, continued=continued)
