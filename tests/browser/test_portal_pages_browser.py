"""Every page template, rendered from its sample view model, in a real browser: no serious
axe violation, charts present with accessible names, no console errors (CSP included), and a
screenshot of each. The pages are served by the real portal app with preview routes added
here for the test only (the data routes do not exist yet)."""

from __future__ import annotations

import pytest
from fastapi import Request
from fastapi.responses import HTMLResponse
from selenium.webdriver.common.by import By

from services.portal import samples
from tests.browser.conftest import ALL_IMPACTS

TEMPLATES = list(samples.PAGES)


@pytest.fixture(scope="module")
def preview(run_portal):
    from services.portal.app import create_app
    from services.portal.routes import render_page
    from services.portal.settings import PortalSettings

    app = create_app(PortalSettings(mode="development"))

    async def page(request: Request, name: str) -> HTMLResponse:
        template = name.replace("~", "/") + ".html"
        if template not in samples.PAGES:
            return HTMLResponse("no such sample", status_code=404)
        return render_page(request, template, **samples.sample_context(template))

    app.add_api_route("/_test/pages/{name}", page, methods=["GET"], response_class=HTMLResponse)
    return run_portal(app)


@pytest.mark.parametrize("template", TEMPLATES, ids=[t.removesuffix(".html").replace("/", "-") for t in TEMPLATES])
def test_page_in_browser(template, browser, preview, screenshot, assert_no_serious_axe_violations):
    browser.get(f"{preview.base_url}/_test/pages/{template.removesuffix('.html').replace('/', '~')}")
    assert len(browser.find_elements(By.TAG_NAME, "h1")) == 1
    for chart in browser.find_elements(By.CSS_SELECTOR, "svg.pp-chart"):
        labelled_by = chart.get_attribute("aria-labelledby").split()
        assert len(labelled_by) == 2
        assert chart.get_attribute("role") == "img"
        assert chart.size["width"] > 200, "the chart should scale to the width available"
    # At desktop width the sample tables fit: none of them scrolls or clips its last column.
    overflowing = browser.execute_script(
        "return [...document.querySelectorAll('.pp-table-scroll')]"
        ".filter(e => e.scrollWidth > e.clientWidth).map(e => e.getAttribute('aria-label'))")
    assert overflowing == []
    # Nothing broke under the Content-Security-Policy (a blocked style or script logs an error).
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert errors == []
    screenshot()
    # Stricter than the home page's check: no axe violation of any impact on any page.
    assert_no_serious_axe_violations(impacts=ALL_IMPACTS)


@pytest.mark.parametrize("template", TEMPLATES, ids=[t.removesuffix(".html").replace("/", "-") for t in TEMPLATES])
def test_page_reflows_at_phone_width(template, browser, preview, screenshot):
    """WCAG 1.4.10: at 320 CSS pixels' worth of width nothing but a table scrolls sideways."""
    browser.set_window_size(375, 900)
    try:
        browser.get(f"{preview.base_url}/_test/pages/{template.removesuffix('.html').replace('/', '~')}")
        client, scroll = browser.execute_script(
            "return [document.documentElement.clientWidth, document.documentElement.scrollWidth]")
        assert scroll <= client, f"the page scrolls sideways: {scroll}px of content in {client}px"
        screenshot("phone")
    finally:
        browser.set_window_size(1280, 1024)
