"""Provisional, then final (scheme option ``[review]``): the rules of a settlement statement. Pure, no I/O.

Under a scheme with ``[review] correction_window_days``, settling a unit (one provider's held
episodes of a period under one scheme version: ``settlement.settle_unit``) first writes a
**provisional statement**: the report the settlement would produce, stored and published, with
no money moved. While it is provisional and its correction window is open:

- the trust may **query** it (a question with a reason, on the statement or one of its episodes);
- an authorised reviewer (region or national; never the trust itself) may **correct** it: the
  action ``exclude`` takes an episode out of the judgement (released in full, e.g. an answer
  attributed to the wrong trust), once per episode;
- the trust may **accept** it early.

It is **due** once the trust has accepted or the window has passed; finalising it is the same
settlement unit run again with the corrections applied (the same code moves the money), once:
a finalised statement's episodes are settled, so a second run finds nothing held.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from services.payments import domain
from services.payments.schemes import Scheme
from shared.money import check

StatementStatus = Literal["provisional", "final"]
CorrectionAction = Literal["exclude"]
STEPS = ("provisional", "query", "correction", "accepted", "finalised")
MAX_REASON = 2000


@dataclass(frozen=True)
class Statement:
    """A unit's statement as its rules are judged (the store's row)."""

    statement_id: str
    provider_code: str
    region_code: str
    period: str
    scheme_id: str
    scheme_version: int
    status: StatementStatus
    created_at: datetime
    window_closes_at: datetime
    episode_ids: tuple[str, ...]
    accepted_by: str | None = None
    accepted_at: datetime | None = None


@dataclass(frozen=True)
class Correction:
    episode_id: str
    action: CorrectionAction
    reason: str
    corrected_by: str
    at: datetime


def window_closes_at(created_at: datetime, scheme: Scheme) -> datetime:
    check(scheme.review is not None, f"{scheme.key} has no [review]")
    assert scheme.review is not None
    return created_at + timedelta(days=scheme.review.correction_window_days)


def in_window(s: Statement, now: datetime) -> bool:
    return s.status == "provisional" and now < s.window_closes_at


def is_due(s: Statement, now: datetime) -> bool:
    """Finalise now: provisional, and accepted by the trust or past its correction window."""
    return s.status == "provisional" and (s.accepted_at is not None or now >= s.window_closes_at)


def query_refusal(s: Statement, now: datetime) -> str | None:
    if s.status != "provisional":
        return "the statement is final; a settled diversion is challenged by appeal"
    if now >= s.window_closes_at:
        return f"the correction window closed at {s.window_closes_at.isoformat()}"
    return None


def correction_refusal(s: Statement, now: datetime) -> str | None:
    """Corrections while provisional, in the window, and before the trust accepted the figures."""
    refusal = query_refusal(s, now)
    if refusal:
        return refusal
    if s.accepted_at is not None:
        return f"the trust accepted the statement ({s.accepted_by}, {s.accepted_at.isoformat()}); it is due to be finalised"
    return None


def accept_refusal(s: Statement) -> str | None:
    if s.status != "provisional":
        return "the statement is final already"
    return None


def check_reason(field: str, reason: str) -> None:
    if not reason.strip() or len(reason) > MAX_REASON or "\x00" in reason:
        raise domain.InputError(field, f"a reason of 1 to {MAX_REASON} characters is required")


def check_episode(s: Statement, episode_id: str, field: str = "episode_id") -> None:
    if episode_id not in s.episode_ids:
        raise domain.InputError(field, f"episode {episode_id} is not on statement {s.statement_id}")


def exclusions(corrections: Sequence[Correction]) -> dict[str, str]:
    """What ``domain.settle`` takes: episode id -> the step text naming who excluded it and why."""
    return {c.episode_id: f"{c.corrected_by} ({c.at.isoformat()}): {c.reason}" for c in corrections if c.action == "exclude"}


def report_document(settlement_id: str, report: domain.SettlementReport, summary: dict[str, Any]) -> dict[str, Any]:
    """The statement's report as stored and shown: the figures, the rules applied, and each episode."""
    return {
        **summary,
        "settlement_id": settlement_id,
        "judgement_steps": list(report.judgement_steps),
        "lines": [{"episode_id": x.episode.episode_id, "payment_id": x.episode.payment_id,
                   "service_type": x.episode.service_type, "amount_pence": x.episode.amount_pence,
                   "at_risk_pence": x.episode.at_risk_pence, "release_bps": x.decision.release_bps,
                   "deciding_submission_id": x.decision.deciding_submission_id, "basis": x.decision.basis,
                   "uncapped_diverted_pence": x.uncapped_diverted_pence, "released_pence": x.released_pence,
                   "diverted_pence": x.diverted_pence} for x in report.lines],
    }
