"""The ledger's HTTP API as the funds service reads it: a fund's balance, with its own token.

Why the ledger's API and not only ``ledger.posted.v1``: an answer names a transfer and its
status, not its accounts or amounts, so a fund's inflows (diversions, appeals paid back out of it)
cannot be summed from the answers the funds service sees; the ledger is the book of record, and
one balance read gives what the fund holds (posted), what is reserved from it (pending debits)
and what is free (available), exactly as the floor that decides reservations sees them.

The token: ``FUNDS_SERVICE_TOKEN_FILE`` (production; scope ``ledger:read``, national, issued by
the identity provider and rotated by whoever writes the file: it is read again on each use when
it changed), or in development a token minted with the development secret (or
``AUTH_HS256_SECRET``) for subject ``service:funds``, renewed before it expires.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from shared.auth import DEV_SECRET, mint

SERVICE_SUBJECT = "service:funds"
DEV_TOKEN_TTL_S = 3600
RENEW_BEFORE_S = 300
TOKEN_FILE_MAX_BYTES = 8192


class LedgerUnavailable(Exception):
    """The ledger did not answer, or answered with an error: the caller answers 503."""


@dataclass(frozen=True)
class FundBalance:
    account_id: str
    posted_pence: int  # what the fund holds
    pending_debits_pence: int  # reserved from it (grants' milestones not yet paid or released)
    available_pence: int  # posted - pending debits: what a new reservation may take


class ServiceToken:
    """The bearer token the funds service presents to the ledger."""

    def __init__(self, *, token_file: Path | None, development: bool, secret: str | None) -> None:
        self.token_file = token_file
        self.development = development
        self.secret = secret or DEV_SECRET
        self._token: str | None = None
        self._renew_at = 0.0
        self._file_stamp: tuple[float, int] | None = None

    def get(self) -> str:
        if self.token_file is not None:
            stat = self.token_file.stat()
            stamp = (stat.st_mtime, stat.st_size)
            if self._token is None or stamp != self._file_stamp:
                raw = self.token_file.read_bytes()[:TOKEN_FILE_MAX_BYTES + 1]
                if len(raw) > TOKEN_FILE_MAX_BYTES or not raw.strip():
                    raise LedgerUnavailable(f"{self.token_file} holds no usable token")
                self._token, self._file_stamp = raw.decode("ascii", errors="strict").strip(), stamp
            return self._token
        if not self.development:  # production never mints (and refuses to start without a file)
            raise LedgerUnavailable("no service token: set FUNDS_SERVICE_TOKEN_FILE")
        now = time.time()
        if self._token is None or now >= self._renew_at:
            self._token = mint(["ledger:read"], subject=SERVICE_SUBJECT, ttl_s=DEV_TOKEN_TTL_S, secret=self.secret)
            self._renew_at = now + DEV_TOKEN_TTL_S - RENEW_BEFORE_S
        return self._token


class LedgerClient:
    def __init__(self, base_url: str, token: ServiceToken, *, timeout_s: float, client: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        # Tests hand in a client bound to an in-process ledger; otherwise one pooled client.
        self._client = client or httpx.AsyncClient(timeout=timeout_s, limits=httpx.Limits(max_connections=8))
        self._owned = client is None

    async def close(self) -> None:
        if self._owned:
            await self._client.aclose()

    async def _get(self, path: str) -> httpx.Response:
        try:
            return await self._client.get(f"{self.base_url}{path}", headers={"Authorization": f"Bearer {self.token.get()}"})
        except (httpx.HTTPError, OSError) as exc:
            raise LedgerUnavailable(f"the ledger did not answer ({type(exc).__name__})") from exc

    async def fund_balance(self, region_code: str) -> FundBalance:
        """The fund's balance now; all zero for a fund that has never received anything."""
        account = f"fund:{region_code}"
        r = await self._get(f"/v1/accounts/{account}/balance")
        if r.status_code == 404:
            return FundBalance(account, 0, 0, 0)
        if r.status_code != 200:
            raise LedgerUnavailable(f"the ledger answered {r.status_code} for {account}")
        body: dict[str, Any] = r.json()
        return FundBalance(account, int(body["posted_pence"]), int(body["pending_debits_pence"]), int(body["available_pence"]))
