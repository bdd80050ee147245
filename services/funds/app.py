"""The funds service: FastAPI app + FastStream consumers + outbox relay in one process."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from services.funds import api, consumer
from services.funds.domain import Limits
from services.funds.handlers import FundsHandlers
from services.funds.ledger_client import LedgerClient, ServiceToken
from services.funds.policy import POLICY
from services.funds.settings import FundsSettings
from services.funds.store import FundsTx
from shared.reference import load_reference
from shared.service import Runtime, service_app
from shared.uow import PgUnitOfWork


def limits_of(settings: FundsSettings) -> Limits:
    return Limits(grace_days=settings.milestone_grace_days, max_span_days=settings.grant_max_span_days,
                  backdate_max_days=settings.start_backdate_max_days, min_points_baseline=settings.min_points_baseline)


class FundsRuntime(Runtime):
    """The shared runtime with the funds service's one write path and its ledger client."""

    def __init__(self, settings: FundsSettings, ledger_http: httpx.AsyncClient | None = None) -> None:
        super().__init__(settings, migrations=("services.funds",))
        self.reference = load_reference(settings.reference_dir)
        self.handlers = FundsHandlers(PgUnitOfWork(lambda: self.pool, FundsTx), ref=self.reference, limits=limits_of(settings))
        secret = settings.auth_hs256_secret.get_secret_value() if settings.auth_hs256_secret is not None else None
        token = ServiceToken(token_file=settings.service_token_file, development=settings.mode == "development", secret=secret)
        self.ledger = LedgerClient(settings.ledger_base_url, token, timeout_s=settings.ledger_timeout_s, client=ledger_http)
        self.on_stop(self.ledger.close)


def production_problems(settings: FundsSettings) -> list[str]:
    if settings.service_token_file is None:
        return ["FUNDS_SERVICE_TOKEN_FILE is not set (the funds service reads fund balances from the ledger with its own"
                " ledger:read token)"]
    return []


def create_app(settings: FundsSettings | None = None, *, ledger_http: httpx.AsyncClient | None = None) -> FastAPI:
    """``ledger_http``: a client for the ledger's API (tests bind one to an in-process ledger)."""
    settings = settings or FundsSettings()
    runtime = FundsRuntime(settings, ledger_http)
    consumer.register(runtime, settings)
    # Production refuses to start without the service's own ledger token (shared/security.py).
    extra = production_problems(settings) if settings.mode == "production" else []
    return service_app(runtime, settings, title="Patient Power improvement funds",
                       description="Improvement grants from the regional funds: maker-checker, reservations and payments in the"
                                   " ledger, and each project's measure tracked from live feedback.",
                       router=[api.router], policy=POLICY, reference=runtime.reference, extra_problems=extra)
