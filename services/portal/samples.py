"""Sample view models: made-up figures for tests and page previews. Not real providers.

The names are invented ("(sample)") so that a screenshot of a preview can never be mistaken
for a real trust's results. Figures are chosen to exercise every branch of the templates:
suppressed providers and months, each funnel band, each kind of special-cause signal, a month
still held, appeals, a capped and a minimum-sample statement.
"""

from __future__ import annotations

import math

from services.portal import charts, views
from services.portal.views import SUPPRESSED, SUPPRESSED_SECONDARY

REGIONS = (
    views.RegionLink("Y56", "London"),
    views.RegionLink("Y58", "South West"),
    views.RegionLink("Y59", "South East"),
    views.RegionLink("Y60", "Midlands"),
    views.RegionLink("Y61", "East of England"),
    views.RegionLink("Y62", "North West"),
    views.RegionLink("Y63", "North East and Yorkshire"),
)


def home_page() -> views.HomePage:
    return views.HomePage(latest_quarter="2026-Q3", regions=REGIONS)


def _normal_limits(benchmark: float, n: float, z: float) -> tuple[float, float]:
    # Sample figures only: the portal takes real limits from shared.stats.
    half = z * math.sqrt(benchmark * (1 - benchmark) / n)
    return max(0.0, benchmark - half), min(1.0, benchmark + half)


def funnel_limits(benchmark: float = 0.88) -> tuple[charts.FunnelLimit, ...]:
    out = []
    for n in (10, 20, 40, 80, 150, 300, 500, 800, 1200):
        lo95, hi95 = _normal_limits(benchmark, n, 1.96)
        lo998, hi998 = _normal_limits(benchmark, n, 3.09)
        out.append(charts.FunnelLimit(n, lo95, hi95, lo998, hi998))
    return tuple(out)


def league_table_page() -> views.LeagueTablePage:
    def row(rank, ods, name, responses, positive, low, high, band):
        eligible = responses * 3
        gains = (views.HealthGain("Oxford Hip Score", "primary hip replacement", 42, 18.4, "0 to 48, higher is better"),
                 views.HealthGain("Oxford Knee Score", "primary knee replacement", 7, None, "0 to 48, higher is better")) \
            if ods == "RC3" else ()
        return views.LeagueTableRow(ods, name, responses, positive, views.Interval(low, high), band, rank,
                                    eligible_episodes=eligible, response_rate=responses / eligible, health_gain=gains)

    rows = (
        row(1, "RA1", "Northbrook Hospitals NHS Foundation Trust (sample)", 640, 0.953, 0.934, 0.967, "high_998"),
        row(2, "RB2", "Eastmere Community Health NHS Trust (sample)", 95, 0.926, 0.856, 0.964, "within"),
        row(3, "RC3", "Kingsford University Hospitals NHS Trust (sample)", 1100, 0.901, 0.883, 0.918, "high_95"),
        row(4, "RD4", "Westvale Maternity Services NHS Trust (sample)", 210, 0.871, 0.820, 0.910, "within"),
        row(5, "RE5", "Southport Bay Hospitals NHS Trust (sample)", 480, 0.846, 0.811, 0.876, "low_95"),
        row(6, "RF6", "Highmoor Teaching Hospitals NHS Trust (sample)", 900, 0.812, 0.786, 0.836, "low_998"),
        views.LeagueTableRow("RG7", "Little Ashby Cottage Hospital (sample)", SUPPRESSED, SUPPRESSED, None, None, None,
                             eligible_episodes=40, response_rate=SUPPRESSED),
        views.LeagueTableRow("RH8", "Oakdene Birth Centre (sample)", SUPPRESSED_SECONDARY, SUPPRESSED_SECONDARY,
                             None, None, None, eligible_episodes=None, response_rate=SUPPRESSED_SECONDARY),
    )
    return views.LeagueTablePage(
        quarter="2026-Q3", benchmark_proportion=0.88, rows=rows, funnel_limits=funnel_limits(0.88),
        previous_quarter="2026-Q2", next_quarter=None, csv_href="/league-table.csv?quarter=2026-Q3", prom_min_pairs=30,
    )


