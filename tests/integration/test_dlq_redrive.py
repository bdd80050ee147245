"""Operator tools against the real broker: dead-letter re-drive (shared/dlq.py) and consumer lag (shared/lag.py).

Dead letters are written by the services' own writer (``Runtime.dead_letter``, shared/service.py,
with ``shared.consumer.dead_letter_headers``) from records read back from the source topic, so the
byte-for-byte claim is checked from the original publish to the replay. The CLI runs in-process
through ``main(argv)`` (in a worker thread: it runs its own event loop) and as ``python -m shared.dlq``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared import dlq
from shared.kafka import ensure_topics, make_producer
from shared.lag import GroupOffsets, LagReporter
from shared.service import Runtime
from shared.settings import ServiceSettings
from shared.topics import (
    FEEDBACK_RECEIVED,
    FEEDBACK_RECEIVED_DLQ,
    LEDGER_POSTED,
    LEDGER_POSTED_DLQ,
    LEDGER_TRANSFER_REQUESTS,
    LEDGER_TRANSFER_REQUESTS_DLQ,
    PAYMENTS_REQUESTED,
    PAYMENTS_REQUESTED_DLQ,
)
from tests.helpers import publish, read_topic

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOT_UTF8_VALUE = b'\xff\xfe{"data": "\xe9t\xe9"}\x00\x80'  # latin-1 and stray bytes: no UTF-8 decoder takes it
NOT_UTF8_KEY = b"ep-\xff\x01"
JSON_VALUE = b'{"event_id": "e-2",  "data": {"amount_pence": -5}}'  # odd spacing: kept as it was
BATCHED = 300  # dead letters written many to a record batch


async def all_records(bootstrap: str, topic: str, *, timeout_s: float = 10.0) -> list[Any]:
    """Every record of a topic, read to the high watermark of each partition as the fetch responses
    give it (exact, unlike the embedded broker's ListOffsets; see shared.dlq.confirm_latest)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=50)
    await consumer.start()
    await asyncio.sleep(0)  # aiokafka: a stop before its start-up task ran raises CancelledError
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            for recs in batch.values():
                out.extend(recs)
            if not batch:
                highs = [consumer.highwater(tp) for tp in tps]
                positions = [await consumer.position(tp) for tp in tps]
                if all(h is not None and p >= h for h, p in zip(highs, positions, strict=True)):
                    return sorted(out, key=lambda r: (r.partition, r.offset))
        raise AssertionError(f"{topic} not read to its end within {timeout_s} s")
    finally:
        await consumer.stop()


async def ends(bootstrap: str, topic: str) -> dict[int, int]:
    """{partition: next offset} of the partitions that hold records."""
    out: dict[int, int] = {}
    for rec in await all_records(bootstrap, topic):
        out[rec.partition] = rec.offset + 1
    return out


async def dead_letter_via_the_service_writer(bootstrap: str, source: str, dlq_topic: str,
                                             originals: list[tuple[bytes | None, bytes, dict[str, str]]]) -> list[Any]:
    """Publish ``originals`` to ``source``, read them back and dead-letter each as a service does.
    The source records, in offset order per partition."""
    before = len(await all_records(bootstrap, source))
    await publish(bootstrap, source, originals)
    records = await read_topic(bootstrap, source, expect=before + len(originals))
    records = [r for r in records if r.value in {v for _, v, _ in originals}]
    records.sort(key=lambda r: [v for _, v, _ in originals].index(r.value))
    settings = ServiceSettings(kafka_bootstrap_servers=bootstrap, service_name="dlq-test")
    runtime = Runtime(settings, migrations=())
    runtime.producer = make_producer(settings, client_id="dlq-test")
    await runtime.producer.start()
    try:
        for rec in records:
            await runtime.dead_letter(rec, dlq_topic, "data.amount_pence: Input should be greater than 0", "invalid")
    finally:
        await runtime.producer.stop()
    return records


async def forget_replays(bootstrap: str) -> None:
    """Delete ops.dlq-replays.v1 if an earlier run left it (an external Kafka keeps it: the fixtures
    delete only the topics of shared/topics.py), so this module starts with no replay recorded."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for _ in range(50):
            if dlq.REPLAYS.name not in set(await admin.list_topics()):
                return
            with contextlib.suppress(Exception):
                await admin.delete_topics([dlq.REPLAYS.name])
            await asyncio.sleep(0.2)  # deletion completes asynchronously on the brokers
        raise AssertionError(f"{dlq.REPLAYS.name} could not be deleted")
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def broker(kafka_bootstrap: str) -> dict[str, Any]:
    """Every project topic; in ledger.transfer-requests.dlq.v1 BATCHED dead letters written in batches;
    two dead letters of payments.requested.v1 (one not UTF-8 at all), one of
    feedback.received.v1; in ledger.posted.dlq.v1 one hand-made record without its source header
    between two good dead letters, and one naming a topic that is not the project's."""
    await forget_replays(kafka_bootstrap)
    await ensure_topics(ServiceSettings(kafka_bootstrap_servers=kafka_bootstrap))
    payments = await dead_letter_via_the_service_writer(kafka_bootstrap, PAYMENTS_REQUESTED.name, PAYMENTS_REQUESTED_DLQ.name, [
        (NOT_UTF8_KEY, NOT_UTF8_VALUE, {"correlation_id": "c-bin", "causation_id": "k-1", "dlq_reason": "stale"}),
        (b"ep-2", JSON_VALUE, {"correlation_id": "c-json"}),
    ])
    feedback = await dead_letter_via_the_service_writer(kafka_bootstrap, FEEDBACK_RECEIVED.name, FEEDBACK_RECEIVED_DLQ.name, [
        (b"ep-3", b"{}", {"correlation_id": "c-fb"}),
    ])
    [good_before] = await dead_letter_via_the_service_writer(kafka_bootstrap, LEDGER_POSTED.name, LEDGER_POSTED_DLQ.name, [
        (b"t-1", b'{"n": 1}', {"correlation_id": "c-l1"}),
    ])
    await publish(kafka_bootstrap, LEDGER_POSTED_DLQ.name, [
        (b"t-x", b'{"n": "orphan"}', {"dlq_reason": "hand-made", "dlq_kind": "failed"}),  # no dlq_source_topic
        (b"t-y", b'{"n": "elsewhere"}', {"dlq_kind": "failed", "dlq_source_topic": "orders.v1"}),
    ])
    [good_after] = await dead_letter_via_the_service_writer(kafka_bootstrap, LEDGER_POSTED.name, LEDGER_POSTED_DLQ.name, [
        (b"t-2", b'{"n": 2}', {"correlation_id": "c-l2"}),
    ])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(
            LEDGER_TRANSFER_REQUESTS_DLQ.name, b'{"n": %d}' % i, key=b"tr-%d" % i,
            headers=[("dlq_source_topic", LEDGER_TRANSFER_REQUESTS.name.encode()), ("dlq_kind", b"failed")])
            for i in range(BATCHED)])
    finally:
        await producer.stop()
    return {"bootstrap": kafka_bootstrap, "payments": payments, "feedback": feedback,
            "ledger": [good_before, good_after]}


