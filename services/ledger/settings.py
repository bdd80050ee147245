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
    # The relay publishes ledger.posted.v1 in passes of this many rows: one event per transfer,
    # so a larger pass than the other services' default keeps its per-pass SQL off the hot path.
    outbox_batch_limit: int = Field(default=2000, ge=1, le=10_000)
    page_size_max: int = Field(default=1000, ge=1, le=10_000)
    # Pending transfers with a timeout: how often the ledger looks for expired ones, and how many
    # it voids per pass (each pass is one transaction).
    expiry_interval_ms: int = Field(default=1000, ge=10, le=3_600_000)
    expiry_batch_max: int = Field(default=500, ge=1, le=10_000)
    # Consumer fetch tuning (aiokafka): bigger fetches fill a batch in fewer round trips.
    fetch_max_bytes: int = Field(default=52_428_800, ge=1024)
    max_partition_fetch_bytes: int = Field(default=4_194_304, ge=1024)
