"""HTTP clients for the three services the portal composes: one pooled httpx client each, with
bounded timeouts, connection limits and response sizes, and problem details mapped to the
portal's own error pages.

Whose token: public pages call with the portal's service token (``tokens.py``); finance pages
with the signed-in user's token. A refusal means different things for each, so the mapping
differs (``UpstreamError``):
- the user's token refused (401, 403): the user sees that page (sign in; not allowed, with the
  service's reason, which names the field and the binding: the user's own token's, nothing else);
- the service token refused: a portal misconfiguration; the user sees 502 and the log says why;
- 404 stays 404, 400/422 become 400 (the address was wrong), 503 stays 503, a timeout is 504,
  no connection 503, anything else (a 5xx, a body that is not JSON or too large) 502.
Nothing a service answers is rendered as HTML: the error page shows a problem's ``detail`` text,
escaped by the templates, cut to ``MAX_DETAIL_CHARS``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import httpx

log = logging.getLogger("portal.upstream")

MAX_JSON_BYTES = 10 * 1024 * 1024  # the largest JSON answer read (a page of 1,000 providers is ~1 MB)
MAX_DETAIL_CHARS = 300
MAX_KEEPALIVE = 10
Caller = Literal["service", "user"]


class UpstreamError(Exception):
    """A call to a service that did not give the page its data; ``status`` is the page's status."""

    def __init__(self, status: int, detail: str | None = None, *, service: str = "", upstream_status: int | None = None):
        super().__init__(f"{service}: {upstream_status} -> {status}: {detail}")
        self.status = status
        self.detail = detail
        self.service = service
        self.upstream_status = upstream_status


def _problem_detail(response: httpx.Response) -> str | None:
    try:
        body = json.loads(response.content[:65_536])
    except ValueError:
        return None
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail[:MAX_DETAIL_CHARS] if isinstance(detail, str) else None


def map_status(status: int, caller: Caller) -> int:
    """The portal page's status for a service's error status."""
    if status in (401, 403):
        return status if caller == "user" else 502
    if status == 404:
        return 404
    if status in (400, 409, 413, 422):
        return 400
    if status == 503:
        return 503
    return 502


@dataclass
class Upstream:
    """One service: its base URL and a pooled client (started with the app, closed with it)."""

    name: str
    base_url: str
    timeout_s: float
    max_connections: int
    client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=self.max_connections,
                                max_keepalive_connections=min(MAX_KEEPALIVE, self.max_connections)),
            follow_redirects=False,
            trust_env=False,  # never route the portal's calls through a proxy from the environment
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    def _client(self) -> httpx.AsyncClient:
        if self.client is None:
            raise UpstreamError(503, "the portal is starting", service=self.name)
        return self.client

    def _fail(self, response: httpx.Response, caller: Caller) -> UpstreamError:
        detail = _problem_detail(response)
        status = map_status(response.status_code, caller)
        if status == 502 or (caller == "service" and response.status_code in (401, 403)):
            log.error("%s answered %d to %s %s: %s", self.name, response.status_code, response.request.method,
                      response.request.url.path, detail)
        shown = detail if status in (401, 403, 404, 400) else None  # the user's own refusals, in the service's words
        return UpstreamError(status, shown, service=self.name, upstream_status=response.status_code)

    async def get_json(self, path: str, *, token: str, caller: Caller, params: Mapping[str, Any] | None = None) -> Any:
        """GET a JSON document (at most MAX_JSON_BYTES), or raise UpstreamError."""
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        try:
            async with self._client().stream("GET", path, params=_clean(params), headers=headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise self._fail(response, caller)
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JSON_BYTES:
                        log.error("%s answered more than %d bytes to %s", self.name, MAX_JSON_BYTES, path)
                        raise UpstreamError(502, service=self.name, upstream_status=200)
        except httpx.TimeoutException as exc:
            log.warning("%s did not answer %s in time (%s)", self.name, path, type(exc).__name__)
            raise UpstreamError(504, service=self.name) from None
        except httpx.TransportError as exc:
            log.warning("%s unreachable for %s (%s)", self.name, path, type(exc).__name__)
            raise UpstreamError(503, service=self.name) from None
        try:
            return json.loads(bytes(body))
        except ValueError:
            log.error("%s answered %s with a body that is not JSON", self.name, path)
            raise UpstreamError(502, service=self.name, upstream_status=200) from None

    @asynccontextmanager
    async def stream(self, path: str, *, token: str, caller: Caller,
                     params: Mapping[str, Any] | None = None) -> AsyncIterator[tuple[httpx.Response, AsyncIterator[bytes]]]:
        """Open a streamed GET (a CSV): the response once its status is 200, and its body chunks.
        Errors before the first byte are UpstreamError; a failure mid-stream ends the download."""
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with self._client().stream("GET", path, params=_clean(params), headers=headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise self._fail(response, caller)
                yield response, response.aiter_bytes()
        except httpx.TimeoutException:
            raise UpstreamError(504, service=self.name) from None
        except httpx.TransportError:
            raise UpstreamError(503, service=self.name) from None


def _clean(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if params is None else {k: v for k, v in params.items() if v is not None}


@dataclass
class Upstreams:
    feedback: Upstream
    payments: Upstream
    ledger: Upstream
    funds: Upstream

    @classmethod
    def from_settings(cls, settings: Any) -> "Upstreams":
        timeout_s = settings.upstream_timeout_ms / 1000
        n = settings.upstream_max_connections
        return cls(Upstream("feedback", settings.feedback_base_url, timeout_s, n),
                   Upstream("payments", settings.payments_base_url, timeout_s, n),
                   Upstream("ledger", settings.ledger_base_url, timeout_s, n),
                   Upstream("funds", settings.funds_base_url, timeout_s, n))

    async def start(self) -> None:
        for u in (self.feedback, self.payments, self.ledger, self.funds):
            await u.start()

    async def close(self) -> None:
        for u in (self.feedback, self.payments, self.ledger, self.funds):
            await u.close()
