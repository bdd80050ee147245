"""`python -m services.feedback [serve|relay]`: serve the feedback service, or run its outbox relay as its own process."""

from __future__ import annotations

import sys

from services.feedback.settings import FeedbackSettings
from shared.entrypoint import service_main


def main(argv: list[str] | None = None) -> int:
    return service_main("feedback", FeedbackSettings, argv)


if __name__ == "__main__":
    sys.exit(main())
