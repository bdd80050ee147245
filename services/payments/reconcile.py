"""Payments against the ledger (pure): does the ledger's answer for a transfer payments asked
for say what payments expects?

Payments records what each transfer should become (``expected_status``: a posted transfer
``posted``, a two-phase hold ``pending``, a release ``posted`` or ``voided``) and compares every
``ledger.posted.v1`` answer with it. Anything else (a refusal, a conflict because the id was
already taken, a hold that expired) is a discrepancy: counted, logged as an error and listed by
``GET /v1/ledger-discrepancies``, together with transfers the ledger has not answered for longer
than ``PAYMENTS_LEDGER_ANSWER_OVERDUE_S``. Money in payments' figures is then not what the ledger
holds, and a person must look.
"""

from __future__ import annotations

from shared.contracts import TransferKind

EXPECTED_STATUS: dict[TransferKind, str] = {
    "posted": "posted",
    "pending": "pending",
    "post_pending": "posted",
    "void_pending": "voided",
}


def expected_status(kind: TransferKind) -> str:
    return EXPECTED_STATUS[kind]


def discrepancy(expected: str, answered: str, reason: str | None) -> str | None:
    """Why the ledger's answer is not the one expected, or None when it is."""
    if answered == expected:
        return None
    why = f"the ledger answered {answered}, expected {expected}"
    return f"{why}: {reason}" if reason else why