async def cli(capsys: pytest.CaptureFixture[str], bootstrap: str, *argv: str) -> tuple[int, Any]:
    """``main(argv)`` in-process with --json: (exit code, the JSON document or None)."""
    capsys.readouterr()
    code = await asyncio.to_thread(dlq.main, [*argv, "--bootstrap", bootstrap, "--json", "--timeout", "20"])
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else None)


def cli_process(bootstrap: str, *argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "shared.dlq", *argv, "--bootstrap", bootstrap, "--timeout", "20"],
                          cwd=ROOT, capture_output=True, timeout=60, check=False)


async def test_the_services_writer_keeps_value_and_key_byte_for_byte(broker: dict[str, Any]) -> None:
    dead = await read_topic(broker["bootstrap"], PAYMENTS_REQUESTED_DLQ.name, expect=2)
    originals = broker["payments"]
    assert [(d.key, d.value) for d in dead] == [(o.key, o.value) for o in originals]
    assert dead[0].value == NOT_UTF8_VALUE and dead[0].key == NOT_UTF8_KEY
    headers = dict(dead[0].headers)
    assert headers["correlation_id"] == b"c-bin" and headers["causation_id"] == b"k-1"
    assert headers["dlq_source_topic"] == PAYMENTS_REQUESTED.name.encode()
    assert headers["dlq_source_partition"] == str(originals[0].partition).encode()
    assert headers["dlq_source_offset"] == str(originals[0].offset).encode()
    assert headers["dlq_reason"].startswith(b"data.amount_pence")  # the sender's own dlq_reason was replaced


