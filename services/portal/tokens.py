"""The portal's own bearer token, for its public pages (scope ``reports:read``, national).

- ``PORTAL_SERVICE_TOKEN_FILE`` set (production; also honoured in development): the file's
  content, re-read whenever the file changes (its inode, size or modification time), so a
  rotated secret is picked up without a restart. Read at most every ``RECHECK_S``.
- Development without a file: the portal mints a short-lived national ``reports:read`` token
  itself with the public development secret (``shared.auth.mint``) and mints the next one
  ``REFRESH_BEFORE_S`` before it expires. Production never mints.
The token is never logged or shown; a missing or unreadable token is a 503 page.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from services.portal.upstream import UpstreamError
from shared.auth import mint

log = logging.getLogger("portal.tokens")

SCOPE = "reports:read"
SUBJECT = "patient-power-portal"
DEV_TOKEN_TTL_S = 900
REFRESH_BEFORE_S = 120
RECHECK_S = 5.0
MAX_TOKEN_BYTES = 8192


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts, ASCII, bounded: what a bearer JWT must at least be."""
    if not token or len(token) > MAX_TOKEN_BYTES or not token.isascii() or token.count(".") != 2:
        return False
    return all(part and all(c.isalnum() or c in "-_" for c in part) for part in token.split("."))


class ServiceToken:
    def __init__(self, *, token_file: Path | None, development: bool, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self.token_file = token_file
        self.development = development
        self.clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._file_key: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")

    def get(self) -> str:
        with self._lock:
            if self.token_file is not None:
                return self._from_file()
            if not self.development:
                raise UpstreamError(503, "the portal has no service token (PORTAL_SERVICE_TOKEN_FILE)", service="portal")
            now = self.clock()
            if self._token is None or now >= self._expires_at - REFRESH_BEFORE_S:
                self._token = mint([SCOPE], subject=SUBJECT, ttl_s=DEV_TOKEN_TTL_S)
                self._expires_at = now + DEV_TOKEN_TTL_S
            return self._token

    def _from_file(self) -> str:
        assert self.token_file is not None
        now = time.monotonic()
        if self._token is not None and now - self._checked_at < RECHECK_S:
            return self._token
        self._checked_at = now
        try:
            st = os.stat(self.token_file)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if key != self._file_key or self._token is None:
                if st.st_size > MAX_TOKEN_BYTES:
                    raise ValueError("too large")
                token = self.token_file.read_text(encoding="ascii").strip()
                if not looks_like_jwt(token):
                    raise ValueError("not a JWT")
                self._token, self._file_key = token, key
                log.info("service token read from %s", self.token_file)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.error("service token file %s unusable (%s)", self.token_file, type(exc).__name__)
            self._token, self._file_key = None, None
            raise UpstreamError(503, "the portal's service token cannot be read", service="portal") from None
        return self._token
