"""PostgreSQL plumbing: connection pools and per-service SQL migrations.

Each service owns its database and its ``migrations/NNN_name.sql`` files. ``migrate`` applies
the ones not yet recorded in ``schema_migrations``, each in its own transaction, under an
advisory lock so two instances starting at once do not race.
"""

from __future__ import annotations

import importlib.resources
import logging
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)

_MIGRATION_LOCK_KEY = 0x5050_4D49  # "PPMI"


# Plan every execution of a prepared statement for its actual parameters and the tables as they
# are now. asyncpg prepares (and caches) every statement; with PostgreSQL's default plan cache mode
# a connection switches to a generic plan after five executions and keeps it, and the batch
# look-ups (``id = ANY($1::text[])``, joins against ``unnest(...)``) then keep the plan chosen when
# the tables were small: sequential scans of tables that grow by thousands of rows a second. The
# end-to-end benchmark read 29 million rows in such scans in one run and its PostgreSQL CPU per
# episode varied fourfold between identical runs. Planning a batch statement costs well under a
# millisecond; these statements run a few times a second.
SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 8) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, command_timeout=30, max_inactive_connection_lifetime=60,
        server_settings=SERVER_SETTINGS,
    )
    if pool is None:  # pragma: no cover - asyncpg returns None only when used without await
        raise RuntimeError("pool not created")
    return pool


def _migration_files(package: str) -> list[tuple[str, str]]:
    root = importlib.resources.files(package) / "migrations"
    files = sorted((p.name, p.read_text()) for p in root.iterdir() if p.name.endswith(".sql"))
    return files


async def migrate(conn: asyncpg.Connection, *packages: str) -> list[str]:
    """Apply pending migrations from each ``<package>/migrations`` in turn; returns names applied.

    Names are recorded as ``package:file`` so shared migrations (the outbox) and a service's own
    never collide.
    """
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for package in packages:
            for file_name, sql in _migration_files(package):
                name = f"{package}:{file_name}"
                if name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations(name) VALUES ($1)", name)
                log.info("applied migration %s", name)
                applied.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)
    return applied


def dsn_with_database(dsn: str, database: str) -> str:
    """Same server and credentials, another database name (works for socket DSNs too)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def ensure_database(server_dsn: str, database: str) -> str:
    """Create ``database`` on the server if missing; returns its DSN."""
    conn = await asyncpg.connect(server_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            # Identifiers cannot be bound parameters; the name is ours, validated here.
            if not database.replace("_", "").isalnum():
                raise ValueError(f"bad database name {database!r}")
            await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    return dsn_with_database(server_dsn, database)
