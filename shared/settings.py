"""Settings common to every service. Each service subclasses with its own env prefix.

Nothing else in the code base reads ``os.environ`` for configuration. A service-prefixed
variable (``LEDGER_DATABASE_URL``) wins over the shared one (``DATABASE_URL``), so one
environment can point all services at one Kafka while each keeps its own database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _aliases(prefix: str, name: str) -> AliasChoices:
    return AliasChoices(f"{prefix}{name}", name)


class ServiceSettings(BaseSettings):
    """Fields every service has. Subclasses set ``model_config`` with their env prefix."""

    model_config = SettingsConfigDict(extra="ignore")

    service_name: str = "patient-power"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    database_url: str = Field(default="postgresql://postgres@localhost:5432/postgres")
    db_pool_min_size: int = Field(default=1, ge=1, le=50)
    db_pool_max_size: int = Field(default=8, ge=1, le=100)
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: str = "PLAINTEXT"  # SSL / SASL_SSL in production
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_create_topics: bool = True  # off in production where topics are provisioned
    kafka_replication_factor: int = Field(default=1, ge=1, le=5)
    outbox_batch_limit: int = Field(default=500, ge=1, le=10_000)
    outbox_poll_interval_ms: int = Field(default=200, ge=5, le=60_000)
    # The relay VACUUMs the outbox after deleting this many rows (0: leave it to autovacuum): dead
    # rows make every relay pass slower until they are vacuumed (shared/outbox.py).
    outbox_vacuum_every_rows: int = Field(default=20_000, ge=0, le=10_000_000)
    # "inline": the service process runs its own outbox relay (simplest; the default).
    # "external": it does not; `python -m services.<name> relay` runs it as its own process
    # (a sidecar), which takes the relay's CPU off the consumer's event loop.
    outbox_relay: Literal["inline", "external"] = "inline"
    outbox_relay_metrics_port: int = Field(default=0, ge=0, le=65535)  # the external relay's /metrics; 0 = none
    # Garbage collector's first-generation threshold (shared/process.py): larger than Python's
    # 700 because a consumer batch allocates tens of thousands of short-lived objects; with the
    # default the collector cut throughput by about a third (bench/ledger).
    gc_gen0_threshold: int = Field(default=100_000, ge=700, le=10_000_000)
    consumer_max_attempts: int = Field(default=5, ge=1, le=100)
    log_level: str = "INFO"
    # One switch for the whole deployment (shared/security.py): "production" refuses to start on a
    # development secret or key, an unset issuer or audience, or an open /metrics; "development"
    # runs with the public development secret and keys and says so loudly at start.
    mode: Literal["production", "development"] = Field(default="production", validation_alias=AliasChoices("PATIENT_POWER_MODE"))
    # Bearer-token auth (shared/auth.py). No secret by default: development mode falls back to the
    # public development secret; production sets AUTH_JWKS_JSON or AUTH_JWKS_URL (the identity
    # provider's public keys) or a strong secret of its own.
    auth_hs256_secret: SecretStr | None = Field(default=None, validation_alias=AliasChoices("AUTH_HS256_SECRET"))
    auth_jwks_json: str | None = Field(default=None, validation_alias=AliasChoices("AUTH_JWKS_JSON"))
    auth_jwks_url: str | None = Field(default=None, validation_alias=AliasChoices("AUTH_JWKS_URL"))
    auth_jwks_refresh_s: int = Field(default=300, ge=30, le=86_400, validation_alias=AliasChoices("AUTH_JWKS_REFRESH_S"))
    auth_issuer: str | None = Field(default=None, validation_alias=AliasChoices("AUTH_ISSUER"))
    auth_audience: str | None = Field(default=None, validation_alias=AliasChoices("AUTH_AUDIENCE"))
    # Longest token lifetime accepted (exp - now and exp - iat). None: 1 hour in production, 12
    # hours in development (long enough for a test run or a demo, not for a forgotten token).
    auth_max_token_lifetime_s: int | None = Field(default=None, ge=60, le=7 * 86_400,
                                                  validation_alias=AliasChoices("AUTH_MAX_TOKEN_LIFETIME_S"))
    auth_leeway_s: int = Field(default=30, ge=0, le=300, validation_alias=AliasChoices("AUTH_LEEWAY_S"))
    # The static bearer token Prometheus scrapes /metrics with (tokens with metrics:read work
    # too). None: development mode uses the public development scrape token; production refuses.
    metrics_token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("METRICS_TOKEN"))
    # NHS reference data (regions, trusts, sites, ICBs, contracts); None = the shipped OGL extract.
    reference_dir: Path | None = None

    @property
    def max_token_lifetime_s(self) -> int:
        if self.auth_max_token_lifetime_s is not None:
            return self.auth_max_token_lifetime_s
        return 3600 if self.mode == "production" else 12 * 3600


def settings_config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="ignore", populate_by_name=True)
