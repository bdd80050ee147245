"""The home page in a real browser: it loads, has one h1, and axe finds nothing serious."""

from __future__ import annotations

from selenium.webdriver.common.by import By


def test_home_page_loads_with_h1_and_no_serious_axe_violations(
    browser, portal, screenshot, assert_no_serious_axe_violations
):
    browser.get(portal.base_url + "/")
    assert browser.title.startswith("Patient power payments")
    headings = browser.find_elements(By.TAG_NAME, "h1")
    assert len(headings) == 1 and headings[0].text.strip()
    assert browser.find_elements(By.CSS_SELECTOR, "main#maincontent")
    # The NHS stylesheet loaded from the portal itself (not a CDN): the header is NHS blue.
    header_bg = browser.find_element(By.CSS_SELECTOR, "header.nhsuk-header").value_of_css_property("background-color")
    assert header_bg in ("rgba(0, 94, 184, 1)", "rgb(0, 94, 184)")
    font = browser.find_element(By.TAG_NAME, "body").value_of_css_property("font-family").lower()
    assert "frutiger" not in font and "arial" in font
    screenshot()
    assert_no_serious_axe_violations()


def test_home_page_makes_no_request_outside_the_portal(browser, portal):
    browser.get(portal.base_url + "/")
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href]);"
    )
    outside = [u for u in urls if not u.startswith(portal.base_url)]
    assert outside == []
    # and the CSS it fetched (the vendored nhsuk-frontend) really arrived
    assert any(u.endswith("/static/nhsuk/nhsuk-frontend.min.css") for u in urls)


def test_skip_link_is_first_and_targets_main(browser, portal):
    browser.get(portal.base_url + "/")
    first_link = browser.find_elements(By.CSS_SELECTOR, "body a")[0]
    assert first_link.get_attribute("class") == "nhsuk-skip-link"
    assert first_link.get_attribute("href").endswith("#maincontent")
