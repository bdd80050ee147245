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

from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from shared.contracts import TransferKind, TransferPosted, TransferRequested

if TYPE_CHECKING:
    from services.payments.domain import PlannedTransfer

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


class Tracked(NamedTuple):
    """A transfer payments asked for, remembered to follow its fate."""

    transfer_id: str
    episode_id: str
    kind: str  # the cause: payment, payment_hold, settlement, release, diversion, appeal_upheld
    expected_status: str


def tracked(plan: Iterable[PlannedTransfer]) -> list[Tracked]:
    """What each planned transfer should become in the ledger."""
    return [Tracked(p.transfer_id, p.episode.episode_id, p.cause_kind, EXPECTED_STATUS[p.kind]) for p in plan]


def final_answers(answers: Iterable[TransferPosted]) -> list[TransferPosted]:
    """What recording the ledger's answers one at a time, in order, leaves per transfer: a
    "posted" answer is final (later answers do not overwrite it), otherwise the last one stands."""
    final: dict[str, TransferPosted] = {}
    for a in answers:
        current = final.get(a.transfer_id)
        if current is None or current.status != "posted":
            final[a.transfer_id] = a
    return list(final.values())


class Answered(NamedTuple):
    """A tracked transfer the ledger's answer was recorded on, as it stood."""

    transfer_id: str
    expected_status: str
    discrepancy: str | None  # the discrepancy already recorded, if any


def new_discrepancies(answered: Iterable[Answered], final: Iterable[TransferPosted]) -> list[tuple[str, str]]:
    """(transfer id, why), in the answers' order, for every answer recorded that is not the one
    expected and was not already recorded as such: a redelivered answer is not a second one."""
    recorded = {r.transfer_id: r for r in answered}
    found = []
    for answer in final:
        r = recorded.get(answer.transfer_id)
        if r is None:  # not a transfer payments asked for, or posted already (final)
            continue
        why = discrepancy(r.expected_status, answer.status, answer.reason)
        if why is not None and r.discrepancy != why:
            found.append((answer.transfer_id, why))
    return found


def tracked_request(t: TransferRequested, episode_id: str) -> Tracked:
    """The same for a transfer built as a contract model (an upheld appeal's)."""
    return Tracked(t.transfer_id, episode_id, t.cause.kind, EXPECTED_STATUS[t.kind])
