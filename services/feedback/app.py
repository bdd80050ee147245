"""The feedback service: FastAPI app + Kafka intake + outbox relay in one process."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from services.feedback import api, consumer
from services.feedback.privacy import install_log_redaction
from services.feedback.settings import FeedbackSettings
from services.feedback.policy import POLICY
from shared import http
from shared.auth import config_from_settings, policy_dependency
from shared.reference import load_reference


def create_app(settings: FeedbackSettings | None = None) -> FastAPI:
    settings = settings or FeedbackSettings()
    install_log_redaction()
    runtime = consumer.FeedbackRuntime(settings, migrations=("services.feedback",))
    consumer.register(runtime, settings)
    app = FastAPI(
        title="Patient Power feedback",
        version="1.0.0",
        description="Takes PREM/PROM submissions (JSON, FHIR QuestionnaireResponse, Kafka), pseudonymises them, stores them durably, emits events and reports FFT and PROM results.",
        lifespan=runtime.lifespan,
    )
    app.state.runtime = runtime
    app.state.keyring = settings.keyring()
    app.state.reference = load_reference()
    http.install(app, "feedback")
    app.include_router(api.router, dependencies=[Depends(policy_dependency(POLICY, config_from_settings(settings)))])
    return app
