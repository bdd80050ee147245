"""Bearer-token (JWT) authentication: who the caller is, what it may do (scopes) and for whom
(its binding). Fails closed: a token that is missing, malformed, unverifiable or carries a claim
of the wrong shape is refused with 401; no code path yields a principal with a scope or a reach it
was not given.

Claims (see README "Threat model"):
- ``sub`` (required): who acts; recorded as the actor of appeals, settlements and manual postings.
- ``scope`` (required): space-separated scopes (OAuth 2 style); unknown scopes are ignored.
- ``exp``, ``iat`` (required): the lifetime may not exceed ``AUTH_MAX_TOKEN_LIFETIME_S``.
- ``iss`` / ``aud``: required and checked when ``AUTH_ISSUER`` / ``AUTH_AUDIENCE`` are set
  (always in production mode).
- The binding, at least one of: ``national: true`` (every organisation), ``regions`` (NHS England
  region codes), ``icbs`` (integrated care boards: themselves and the trusts they commission),
  ``ods`` (trusts: themselves, their sites and held accounts). Each is a non-empty list of codes
  known to the reference data; ``national`` cannot be combined with the others.

Keys: a shared HS256 secret (development, the demo, tests; in production only a strong secret of
your own) and/or the identity provider's public keys as a JWKS document (``AUTH_JWKS_JSON``) or
URL (``AUTH_JWKS_URL``, refreshed in the background and when a token names a key id not yet
seen, so a key rotation by ``kid`` needs no restart). RS256/RS384/RS512, PS256, ES256/ES384.
The algorithm must belong to the key's type: an RSA key never verifies an HS256 token.

Each service declares a policy: the scope each route needs and its binding rule. Routes missing
from the policy are refused (deny by default); the health probes and the API docs are open.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import time
import urllib.request
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.http import Problem
from shared.reference import ReferenceData

log = logging.getLogger(__name__)

SCOPES = {
    "feedback:write": "submit patient feedback (app backends)",
    "feedback:read": "read feedback reports (suppressed aggregates only)",
    "reports:read": "read published, suppressed aggregates and fund figures (the portal's public pages)",
    "payments:write": "send payment requests (commissioners' finance systems)",
    "appeals:write": "file an appeal against a diversion (providers)",
    "appeals:decide": "uphold or reject appeals (never one's own)",
    "appeals:review": "decide a second-level, independent review of a decided appeal (never the appellant, the first decider or the requester)",
    "schemes:admin": "run settlements and manage trial schemes",
    "payments:exempt": "exempt a provider-period from diversions for extraordinary circumstances (regional or national directors)",
    "ledger:read": "read balances, statements, episodes and settlement figures",
    "ledger:admin": "post manual ledger transfers and declare accounts",
    "ledger:audit": "verify the hash chain and see its head (national auditors)",
    "ledger:close": "close an accounting period and sign its statement (national finance)",
    "ledger:reconcile": "import a commissioner's remittance file and reconcile it against the ledger (commissioners' finance)",
    "metrics:read": "scrape /metrics (Prometheus)",
    # Improvement funds (services/funds): maker-checker, so proposing and approving are apart.
    "funds:propose": "propose an improvement grant from a region's fund (fund managers)",
    "funds:approve": "approve or refuse a proposed grant (never one's own proposal)",
    "funds:manage": "record a grant's milestone met (pays it; never the proposer) and cancel grants",
    "funds:read": "read grants, their measures and the funds' reports",
}
OPEN_PATHS = ("/health", "/health/live", "/health/ready", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")
DEV_SECRET = "dev-only-jwt-secret-change-me-0123456789abcdef"  # public: development only
MIN_SECRET_BYTES = 32
ALGORITHMS_HS = ("HS256",)
# The algorithms each kind of public key may verify (a JWK's own "alg" narrows it to one).
ALGORITHMS_BY_KEY = {
    "RSA": ("RS256", "RS384", "RS512", "PS256"),
    "EC:P-256": ("ES256",),
    "EC:P-384": ("ES384",),
}
MAX_TOKEN_BYTES = 8192
MAX_BINDING_CODES = 200
SUBJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@|+\-]{0,199}$")
SUBJECT_RULE = "the sub claim must be 1-200 letters, digits or . _ : @ | + -"
_REGION_RE = re.compile(r"^Y[0-9]{2}$")
_ICB_RE = re.compile(r"^Q[A-Z0-9]{2}$")
_TRUST_RE = re.compile(r"^[A-Z0-9]{3}$")
JWKS_MAX_BYTES = 1_000_000
JWKS_MIN_REFETCH_S = 30.0  # an unknown kid triggers at most one fetch per this interval

bearer = HTTPBearer(auto_error=False, description="JWT with `sub`, `scope` and a binding (`national`, `regions`, `icbs`, `ods`)")


def unauthorized(detail: str) -> Problem:
    """A 401 in our words: never the token library's message, which may echo token contents."""
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