def provider_page() -> views.ProviderPage:
    values = [0.86, 0.88, 0.85, None, 0.87, 0.89, 0.86, 0.88, 0.74, 0.90, 0.92, 0.93]
    responses = [120, 131, 118, None, 125, 140, 122, 133, 117, 128, 135, 138]
    signals = {
        8: views.SpecialCause("concern", "point below the lower process limit"),
        10: views.SpecialCause("improvement", "two of three points beyond 2 sigma"),
        11: views.SpecialCause("improvement", "two of three points beyond 2 sigma"),
    }
    months = []
    for i, (value, n) in enumerate(zip(values, responses, strict=True)):
        period = f"2025-{i + 1:02d}" if i < 12 else f"2026-{i - 11:02d}"
        months.append(views.FftMonth(
            period=period,
            responses=SUPPRESSED if n is None else n,
            positive_proportion=SUPPRESSED if value is None else value,
            mean=0.87, lower_limit=0.78, upper_limit=0.96, lower_2sigma=0.81, upper_2sigma=0.93,
            special_cause=signals.get(i),
        ))
    money = (
        views.MoneyMonth("2025-07", 1_250_000, 1_190_000, 60_000),
        views.MoneyMonth("2025-08", 1_310_000, 1_310_000, 0),
        views.MoneyMonth("2025-09", 1_180_000, 1_020_050, 159_950),
        views.MoneyMonth("2025-10", 1_400_000, 1_350_000, 50_000),
        views.MoneyMonth("2025-11", 1_360_000, 1_300_000, 60_000),
        views.MoneyMonth("2025-12", 1_290_000, 400_000, 10_000),
    )
    appeals = (
        views.AppealMonth("2025-09", lodged=4, upheld=1, rejected=2, returned_pence=12_500),
        views.AppealMonth("2025-10", lodged=1, upheld=0, rejected=0, returned_pence=0),
    )
    quarter = views.ProviderQuarter(
        "2025-Q4", 401, 91, "2025-Q3", SUPPRESSED_SECONDARY, SUPPRESSED_SECONDARY, 1210, 401 / 1210,
        by_setting=(views.BreakdownRow("Maternity", 250, 93), views.BreakdownRow("Inpatient", 148, 89),
                    views.BreakdownRow("A&E", SUPPRESSED, SUPPRESSED)),
        by_mode=(views.BreakdownRow("NHS App or other app", 300, 92), views.BreakdownRow("SMS", 101, 88)),
        by_site=(views.BreakdownRow("Highmoor General (sample) (RF601)", 380, 91),
                 views.BreakdownRow("Moorside Clinic (sample) (RF602)", 21, 86)),
    )
    return views.ProviderPage(
        ods_code="RF6", provider_name="Highmoor Teaching Hospitals NHS Trust (sample)", region_code="Y62",
        region_name="North West", fft_months=tuple(months), money_months=money, appeals=appeals, quarter=quarter,
    )


def region_page() -> views.RegionPage:
    balances = (
        views.BalancePoint("2025-07", 60_000),
        views.BalancePoint("2025-08", 60_000),
        views.BalancePoint("2025-09", 219_950),
        views.BalancePoint("2025-10", 257_450),
        views.BalancePoint("2025-11", 317_450),
        views.BalancePoint("2025-12", 327_450),
    )
    inflows = (
        views.InflowRow("RF6", "Highmoor Teaching Hospitals NHS Trust (sample)", 339_950, 12_500),
        views.InflowRow("RE5", "Southport Bay Hospitals NHS Trust (sample)", 0, 0),
    )
    grants = (
        views.GrantRow("nw-discharge-2025", "Better discharge on the surgical wards (sample)",
                       (("RF6", "Highmoor Teaching Hospitals NHS Trust (sample)"),), "reserved", 120_000, 40_000, "improving"),
        views.GrantRow("nw-maternity-2025", "Maternity discharge information (sample)",
                       (("RE5", "Southport Bay Hospitals NHS Trust (sample)"),), "completed", 60_000, 60_000, "no_change"),
    )
    return views.RegionPage("Y62", "North West", balances, inflows, "2025-07", "2025-12", grants)


