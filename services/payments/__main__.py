"""`python -m services.payments` serves the payments service."""

from __future__ import annotations

import sys

from services.payments.settings import PaymentsSettings
from shared.logging import configure_logging


def main() -> int:
    import uvicorn

    from services.payments.app import create_app

    settings = PaymentsSettings()
    configure_logging("payments", settings.log_level)
    uvicorn.run(create_app(settings), host=settings.http_host, port=settings.http_port, log_config=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
