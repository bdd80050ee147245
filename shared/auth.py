"""Bearer-token (JWT) authentication and scope-based authorisation for every HTTP API.

Tokens carry ``sub``, ``scope`` (space-separated, OAuth 2 style) and optionally ``regions``
(NHS England region codes): a token with regions sees only those regions' providers and funds.
Verification keys come from settings: a shared HS256 secret (development, the demo, tests) or
public keys as a JWKS document (production; RS256/ES256 from the organisation's identity provider).

Each service declares a policy: which scope each route needs. Routes missing from the policy are
refused (deny by default); /health, /metrics and the API docs are open.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.http import Problem

SCOPES = {
    "feedback:write": "submit patient feedback (app backends)",
    "feedback:read": "read feedback reports (suppressed aggregates only)",
    "payments:write": "send payment requests (commissioners' finance systems)",
    "appeals:write": "file an appeal against a diversion (providers)",
    "appeals:decide": "uphold or reject appeals",
    "schemes:admin": "run settlements and manage trial schemes",
    "ledger:read": "read balances, statements, episodes and settlement figures",
    "ledger:admin": "post manual ledger transfers and corrections",
}
OPEN_PATHS = ("/health", "/metrics", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")
DEV_SECRET = "dev-only-jwt-secret-change-me-0123456789abcdef"  # ≥ 32 bytes for HS256
ALGORITHMS_HS = ["HS256"]
ALGORITHMS_PK = ["RS256", "ES256"]
MAX_TOKEN_BYTES = 8192

bearer = HTTPBearer(auto_error=False, description="JWT with `scope` (and optional `regions`) claims")


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]
    regions: frozenset[str] | None = None  # None = every region

    def sees_region(self, region_code: str | None) -> bool:
        return self.regions is None or (region_code is not None and region_code in self.regions)


@dataclass
class AuthConfig:
    enabled: bool = True
    hs256_secret: str | None = DEV_SECRET
    jwks: Mapping[str, Any] | None = None
    issuer: str | None = None
    audience: str | None = None
    leeway_s: int = 30
    _keys: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for jwk in (self.jwks or {}).get("keys", []):
            self._keys[jwk.get("kid", "")] = jwt.PyJWK.from_dict(jwk).key

    def verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise Problem(401, "Unauthorized", "token too large", type_="about:blank")
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") in ALGORITHMS_HS:
                if not self.hs256_secret:
                    raise jwt.InvalidTokenError("symmetric tokens are not accepted here")
                key, algorithms = self.hs256_secret, ALGORITHMS_HS
            else:
                key = self._keys.get(header.get("kid", "")) or (next(iter(self._keys.values())) if len(self._keys) == 1 else None)
                if key is None:
                    raise jwt.InvalidTokenError("unknown signing key")
                algorithms = ALGORITHMS_PK
            claims = jwt.decode(
                token, key, algorithms=algorithms, audience=self.audience, issuer=self.issuer, leeway=self.leeway_s,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise Problem(401, "Unauthorized", f"invalid bearer token: {exc}") from exc
        scopes = frozenset(str(claims.get("scope", "")).split())
        regions = claims.get("regions")
        return Principal(str(claims["sub"]), scopes, frozenset(regions) if isinstance(regions, list) else None)


def mint(scopes: list[str], *, subject: str = "dev", regions: list[str] | None = None, ttl_s: int = 3600,
         secret: str = DEV_SECRET, issuer: str | None = None, audience: str | None = None) -> str:
    """A development token signed with the shared secret."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scopes: {', '.join(unknown)}")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "scope": " ".join(scopes), "iat": now, "exp": now + ttl_s, "jti": str(uuid.uuid4())}
    if regions:
        claims["regions"] = regions
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


def config_from_settings(settings: Any) -> AuthConfig:
    jwks = json.loads(settings.auth_jwks_json) if getattr(settings, "auth_jwks_json", None) else None
    secret = settings.auth_hs256_secret.get_secret_value() if getattr(settings, "auth_hs256_secret", None) else None
    return AuthConfig(enabled=settings.auth_enabled, hs256_secret=secret, jwks=jwks,
                      issuer=settings.auth_issuer, audience=settings.auth_audience)


def policy_dependency(policy: Mapping[tuple[str, str], str], config: AuthConfig):  # type: ignore[no-untyped-def]
    """A FastAPI dependency enforcing ``policy`` {(METHOD, route path): scope} for a router."""

    async def authorize(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        if not config.enabled:
            principal = Principal("anonymous", frozenset(SCOPES))
            request.state.principal = principal
            return principal
        route = request.scope.get("route")
        path = getattr(route, "path", request.url.path)
        needed = policy.get((request.method, path))
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Problem(401, "Unauthorized", "a bearer token is required", required_scope=needed)
        principal = config.verify(credentials.credentials)
        if needed is None:
            raise Problem(403, "Forbidden", f"{request.method} {path} is not open to any scope")
        if needed not in principal.scopes:
            raise Problem(403, "Forbidden", f"this needs the {needed} scope", required_scope=needed)
        request.state.principal = principal
        return principal

    return authorize


def principal_of(request: Request) -> Principal:
    return getattr(request.state, "principal", None) or Principal("anonymous", frozenset(SCOPES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.auth", description="Mint a development bearer token.")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mint", help="print a token signed with AUTH secret (dev only)")
    m.add_argument("--scope", action="append", required=True, choices=sorted(SCOPES), help="repeat for several")
    m.add_argument("--sub", default="dev")
    m.add_argument("--region", action="append", help="limit reads to this region (repeatable)")
    m.add_argument("--ttl", type=int, default=3600)
    m.add_argument("--secret", default=DEV_SECRET)
    args = parser.parse_args(argv)
    print(mint(args.scope, subject=args.sub, regions=args.region, ttl_s=args.ttl, secret=args.secret))
    return 0


def bearer_headers(scopes: list[str], *, subject: str = "dev", regions: list[str] | None = None) -> dict[str, str]:
    """Authorization header with a fresh development token (demo, tests, benchmarks)."""
    return {"Authorization": f"Bearer {mint(scopes, subject=subject, regions=regions, ttl_s=6 * 3600)}"}


if __name__ == "__main__":
    sys.exit(main())
