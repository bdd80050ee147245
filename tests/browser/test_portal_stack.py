"""The portal in a real Chromium against the real stack: embedded Kafka and PostgreSQL, the three
services and the portal as processes (``devtools.stack.Stack``), with data loaded through the
services' own HTTP APIs using tokens minted the documented way (``shared.auth``).

The scenario (``load``): a year of Friends and Family Test answers for Guy's and St Thomas'
(RJ1, London), twenty a month, with one month planted far below the rest (a special cause); the
latest settleable quarter's answers for seven more trusts, one of them (RR8) with only three
answers, so it is withheld, and RH8 with six, withheld to protect it; RJ1's episodes of care for
the last three months of it, paid by QWE, settled under a scheme without safeguards (so a few
"poor" answers divert money to the London fund), and one diversion appealed and upheld.

Checked: the league table ranks providers with intervals; the provider page's XmR chart shows
its limits and the planted special cause; a London-bound finance user is refused the North East's
ledger; no public page shows a figure from 1-4 responses, and the withheld providers show as
suppressed; axe finds no serious or critical violation on any page; a screenshot of each page.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By

from devtools.synthetic import synthetic_nhs_number
from services.payments.domain import latest_settleable_period
from shared.auth import bearer_headers, mint
from devtools.stack import Stack
from tests.helpers import eventually, settle

SCHEMES = Path(__file__).parent / "schemes"
MONTH = latest_settleable_period(date.today(), 56)  # the scheme's 56-day decision window has closed


def _shift(month: str, by: int) -> str:
    index = int(month[:4]) * 12 + int(month[5:7]) - 1 + by
    return f"{index // 12}-{index % 12 + 1:02d}"


MONTHS = [_shift(MONTH, k) for k in range(-11, 1)]  # a year ending with MONTH
PLANTED = MONTHS[7]  # four positive answers out of twenty: far below the process limits
QUARTER = f"{MONTH[:4]}-Q{(int(MONTH[5:7]) - 1) // 3 + 1}"
PAID_MONTHS = MONTHS[-3:]
POSITIVES = [17, 18, 17, 16, 18, 17, 18, 4, 17, 18, 17, 18]  # of 20, per month
POOR_ORDER = [3, 9, 14, 6, 12, 1, 17, 5, 11, 19, 8, 15, 2, 16, 0, 10, 4, 13, 7, 18]
# (trust, month, answers, positives) for the league table's other trusts, in the quarter.
OTHERS = [("RRV", MONTHS[-1], 40, 22), ("RTH", MONTHS[-2], 30, 27), ("RA7", MONTHS[-1], 30, 24),
          ("RGT", MONTHS[-2], 25, 23), ("R0A", MONTHS[-1], 30, 19), ("RRK", MONTHS[-1], 20, 18),
          ("RR8", MONTHS[-1], 3, 3), ("RH8", MONTHS[-1], 6, 5)]
WITHHELD = {"RR8": 3, "RH8": 6}
AMOUNT_PENCE = 100_000  # 10% at risk: a "poor" answer diverts half of it, 5,000


def _authored(month: str, i: int) -> str:
    return (datetime(int(month[:4]), int(month[5:7]), 2, 10, tzinfo=timezone.utc) + timedelta(days=i % 25)).isoformat()


def _answers() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    payments, feedback = [], []
    n = 0
    for month, positives in zip(MONTHS, POSITIVES):
        poor = set(POOR_ORDER[:20 - positives])
        for i in range(20):
            n += 1
            episode = f"ep-RJ1-{month}-{i:02d}"
            if month in PAID_MONTHS:
                payments.append({"payment_id": f"pay-RJ1-{month}-{i:02d}", "episode_id": episode, "commissioner_code": "QWE",
                                 "provider_code": "RJ1", "service_type": "maternity" if i % 2 else "inpatient",
                                 "activity_date": f"{month}-01", "amount_pence": AMOUNT_PENCE})
            feedback.append({"submission_id": f"sub-{n}", "episode_id": episode, "provider_code": "RJ1",
                             "nhs_number": synthetic_nhs_number(n), "authored_at": _authored(month, i),
                             "answers": {"instrument": "fft", "fft_answer": 4 if i in poor else 1},
                             "setting": "maternity" if i % 2 else "inpatient", "collection_mode": "app" if i % 3 else "sms"})
    for trust, month, count, positives in OTHERS:
        for i in range(count):
            n += 1
            feedback.append({"submission_id": f"sub-{n}", "episode_id": f"ep-{trust}-{i:02d}", "provider_code": trust,
                             "nhs_number": synthetic_nhs_number(n), "authored_at": _authored(month, i),
                             "answers": {"instrument": "fft", "fft_answer": 1 if i < positives else 5}})
    return payments, feedback


DIVERTED_PENCE = sum(5_000 for month, positives in zip(MONTHS, POSITIVES) if month in PAID_MONTHS
                     for i in POOR_ORDER[:20 - positives])
APPEALED = f"ep-RJ1-{MONTH}-03"


async def load(stack: Stack) -> None:
    payments, feedback = _answers()
    async with httpx.AsyncClient(timeout=60) as http:
        pay, fb, ledger = stack.url("payments"), stack.url("feedback"), stack.url("ledger")
        r = await http.post(f"{pay}/v1/payment-requests/batch", json=payments, headers=bearer_headers(["payments:write"], subject="qwe"))
        assert r.status_code == 200 and r.json()["rejected"] == 0, r.text
        app = bearer_headers(["feedback:write"], subject="nhs-app")
        for i in range(0, len(feedback), 500):
            r = await http.post(f"{fb}/v1/submissions/batch", json=feedback[i:i + 500], headers=app)
            assert r.status_code == 200 and r.json()["rejected"] == 0, r.text
        reader = bearer_headers(["ledger:read"], subject="national-finance")

        async def answered() -> bool:
            for month in PAID_MONTHS:
                for i in (0, 19):
                    view = (await http.get(f"{pay}/v1/episodes/ep-RJ1-{month}-{i:02d}", headers=reader)).json()
                    if not view.get("answers"):
                        return False
            return True

        await eventually(answered, timeout_s=120)
        admin = bearer_headers(["schemes:admin"], subject="trial-admin")
        for month in PAID_MONTHS:
            await settle(http, pay, {"period": month}, headers=admin)

        async def fund(expected: int) -> bool:
            b = await http.get(f"{ledger}/v1/accounts/fund:Y56/balance", headers=reader)
            return b.status_code == 200 and b.json()["posted_pence"] == expected

        await eventually(lambda: fund(DIVERTED_PENCE), timeout_s=120)
        r = await http.post(f"{pay}/v1/episodes/{APPEALED}/appeal", json={"reason": "the answer was about another trust"},
                            headers=bearer_headers(["appeals:write"], subject="rj1-finance", ods=["RJ1"]))
        assert r.status_code == 201, r.text
        r = await http.post(f"{pay}/v1/episodes/{APPEALED}/appeal/decision", json={"outcome": "upheld", "reason": "agreed"},
                            headers=bearer_headers(["appeals:decide"], subject="london-panel", regions=["Y56"]))
        assert r.status_code == 200, r.text
        await eventually(lambda: fund(DIVERTED_PENCE - 5_000), timeout_s=120)


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory):
    s = Stack(work_dir=tmp_path_factory.mktemp("stack"), extra_env={"payments": {"PAYMENTS_SCHEMES_DIR": str(SCHEMES)}})
    try:
        await s.start()
        await load(s)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def portal_url(stack: Stack) -> str:
    return stack.url("portal")


def _cells(browser, selector: str, *, in_details: bool = False) -> list[list[str]]:
    """Each row's cells' text: what is shown, or (``in_details``: a chart's data table, inside a
    closed <details>) the text content, spaces collapsed."""
    def text(cell: Any) -> str:
        return " ".join(cell.get_attribute("textContent").split()) if in_details else cell.text.strip()

    return [[text(c) for c in row.find_elements(By.CSS_SELECTOR, "th, td")] for row in browser.find_elements(By.CSS_SELECTOR, selector)]


def _no_figure_from_one_to_four_responses(browser) -> None:
    """Every table column headed "Responses" holds "suppressed", 0, or at least 5."""
    for table in browser.find_elements(By.CSS_SELECTOR, "table"):
        heads = [h.get_attribute("textContent").strip() for h in table.find_elements(By.CSS_SELECTOR, "thead th")]
        if "Responses" not in heads:
            continue
        col = heads.index("Responses")
        for row in table.find_elements(By.CSS_SELECTOR, "tbody tr"):
            cells = row.find_elements(By.CSS_SELECTOR, "th, td")
            text = cells[col].get_attribute("textContent").strip()
            if text.startswith("suppressed"):
                continue
            n = int(text.replace(",", ""))
            assert n == 0 or n >= 5, f"a figure from {n} responses is shown: {text!r} in {row.get_attribute('textContent')!r}"


def _page_checks(browser) -> None:
    assert len(browser.find_elements(By.TAG_NAME, "h1")) == 1
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert errors == [], errors


# ---------------------------------------------------------------------------------------------
# Public pages
# ---------------------------------------------------------------------------------------------
def test_home_page(browser, portal_url, screenshot, assert_no_serious_axe_violations):
    browser.get(portal_url + "/")
    _page_checks(browser)
    link = browser.find_element(By.CSS_SELECTOR, f"a[href='/league-table?quarter={QUARTER}']")
    assert link.text.startswith("See the league table")
    screenshot()
    assert_no_serious_axe_violations()


def test_league_table_ranks_providers_with_intervals(browser, portal_url, screenshot, assert_no_serious_axe_violations):
    browser.get(f"{portal_url}/league-table?quarter={QUARTER}")
    _page_checks(browser)
    rows = _cells(browser, "table.pp-league-table tbody tr")
    ranked = [r for r in rows if r[0].isdigit()]
    assert [int(r[0]) for r in ranked] == sorted(int(r[0]) for r in ranked) and int(ranked[0][0]) == 1
    assert len(ranked) == 7  # RJ1 and six more; RR8 and RH8 withheld
    percents = [float(r[3].rstrip("%")) for r in ranked]
    assert percents == sorted(percents, reverse=True)
    for r in ranked:
        low, high = re.fullmatch(r"([\d.]+)% to ([\d.]+)%", r[4]).groups()  # the 95% interval
        assert float(low) <= float(r[3].rstrip("%")) <= float(high)
    by_code = {r[1].split("\n")[-1]: r for r in rows}
    for code in WITHHELD:  # listed, not ranked, every figure the word "suppressed"
        assert by_code[code][0] in ("", "not ranked") and by_code[code][2].startswith("suppressed") and by_code[code][3].startswith("suppressed")
        assert by_code[code][4].startswith("suppressed") and by_code[code][5] == "not plotted"
    svg = browser.find_element(By.CSS_SELECTOR, "svg#league-funnel")
    assert svg.find_elements(By.CSS_SELECTOR, "path.pp-funnel-upper-998") and svg.find_elements(By.CSS_SELECTOR, "path.pp-funnel-lower-95")
    assert len(svg.find_elements(By.CSS_SELECTOR, ".pp-point")) == 7  # withheld providers are not plotted
    _no_figure_from_one_to_four_responses(browser)
    screenshot()
    assert_no_serious_axe_violations()


def test_provider_page_xmr_chart_shows_limits_and_the_planted_special_cause(browser, portal_url, screenshot,
                                                                           assert_no_serious_axe_violations):
    browser.get(f"{portal_url}/providers/RJ1?quarter={QUARTER}")
    _page_checks(browser)
    chart = browser.find_element(By.CSS_SELECTOR, "svg#provider-fft-xmr")
    for line in ("path.pp-xmr-upper-limit", "path.pp-xmr-lower-limit", "path.pp-xmr-mean"):
        assert chart.find_elements(By.CSS_SELECTOR, line), line
    concern = chart.find_elements(By.CSS_SELECTOR, ".pp-point--concern")
    assert len(concern) == 1
    [planted] = [m for m in _cells(browser, "table.pp-fft-table tbody tr", in_details=True) if m[0] == _label(PLANTED)]
    assert planted[2] == "20.0%" and "concern" in planted[-1] and "beyond a process limit" in planted[-1]
    # the chart shows the 24 months to this one; the planted month's marker is the concern
    this_month = f"{datetime.now(timezone.utc):%Y-%m}"
    assert concern[0].get_attribute("data-index") == str([_shift(this_month, k) for k in range(-23, 1)].index(PLANTED))
    description = chart.find_element(By.TAG_NAME, "desc").get_attribute("textContent")
    assert "process limits" in description and "Special cause variation" in description
    # money by month and the upheld appeal
    money = {m[0]: m for m in _cells(browser, "table.pp-money-table tbody tr", in_details=True)}
    assert money[_label(MONTH)][3] == f"£{50 * (20 - POSITIVES[-1]):,.2f}"  # each "poor" answer diverts half of £100.00
    appeals = _cells(browser, "table.pp-appeals-table tbody tr")
    assert appeals and appeals[0][0] == _label(MONTH) and appeals[0][2] == "1" and appeals[0][-1] == "£50.00"
    _no_figure_from_one_to_four_responses(browser)
    screenshot()
    assert_no_serious_axe_violations()


def _label(month: str) -> str:
    names = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
             "December"]
    return f"{names[int(month[5:7]) - 1]} {month[:4]}"


@pytest.mark.parametrize("code", sorted(WITHHELD))
def test_withheld_providers_pages_show_suppressed_never_the_figure(code, browser, portal_url, screenshot,
                                                                   assert_no_serious_axe_violations):
    browser.get(f"{portal_url}/providers/{code}?quarter={QUARTER}")
    _page_checks(browser)
    month = [m for m in _cells(browser, "table.pp-fft-table tbody tr", in_details=True) if m[0] == _label(MONTHS[-1])]
    assert month and month[0][1].startswith("suppressed") and month[0][2].startswith("suppressed")
    summary = browser.find_element(By.CSS_SELECTOR, "#quarter ~ dl").text
    assert re.search(r"Responses\s+suppressed", summary) and re.search(r"% positive\s+suppressed", summary)
    assert not browser.find_elements(By.CSS_SELECTOR, "svg#provider-fft-xmr .pp-point")  # nothing plotted
    _no_figure_from_one_to_four_responses(browser)
    screenshot()
    assert_no_serious_axe_violations()


def test_league_table_csv_stars_withheld_figures(portal_url):
    r = httpx.get(f"{portal_url}/league-table.csv", params={"quarter": QUARTER}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = {row["Trust Code"]: row for row in csv.DictReader(io.StringIO(r.text))}
    for code, n in WITHHELD.items():
        row = rows[code]
        assert row["Total Responses"] == "*" and row["Response Rate"] == "*" and row["Percentage Positive"] == "*"
        assert str(n) not in [row[c] for c in ("Very Good", "Good", "Neither Good nor Poor", "Poor", "Very Poor", "Don't Know")]
    assert rows["RJ1"]["Total Responses"] == "60" and rows["RJ1"]["Total Eligible"] == "60"  # episodes from payments


def test_region_page_shows_the_fund_and_its_inflows(browser, portal_url, screenshot, assert_no_serious_axe_violations):
    browser.get(f"{portal_url}/regions/Y56")
    _page_checks(browser)
    chart = browser.find_element(By.CSS_SELECTOR, "svg#region-balance")
    assert chart.find_elements(By.CSS_SELECTOR, "circle.pp-line-point")
    rj1 = next(r for r in _cells(browser, "table.pp-inflows-table tbody tr") if "Guy's" in r[0])
    assert rj1[1:] == [f"£{DIVERTED_PENCE / 100:,.2f}", "£50.00", f"£{(DIVERTED_PENCE - 5_000) / 100:,.2f}"]
    screenshot()
    assert_no_serious_axe_violations()


# ---------------------------------------------------------------------------------------------
# Finance pages, signed in through the development form
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def london_finance(browser, portal_url):
    """The browser signed in as London's finance team (ledger:read, regions Y56)."""
    browser.delete_all_cookies()
    browser.get(portal_url + "/sign-in?next=/finance")
    token = mint(["ledger:read"], subject="london-finance", regions=["Y56"], ttl_s=3600)
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "form[action='/sign-in'] button").click()
    assert browser.current_url == portal_url + "/finance", browser.find_element(By.TAG_NAME, "main").text
    yield browser
    browser.delete_all_cookies()


