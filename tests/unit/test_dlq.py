"""Dead-letter re-drive (shared/dlq.py): what a replay publishes, what a run refuses or skips, and the
command line's refusals (none of these need a broker)."""

from __future__ import annotations

import io
import json
import socket
from dataclasses import dataclass, field
from typing import Any

import pytest

from shared import dlq
from shared.topics import ALL_TOPICS, FEEDBACK_SUBMITTED_DLQ, LEDGER_POSTED_DLQ, PAYMENTS_REQUESTED, PAYMENTS_REQUESTED_DLQ


@dataclass
class Rec:
    """The fields of an aiokafka ConsumerRecord the tool reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp: int = 1_796_000_000_000
    timestamp_type: int = 0


def dead(offset: int = 0, *, source: str | None = PAYMENTS_REQUESTED.name, value: bytes | None = b"\xff\x00v",
         key: bytes | None = b"ep-1", topic: str = PAYMENTS_REQUESTED_DLQ.name, kind: str = "invalid") -> Rec:
    headers: list[tuple[str, bytes | None]] = [("correlation_id", b"c-1"), ("dlq_reason", b"data: bad"), ("dlq_kind", kind.encode())]
    if source is not None:
        headers += [("dlq_source_topic", source.encode()), ("dlq_source_partition", b"3"), ("dlq_source_offset", b"41")]
    return Rec(topic, 0, offset, key, value, headers)


def test_the_dead_letter_topics_are_those_of_topics_py_and_each_collects_a_project_topic() -> None:
    names = {t.name for t in ALL_TOPICS}
    assert dlq.dead_letter_topics() == [t.name for t in ALL_TOPICS if t.name.endswith(".dlq.v1")]
    assert len(dlq.dead_letter_topics()) == 5
    for topic in dlq.dead_letter_topics():
        assert dlq.source_of(topic) in names and dlq.source_of(topic) in dlq.source_topics()
    assert dlq.REPLAYS.name not in names  # the tool's own topic; the services never read it


def test_replay_headers_keep_the_originals_as_stored_drop_dlq_ones_and_say_where_from() -> None:
    headers = [("correlation_id", b"c-1"), ("dlq_reason", b"x"), ("bin", b"\xff\xfe"), ("dup", b"1"), ("dup", b"2"),
               ("null", None), ("dlq_source_topic", b"payments.requested.v1")]
    assert dlq.replay_headers(headers, "payments.requested.dlq.v1/0/7") == [
        ("correlation_id", b"c-1"), ("bin", b"\xff\xfe"), ("dup", b"1"), ("dup", b"2"), ("null", None),
        ("dlq_replayed_from", b"payments.requested.dlq.v1/0/7"),
    ]


def test_a_dead_letter_is_replayable_only_to_the_project_topic_its_dlq_collects() -> None:
    assert dlq.refusal(PAYMENTS_REQUESTED_DLQ.name, dead().headers) is None
    assert "no dlq_source_topic header" in dlq.refusal(PAYMENTS_REQUESTED_DLQ.name, dead(source=None).headers)
    assert "not a topic of shared/topics.py" in dlq.refusal(PAYMENTS_REQUESTED_DLQ.name, dead(source="orders.v1").headers)
    assert "itself a dead-letter topic" in dlq.refusal(PAYMENTS_REQUESTED_DLQ.name,
                                                       dead(source=PAYMENTS_REQUESTED_DLQ.name).headers)
    assert "does not match" in dlq.refusal(LEDGER_POSTED_DLQ.name, dead(source=PAYMENTS_REQUESTED.name).headers)
    empty = dead(source=None).headers + [("dlq_source_topic", b"")]
    assert "no dlq_source_topic header" in dlq.refusal(PAYMENTS_REQUESTED_DLQ.name, empty)
    not_utf8 = dead(source=None).headers + [("dlq_source_topic", b"\xff")]
    assert "no dlq_source_topic header" in dlq.refusal(PAYMENTS_REQUESTED_DLQ.name, not_utf8)


def test_the_feedback_intakes_redacted_dead_letters_are_never_replayed() -> None:
    rec = dead(topic=FEEDBACK_SUBMITTED_DLQ.name, source="feedback.submitted.v1")
    assert "redacted" in dlq.refusal(FEEDBACK_SUBMITTED_DLQ.name, rec.headers)


def test_display_is_utf8_when_it_decodes_else_base64() -> None:
    assert dlq.text_or_base64(b'{"a": "\xc3\xa9"}') == {"encoding": "utf-8", "data": '{"a": "é"}', "bytes": 11}
    assert dlq.text_or_base64(b"\xff\x00") == {"encoding": "base64", "data": "/wA=", "bytes": 2}
    assert dlq.text_or_base64(None) == {"encoding": None, "data": None, "bytes": 0}
    assert dlq.shown_text(dlq.text_or_base64(b"\xff")) == "base64:/w=="


def test_the_fingerprint_tells_null_from_empty_and_key_from_value() -> None:
    prints = {dlq.fingerprint(k, v, 1) for k, v in [(None, b""), (b"", None), (b"", b""), (b"a", b"b"), (b"ab", b""),
                                                     (b"", b"ab"), (None, None)]}
    assert len(prints) == 7
    assert dlq.fingerprint(b"k", b"v", 1) != dlq.fingerprint(b"k", b"v", 2)


def replayed_entry(rec: Rec) -> dict[str, Any]:
    import datetime as dt

    value = dlq.replay_record_value(rec, PAYMENTS_REQUESTED.name, 3, 99, dt.datetime(2026, 12, 1, tzinfo=dt.UTC), "op@h")
    parsed = dlq.parse_replay_record(dlq.position(rec.topic, rec.partition, rec.offset).encode(), value)
    assert parsed is not None
    return parsed[1]


def test_a_run_publishes_new_dead_letters_skips_replayed_ones_and_refuses_the_rest() -> None:
    fresh, done, orphan = dead(0), dead(1), dead(2, source=None)
    replayed = {dlq.position(done.topic, 0, 1): replayed_entry(done)}
    plan = dlq.Plan()
    for rec in (fresh, done, orphan):
        dlq.decide(plan, rec, replayed)
    assert plan.publish == [fresh]
    assert [r for r, _ in plan.skipped] == [done] and plan.skipped[0][1]["replayed_offset"] == 99
    assert [(r, "no dlq_source_topic" in why) for r, why in plan.refused] == [(orphan, True)]
    assert (plan.selected, plan.refused_count, plan.skipped_count) == (3, 1, 1)


def test_a_replay_record_for_another_dead_letter_at_the_same_position_is_refused_not_skipped() -> None:
    before = dead(5, value=b"old")
    now = dead(5, value=b"new")  # the topic was created again and offset 5 reused
    plan = dlq.Plan()
    dlq.decide(plan, now, {dlq.position(now.topic, 0, 5): replayed_entry(before)})
    assert plan.publish == [] and plan.refused_count == 1 and "different dead letter" in plan.refused[0][1]


def test_a_run_publishes_at_most_replay_max(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dlq, "REPLAY_MAX", 2)
    plan = dlq.Plan()
    for i in range(5):
        dlq.decide(plan, dead(i), {})
    assert [r.offset for r in plan.publish] == [0, 1] and plan.left_over == 3


def test_junk_in_the_replay_record_is_ignored() -> None:
    assert dlq.parse_replay_record(None, b"{}") is None
    assert dlq.parse_replay_record(b"k", None) is None
    assert dlq.parse_replay_record(b"k", b"not json") is None
    assert dlq.parse_replay_record(b"k", b"[1]") is None
    assert dlq.parse_replay_record(b"k", b'{"fingerprint": "x"}') == ("k", {"fingerprint": "x"})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv: list[str]) -> tuple[int, str, str]:
    import asyncio

    out, err = io.StringIO(), io.StringIO()
    code = asyncio.run(dlq.run(argv, out, err))
    return code, out.getvalue(), err.getvalue()


NO_BROKER = ["--bootstrap", "127.0.0.1:1"]  # never contacted: these are refused first


@pytest.mark.parametrize("argv, says", [
    (["list", "--topic", "payments.requested.v1"], "not a dead-letter topic"),
    (["show", "--topic", "orders.dlq.v1", "--partition", "0", "--offset", "0"], "not a dead-letter topic"),
    (["replay", "--topic", "payments.requested.v1", "--all"], "not a dead-letter topic"),
    (["list", "--topic", PAYMENTS_REQUESTED_DLQ.name, "--limit", "0"], "--limit"),
    (["list", "--topic", PAYMENTS_REQUESTED_DLQ.name, "--limit", "10001"], "--limit"),
    (["replay", "--topic", PAYMENTS_REQUESTED_DLQ.name, "--offset", "3"], "--partition is required"),
    (["replay", "--topic", PAYMENTS_REQUESTED_DLQ.name, "--partition", "0", "--from-offset", "3"], "--from-offset A --to-offset B"),
    (["replay", "--topic", PAYMENTS_REQUESTED_DLQ.name, "--partition", "0", "--from-offset", "5", "--to-offset", "4"],
     "not a range"),
    (["replay", "--topic", PAYMENTS_REQUESTED_DLQ.name, "--partition", "0", "--all"], "leave out --partition"),
    (["replay", "--topic", PAYMENTS_REQUESTED_DLQ.name, "--partition", "0", "--offset", "1", "--to-offset", "4"],
     "--to-offset goes with --from-offset"),
    (["list", "--timeout", "301"], "--timeout"),
    (["show", "--topic", PAYMENTS_REQUESTED_DLQ.name, "--partition", "0", "--offset", "-1"], "must not be negative"),
    (["replay", "--topic", PAYMENTS_REQUESTED_DLQ.name, "--partition", "-1", "--offset", "0"], "must not be negative"),
])
def test_the_command_line_refuses_with_exit_2(argv: list[str], says: str) -> None:
    code, _, err = run(argv + NO_BROKER)
    assert code == dlq.REFUSED and says in err, err


def test_usage_errors_are_refusals_too() -> None:
    assert run(["replay", "--topic", PAYMENTS_REQUESTED_DLQ.name])[0] == dlq.REFUSED  # no selection
    assert run(["replay", "--topic", "t", "--offset", "1", "--all"])[0] == dlq.REFUSED  # two selections
    assert run(["frobnicate"])[0] == dlq.REFUSED
    assert run(["--help"])[0] == dlq.OK


def test_an_unreachable_broker_exits_3_quickly() -> None:
    code, _, err = run(["list", "--bootstrap", f"127.0.0.1:{closed_port()}", "--timeout", "10", "--json"])
    assert code == dlq.BROKER_ERROR and "cannot reach the broker" in err


def test_replay_output_is_one_json_document() -> None:
    plan_doc = {"results": [], "summary": {"selected": 0}}
    buf = io.StringIO()
    dlq.Io(buf, io.StringIO(), True).emit(plan_doc)
    assert json.loads(buf.getvalue()) == plan_doc
