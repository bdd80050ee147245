"""Dead-letter re-drive for operators: list, inspect and replay dead letters (``python -m shared.dlq``).

Commands (all take ``--bootstrap HOST:PORT``, else ``KAFKA_BOOTSTRAP_SERVERS`` and the other
``KAFKA_*`` connection variables the services read, default 127.0.0.1:9092; ``--timeout S``,
default 60, at most 300; ``--json`` for machine-readable output)::

    python -m shared.dlq list                                   # every *.dlq.v1 topic: offsets and counts
    python -m shared.dlq list --topic payments.requested.dlq.v1 [--limit 100] [--partition P] [--from-offset O]
    python -m shared.dlq show --topic T --partition P --offset O [--raw]
    python -m shared.dlq replay --topic T --partition P --offset O [--dry-run]
    python -m shared.dlq replay --topic T --partition P --from-offset A --to-offset B [--kind K] [--dry-run]
    python -m shared.dlq replay --topic T --all [--kind K] [--dry-run]

Exit codes: 0 done (also: everything selected had already been replayed); 1 nothing found (no
dead letter at that position or in that range, no dead letters at all for ``list``); 2 refused
(not a dead-letter topic of shared/topics.py, or a selected dead letter cannot be replayed: then
nothing at all is published); 3 the broker could not be reached, refused a request or did not
answer within the timeout.

What a replay publishes. Each dead letter goes back to its source topic, named by its
``dlq_source_topic`` header (written by ``shared.consumer.dead_letter_headers``), with the same key
and exactly the same value bytes, the original headers (bytes and order as stored) minus every
``dlq_*`` one, plus ``dlq_replayed_from=<dlq topic>/<partition>/<offset>``. The default
partitioner places it, as it placed the original (the outbox and the services' producers use it),
so a keyed event lands on its key's partition and keeps co-partitioning. A dead letter is refused,
never guessed, when the header is missing, names no project topic, names a dead-letter topic, or
names a topic other than the one this dead-letter topic collects (``x.dlq.v1`` holds dead letters
of ``x.v1`` only). Dead letters of ``feedback.submitted.dlq.v1`` are refused as a whole: the
feedback intake redacts them before publishing (NHS numbers and free text removed, the JSON
re-serialised; services/feedback/consumer.py), so they are not the bytes the backend sent and a
replay would only be dead-lettered again; the backend must resend the submission. A topic read by
several groups (``feedback.received.v1``, ``ledger.posted.v1``: payments and funds) gets the replay
in every group; the dead letter does not say which group failed, and the others take it as the
duplicate it is for them (every consumer is idempotent on its ids).

The replay record (idempotency): the compacted topic ``ops.dlq-replays.v1`` (one partition), one
record per replayed dead letter, key ``<dlq topic>/<partition>/<offset>``, value a JSON document
(where the replay landed, when, by whom, and a fingerprint of the dead letter: SHA-256 of its key,
value and timestamp). Before publishing, the tool reads that topic to its end and skips every
selected dead letter it finds there. Why a topic and not a table:
- the tool needs nothing but the broker and the rights it already needs to read the dead letters
  and publish to the source topics: no service's database becomes a dependency of an operator
  tool, and no tool writes into a database another service owns;
- the record lives beside what it describes, with the same access control, and works the same on
  the embedded broker, docker-compose and production Kafka;
- compaction keeps exactly one record per replayed dead letter for as long as the cluster lives
  (dead-letter topics may have shorter retention; the record outlives them), so it stays small.
What it does not give is an atomic check-and-set: two operators replaying the same dead letter at
the same moment could both publish it. Consumers are idempotent on their ids, so that would be a
harmless duplicate; run one re-drive at a time. The record is written right after each replay is
acknowledged (acks=all): a crash between the two leaves a dead letter replayed but unrecorded, and
running the command again publishes it once more (again harmless, for the same reason), never the
reverse. A record whose fingerprint differs from the dead letter now at that position (the
dead-letter topic was deleted and created again, so offsets were reused) is refused, not skipped.

Producer: acks=all with idempotence on; where the broker cannot give the idempotent producer an id
(the embedded Tansu broker cannot) the tool says so on stderr and uses acks=all without it.

Limits: ``list`` shows at most ``--limit`` records (default 100, at most 10,000; page with
``--from-offset``); a replay publishes at most 10,000 dead letters per run (run it again for the
rest: what is done is skipped); the replay record is read up to 1,000,000 entries; everything
stops at ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import getpass
import hashlib
import json
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from shared.topics import ALL_TOPICS, FEEDBACK_SUBMITTED_DLQ, TopicSpec

DLQ_SUFFIX = ".dlq.v1"
REPLAYS = TopicSpec("ops.dlq-replays.v1", 1, "<dlq topic>/<partition>/<offset>")
REPLAYED_FROM_HEADER = "dlq_replayed_from"
LIST_LIMIT_DEFAULT = 100
LIST_LIMIT_MAX = 10_000
REPLAY_MAX = 10_000  # dead letters published per run
REPLAY_RECORD_MAX = 1_000_000  # entries of ops.dlq-replays.v1 read before refusing to go on
REFUSALS_SHOWN = 100
TIMEOUT_DEFAULT_S = 60.0
TIMEOUT_MAX_S = 300.0
FETCH_MAX_RECORDS = 500
FETCH_WAIT_MS = 100  # the broker's long poll, and getmany's wait: an empty fetch answers this fast
SEND_CHUNK = 500  # replays in flight before their records are written
REASON_COLUMN_CHARS = 100

OK, NOTHING_FOUND, REFUSED, BROKER_ERROR = 0, 1, 2, 3

# Dead-letter topics whose writer does not keep the original bytes (see the module docstring).
NOT_REPLAYABLE = {
    FEEDBACK_SUBMITTED_DLQ.name: (
        "its dead letters are redacted copies (NHS numbers and free text removed, JSON re-serialised by "
        "services/feedback/consumer.py), not the bytes the backend sent; ask the backend to resend the submission"
    ),
}


class Refused(Exception):
    """The command cannot be carried out as asked (exit 2)."""


class BrokerError(Exception):
    """The broker could not be reached or refused a request (exit 3)."""


# ---------------------------------------------------------------------------------------------
# The pure part: topics, headers, what a replay publishes, what a run decides
# ---------------------------------------------------------------------------------------------
def dead_letter_topics() -> list[str]:
    return [t.name for t in ALL_TOPICS if t.name.endswith(DLQ_SUFFIX)]


def source_topics() -> list[str]:
    return [t.name for t in ALL_TOPICS if not t.name.endswith(DLQ_SUFFIX)]


def source_of(dlq_topic: str) -> str:
    """The topic a dead-letter topic collects: ``x.dlq.v1`` -> ``x.v1``."""
    return dlq_topic[: -len(DLQ_SUFFIX)] + ".v1"


def check_dead_letter_topic(topic: str) -> None:
    if topic not in dead_letter_topics():
        raise Refused(f"{topic!r} is not a dead-letter topic of shared/topics.py "
                      f"(one of: {', '.join(dead_letter_topics())})")


def position(topic: str, partition: int, offset: int) -> str:
    """A dead letter's identity: ``<topic>/<partition>/<offset>`` (the replay record's key)."""
    return f"{topic}/{partition}/{offset}"


def text_or_base64(data: bytes | None) -> dict[str, Any]:
    """Bytes for display: UTF-8 text when they decode, else base64 (None stays None)."""
    if data is None:
        return {"encoding": None, "data": None, "bytes": 0}
    try:
        return {"encoding": "utf-8", "data": data.decode("utf-8"), "bytes": len(data)}
    except UnicodeDecodeError:
        return {"encoding": "base64", "data": base64.b64encode(data).decode("ascii"), "bytes": len(data)}


def shown_text(shown: dict[str, Any]) -> str:
    """One line for a :func:`text_or_base64` result: the text, ``base64:...`` or ``(null)``."""
    if shown["encoding"] is None:
        return "(null)"
    return shown["data"] if shown["encoding"] == "utf-8" else f"base64:{shown['data']}"


def header_text(headers: Sequence[tuple[str, bytes | None]], name: str) -> str | None:
    """The last value of header ``name`` as text (None: absent, null or not UTF-8)."""
    value = None
    for key, raw in headers or ():
        if key == name:
            value = raw
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def replay_headers(headers: Sequence[tuple[str, bytes | None]], replayed_from: str) -> list[tuple[str, bytes | None]]:
    """The dead letter's headers as stored, in order, minus every ``dlq_*`` one, plus ``dlq_replayed_from``."""
    kept = [(k, v) for k, v in headers or () if not k.startswith("dlq_")]
    kept.append((REPLAYED_FROM_HEADER, replayed_from.encode()))
    return kept


