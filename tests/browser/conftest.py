"""Browser tests: a real headless Chromium (Debian's) driven by Selenium, against the portal
served by uvicorn on a free loopback port in a background thread.

- Chromium and chromedriver are looked for at /usr/bin/chromium and /usr/bin/chromedriver, then
  on PATH (or only where BROWSER_TESTS_CHROMIUM / BROWSER_TESTS_CHROMEDRIVER say). If either is
  missing, every browser test is SKIPPED with that reason and a banner says so at the end of the
  run: run `tests/browser/install_browser.sh` (as root) to install them. Nothing else skips: a
  missing selenium, a page that does not load or an axe violation fails.
- axe-core (tests/browser/vendor/axe.min.js, MPL-2.0) is injected into the page by WebDriver
  (which the page's Content-Security-Policy does not govern) and run there; `axe_violations`
  returns its violations, and `assert_no_serious_axe_violations` fails on serious or critical ones
  and writes the full report to artifacts/axe/<test>.json.
- `screenshot()` writes a full-page PNG to artifacts/screenshots/<test>.png.
- Selenium Manager is kept offline: the driver and browser paths are given, nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
AXE_REPORTS = ARTIFACTS / "axe"
AXE_JS = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
INSTALL_HINT = "run `sudo tests/browser/install_browser.sh` (Debian: apt-get install -y chromium chromium-driver)"

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver", "chromedriver")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1024",
)
PAGE_LOAD_TIMEOUT_S = 30
SCRIPT_TIMEOUT_S = 60
SERVER_START_TIMEOUT_S = 20
# WCAG 2.0/2.1/2.2 A and AA rules, plus axe's best practices (reported, and failing when serious).
AXE_TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice")
FAILING_IMPACTS = ("serious", "critical")
ALL_IMPACTS = ("minor", "moderate", "serious", "critical")

os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver


def _find(candidates: tuple[str, ...]) -> str | None:
    for candidate in candidates:
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


# A browser elsewhere (another OS, a local build): BROWSER_TESTS_CHROMIUM / BROWSER_TESTS_CHROMEDRIVER
# name the executables, and then only those are tried.
CHROMIUM = _find((os.environ["BROWSER_TESTS_CHROMIUM"],) if os.environ.get("BROWSER_TESTS_CHROMIUM") else CHROMIUM_CANDIDATES)
CHROMEDRIVER = _find(
    (os.environ["BROWSER_TESTS_CHROMEDRIVER"],) if os.environ.get("BROWSER_TESTS_CHROMEDRIVER") else CHROMEDRIVER_CANDIDATES
)
MISSING = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if path is None]
SKIP_REASON = f"BROWSER NOT FOUND: {' and '.join(MISSING)} missing; {INSTALL_HINT}" if MISSING else ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not MISSING:
        return
    here = Path(__file__).resolve().parent
    marker = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(marker)


def pytest_report_header(config: pytest.Config) -> str:
    if MISSING:
        return f"browser tests: SKIPPED, {SKIP_REASON}"
    return f"browser tests: chromium {CHROMIUM}, chromedriver {CHROMEDRIVER}"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if MISSING:
        bar = "!" * 78
        terminalreporter.write_line(bar, red=True, bold=True)
        terminalreporter.write_line(f"BROWSER TESTS WERE SKIPPED: {' and '.join(MISSING)} not found.", red=True, bold=True)
        terminalreporter.write_line(f"Nothing was checked in a browser. To fix: {INSTALL_HINT}", red=True, bold=True)
        terminalreporter.write_line(bar, red=True, bold=True)


# ---------------------------------------------------------------------------------------------
# The portal in a background thread


@dataclass
class RunningServer:
    base_url: str
    app: FastAPI


def _serve_in_thread(app: FastAPI) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # a free port, held from here on: no race with other processes
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="portal-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the portal did not start")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def run_portal() -> Iterator[Callable[[FastAPI], RunningServer]]:
    """Start any FastAPI app (the portal, or the portal with preview routes) on a free port."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: FastAPI) -> RunningServer:
        server, thread, base_url = _serve_in_thread(app)
        running.append((server, thread))
        return RunningServer(base_url, app)

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def portal(run_portal: Callable[[FastAPI], RunningServer]) -> RunningServer:
    """The portal as `python -m services.portal` builds it, in development mode."""
    from services.portal.app import create_app
    from services.portal.settings import PortalSettings

    return run_portal(create_app(PortalSettings(mode="development", http_port=0)))


# ---------------------------------------------------------------------------------------------
# The browser


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    if MISSING:  # collection already marked the tests skipped; this guards direct fixture use
        pytest.skip(SKIP_REASON)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, CSP reports
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
    driver.set_script_timeout(SCRIPT_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _artifact_name(node: pytest.Item) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", node.name).strip("_") or "test"


@pytest.fixture
def screenshot(browser: webdriver.Chrome, request: pytest.FixtureRequest) -> Callable[[str | None], Path]:
    """`screenshot()` saves the whole page to artifacts/screenshots/<test>.png (or <test>-<suffix>)."""

    def take(suffix: str | None = None) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        name = _artifact_name(request.node) + (f"-{suffix}" if suffix else "")
        path = SCREENSHOTS / f"{name}.png"
        import base64

        shot = browser.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    return take


def axe_violations(driver: webdriver.Chrome, *, tags: tuple[str, ...] = AXE_TAGS) -> list[dict[str, Any]]:
    """Inject axe-core into the current page, run it, and return its violations."""
    driver.execute_script(AXE_JS.read_text(encoding="utf-8"))
    result = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        axe.run(document, {runOnly: {type: 'tag', values: arguments[0]}, resultTypes: ['violations']})
          .then(r => done({violations: r.violations}))
          .catch(e => done({error: String(e)}));
        """,
        list(tags),
    )
    if "error" in result:
        raise RuntimeError(f"axe-core failed: {result['error']}")
    return result["violations"]


@pytest.fixture
def assert_no_serious_axe_violations(browser: webdriver.Chrome, request: pytest.FixtureRequest) -> Callable[..., list]:
    """Run axe on the current page; fail listing every serious or critical violation (or every
    violation of the impacts given). The full report (all impacts) goes to
    artifacts/axe/<test>.json; returns the violations."""

    def check(impacts: tuple[str, ...] = FAILING_IMPACTS) -> list[dict[str, Any]]:
        violations = axe_violations(browser)
        AXE_REPORTS.mkdir(parents=True, exist_ok=True)
        report = AXE_REPORTS / f"{_artifact_name(request.node)}.json"
        report.write_text(json.dumps(violations, indent=2), encoding="utf-8")
        failing = [v for v in violations if v.get("impact") in impacts]
        if failing:
            lines = [f"{len(failing)} axe violations ({'/'.join(impacts)}) on {browser.current_url} (report: {report}):"]
            for v in failing:
                targets = ", ".join(str(n.get("target")) for n in v.get("nodes", [])[:5])
                lines.append(f"- [{v['impact']}] {v['id']}: {v['help']} at {targets}")
            pytest.fail("\n".join(lines))
        return violations

    return check
