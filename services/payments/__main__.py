"""`python -m services.payments [serve|relay]`: serve the payments service, or run its outbox relay as its own process."""

from __future__ import annotations

import sys

from services.payments.settings import PaymentsSettings
from shared.entrypoint import service_main


def main(argv: list[str] | None = None) -> int:
    return service_main("payments", PaymentsSettings, argv)


if __name__ == "__main__":
    sys.exit(main())
