"""The ledger service: FastAPI app + FastStream consumer + outbox relay in one process."""

from __future__ import annotations

from fastapi import FastAPI

from services.ledger import api, consumer, finance_api, read_api
from services.ledger.group_commit import GroupCommit
from services.ledger.handlers import LedgerHandlers
from services.ledger.policy import POLICY
from services.ledger.settings import LedgerSettings
from services.ledger.store import LedgerTx
from shared.reference import load_reference
from shared.service import Runtime, service_app
from shared.uow import PgUnitOfWork


class LedgerRuntime(Runtime):
    """The shared runtime with the ledger's one write path (handlers) and the group commit that
    joins concurrent HTTP writes into batches for it."""

    def __init__(self, settings: LedgerSettings) -> None:
        super().__init__(settings, migrations=("services.ledger",))
        self.handlers = LedgerHandlers(PgUnitOfWork(lambda: self.pool, LedgerTx))
        self.group_commit = GroupCommit(self.handlers.post, max_batch=settings.group_commit_max_batch,
                                        max_wait_ms=settings.group_commit_max_wait_ms,
                                        queue_max=settings.group_commit_queue_max)
        self.on_start(self.group_commit.start)
        self.on_stop(self.group_commit.stop)


def create_app(settings: LedgerSettings | None = None) -> FastAPI:
    settings = settings or LedgerSettings()
    reference = load_reference(settings.reference_dir)
    runtime = LedgerRuntime(settings)
    runtime.reference = reference
    consumer.register(runtime, settings)
    app = service_app(runtime, settings, title="Patient Power ledger",
                      description="Double-entry, append-only, hash-chained ledger of every penny in the trial.",
                      router=[finance_api.router, api.router, read_api.router], policy=POLICY, reference=reference,
                      extra_problems=settings.security_problems())
    runtime.signer = settings.statement_signer()  # after the security checks: production has a real key
    return app
