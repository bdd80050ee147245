"""`python -m services.funds [serve|relay]`: serve the funds service, or run its outbox relay as its own process."""

from __future__ import annotations

import sys

from services.funds.settings import FundsSettings
from shared.entrypoint import service_main


def main(argv: list[str] | None = None) -> int:
    return service_main("funds", FundsSettings, argv)


if __name__ == "__main__":
    sys.exit(main())
