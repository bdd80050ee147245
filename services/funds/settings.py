"""The funds service's settings (``FUNDS_`` prefix; the common ones in shared/settings.py)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from shared.settings import ServiceSettings, _aliases, settings_config

PREFIX = "FUNDS_"
LEDGER_HOLD_MAX_DAYS = 366  # TransferRequested.timeout_s: the ledger holds a reservation at most this long


class FundsSettings(ServiceSettings):
    model_config = settings_config(PREFIX)

    service_name: str = "funds"
    http_port: int = Field(default=8005, ge=0, le=65535)
    database_url: str = Field(
        default="postgresql://postgres@localhost:5432/funds", validation_alias=_aliases(PREFIX, "DATABASE_URL")
    )
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", validation_alias=_aliases(PREFIX, "KAFKA_BOOTSTRAP_SERVERS")
    )
    # Two consumer groups: "<group>-feedback" (feedback.received.v1) and "<group>-ledger-answers"
    # (ledger.posted.v1), so neither topic's backlog holds the other back.
    consumer_group: str = "funds"
    batch_max_records: int = Field(default=500, ge=1, le=10_000)
    batch_timeout_ms: int = Field(default=20, ge=1, le=10_000)
    # The ledger's HTTP API, read for each fund's balance (posted, reserved, available).
    ledger_base_url: str = "http://127.0.0.1:8003"
    ledger_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # The funds service's own bearer token for the ledger (scope ledger:read, national), read from
    # this file on each use so a rotated token is picked up without a restart. Development mints
    # one with the development secret when it is unset; production refuses to start without it.
    service_token_file: Path | None = None
    # Grant terms. A milestone's reservation lapses (the ledger voids it, the money goes back to
    # the fund) this many days after its due date if nobody has recorded it met: a reservation
    # nobody resolves would otherwise lock improvement money away for good.
    milestone_grace_days: int = Field(default=30, ge=1, le=90)
    # A grant runs at most this long from its proposal, so every hold (due date + grace) fits the
    # ledger's longest timeout (366 days).
    grant_max_span_days: int = Field(default=300, ge=7, le=365)
    # A project may start (its "after" period) up to this long before it is proposed: work already
    # under way. Its baseline must end before the start, so an earlier change is never credited.
    start_backdate_max_days: int = Field(default=90, ge=0, le=366)
    # Measurement (services/funds/measure.py): a period with fewer answers is left off the chart
    # (5: the FFT publication's suppression threshold); limits need this many baseline points
    # (12: Making Data Count's rule of thumb, below which limits are "trial limits"); a status
    # needs this many points after the start.
    min_responses_per_point: int = Field(default=5, ge=1, le=1000)
    min_points_baseline: int = Field(default=12, ge=6, le=104)
    min_points_after: int = Field(default=6, ge=1, le=104)
    page_size_max: int = Field(default=200, ge=1, le=1000)

    @model_validator(mode="after")
    def _holds_fit_the_ledger(self) -> "FundsSettings":
        if self.grant_max_span_days + self.milestone_grace_days >= LEDGER_HOLD_MAX_DAYS:
            raise ValueError(f"grant_max_span_days + milestone_grace_days must be below {LEDGER_HOLD_MAX_DAYS}:"
                             " every milestone's hold must fit the ledger's longest timeout")
        return self
