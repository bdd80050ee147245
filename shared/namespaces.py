"""Transfer-id namespaces: which producer may ask the ledger for which transfer ids.

A transfer id is ``<namespace>:<rest>``. Each producer owns its namespaces, and the ledger admits a
request only from the namespace's owner, for the transfer itself and for the transfer it names
(``pending_id``, ``reverses``): so a ledger administrator can neither take an id payments will use
(``release:<payment>``) nor post, void or reverse payments' transfers, and payments' view of its
transfers stays true. The ledger's own expiry entries (``<pending_id>~expired``) are made inside the
ledger and never requested.
"""

from __future__ import annotations

# producer (the envelope's ``producer``; "manual" is the ledger's HTTP API) -> its namespaces
NAMESPACES: dict[str, tuple[str, ...]] = {
    "payments": ("pay", "hold", "release", "divert", "settle", "appeal", "appeal-review"),
    "funds": ("grant",),
    "manual": ("manual",),
}
OWNER: dict[str, str] = {ns: producer for producer, spaces in NAMESPACES.items() for ns in spaces}
MANUAL = "manual"


def namespace_of(transfer_id: str) -> str | None:
    head, sep, _ = transfer_id.partition(":")
    return head if sep else None


def owner_of(transfer_id: str) -> str | None:
    """The producer that owns this id's namespace, or None (no namespace, or an unknown one)."""
    ns = namespace_of(transfer_id)
    return OWNER.get(ns) if ns is not None else None


def refusal(producer: str, transfer_id: str, pending_id: str | None = None, reverses: str | None = None) -> str | None:
    """Why ``producer`` may not ask for this transfer, or None when it may."""
    for field, tid in (("transfer_id", transfer_id), ("pending_id", pending_id), ("reverses", reverses)):
        if tid is None:
            continue
        owner = owner_of(tid)
        if owner is None:
            spaces = ", ".join(f"{ns}:" for ns in NAMESPACES.get(producer, ()))
            return f"{field} {tid!r} is in no known namespace; {producer} uses {spaces or 'none'}"
        if owner != producer:
            return f"{field} {tid!r} belongs to {owner}, not {producer}"
    return None