async def test_list_shows_every_dead_letter_topic_with_counts(broker: dict[str, Any], capsys) -> None:
    code, doc = await cli(capsys, broker["bootstrap"], "list")
    assert code == 0
    counts = {t["topic"]: (t["exists"], t["records"], [(p["partition"], p["earliest"], p["latest"]) for p in t["partitions"]])
              for t in doc["topics"]}
    assert counts == {
        PAYMENTS_REQUESTED_DLQ.name: (True, 2, [(0, 0, 2)]),
        "feedback.submitted.dlq.v1": (True, 0, [(0, 0, 0)]),
        FEEDBACK_RECEIVED_DLQ.name: (True, 1, [(0, 0, 1)]),
        LEDGER_TRANSFER_REQUESTS_DLQ.name: (True, BATCHED, [(0, 0, BATCHED)]),
        LEDGER_POSTED_DLQ.name: (True, 4, [(0, 0, 4)]),
    }
    assert doc["records"] == 7 + BATCHED

    code, doc = await cli(capsys, broker["bootstrap"], "list", "--topic", PAYMENTS_REQUESTED_DLQ.name, "--limit", "1")
    assert code == 0 and doc["more_from_offset"] == {"0": 1}
    [row] = doc["records"]
    src = broker["payments"][0]
    assert (row["partition"], row["offset"], row["dlq_kind"], row["source_topic"], row["source_partition"],
            row["source_offset"]) == (0, 0, "invalid", PAYMENTS_REQUESTED.name, src.partition, src.offset)
    assert row["dlq_reason"].startswith("data.amount_pence") and row["timestamp"].endswith("Z")
    assert row["key"] == {"encoding": "base64", "data": base64.b64encode(NOT_UTF8_KEY).decode(), "bytes": 5}

    code, doc = await cli(capsys, broker["bootstrap"], "list", "--topic", "feedback.submitted.dlq.v1")
    assert code == 1 and doc["records"] == []  # nothing found

    proc = cli_process(broker["bootstrap"], "list")  # the table, from a process of its own
    assert proc.returncode == 0, proc.stderr
    assert b"payments.requested.dlq.v1" in proc.stdout and f"dead letters: {7 + BATCHED}".encode() in proc.stdout


async def test_show_gives_a_non_utf8_dead_letter_in_full_and_raw_bytes_unchanged(broker: dict[str, Any], capsys) -> None:
    code, doc = await cli(capsys, broker["bootstrap"], "show", "--topic", PAYMENTS_REQUESTED_DLQ.name,
                          "--partition", "0", "--offset", "0")
    assert code == 0
    assert doc["value"]["encoding"] == "base64" and base64.b64decode(doc["value"]["data"]) == NOT_UTF8_VALUE
    assert base64.b64decode(doc["key"]["data"]) == NOT_UTF8_KEY
    names = [h["name"] for h in doc["headers"]]
    assert names[:2] == ["correlation_id", "causation_id"]
    assert {"dlq_reason", "dlq_kind", "dlq_source_topic", "dlq_source_partition", "dlq_source_offset"} <= set(names)
    assert doc["replayable"] == "yes"

    code, doc = await cli(capsys, broker["bootstrap"], "show", "--topic", PAYMENTS_REQUESTED_DLQ.name,
                          "--partition", "0", "--offset", "1")
    assert code == 0 and doc["value"] == {"encoding": "utf-8", "data": JSON_VALUE.decode(), "bytes": len(JSON_VALUE)}

    proc = cli_process(broker["bootstrap"], "show", "--topic", PAYMENTS_REQUESTED_DLQ.name, "--partition", "0",
                       "--offset", "0", "--raw")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == NOT_UTF8_VALUE  # exactly the bytes, nothing else

    code, _ = await cli(capsys, broker["bootstrap"], "show", "--topic", PAYMENTS_REQUESTED_DLQ.name,
                        "--partition", "0", "--offset", "99")
    assert code == 1


