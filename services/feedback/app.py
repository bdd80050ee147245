"""The feedback service: FastAPI app + Kafka intake + outbox relay in one process."""

from __future__ import annotations

from fastapi import FastAPI

from services.feedback import api, consumer, read_api
from services.feedback.handlers import AcceptSubmissions
from services.feedback.policy import POLICY
from services.feedback.privacy import install_log_redaction
from services.feedback.settings import FeedbackSettings
from services.feedback.store import FeedbackTx
from shared.reference import load_reference
from shared.service import service_app
from shared.uow import PgUnitOfWork


def create_app(settings: FeedbackSettings | None = None) -> FastAPI:
    settings = settings or FeedbackSettings()
    install_log_redaction()
    reference = load_reference(settings.reference_dir)
    runtime = consumer.FeedbackRuntime(settings, migrations=("services.feedback",))
    runtime.reference = reference
    problems = settings.security_problems()
    app = service_app(runtime, settings, title="Patient Power feedback",
                      description="Takes PREM/PROM submissions (JSON, FHIR QuestionnaireResponse, Kafka), pseudonymises them,"
                                  " stores them durably, emits events and reports FFT and PROM results.",
                      router=[api.router, read_api.router], policy=POLICY, reference=reference, extra_problems=problems)
    # After the security checks: the keyring needs a key. The one write path, for HTTP and Kafka alike.
    accept = AcceptSubmissions(PgUnitOfWork(lambda: runtime.pool, FeedbackTx), settings.keyring())
    consumer.register(runtime, settings, accept)
    app.state.accept_submissions = accept
    app.state.eq5d_value_set = settings.eq5d_value_set()  # a bad file stops the start, naming the field
    return app
