"""Who may call what on the ledger (deny by default, see shared/auth.py), and which accounts a
region-limited token may see.

Reads need ``ledger:read``; posting transfers and declaring accounts need ``ledger:admin``.
A token with a ``regions`` claim sees only accounts in those NHS England regions: a fund by its
region code, a provider's and its held account by the provider's region, a commissioner by the
ICB's region (shared/reference). The trial balance covers every region, so it needs a token
without a region limit.
"""

from __future__ import annotations

from shared.auth import Principal
from shared.reference import ReferenceData

READ, ADMIN = "ledger:read", "ledger:admin"

POLICY = {
    ("GET", "/v1/accounts"): READ,
    ("PUT", "/v1/accounts/{account_id}"): ADMIN,
    ("GET", "/v1/accounts/{account_id}/balance"): READ,
    ("GET", "/v1/accounts/{account_id}/statement"): READ,
    ("GET", "/v1/accounts/{account_id}/statement.csv"): READ,
    ("GET", "/v1/trial-balance"): READ,
    ("GET", "/v1/trial-balance.csv"): READ,
    ("GET", "/v1/transfers/{transfer_id}"): READ,
    ("POST", "/v1/transfers"): ADMIN,
    ("GET", "/v1/verify"): READ,
}


def region_of_account(account_id: str, reference: ReferenceData) -> str | None:
    kind, _, code = account_id.partition(":")
    if kind == "fund":
        return code
    if kind in ("provider", "held"):
        return reference.region_of_provider(code)
    if kind == "commissioner":
        org = reference.commissioners.get(code)
        return org.region_code if org else None
    return None


def may_see(principal: Principal, account_id: str, reference: ReferenceData) -> bool:
    return principal.regions is None or principal.sees_region(region_of_account(account_id, reference))
