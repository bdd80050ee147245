"""The portal's routes. Thin: check the address, fetch what the page needs from the services,
build its view model (``data.py``), render it.

Public pages call the services with the portal's own token (``reports:read``); finance pages
with the signed-in user's token, so the services decide what the user may see (a region's
finance team asking for another region's ledger gets the services' 403 as a portal page).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta, timezone
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from services.portal import data, rendering, session, views
from services.portal.settings import PortalSettings
from services.portal.upstream import Upstream, UpstreamError

router = APIRouter()

TRUST = r"^[A-Z0-9]{3}$"
REGION = r"^Y[0-9]{2}$"
ICB = r"^Q[A-Z0-9]{2}$"
QUARTER = r"^20[0-9]{2}-Q[1-4]$"
MONTH = r"^20[0-9]{2}-(0[1-9]|1[0-2])$"
DAY = r"^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
SETTLEMENT_ID = r"^[A-Z0-9]{3,5}:20[0-9]{2}-(0[1-9]|1[0-2]):[a-z0-9][a-z0-9\-]{1,62}@[0-9]{1,7}(:late-[0-9]{1,6})?$"
CURSOR = r"^[A-Za-z0-9_\-=.:@]{1,400}$"
MAX_PUBLICATION_PAGES = 20  # x 1,000 providers a page: far more trusts and sites than England has
SERIES_MONTHS = 24
SERIES_WEEKS = 52
log = logging.getLogger(__name__)
MONEY_MONTHS = 12
GRANTS_SHOWN = 100  # a region's approved grants on its page (the funds service's report has them all)
LEDGER_PAGE = 100
EPISODES_PAGE = 100


class NotSignedIn(Exception):
    """A finance page without a user token: the sign-in page (development) or 401 (production)."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def _settings(request: Request) -> PortalSettings:
    return request.app.state.settings


def _ref(request: Request) -> Any:
    return request.app.state.reference


def _upstream(request: Request, name: str) -> Upstream:
    return getattr(request.app.state.upstreams, name)


async def public(request: Request, service: str, path: str, **params: Any) -> Any:
    """A public page's call: the portal's own reports:read token."""
    token = request.app.state.service_token.get()
    return await _upstream(request, service).get_json(path, token=token, caller="service", params=params)