def refusal(dlq_topic: str, headers: Sequence[tuple[str, bytes | None]]) -> str | None:
    """Why this dead letter cannot be replayed, or None."""
    if dlq_topic in NOT_REPLAYABLE:
        return f"{dlq_topic} is not replayable: {NOT_REPLAYABLE[dlq_topic]}"
    source = header_text(headers, "dlq_source_topic")
    if not source:
        return "no dlq_source_topic header: where it came from is unknown, and it is not guessed"
    if source.endswith(DLQ_SUFFIX):
        return f"dlq_source_topic {source!r} is itself a dead-letter topic"
    if source not in source_topics():
        return f"dlq_source_topic {source!r} is not a topic of shared/topics.py"
    if source != source_of(dlq_topic):
        return f"dlq_source_topic {source!r} does not match {dlq_topic} (which collects {source_of(dlq_topic)})"
    return None


def fingerprint(key: bytes | None, value: bytes | None, timestamp_ms: int | None) -> str:
    """SHA-256 of a record's key, value and timestamp (None apart from empty)."""
    h = hashlib.sha256()
    for part in (key, value):
        if part is None:
            h.update(b"\x00")
        else:
            h.update(b"\x01" + len(part).to_bytes(8, "big") + part)
    h.update(str(timestamp_ms).encode())
    return "sha256:" + h.hexdigest()


