"""`python -m services.feedback` serves the feedback service."""

from __future__ import annotations

import sys

from services.feedback.settings import FeedbackSettings
from shared.logging import configure_logging


def main() -> int:
    import uvicorn

    from services.feedback.app import create_app

    settings = FeedbackSettings()
    configure_logging("feedback", settings.log_level)
    uvicorn.run(create_app(settings), host=settings.http_host, port=settings.http_port, log_config=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
