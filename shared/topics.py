"""Kafka topic names and their partition counts: the one place they are declared.

Versions live in the name (``.v1``). ``payments.requested.v1`` and ``feedback.received.v1`` are
keyed by episode id and co-partitioned (same partition count, same default partitioner), and
the payments consumer uses the range assignor, so one payments instance sees both halves of
an episode.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    key: str  # what the message key is, for documentation and tests


EPISODE_PARTITIONS = 8

PAYMENTS_REQUESTED = TopicSpec("payments.requested.v1", EPISODE_PARTITIONS, "episode_id")
PAYMENTS_REQUESTED_DLQ = TopicSpec("payments.requested.dlq.v1", 1, "original key")
FEEDBACK_SUBMITTED = TopicSpec("feedback.submitted.v1", EPISODE_PARTITIONS, "episode_id")
FEEDBACK_SUBMITTED_DLQ = TopicSpec("feedback.submitted.dlq.v1", 1, "original key")
FEEDBACK_RECEIVED = TopicSpec("feedback.received.v1", EPISODE_PARTITIONS, "episode_id")
FEEDBACK_RECEIVED_DLQ = TopicSpec("feedback.received.dlq.v1", 1, "original key")
LEDGER_TRANSFER_REQUESTS = TopicSpec("ledger.transfer-requests.v1", 8, "transfer_id")
LEDGER_TRANSFER_REQUESTS_DLQ = TopicSpec("ledger.transfer-requests.dlq.v1", 1, "original key")
LEDGER_POSTED = TopicSpec("ledger.posted.v1", 8, "transfer_id")
LEDGER_POSTED_DLQ = TopicSpec("ledger.posted.dlq.v1", 1, "original key")
# Improvement funds (services/funds): every step of every grant, keyed by grant id so one grant's
# events stay in order on one partition; the event types (funds.grant-proposed.v1, ...) tell the
# steps apart. Few events (a handful per grant), so few partitions.
FUNDS_GRANTS = TopicSpec("funds.grants.v1", 3, "grant_id")
# Payments' settlement statements (scheme option [review]): provisional and finalised, keyed by
# provider so one provider's statements stay in order. A few per provider a month.
PAYMENTS_STATEMENTS = TopicSpec("payments.statements.v1", 3, "provider_code")

ALL_TOPICS: tuple[TopicSpec, ...] = (
    PAYMENTS_REQUESTED,
    PAYMENTS_REQUESTED_DLQ,
    FEEDBACK_SUBMITTED,
    FEEDBACK_SUBMITTED_DLQ,
    FEEDBACK_RECEIVED,
    FEEDBACK_RECEIVED_DLQ,
    LEDGER_TRANSFER_REQUESTS,
    LEDGER_TRANSFER_REQUESTS_DLQ,
    LEDGER_POSTED,
    LEDGER_POSTED_DLQ,
    FUNDS_GRANTS,
    PAYMENTS_STATEMENTS,
)
