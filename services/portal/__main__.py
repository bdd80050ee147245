"""`python -m services.portal`: serve the portal with uvicorn (PORTAL_HTTP_HOST / PORTAL_HTTP_PORT)."""

from __future__ import annotations

import argparse
import sys

from services.portal.settings import PortalSettings
from shared.logging import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.portal")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve"])
    parser.parse_args(argv)
    settings = PortalSettings()
    configure_logging("portal", settings.log_level)
    import uvicorn

    from services.portal.app import create_app

    app = create_app(settings)
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_config=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