def test_sign_in_page(browser, portal_url, screenshot, assert_no_serious_axe_violations):
    browser.delete_all_cookies()
    browser.get(portal_url + "/finance")
    assert browser.current_url.startswith(portal_url + "/sign-in?next=")
    _page_checks(browser)
    assert browser.find_element(By.CSS_SELECTOR, "input[name='csrf']").get_attribute("value")
    screenshot()
    assert_no_serious_axe_violations()


def test_finance_index(london_finance, portal_url, screenshot, assert_no_serious_axe_violations):
    london_finance.get(portal_url + "/finance")
    _page_checks(london_finance)
    assert london_finance.find_element(By.CSS_SELECTOR, "header form[action='/sign-out']")
    screenshot()
    assert_no_serious_axe_violations()


def test_trust_statements_and_the_episodes_behind_them(london_finance, portal_url, screenshot,
                                                       assert_no_serious_axe_violations):
    london_finance.get(portal_url + "/finance/trusts/RJ1")
    _page_checks(london_finance)
    sections = london_finance.find_elements(By.CSS_SELECTOR, "section.pp-statement")
    assert [s.find_element(By.TAG_NAME, "h2").text for s in sections] == [_label(m) for m in reversed(PAID_MONTHS)]
    screenshot()
    assert_no_serious_axe_violations()
    sections[0].find_element(By.PARTIAL_LINK_TEXT, "See the episodes").click()
    _page_checks(london_finance)
    lines = _cells(london_finance, "section.pp-statement table tbody tr")
    assert len(lines) == 20
    appealed = next(line for line in lines if line[0] == APPEALED)
    assert appealed[4] == "FFT: Poor" and "appeal upheld" in appealed[5]
    csv_href = london_finance.find_element(By.PARTIAL_LINK_TEXT, "as CSV").get_attribute("href")
    cookies = {c["name"]: c["value"] for c in london_finance.get_cookies()}
    r = httpx.get(csv_href, cookies=cookies, timeout=30)
    assert r.status_code == 200 and r.text.count("\n") == 21 and APPEALED in r.text
    screenshot("statement")
    assert_no_serious_axe_violations()


