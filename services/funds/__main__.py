"""`python -m services.funds [serve|relay]` (relay: the outbox relay as its own process)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.funds.settings import FundsSettings
from shared.logging import configure_logging
from shared.process import tune_process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.funds")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "relay"])
    args = parser.parse_args(argv)
    settings = FundsSettings()
    configure_logging("funds", settings.log_level)
    if args.command == "relay":
        from shared.outbox import run_relay

        tune_process(settings)
        asyncio.run(run_relay(settings))
        return 0
    import uvicorn

    from services.funds.app import create_app

    app = create_app(settings)
    tune_process(settings)  # after start-up objects exist, so gc.freeze() keeps them
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_config=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