async def test_replay_publishes_the_same_bytes_once_and_dry_run_publishes_nothing(broker: dict[str, Any], capsys) -> None:
    bootstrap, original = broker["bootstrap"], broker["payments"][0]
    before = await ends(bootstrap, PAYMENTS_REQUESTED.name)

    code, doc = await cli(capsys, bootstrap, "replay", "--topic", PAYMENTS_REQUESTED_DLQ.name, "--all", "--dry-run")
    assert code == 0 and doc["summary"]["would_replay"] == 2 and doc["summary"]["replayed"] == 0
    assert [r["outcome"] for r in doc["results"]] == ["would replay", "would replay"]
    assert await ends(bootstrap, PAYMENTS_REQUESTED.name) == before
    assert await all_records(bootstrap, dlq.REPLAYS.name) == []  # nothing recorded, not even the topic

    code, doc = await cli(capsys, bootstrap, "replay", "--topic", PAYMENTS_REQUESTED_DLQ.name, "--partition", "0",
                          "--offset", "0")
    assert code == 0 and doc["summary"]["replayed"] == 1
    [result] = doc["results"]
    assert result["outcome"] == "replayed"
    after = await ends(bootstrap, PAYMENTS_REQUESTED.name)
    assert sum(after.values()) == sum(before.values()) + 1
    assert after[original.partition] == before[original.partition] + 1  # its key's partition, as the original
    assert result["to"] == f"{PAYMENTS_REQUESTED.name}/{original.partition}/{before[original.partition]}"

    replayed = [r for r in await read_topic(bootstrap, PAYMENTS_REQUESTED.name, expect=sum(after.values()))
                if r.partition == original.partition and r.offset == before[original.partition]]
    [again] = replayed
    assert again.value == NOT_UTF8_VALUE == original.value and again.key == NOT_UTF8_KEY == original.key
    assert list(again.headers) == [("correlation_id", b"c-bin"), ("causation_id", b"k-1"),
                                   ("dlq_replayed_from", f"{PAYMENTS_REQUESTED_DLQ.name}/0/0".encode())]

    # Again, in a process of its own: recorded, so nothing is published.
    proc = cli_process(bootstrap, "replay", "--topic", PAYMENTS_REQUESTED_DLQ.name, "--partition", "0", "--offset", "0")
    assert proc.returncode == 0, proc.stderr
    assert b"already replayed: payments.requested.dlq.v1/0/0" in proc.stdout and b"replayed=0" in proc.stdout
    assert await ends(bootstrap, PAYMENTS_REQUESTED.name) == after

    # --all now replays only the other one; a third run replays nothing.
    code, doc = await cli(capsys, bootstrap, "replay", "--topic", PAYMENTS_REQUESTED_DLQ.name, "--all")
    assert code == 0 and (doc["summary"]["replayed"], doc["summary"]["already_replayed"]) == (1, 1)
    assert sum((await ends(bootstrap, PAYMENTS_REQUESTED.name)).values()) == sum(after.values()) + 1
    code, doc = await cli(capsys, bootstrap, "replay", "--topic", PAYMENTS_REQUESTED_DLQ.name, "--all")
    assert code == 0 and (doc["summary"]["replayed"], doc["summary"]["already_replayed"]) == (0, 2)
    assert sum((await ends(bootstrap, PAYMENTS_REQUESTED.name)).values()) == sum(after.values()) + 1

    recorded = await read_topic(bootstrap, dlq.REPLAYS.name, expect=2)
    assert sorted(r.key for r in recorded) == [f"{PAYMENTS_REQUESTED_DLQ.name}/0/{i}".encode() for i in (0, 1)]
    entry = json.loads(recorded[0].value)
    assert entry["fingerprint"].startswith("sha256:") and entry["source_topic"] == PAYMENTS_REQUESTED.name

    code, doc = await cli(capsys, bootstrap, "show", "--topic", PAYMENTS_REQUESTED_DLQ.name, "--partition", "0",
                          "--offset", "0")
    assert doc["replayed"]["replayed_offset"] == before[original.partition]


