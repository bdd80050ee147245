"""`python -m services.ledger [serve|verify|relay]` (relay: the outbox relay as its own process)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from services.ledger.settings import LedgerSettings
from shared.logging import configure_logging
from shared.process import tune_process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.ledger")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "verify", "relay"])
    args = parser.parse_args(argv)
    settings = LedgerSettings()
    configure_logging("ledger", settings.log_level)
    if args.command == "verify":
        return asyncio.run(_verify(settings))
    if args.command == "relay":
        from shared.outbox import run_relay

        tune_process(settings)
        asyncio.run(run_relay(settings))
        return 0
    import uvicorn

    from services.ledger.app import create_app

    app = create_app(settings)
    tune_process(settings)  # after start-up objects exist, so gc.freeze() keeps them
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_config=None)
    return 0


async def _verify(settings: LedgerSettings) -> int:
    import asyncpg

    from services.ledger import store

    conn = await asyncpg.connect(settings.database_url)
    try:
        result = await store.verify(conn)
    finally:
        await conn.close()
    print(json.dumps(result, default=str, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
