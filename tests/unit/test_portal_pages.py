"""The portal's pages rendered from view models (Jinja2 directly, and through the app).

Checks: suppressed figures never appear as numbers; landmarks, one h1 and a skip link on every
page; every table has a caption and header cells; every chart has an accessible name and a data
table; text is escaped; no inline script or style; the security headers; the vendored CSS loads
nothing from outside.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

import httpx
import pytest

from services.portal import rendering, samples, vendor_nhsuk, views
from services.portal.app import CONTENT_SECURITY_POLICY, create_app
from services.portal.settings import PortalSettings
from services.portal.views import SUPPRESSED, SUPPRESSED_SECONDARY

ENV = rendering.make_environment()
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
NUMBER = re.compile(r"\d")
NASTY = '<script>alert("x")</script> & Sons'


# --- a small DOM over html.parser ------------------------------------------------------------


@dataclass
class Node:
    tag: str
    attrs: dict[str, str | None]
    children: list[Node] = field(default_factory=list)
    parent: Node | None = None
    text_parts: list[str] = field(default_factory=list)

    def iter(self):
        yield self
        for c in self.children:
            yield from c.iter()

    def find_all(self, tag: str) -> list[Node]:
        return [n for n in self.iter() if n.tag == tag]

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def all_text(self) -> str:
        out = list(self.text_parts)
        for c in self.children:
            out.append(c.all_text())
        return " ".join(out)

    def visible_text(self) -> str:
        """Text a sighted reader sees (visually hidden spans and SVG internals excluded)."""
        if "nhsuk-u-visually-hidden" in self.classes() or self.tag in ("svg", "title", "desc"):
            return ""
        return " ".join(self.text_parts + [c.visible_text() for c in self.children])


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), parent=self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, dict(attrs), parent=self.cur))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        assert n is not None, f"closing </{tag}> without an opening tag"
        self.cur = n.parent or self.root

    def handle_data(self, data):
        self.cur.text_parts.append(data)


def dom(html: str) -> Node:
    b = _Builder()
    b.feed(html)
    b.close()
    return b.root


def render(template: str, **context) -> str:
    return rendering.render(ENV, template, **context)


def render_sample(template: str) -> str:
    return render(template, **samples.sample_context(template))


ALL_TEMPLATES = list(samples.PAGES)


# --- every page ------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ALL_TEMPLATES)
def test_every_page_has_landmarks_one_h1_and_a_skip_link(template):
    root = dom(render_sample(template))
    assert len(root.find_all("h1")) == 1 and root.find_all("h1")[0].all_text().strip()
    (main,) = root.find_all("main")
    assert main.attrs.get("id") == "maincontent"
    assert len(root.find_all("header")) == 1 and len(root.find_all("footer")) == 1
    links = root.find_all("a")
    assert "nhsuk-skip-link" in links[0].classes() and links[0].attrs["href"] == "#maincontent"
    assert root.find_all("html")[0].attrs.get("lang") == "en"
    title = root.find_all("title")[0].all_text()
    assert title.strip().endswith("– Patient Power – NHS")
    # headings go down one level at a time
    levels = [int(n.tag[1]) for n in root.iter() if re.fullmatch(r"h[1-6]", n.tag)]
    assert all(b - a <= 1 for a, b in zip(levels, levels[1:], strict=False)), levels


@pytest.mark.parametrize("template", ALL_TEMPLATES)
def test_every_table_has_a_caption_column_headers_and_row_headers(template):
    root = dom(render_sample(template))
    for table in root.find_all("table"):
        captions = table.find_all("caption")
        assert len(captions) == 1 and captions[0].all_text().strip(), "a table needs a caption"
        heads = table.find_all("thead")
        assert len(heads) == 1
        col_headers = [th for th in heads[0].find_all("th")]
        assert col_headers and all(th.attrs.get("scope") == "col" for th in col_headers)
        assert all(th.all_text().strip() for th in col_headers)
        for body in table.find_all("tbody"):
            for tr in body.find_all("tr"):
                cells = [c for c in tr.children if c.tag in ("td", "th")]
                if len(cells) == 1 and cells[0].attrs.get("colspan"):
                    continue  # the "no rows" line
                row_headers = [c for c in cells if c.tag == "th"]
                assert len(row_headers) == 1 and row_headers[0].attrs.get("scope") == "row"
                assert len(cells) == len(col_headers), "each row has a cell per column"


@pytest.mark.parametrize("template", ALL_TEMPLATES)
def test_no_inline_script_no_style_attributes_no_external_urls(template):
    html = render_sample(template)
    root = dom(html)
    assert not root.find_all("script"), "the CSP allows no script on these pages"
    for n in root.iter():
        assert "style" not in n.attrs, f"<{n.tag} style=...> is blocked by the CSP"
        assert not any(k.startswith("on") for k in n.attrs), f"<{n.tag}> has an event handler"
        for attr in ("href", "src", "action"):
            value = n.attrs.get(attr)
            if value and n.tag != "svg":
                assert not re.match(r"^(https?:)?//", value), f"{attr}={value} leaves the portal"


@pytest.mark.parametrize("template", ALL_TEMPLATES)
def test_every_chart_has_a_name_a_description_and_a_data_table(template):
    root = dom(render_sample(template))
    ids = {n.attrs.get("id") for n in root.iter() if n.attrs.get("id")}
    for svg in (n for n in root.find_all("svg") if "pp-chart" in n.classes()):
        assert svg.attrs.get("role") == "img"
        title_id, desc_id = svg.attrs["aria-labelledby"].split()
        assert title_id in ids and desc_id in ids
        figure = svg
        while figure.tag != "figure":
            figure = figure.parent
        assert figure.find_all("figcaption")
        details = figure.find_all("details")
        assert details and details[0].find_all("table"), "a chart's data as a table, beside it"
    all_ids = [n.attrs.get("id") for n in root.iter() if n.attrs.get("id")]
    assert len(all_ids) == len(set(all_ids)), "ids are unique on the page"


def test_autoescape_is_on_for_every_template():
    assert ENV.autoescape is True
    home = views.HomePage(regions=(views.RegionLink("Y56", NASTY),))
    html = render("home.html", page=home)
    assert NASTY not in html and "&lt;script&gt;" in html


# --- suppression -----------------------------------------------------------------------------


def _row_of(root: Node, ods: str) -> Node:
    for tr in root.find_all("tr"):
        if ods in tr.all_text():
            return tr
    raise AssertionError(f"no row for {ods}")


def test_league_table_shows_suppressed_providers_as_the_word_never_a_number():
    page = samples.league_table_page()
    html = render("league_table.html", page=page, layout=views.Layout(wide=True))
    root = dom(html)
    for ods in ("RG7", "RH8"):
        tr = _row_of(root, ods)
        cells = [c for c in tr.children if c.tag in ("td", "th")]
        rank, _provider, responses, positive, interval, band = cells
        for cell in (responses, positive, interval):
            assert cell.visible_text().strip() == "suppressed"
            link = cell.find_all("a")[0]
            assert link.attrs["href"] == views.SUPPRESSION_HREF
        assert not NUMBER.search(rank.all_text()) and not NUMBER.search(band.all_text())
        assert not NUMBER.search(" ".join(c.all_text() for c in (responses, positive, interval)))
    # the published rows keep their numbers
    assert "95.3%" in _row_of(root, "RA1").all_text()
    # suppressed providers are not plotted: only the six published providers have a point
    svg = next(n for n in root.find_all("svg") if "pp-chart" in n.classes())
    points = [n for n in svg.iter() if "pp-point" in n.classes()]
    assert len(points) == 6
    assert "2 suppressed providers are not plotted" in svg.all_text()


def test_provider_page_suppressed_month_is_a_gap_and_the_word():
    page = samples.provider_page()
    root = dom(render("provider.html", page=page))
    april = _row_of(root, "April 2025")
    cells = [c for c in april.children if c.tag in ("td", "th")]
    assert cells[1].visible_text().strip() == "suppressed" and cells[2].visible_text().strip() == "suppressed"
    assert not NUMBER.search(cells[1].all_text() + cells[2].all_text())
    svg = next(n for n in root.find_all("svg") if n.attrs.get("id") == "provider-fft-xmr")
    indices = {int(n.attrs["data-index"]) for n in svg.iter() if "pp-point" in n.classes()}
    assert 3 not in indices and len(indices) == 11
    assert "1 suppressed month is not plotted" in svg.all_text()


def test_filters_render_suppressed_as_the_word_for_every_kind_of_figure():
    for fmt in (rendering.format_count, rendering.format_percent, rendering.format_pence, rendering.format_interval):
        for value in (SUPPRESSED, SUPPRESSED_SECONDARY):
            out = str(fmt(value))
            assert ">suppressed<" in out and not NUMBER.search(re.sub(r"<[^>]+>", "", out))
    assert str(SUPPRESSED) == "suppressed"
    with pytest.raises(TypeError):
        rendering.format_pence(12.5)  # money is integer pence
    with pytest.raises(TypeError):
        rendering.format_count(True)


def test_a_suppressed_view_model_cannot_carry_a_number():
    with pytest.raises(views.ViewModelError):  # % positive shown while the count is hidden
        views.LeagueTableRow("RA1", "x", SUPPRESSED, 0.9, None, None, None)
    with pytest.raises(views.ViewModelError):  # a rank would leak its place in the ordering
        views.LeagueTableRow("RA1", "x", SUPPRESSED, SUPPRESSED, None, None, 3)
    with pytest.raises(views.ViewModelError):
        views.FftMonth("2025-01", SUPPRESSED, SUPPRESSED, 0.8, 0.7, 0.9,
                       special_cause=views.SpecialCause("concern", "outside the limits"))
    rows = list(samples.league_table_page().rows)
    with pytest.raises(views.ViewModelError):  # suppressed providers come after the ranked ones
        views.LeagueTablePage("2026-Q3", 0.88, (rows[-1], *rows[:-1]), ())


# --- the figures themselves --------------------------------------------------------------------


def test_money_is_formatted_from_integer_pence():
    assert rendering.format_pence(123456) == "£1,234.56"
    assert rendering.format_pence(5) == "£0.05"
    assert rendering.format_pence(-12000) == "\u2212£120.00"
    assert rendering.format_percent(0.8734) == "87.3%"
    assert rendering.format_count(1100) == "1,100"
    assert views.format_pence_text(-5) == "minus £0.05"


def test_ledger_statement_renders_running_balance_and_csv_link():
    root = dom(render_sample("finance/region_ledger.html"))
    text = root.all_text()
    assert "\u2212£120.00" in text and "Opening balance" in text
    assert any(a.attrs.get("href", "").endswith("to=2025-11-30") for a in root.find_all("a"))


def test_view_models_check_their_money_invariants():
    with pytest.raises(views.ViewModelError):
        views.MoneyMonth("2025-01", at_risk_pence=100, released_pence=80, diverted_pence=30)
    with pytest.raises(views.ViewModelError):
        views.MoneyMonth("2025-01", at_risk_pence=100.0, released_pence=100, diverted_pence=0)  # type: ignore[arg-type]
    with pytest.raises(views.ViewModelError):
        views.EpisodeLine("e1", "QOP", 1000, 100, 60, 30, "Poor", "x")  # 10 pence unaccounted for
    with pytest.raises(views.ViewModelError):
        views.LedgerEntry("t", "t1", "d", 10, 10)  # fine alone...
        views.RegionLedgerPage("Y56", "London", "2025-01-01", "2025-01-31", 0,
                               (views.LedgerEntry("t", "t1", "d", 10, 11),), 11)  # ...but the balance breaks
    with pytest.raises(views.ViewModelError):  # the minimum sample protects: nothing diverted
        views.SettlementStatement("2025-01", "s", 1, 1000, 100, 50, 50, 3, True, False, "2025-02-01T00:00:00Z")
    with pytest.raises(views.ViewModelError):
        views.SignInPage(next_path="//evil.example/")


def test_periods_and_quarters():
    assert views.period_label("2026-10") == "October 2026"
    assert views.period_label("2026-Q3") == "July to September 2026"
    assert views.quarter_months("2026-Q4") == ("2026-10", "2026-11", "2026-12")
    for bad in ("2026-Q5", "2026Q1", "26-Q1", "", "2026-13"):
        with pytest.raises(views.ViewModelError):
            views.period_label(bad)


def test_names_are_escaped_in_tables_and_charts():
    page = samples.provider_page()
    nasty = views.ProviderPage(page.ods_code, NASTY, page.region_code, NASTY, page.fft_months,
                               page.money_months, page.appeals)
    html = render("provider.html", page=nasty)
    assert "<script>" not in html
    assert html.count("&lt;script&gt;") >= 4  # heading, captions, chart titles and descriptions


def test_svg_filter_refuses_anything_but_a_chart():
    with pytest.raises(ValueError):
        rendering.svg_markup("<script>alert(1)</script>")


# --- the app ---------------------------------------------------------------------------------


async def _get(app, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://portal.test") as client:
        return await client.get(path)


@pytest.fixture(scope="module")
def dev_app():
    return create_app(PortalSettings(mode="development"))


async def test_home_page_through_the_app_with_security_headers(dev_app):
    r = await _get(dev_app, "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert "strict-transport-security" not in r.headers  # development: plain http
    root = dom(r.text)
    assert len(root.find_all("h1")) == 1
    assert "London" in r.text and 'href="/regions/Y56"' in r.text
    assert 'aria-current="page"' in r.text


async def test_production_mode_sends_hsts_and_no_sign_in_link():
    r = await _get(create_app(PortalSettings(mode="production")), "/")
    assert r.headers["strict-transport-security"].startswith("max-age=")
    assert 'href="/sign-in"' not in r.text


async def test_not_found_is_an_nhs_page_with_the_status(dev_app):
    r = await _get(dev_app, "/no/such/page")
    assert r.status_code == 404 and "Page not found" in r.text
    assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert dom(r.text).find_all("main")


async def test_unhandled_error_is_a_500_page_with_the_headers():
    app = create_app(PortalSettings(mode="development"))

    @app.get("/boom")
    async def boom():
        raise RuntimeError("boom")

    r = await _get(app, "/boom")
    assert r.status_code == 500 and "problem with the service" in r.text
    assert "boom" not in r.text and r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


async def test_error_pages_for_401_and_403_from_upstream(dev_app):
    for status, words in ((401, "You need to sign in"), (403, "You cannot see this page")):
        html = dev_app.state.error_page(status).body.decode()
        assert words in html and f"Error code {status}" in html


async def test_health_live_and_ready(dev_app, tmp_path):
    assert (await _get(dev_app, "/health/live")).json() == {"status": "live"}
    ready = await _get(dev_app, "/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    # production without its service token is not ready; with one it is, and never shows it
    assert (await _get(create_app(PortalSettings(mode="production")), "/health/ready")).status_code == 503
    token = tmp_path / "token"
    token.write_text("secret-token-value")
    r = await _get(create_app(PortalSettings(mode="production", service_token_file=token)), "/health/ready")
    assert r.status_code == 200 and "secret-token-value" not in r.text


async def test_static_css_is_served_from_the_portal(dev_app):
    r = await _get(dev_app, "/static/nhsuk/nhsuk-frontend.min.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    assert "cache-control" not in r.headers or r.headers["cache-control"] != "no-store"
    icon = await _get(dev_app, "/static/nhsuk/assets/images/nhsuk-icon-arrow-down.svg")
    assert icon.status_code == 200
    assert (await _get(dev_app, "/static/portal.css")).status_code == 200


def test_settings_defaults_and_validation(monkeypatch):
    s = PortalSettings()
    assert (s.http_host, s.http_port, s.mode) == ("127.0.0.1", 8004, "production")
    monkeypatch.setenv("PORTAL_LEDGER_BASE_URL", "https://ledger.internal:8443/")
    monkeypatch.setenv("PORTAL_MODE", "development")
    s = PortalSettings()
    assert s.ledger_base_url == "https://ledger.internal:8443" and s.development
    monkeypatch.setenv("PORTAL_FEEDBACK_BASE_URL", "ftp://nope")
    with pytest.raises(ValueError):
        PortalSettings()


# --- the vendored NHS assets -------------------------------------------------------------------


def test_vendored_css_loads_nothing_from_outside_and_names_its_version():
    css = (rendering.STATIC_DIR / rendering.NHSUK_CSS).read_text(encoding="utf-8")
    rules = re.sub(r"/\*!.*?\*/", "", css, count=1, flags=re.S)  # without the banner that says what was done
    assert "@font-face" not in rules and "assets.nhs.uk" not in rules and "@import" not in rules
    assert not re.search(r"url\(\s*['\"]?(https?:|//)", rules)
    assert "frutiger" not in rules.lower()
    assert css.startswith('@charset "UTF-8";\n/*! nhsuk-frontend ' + vendor_nhsuk.NHSUK_FRONTEND_VERSION + " ")
    for url in re.findall(r"url\(\s*['\"]?([^)'\"]+)", css):
        if not url.startswith("data:"):
            assert (rendering.STATIC_DIR / "nhsuk" / url).is_file(), f"the CSS refers to a file not vendored: {url}"
    nhsuk_dir = rendering.STATIC_DIR / "nhsuk"
    licence = (nhsuk_dir / "LICENCE").read_text()
    assert licence.startswith("MIT License") and "NHS.UK" in licence
    assert vendor_nhsuk.NHSUK_FRONTEND_VERSION in (nhsuk_dir / "README.md").read_text()


def test_process_css_strips_fonts_and_makes_urls_relative():
    css = ('@charset "UTF-8";@font-face{font-family:Frutiger W01;src:url(https://assets.nhs.uk/f.woff2)}'
           "body{font-family:Frutiger W01,arial,sans-serif}.x{background:url(/assets/images/a.svg)}"
           "/*# sourceMappingURL=x.map */")
    out = vendor_nhsuk.process_css(css, version="1.2.3")
    assert out.startswith('@charset "UTF-8";\n/*! nhsuk-frontend 1.2.3 ')
    assert "font-family:arial,sans-serif" in out and "url(assets/images/a.svg)" in out
    rules = re.sub(r"/\*!.*?\*/", "", out, count=1, flags=re.S)
    assert "@font-face" not in rules and "Frutiger" not in rules and "sourceMappingURL" not in rules
    with pytest.raises(vendor_nhsuk.VendorError):
        vendor_nhsuk.process_css(".x{background:url(https://cdn.example/x.png)}", version="1")
    with pytest.raises(vendor_nhsuk.VendorError):
        vendor_nhsuk.process_css("@import url(x.css);", version="1")
