"""The feedback service: FastAPI app + Kafka intake + outbox relay in one process."""

from __future__ import annotations

from fastapi import FastAPI

from services.feedback import api, consumer
from services.feedback.settings import FeedbackSettings
from shared import http
from shared.service import Runtime


def create_app(settings: FeedbackSettings | None = None) -> FastAPI:
    settings = settings or FeedbackSettings()
    runtime = Runtime(settings, migrations=("services.feedback",))
    consumer.register(runtime, settings)
    app = FastAPI(
        title="Patient Power feedback",
        version="1.0.0",
        description="Takes PREM/PROM submissions, pseudonymises them, stores them durably and emits events.",
        lifespan=runtime.lifespan,
    )
    app.state.runtime = runtime
    http.install(app, "feedback")
    app.include_router(api.router)
    return app
