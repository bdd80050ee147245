"""Whose token a finance page uses, and the development sign-in that keeps it.

Production: the user's token is the ``Authorization: Bearer`` header the OIDC reverse proxy in
front of the portal sets after signing the user in (the proxy must strip any such header a
client sends; the portal cannot tell the two apart). No cookie is read or set.

Development: ``/sign-in`` takes a pasted token and keeps it in a cookie that is HttpOnly
(scripts cannot read it), SameSite=Strict (never sent on a request another site starts),
Path=/ and Secure outside development. The sign-in and sign-out forms are POSTs with a CSRF
token (a random value in its own SameSite=Strict cookie, echoed in the form, compared in
constant time; double submit) and an Origin check, so another site cannot sign a user in with
its token or sign them out.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import parse_qs, urlsplit

from fastapi import Request
from fastapi.responses import Response

from services.portal.settings import PortalSettings
from services.portal.tokens import looks_like_jwt

SESSION_COOKIE = "pp_session"
CSRF_COOKIE = "pp_csrf"
SESSION_MAX_AGE_S = 12 * 3600  # the development token lifetime cap (AUTH_MAX_TOKEN_LIFETIME_S there)
MAX_FORM_BYTES = 16 * 1024
_CSRF_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def user_token(request: Request, settings: PortalSettings) -> str | None:
    """The signed-in user's bearer token, or None."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and looks_like_jwt(value.strip()):
        return value.strip()
    if settings.development:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie and looks_like_jwt(cookie):
            return cookie
    return None


def set_session(response: Response, token: str, settings: PortalSettings) -> None:
    response.set_cookie(SESSION_COOKIE, token, max_age=SESSION_MAX_AGE_S, path="/", httponly=True, samesite="strict",
                        secure=not settings.development)


def clear_session(response: Response, settings: PortalSettings) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=not settings.development)


def csrf_token(request: Request) -> tuple[str, bool]:
    """This browser's CSRF token, and whether it is new (then the response must set it)."""
    existing = request.cookies.get(CSRF_COOKIE, "")
    if 32 <= len(existing) <= 64 and set(existing) <= _CSRF_CHARS:
        return existing, False
    return secrets.token_urlsafe(32), True


def set_csrf(response: Response, token: str, settings: PortalSettings) -> None:
    response.set_cookie(CSRF_COOKIE, token, path="/", httponly=True, samesite="strict", secure=not settings.development)


async def read_form(request: Request) -> dict[str, str] | None:
    """An application/x-www-form-urlencoded body of at most MAX_FORM_BYTES, one value per field;
    None for anything else."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in fields.items() if len(v) == 1}


def same_origin(request: Request) -> bool:
    """A state-changing POST came from one of our own pages. Browsers say where a request comes
    from in Sec-Fetch-Site; without it, by Origin. Our pages send no referrer (Referrer-Policy:
    no-referrer), so their own form posts carry ``Origin: null``: that, or no Origin at all, says
    nothing either way, and the CSRF token (whose SameSite=Strict cookie a cross-site post never
    carries) decides."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin and origin != "null":
        parts = urlsplit(origin)
        return parts.netloc == request.headers.get("host", "") and parts.scheme in ("http", "https")
    return True


def csrf_ok(request: Request, submitted: str | None) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    return bool(cookie) and submitted is not None and hmac.compare_digest(cookie.encode(), submitted.encode()) \
        and same_origin(request)


def safe_next(path: str | None, default: str = "/finance") -> str:
    """Only a path on this site: never an open redirect."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path or len(path) > 500:
        return default
    if any(ord(c) < 33 for c in path):
        return default
    return path