def iso_ms(timestamp_ms: int | None) -> str | None:
    if timestamp_ms is None or timestamp_ms < 0:
        return None
    when = dt.datetime.fromtimestamp(timestamp_ms / 1000, tz=dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe(record: Any, replayed: dict[str, Any] | None = None) -> dict[str, Any]:
    """One dead letter for ``list``: where it is, why it is there, where it came from."""
    headers = record.headers or ()
    src_partition = header_text(headers, "dlq_source_partition")
    src_offset = header_text(headers, "dlq_source_offset")
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": iso_ms(record.timestamp),
        "dlq_kind": header_text(headers, "dlq_kind"),
        "dlq_reason": header_text(headers, "dlq_reason"),
        "source_topic": header_text(headers, "dlq_source_topic"),
        "source_partition": int(src_partition) if src_partition and src_partition.isdigit() else src_partition,
        "source_offset": int(src_offset) if src_offset and src_offset.isdigit() else src_offset,
        "key": text_or_base64(record.key),
        "value_bytes": len(record.value) if record.value is not None else None,
        "replayed": replayed,
    }


def replay_record_value(record: Any, source: str, replayed_partition: int, replayed_offset: int,
                        now: dt.datetime, operator: str) -> bytes:
    return json.dumps({
        "dlq_topic": record.topic,
        "dlq_partition": record.partition,
        "dlq_offset": record.offset,
        "dlq_timestamp_ms": record.timestamp,
        "fingerprint": fingerprint(record.key, record.value, record.timestamp),
        "source_topic": source,
        "replayed_partition": replayed_partition,
        "replayed_offset": replayed_offset,
        "replayed_at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "operator": operator,
    }, sort_keys=True).encode()


def parse_replay_record(key: bytes | None, value: bytes | None) -> tuple[str, dict[str, Any]] | None:
    """(position, record) of an ops.dlq-replays.v1 entry; None for a tombstone or junk (ignored:
    it is our own topic, and a skipped junk entry can only cause a harmless republish)."""
    if key is None or value is None:
        return None
    try:
        pos = key.decode("utf-8")
        doc = json.loads(value)
    except (UnicodeDecodeError, ValueError):
        return None
    return (pos, doc) if isinstance(doc, dict) else None


@dataclass
class Plan:
    """What a replay run decided for the dead letters it selected."""

    publish: list[Any] = field(default_factory=list)  # records, offset order per partition
    # already replayed: (record, its entry in ops.dlq-replays.v1), the first REFUSALS_SHOWN
    skipped: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)
    refused: list[tuple[Any, str]] = field(default_factory=list)  # first REFUSALS_SHOWN: (record, why)
    refused_count: int = 0
    skipped_count: int = 0
    left_over: int = 0  # replayable, beyond REPLAY_MAX this run
    selected: int = 0


def decide(plan: Plan, record: Any, replayed: dict[str, dict[str, Any]]) -> None:
    """Put one selected dead letter into ``plan``: refuse, skip (already replayed) or publish."""
    plan.selected += 1
    why = refusal(record.topic, record.headers or ())
    done = replayed.get(position(record.topic, record.partition, record.offset))
    if why is None and done is not None:
        if done.get("fingerprint") == fingerprint(record.key, record.value, record.timestamp):
            plan.skipped_count += 1
            if len(plan.skipped) < REFUSALS_SHOWN:
                plan.skipped.append((record, done))
            return
        why = ("ops.dlq-replays.v1 records a different dead letter at this position (was the topic deleted and "
               "created again?); look at both before replaying by hand")
    if why is not None:
        plan.refused_count += 1
        if len(plan.refused) < REFUSALS_SHOWN:
            plan.refused.append((record, why))
        return
    if len(plan.publish) < REPLAY_MAX:
        plan.publish.append(record)
    else:
        plan.left_over += 1


# ---------------------------------------------------------------------------------------------
# The broker
# ---------------------------------------------------------------------------------------------
def connection_options(bootstrap: str | None) -> tuple[dict[str, Any], int]:
    """aiokafka connection options as the services build them (KAFKA_* variables, TLS, SASL), and
    the replication factor for the replay record topic."""
    from shared.kafka import client_options
    from shared.settings import ServiceSettings

    overrides: dict[str, Any] = {"service_name": "dlq-tool"}
    if bootstrap:
        overrides["kafka_bootstrap_servers"] = bootstrap
    settings = ServiceSettings(**overrides)
    return client_options(settings), settings.kafka_replication_factor


