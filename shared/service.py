"""The runtime every service shares: database pool and migrations, topics, FastStream broker,
outbox relay, safe consumer handling, and serving HTTP with uvicorn.

A service builds a :class:`Runtime`, registers its FastStream subscribers on ``runtime.broker``
and its HTTP routes on a FastAPI app whose lifespan is :meth:`Runtime.lifespan`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from pydantic import ValidationError

from shared import db
from shared.consumer import (
    CONSUMER_RETRIES,
    DEAD_LETTERS,
    TRANSIENT_ERRORS,
    AttemptTracker,
    BadEvent,
    DeadRecord,
    backoff,
    dead_letter_record_headers,
    raw_headers,
    validation_reason,
)
from prometheus_client import Counter

from shared.kafka import ensure_topics, make_producer
from shared.lag import start_lag_reporter, stop_lag_reporter
from shared.money import InvariantError
from shared.retry import STARTUP, STARTUP_ATTEMPTS, retry
from shared.logging import correlation_id_var
from shared.outbox import OutboxRelay
from shared.settings import ServiceSettings
from shared.http import bounded

log = logging.getLogger(__name__)

EVENTS_HANDLED = Counter("events_handled_total", "Events a consumer handled successfully", ["topic"])
# A consumer that has not polled the broker for this long is not ready: its loop died or a batch
# has been stuck that long (a batch takes well under a second; the poll interval is 20 ms).
READY_POLL_STALE_S = 60.0
T = TypeVar("T")


async def raw_decoder(msg: Any, original: Any = None) -> bytes:
    """Hand handlers the raw bytes: parsing and validation are ours, so bad input is dead-lettered."""
    return msg.body


def batch_records(msg: Any) -> list[Any]:
    """The aiokafka records of a FastStream batch message (grouped by partition, offset order in each)."""
    raw = msg.raw_message
    return list(raw) if isinstance(raw, tuple) else [raw]


STOP_STEP_TIMEOUT_S = 10.0
STOP_STEPS_ABANDONED = Counter("service_stop_steps_abandoned_total", "Parts of a service's stop that did not finish in time",
                               ["step"])


async def stop_step(name: str, work: Awaitable[Any], *, timeout_s: float | None = None) -> bool:
    """Run one part of a stop for at most ``timeout_s`` (default ``STOP_STEP_TIMEOUT_S``); True when
    it finished (errors are logged, a stop goes on). Not ``asyncio.wait_for``: that waits for the
    cancelled part to finish cancelling, which is exactly what a part that hangs does not do."""
    timeout_s = STOP_STEP_TIMEOUT_S if timeout_s is None else timeout_s
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        task.cancel()  # not awaited: it may never end
        STOP_STEPS_ABANDONED.labels(name).inc()
        log.warning("stopping: %s did not finish in %g s; abandoned", name, timeout_s)
        return False
    if not task.cancelled() and task.exception() is not None:
        log.warning("stopping: %s failed (%s)", name, describe_error(task.exception()))  # type: ignore[arg-type]
    return True


def describe_error(exc: BaseException) -> str:
    """An error for the logs without its message, which may quote submitted values (NHS numbers)."""
    state = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__} (SQLSTATE {state})" if state else type(exc).__name__


def make_broker(settings: ServiceSettings) -> KafkaBroker:
    security = None
    if settings.kafka_security_protocol != "PLAINTEXT" or settings.kafka_sasl_mechanism:
        import ssl

        from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

        use_ssl = settings.kafka_security_protocol in ("SSL", "SASL_SSL")
        ctx = ssl.create_default_context() if use_ssl else None
        mech = (settings.kafka_sasl_mechanism or "").upper()
        creds = {"username": settings.kafka_sasl_username or "", "password": settings.kafka_sasl_password or ""}
        if mech == "PLAIN":
            security = SASLPlaintext(ssl_context=ctx, **creds)
        elif mech == "SCRAM-SHA-256":
            security = SASLScram256(ssl_context=ctx, **creds)
        elif mech == "SCRAM-SHA-512":
            security = SASLScram512(ssl_context=ctx, **creds)
        else:
            security = BaseSecurity(ssl_context=ctx)
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=settings.service_name,
        security=security,
        # Outside FastStream's own logger tree (which has a plain-text handler of its own), so its
        # lines are JSON like ours; per-message "Received"/"Processed" lines at DEBUG: noise at INFO.
        logger=logging.getLogger(f"patient_power.broker.{settings.service_name}"),
        log_level=logging.DEBUG,
        graceful_timeout=10,
        acks="all",
    )


CONSUMER_DEFAULTS: dict[str, Any] = {
    "auto_offset_reset": "earliest",
    # Offsets are committed after the handler's transaction commits; an exception seeks back so
    # the same message is delivered again (at least once).
    "ack_policy": AckPolicy.NACK_ON_ERROR,
    "decoder": raw_decoder,
    "max_poll_interval_ms": 300_000,
    # How long the broker may hold a fetch open waiting for data. aiokafka's default (500 ms)
    # put ~130 ms on every Kafka hop at low rates (bench/e2e measured one hop p50 133 ms vs 11 ms
    # at 20 ms); three hops lie between a submission and its ledger posting. The cost is an empty
    # fetch per partition leader every 20 ms when idle.
    "fetch_max_wait_ms": 20,
    "session_timeout_ms": 10_000,
    "heartbeat_interval_ms": 3_000,
}


class Runtime:
    def __init__(self, settings: ServiceSettings, *, migrations: Sequence[str]) -> None:
        self.settings = settings
        self.migrations = ("shared", *migrations)
        self.broker = make_broker(settings)
        self.pool: asyncpg.Pool | None = None
        self.producer: Any = None  # created in start(): aiokafka needs a running loop
        self.relay: OutboxRelay | None = None
        self.attempts = AttemptTracker()
        self._on_start: list[Callable[[], Awaitable[None]]] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self._lag: Any = None  # shared.lag.LagReporter, once the consumers run
        self._last_poll: dict[int, float] = {}  # id(subscriber) -> monotonic time of its last poll
        self.keys: Any = None  # the auth KeyStore, started and stopped with the runtime (set by the app)
        self.reference: Any = None  # shared.reference.ReferenceData, set by the app

    def on_start(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        self._on_start.append(fn)
        return fn

    def on_stop(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        self._on_stop.append(fn)
        return fn

    async def connect_db(self, attempts: int = STARTUP_ATTEMPTS) -> asyncpg.Pool:
        async def connect() -> asyncpg.Pool:
            return await db.create_pool(self.settings.database_url, min_size=self.settings.db_pool_min_size,
                                        max_size=self.settings.db_pool_max_size)

        def waiting(state: Any) -> None:
            log.warning("database not ready (%s), retry %d/%d", describe_error(state.outcome.exception()),
                        state.attempt_number, attempts)

        return await retry(connect, on=(OSError, asyncpg.PostgresError), attempts=attempts, policy=STARTUP,
                           before_sleep=waiting)

    async def start(self) -> None:
        self.pool = await self.connect_db()
        async with self.pool.acquire() as conn:
            await db.migrate(conn, *self.migrations)
        if self.settings.kafka_create_topics:
            await ensure_topics(self.settings)
        self.producer = make_producer(self.settings, client_id=f"{self.settings.service_name}-outbox")
        await self.producer.start()  # also sends dead letters, so it runs whatever the relay mode
        if self.settings.outbox_relay == "inline":
            self.relay = OutboxRelay(
                self.pool,
                self.producer,
                batch_limit=self.settings.outbox_batch_limit,
                poll_interval_ms=self.settings.outbox_poll_interval_ms,
                vacuum_every_rows=self.settings.outbox_vacuum_every_rows,
            )
            await self.relay.start()
        if self.keys is not None:
            await self.keys.start()
        for fn in self._on_start:
            await fn()
        self._watch_polls()
        await self.broker.start()
        # kafka_consumer_lag_records: high watermark minus the group's committed offset, per partition
        self._lag = start_lag_reporter(lambda: [getattr(sub, "consumer", None) for sub in self.broker.subscribers],
                                       interval_s=5)
        log.info("%s started", self.settings.service_name)

    def _watch_polls(self) -> None:
        """Record when each subscriber last asked the broker for records (readiness)."""
        for sub in list(self.broker.subscribers):
            inner = sub.get_msg
            if getattr(inner, "_watched", False):
                continue
            key = id(sub)
            self._last_poll[key] = time.monotonic()

            async def get_msg(consumer: Any, _inner: Any = inner, _key: int = key) -> Any:
                self._last_poll[_key] = time.monotonic()
                return await _inner(consumer)

            get_msg._watched = True  # type: ignore[attr-defined]
            sub.get_msg = get_msg  # the subscriber's consume loop calls self.get_msg(consumer)

    async def readiness(self) -> dict[str, str]:
        """Each dependency's state for /health/ready: "ok" or why not."""
        checks: dict[str, str] = {}
        if self.pool is None:
            checks["postgresql"] = "not connected"
        else:
            async def ping_db() -> None:
                async with self.pool.acquire(timeout=2) as conn:  # type: ignore[union-attr]
                    await conn.fetchval("SELECT 1")

            checks["postgresql"] = await bounded(ping_db())
        if self.producer is None:
            checks["broker"] = "not connected"
        else:
            checks["broker"] = await bounded(self.producer.client.fetch_all_metadata())
        now = time.monotonic()
        for sub in list(self.broker.subscribers):
            name = "consumer " + ",".join(sorted(getattr(sub, "topic_names", None) or [])) or "consumer"
            tasks = getattr(sub, "tasks", [])
            if not tasks or any(t.done() for t in tasks):
                checks[name] = "not running"
            elif now - self._last_poll.get(id(sub), 0.0) > READY_POLL_STALE_S:
                checks[name] = f"has not polled for {now - self._last_poll.get(id(sub), 0.0):.0f} s"
            else:
                checks[name] = "ok"
        return checks

    async def stop(self) -> None:
        """Stop every part, each within ``STOP_STEP_TIMEOUT_S``: a part that does not finish (seen
        once on CI: a broker client stopping while its group was still joining) is abandoned and
        logged rather than holding the process, so a stop always ends (Kubernetes would otherwise
        kill it at its grace period with the rest undone). Nothing is lost by abandoning: offsets
        are committed after their batch, so unacknowledged records come again."""
        if self.keys is not None:
            await stop_step("key refresh", self.keys.stop())
        await stop_step("consumer lag reporter", stop_lag_reporter(self._lag))
        await stop_step("consumers", self.broker.stop())
        for fn in self._on_stop:
            await stop_step(getattr(fn, "__qualname__", "on_stop"), fn())
        if self.relay:
            await stop_step("outbox drain", self.relay.drain(), timeout_s=min(5, STOP_STEP_TIMEOUT_S))
            await stop_step("outbox relay", self.relay.stop())
        if self.producer is not None:
            await stop_step("producer", self.producer.stop())
        if self.pool:
            if not await stop_step("database pool", self.pool.close(), timeout_s=min(5, STOP_STEP_TIMEOUT_S)):
                self.pool.terminate()  # connections still held by an abandoned part: close them now

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    # -----------------------------------------------------------------------------------------
    # Consumer safety
    # -----------------------------------------------------------------------------------------
    async def dead_letter(self, raw: Any, dlq_topic: str, reason: str, kind: str) -> None:
        await self.producer.send_and_wait(dlq_topic, raw.value, key=raw.key,
                                          headers=dead_letter_record_headers(raw, reason, kind))
        DEAD_LETTERS.labels(raw.topic, kind).inc()
        log.warning("dead-lettered %s[%d]@%d to %s: %s", raw.topic, raw.partition, raw.offset, dlq_topic, reason)

    # -- batch consumers (one transaction per batch; see services/*/consumer.py) ---------------
    async def run_batch(self, records: Sequence[Any], handle: Callable[[], Awaitable[T]], *, timer: Any = None,
                        what: str = "batch") -> T | None:
        """The consumer policy around a command handler called with a whole batch (the handler owns
        the transaction and its race retries: shared/uow.py). Its result once committed, or None:
        the batch failed for a reason that is neither its input nor the infrastructure, nothing of
        it was written, and the caller handles it one record at a time (``handle_one``), so the
        failing record is retried, then dead-lettered, while the others go through. An outage backs
        off and raises, so the batch is delivered again; a broken money invariant raises loudly."""
        try:
            with timer.time() if timer is not None else contextlib.nullcontext():
                return await handle()
        except TRANSIENT_ERRORS as exc:
            await self.batch_failed_transiently(records, exc)
            raise
        except InvariantError:
            log.critical("a money invariant broke in a %s: not acknowledged, not dead-lettered", what)
            raise
        except Exception as exc:  # neither the input nor the infrastructure: find the record, one by one
            first = records[0]
            log.warning("%s of %d from %s[%d]@%d failed (%s); handling it one record at a time", what, len(records),
                        first.topic, first.partition, first.offset, describe_error(exc))
        return None

    async def batch_failed_transiently(self, records: Sequence[Any], exc: BaseException) -> None:
        """Database or broker briefly down during a batch: count, log, back off. The caller then
        raises, so the whole batch is delivered again; nothing is dead-lettered for an outage."""
        first = records[0]
        attempt = self.attempts.bump(first)
        CONSUMER_RETRIES.labels(first.topic, "transient").inc()
        log.warning("transient failure on a batch of %d from %s[%d]@%d (%s), retrying", len(records), first.topic,
                    first.partition, first.offset, describe_error(exc))
        await backoff(attempt)

    async def finish_batch(self, records: Sequence[Any], handled: Mapping[str, int], dead: Sequence[DeadRecord],
                           dlq_of: Mapping[str, str]) -> None:
        """After a batch's transaction committed: its dead letters (offset order, each logged with
        its correlation id), then the counters.

        If the broker fails here the batch comes again: its writes are duplicates by then, so only
        the dead letters are sent again (at least once, as on the per-record path)."""
        try:
            for _, raw, reason, kind in sorted(dead, key=lambda d: d[0]):
                token = correlation_id_var.set(raw_headers(raw).get("correlation_id"))
                try:
                    await self.dead_letter(raw, dlq_of[raw.topic], reason, kind)
                finally:
                    correlation_id_var.reset(token)
        except TRANSIENT_ERRORS as exc:
            await self.batch_failed_transiently(records, exc)
            raise
        for raw in records:
            self.attempts.forget(raw)
        for topic, n in handled.items():
            if n:
                EVENTS_HANDLED.labels(topic).inc(n)

    async def handle_one(self, raw: Any, dlq_topic: str, process: Callable[[bytes], Awaitable[None]]) -> None:
        """Run ``process`` on one record under the dead-letter and retry policy (see shared/consumer.py)."""
        token = correlation_id_var.set(raw_headers(raw).get("correlation_id"))
        try:
            await process(raw.value)
            self.attempts.forget(raw)
            EVENTS_HANDLED.labels(raw.topic).inc()
        except ValidationError as exc:
            await self.dead_letter(raw, dlq_topic, validation_reason(exc), "invalid")
        except BadEvent as exc:
            await self.dead_letter(raw, dlq_topic, str(exc), "rejected")
        except TRANSIENT_ERRORS as exc:
            attempt = self.attempts.bump(raw)
            CONSUMER_RETRIES.labels(raw.topic, "transient").inc()
            log.warning("transient failure on %s@%d (%s), retrying", raw.topic, raw.offset, exc)
            await backoff(attempt)
            raise
        except InvariantError:
            # A bug, not bad input: never dead-letter money. The record stays unacknowledged and the
            # partition stops here, loudly, until the code is fixed.
            log.critical("a money invariant broke on %s[%d]@%d", raw.topic, raw.partition, raw.offset)
            raise
        except Exception as exc:
            attempt = self.attempts.bump(raw)
            if attempt >= self.settings.consumer_max_attempts:
                log.exception("giving up on %s@%d after %d attempts", raw.topic, raw.offset, attempt)
                await self.dead_letter(raw, dlq_topic, f"failed after {attempt} attempts: {type(exc).__name__}: {exc}", "failed")
                self.attempts.forget(raw)
                return
            CONSUMER_RETRIES.labels(raw.topic, "error").inc()
            await backoff(attempt)
            raise
        finally:
            correlation_id_var.reset(token)


