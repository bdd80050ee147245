"""The one event encoder (shared/events.py) writes exactly the contract's bytes: property tests
against ``Envelope[...].model_dump_json()`` for the hot-path payload builders and contract models."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from shared import events
from shared.contracts import Envelope, FeedbackReceived, Leg, TransferCause, TransferPosted, TransferRequested

AT = datetime(2026, 11, 21, 10, 30, 5, 123456, tzinfo=timezone.utc)
IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,40}", fullmatch=True)
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=30)
PROPS = settings(max_examples=200, deadline=None)


def envelope_bytes(data: object, type_: str, *, producer: str, cid: str, cause: str | None, event_id: str) -> bytes:
    env = Envelope[type(data)](event_id=uuid.UUID(event_id), type=type_, occurred_at=AT, correlation_id=cid,  # type: ignore[misc]
                               causation_id=cause, producer=producer, data=data)
    return env.model_dump_json().encode()


@PROPS
@given(tid=IDS, kind=st.sampled_from(["posted", "pending", "post_pending", "void_pending"]), amount=st.integers(1, 10**12),
       pid=IDS, note=st.none() | TEXT, version=st.none() | st.integers(1, 10**6), cid=TEXT, cause=st.none() | TEXT,
       timeout=st.none() | st.integers(1, 366 * 86_400))
def test_transfer_requested_rows_are_the_contract_bytes(tid: str, kind: str, amount: int, pid: str, note: str | None,
                                                        version: int | None, cid: str, cause: str | None, timeout: int | None) -> None:
    legs = () if kind == "void_pending" else (("commissioner:QWE", -amount), ("provider:RJ1", amount))
    pending_id = f"hold:{pid}" if kind in ("post_pending", "void_pending") else None
    timeout = timeout if kind == "pending" else None
    model = TransferRequested(transfer_id=tid, kind=kind, legs=tuple(Leg(account_id=a, amount_pence=m) for a, m in legs),  # type: ignore[arg-type]
                              pending_id=pending_id, timeout_s=timeout, ordering_key=pid,
                              cause=TransferCause(kind="settlement", payment_id=pid, scheme_version=version, note=note))
    data = events.transfer_requested(tid, kind, legs, events.transfer_cause("settlement", payment_id=pid, scheme_version=version,
                                                                            note=note),
                                     pending_id=pending_id, timeout_s=timeout, ordering_key=pid)
    [event_id] = events.event_ids(1)
    row = events.row("ledger.transfer-requests.v1", pid, "ledger.transfer-requested.v1", data, producer="payments",
                     correlation_id=cid, causation_id=cause, event_id=event_id, occurred_at=events.stamp(AT))
    assert row[2] == envelope_bytes(model, "ledger.transfer-requested.v1", producer="payments", cid=cid, cause=cause,
                                    event_id=event_id)
    assert row[0] == "ledger.transfer-requests.v1" and row[1] == pid.encode()
    headers = json.loads(row[3])
    assert headers == {"event_type": "ledger.transfer-requested.v1", "event_id": event_id, "correlation_id": cid,
                       **({"causation_id": cause} if cause else {})}


@PROPS
@given(tid=IDS, status=st.sampled_from(["posted", "pending", "voided", "rejected"]), seq=st.integers(1, 10**12),
       reason=st.none() | TEXT, cid=TEXT)
def test_transfer_posted_rows_are_the_contract_bytes(tid: str, status: str, seq: int, reason: str | None, cid: str) -> None:
    digest = "ab" * 32
    rejected = status == "rejected"
    model = TransferPosted(transfer_id=tid, status=status, entry_seq=None if rejected else seq,  # type: ignore[arg-type]
                           entry_hash=None if rejected else digest, reason=reason)
    [event_id] = events.event_ids(1)
    row = events.row("ledger.posted.v1", tid, "ledger.posted.v1", events.transfer_posted(tid, status, seq, digest, reason),
                     producer="ledger", correlation_id=cid, causation_id=None, event_id=event_id, occurred_at=events.stamp(AT))
    assert row[2] == envelope_bytes(model, "ledger.posted.v1", producer="ledger", cid=cid, cause=None, event_id=event_id)


@PROPS
@given(sid=IDS, answer=st.integers(1, 6), cid=TEXT)
def test_contract_models_encode_as_the_contract(sid: str, answer: int, cid: str) -> None:
    model = FeedbackReceived(submission_id=sid, episode_id=sid, provider_code="RJ1", patient_pseudonym="a" * 64, instrument="fft",
                             authored_at=AT, fft_answer=answer)  # type: ignore[arg-type]
    [event_id] = events.event_ids(1)
    row = events.model_row("feedback.received.v1", sid, "feedback.received.v1", model, producer="feedback", correlation_id=cid,
                           causation_id=None, event_id=event_id, occurred_at=events.stamp(AT))
    assert row[2] == envelope_bytes(model, "feedback.received.v1", producer="feedback", cid=cid, cause=None, event_id=event_id)


def test_event_ids_are_distinct_version_4_uuids_and_times_spell_as_the_contract() -> None:
    ids = events.event_ids(2_000)
    assert len(set(ids)) == 2_000 and all(uuid.UUID(i).version == 4 for i in ids)
    for at in (AT, AT.replace(microsecond=0)):
        assert f'"{events.stamp(at)}"'.encode() == TypeAdapter(datetime).dump_json(at)


def test_trace_ids_outside_the_envelope_s_bounds_are_refused() -> None:
    import pytest

    for cid, cause in (("", None), ("x" * 201, None), ("a\x00b", None), ("ok", "y" * 201)):
        with pytest.raises(ValueError):
            events.row("t", "k", "t.v1", {}, producer="p", correlation_id=cid, causation_id=cause, event_id="e", occurred_at="o")