def trust_statements_page() -> views.TrustStatementsPage:
    episodes = (
        views.EpisodeLine("ep-2025-10-0001", "QOP", 250_000, 25_000, 25_000, 0, "Very good", "released in full"),
        views.EpisodeLine("ep-2025-10-0002", "QOP", 180_000, 18_000, 9_000, 9_000, "Poor", "released 50%"),
        views.EpisodeLine("ep-2025-10-0003", "QE1", 120_000, 12_000, 0, 12_000, "Very poor", "diverted in full"),
        views.EpisodeLine("ep-2025-10-0004", "QE1", 90_000, 9_000, 9_000, 0, None, "no answer: released in full"),
    )
    capped = views.SettlementStatement(
        period="2025-10", scheme_id="national-fft", scheme_version=2, billed_pence=640_000, at_risk_pence=64_000,
        released_pence=43_000, diverted_pence=21_000, responses=212, minimum_sample_applied=False, cap_applied=True,
        settled_at="2025-12-01T02:00:00Z", episodes=episodes, episodes_total=6,
        episodes_next_href="/finance/trusts/RF6/statements/2025-10?after=ep-2025-10-0004",
        csv_href="/finance/trusts/RF6/statements/2025-10.csv",
    )
    small = views.SettlementStatement(
        period="2025-09", scheme_id="national-fft", scheme_version=2, billed_pence=300_000, at_risk_pence=30_000,
        released_pence=30_000, diverted_pence=0, responses=12, minimum_sample_applied=True, cap_applied=False,
        settled_at="2025-11-01T02:00:00Z", csv_href="/finance/trusts/RF6/statements/RF6:2025-09:national-fft@2/episodes.csv",
        href="/finance/trusts/RF6/statements/RF6:2025-09:national-fft@2", settlement_id="RF6:2025-09:national-fft@2",
    )
    return views.TrustStatementsPage("RF6", "Highmoor Teaching Hospitals NHS Trust (sample)", (capped, small))


def commissioner_page() -> views.CommissionerPage:
    rows = (
        views.CommissionerRow("RF6", "Highmoor Teaching Hospitals NHS Trust (sample)", 5_760_000, 0, 430_000, 210_000),
        views.CommissionerRow("RE5", "Southport Bay Hospitals NHS Trust (sample)", 2_700_000, 300_000, 0, 0),
    )
    return views.CommissionerPage("QOP", "Greater Highmoor ICB (sample)", "2025-10", rows,
                                  csv_href="/finance/commissioners/QOP/2025-10.csv")


def region_ledger_page() -> views.RegionLedgerPage:
    entries = (
        views.LedgerEntry("2025-11-01T02:00:01Z", "divert:pay-0002", "Diverted from RF6 (episode ep-2025-10-0002)", 9_000, 9_000),
        views.LedgerEntry("2025-11-01T02:00:01Z", "divert:pay-0003", "Diverted from RF6 (episode ep-2025-10-0003)", 12_000, 21_000),
        views.LedgerEntry("2025-11-20T10:15:00Z", "appeal:pay-0003", "Appeal upheld: returned to RF6", -12_000, 9_000),
    )
    return views.RegionLedgerPage(
        region_code="Y62", region_name="North West", date_from="2025-11-01", date_to="2025-11-30",
        opening_balance_pence=0, entries=entries, closing_balance_pence=9_000,
        csv_href="/finance/regions/Y62/statement.csv?from=2025-11-01&to=2025-11-30",
    )


def finance_index_page() -> views.FinanceIndexPage:
    return views.FinanceIndexPage(
        trusts=(views.Choice("RF6", "Highmoor Teaching Hospitals NHS Trust (sample) (RF6)"),
                views.Choice("RE5", "Southport Bay Hospitals NHS Trust (sample) (RE5)")),
        commissioners=(views.Choice("QOP", "Greater Highmoor ICB (sample) (QOP)"),),
        regions=tuple(views.Choice(r.code, f"{r.name} ({r.code})") for r in REGIONS),
        default_period="2025-10", default_from="2025-11-01", default_to="2025-11-30",
    )


# template name -> (view model factory, navigation item, wide layout)
PAGES = {
    "home.html": (home_page, "home", False),
    "league_table.html": (league_table_page, "league-table", True),
    "provider.html": (provider_page, None, False),
    "region.html": (region_page, None, False),
    "finance/trust_statements.html": (trust_statements_page, "finance", False),
    "finance/commissioner.html": (commissioner_page, "finance", False),
    "finance/region_ledger.html": (region_ledger_page, "finance", False),
    "finance/index.html": (finance_index_page, "finance", False),
    "sign_in.html": (lambda: views.SignInPage(error="Enter a token"), "finance", False),
    "error.html": (lambda: views.ErrorPage(403, "You cannot see this page", "Your account does not give you access."), None, False),
}


def sample_context(template: str, *, development_mode: bool = True, signed_in: bool = False) -> dict[str, object]:
    """The context to render ``template`` with its sample view model."""
    factory, nav, wide = PAGES[template]
    layout = views.Layout(current_nav=nav, development_mode=development_mode, signed_in=signed_in, wide=wide)
    return {"page": factory(), "layout": layout}
