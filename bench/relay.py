"""Benchmarks' helpers for child processes: a service's outbox relay as its own process
(``OUTBOX_RELAY=external``), and stopping a child politely, then firmly."""

from __future__ import annotations

import os
import subprocess
import sys


def start_external_relay(service: str, dsn: str, bootstrap: str) -> subprocess.Popen:
    """`python -m services.<service> relay`, as a deployment with <SERVICE>_OUTBOX_RELAY=external runs it."""
    prefix = service.upper()
    env = {**os.environ, f"{prefix}_DATABASE_URL": dsn, f"{prefix}_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           f"{prefix}_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", f"services.{service}", "relay"], env=env)


def stop_process(proc: subprocess.Popen | None) -> None:
    """SIGTERM (a relay drains, a server shuts down), SIGKILL after 15 s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
