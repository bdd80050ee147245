"""``ledger.transfer-requested.v1`` outbox rows, serialised by hand.

Accepting a payment writes one or two of these, on the consumer's hot path; settlement one or
two per episode of the month. Building them
through the contract (``envelope()`` validating the envelope and the transfer again,
``model_dump_json``, ``json.dumps`` of the headers, ``uuid4()`` per event) cost about as much
CPU as the rest of accepting the payment. These functions write the same row, byte for byte:
the payload is what ``Envelope[TransferRequested].model_dump_json()`` writes (the fields in
the contract's order, strings quoted as pydantic quotes them) and the headers what
``shared.outbox.outbox_row`` writes; tests compare them with the pydantic-built rows for every
kind of transfer payments asks for.

Event ids are drawn for a whole batch from one ``os.urandom`` call and a batch's events share
one ``occurred_at`` (they commit in one transaction), as the ledger does for its events.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

from services.payments.domain import Episode, PlannedTransfer
from shared.contracts import TransferRequested, envelope
from shared.topics import LEDGER_TRANSFER_REQUESTS

PRODUCER = "payments"
EVENT_TYPE = "ledger.transfer-requested.v1"
TOPIC = LEDGER_TRANSFER_REQUESTS.name
MAX_TRACE_ID = 200  # Envelope.correlation_id / causation_id max_length

Row = tuple[str, bytes, bytes, str]  # (topic, key, payload, headers): an outbox row

_str = json.encoder.encode_basestring  # C-accelerated; quotes exactly as pydantic does (UTF-8 kept)
_str_ascii = json.encoder.encode_basestring_ascii  # as json.dumps quotes the headers


def _opt_str(value: str | None) -> str:
    return "null" if value is None else _str(value)


def _opt_int(value: int | None) -> str:
    return "null" if value is None else str(value)


def stamp(at: datetime) -> str:
    """A UTC time as the contract serialises it (RFC 3339, ``Z``; microseconds only when set)."""
    return at.isoformat().replace("+00:00", "Z")


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


# -- the payload's parts ------------------------------------------------------------------------
def cause_json(kind: str, *, payment_id: str | None = None, episode_id: str | None = None,
               provider_code: str | None = None, period: str | None = None, scheme_id: str | None = None,
               scheme_version: int | None = None, settlement_id: str | None = None, appeal_id: str | None = None,
               note: str | None = None) -> str:
    """A ``TransferCause`` object, every field in the contract's order."""
    return (
        f'{{"kind":{_str(kind)},"payment_id":{_opt_str(payment_id)},"episode_id":{_opt_str(episode_id)},'
        f'"provider_code":{_opt_str(provider_code)},"period":{_opt_str(period)},"scheme_id":{_opt_str(scheme_id)},'
        f'"scheme_version":{_opt_int(scheme_version)},"settlement_id":{_opt_str(settlement_id)},'
        f'"appeal_id":{_opt_str(appeal_id)},"note":{_opt_str(note)}}}'
    )


def episode_cause_json(e: Episode, kind: str) -> str:
    """The cause ``domain._cause`` gives a transfer of this episode."""
    return f'{{"kind":{_str(kind)},{_episode_cause_fields(e)}}}'


def _episode_cause_fields(e: Episode) -> str:
    """The cause's fields after ``kind``, the same for every transfer of one episode."""
    return (
        f'"payment_id":{_str(e.payment_id)},"episode_id":{_str(e.episode_id)},"provider_code":{_str(e.provider_code)},'
        f'"period":{_str(e.period)},"scheme_id":{_opt_str(e.scheme_id)},"scheme_version":{_opt_int(e.scheme_version)},'
        '"settlement_id":null,"appeal_id":null,"note":null'
    )


def transfer_json(transfer_id: str, kind: str, legs: Iterable[tuple[str, int]], cause: str, *,
                  pending_id: str | None = None, timeout_s: int | None = None, reverses: str | None = None,
                  ordering_key: str | None = None) -> str:
    """A ``TransferRequested`` object; ``cause`` is already JSON (``cause_json``)."""
    legs_json = ",".join(f'{{"account_id":{_str(account)},"amount_pence":{pence}}}' for account, pence in legs)
    return (
        f'{{"transfer_id":{_str(transfer_id)},"kind":{_str(kind)},"legs":[{legs_json}],'
        f'"pending_id":{_opt_str(pending_id)},"timeout_s":{_opt_int(timeout_s)},"reverses":{_opt_str(reverses)},'
        f'"ordering_key":{_opt_str(ordering_key)},"cause":{cause}}}'
    )