async def test_a_dead_letter_without_a_project_source_topic_is_refused_and_nothing_published(broker: dict[str, Any], capsys) -> None:
    bootstrap = broker["bootstrap"]
    before = await ends(bootstrap, LEDGER_POSTED.name)

    code, doc = await cli(capsys, bootstrap, "replay", "--topic", LEDGER_POSTED_DLQ.name, "--all")
    assert code == 2
    refused = {r["dead_letter"]: r["reason"] for r in doc["results"] if r["outcome"] == "refused"}
    assert set(refused) == {f"{LEDGER_POSTED_DLQ.name}/0/1", f"{LEDGER_POSTED_DLQ.name}/0/2"}
    assert "no dlq_source_topic header" in refused[f"{LEDGER_POSTED_DLQ.name}/0/1"]
    assert "not a topic of shared/topics.py" in refused[f"{LEDGER_POSTED_DLQ.name}/0/2"]
    assert doc["summary"]["replayed"] == 0
    assert await ends(bootstrap, LEDGER_POSTED.name) == before  # not even the two good ones

    proc = cli_process(bootstrap, "replay", "--topic", LEDGER_POSTED_DLQ.name, "--partition", "0", "--offset", "1")
    assert proc.returncode == 2 and b"no dlq_source_topic header" in proc.stdout + proc.stderr
    assert await ends(bootstrap, LEDGER_POSTED.name) == before

    # The good ones around it go by range (only --kind invalid: the hand-made ones are "failed").
    code, doc = await cli(capsys, bootstrap, "replay", "--topic", LEDGER_POSTED_DLQ.name, "--partition", "0",
                          "--from-offset", "0", "--to-offset", "3", "--kind", "invalid")
    assert code == 0 and doc["summary"]["replayed"] == 2
    assert sum((await ends(bootstrap, LEDGER_POSTED.name)).values()) == sum(before.values()) + 2


async def test_nothing_selected_exits_1(broker: dict[str, Any], capsys) -> None:
    bootstrap = broker["bootstrap"]
    code, doc = await cli(capsys, bootstrap, "replay", "--topic", FEEDBACK_RECEIVED_DLQ.name, "--partition", "0",
                          "--offset", "5")
    assert code == 1 and doc["summary"]["selected"] == 0
    code, _ = await cli(capsys, bootstrap, "replay", "--topic", "feedback.submitted.dlq.v1", "--all")
    assert code == 1


async def test_dead_letters_and_replay_records_written_in_batches_are_all_seen(broker: dict[str, Any], capsys) -> None:
    """Many records per batch (the replay record is written so): every one is read back, so a second
    run skips them all. (The embedded broker's ListOffsets answers short of the end here.)"""
    bootstrap = broker["bootstrap"]
    before = len(await all_records(bootstrap, LEDGER_TRANSFER_REQUESTS.name))
    code, doc = await cli(capsys, bootstrap, "replay", "--topic", LEDGER_TRANSFER_REQUESTS_DLQ.name, "--all")
    assert code == 0 and (doc["summary"]["selected"], doc["summary"]["replayed"]) == (BATCHED, BATCHED)
    code, doc = await cli(capsys, bootstrap, "replay", "--topic", LEDGER_TRANSFER_REQUESTS_DLQ.name, "--all")
    assert code == 0 and (doc["summary"]["replayed"], doc["summary"]["already_replayed"]) == (0, BATCHED)
    replayed = await all_records(bootstrap, LEDGER_TRANSFER_REQUESTS.name)
    assert len(replayed) == before + BATCHED
    assert sorted(r.value for r in replayed) == sorted(b'{"n": %d}' % i for i in range(BATCHED))


async def test_lag_reporter_reads_a_real_group(broker: dict[str, Any]) -> None:
    """The lag gauge's sources against the broker: a group member's own view, and the group watched
    from outside (the embedded broker answers OffsetFetch only with the partitions named)."""
    bootstrap, group = broker["bootstrap"], f"lag-{uuid.uuid4().hex[:8]}"
    topic = FEEDBACK_RECEIVED.name
    member = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                              auto_offset_reset="earliest", fetch_max_wait_ms=20)  # as the services
    await member.start()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    watermarks = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await watermarks.start()
    try:
        got: list[Any] = []
        for _ in range(50):
            for batch in (await member.getmany(timeout_ms=200)).values():
                got.extend(batch)
            if got:
                break
        [rec] = got  # the one record of feedback.received.v1
        expect = {(group, topic, str(p)): 0 for p in range(FEEDBACK_RECEIVED.partitions)}
        expect[(group, topic, str(rec.partition))] = rec.offset + 1  # nothing committed: all of it
        inside = LagReporter([member], interval_s=1)
        outside = LagReporter([GroupOffsets(admin, watermarks, group, [topic])], interval_s=1)
        assert await inside.refresh() == expect
        assert await outside.refresh() == expect

        await member.commit({TopicPartition(topic, rec.partition): rec.offset + 1})
        expect[(group, topic, str(rec.partition))] = 0
        assert await inside.refresh() == expect
        assert await outside.refresh() == expect
        await inside.stop()
        await outside.stop()
    finally:
        await watermarks.stop()
        await admin.close()
        await member.stop()