# ---------------------------------------------------------------------------------------------
# The HTTP app every service builds the same way
# ---------------------------------------------------------------------------------------------
def service_app(runtime: Runtime, settings: ServiceSettings, *, title: str, description: str, router: Any,
                policy: Mapping[tuple[str, str], Any], reference: Any, extra_problems: Sequence[str] = ()) -> Any:
    """A service's FastAPI app: security settings enforced (production refuses to start on
    anything insecure), bearer-token policy on every route of ``router``, problem details, probes,
    protected /metrics, request body limits, and the runtime's lifespan."""
    from fastapi import Depends

    from shared import http, security
    from shared.auth import config_from_settings, policy_dependency
    from shared.http import Problem, static_token_matches

    security.enforce(settings, settings.service_name, extra_problems)
    auth = config_from_settings(settings, reference)
    runtime.keys = auth.keys
    app = http.ServiceAPI(title=title, version="1.0.0", description=description, lifespan=runtime.lifespan,
                          max_body_size=http.DEFAULT_MAX_BODY_BYTES)
    app.state.runtime = runtime
    app.state.reference = reference
    app.state.auth = auth
    scrape_token = security.metrics_token(settings)

    async def metrics_auth(token: str) -> bool:
        if static_token_matches(scrape_token, token):
            return True
        try:
            principal = await auth.verify(token)
        except Problem:
            return False
        return "metrics:read" in principal.scopes

    http.install(app, settings.service_name, readiness=runtime.readiness, metrics_auth=metrics_auth)
    authorize = Depends(policy_dependency(policy, auth))
    for r in router if isinstance(router, (list, tuple)) else [router]:  # e.g. writes and read models
        app.include_router(r, dependencies=[authorize])
    return app
