"""Start-up checks of a service's security settings: production refuses to start on anything
insecure; development starts, and says loudly that it is insecure.

Production mode (``PATIENT_POWER_MODE=production``, the default) requires:
- bearer tokens verified with the identity provider's keys (``AUTH_JWKS_JSON`` / ``AUTH_JWKS_URL``)
  or a strong shared secret of the deployment's own (never the public development one);
- ``AUTH_ISSUER`` and ``AUTH_AUDIENCE``, so tokens from another issuer or for another service fail;
- a token lifetime cap of at most a day (``AUTH_MAX_TOKEN_LIFETIME_S``);
- a scrape token for ``/metrics`` of the deployment's own (``METRICS_TOKEN``);
- each service's own secrets (feedback: its pseudonym key) not the development ones.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable

from shared.auth import DEV_SECRET, MIN_SECRET_BYTES, parse_jwks

log = logging.getLogger(__name__)

DEV_METRICS_TOKEN = "dev-only-metrics-token"  # public: development only (docker-compose's Prometheus uses it)
PRODUCTION_MAX_LIFETIME_S = 86_400


class InsecureConfiguration(SystemExit):
    """Production settings that must not run. A SystemExit: the process stops with the message."""


def problems(settings: object, extra: Iterable[str] = ()) -> list[str]:
    """What is insecure in ``settings`` (empty: nothing). ``extra``: a service's own findings."""
    found = list(extra)
    s = settings
    secret = s.auth_hs256_secret.get_secret_value() if s.auth_hs256_secret is not None else ""  # type: ignore[attr-defined]
    if secret == DEV_SECRET:
        found.append("AUTH_HS256_SECRET is the public development secret")
    elif secret and len(secret.encode()) < MIN_SECRET_BYTES:
        found.append(f"AUTH_HS256_SECRET is shorter than {MIN_SECRET_BYTES} bytes")
    if not (secret or s.auth_jwks_json or s.auth_jwks_url):  # type: ignore[attr-defined]
        found.append("no token verification keys: set AUTH_JWKS_JSON or AUTH_JWKS_URL (or a strong AUTH_HS256_SECRET)")
    if s.auth_jwks_json:  # type: ignore[attr-defined]
        try:
            if not parse_jwks(json.loads(s.auth_jwks_json)):  # type: ignore[attr-defined]
                found.append("AUTH_JWKS_JSON holds no usable signing key")
        except ValueError as exc:
            found.append(f"AUTH_JWKS_JSON is not a usable JWKS document ({exc})")
    if s.auth_jwks_url and not str(s.auth_jwks_url).startswith("https://"):  # type: ignore[attr-defined]
        found.append("AUTH_JWKS_URL must be https")
    if not s.auth_issuer:  # type: ignore[attr-defined]
        found.append("AUTH_ISSUER is not set")
    if not s.auth_audience:  # type: ignore[attr-defined]
        found.append("AUTH_AUDIENCE is not set")
    if s.max_token_lifetime_s > PRODUCTION_MAX_LIFETIME_S:  # type: ignore[attr-defined]
        found.append(f"AUTH_MAX_TOKEN_LIFETIME_S is above {PRODUCTION_MAX_LIFETIME_S}")
    metrics = s.metrics_token.get_secret_value() if s.metrics_token is not None else ""  # type: ignore[attr-defined]
    if not metrics or metrics == DEV_METRICS_TOKEN or len(metrics.encode()) < MIN_SECRET_BYTES:
        found.append(f"METRICS_TOKEN must be set to a secret of at least {MIN_SECRET_BYTES} bytes")
    return found


def metrics_token(settings: object) -> str | None:
    """The static scrape token in force: the configured one, or in development the public one."""
    token = settings.metrics_token.get_secret_value() if settings.metrics_token is not None else None  # type: ignore[attr-defined]
    if not token and settings.mode == "development":  # type: ignore[attr-defined]
        return DEV_METRICS_TOKEN
    return token or None


def enforce(settings: object, service: str, extra: Iterable[str] = ()) -> None:
    """Refuse to start in production on any problem; in development, warn loudly."""
    found = problems(settings, extra)
    if settings.mode == "production":  # type: ignore[attr-defined]
        if found:
            message = f"{service}: refusing to start in production mode: " + "; ".join(found)
            log.critical(message)
            raise InsecureConfiguration(message)
        return
    banner = (f"{service} is running in DEVELOPMENT mode: INSECURE. It accepts tokens signed with the public development"
              " secret and uses development keys; never expose it. Set PATIENT_POWER_MODE=production for real use.")
    log.warning(banner)
    print(f"WARNING: {banner}", file=sys.stderr, flush=True)
