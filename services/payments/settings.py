from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.payments.domain import DEFAULT_HOLD_MODEL, HoldModel
from shared.settings import ServiceSettings, _aliases, settings_config

PREFIX = "PAYMENTS_"
DEFAULT_SCHEMES = Path(__file__).parent / "schemes"


class PaymentsSettings(ServiceSettings):
    model_config = settings_config(PREFIX)

    service_name: str = "payments"
    http_port: int = Field(default=8002, ge=0, le=65535)
    database_url: str = Field(
        default="postgresql://postgres@localhost:5432/payments", validation_alias=_aliases(PREFIX, "DATABASE_URL")
    )
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", validation_alias=_aliases(PREFIX, "KAFKA_BOOTSTRAP_SERVERS")
    )
    consumer_group: str = "payments"
    schemes_dir: Path = DEFAULT_SCHEMES
    batch_max_items: int = Field(default=1000, ge=1, le=10_000)
    # Kafka consumers (payment requests + feedback; the ledger's answers): records per batch and
    # how long to wait to fill one. Each batch is one database transaction.
    batch_max_records: int = Field(default=500, ge=1, le=10_000)
    batch_timeout_ms: int = Field(default=20, ge=1, le=10_000)
    settlement_schedule_enabled: bool = False
    settlement_check_interval_s: int = Field(default=3600, ge=1, le=86_400)
    # Settlement jobs (services/payments/jobs.py): a running job whose runner has not been heard
    # from for this long is taken over (a crash, a kill, a restart); idle runners look for new
    # jobs this often (a new job also wakes the runner of the process that took it at once).
    settlement_job_lease_s: float = Field(default=30.0, ge=1, le=3600)
    settlement_job_poll_s: float = Field(default=1.0, ge=0.05, le=60)
    # How the at-risk part is held in the ledger (services/payments/domain.py, HoldModel):
    # "two_phase" (domain.DEFAULT_HOLD_MODEL): a pending commissioner -> provider transfer per
    # payment, posted in part or voided at settlement; needs a ledger with two-phase support.
    # "held_account": posted to held:<provider> (for a ledger without it). Recorded per episode,
    # so switching is safe.
    ledger_hold_model: HoldModel = DEFAULT_HOLD_MODEL
    # The plausible activity dates of a payment request: from this many days ago to tomorrow.
    activity_date_max_age_days: int = Field(default=730, ge=1, le=3650)
    # A transfer the ledger has not answered after this long is listed as overdue by
    # GET /v1/ledger-discrepancies (the ledger answers in well under a second when it is up).
    ledger_answer_overdue_s: int = Field(default=3600, ge=10, le=30 * 86_400)
