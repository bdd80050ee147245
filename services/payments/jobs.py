"""Settlement as a job: asked for over HTTP (or by the schedule), worked through in the
background, unit by unit, resumable, cancellable until money moves.

A **job** is recorded before anything settles (``queued``). A runner in every payments process
claims the oldest claimable job (``FOR UPDATE SKIP LOCKED``: one runner per job), lists its units
(one provider's held episodes of the period under one scheme version, filtered to the providers
its requester may act for), then settles them one at a time. Each unit's settlement (its report,
its episodes, its ledger transfers in the outbox) commits **in the same transaction** as the job's
progress, with the job row locked: so after a crash, a kill or a restart the job is taken over
(its heartbeat is older than ``PAYMENTS_SETTLEMENT_JOB_LEASE_S``) and resumes at the first unit
not done, and no unit can settle twice (a unit already settled has nothing held; a unit marked
done is skipped). A unit that cannot settle (its scheme is no longer loaded) is recorded as
failed with the reason and the job goes on; the job then ends ``failed`` with its errors listed.

**Cancel**: a job is cancellable while no unit has settled ("until money moves"). The cancel
takes the job row's lock and the unit transaction checks for it under the same lock, so a
cancelled job never moves a penny, and a job that has moved money refuses to cancel (409).

**Schedule**: ``PAYMENTS_SETTLEMENT_SCHEDULE_ENABLED`` makes the same job for the latest
settleable period, once per check interval; a job already active for it is simply found again.

Metrics (after commit): ``payments_settlement_jobs{state}`` (jobs by state, refreshed by the
runner), ``payments_settlement_job_providers_done`` / ``_providers_total`` (the job this process
is running), ``payments_settlement_job_episodes_total{outcome}``, ``payments_settlement_job_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

from services.payments import domain, metrics
from services.payments.ports import Unit
from services.payments.schemes import SchemeBook
from services.payments.settlement import RunSettlement, settle_unit
from services.payments.store import PgPaymentsStore
from shared.consumer import TRANSIENT_ERRORS
from shared.retry import pause
from shared.uow import PgUnitOfWork

log = logging.getLogger(__name__)

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
JOBS = Gauge("payments_settlement_jobs", "Settlement jobs by state (all processes; refreshed by each runner)", ["state"])
PROVIDERS_DONE = Gauge("payments_settlement_job_providers_done", "Providers settled so far by the job this process is running")
PROVIDERS_TOTAL = Gauge("payments_settlement_job_providers_total", "Providers the job this process is running will settle")
EPISODES = Counter("payments_settlement_job_episodes_total", "Episodes settled by settlement jobs, by what happened to the"
                   " at-risk money", ["outcome"])
JOB_SECONDS = Histogram("payments_settlement_job_seconds", "Time from a job's start to its end",
                        buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600))
for _state in STATES:
    JOBS.labels(_state)
for _outcome in ("released", "diverted", "mixed"):
    EPISODES.labels(_outcome)


class CancelRefused(Exception):
    """The job has moved money (or has finished): it can no longer be cancelled."""


@dataclass(frozen=True)
class NewJob:
    period: str
    requested_by: str
    correlation_id: str
    provider_code: str | None = None
    region_code: str | None = None
    allowed_providers: Sequence[str] | None = None  # None: any provider
    trigger: str = "api"


# ---------------------------------------------------------------------------------------------
# The store: the job tables, and the payments store for the unit's settlement in one transaction
# ---------------------------------------------------------------------------------------------
_JOB_COLUMNS = ("job_id, period, provider_code, region_code, allowed_providers, trigger, requested_by, requested_at,"
                " correlation_id, state, started_at, finished_at, owner, heartbeat_at, attempts, units_total, units_done,"
                " units_failed, reports, episodes, held_pence, released_pence, diverted_pence, cancel_requested_by,"
                " cancel_requested_at, error, provisional_statements")


class PgJobsStore(PgPaymentsStore):
    """``PgPaymentsStore`` plus the job tables, on one connection inside its transaction."""

    async def create_job(self, job: NewJob, now: datetime) -> tuple[dict[str, Any], bool]:
        """The new job (True), or the active job for the same period and filters (False)."""
        row = await self.conn.fetchrow(
            f"INSERT INTO settlement_jobs(job_id, period, provider_code, region_code, allowed_providers, trigger, requested_by,"
            f" requested_at, correlation_id, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'queued')"
            f" ON CONFLICT DO NOTHING RETURNING {_JOB_COLUMNS}",
            uuid.uuid4(), job.period, job.provider_code, job.region_code,
            None if job.allowed_providers is None else sorted(job.allowed_providers), job.trigger, job.requested_by, now,
            job.correlation_id)
        if row is not None:
            return dict(row), True
        found = await self.conn.fetchrow(
            f"SELECT {_JOB_COLUMNS} FROM settlement_jobs WHERE period = $1 AND coalesce(provider_code, '') = coalesce($2, '')"
            " AND coalesce(region_code, '') = coalesce($3, '') AND state IN ('queued', 'running')",
            job.period, job.provider_code, job.region_code)
        if found is None:
            raise asyncpg.SerializationError("the active job finished meanwhile; ask again")  # the unit of work retries
        return dict(found), False

    async def claim_job(self, owner: str, now: datetime, lease: timedelta) -> dict[str, Any] | None:
        row = await self.conn.fetchrow(
            f"UPDATE settlement_jobs SET state = 'running', owner = $1, heartbeat_at = $2, attempts = attempts + 1,"
            f" started_at = coalesce(started_at, $2)"
            f" WHERE job_id = (SELECT job_id FROM settlement_jobs WHERE state = 'queued'"
            f"   OR (state = 'running' AND (heartbeat_at IS NULL OR heartbeat_at < $3))"
            f"   ORDER BY requested_at LIMIT 1 FOR UPDATE SKIP LOCKED)"
            f" RETURNING {_JOB_COLUMNS}",
            owner, now, now - lease)
        return None if row is None else dict(row)

    async def lock_job(self, job_id: uuid.UUID) -> dict[str, Any]:
        return dict(await self.conn.fetchrow(f"SELECT {_JOB_COLUMNS} FROM settlement_jobs WHERE job_id = $1 FOR UPDATE", job_id))

    async def plan_units(self, job_id: uuid.UUID, units: Sequence[Unit]) -> None:
        if units:
            await self.conn.executemany(
                "INSERT INTO settlement_job_units(job_id, provider_code, scheme_id, scheme_version) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT DO NOTHING", [(job_id, u.provider_code, u.scheme_id, u.scheme_version) for u in units])
        await self.conn.execute("UPDATE settlement_jobs SET units_total = $2 WHERE job_id = $1", job_id, len(units))

    async def pending_units(self, job_id: uuid.UUID) -> list[Unit]:
        rows = await self.conn.fetch(
            "SELECT provider_code, scheme_id, scheme_version FROM settlement_job_units WHERE job_id = $1 AND state = 'pending'"
            " ORDER BY provider_code, scheme_id, scheme_version", job_id)
        return [Unit(r["provider_code"], r["scheme_id"], r["scheme_version"]) for r in rows]

    async def unit_state(self, job_id: uuid.UUID, unit: Unit) -> str:
        return await self.conn.fetchval(
            "SELECT state FROM settlement_job_units WHERE job_id = $1 AND provider_code = $2 AND scheme_id = $3"
            " AND scheme_version = $4 FOR UPDATE", job_id, unit.provider_code, unit.scheme_id, unit.scheme_version)

    async def finish_unit(self, job_id: uuid.UUID, unit: Unit, summary: dict[str, Any] | None, error: str | None,
                          now: datetime, *, statement_id: str | None = None, wrote_statement: bool = False) -> None:
        """Record a unit done (its settlement ``summary``; or ``statement_id``: the provisional statement
        it wrote now, ``wrote_statement``, or whose window it waits on, moving nothing) or failed (``error``)."""
        s = summary or {}
        await self.conn.execute(
            "UPDATE settlement_job_units SET state = $5, settlement_id = $6, episodes = $7, held_pence = $8, released_pence = $9,"
            " diverted_pence = $10, error = $11, done_at = $12, statement_id = $13"
            " WHERE job_id = $1 AND provider_code = $2 AND scheme_id = $3 AND scheme_version = $4",
            job_id, unit.provider_code, unit.scheme_id, unit.scheme_version, "failed" if error else "done",
            s.get("settlement_id"), s.get("episodes"), s.get("held_pence"), s.get("released_pence"), s.get("diverted_pence"),
            error, now, s.get("statement_id", statement_id))
        await self.conn.execute(
            "UPDATE settlement_jobs SET units_done = units_done + $2, units_failed = units_failed + $3, reports = reports + $4,"
            " episodes = episodes + $5, held_pence = held_pence + $6, released_pence = released_pence + $7,"
            " diverted_pence = diverted_pence + $8, heartbeat_at = $9, provisional_statements = provisional_statements + $10"
            " WHERE job_id = $1",
            job_id, 0 if error else 1, 1 if error else 0, 1 if summary else 0, s.get("episodes", 0), s.get("held_pence", 0),
            s.get("released_pence", 0), s.get("diverted_pence", 0), now, 1 if wrote_statement else 0)

    async def finish_job(self, job_id: uuid.UUID, state: str, now: datetime, error: str | None = None) -> None:
        await self.conn.execute("UPDATE settlement_jobs SET state = $2, finished_at = $3, error = $4, owner = NULL"
                                " WHERE job_id = $1", job_id, state, now, error)

    async def heartbeat(self, job_id: uuid.UUID, owner: str, now: datetime) -> bool:
        status = await self.conn.execute("UPDATE settlement_jobs SET heartbeat_at = $3 WHERE job_id = $1 AND owner = $2"
                                         " AND state = 'running'", job_id, owner, now)
        return status.endswith(" 1")

    async def request_cancel(self, job_id: uuid.UUID, by: str, now: datetime) -> dict[str, Any] | None:
        """Cancel a job that has moved no money; the job as it is now (None: no such job).
        Raises CancelRefused when it has settled a unit or has finished."""
        job = await self.conn.fetchrow(f"SELECT {_JOB_COLUMNS} FROM settlement_jobs WHERE job_id = $1 FOR UPDATE", job_id)
        if job is None:
            return None
        if job["state"] == "cancelled":
            return dict(job)
        if job["state"] not in ACTIVE:
            raise CancelRefused(f"the job has {job['state']}")
        if job["reports"] > 0:
            raise CancelRefused(f"the job has already settled {job['reports']} unit(s): money has moved")
        row = await self.conn.fetchrow(
            f"UPDATE settlement_jobs SET state = 'cancelled', cancel_requested_by = $2, cancel_requested_at = $3,"
            f" finished_at = $3, owner = NULL WHERE job_id = $1 RETURNING {_JOB_COLUMNS}", job_id, by, now)
        return dict(row)

    async def job_counts(self) -> dict[str, int]:
        rows = await self.conn.fetch("SELECT state, count(*) AS n FROM settlement_jobs GROUP BY state")
        return {r["state"]: r["n"] for r in rows}


# ---------------------------------------------------------------------------------------------
# Reads (the API's job resource)
# ---------------------------------------------------------------------------------------------
async def job_view(conn: asyncpg.Connection, job_id: uuid.UUID) -> dict[str, Any] | None:
    job = await conn.fetchrow(f"SELECT {_JOB_COLUMNS} FROM settlement_jobs WHERE job_id = $1", job_id)
    if job is None:
        return None
    units = await conn.fetch(
        "SELECT provider_code, scheme_id, scheme_version, state, settlement_id, statement_id, episodes, held_pence,"
        " released_pence, diverted_pence, error, done_at FROM settlement_job_units WHERE job_id = $1 ORDER BY provider_code, scheme_id,"
        " scheme_version", job_id)
    return _view(dict(job), [dict(u) for u in units])


async def list_jobs(conn: asyncpg.Connection, *, period: str | None, state: str | None, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {_JOB_COLUMNS} FROM settlement_jobs WHERE ($1::text IS NULL OR period = $1) AND ($2::text IS NULL OR state = $2)"
        " ORDER BY requested_at DESC LIMIT $3", period, state, limit)
    return [_view(dict(r), None) for r in rows]


def _view(job: dict[str, Any], units: list[dict[str, Any]] | None) -> dict[str, Any]:
    providers: dict[str, dict[str, Any]] = {}
    for u in units or []:
        p = providers.setdefault(u["provider_code"], {"provider_code": u["provider_code"], "state": "done", "units": [],
                                                      "episodes": 0, "released_pence": 0, "diverted_pence": 0})
        p["units"].append({k: u[k] for k in ("scheme_id", "scheme_version", "state", "settlement_id", "statement_id",
                                             "episodes", "error", "done_at")})
        p["episodes"] += u["episodes"] or 0
        p["released_pence"] += u["released_pence"] or 0
        p["diverted_pence"] += u["diverted_pence"] or 0
    for p in providers.values():
        states = {u["state"] for u in p["units"]}
        p["state"] = "failed" if "failed" in states else "pending" if "pending" in states else "done"
    done_providers = sum(1 for p in providers.values() if p["state"] != "pending")
    return {
        "job_id": str(job["job_id"]), "state": job["state"], "period": job["period"], "provider_code": job["provider_code"],
        "region_code": job["region_code"], "trigger": job["trigger"], "requested_by": job["requested_by"],
        "requested_at": job["requested_at"], "started_at": job["started_at"], "finished_at": job["finished_at"],
        "attempts": job["attempts"],
        "progress": {"units_total": job["units_total"], "units_done": job["units_done"], "units_failed": job["units_failed"],
                     "providers_total": len(providers) if units is not None else None,
                     "providers_done": done_providers if units is not None else None},
        "counts": {"reports": job["reports"], "episodes": job["episodes"], "held_pence": job["held_pence"],
                   "released_pence": job["released_pence"], "diverted_pence": job["diverted_pence"],
                   "provisional_statements": job["provisional_statements"]},
        "errors": [{"provider_code": p["provider_code"], **u} for p in providers.values() for u in p["units"] if u["error"]]
                  + ([{"error": job["error"]}] if job["error"] else []),
        "cancelled_by": job["cancel_requested_by"],
        "providers": list(providers.values()) if units is not None else None,
    }


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------
class JobRunner:
    """Claims and runs settlement jobs in this process, one at a time."""

    def __init__(self, uow: PgUnitOfWork[PgJobsStore], book: SchemeBook, *, clock: Callable[[], datetime],
                 lease_s: float, poll_s: float) -> None:
        self.uow = uow
        self.book = book
        self.clock = clock
        self.lease = timedelta(seconds=lease_s)
        self.poll_s = poll_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- commands --------------------------------------------------------------------------------
    async def submit(self, job: NewJob) -> tuple[dict[str, Any], bool]:
        """Record a job (or find the active one for the same period and filters) and wake the runner.
        Refuses (``domain.NotYet``) a period whose decision windows are open, before anything is recorded."""
        today = self.clock().date()
        units = await self.uow.run(lambda tx: tx.held_units(job.period, job.provider_code, job.region_code))
        windows = [s.decision_window_days for u in units if (s := self.book.get(u.scheme_id, u.scheme_version)) is not None]
        domain.require_settleable(job.period, windows or [s.decision_window_days for s in self.book.schemes], today)
        row, created = await self.uow.run(lambda tx: tx.create_job(job, self.clock()))
        if created:
            metrics.settlement_run(job.trigger)
        self._wake.set()
        return row, created

    async def cancel(self, job_id: uuid.UUID, by: str) -> dict[str, Any] | None:
        return await self.uow.run(lambda tx: tx.request_cancel(job_id, by, self.clock()))

    # -- the loop --------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="settlement-jobs")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        failures = 0
        while True:
            try:
                ran = await self.run_once()
                failures = 0
                if not ran:
                    self._wake.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except asyncio.CancelledError:
                raise
            except TRANSIENT_ERRORS as exc:  # the database is away: the job stays claimed; its lease decides
                failures += 1
                log.warning("settlement jobs: %s; retrying", exc)
                await pause(failures)
            except Exception:  # noqa: BLE001 - logged, and the loop goes on (a bug must not stop every job)
                failures += 1
                log.exception("settlement job runner failed; retrying")
                await pause(failures)

    async def run_once(self) -> bool:
        """Claim one job and run it to its end; False when there was none to claim."""
        job = await self.uow.run(lambda tx: tx.claim_job(self.owner, self.clock(), self.lease))
        await self._refresh_gauges()
        if job is None:
            return False
        await self.run_job(job)
        await self._refresh_gauges()
        return True

    async def run_job(self, job: dict[str, Any]) -> None:
        job_id = job["job_id"]
        started = time.monotonic()
        log.info("settlement job %s (%s) started by %s, attempt %d", job_id, job["period"], self.owner, job["attempts"])
        if job["units_total"] is None:
            allowed = set(job["allowed_providers"]) if job["allowed_providers"] is not None else None

            async def plan(tx: PgJobsStore) -> None:
                units = await tx.held_units(job["period"], job["provider_code"], job["region_code"])
                await tx.plan_units(job_id, [u for u in units if allowed is None or u.provider_code in allowed])

            await self.uow.run(plan)
        units = await self.uow.run(lambda tx: tx.pending_units(job_id))
        PROVIDERS_TOTAL.set(len({u.provider_code for u in units}))
        PROVIDERS_DONE.set(0)
        cmd = RunSettlement(period=job["period"], run_by=job["requested_by"], correlation_id=job["correlation_id"],
                            trigger=job["trigger"])
        done_providers: set[str] = set()
        for unit in units:
            outcome, summary = await self.uow.run(lambda tx: self._settle(tx, job_id, unit, cmd))  # noqa: B023 - awaited at once
            if outcome == "stop":
                log.info("settlement job %s stopped (cancelled or taken over)", job_id)
                return
            if summary:  # committed: count it now
                metrics.unit_settled(summary)
                for name, n in summary["episodes_by_outcome"].items():
                    EPISODES.labels(name).inc(n)
            done_providers.add(unit.provider_code)
            PROVIDERS_DONE.set(len(done_providers))
        final = await self.uow.run(lambda tx: tx.lock_job(job_id))
        state = "failed" if final["units_failed"] else "succeeded"
        await self.uow.run(lambda tx: tx.finish_job(job_id, state, self.clock(),
                                                    f"{final['units_failed']} unit(s) failed" if final["units_failed"] else None))
        JOB_SECONDS.observe(time.monotonic() - started)
        log.info("settlement job %s %s: %d units, %d episodes, %d pence released, %d diverted", job_id, state,
                 final["units_done"], final["episodes"], final["released_pence"], final["diverted_pence"])

    async def _settle(self, tx: PgJobsStore, job_id: uuid.UUID, unit: Unit,
                      cmd: RunSettlement) -> tuple[str, dict[str, Any] | None]:
        """One unit, under the job row's lock, in the unit's own transaction: settle, record progress."""
        job = await tx.lock_job(job_id)
        if job["state"] != "running" or job["owner"] != self.owner:
            return "stop", None  # cancelled, or another runner took it over after our lease lapsed
        if await tx.unit_state(job_id, unit) != "pending":
            return "skip", None
        now = self.clock()
        scheme = self.book.get(unit.scheme_id, unit.scheme_version)
        if scheme is None:
            await tx.finish_unit(job_id, unit, None, f"scheme {unit.scheme_id}@{unit.scheme_version} is no longer loaded", now)
            return "failed", None
        with metrics.SETTLEMENT_SECONDS.time():
            summary = await settle_unit(tx, unit, scheme, cmd, now=now)
        statement_id, wrote = None, False
        if summary is None and scheme.review is not None:  # in review: the job shows the statement it wrote or waits on
            statement = await tx.statement_of_unit(unit, cmd.period)
            if statement is not None and statement.status == "provisional":
                statement_id, wrote = statement.statement_id, statement.created_at == now
        await tx.finish_unit(job_id, unit, summary, None, now, statement_id=statement_id, wrote_statement=wrote)
        return "done", summary

    async def _refresh_gauges(self) -> None:
        with contextlib.suppress(*TRANSIENT_ERRORS):
            counts = await self.uow.run(lambda tx: tx.job_counts())
            for state in STATES:
                JOBS.labels(state).set(counts.get(state, 0))


async def wait_for(pool: asyncpg.Pool, job_id: uuid.UUID, timeout_s: float) -> dict[str, Any]:
    """The job's resource once it has finished, or as it is after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with pool.acquire() as conn:
            view = await job_view(conn, job_id)
        assert view is not None
        if view["state"] not in ACTIVE or time.monotonic() >= deadline:
            return view
        await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