@contextlib.asynccontextmanager
async def reader(opts: dict[str, Any]) -> AsyncIterator[Any]:
    """A group-less consumer (manual assign and seek; commits nothing).

    Its metadata covers every topic only until the first ``assign`` (aiokafka then narrows it to the
    assigned topics), so a command reads every :func:`partition_offsets` it needs first."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(**opts, group_id=None, enable_auto_commit=False, auto_offset_reset="none",
                                fetch_max_wait_ms=FETCH_WAIT_MS, request_timeout_ms=15_000, client_id="dlq-tool")
    try:
        await consumer.start()
        # Let the consumer's own start-up task run once: aiokafka's stop() re-raises the
        # CancelledError of a task cancelled before it ever ran (a stop right after start).
        await asyncio.sleep(0)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await consumer.stop()
        raise BrokerError(f"cannot reach the broker at {opts.get('bootstrap_servers')}: {exc}") from exc
    try:
        yield consumer
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


async def partition_offsets(consumer: Any, topic: str) -> dict[int, tuple[int, int]] | None:
    """{partition: (earliest, latest)} of a topic; None if the broker does not have it. Call before
    any :func:`records` (see :func:`reader`)."""
    from aiokafka import TopicPartition

    parts = consumer.partitions_for_topic(topic)
    if not parts:
        return None
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    low = await consumer.beginning_offsets(tps)
    high = await consumer.end_offsets(tps)
    return {tp.partition: (low[tp], high[tp]) for tp in tps}


async def confirm_latest(consumer: Any, topic: str, offsets: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """``offsets`` with each non-empty partition's latest offset checked against the high watermark
    of a fetch response, which is exact. (The embedded Tansu answers ListOffsets with the last
    record batch's base offset + 1, short of the end by all but one record of that batch.) Assigns
    partitions: call after every :func:`partition_offsets` the command needs."""
    from aiokafka import TopicPartition

    out: dict[int, tuple[int, int]] = {}
    for partition, (low, high) in sorted(offsets.items()):
        if high > low:
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, high - 1)
            await consumer.getmany(tp, timeout_ms=FETCH_WAIT_MS, max_records=1)
            high = max(high, consumer.highwater(tp) or high)
        out[partition] = (low, high)
    return out


async def records(consumer: Any, topic: str, partition: int, start: int, stop: int | None = None) -> AsyncIterator[Any]:
    """The records of one partition with ``start <= offset < stop`` (None: to the end), in offset
    order, gaps skipped. The end is the high watermark the fetch responses carry (exact; see
    :func:`confirm_latest` for why not ListOffsets), so every record written before the read is seen."""
    from aiokafka import TopicPartition
    from aiokafka.errors import OffsetOutOfRangeError

    tp = TopicPartition(topic, partition)
    consumer.assign([tp])  # a fresh assignment: no high watermark until the first fetch answers
    consumer.seek(tp, start)
    while True:
        pos = await consumer.position(tp)
        high = consumer.highwater(tp)
        if (stop is not None and pos >= stop) or (high is not None and pos >= high):
            return
        try:
            batch = await consumer.getmany(tp, timeout_ms=FETCH_WAIT_MS, max_records=FETCH_MAX_RECORDS)
        except OffsetOutOfRangeError:  # past the end or deleted (auto_offset_reset="none": never reset)
            return
        for record in batch.get(tp, ()):
            if stop is not None and record.offset >= stop:
                return
            if record.offset >= start:
                yield record


async def read_replays(consumer: Any, offsets: dict[int, tuple[int, int]] | None) -> dict[str, dict[str, Any]]:
    """Everything ops.dlq-replays.v1 holds (``offsets``: its :func:`partition_offsets`), by position
    (the last entry of a key wins, as compaction would keep it). Empty if the topic does not exist yet."""
    out: dict[str, dict[str, Any]] = {}
    seen = 0
    for partition, (low, high) in sorted((offsets or {}).items()):
        if high <= low:
            continue  # empty (ListOffsets may fall short of the end, never says non-empty is empty)
        async for rec in records(consumer, REPLAYS.name, partition, low):
            seen += 1
            if seen > REPLAY_RECORD_MAX:
                raise Refused(f"{REPLAYS.name} holds more than {REPLAY_RECORD_MAX:,} entries: is it compacted?")
            parsed = parse_replay_record(rec.key, rec.value)
            if parsed is not None:
                out[parsed[0]] = parsed[1]
    return out


async def ensure_replays_topic(opts: dict[str, Any], replication_factor: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**opts, request_timeout_ms=15_000, client_id="dlq-tool")
    try:
        await admin.start()
        if REPLAYS.name in set(await admin.list_topics()):
            return
        with contextlib.suppress(TopicAlreadyExistsError):  # another run created it first
            await admin.create_topics([NewTopic(REPLAYS.name, REPLAYS.partitions, replication_factor,
                                                topic_configs={"cleanup.policy": "compact"})])
    except Exception as exc:
        raise BrokerError(f"cannot create {REPLAYS.name} ({exc}); provision it (1 partition, "
                          "cleanup.policy=compact) and run again") from exc
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def start_producer(opts: dict[str, Any], err: TextIO) -> Any:
    """acks=all with idempotence; without it (and said so) where the broker cannot give a producer id."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    common = {**opts, "acks": "all", "request_timeout_ms": 15_000, "linger_ms": 5, "client_id": "dlq-tool"}
    producer = AIOKafkaProducer(**common, enable_idempotence=True)
    try:
        await producer.start()  # asks for the producer id before anything is sent
        return producer
    except KafkaError as exc:
        with contextlib.suppress(Exception):
            await producer.stop()
        first = exc
    print(f"note: the broker refused an idempotent producer ({type(first).__name__}); publishing with acks=all "
          "without idempotence (the replay record still keeps each dead letter to one replay)", file=err)
    producer = AIOKafkaProducer(**common)
    try:
        await producer.start()
    except Exception as exc:
        with contextlib.suppress(Exception):
            await producer.stop()
        raise BrokerError(f"cannot start a producer: {exc}") from exc
    return producer


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------
@dataclass
class Io:
    out: TextIO
    err: TextIO
    json: bool

    def emit(self, doc: Any) -> None:
        print(json.dumps(doc, ensure_ascii=False, sort_keys=True), file=self.out)


async def cmd_list(args: argparse.Namespace, opts: dict[str, Any], io: Io) -> int:
    if args.topic is None:
        return await list_topics(opts, io)
    check_dead_letter_topic(args.topic)
    limit = args.limit
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise Refused(f"--limit must be within 1-{LIST_LIMIT_MAX:,}, not {limit}")
    async with reader(opts) as consumer:
        offsets = await partition_offsets(consumer, args.topic)
        if offsets is None:
            print(f"{args.topic}: not on the broker (the services create it when they start)", file=io.err)
            return NOTHING_FOUND
        if args.partition is not None and args.partition not in offsets:
            raise Refused(f"{args.topic} has no partition {args.partition} (partitions: {sorted(offsets)})")
        replay_offsets = await partition_offsets(consumer, REPLAYS.name)
        offsets = await confirm_latest(consumer, args.topic, offsets)
        replays = await read_replays(consumer, replay_offsets)
        rows: list[dict[str, Any]] = []
        more: dict[int, int] = {}  # partition -> first offset not shown
        for partition, (low, high) in sorted(offsets.items()):
            if args.partition is not None and partition != args.partition:
                continue
            start = max(low, args.from_offset or 0)
            if len(rows) >= limit:
                if start < high:
                    more[partition] = start
                continue
            async for rec in records(consumer, args.topic, partition, start):
                if len(rows) >= limit:
                    more[partition] = rec.offset
                    break
                rows.append(describe(rec, replays.get(position(rec.topic, rec.partition, rec.offset))))
    if io.json:
        io.emit({"topic": args.topic, "records": rows, "more_from_offset": {str(p): o for p, o in more.items()}})
    else:
        print(f"{'partition':>9} {'offset':>8}  {'timestamp':<24} {'kind':<9} {'source':<36} {'key':<28} "
              f"{'replayed to':<34} reason", file=io.out)
        for row in rows:
            src = f"{row['source_topic']}/{row['source_partition']}/{row['source_offset']}"
            key = shown_text(row["key"])
            to = "-"
            if row["replayed"]:
                r = row["replayed"]
                to = f"{r.get('source_topic')}/{r.get('replayed_partition')}/{r.get('replayed_offset')}"
            reason = (row["dlq_reason"] or "")[:REASON_COLUMN_CHARS]
            print(f"{row['partition']:>9} {row['offset']:>8}  {row['timestamp'] or '-':<24} "
                  f"{row['dlq_kind'] or '-':<9} {src:<36} {key:<28} {to:<34} {reason}", file=io.out)
        for partition, nxt in sorted(more.items()):
            print(f"(more in partition {partition}: --partition {partition} --from-offset {nxt})", file=io.out)
    return OK if rows else NOTHING_FOUND


async def list_topics(opts: dict[str, Any], io: Io) -> int:
    rows: list[dict[str, Any]] = []
    async with reader(opts) as consumer:
        found = {topic: await partition_offsets(consumer, topic) for topic in dead_letter_topics()}
        for topic, offsets in found.items():
            if offsets is not None:
                offsets = await confirm_latest(consumer, topic, offsets)
            if offsets is None:
                rows.append({"topic": topic, "exists": False, "partitions": [], "records": 0})
                continue
            parts = [{"partition": p, "earliest": lo, "latest": hi, "records": hi - lo}
                     for p, (lo, hi) in sorted(offsets.items())]
            rows.append({"topic": topic, "exists": True, "partitions": parts,
                         "records": sum(p["records"] for p in parts)})
    total = sum(r["records"] for r in rows)
    if io.json:
        io.emit({"topics": rows, "records": total})
    else:
        print(f"{'topic':<34} {'partition':>9} {'earliest':>10} {'latest':>10} {'records':>9}", file=io.out)
        for row in rows:
            if not row["exists"]:
                print(f"{row['topic']:<34} {'-':>9} {'-':>10} {'-':>10} {'-':>9}  (not on the broker yet)", file=io.out)
            for p in row["partitions"]:
                print(f"{row['topic']:<34} {p['partition']:>9} {p['earliest']:>10} {p['latest']:>10} {p['records']:>9}",
                      file=io.out)
        print(f"dead letters: {total}", file=io.out)
    return OK if total else NOTHING_FOUND


async def fetch_one(consumer: Any, offsets: dict[int, tuple[int, int]] | None, topic: str, partition: int,
                    offset: int) -> Any | None:
    if offsets is None or partition not in offsets:
        return None
    low, _ = offsets[partition]
    if offset < low:
        return None
    async for rec in records(consumer, topic, partition, offset, offset + 1):
        return rec if rec.offset == offset else None
    return None


async def cmd_show(args: argparse.Namespace, opts: dict[str, Any], io: Io) -> int:
    check_dead_letter_topic(args.topic)
    async with reader(opts) as consumer:
        offsets = await partition_offsets(consumer, args.topic)
        replay_offsets = await partition_offsets(consumer, REPLAYS.name)
        rec = await fetch_one(consumer, offsets, args.topic, args.partition, args.offset)
        if rec is None:
            print(f"no dead letter at {position(args.topic, args.partition, args.offset)}", file=io.err)
            return NOTHING_FOUND
        replayed = (await read_replays(consumer, replay_offsets)).get(position(rec.topic, rec.partition, rec.offset))
    if args.raw:
        if rec.value is not None:
            io.out.flush()
            io.out.buffer.write(rec.value)
            io.out.buffer.flush()
        return OK
    doc = {
        "topic": rec.topic, "partition": rec.partition, "offset": rec.offset,
        "timestamp": iso_ms(rec.timestamp), "timestamp_ms": rec.timestamp,
        "timestamp_type": "log append" if rec.timestamp_type == 1 else "create",
        "key": text_or_base64(rec.key),
        "headers": [{"name": k, **text_or_base64(v)} for k, v in rec.headers or ()],
        "value": text_or_base64(rec.value),
        "fingerprint": fingerprint(rec.key, rec.value, rec.timestamp),
        "replayed": replayed,
        "replayable": refusal(rec.topic, rec.headers or ()) or "yes",
    }
    if io.json:
        io.emit(doc)
        return OK
    p = lambda s: print(s, file=io.out)  # noqa: E731
    p(f"dead letter {position(rec.topic, rec.partition, rec.offset)}")
    p(f"timestamp: {doc['timestamp']} ({doc['timestamp_type']}, {rec.timestamp} ms)")
    p(f"key ({doc['key']['encoding'] or 'null'}, {doc['key']['bytes']} bytes): {shown_text(doc['key'])}")
    p("headers:")
    for h in doc["headers"]:
        p(f"  {h['name']}: {shown_text(h)}")
    p(f"replayable: {doc['replayable']}")
    if replayed:
        p(f"replayed: to {replayed.get('source_topic')}/{replayed.get('replayed_partition')}/"
          f"{replayed.get('replayed_offset')} at {replayed.get('replayed_at')} by {replayed.get('operator')}")
    else:
        p("replayed: no")
    p(f"fingerprint: {doc['fingerprint']}")
    p(f"value ({doc['value']['encoding'] or 'null'}, {doc['value']['bytes']} bytes; --raw writes the bytes):")
    if rec.value is not None:
        p(doc["value"]["data"])
    return OK


async def select(consumer: Any, args: argparse.Namespace, offsets: dict[int, tuple[int, int]] | None,
                 replays: dict[str, dict[str, Any]]) -> Plan:
    plan = Plan()
    if offsets is None:
        return plan
    ranges: list[tuple[int, int, int | None]]
    if args.all:
        ranges = [(p, lo, None) for p, (lo, hi) in sorted(offsets.items()) if hi > lo]
    else:
        if args.partition not in offsets:
            return plan
        lo, _ = offsets[args.partition]
        first = args.offset if args.offset is not None else args.from_offset
        last = args.offset if args.offset is not None else args.to_offset
        ranges = [(args.partition, max(lo, first), last + 1)]
    for partition, start, stop in ranges:
        async for rec in records(consumer, args.topic, partition, start, stop):
            if args.kind and header_text(rec.headers or (), "dlq_kind") != args.kind:
                continue
            decide(plan, rec, replays)
    return plan


def _where(rec: Any) -> str:
    return position(rec.topic, rec.partition, rec.offset)


async def cmd_replay(args: argparse.Namespace, opts: dict[str, Any], replication_factor: int, io: Io) -> int:
    check_dead_letter_topic(args.topic)
    if args.all and args.partition is not None:
        raise Refused("--all takes every partition: leave out --partition")
    if not args.all:
        if args.partition is None:
            raise Refused("--partition is required with --offset or --from-offset/--to-offset")
        if args.offset is None and (args.from_offset is None or args.to_offset is None):
            raise Refused("give --offset O, or --from-offset A --to-offset B, or --all")
        if args.offset is None and not 0 <= args.from_offset <= args.to_offset:
            raise Refused(f"--from-offset {args.from_offset} --to-offset {args.to_offset}: not a range")
    async with reader(opts) as consumer:
        offsets = await partition_offsets(consumer, args.topic)
        replays = await read_replays(consumer, await partition_offsets(consumer, REPLAYS.name))  # before publishing
        plan = await select(consumer, args, offsets, replays)
    results: list[dict[str, Any]] = []
    for rec, why in plan.refused:
        results.append({"dead_letter": _where(rec), "outcome": "refused", "reason": why})
    for rec, done in plan.skipped:
        results.append({"dead_letter": _where(rec), "outcome": "already replayed", "replayed": done})
    summary = {"selected": plan.selected, "refused": plan.refused_count, "already_replayed": plan.skipped_count,
               "replayed": 0, "would_replay": 0, "left_for_next_run": plan.left_over, "dry_run": bool(args.dry_run)}

    def finish(code: int) -> int:
        if io.json:
            io.emit({"results": results, "summary": summary})
        else:
            for r in results:
                line = f"{r['outcome']}: {r['dead_letter']}"
                if "reason" in r:
                    line += f": {r['reason']}"
                if "to" in r:
                    line += f" -> {r['to']}"
                if r.get("replayed"):
                    d = r["replayed"]
                    line += (f" (to {d.get('source_topic')}/{d.get('replayed_partition')}/{d.get('replayed_offset')} "
                             f"at {d.get('replayed_at')})")
                print(line, file=io.out)
            print(" ".join(f"{k}={v}" for k, v in summary.items()), file=io.out)
            if plan.left_over:
                print(f"{plan.left_over} more not replayed in this run (at most {REPLAY_MAX:,}): run the same command "
                      "again", file=io.out)
        return code

    if plan.selected == 0:
        print(f"no dead letter selected in {args.topic}", file=io.err)
        return finish(NOTHING_FOUND)
    if plan.refused_count:
        print(f"refused: {plan.refused_count} of the selected dead letters cannot be replayed; nothing was published",
              file=io.err)
        return finish(REFUSED)
    if args.dry_run:
        for rec in plan.publish:
            results.append({"dead_letter": _where(rec), "outcome": "would replay",
                            "to": header_text(rec.headers, "dlq_source_topic"),
                            "headers": [k for k, _ in replay_headers(rec.headers, _where(rec))]})
        summary["would_replay"] = len(plan.publish)
        return finish(OK)
    if plan.publish:
        await ensure_replays_topic(opts, replication_factor)
        producer = await start_producer(opts, io.err)
        operator = f"{_user()}@{socket.gethostname()}"
        try:
            failure = await publish(producer, plan.publish, operator, results)
        finally:
            with contextlib.suppress(Exception):
                await producer.stop()
        summary["replayed"] = sum(1 for r in results if r["outcome"] == "replayed")
        if failure is not None:
            print(f"the broker failed a replay ({failure}); what was published is recorded: run the same command again",
                  file=io.err)
            return finish(BROKER_ERROR)
    return finish(OK)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


async def publish(producer: Any, chosen: Sequence[Any], operator: str, results: list[dict[str, Any]]) -> str | None:
    """Replay ``chosen`` in chunks: the replays (awaited, acks=all), then a replay record for each that
    was acknowledged. The first failure (or None)."""
    for i in range(0, len(chosen), SEND_CHUNK):
        failure: str | None = None
        sent: list[tuple[Any, Any]] = []
        for rec in chosen[i:i + SEND_CHUNK]:
            try:
                sent.append((rec, await producer.send(header_text(rec.headers, "dlq_source_topic"), rec.value,
                                                      key=rec.key, headers=replay_headers(rec.headers, _where(rec)))))
            except Exception as exc:  # not even queued (no metadata in time, too large): stop here
                failure = f"{type(exc).__name__}: {exc}"
                results.append({"dead_letter": _where(rec), "outcome": "failed", "reason": str(exc)})
                break
        acks = await asyncio.gather(*(fut for _, fut in sent), return_exceptions=True)
        now = dt.datetime.now(dt.UTC)
        record_futures = []
        for (rec, _), ack in zip(sent, acks, strict=True):
            if isinstance(ack, BaseException):
                failure = failure or f"{type(ack).__name__}: {ack}"
                results.append({"dead_letter": _where(rec), "outcome": "failed", "reason": str(ack)})
                continue
            source = header_text(rec.headers, "dlq_source_topic")
            record_futures.append(await producer.send(
                REPLAYS.name, replay_record_value(rec, source, ack.partition, ack.offset, now, operator),
                key=_where(rec).encode()))
            results.append({"dead_letter": _where(rec), "outcome": "replayed",
                            "to": f"{source}/{ack.partition}/{ack.offset}"})
        for ack in await asyncio.gather(*record_futures, return_exceptions=True):
            if isinstance(ack, BaseException):
                failure = failure or f"replay record: {type(ack).__name__}: {ack}"
        if failure is not None:
            return failure
    return None


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bootstrap",
                        help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092)")
    common.add_argument("--timeout", type=float, default=TIMEOUT_DEFAULT_S,
                        help=f"give up after this many seconds (default {TIMEOUT_DEFAULT_S:.0f}, "
                             f"at most {TIMEOUT_MAX_S:.0f})")
    common.add_argument("--json", action="store_true", help="one JSON document on stdout")
    top = argparse.ArgumentParser(prog="python -m shared.dlq", description="List, inspect and replay dead letters.",
                                  epilog="exit codes: 0 done, 1 nothing found, 2 refused, "
                                         "3 broker unreachable or timed out")
    sub = top.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", parents=[common], help="dead-letter topics and counts, or one topic's dead letters")
    ls.add_argument("--topic", help="a dead-letter topic (*.dlq.v1): list its dead letters")
    ls.add_argument("--limit", type=int, default=LIST_LIMIT_DEFAULT,
                    help=f"at most this many (default {LIST_LIMIT_DEFAULT}, at most {LIST_LIMIT_MAX:,})")
    ls.add_argument("--partition", type=int, help="only this partition")
    ls.add_argument("--from-offset", type=int, help="start at this offset (paging)")

    sh = sub.add_parser("show", parents=[common], help="one dead letter in full")
    sh.add_argument("--topic", required=True)
    sh.add_argument("--partition", type=int, required=True)
    sh.add_argument("--offset", type=int, required=True)
    sh.add_argument("--raw", action="store_true", help="write the value's bytes to stdout, unchanged, and nothing else")

    rp = sub.add_parser("replay", parents=[common], help="republish dead letters to their source topic, once each")
    rp.add_argument("--topic", required=True)
    rp.add_argument("--partition", type=int)
    which = rp.add_mutually_exclusive_group(required=True)
    which.add_argument("--offset", type=int, help="one dead letter (with --partition)")
    which.add_argument("--from-offset", type=int,
                       help="first offset of a range, inclusive (with --partition, --to-offset)")
    which.add_argument("--all", action="store_true", help="every dead letter of the topic, every partition")
    rp.add_argument("--to-offset", type=int, help="last offset of the range, inclusive")
    rp.add_argument("--kind", choices=("invalid", "rejected", "failed"), help="only dead letters of this dlq_kind")
    rp.add_argument("--dry-run", action="store_true", help="say what would be published; publish and record nothing")
    return top


