"""The one event encoder: every event a service publishes becomes an outbox row here.

A row is ``(topic, key, payload, headers)``; the payload is the event's envelope as JSON, byte for
byte what ``Envelope[...].model_dump_json()`` writes (fields in the contract's order, strings as
pydantic writes them, UTF-8 kept), and the headers are those the relay sends
(``event_type``, ``event_id``, ``correlation_id`` and, when set, ``causation_id``). The bytes
are written by orjson from plain dicts in the contract's field order: measured against the
hand-built f-strings this replaces (``bench/outbox --encode``), orjson took 4.0 µs per
transfer-request event against 4.6 µs, and msgspec 4.6 µs; tests prove by property that the
three payload builders below and ``model_row`` give the contract's bytes exactly.

The hot paths (a payment's transfers, settlement's, the ledger's answers) build their ``data``
dicts with the builders here, without constructing and validating pydantic models; everything
else hands the contract model to ``model_row``. Event ids for a batch come from one
``os.urandom`` call; a batch's events share one ``occurred_at`` (they commit together).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import orjson

from shared.contracts import Contract, Envelope

Row = tuple[str, bytes, bytes, str]  # (topic, key, payload, headers as JSON): one outbox row
MAX_TRACE_ID = 200  # Envelope.correlation_id / causation_id max_length


def stamp(at: datetime) -> str:
    """A UTC time as the contract serialises it (RFC 3339, ``Z``; microseconds only when set)."""
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def occurred_now() -> str:
    return stamp(datetime.now(timezone.utc))


def event_ids(n: int) -> list[str]:
    """``n`` random version-4 UUIDs as strings, from one system call for the lot."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = bytes(b & 0x0F | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes(b & 0x3F | 0x80 for b in raw[8::16])  # RFC 4122 variant
    h = raw.hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, 32 * n, 32)]


def trace_ok(correlation_id: str, causation_id: str | None) -> bool:
    """The envelope's constraints on its trace ids (``FreeText`` with its lengths)."""
    return (0 < len(correlation_id) <= MAX_TRACE_ID and "\x00" not in correlation_id
            and (causation_id is None or (len(causation_id) <= MAX_TRACE_ID and "\x00" not in causation_id)))


def row(topic: str, key: str, type_: str, data: Mapping[str, Any], *, producer: str, correlation_id: str,
        causation_id: str | None, event_id: str, occurred_at: str) -> Row:
    """One outbox row: the envelope around ``data`` (a dict in the payload contract's field order)."""
    if not trace_ok(correlation_id, causation_id):
        raise ValueError("correlation_id and causation_id must be 1-200 characters without NUL")
    payload = orjson.dumps({"event_id": event_id, "type": type_, "occurred_at": occurred_at, "correlation_id": correlation_id,
                            "causation_id": causation_id, "producer": producer, "data": data})
    headers: dict[str, str] = {"event_type": type_, "event_id": event_id, "correlation_id": correlation_id}
    if causation_id:
        headers["causation_id"] = causation_id
    return (topic, key.encode(), payload, orjson.dumps(headers).decode())


def model_row(topic: str, key: str, type_: str, model: Contract, *, producer: str, correlation_id: str,
              causation_id: str | None, event_id: str, occurred_at: str) -> Row:
    """The row of an event whose payload is already a validated contract model."""
    return row(topic, key, type_, model.model_dump(mode="json"), producer=producer, correlation_id=correlation_id,
               causation_id=causation_id, event_id=event_id, occurred_at=occurred_at)


def envelope_row(topic: str, key: str, env: Envelope) -> Row:
    """The row of an event already built as an ``Envelope`` (tests, tools)."""
    return model_row(topic, key, env.type, env.data, producer=env.producer, correlation_id=env.correlation_id,
                     causation_id=env.causation_id, event_id=str(env.event_id), occurred_at=stamp(env.occurred_at))


# ---------------------------------------------------------------------------------------------
# Payload builders for the hot paths: the contract's fields, in its order
# ---------------------------------------------------------------------------------------------
def transfer_cause(kind: str, *, payment_id: str | None = None, episode_id: str | None = None, provider_code: str | None = None,
                   period: str | None = None, scheme_id: str | None = None, scheme_version: int | None = None,
                   settlement_id: str | None = None, appeal_id: str | None = None, grant_id: str | None = None,
                   note: str | None = None) -> dict[str, Any]:
    """``TransferCause`` as a dict."""
    return {"kind": kind, "payment_id": payment_id, "episode_id": episode_id, "provider_code": provider_code, "period": period,
            "scheme_id": scheme_id, "scheme_version": scheme_version, "settlement_id": settlement_id, "appeal_id": appeal_id,
            "grant_id": grant_id, "note": note}


def transfer_requested(transfer_id: str, kind: str, legs: Iterable[tuple[str, int]], cause: Mapping[str, Any], *,
                       pending_id: str | None = None, timeout_s: int | None = None, reverses: str | None = None,
                       ordering_key: str | None = None, value_date: str | None = None) -> dict[str, Any]:
    """``TransferRequested`` as a dict (``cause`` from ``transfer_cause``), keys in the contract's order."""
    return {"transfer_id": transfer_id, "kind": kind,
            "legs": [{"account_id": account, "amount_pence": pence} for account, pence in legs],
            "pending_id": pending_id, "timeout_s": timeout_s, "reverses": reverses, "ordering_key": ordering_key, "cause": cause,
            "value_date": value_date}


def transfer_posted(transfer_id: str, status: str, entry_seq: int | None, entry_hash: str | None,
                    reason: str | None) -> dict[str, Any]:
    """``TransferPosted`` as a dict: a rejection carries no place in the chain."""
    rejected = status == "rejected"
    return {"transfer_id": transfer_id, "status": status, "entry_seq": None if rejected else entry_seq,
            "entry_hash": None if rejected else entry_hash, "reason": reason}
