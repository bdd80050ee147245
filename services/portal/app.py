"""The portal's wiring: FastAPI app, templates, static files, security headers, error pages."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import jinja2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.portal import rendering, routes, session, views
from services.portal.settings import PortalSettings
from services.portal.tokens import ServiceToken
from services.portal.upstream import Upstreams, UpstreamError
from shared.reference import load_reference

log = logging.getLogger("portal")

# default-src 'self' and nothing inline: pages carry no script at all and no style attributes
# (charts use SVG presentation attributes), so neither 'unsafe-inline' nor nonces are needed.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "font-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # for browsers that predate frame-ancestors
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}
HSTS = "max-age=31536000; includeSubDomains"

ERROR_TITLES: dict[int, tuple[str, str]] = {
    400: ("There is a problem with the address", "Check the address and try again."),
    401: ("You need to sign in", "This page shows figures only people who have signed in can see."),
    403: ("You cannot see this page", "You are signed in, but your account does not give you access to this page."),
    404: ("Page not found", "If you typed the web address, check it is correct. If you pasted it, check you copied the whole address."),
    405: ("There is a problem with the request", "This page cannot be used that way."),
    500: ("Sorry, there is a problem with the service", "Try again later."),
    502: ("Sorry, there is a problem with the service", "A service this page needs did not answer properly. Try again later."),
    503: ("Sorry, the service is unavailable", "A service this page needs is not available. Try again later."),
    504: ("Sorry, the service is taking too long", "A service this page needs did not answer in time. Try again later."),
}


class SecurityHeadersMiddleware:
    """Adds the security headers to every HTTP response, ``Cache-Control: no-store`` to every
    page (finance pages hold figures for one user), and HSTS outside development. It is also the
    last resort for an unhandled error: a 500 page with the same headers, the error logged."""

    def __init__(self, app: ASGIApp, *, hsts: bool, error_page: Any) -> None:
        self.app = app
        self.hsts = hsts
        self.error_page = error_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_static = scope["path"].startswith("/static/")
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if self.hsts:
                    headers["Strict-Transport-Security"] = HSTS
                if not is_static:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("unhandled error serving %s", scope.get("path"))
            if started:
                raise
            response = self.error_page(500)
            await response(scope, receive, send_with_headers)


def create_app(settings: PortalSettings | None = None) -> FastAPI:
    settings = settings or PortalSettings()
    env = rendering.make_environment()
    _check_templates(env)
    upstreams = Upstreams.from_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await upstreams.start()  # pooled clients, one per service, closed on the way out
        try:
            yield
        finally:
            await upstreams.close()

    app = FastAPI(
        title="Patient Power portal",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # an HTML portal, not an API
        lifespan=lifespan,
    )
    reference = load_reference()
    app.state.settings = settings
    app.state.templates = env
    app.state.reference = reference
    app.state.upstreams = upstreams
    app.state.service_token = ServiceToken(token_file=settings.service_token_file, development=settings.development)
    app.state.regions = tuple(views.RegionLink(code, name) for code, name in sorted(reference.regions.items()))

    def error_page(status_code: int, detail: str | None = None, request: Request | None = None) -> HTMLResponse:
        title, default_detail = ERROR_TITLES.get(status_code, ERROR_TITLES[500 if status_code >= 500 else 400])
        page = views.ErrorPage(status_code=status_code, title=title, detail=detail or default_detail)
        # A signed-in user refused a page is still signed in: the header says so (and offers sign-out).
        signed_in = request is not None and session.user_token(request, settings) is not None
        csrf = session.csrf_token(request)[0] if signed_in and request is not None else ""
        layout = views.Layout(development_mode=settings.development, signed_in=signed_in, csrf_token=csrf)
        html = rendering.render(env, "error.html", page=page, layout=layout)
        return HTMLResponse(html, status_code=status_code)

    app.state.error_page = error_page

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> HTMLResponse:
        response = error_page(exc.status_code)
        if exc.status_code == 405 and exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> HTMLResponse:
        return error_page(400)

    @app.exception_handler(UpstreamError)
    async def _upstream(request: Request, exc: UpstreamError) -> HTMLResponse:
        # A service refused or failed: its status as a portal page (upstream.py says which).
        return error_page(exc.status, exc.detail, request)

    @app.exception_handler(routes.NotSignedIn)
    async def _not_signed_in(_: Request, exc: routes.NotSignedIn) -> HTMLResponse | RedirectResponse:
        if settings.development:
            from urllib.parse import quote

            return RedirectResponse(f"/sign-in?next={quote(exc.next_path, safe='/')}", status_code=303)
        return error_page(401)  # production: the OIDC proxy should have signed the user in

    @app.exception_handler(views.ViewModelError)
    async def _bad_upstream_data(_: Request, exc: views.ViewModelError) -> HTMLResponse:
        # A service answered with figures that break an invariant: say so, never show them.
        log.error("upstream data broke a view model invariant: %s", exc)
        return error_page(502)

    app.mount("/static", StaticFiles(directory=rendering.STATIC_DIR, follow_symlink=False), name="static")
    app.include_router(routes.router)
    app.add_middleware(SecurityHeadersMiddleware, hsts=not settings.development, error_page=error_page)
    return app


def _check_templates(env: jinja2.Environment) -> None:
    """Compile every template at start-up: a syntax error stops the service, not a request."""
    for name in env.list_templates(extensions=["html"]):
        env.get_template(name)
