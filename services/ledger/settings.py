from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings, _aliases, settings_config

PREFIX = "LEDGER_"


class LedgerSettings(ServiceSettings):
    model_config = settings_config(PREFIX)

    service_name: str = "ledger"
    http_port: int = Field(default=8003, ge=0, le=65535)
    database_url: str = Field(
        default="postgresql://postgres@localhost:5432/ledger", validation_alias=_aliases(PREFIX, "DATABASE_URL")
    )
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", validation_alias=_aliases(PREFIX, "KAFKA_BOOTSTRAP_SERVERS")
    )
    consumer_group: str = "ledger"
    batch_max_records: int = Field(default=2000, ge=1, le=20_000)
    batch_timeout_ms: int = Field(default=20, ge=1, le=10_000)
    page_size_max: int = Field(default=1000, ge=1, le=10_000)
