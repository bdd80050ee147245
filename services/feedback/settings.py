from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr

from shared.settings import ServiceSettings, _aliases, settings_config
from shared.stats.eq5d import ValueSet, load_value_set

if TYPE_CHECKING:
    from services.feedback.domain import Keyring

PREFIX = "FEEDBACK_"
DEV_PSEUDONYM_KEY = "dev-only-pseudonym-key-change-me"  # public: development only
# The most submissions one command batch may hold (an HTTP batch, an intake batch): the ceiling of
# both settings below and the handler's own limit.
MAX_BATCH_ITEMS = 5000


class FeedbackSettings(ServiceSettings):
    model_config = settings_config(PREFIX)

    service_name: str = "feedback"
    http_port: int = Field(default=8001, ge=0, le=65535)
    database_url: str = Field(
        default="postgresql://postgres@localhost:5432/feedback", validation_alias=_aliases(PREFIX, "DATABASE_URL")
    )
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", validation_alias=_aliases(PREFIX, "KAFKA_BOOTSTRAP_SERVERS")
    )
    consumer_group: str = "feedback"
    # The HMAC key that turns NHS numbers into pseudonyms, from a secret store (README "Key
    # rotation"). Unset: development mode uses the public development key; production refuses.
    pseudonym_key: SecretStr | None = None
    pseudonym_key_id: str = Field(default="dev-1", pattern=r"^[A-Za-z0-9._-]{1,40}$")
    batch_max_items: int = Field(default=500, ge=1, le=MAX_BATCH_ITEMS)
    # Kafka intake: records per batch (one database transaction) and how long to wait to fill one.
    intake_batch_max_records: int = Field(default=500, ge=1, le=MAX_BATCH_ITEMS)
    intake_batch_timeout_ms: int = Field(default=20, ge=1, le=10_000)
    # Keys retired by a rotation, by key id: still used to recognise a patient's earlier answers
    # (first answers, PROM pairing) and earlier submissions' content. JSON object in the
    # environment, e.g. FEEDBACK_PSEUDONYM_PREVIOUS_KEYS='{"2025-1": "…"}'. See services/feedback/README.md.
    pseudonym_previous_keys: dict[str, SecretStr] = Field(default_factory=dict, max_length=10)
    # PROM report: groups with fewer pairs than this show the count but no averages; a request
    # may ask for a higher minimum, never a lower one than prom_min_count_floor.
    prom_min_count: int = Field(default=30, ge=1, le=10_000)
    prom_min_count_floor: int = Field(default=5, ge=1, le=10_000)
    # An EQ-5D-5L value set (TOML, shared/stats/eq5d.py): the PROM reports then give each EQ-5D-5L
    # group's average index gain under it. Unset: no index (none ships: README "EQ-5D-5L index").
    eq5d_value_set_file: Path | None = None

    def eq5d_value_set(self) -> "ValueSet | None":
        """The configured value set, loaded and checked (a bad file stops the start with the reason)."""
        return None if self.eq5d_value_set_file is None else load_value_set(self.eq5d_value_set_file)

    # The plausible authored_at of a submission: at most this many days old, and no later than
    # now plus the clock skew allowed between an app backend and this service.
    authored_at_max_age_days: int = Field(default=730, ge=1, le=3650)
    authored_at_max_skew_s: int = Field(default=300, ge=0, le=86_400)

    def security_problems(self) -> list[str]:
        """The feedback service's own findings for shared.security (production refuses them)."""
        key = self.pseudonym_key.get_secret_value() if self.pseudonym_key is not None else ""
        if not key or key == DEV_PSEUDONYM_KEY:
            return ["FEEDBACK_PSEUDONYM_KEY is not set (the development key is public)"]
        if len(key.encode()) < 32:
            return ["FEEDBACK_PSEUDONYM_KEY is shorter than 32 bytes"]
        return []

    def keyring(self) -> "Keyring":
        from services.feedback.domain import Keyring

        key = self.pseudonym_key.get_secret_value() if self.pseudonym_key is not None else None
        if key is None and self.mode == "development":
            key = DEV_PSEUDONYM_KEY
        if key is None:
            raise ValueError("FEEDBACK_PSEUDONYM_KEY is not set")
        return Keyring(
            current_id=self.pseudonym_key_id,
            current=key.encode(),
            previous={k: v.get_secret_value().encode() for k, v in self.pseudonym_previous_keys.items()},
        )
