"""The ledger service: FastAPI app + FastStream consumer + outbox relay in one process."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from services.ledger import api, consumer
from services.ledger.policy import POLICY
from services.ledger.settings import LedgerSettings
from shared import http
from shared.auth import config_from_settings, policy_dependency
from shared.reference import load_reference
from shared.service import Runtime


def create_app(settings: LedgerSettings | None = None) -> FastAPI:
    settings = settings or LedgerSettings()
    runtime = Runtime(settings, migrations=("services.ledger",))
    consumer.register(runtime, settings)
    app = FastAPI(
        title="Patient Power ledger",
        version="1.0.0",
        description="Double-entry, append-only, hash-chained ledger of every penny in the trial.",
        lifespan=runtime.lifespan,
    )
    app.state.runtime = runtime
    app.state.reference = load_reference(settings.reference_dir)
    http.install(app, "ledger")
    app.include_router(api.router, dependencies=[Depends(policy_dependency(POLICY, config_from_settings(settings)))])
    return app
