"""The ledger service: FastAPI app + FastStream consumer + outbox relay in one process."""

from __future__ import annotations

from fastapi import FastAPI

from services.ledger import api, consumer
from services.ledger.policy import POLICY
from services.ledger.settings import LedgerSettings
from shared.reference import load_reference
from shared.service import Runtime, service_app


def create_app(settings: LedgerSettings | None = None) -> FastAPI:
    settings = settings or LedgerSettings()
    reference = load_reference(settings.reference_dir)
    runtime = Runtime(settings, migrations=("services.ledger",))
    runtime.reference = reference
    consumer.register(runtime, settings)
    return service_app(runtime, settings, title="Patient Power ledger",
                       description="Double-entry, append-only, hash-chained ledger of every penny in the trial.",
                       router=api.router, policy=POLICY, reference=reference)