# ---------------------------------------------------------------------------------------------
# Principal and binding
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Binding:
    """For whom a token acts: everything (national), or the union of its regions, ICBs and trusts."""

    national: bool = False
    regions: frozenset[str] = frozenset()
    icbs: frozenset[str] = frozenset()
    providers: frozenset[str] = frozenset()

    def describe(self) -> str:
        if self.national:
            return "national"
        parts = []
        for name, codes in (("regions", self.regions), ("ICBs", self.icbs), ("trusts", self.providers)):
            if codes:
                parts.append(f"{name} {', '.join(sorted(codes))}")
        return "; ".join(parts)


NATIONAL = Binding(national=True)


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]
    binding: Binding


def _code_list(claims: Mapping[str, Any], name: str, pattern: re.Pattern[str], known: Mapping[str, Any] | None) -> frozenset[str]:
    if name not in claims:
        return frozenset()
    value = claims[name]
    if not isinstance(value, list) or not value or len(value) > MAX_BINDING_CODES:
        raise unauthorized(f"the {name} claim must be a non-empty list of codes")
    out = set()
    for code in value:
        if not isinstance(code, str) or not pattern.fullmatch(code):
            raise unauthorized(f"the {name} claim holds a malformed code")
        if known is not None and code not in known:
            raise unauthorized(f"the {name} claim names {code}, which the reference data does not know")
        out.add(code)
    return frozenset(out)


def binding_from_claims(claims: Mapping[str, Any], reference: ReferenceData | None) -> Binding:
    national = claims.get("national", False)
    if not isinstance(national, bool):
        raise unauthorized("the national claim must be true or false")
    regions = _code_list(claims, "regions", _REGION_RE, reference.regions if reference else None)
    icbs = _code_list(claims, "icbs", _ICB_RE, reference.commissioners if reference else None)
    providers = _code_list(claims, "ods", _TRUST_RE, reference.providers if reference else None)
    if national and (regions or icbs or providers):
        raise unauthorized("a national token cannot also carry regions, icbs or ods")
    if not (national or regions or icbs or providers):
        raise unauthorized("the token carries no binding: national, regions, icbs or ods")
    return NATIONAL if national else Binding(False, regions, icbs, providers)


def principal_from_claims(claims: Mapping[str, Any], reference: ReferenceData | None) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not SUBJECT_RE.fullmatch(sub):
        raise unauthorized(SUBJECT_RULE)
    scope = claims.get("scope")
    if not isinstance(scope, str) or len(scope) > 2000:
        raise unauthorized("the scope claim must be a space-separated string")
    scopes = frozenset(s for s in scope.split() if s in SCOPES)
    return Principal(sub, scopes, binding_from_claims(claims, reference))


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PublicKey:
    kid: str
    key: Any
    algorithms: tuple[str, ...]