def test_commissioner_page(london_finance, portal_url, screenshot, assert_no_serious_axe_violations):
    london_finance.get(f"{portal_url}/finance/commissioners/QWE?period={MONTH}")
    _page_checks(london_finance)
    [row] = _cells(london_finance, "table tbody tr")
    assert "Guy's" in row[0] and row[-1] == "£20,000.00"  # 20 episodes of £1,000.00
    screenshot()
    assert_no_serious_axe_violations()


def test_region_ledger_statement(london_finance, portal_url, screenshot, assert_no_serious_axe_violations):
    today = datetime.now(timezone.utc).date()
    london_finance.get(f"{portal_url}/finance/regions/Y56/ledger?from={today.replace(day=1)}&to={today}")
    _page_checks(london_finance)
    entries = _cells(london_finance, "table tbody tr")
    assert any(e[2].startswith("Diverted from RJ1") for e in entries)
    assert any(e[2].startswith("Appeal upheld: returned to RJ1") for e in entries)
    closing = london_finance.find_element(By.CSS_SELECTOR, "dl.nhsuk-summary-list").text
    assert f"£{(DIVERTED_PENCE - 5_000) / 100:,.2f}" in closing
    screenshot()
    assert_no_serious_axe_violations()


def test_a_region_bound_user_is_refused_another_regions_finance_page(london_finance, portal_url, screenshot,
                                                                    assert_no_serious_axe_violations):
    london_finance.get(portal_url + "/finance/regions/Y63/ledger")
    # (not _page_checks: the browser logs the page's own 403 status as an error)
    assert len(london_finance.find_elements(By.TAG_NAME, "h1")) == 1
    assert london_finance.find_element(By.TAG_NAME, "h1").text == "You cannot see this page"
    assert "outside this token's binding (regions Y56)" in london_finance.find_element(By.TAG_NAME, "main").text
    assert london_finance.find_element(By.CSS_SELECTOR, "header form[action='/sign-out']")  # still signed in
    status = httpx.get(portal_url + "/finance/regions/Y63/ledger", timeout=30,
                       cookies={c["name"]: c["value"] for c in london_finance.get_cookies()}).status_code
    assert status == 403
    screenshot()
    assert_no_serious_axe_violations()
