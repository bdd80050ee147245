from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, SecretStr

from shared.settings import ServiceSettings, _aliases, settings_config

if TYPE_CHECKING:
    from services.ledger.periods import Signer

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
    # Group commit (services/ledger/group_commit.py): concurrent HTTP transfer requests join one
    # batch; a request waits for the batch in flight plus at most this long for others to join.
    group_commit_max_wait_ms: float = Field(default=1.0, ge=0, le=100)
    group_commit_max_batch: int = Field(default=1000, ge=1, le=20_000)
    group_commit_queue_max: int = Field(default=10_000, ge=1, le=1_000_000)
    # Pending transfers with a timeout: how often the ledger looks for expired ones, and how many
    # it voids per pass (each pass is one transaction).
    expiry_interval_ms: int = Field(default=1000, ge=10, le=3_600_000)
    expiry_batch_max: int = Field(default=500, ge=1, le=10_000)
    # Consumer fetch tuning (aiokafka): bigger fetches fill a batch in fewer round trips.
    fetch_max_bytes: int = Field(default=52_428_800, ge=1024)
    max_partition_fetch_bytes: int = Field(default=4_194_304, ge=1024)
    # Period close: the Ed25519 key that signs period statements (PEM, PKCS#8: `openssl genpkey
    # -algorithm ed25519`). Production refuses to start without one; development signs with a
    # public development key (services/ledger/periods.py), which proves nothing.
    statement_signing_key: SecretStr | None = Field(default=None, validation_alias=_aliases(PREFIX, "STATEMENT_SIGNING_KEY"))
    # Remittance files (POST /v1/remittances, at most 16 MiB): at most this many rows per file.
    remittance_max_rows: int = Field(default=200_000, ge=1, le=500_000)
    # GET /v1/transfers?format=csv streams at most this many rows (narrow the filters for more).
    search_csv_max_rows: int = Field(default=1_000_000, ge=1, le=50_000_000)

    def security_problems(self) -> list[str]:
        """The ledger's own findings for shared.security (production refuses them)."""
        if self.statement_signing_key is None:
            return ["LEDGER_STATEMENT_SIGNING_KEY is not set (period statements would be signed with the public development key)"]
        from services.ledger.periods import load_private_key

        try:
            load_private_key(self.statement_signing_key.get_secret_value())
        except ValueError as exc:
            return [f"LEDGER_STATEMENT_SIGNING_KEY: {exc}"]
        return []

    def statement_signer(self) -> "Signer":
        """The signer of period statements: the configured key, or in development the public one."""
        from services.ledger.periods import Signer, dev_private_key, load_private_key

        if self.statement_signing_key is not None:
            return Signer(load_private_key(self.statement_signing_key.get_secret_value()))
        if self.mode != "development":
            raise ValueError("LEDGER_STATEMENT_SIGNING_KEY is not set")
        return Signer(dev_private_key())
