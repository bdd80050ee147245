"""The portal's routes. Thin: build a view model, render its template.

Today: the home page and health. The data pages (league table, providers, regions, finance)
come with the API clients; their templates and view models are in place (views.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from services.portal import rendering, views
from services.portal.settings import PortalSettings

router = APIRouter()


def render_page(request: Request, template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render a page with the layout for this request (routes call this)."""
    settings: PortalSettings = request.app.state.settings
    context.setdefault("layout", views.Layout(development_mode=settings.development))
    html = rendering.render(request.app.state.templates, template, **context)
    return HTMLResponse(html, status_code=status_code)


@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> HTMLResponse:
    page = views.HomePage(regions=request.app.state.regions)
    settings: PortalSettings = request.app.state.settings
    layout = views.Layout(current_nav="home", development_mode=settings.development)
    return render_page(request, "home.html", page=page, layout=layout)


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