async def run(argv: Sequence[str] | None, out: TextIO, err: TextIO) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors are refusals, --help is fine
        return OK if exc.code in (0, None) else REFUSED
    io = Io(out, err, args.json)
    if not 0 < args.timeout <= TIMEOUT_MAX_S:
        print(f"refused: --timeout must be within 0-{TIMEOUT_MAX_S:.0f} s", file=err)
        return REFUSED
    negative = [f"--{name.replace('_', '-')}" for name in ("partition", "offset", "from_offset", "to_offset")
                if (getattr(args, name, None) or 0) < 0]
    if negative:
        print(f"refused: {', '.join(negative)} must not be negative", file=err)
        return REFUSED
    if args.command == "replay" and args.to_offset is not None and args.from_offset is None:
        print("refused: --to-offset goes with --from-offset", file=err)
        return REFUSED
    opts, replication_factor = connection_options(args.bootstrap)
    if args.command == "list":
        work = cmd_list(args, opts, io)
    elif args.command == "show":
        work = cmd_show(args, opts, io)
    else:
        work = cmd_replay(args, opts, replication_factor, io)
    try:
        return await asyncio.wait_for(work, timeout=args.timeout)
    except Refused as exc:
        print(f"refused: {exc}", file=err)
        return REFUSED
    except BrokerError as exc:
        print(f"error: {exc}", file=err)
        return BROKER_ERROR
    except TimeoutError:
        print(f"error: no answer from the broker within {args.timeout:.0f} s (a replay cut short is safe to run "
              "again: what was published is recorded)", file=err)
        return BROKER_ERROR
    except Exception as exc:  # aiokafka's errors: the broker refused a request
        from aiokafka.errors import KafkaError

        if isinstance(exc, KafkaError):
            print(f"error: the broker refused: {type(exc).__name__}: {exc}", file=err)
            return BROKER_ERROR
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (``python -m shared.dlq``); returns the exit code."""
    return asyncio.run(run(argv, sys.stdout, sys.stderr))


if __name__ == "__main__":
    sys.exit(main())
