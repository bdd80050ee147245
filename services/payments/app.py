"""The payments service: FastAPI app + FastStream consumers + outbox relay in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI

from services.payments import api, consumer, domain, jobs, read_api
from services.payments.handlers import PaymentsHandlers
from services.payments.policy import POLICY
from services.payments.schemes import load_schemes
from services.payments.settings import PaymentsSettings
from services.payments.store import PgPaymentsStore
from shared.reference import load_reference
from shared.service import Runtime, service_app
from shared.uow import PgUnitOfWork

log = logging.getLogger(__name__)


class PaymentsRuntime(Runtime):
    def __init__(self, settings: PaymentsSettings) -> None:
        super().__init__(settings, migrations=("services.payments",))
        # Loaded (and validated) before anything starts: a bad scheme file stops the service at
        # boot with a message naming the file and field, rather than mis-settling money later.
        self.reference = load_reference(settings.reference_dir)
        self.book = load_schemes(settings.schemes_dir, self.reference)
        # The one write path (HTTP, Kafka, the schedule); its unit of work takes the pool once started.
        self.handlers = PaymentsHandlers(PgUnitOfWork(lambda: self.pool, PgPaymentsStore), book=self.book,
                                         ref=self.reference, hold_model=settings.ledger_hold_model,
                                         activity_date_max_age_days=settings.activity_date_max_age_days)
        # Settlement runs as jobs (jobs.py): asked for over HTTP or by the schedule, run here.
        self.job_runner = jobs.JobRunner(PgUnitOfWork(lambda: self.pool, jobs.PgJobsStore), self.book,
                                         clock=self.handlers.clock, lease_s=settings.settlement_job_lease_s,
                                         poll_s=settings.settlement_job_poll_s)
        self.on_start(self._start_jobs)
        self.on_stop(self.job_runner.stop)

    async def _start_jobs(self) -> None:
        self.job_runner.start()


def create_app(settings: PaymentsSettings | None = None) -> FastAPI:
    settings = settings or PaymentsSettings()
    runtime = PaymentsRuntime(settings)
    consumer.register(runtime, settings)

    scheduler: dict[str, asyncio.Task] = {}

    async def scheduled_settlement() -> None:
        """Ask for a settlement job for the latest period whose decision windows have all closed,
        once a check interval (the same job as over HTTP; an active one is found again)."""
        while True:
            try:
                today = runtime.handlers.clock().date()
                windows = [s.decision_window_days for s in runtime.book.schemes] or [0]
                period = domain.latest_settleable_period(today, max(windows))
                await runtime.job_runner.submit(jobs.NewJob(period=period, requested_by="scheduler", trigger="scheduler",
                                                            correlation_id=f"settlement:{period}"))
            except Exception:
                log.exception("scheduled settlement failed; will retry")
            try:  # provisional statements (scheme option [review]) accepted or past their window: the money moves
                await runtime.handlers.finalise_due(run_by="scheduler", correlation_id="statements:finalise-due",
                                                    trigger="scheduler")
            except Exception:
                log.exception("scheduled finalisation of statements failed; will retry")
            await asyncio.sleep(settings.settlement_check_interval_s)

    @runtime.on_start
    async def _start_scheduler() -> None:
        if settings.settlement_schedule_enabled:
            scheduler["task"] = asyncio.create_task(scheduled_settlement())

    @runtime.on_stop
    async def _stop_scheduler() -> None:
        if task := scheduler.get("task"):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return service_app(runtime, settings, title="Patient Power payments",
                       description="Holds the at-risk share of each payment and settles it by the patient's answer under"
                                   " versioned trial rules.",
                       router=[api.router, read_api.router], policy=POLICY, reference=runtime.reference)
