"""Test infrastructure: real PostgreSQL and a real Kafka-protocol broker, started by the tests.

Selection (devtools/stack.py): KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL when set; otherwise
testcontainers when a Docker daemon answers; otherwise the embedded Tansu broker and PostgreSQL.
Unit tests (tests/unit) use none of this.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

# The tests build services in-process on the public development secret and keys.
os.environ.setdefault("PATIENT_POWER_MODE", "development")

from shared.auth import SCOPES, mint  # noqa: E402
from shared.db import ensure_database
from devtools.stack import docker_available, fresh_kafka, start_infra


@pytest.fixture(scope="session")
def infra():
    infra = start_infra(allow_containers=True)
    yield infra
    infra.stop()


@pytest.fixture(scope="module")
async def kafka_bootstrap(infra) -> AsyncIterator[str]:
    """A broker with no topics from earlier test modules.

    Embedded: a fresh Tansu per module (it starts in milliseconds). External or container Kafka:
    the project's topics are deleted first so each module starts clean.
    """
    bootstrap, broker = await fresh_kafka(infra)
    yield bootstrap
    if broker is not None:
        broker.stop()


@contextlib.asynccontextmanager
async def fresh_database(server_dsn: str) -> AsyncIterator[str]:
    """Create a throwaway database on the server, yield its DSN, drop it afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = await ensure_database(server_dsn, name)
    try:
        yield dsn
    finally:
        conn = await asyncpg.connect(server_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
async def database(infra) -> AsyncIterator[str]:
    """A fresh, empty database for one test; its DSN."""
    async with fresh_database(infra.postgres_dsn) as dsn:
        yield dsn


@pytest.fixture
async def second_database(infra) -> AsyncIterator[str]:
    """Another fresh database, for tests that run two services (each owns its database)."""
    async with fresh_database(infra.postgres_dsn) as dsn:
        yield dsn


ALL_SCOPES_TOKEN = mint(sorted(SCOPES), subject="tests", ttl_s=6 * 3600)


@contextlib.asynccontextmanager
async def running(app: Any, *, token: str | None = ALL_SCOPES_TOKEN) -> AsyncIterator[httpx.AsyncClient]:
    """Run a service app in-process (lifespan: migrations, consumers, relay) with an HTTP client.

    The client sends a bearer token with every scope unless ``token`` says otherwise (None: no token).
    """
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30, headers=headers) as client:
            yield client


def pytest_report_header(config):  # type: ignore[no-untyped-def]
    kafka = "env" if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else None
    db = "env" if os.environ.get("DATABASE_URL") else None
    docker = docker_available() if not (kafka and db) else False
    return f"infrastructure: kafka={kafka or ('testcontainers' if docker else 'embedded-tansu')}, postgres={db or ('testcontainers' if docker else 'embedded-pgserver')}"