# -- rows -------------------------------------------------------------------------------------
def event_row(key: str, data_json: str, *, correlation_id: str, causation_id: str | None, event_id: str,
              occurred_at: str) -> Row:
    """One outbox row: the envelope around ``data_json``, and the headers the relay sends."""
    cid = _str(correlation_id)
    payload = (
        f'{{"event_id":"{event_id}","type":"{EVENT_TYPE}","occurred_at":"{occurred_at}","correlation_id":{cid},'
        f'"causation_id":{_opt_str(causation_id)},"producer":"{PRODUCER}","data":{data_json}}}'
    )
    headers = f'{{"event_type": "{EVENT_TYPE}", "event_id": "{event_id}", "correlation_id": {_str_ascii(correlation_id)}'
    headers += f', "causation_id": {_str_ascii(causation_id)}}}' if causation_id else "}"
    return (TOPIC, key.encode(), payload.encode(), headers)


def _trace_ok(correlation_id: str, causation_id: str | None) -> bool:
    """The envelope's constraints on its trace ids (``FreeText`` with its lengths)."""
    return (0 < len(correlation_id) <= MAX_TRACE_ID and "\x00" not in correlation_id
            and (causation_id is None or (len(causation_id) <= MAX_TRACE_ID and "\x00" not in causation_id)))


def check_trace(correlation_id: str, causation_id: str | None, transfer: TransferRequested) -> None:
    """Refuse trace ids the contract refuses, with the contract's own error: the envelope is
    only built (and raises ValidationError, as it always did) when the cheap check fails."""
    if not _trace_ok(correlation_id, causation_id):
        envelope(transfer, EVENT_TYPE, producer=PRODUCER, correlation_id=correlation_id, causation_id=causation_id)


def planned_rows(plan: Sequence[PlannedTransfer], *, correlation_id: str, causation_id: str | None,
                 event_ids: Sequence[str], occurred_at: str) -> list[Row]:
    """The rows of planned transfers (``domain.payment_plan``, ``domain.settlement_plan``; one
    payment's or a settlement unit's), one event id each, in order.

    Each is keyed by its payment id (the ordering key): a pending hold and the transfer that
    later posts or voids it land on one partition, in order."""
    if not plan:
        return []
    if not _trace_ok(correlation_id, causation_id):
        check_trace(correlation_id, causation_id, plan[0].request())
    rows = []
    last: Episode | None = None
    fields = ""
    for p, event_id in zip(plan, event_ids, strict=True):
        e = p.episode
        if e is not last:  # an episode's transfers are planned together: its cause fields once
            last, fields = e, _episode_cause_fields(e)
        data = transfer_json(p.transfer_id, p.kind, p.legs, f'{{"kind":{_str(p.cause_kind)},{fields}}}',
                             pending_id=p.pending_id, ordering_key=e.payment_id)
        rows.append(event_row(e.payment_id, data, correlation_id=correlation_id, causation_id=causation_id,
                              event_id=event_id, occurred_at=occurred_at))
    return rows


def contract_row(t: TransferRequested, *, correlation_id: str, causation_id: str | None, event_id: str,
                 occurred_at: str) -> Row:
    """The row of any transfer request already built as a contract model (settlement, appeals)."""
    check_trace(correlation_id, causation_id, t)
    c = t.cause
    cause = cause_json(c.kind, payment_id=c.payment_id, episode_id=c.episode_id, provider_code=c.provider_code,
                       period=c.period, scheme_id=c.scheme_id, scheme_version=c.scheme_version,
                       settlement_id=c.settlement_id, appeal_id=c.appeal_id, note=c.note)
    data = transfer_json(t.transfer_id, t.kind, ((leg.account_id, leg.amount_pence) for leg in t.legs), cause,
                         pending_id=t.pending_id, timeout_s=t.timeout_s, reverses=t.reverses, ordering_key=t.ordering_key)
    return event_row(t.key, data, correlation_id=correlation_id, causation_id=causation_id, event_id=event_id,
                     occurred_at=occurred_at)