def _user_token(request: Request) -> str:
    token = session.user_token(request, _settings(request))
    if token is None:
        raise NotSignedIn(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    return token


async def as_user(request: Request, service: str, path: str, **params: Any) -> Any:
    """A finance page's call: the signed-in user's own token."""
    return await _upstream(request, service).get_json(path, token=_user_token(request), caller="user", params=params)


def layout(request: Request, *, nav: str | None = None, wide: bool = False,
           breadcrumbs: tuple[views.Breadcrumb, ...] = ()) -> views.Layout:
    settings = _settings(request)
    token, _ = session.csrf_token(request)
    return views.Layout(current_nav=nav, signed_in=session.user_token(request, settings) is not None,
                        development_mode=settings.development, breadcrumbs=breadcrumbs, wide=wide, csrf_token=token)


def render_page(request: Request, template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render a page with the layout for this request (and give the browser its CSRF cookie)."""
    settings: PortalSettings = request.app.state.settings
    context.setdefault("layout", layout(request))
    html = rendering.render(request.app.state.templates, template, **context)
    response = HTMLResponse(html, status_code=status_code)
    token, new = session.csrf_token(request)
    if new:
        # the token the page was rendered with must be the one the cookie holds
        token = context["layout"].csrf_token or token
        session.set_csrf(response, token, settings)
    return response


def _quarter_of(day: date) -> str:
    return f"{day.year}-Q{(day.month - 1) // 3 + 1}"


async def _fft_bounds(request: Request) -> tuple[str | None, str | None]:
    """The first and latest quarter with FFT answers (for defaults and previous/next links)."""
    periods = await public(request, "feedback", "/v1/publication/fft/periods")
    first, latest = periods.get("first_month"), periods.get("latest_month")
    return (views.quarter_of_month(first) if first else None, views.quarter_of_month(latest) if latest else None)


async def _publication(request: Request, period: str, *, level: str = "trust", trust: str | None = None) -> dict[str, Any]:
    """Every page of a publication, joined (suppression is the service's, over all providers)."""
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(MAX_PUBLICATION_PAGES):
        page = await public(request, "feedback", "/v1/publication/fft", period=period, level=level, trust=trust,
                            cursor=cursor, limit=1000)
        rows += page["providers"]
        cursor = page.get("next_cursor")
        if not cursor:
            return {**page, "providers": rows}
    raise UpstreamError(502, service="feedback")  # more pages than any real publication has


# ---------------------------------------------------------------------------------------------
# Public pages
# ---------------------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> HTMLResponse:
    try:
        _, latest = await _fft_bounds(request)
    except UpstreamError:
        latest = None  # the home page explains the trial whether or not the services answer
    page = views.HomePage(latest_quarter=latest, regions=request.app.state.regions)
    return render_page(request, "home.html", page=page, layout=layout(request, nav="home"))


@router.get("/league-table", response_class=HTMLResponse)
async def league_table(request: Request, quarter: Annotated[str | None, Query(pattern=QUARTER)] = None) -> HTMLResponse:
    first, latest = await _fft_bounds(request)
    quarter = quarter or latest or _quarter_of(datetime.now(timezone.utc).date())
    publication = await _publication(request, quarter)
    eligible = await public(request, "payments", "/v1/publication/eligible-episodes", period=quarter)
    proms = await public(request, "feedback", "/v1/publication/proms", period=quarter)
    previous = views.shift_quarter(quarter, -1)
    following = views.shift_quarter(quarter, 1)
    page = data.league_table(
        quarter, publication, eligible, proms, _ref(request),
        previous_quarter=previous if first and previous >= first else None,
        next_quarter=following if latest and following <= latest else None,
        csv_href=f"/league-table.csv?quarter={quarter}")
    return render_page(request, "league_table.html", page=page, layout=layout(request, nav="league-table", wide=True))


@router.get("/league-table.csv")
async def league_table_csv(request: Request, quarter: Annotated[str, Query(pattern=QUARTER)]) -> Response:
    publication = await _publication(request, quarter)
    eligible = await public(request, "payments", "/v1/publication/eligible-episodes", period=quarter)
    body = "".join(data.league_csv(publication, eligible, _ref(request)))
    return Response(body, media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="fft-league-table-{quarter}.csv"'})


def _series_range(interval: str, today: date) -> tuple[str, str]:
    if interval == "week":
        start = today - timedelta(weeks=SERIES_WEEKS - 1)
        return "{}-W{:02d}".format(*start.isocalendar()[:2]), "{}-W{:02d}".format(*today.isocalendar()[:2])
    year, month = today.year, today.month
    first = year * 12 + month - 1 - (SERIES_MONTHS - 1)
    return f"{first // 12}-{first % 12 + 1:02d}", f"{year}-{month:02d}"


@router.get("/providers/{ods}", response_class=HTMLResponse)
async def provider(request: Request, ods: Annotated[str, Path(pattern=TRUST)],
                   interval: Annotated[Literal["month", "week"], Query()] = "month",
                   quarter: Annotated[str | None, Query(pattern=QUARTER)] = None) -> HTMLResponse:
    ref = _ref(request)
    if ods not in ref.providers:
        return request.app.state.error_page(404)
    today = datetime.now(timezone.utc).date()
    first, last = _series_range(interval, today)
    series = await public(request, "feedback", f"/v1/publication/fft/providers/{ods}/series", interval=interval,
                          **{"from": first, "to": last})
    money_last = f"{today:%Y-%m}"
    money = await public(request, "payments", f"/v1/publication/providers/{ods}/money",
                         **{"from": _months_before(money_last, MONEY_MONTHS - 1), "to": money_last})
    if quarter is None:  # the latest quarter with answers, unless the link (from a league table) names one
        _, quarter = await _fft_bounds(request)
    summary = None
    if quarter:
        trust_rows = (await _publication(request, quarter, trust=ods))["providers"]
        site_rows = (await _publication(request, quarter, level="site", trust=ods))["providers"]
        eligible = data.eligible_by_provider(await public(request, "payments", "/v1/publication/eligible-episodes", period=quarter))
        summary = data.provider_quarter(quarter, trust_rows[0] if trust_rows else None, site_rows, eligible.get(ods, 0), ref,
                                        views.shift_quarter(quarter, -1))
    page = data.provider_page(ods, ref, series, money, summary)
    crumbs = (views.Breadcrumb("League table", "/league-table"),)
    return render_page(request, "provider.html", page=page, layout=layout(request, breadcrumbs=crumbs))


def _months_before(month: str, n: int) -> str:
    index = int(month[:4]) * 12 + int(month[5:7]) - 1 - n
    return f"{index // 12}-{index % 12 + 1:02d}"


@router.get("/regions/{code}", response_class=HTMLResponse)
async def region(request: Request, code: Annotated[str, Path(pattern=REGION)]) -> HTMLResponse:
    ref = _ref(request)
    if code not in ref.regions:
        return request.app.state.error_page(404)
    today = datetime.now(timezone.utc).date()
    last = f"{today:%Y-%m}"
    first = _months_before(last, MONEY_MONTHS - 1)
    history = await public(request, "ledger", f"/v1/publication/funds/{code}/balance-history", interval="month",
                           **{"from": f"{first}-01", "to": today.isoformat()})
    inflows = await public(request, "payments", f"/v1/publication/funds/{code}/inflows", **{"from": first, "to": last})
    try:  # the grants are the page's last section: the fund's money shows even while the funds service is down
        grants = await public(request, "funds", f"/v1/publication/funds/{code}/grants", limit=GRANTS_SHOWN)
    except UpstreamError as exc:
        log.warning("region page %s without grants: %s", code, exc)
        grants = None
    page = data.region_page(code, ref, history, inflows, grants)
    return render_page(request, "region.html", page=page, layout=layout(request))


# ---------------------------------------------------------------------------------------------
# Finance (the signed-in user's own token)
# ---------------------------------------------------------------------------------------------
FINANCE_CRUMBS = (views.Breadcrumb("Finance", "/finance"),)


def _finance_layout(request: Request) -> views.Layout:
    return layout(request, nav="finance", breadcrumbs=FINANCE_CRUMBS)


@router.get("/finance", response_class=HTMLResponse)
async def finance_index(request: Request) -> HTMLResponse:
    _user_token(request)
    ref = _ref(request)
    today = datetime.now(timezone.utc).date()
    page = views.FinanceIndexPage(
        trusts=tuple(views.Choice(c, f"{o.name} ({c})") for c, o in sorted(ref.providers.items(), key=lambda kv: kv[1].name)),
        commissioners=tuple(views.Choice(c, f"{o.name} ({c})") for c, o in sorted(ref.commissioners.items(), key=lambda kv: kv[1].name)),
        regions=tuple(views.Choice(c, f"{n} ({c})") for c, n in sorted(ref.regions.items(), key=lambda kv: kv[1])),
        default_period=_months_before(f"{today:%Y-%m}", 1), default_from=f"{today:%Y-%m}-01", default_to=today.isoformat())
    return render_page(request, "finance/index.html", page=page, layout=layout(request, nav="finance"))


@router.get("/finance/trusts", response_class=HTMLResponse)
async def finance_trust_choice(request: Request, ods: Annotated[str, Query(pattern=TRUST)]) -> RedirectResponse:
    return RedirectResponse(f"/finance/trusts/{ods}", status_code=303)


@router.get("/finance/trusts/{ods}", response_class=HTMLResponse)
async def trust_statements(request: Request, ods: Annotated[str, Path(pattern=TRUST)],
                           cursor: Annotated[str | None, Query(pattern=CURSOR)] = None) -> HTMLResponse:
    if ods not in _ref(request).providers:
        return request.app.state.error_page(404)
    body = await as_user(request, "payments", f"/v1/providers/{ods}/settlements", cursor=cursor, limit=24)
    nxt = f"/finance/trusts/{ods}?cursor={quote(body['next_cursor'])}" if body.get("next_cursor") else None
    page = data.trust_statements(ods, _ref(request), body, nxt)
    return render_page(request, "finance/trust_statements.html", page=page, layout=_finance_layout(request))


def _settlement_of(ods: str, settlement_id: str) -> bool:
    """A settlement id starts with its provider's code: a trust's page shows only its own."""
    return settlement_id.split(":", 1)[0] == ods


@router.get("/finance/trusts/{ods}/statements/{settlement_id}", response_class=HTMLResponse)
async def trust_statement(request: Request, ods: Annotated[str, Path(pattern=TRUST)],
                          settlement_id: Annotated[str, Path(pattern=SETTLEMENT_ID)],
                          cursor: Annotated[str | None, Query(pattern=CURSOR)] = None) -> HTMLResponse:
    if ods not in _ref(request).providers or not _settlement_of(ods, settlement_id):
        return request.app.state.error_page(404)
    body = await as_user(request, "payments", f"/v1/settlements/{quote(settlement_id, safe=':@')}/episodes", cursor=cursor,
                         limit=EPISODES_PAGE)
    nxt = (f"/finance/trusts/{ods}/statements/{quote(settlement_id, safe=':@')}?cursor={quote(body['next_cursor'])}"
           if body.get("next_cursor") else None)
    page = data.statement_with_episodes(ods, _ref(request), body, nxt)
    crumbs = (*FINANCE_CRUMBS, views.Breadcrumb("Settlement statements", f"/finance/trusts/{ods}"))
    return render_page(request, "finance/trust_statements.html", page=page,
                       layout=layout(request, nav="finance", breadcrumbs=crumbs))


async def _proxy_csv(request: Request, service: str, path: str, filename: str, **params: Any) -> StreamingResponse:
    """Stream a service's CSV through to the browser with the user's token; a refusal before the
    first byte is a portal error page."""
    cm = _upstream(request, service).stream(path, token=_user_token(request), caller="user", params=params)
    _response, chunks = await cm.__aenter__()

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await cm.__aexit__(None, None, None)

    return StreamingResponse(body(), media_type="text/csv; charset=utf-8",
                             headers={"content-disposition": f'attachment; filename="{filename}"'})


@router.get("/finance/trusts/{ods}/statements/{settlement_id}/episodes.csv")
async def trust_statement_csv(request: Request, ods: Annotated[str, Path(pattern=TRUST)],
                              settlement_id: Annotated[str, Path(pattern=SETTLEMENT_ID)]) -> Response:
    if ods not in _ref(request).providers or not _settlement_of(ods, settlement_id):
        return request.app.state.error_page(404)
    name = "settlement-" + re.sub(r"[^A-Za-z0-9.-]+", "-", settlement_id) + ".csv"
    return await _proxy_csv(request, "payments", f"/v1/settlements/{quote(settlement_id, safe=':@')}/episodes.csv", name)


@router.get("/finance/commissioners", response_class=HTMLResponse)
async def finance_commissioner_choice(request: Request, icb: Annotated[str, Query(pattern=ICB)],
                                      period: Annotated[str, Query(pattern=MONTH)]) -> RedirectResponse:
    return RedirectResponse(f"/finance/commissioners/{icb}?period={period}", status_code=303)


@router.get("/finance/commissioners/{icb}", response_class=HTMLResponse)
async def commissioner(request: Request, icb: Annotated[str, Path(pattern=ICB)],
                       period: Annotated[str | None, Query(pattern=MONTH)] = None) -> HTMLResponse:
    if icb not in _ref(request).commissioners:
        return request.app.state.error_page(404)
    period = period or _months_before(f"{datetime.now(timezone.utc):%Y-%m}", 1)
    body = await as_user(request, "payments", f"/v1/commissioners/{icb}/periods/{period}/providers")
    page = data.commissioner_page(icb, _ref(request), body)
    return render_page(request, "finance/commissioner.html", page=page, layout=_finance_layout(request))


def _ledger_window(date_from: str | None, date_to: str | None) -> tuple[date, date]:
    today = datetime.now(timezone.utc).date()
    try:
        first = date.fromisoformat(date_from) if date_from else today.replace(day=1)
        last = date.fromisoformat(date_to) if date_to else today
    except ValueError:
        raise UpstreamError(400, "from and to must be real dates (YYYY-MM-DD)") from None
    if last < first:
        raise UpstreamError(400, "to is before from")
    return first, last


def _instant(d: date) -> str:
    return f"{d.isoformat()}T00:00:00Z"


@router.get("/finance/regions", response_class=HTMLResponse)
async def finance_region_choice(request: Request, code: Annotated[str, Query(pattern=REGION)],
                                date_from: Annotated[str | None, Query(alias="from", pattern=DAY)] = None,
                                date_to: Annotated[str | None, Query(alias="to", pattern=DAY)] = None) -> RedirectResponse:
    query = urlencode({k: v for k, v in (("from", date_from), ("to", date_to)) if v})
    return RedirectResponse(f"/finance/regions/{code}/ledger" + (f"?{query}" if query else ""), status_code=303)


@router.get("/finance/regions/{code}/ledger", response_class=HTMLResponse)
async def region_ledger(request: Request, code: Annotated[str, Path(pattern=REGION)],
                        date_from: Annotated[str | None, Query(alias="from", pattern=DAY)] = None,
                        date_to: Annotated[str | None, Query(alias="to", pattern=DAY)] = None,
                        cursor: Annotated[str | None, Query(pattern=CURSOR)] = None) -> HTMLResponse:
    if code not in _ref(request).regions:
        return request.app.state.error_page(404)
    first, last = _ledger_window(date_from, date_to)
    window = {"from": _instant(first), "to": _instant(last + timedelta(days=1))}
    body = await as_user(request, "ledger", f"/v1/accounts/fund:{code}/statement", cursor=cursor, limit=LEDGER_PAGE, **window)
    here = urlencode({"from": first.isoformat(), "to": last.isoformat()})
    nxt = f"/finance/regions/{code}/ledger?{here}&cursor={quote(body['next_cursor'])}" if body.get("next_cursor") else None
    page = data.region_ledger(code, _ref(request), body, date_from=first.isoformat(), date_to=last.isoformat(),
                              continued=cursor is not None, next_href=nxt, csv_href=f"/finance/regions/{code}/ledger.csv?{here}")
    return render_page(request, "finance/region_ledger.html", page=page, layout=_finance_layout(request))


@router.get("/finance/regions/{code}/ledger.csv")
async def region_ledger_csv(request: Request, code: Annotated[str, Path(pattern=REGION)],
                            date_from: Annotated[str | None, Query(alias="from", pattern=DAY)] = None,
                            date_to: Annotated[str | None, Query(alias="to", pattern=DAY)] = None) -> Response:
    if code not in _ref(request).regions:
        return request.app.state.error_page(404)
    first, last = _ledger_window(date_from, date_to)
    return await _proxy_csv(request, "ledger", f"/v1/accounts/fund:{code}/statement.csv", f"fund-{code}-{first}-{last}.csv",
                            **{"from": _instant(first), "to": _instant(last + timedelta(days=1))})


# ---------------------------------------------------------------------------------------------
# Sign-in (development only: in production the OIDC proxy signs users in)
# ---------------------------------------------------------------------------------------------
def _sign_in_page(request: Request, next_path: str, error: str | None = None, status_code: int = 200) -> HTMLResponse:
    lay = layout(request, nav="finance")
    page = views.SignInPage(next_path=session.safe_next(next_path), error=error, csrf_token=lay.csrf_token)
    return render_page(request, "sign_in.html", page=page, layout=lay, status_code=status_code)


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_form(request: Request, next: Annotated[str | None, Query(max_length=500)] = None) -> HTMLResponse:
    if not _settings(request).development:
        return request.app.state.error_page(404)
    return _sign_in_page(request, next or "/finance")


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request) -> Response:
    settings = _settings(request)
    if not settings.development:
        return request.app.state.error_page(404)
    form = await session.read_form(request)
    if form is None or not session.csrf_ok(request, form.get("csrf")):
        return request.app.state.error_page(400, "The form could not be checked. Open the sign-in page again and retry.")
    next_path = session.safe_next(form.get("next"))
    token = (form.get("token") or "").strip()
    if not session.looks_like_jwt(token):
        return _sign_in_page(request, next_path, "Enter a bearer token: three parts separated by full stops", 400)
    response = RedirectResponse(next_path, status_code=303)
    session.set_session(response, token, settings)
    return response


@router.post("/sign-out", response_class=HTMLResponse)
async def sign_out(request: Request) -> Response:
    settings = _settings(request)
    if not settings.development:
        return request.app.state.error_page(404)
    form = await session.read_form(request)
    if form is None or not session.csrf_ok(request, form.get("csrf")):
        return request.app.state.error_page(400, "The form could not be checked. Reload the page and retry.")
    response = RedirectResponse("/", status_code=303)
    session.clear_session(response, settings)
    return response


# ---------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------
@router.get("/health/live")
async def live() -> JSONResponse:
    """The process is up and serving."""
    return JSONResponse({"status": "live"})


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    """Ready to serve pages: templates compiled, the NHS CSS present, and (outside development)
    the service token file readable and not empty. The token itself is never returned."""
    settings: PortalSettings = request.app.state.settings
    checks = {
        "templates": "ok",  # compiled at start-up by create_app, or it would not have started
        "static": "ok" if (rendering.STATIC_DIR / rendering.NHSUK_CSS).is_file() else "missing nhsuk-frontend CSS",
        "service_token": _token_check(settings),
    }
    ok = all(v in ("ok", "not configured (development)") for v in checks.values())
    return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)


def _token_check(settings: PortalSettings) -> str:
    path = settings.service_token_file
    if path is None:
        return "not configured (development)" if settings.development else "PORTAL_SERVICE_TOKEN_FILE is not set"
    try:
        size = path.stat().st_size
    except OSError:
        return "service token file cannot be read"
    if size == 0 or size > 16_384:
        return "service token file is empty or too large"
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError:
        return "service token file cannot be read"
    return "ok"


__all__ = ["router", "render_page", "NotSignedIn"]