def parse_jwks(document: Mapping[str, Any]) -> dict[str, PublicKey]:
    """Signing keys of a JWKS document by kid. A key for another use or of an unsupported type is
    skipped with a warning; a document that is not a JWKS raises ValueError."""
    keys = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(keys, list):
        raise ValueError("a JWKS document is an object with a 'keys' list")
    out: dict[str, PublicKey] = {}
    for jwk in keys:
        if not isinstance(jwk, dict):
            raise ValueError("each JWKS key is an object")
        kid = str(jwk.get("kid", ""))
        if jwk.get("use", "sig") != "sig":
            continue
        kty = jwk.get("kty")
        kind = f"EC:{jwk.get('crv')}" if kty == "EC" else kty
        allowed = ALGORITHMS_BY_KEY.get(str(kind))
        if allowed is None:
            log.warning("JWKS key %r of type %s skipped: not supported", kid, kind)
            continue
        if "alg" in jwk:
            if jwk["alg"] not in allowed:
                log.warning("JWKS key %r skipped: alg %s does not fit a %s key", kid, jwk["alg"], kind)
                continue
            allowed = (jwk["alg"],)
        try:
            key = jwt.PyJWK.from_dict({k: v for k, v in jwk.items() if k != "alg"} | {"alg": allowed[0]}).key
        except jwt.PyJWTError as exc:
            raise ValueError(f"JWKS key {kid!r} does not load: {type(exc).__name__}") from exc
        if kid in out:
            raise ValueError(f"JWKS document has two keys with kid {kid!r}")
        out[kid] = PublicKey(kid, key, allowed)
    return out


class KeyStore:
    """The identity provider's public keys: a static document and/or one fetched from a URL,
    refreshed every ``refresh_s`` and, at most once per ``JWKS_MIN_REFETCH_S``, when a token names a
    key id not yet known (a rotation). A failed fetch keeps the keys it had."""

    def __init__(self, static: Mapping[str, Any] | None = None, url: str | None = None, refresh_s: float = 300.0) -> None:
        self.url = url
        self.refresh_s = refresh_s
        self._static = parse_jwks(static) if static else {}
        self._fetched: dict[str, PublicKey] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    @property
    def keys(self) -> dict[str, PublicKey]:
        return {**self._fetched, **self._static}

    def _fetch_blocking(self) -> dict[str, PublicKey]:
        assert self.url is not None
        with urllib.request.urlopen(self.url, timeout=5) as resp:  # noqa: S310 - the operator's configured URL
            body = resp.read(JWKS_MAX_BYTES + 1)
        if len(body) > JWKS_MAX_BYTES:
            raise ValueError("JWKS document too large")
        return parse_jwks(json.loads(body))

    async def refresh(self, *, force: bool = False) -> bool:
        """Fetch the URL's keys (if any). True when the fetch happened and succeeded."""
        if self.url is None:
            return False
        async with self._lock:
            now = time.monotonic()
            if not force and now - self._fetched_at < JWKS_MIN_REFETCH_S:
                return False
            self._fetched_at = now
            try:
                self._fetched = await asyncio.to_thread(self._fetch_blocking)
                log.info("JWKS refreshed from %s: %d keys", self.url, len(self._fetched))
                return True
            except Exception as exc:  # the identity provider briefly unreachable: keep the keys we had
                log.warning("JWKS refresh from %s failed (%s); keeping %d keys", self.url, type(exc).__name__, len(self._fetched))
                return False

    async def start(self) -> None:
        if self.url is None:
            return
        await self.refresh(force=True)

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.refresh_s)
                await self.refresh(force=True)

        self._task = asyncio.create_task(loop(), name="jwks-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------
_JWT_MESSAGES: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidAudienceError, "the token is meant for another audience"),
    (jwt.InvalidIssuerError, "the token comes from another issuer"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not accepted here"),
    (jwt.InvalidIssuedAtError, "the token's iat claim is malformed"),
    (jwt.exceptions.InvalidSubjectError, SUBJECT_RULE),
)


