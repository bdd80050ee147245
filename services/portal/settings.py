"""Portal settings: environment variables prefixed ``PORTAL_`` (pydantic-settings).

The portal stores nothing and reads no database: what it needs is where the three services
are, the file holding its own service token (scope ``reports:read``, used for the public
pages), and whether it runs in development mode (sign-in form, cookies without ``Secure``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "PORTAL_"


class PortalSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", populate_by_name=True)

    service_name: str = "portal"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8004, ge=0, le=65535)
    feedback_base_url: str = "http://127.0.0.1:8001"
    payments_base_url: str = "http://127.0.0.1:8002"
    ledger_base_url: str = "http://127.0.0.1:8003"
    funds_base_url: str = "http://127.0.0.1:8005"  # the region pages' grants (optional: pages say when it is down)
    # A file holding the portal's own bearer token (scope reports:read), mounted as a secret;
    # read when the public pages call the APIs, never logged. None: the public pages cannot load
    # data, and /health/ready says so outside development.
    service_token_file: Path | None = None
    # "development": the /sign-in form where a token is pasted, cookies without Secure, no HSTS.
    # "production": the user's token comes from the OIDC proxy's Authorization header.
    mode: Literal["development", "production"] = "production"
    # Limits on every call to the services (used by the API clients).
    upstream_timeout_ms: int = Field(default=5000, ge=100, le=60_000)
    upstream_max_connections: int = Field(default=20, ge=1, le=200)
    log_level: str = "INFO"

    @field_validator("feedback_base_url", "payments_base_url", "ledger_base_url", "funds_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or any(c.isspace() for c in value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @property
    def development(self) -> bool:
        return self.mode == "development"
