"""What payments publishes: the ledger transfer requests its episodes cause, as outbox rows.

Every row is encoded by ``shared.events`` (the one event encoder) and written by
``shared.outbox.enqueue`` (the one outbox writer, through the store). Planned transfers (a
payment's, a settlement unit's: the hot paths) go straight from the pure core's plain values into
the payload builders, with no contract model built or validated per event; a transfer already
built as a contract model (an upheld appeal's) goes through ``shared.events.model_row``. Either
way the payload is byte for byte ``Envelope[TransferRequested].model_dump_json()``
(tests/unit/test_payments_events.py proves it for every kind of transfer payments asks for).

Each row is keyed by the payment id (the transfer's ordering key): a pending hold and the
transfer that later posts or voids it land on one partition, in order. A batch's events take
their ids from one draw and share one ``occurred_at``: they commit together.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.payments.domain import Episode, PlannedTransfer
from shared import events
from shared.contracts import SettlementStatement, TransferRequested
from shared.events import Row
from shared.topics import LEDGER_TRANSFER_REQUESTS, PAYMENTS_STATEMENTS

PRODUCER = "payments"
EVENT_TYPE = "ledger.transfer-requested.v1"
TOPIC = LEDGER_TRANSFER_REQUESTS.name

Traced = tuple[Sequence[PlannedTransfer], str, str | None]
"""A plan with the correlation and causation ids of the command that caused it."""


def transfer_rows(traced: Sequence[Traced]) -> list[Row]:
    """The rows of each plan's transfers, plans in order and each plan's transfers in order."""
    count = sum(len(plan) for plan, _, _ in traced)
    if not count:
        return []
    ids = events.event_ids(count)
    occurred_at = events.occurred_now()
    rows: list[Row] = []
    last: Episode | None = None
    period = ""
    for plan, correlation_id, causation_id in traced:
        for p in plan:
            e = p.episode
            if e is not last:  # an episode's transfers are planned together
                last, period = e, e.period
            cause = events.transfer_cause(p.cause_kind, payment_id=e.payment_id, episode_id=e.episode_id,
                                          provider_code=e.provider_code, period=period, scheme_id=e.scheme_id,
                                          scheme_version=e.scheme_version)
            data = events.transfer_requested(p.transfer_id, p.kind, p.legs, cause, pending_id=p.pending_id,
                                             ordering_key=e.payment_id)
            rows.append(events.row(TOPIC, e.payment_id, EVENT_TYPE, data, producer=PRODUCER, correlation_id=correlation_id,
                                   causation_id=causation_id, event_id=ids[len(rows)], occurred_at=occurred_at))
    return rows


def request_row(t: TransferRequested, *, correlation_id: str, causation_id: str | None) -> Row:
    """The row of a transfer built as a contract model, keyed by its ordering key."""
    return events.model_row(TOPIC, t.key, EVENT_TYPE, t, producer=PRODUCER, correlation_id=correlation_id,
                            causation_id=causation_id, event_id=events.event_ids(1)[0], occurred_at=events.occurred_now())


STATEMENT_PROVISIONAL = "payments.statement-provisional.v1"
STATEMENT_FINALISED = "payments.statement-finalised.v1"


def statement_row(statement: SettlementStatement, *, correlation_id: str) -> Row:
    """A statement's event (provisional or finalised) on ``payments.statements.v1``, keyed by provider."""
    type_ = STATEMENT_FINALISED if statement.status == "final" else STATEMENT_PROVISIONAL
    return events.model_row(PAYMENTS_STATEMENTS.name, statement.provider_code, type_, statement, producer=PRODUCER,
                            correlation_id=correlation_id, causation_id=statement.statement_id,
                            event_id=events.event_ids(1)[0], occurred_at=events.occurred_now())


# What payments publishes besides its dead letters, for the AsyncAPI document (devtools/docs.py
# lists payments' topics itself; this is the entry it needs for the statements).
STATEMENTS_DOC = (PAYMENTS_STATEMENTS, SettlementStatement,
                  "Settlement statements under a scheme with [review]: payments.statement-provisional.v1 (no money moved)"
                  " and payments.statement-finalised.v1 (the money moved; settlement_id names the report). Key: provider_code.")