def _message(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the token lacks the {exc.claim} claim"
    for kind, message in _JWT_MESSAGES:
        if isinstance(exc, kind):
            return message
    return "the token is malformed"


VERIFIED_CACHE_MAX = 10_000  # tokens whose verification is remembered (clients reuse a token per request)
VERIFIED_CACHE_S = 60.0  # ... for at most this long, so a retired key stops being honoured within a minute


@dataclass
class AuthConfig:
    hs256_secret: str | None = None
    keys: KeyStore = field(default_factory=KeyStore)
    issuer: str | None = None
    audience: str | None = None
    max_lifetime_s: int = 3600
    leeway_s: int = 30
    reference: ReferenceData | None = None
    _verified: OrderedDict[str, tuple[Principal, float]] = field(default_factory=OrderedDict, repr=False)

    def _key_for(self, header: Mapping[str, Any]) -> tuple[Any, tuple[str, ...]] | None:
        alg = header.get("alg")
        if alg in ALGORITHMS_HS:
            if not self.hs256_secret:
                raise unauthorized("symmetric (HS256) tokens are not accepted here")
            return self.hs256_secret, ALGORITHMS_HS
        keys = self.keys.keys
        kid = header.get("kid")
        if kid is None:
            found = next(iter(keys.values())) if len(keys) == 1 else None
        else:
            found = keys.get(str(kid))
        if found is None:
            return None
        if alg not in found.algorithms:
            raise unauthorized("the token's algorithm is not accepted for its key")
        return found.key, found.algorithms

    async def verify(self, token: str) -> Principal:
        """The principal a bearer token proves, or a 401 Problem saying why not. A token verified
        in the last ``VERIFIED_CACHE_S`` (and not expired since) is not verified again."""
        now = time.time()
        hit = self._verified.get(token)
        if hit is not None and now < hit[1]:
            return hit[0]
        principal, exp = await self._verify(token)
        self._verified[token] = (principal, min(exp, now + VERIFIED_CACHE_S))
        while len(self._verified) > VERIFIED_CACHE_MAX:
            self._verified.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        if len(token) > MAX_TOKEN_BYTES or not token.isascii() or token.count(".") != 2:
            raise unauthorized("the token is malformed or too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise unauthorized("the token is malformed") from None
        if not isinstance(header.get("alg"), str) or header["alg"].lower() == "none":
            raise unauthorized("the token's algorithm is not accepted here")
        chosen = self._key_for(header)
        if chosen is None and await self.keys.refresh():  # a key id we have not seen: maybe a rotation
            chosen = self._key_for(header)
        if chosen is None:
            raise unauthorized("the token is signed with a key this service does not know")
        key, algorithms = chosen
        required = ["exp", "iat", "sub"] + (["iss"] if self.issuer else []) + (["aud"] if self.audience else [])
        try:
            claims = jwt.decode(
                token, key, algorithms=list(algorithms), audience=self.audience, issuer=self.issuer, leeway=self.leeway_s,
                options={"require": required, "verify_aud": self.audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise unauthorized(_message(exc)) from None
        now = time.time()
        exp, iat = claims["exp"], claims["iat"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (exp, iat)):
            raise unauthorized("the token's exp and iat claims must be numbers")
        if exp - now > self.max_lifetime_s + self.leeway_s or exp - iat > self.max_lifetime_s + self.leeway_s:
            raise unauthorized(f"the token lives longer than this service accepts ({self.max_lifetime_s} s)")
        return principal_from_claims(claims, self.reference), float(exp)


def config_from_settings(settings: Any, reference: ReferenceData | None) -> AuthConfig:
    """The verification keys and rules a service's settings describe (checked by shared.security)."""
    secret = settings.auth_hs256_secret.get_secret_value() if settings.auth_hs256_secret is not None else None
    if not secret and settings.mode == "development":
        secret = DEV_SECRET
    static = json.loads(settings.auth_jwks_json) if settings.auth_jwks_json else None
    keys = KeyStore(static, settings.auth_jwks_url, settings.auth_jwks_refresh_s)
    return AuthConfig(hs256_secret=secret or None, keys=keys, issuer=settings.auth_issuer, audience=settings.auth_audience,
                      max_lifetime_s=settings.max_token_lifetime_s, leeway_s=settings.auth_leeway_s, reference=reference)


# ---------------------------------------------------------------------------------------------
# Policy: the scope and binding rule of each route
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """One row of a service's policy: the scope a route needs, what its binding must cover, and
    what is refused (documented in README "Threat model"; enforced by the route's handler)."""

    scope: str
    binding: str
    refused: str = ""


def policy_dependency(policy: Mapping[tuple[str, str], Rule], config: AuthConfig):  # type: ignore[no-untyped-def]
    """A FastAPI dependency enforcing ``policy`` {(METHOD, route path): Rule} for a router."""
    for rule in policy.values():
        if rule.scope not in SCOPES:
            raise ValueError(f"policy names an unknown scope {rule.scope}")

    async def authorize(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        route = request.scope.get("route")
        path = getattr(route, "path", request.url.path)
        rule = policy.get((request.method, path))
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Problem(401, "Unauthorized", "a bearer token is required", headers={"WWW-Authenticate": "Bearer"},
                          required_scope=rule.scope if rule else None)
        principal = await config.verify(credentials.credentials)
        if rule is None:
            raise Problem(403, "Forbidden", f"{request.method} {path} is not open to any scope")
        if rule.scope not in principal.scopes:
            raise Problem(403, "Forbidden", f"this needs the {rule.scope} scope", required_scope=rule.scope)
        request.state.principal = principal
        return principal

    return authorize


def principal_of(request: Request) -> Principal:
    """The verified principal of this request. A route behind the policy always has one; anything
    else (a route wired without it) is refused rather than given a default."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise Problem(401, "Unauthorized", "a bearer token is required")
    return principal


# ---------------------------------------------------------------------------------------------
# Development tokens
# ---------------------------------------------------------------------------------------------
def mint(scopes: list[str], *, subject: str = "dev", regions: list[str] | None = None, icbs: list[str] | None = None,
         ods: list[str] | None = None, ttl_s: int = 3600, secret: str = DEV_SECRET, issuer: str | None = None,
         audience: str | None = None) -> str:
    """A token signed with the shared HS256 secret (development, tests). No binding given: national."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scopes: {', '.join(unknown)}")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "scope": " ".join(scopes), "iat": now, "exp": now + ttl_s, "jti": str(uuid.uuid4())}
    for name, codes in (("regions", regions), ("icbs", icbs), ("ods", ods)):
        if codes:
            claims[name] = list(codes)
    if not (regions or icbs or ods):
        claims["national"] = True
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


DEV_TOKEN_TTL_S = 6 * 3600


def bearer_headers(scopes: list[str], *, subject: str = "dev", regions: list[str] | None = None,
                   icbs: list[str] | None = None, ods: list[str] | None = None) -> dict[str, str]:
    """Authorization header with a fresh development token (demo, tests, benchmarks)."""
    token = mint(scopes, subject=subject, regions=regions, icbs=icbs, ods=ods, ttl_s=DEV_TOKEN_TTL_S)
    return {"Authorization": f"Bearer {token}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.auth", description="Mint a development bearer token.")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mint", help="print a token signed with the development secret (or --secret)")
    m.add_argument("--scope", action="append", required=True, choices=sorted(SCOPES), help="repeat for several")
    m.add_argument("--sub", default="dev")
    m.add_argument("--region", action="append", help="bind to this region (repeatable)")
    m.add_argument("--icb", action="append", help="bind to this ICB and the trusts it commissions (repeatable)")
    m.add_argument("--ods", action="append", help="bind to this trust (repeatable)")
    m.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (services refuse more than their cap)")
    m.add_argument("--secret", default=DEV_SECRET)
    args = parser.parse_args(argv)
    print(mint(args.scope, subject=args.sub, regions=args.region, icbs=args.icb, ods=args.ods, ttl_s=args.ttl,
               secret=args.secret))
    return 0


if __name__ == "__main__":
    sys.exit(main())
