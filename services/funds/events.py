"""The funds service's outbox rows, through the one encoder (``shared.events.model_row``).

- Ledger transfer requests on ``ledger.transfer-requests.v1``, producer ``funds`` (the owner of
  the ``grant:`` namespace, shared/namespaces.py), keyed by ``ordering_key`` = the grant id.
- Grant lifecycle events on ``funds.grants.v1``, keyed by grant id (one grant's events in order).

``CONSUMES`` and ``PRODUCES`` describe the service's topics for its AsyncAPI document in the
shape ``devtools/docs.py`` uses for the other services.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared import events
from shared.contracts import (
    Contract,
    Envelope,
    FeedbackReceived,
    GrantCancelled,
    GrantDecided,
    GrantProposed,
    GrantReserved,
    MilestonePaid,
    MilestoneReleased,
    TransferPosted,
    TransferRequested,
)
from shared.topics import (
    FEEDBACK_RECEIVED,
    FEEDBACK_RECEIVED_DLQ,
    FUNDS_GRANTS,
    LEDGER_POSTED,
    LEDGER_POSTED_DLQ,
    LEDGER_TRANSFER_REQUESTS,
    TopicSpec,
)

PRODUCER = "funds"
TRANSFER_REQUESTED = "ledger.transfer-requested.v1"


def transfer_rows(transfers: Sequence[TransferRequested], *, correlation_id: str, causation_id: str | None) -> list[events.Row]:
    if not transfers:
        return []
    occurred = events.occurred_now()
    return [events.model_row(LEDGER_TRANSFER_REQUESTS.name, t.key, TRANSFER_REQUESTED, t, producer=PRODUCER,
                             correlation_id=correlation_id, causation_id=causation_id, event_id=event_id, occurred_at=occurred)
            for t, event_id in zip(transfers, events.event_ids(len(transfers)))]


def grant_rows(grant_id: str, items: Sequence[tuple[str, Contract]], *, correlation_id: str,
               causation_id: str | None) -> list[events.Row]:
    if not items:
        return []
    occurred = events.occurred_now()
    return [events.model_row(FUNDS_GRANTS.name, grant_id, type_, model, producer=PRODUCER, correlation_id=correlation_id,
                             causation_id=causation_id, event_id=event_id, occurred_at=occurred)
            for (type_, model), event_id in zip(items, events.event_ids(len(items)))]


_DLQ = ("Dead letters: the original bytes, with headers dlq_reason, dlq_kind, dlq_source_topic, dlq_source_partition,"
        " dlq_source_offset.")
_LIFECYCLE = ("Every step of a grant, keyed by grant_id: funds.grant-proposed.v1 (GrantProposed), funds.grant-decided.v1"
              " (GrantDecided), funds.grant-reserved.v1 (GrantReserved), funds.milestone-paid.v1 (MilestonePaid),"
              " funds.milestone-released.v1 (MilestoneReleased), funds.grant-cancelled.v1 (GrantCancelled).")
CONSUMES: list[tuple[TopicSpec, Any, str]] = [
    (FEEDBACK_RECEIVED, Envelope[FeedbackReceived], "Patients' answers, tallied per provider, setting and period for the"
                                                    " projects' measures (consumer group <group>-feedback)."),
    (LEDGER_POSTED, Envelope[TransferPosted], "The ledger's answers; only grant: transfers are read"
                                              " (consumer group <group>-ledger-answers)."),
]
PRODUCES: list[tuple[TopicSpec, Any, str]] = [
    (LEDGER_TRANSFER_REQUESTS, Envelope[TransferRequested], "Reservations, payments and releases of grants (grant:"
                                                            " namespace). Key: ordering_key (the grant id)."),
    (FUNDS_GRANTS, Envelope[GrantProposed | GrantDecided | GrantReserved | MilestonePaid | MilestoneReleased  # type: ignore[valid-type]
                            | GrantCancelled], _LIFECYCLE),
    (FEEDBACK_RECEIVED_DLQ, bytes, _DLQ),
    (LEDGER_POSTED_DLQ, bytes, _DLQ),
]
