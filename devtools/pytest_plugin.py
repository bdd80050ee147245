"""A pytest plugin for app backends' own integration tests: ``patient_power``, the whole system for a
test session (installed with ``pip install "patient-power[local]"``; pytest finds it by its entry
point, nothing to configure).

Where a Docker daemon answers, Kafka and PostgreSQL run in testcontainers (Apache Kafka, PostgreSQL)
and the services are started from this package as processes beside them; otherwise on the embedded
stack (Tansu and PostgreSQL from wheels, no network, about a second to start). Set
``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL`` to use ones you already run. The services run in
development mode: they accept tokens signed with the public development secret, which
``patient_power.headers(...)`` mints with any scopes and binding. Never point this at real data.

Example (``tests/e2e/test_plugin_example.py`` runs it; the README shows it)::

    def test_feedback_reaches_payments_and_the_ledger_holds_the_money(patient_power):
        ...

The fixture is session-scoped (one system per test run: it takes ~15 s to start); tests share it,
so give each test its own ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class PatientPower:
    """The running system: URLs, the Kafka bootstrap address, the databases, and tokens."""

    urls: dict[str, str]  # feedback, payments, ledger, funds, portal
    kafka_bootstrap: str
    database_urls: dict[str, str]
    infrastructure: str  # e.g. "kafka=embedded-tansu,postgres=embedded-pgserver"
    _stack: Any = field(repr=False, default=None)

    def token(self, scopes: Sequence[str], *, subject: str = "app-tests", regions: Sequence[str] | None = None,
              icbs: Sequence[str] | None = None, ods: Sequence[str] | None = None) -> str:
        """A development bearer token (no binding given: national)."""
        from shared.auth import mint

        return mint(list(scopes), subject=subject, regions=list(regions) if regions else None,
                    icbs=list(icbs) if icbs else None, ods=list(ods) if ods else None, ttl_s=6 * 3600)

    def headers(self, scopes: Sequence[str], **binding: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(scopes, **binding)}"}


class _Loop:
    """An event loop on its own thread: the stack lives there, whatever loop (or none) the tests use."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="patient-power", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextlib.contextmanager
def running_system(*, schemes_dir: str | None = None, start_timeout_s: float = 180) -> Iterator[PatientPower]:
    """The system for the duration of the ``with`` block (the fixture uses this; so can scripts)."""
    from devtools.stack import Stack

    extra = {"payments": {"PAYMENTS_SCHEMES_DIR": schemes_dir}} if schemes_dir else {}
    stack = Stack(allow_containers=True, extra_env=extra)
    loop = _Loop()
    try:
        loop.run(stack.start(), start_timeout_s)
        assert stack.infra is not None
        yield PatientPower({name: stack.url(name) for name in ("feedback", "payments", "ledger", "funds", "portal")},
                           stack.infra.kafka_bootstrap, dict(stack.database_urls), stack.infra.kind, stack)
    finally:
        stack.stop()
        loop.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("patient_power_schemes", "folder of trial scheme files for the payments service (default: the shipped ones)")


@pytest.fixture(scope="session")
def patient_power(pytestconfig: pytest.Config) -> Iterator[PatientPower]:
    """Patient Power for this test session (see the module docstring)."""
    with running_system(schemes_dir=pytestconfig.getini("patient_power_schemes") or None) as system:
        yield system
