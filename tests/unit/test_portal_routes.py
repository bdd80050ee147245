"""The portal's routes with its HTTP clients pointed at fake services (httpx.MockTransport): whose
token each page sends, how the services' refusals and failures become pages, the development
sign-in (cookie flags, CSRF, no open redirect), production's Authorization header, the service
token (minted and refreshed in development, re-read from its file when it changes)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from services.portal.app import create_app
from services.portal.settings import PortalSettings
from services.portal.tokens import DEV_TOKEN_TTL_S, REFRESH_BEFORE_S, ServiceToken
from services.portal.upstream import UpstreamError, map_status
from shared.auth import DEV_SECRET, mint

Handler = Callable[[httpx.Request], httpx.Response]
PUBLICATION = {"period": "2026-Q3", "kind": "quarter", "setting": None, "next_cursor": None, "providers": [],
               "total": {"responses": 0, "counts": None, "positive": 0, "negative": 0, "pct_positive": None,
                         "pct_negative": None, "suppression": "none"}}


def claims(request: httpx.Request) -> dict[str, Any]:
    token = request.headers["authorization"].removeprefix("Bearer ")
    return jwt.decode(token, DEV_SECRET, algorithms=["HS256"])


def fake_services(seen: list[httpx.Request], overrides: dict[str, Any] | None = None) -> Handler:
    """Minimal, valid answers for every route the public pages call; ``overrides`` by path."""
    overrides = overrides or {}

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        if path in overrides:
            found = overrides[path]
            return found(request) if callable(found) else found
        if path == "/v1/publication/fft/periods":
            return httpx.Response(200, json={"first_month": "2026-07", "latest_month": "2026-09"})
        if path == "/v1/publication/fft":
            return httpx.Response(200, json=PUBLICATION)
        if path == "/v1/publication/eligible-episodes":
            return httpx.Response(200, json={"period": "2026-Q3", "months": [], "items": []})
        if path == "/v1/publication/proms":
            return httpx.Response(200, json={"period": "2026-Q3", "min_count": 30, "rule": "", "groups": []})
        return httpx.Response(404, json={"type": "about:blank", "title": "Not found", "status": 404, "detail": "no such thing"},
                              headers={"content-type": "application/problem+json"})

    return handle


@contextlib.asynccontextmanager
async def portal(handler: Handler, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(PortalSettings(**{"mode": "development", **settings}))
    async with app.router.lifespan_context(app):
        for upstream in (app.state.upstreams.feedback, app.state.upstreams.payments, app.state.upstreams.ledger,
                         app.state.upstreams.funds):
            await upstream.close()
            upstream.client = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url=upstream.base_url)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://portal.test") as client:
            yield client


async def test_public_pages_call_with_the_portals_own_national_reports_token():
    seen: list[httpx.Request] = []
    async with portal(fake_services(seen)) as client:
        r = await client.get("/league-table?quarter=2026-Q3")
    assert r.status_code == 200 and "League table: July to September 2026" in r.text
    assert {req.url.path for req in seen} >= {"/v1/publication/fft", "/v1/publication/eligible-episodes", "/v1/publication/proms"}
    for req in seen:
        c = claims(req)
        assert c["scope"] == "reports:read" and c["national"] is True and c["exp"] - c["iat"] == DEV_TOKEN_TTL_S


async def test_bad_addresses_are_refused_before_any_service_is_called():
    seen: list[httpx.Request] = []
    async with portal(fake_services(seen)) as client:
        assert (await client.get("/providers/ZZZ")).status_code == 404  # not a trust the reference data knows
        assert (await client.get("/providers/rj1")).status_code == 400  # not an ODS code at all
        assert (await client.get("/league-table?quarter=2026-Q5")).status_code == 400
        assert (await client.get("/regions/Y99")).status_code == 404
        assert (await client.get("/finance/trusts/RJ1/statements/RTD:2026-09:england-pilot@1")).status_code == 404  # not its own
    assert seen == []


@pytest.mark.parametrize(("upstream", "page"), [(401, 502), (403, 502), (404, 404), (422, 400), (503, 503), (500, 502)])
async def test_a_service_refusing_the_portals_own_token_is_the_portals_fault(upstream, page):
    answer = httpx.Response(upstream, json={"title": "x", "status": upstream, "detail": "secret detail"},
                            headers={"content-type": "application/problem+json"})
    async with portal(fake_services([], {"/v1/publication/fft": answer})) as client:
        r = await client.get("/league-table?quarter=2026-Q3")
    assert r.status_code == page and "nhsuk-header" in r.text
    assert ("secret detail" in r.text) == (page in (400, 404))


async def test_timeouts_unreachable_services_and_bad_bodies():
    def slow(_: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    def down(_: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    for failure, status in ((slow, 504), (down, 503), (httpx.Response(200, content=b"<html>"), 502)):
        async with portal(fake_services([], {"/v1/publication/fft": failure})) as client:
            r = await client.get("/league-table?quarter=2026-Q3")
        assert r.status_code == status
    # the home page explains the trial even when feedback is down
    async with portal(fake_services([], {"/v1/publication/fft/periods": down})) as client:
        assert (await client.get("/")).status_code == 200


def test_status_mapping_table():
    assert [map_status(s, "user") for s in (401, 403, 404, 400, 422, 409, 503, 500)] == [401, 403, 404, 400, 400, 400, 503, 502]
    assert [map_status(s, "service") for s in (401, 403)] == [502, 502]


# ---------------------------------------------------------------------------------------------
# Sign-in (development) and the user's token
# ---------------------------------------------------------------------------------------------
async def _signed_in(client: httpx.AsyncClient, token: str, next_path: str = "/finance") -> httpx.Response:
    form = await client.get(f"/sign-in?next={next_path}")
    csrf = client.cookies.get("pp_csrf")
    assert csrf and f'name="csrf" value="{csrf}"' in form.text
    return await client.post("/sign-in", data={"token": token, "next": next_path, "csrf": csrf},
                             headers={"sec-fetch-site": "same-origin"})


async def test_finance_pages_need_sign_in_and_then_send_the_users_own_token():
    seen: list[httpx.Request] = []
    settlements = {"/v1/providers/RJ1/settlements": httpx.Response(200, json={"items": [], "next_cursor": None})}
    async with portal(fake_services(seen, settlements)) as client:
        r = await client.get("/finance/trusts/RJ1")
        assert r.status_code == 303 and r.headers["location"] == "/sign-in?next=/finance/trusts/RJ1"
        token = mint(["ledger:read"], subject="rj1-finance", ods=["RJ1"])
        r = await _signed_in(client, token, "/finance/trusts/RJ1")
        assert r.status_code == 303 and r.headers["location"] == "/finance/trusts/RJ1"
        cookie = r.headers["set-cookie"]
        assert "pp_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # development runs on http://127.0.0.1
        r = await client.get("/finance/trusts/RJ1")
        assert r.status_code == 200 and "No settled months yet" in r.text and "Sign out" in r.text
    assert seen[-1].headers["authorization"] == f"Bearer {token}"


async def test_a_refusal_of_the_users_token_is_shown_in_the_services_words():
    problem = httpx.Response(403, json={"title": "Forbidden", "status": 403, "detail": "fund:Y63 is outside this token's binding (regions Y56)"},
                             headers={"content-type": "application/problem+json"})
    async with portal(fake_services([], {"/v1/accounts/fund:Y63/statement": problem})) as client:
        await _signed_in(client, mint(["ledger:read"], regions=["Y56"]))
        r = await client.get("/finance/regions/Y63/ledger")
    assert r.status_code == 403 and "You cannot see this page" in r.text and "Sign out" in r.text  # still signed in
    assert "fund:Y63 is outside this token&#39;s binding (regions Y56)" in r.text  # escaped, never raw HTML


@pytest.mark.parametrize("tamper", ["no-csrf", "wrong-csrf", "cross-site", "not-a-token"])
async def test_sign_in_refuses_forged_or_malformed_posts(tamper):
    async with portal(fake_services([])) as client:
        await client.get("/sign-in")
        csrf = client.cookies.get("pp_csrf")
        form = {"token": mint(["ledger:read"]), "next": "/finance", "csrf": csrf}
        headers = {"sec-fetch-site": "same-origin"}
        if tamper == "no-csrf":
            form.pop("csrf")
        elif tamper == "wrong-csrf":
            form["csrf"] = "x" * 43
        elif tamper == "cross-site":
            headers = {"sec-fetch-site": "cross-site"}
        else:
            form["token"] = "<script>alert(1)</script>"
        r = await client.post("/sign-in", data=form, headers=headers)
    assert r.status_code == 400 and "pp_session" not in r.headers.get("set-cookie", "")
    if tamper == "not-a-token":
        assert "&lt;script&gt;" not in r.text and "<script>alert" not in r.text  # the token is never echoed


async def test_sign_in_never_redirects_off_the_site_and_sign_out_clears_the_cookie():
    async with portal(fake_services([])) as client:
        r = await _signed_in(client, mint(["ledger:read"]), "//evil.example/x")
        assert r.headers["location"] == "/finance"
        csrf = client.cookies.get("pp_csrf")
        r = await client.post("/sign-out", data={"csrf": csrf}, headers={"sec-fetch-site": "same-origin"})
        assert r.status_code == 303 and 'pp_session=""' in r.headers["set-cookie"] and "Max-Age=0" in r.headers["set-cookie"]
        assert (await client.get("/sign-out")).status_code == 405


async def test_production_takes_the_users_token_from_the_proxys_header_and_has_no_sign_in(tmp_path: Path):
    seen: list[httpx.Request] = []
    token_file = tmp_path / "token"
    token_file.write_text(mint(["reports:read"], subject="portal-prod") + "\n")
    settlements = {"/v1/providers/RJ1/settlements": httpx.Response(200, json={"items": [], "next_cursor": None})}
    async with portal(fake_services(seen, settlements), mode="production", service_token_file=token_file) as client:
        assert (await client.get("/sign-in")).status_code == 404
        assert (await client.get("/finance/trusts/RJ1")).status_code == 401
        user = mint(["ledger:read"], subject="from-oidc", ods=["RJ1"])
        r = await client.get("/finance/trusts/RJ1", headers={"Authorization": f"Bearer {user}"})
        assert r.status_code == 200 and "strict-transport-security" in r.headers
        assert seen[-1].headers["authorization"] == f"Bearer {user}"
        # a cookie is never read in production
        client.cookies.set("pp_session", user)
        assert (await client.get("/finance/trusts/RJ1")).status_code == 401
        await client.get("/league-table?quarter=2026-Q3")
    assert claims(seen[-1])["sub"] == "portal-prod"


async def test_production_without_a_service_token_answers_503():
    async with portal(fake_services([]), mode="production") as client:
        assert (await client.get("/league-table?quarter=2026-Q3")).status_code == 503


def test_the_development_token_is_minted_again_before_it_expires():
    now = [1_000_000.0]
    tokens = ServiceToken(token_file=None, development=True, clock=lambda: now[0])
    first = tokens.get()
    now[0] += DEV_TOKEN_TTL_S - REFRESH_BEFORE_S - 1
    assert tokens.get() == first
    now[0] += 2
    assert tokens.get() != first


def test_the_token_file_is_read_again_when_it_changes(tmp_path: Path, monkeypatch):
    import services.portal.tokens as tokens_module

    monkeypatch.setattr(tokens_module, "RECHECK_S", 0.0)
    path = tmp_path / "token"
    one, two = mint(["reports:read"], subject="one"), mint(["reports:read"], subject="two")
    path.write_text(one)
    tokens = ServiceToken(token_file=path, development=False)
    assert tokens.get() == one
    path.write_text(two)
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert tokens.get() == two
    path.write_text("not a token")
    os.utime(path, ns=(time.time_ns() + 2 * 10**9, time.time_ns() + 2 * 10**9))
    with pytest.raises(UpstreamError) as err:
        tokens.get()
    assert err.value.status == 503


REGION_ANSWERS = {
    "/v1/publication/funds/Y56/balance-history": httpx.Response(200, json={"points": [{"period": "2026-11", "closing_balance_pence": 5_000}]}),
    "/v1/publication/funds/Y56/inflows": httpx.Response(200, json={"from": "2025-12", "to": "2026-11", "providers": [
        {"provider_code": "RJ1", "diverted_pence": 5_000, "appealed_back_pence": 0}]}),
}


async def test_a_region_page_shows_the_funds_approved_grants_with_their_computed_status():
    seen: list[httpx.Request] = []
    grants = httpx.Response(200, json={"region_code": "Y56", "next_cursor": None, "grants": [
        {"grant_id": "g1", "title": "Better discharge", "status": "reserved", "providers": ["RJ1"], "amount_pence": 4_000,
         "paid_pence": 1_500, "measure_kind": "fft", "measure_status": "improving"}]})
    async with portal(fake_services(seen, {**REGION_ANSWERS, "/v1/publication/funds/Y56/grants": grants})) as client:
        r = await client.get("/regions/Y56")
    assert r.status_code == 200, r.text
    assert "Better discharge" in r.text and "£40.00" in r.text and "£15.00" in r.text and "Improving" in r.text
    [call] = [req for req in seen if req.url.path.endswith("/grants")]
    assert claims(call)["scope"] == "reports:read" and call.url.params["limit"] == "100"


async def test_a_region_page_still_shows_the_funds_money_while_the_funds_service_is_down():
    down = httpx.Response(503, json={"title": "Service unavailable", "status": 503, "detail": "ledger"})
    async with portal(fake_services([], {**REGION_ANSWERS, "/v1/publication/funds/Y56/grants": down})) as client:
        r = await client.get("/regions/Y56")
    assert r.status_code == 200 and "Grants not available" in r.text and "£50.00" in r.text
