"""A dead letter keeps the original record's headers byte for byte (shared/consumer.py), so an
operator replaying it (shared/dlq.py) sends exactly what the producer sent."""

from __future__ import annotations

from types import SimpleNamespace

from shared.consumer import dead_letter_headers, dead_letter_record_headers


def record(headers):  # type: ignore[no-untyped-def]
    return SimpleNamespace(topic="payments.requested.v1", partition=3, offset=41, timestamp=1_764_000_000_000, headers=headers,
                           key=b"k", value=b"\xff\xfe not json")


def test_original_headers_are_kept_exactly_then_the_dlq_fields() -> None:
    original = [("correlation_id", b"c-1"), ("blob", b"\xff\x00\xfe"), ("dup", b"1"), ("dup", b"2"), ("empty", b""),
                ("dlq_reason", b"an older dead letter's"), ("dlq_replayed_from", b"payments.requested.dlq.v1/0/7")]
    headers = dead_letter_record_headers(record(original), "data.amount_pence: too big", "invalid")
    assert headers[:6] == [("correlation_id", b"c-1"), ("blob", b"\xff\x00\xfe"), ("dup", b"1"), ("dup", b"2"), ("empty", b""),
                           ("dlq_replayed_from", b"payments.requested.dlq.v1/0/7")]
    assert dict(headers[6:]) == {"dlq_reason": b"data.amount_pence: too big", "dlq_kind": b"invalid",
                                 "dlq_source_topic": b"payments.requested.v1", "dlq_source_partition": b"3",
                                 "dlq_source_offset": b"41", "dlq_source_timestamp": b"1764000000000"}


def test_the_text_form_for_rewriting_writers_keeps_the_replay_trace() -> None:
    text = dead_letter_headers(record([("dlq_replayed_from", b"x/0/1"), ("dlq_kind", b"old")]), "why", "failed")
    assert text["dlq_replayed_from"] == "x/0/1" and text["dlq_kind"] == "failed" and text["dlq_reason"] == "why"
