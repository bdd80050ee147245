"""The command line every service shares: ``python -m services.<name> [serve|relay]``.

``serve`` runs the service's app under uvicorn; ``relay`` runs its outbox relay as its own process
(``OUTBOX_RELAY=external``). The app is imported only to serve, so a relay process does not load
the HTTP stack. The ledger adds its own commands in front of these (services/ledger/__main__.py).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
from collections.abc import Callable, Sequence
from typing import Any

from shared.logging import configure_logging
from shared.process import tune_process

COMMANDS = ("serve", "relay")


def serve_or_relay(settings: Any, command: str, app: str) -> int:
    """Run ``command`` for a service: ``app`` names its factory, ``"package.module:create_app"``."""
    configure_logging(settings.service_name, settings.log_level)
    if command == "relay":
        from shared.outbox import run_relay

        tune_process(settings)
        asyncio.run(run_relay(settings))
        return 0
    import uvicorn

    module, _, factory = app.partition(":")
    instance = getattr(importlib.import_module(module), factory)(settings)
    tune_process(settings)  # after start-up objects exist, so gc.freeze() keeps them
    uvicorn.run(instance, host=settings.http_host, port=settings.http_port, log_config=None)
    return 0


def service_main(name: str, settings_factory: Callable[[], Any], argv: Sequence[str] | None = None) -> int:
    """``python -m services.<name> [serve|relay]`` for a service whose app is ``services.<name>.app:create_app``."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{name}")
    parser.add_argument("command", nargs="?", default="serve", choices=COMMANDS)
    args = parser.parse_args(argv)
    return serve_or_relay(settings_factory(), args.command, f"services.{name}.app:create_app")
