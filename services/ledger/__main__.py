"""`python -m services.ledger [serve|verify|relay|verify-statement|statement-key]`.

- ``relay``: the outbox relay as its own process;
- ``verify-statement STATEMENT SIGNATURE --public-key KEY.pem``: an auditor's offline check of a
  period statement (no database, no network); exit code 0 when it verifies, 1 when it does not;
- ``statement-key``: print the public key of LEDGER_STATEMENT_SIGNING_KEY (PEM), to publish.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from services.ledger.settings import LedgerSettings
from shared.logging import configure_logging
from shared.entrypoint import serve_or_relay


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.ledger")
    parser.add_argument("command", nargs="?", default="serve",
                        choices=["serve", "verify", "relay", "verify-statement", "statement-key"])
    parser.add_argument("statement", nargs="?", help="verify-statement: the statement file (GET /v1/periods/{p}/statement)")
    parser.add_argument("signature", nargs="?", help="verify-statement: its signature (GET /v1/periods/{p}/statement.sig)")
    parser.add_argument("--public-key", help="verify-statement: the signer's public key, PEM (GET /v1/statement-key)")
    args = parser.parse_args(argv)
    if args.command == "verify-statement":
        return _verify_statement(parser, args)
    settings = LedgerSettings()
    if args.command == "statement-key":
        signer = settings.statement_signer()
        sys.stdout.write(signer.public_pem.decode())
        print(f"key id {signer.key_id}", file=sys.stderr)
        return 0
    if args.command == "verify":
        configure_logging("ledger", settings.log_level)
        return asyncio.run(_verify(settings))
    return serve_or_relay(settings, args.command, "services.ledger.app:create_app")


def _verify_statement(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from services.ledger import periods

    if not (args.statement and args.signature and args.public_key):
        parser.error("verify-statement needs STATEMENT SIGNATURE --public-key KEY.pem")
    with open(args.statement, "rb") as f:
        data = f.read()
    with open(args.signature, "rb") as f:
        signature = f.read()
    with open(args.public_key, "rb") as f:
        key = periods.load_public_key(f.read())
    verdict = periods.verify_statement(data, signature.strip() if len(signature) != 64 else signature, key)
    print(("OK: " if verdict.ok else "FAILED: ") + verdict.reason)
    return 0 if verdict.ok else 1


async def _verify(settings: LedgerSettings) -> int:
    import asyncpg

    from services.ledger import queries as store

    conn = await asyncpg.connect(settings.database_url)
    try:
        result = await store.verify(conn)
    finally:
        await conn.close()
    print(json.dumps(result, default=str, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
