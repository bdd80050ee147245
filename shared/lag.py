"""Consumer lag per partition as a Prometheus gauge: ``kafka_consumer_lag_records{group,topic,partition}``.

Lag here is the partition's high watermark minus the group's **committed** offset: the records a
restart of the group would have to read again or for the first time. Offsets are committed only
after a handler's transaction commits (shared/consumer.py), so this is the work not yet done for
certain (a consumer's in-memory position runs ahead of the commit while a batch is in flight, so
lag measured from it would hide a batch that is stuck). Every service runs one reporter over its
subscribers (shared/service.py). A partition the
group has never committed counts from its log start, where ``auto_offset_reset="earliest"`` begins.

A background task refreshes the gauge every ``interval_s`` (1-300 s, each round bounded by a
timeout) from one or more sources:

- an aiokafka consumer that is a member of its group (its assigned partitions; the committed
  offsets and high watermarks are asked of the broker, never the consumer's cache), or a
  zero-argument callable returning such consumers (re-read every round, so consumers that come
  and go are followed), e.g. ``lambda: [s.consumer for s in broker.subscribers]``;
- :class:`GroupOffsets`: a group watched from outside (an admin client for the committed offsets,
  a group-less consumer for the watermarks), for every partition of the given topics.

Use::

    reporter = start_lag_reporter(lambda: [s.consumer for s in runtime.broker.subscribers])
    ...
    await stop_lag_reporter(reporter)

A group member's offset requests share its connection to the partition leader, so each waits
behind the consumer's long-poll fetch (``fetch_max_wait_ms``: 20 ms in the services, aiokafka's
default 500 ms): a round costs about two of those per consumer, bounded by ``ROUND_TIMEOUT_S``.

Label sets this reporter stops seeing (a partition revoked in a rebalance) are removed, so a
partition is not shown with the lag it had when it moved away. A partition reported by two
sources in the same round keeps the larger figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from prometheus_client import Gauge

log = logging.getLogger(__name__)

LAG = Gauge("kafka_consumer_lag_records", "High watermark minus the group's committed offset, per partition",
            ["group", "topic", "partition"])

DEFAULT_INTERVAL_S = 15.0
MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 300.0
ROUND_TIMEOUT_S = 10.0  # one refresh of one source
MAX_PARTITIONS = 10_000  # per source and round; more is a misconfiguration, not a workload

Labels = tuple[str, str, str]  # (group, topic, partition)


@dataclass(frozen=True)
class PartitionOffsets:
    """What the broker says about one partition for one group."""

    group: str
    topic: str
    partition: int
    high: int | None  # high watermark (end offset); None: unknown
    committed: int | None  # the group's committed offset; None: never committed
    low: int | None = None  # log start offset, needed only when nothing is committed


def lag_records(high: int | None, committed: int | None, low: int | None = None) -> int | None:
    """``high - committed``, never below zero; from ``low`` (else 0) when nothing is committed;
    None when the high watermark is unknown (nothing to report)."""
    if high is None:
        return None
    start = committed if committed is not None else (low if low is not None else 0)
    return max(0, high - start)


def lag_samples(rows: Iterable[PartitionOffsets]) -> dict[Labels, int]:
    """The gauge's values by label set; a partition seen twice keeps the larger lag."""
    out: dict[Labels, int] = {}
    for row in rows:
        lag = lag_records(row.high, row.committed, row.low)
        if lag is None:
            continue
        labels = (row.group, row.topic, str(row.partition))
        out[labels] = max(lag, out.get(labels, 0))
    return out


async def _low_offsets(consumer: Any, committed: Mapping[TopicPartition, int | None]) -> dict[TopicPartition, int]:
    never = [tp for tp, off in committed.items() if off is None]
    return dict(await consumer.beginning_offsets(never)) if never else {}


def _capped(tps: Sequence[TopicPartition], what: str) -> list[TopicPartition]:
    tps = sorted(tps)
    if len(tps) > MAX_PARTITIONS:
        log.warning("lag: %s has %d partitions; reporting the first %d", what, len(tps), MAX_PARTITIONS)
    return tps[:MAX_PARTITIONS]


async def consumer_offsets(consumer: Any, group: str | None = None) -> list[PartitionOffsets]:
    """Offsets of a group member's assigned partitions (empty if it has no group or no assignment)."""
    group = group or getattr(consumer, "_group_id", None)
    if not group:
        return []
    tps = _capped(list(consumer.assignment()), f"consumer of group {group}")
    if not tps:
        return []
    high = dict(await consumer.end_offsets(tps))
    for tp in tps:  # its own fetches' high watermark, where newer (ListOffsets may answer short: shared/dlq.py)
        fetched = consumer.highwater(tp)
        if fetched is not None and fetched > high.get(tp, -1):
            high[tp] = fetched
    committed = dict(zip(tps, await asyncio.gather(*(consumer.committed(tp) for tp in tps)), strict=True))
    low = await _low_offsets(consumer, committed)
    return [PartitionOffsets(group, tp.topic, tp.partition, high.get(tp), committed[tp], low.get(tp)) for tp in tps]


@dataclass
class GroupOffsets:
    """A consumer group watched from outside: every partition of ``topics``.

    ``admin``: a started AIOKafkaAdminClient (committed offsets; partitions are always named,
    which the embedded broker needs). ``consumer``: a started AIOKafkaConsumer without a group
    (partitions and watermarks). The caller owns and stops both."""

    admin: Any
    consumer: Any
    group: str
    topics: Sequence[str]

    async def read(self) -> list[PartitionOffsets]:
        await self.consumer.topics()  # refresh metadata: partitions added since are seen
        tps: list[TopicPartition] = []
        for topic in self.topics:
            tps.extend(TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or ()))
        tps = _capped(tps, f"group {self.group}")
        if not tps:
            return []
        high = await self.consumer.end_offsets(tps)
        found = await self.admin.list_consumer_group_offsets(self.group, partitions=tps)
        committed: dict[TopicPartition, int | None] = {}
        for tp in tps:
            meta = found.get(tp)
            committed[tp] = meta.offset if meta is not None and meta.offset >= 0 else None
        low = await _low_offsets(self.consumer, committed)
        return [PartitionOffsets(self.group, tp.topic, tp.partition, high.get(tp), committed[tp], low.get(tp))
                for tp in tps]


Source = Any  # an aiokafka consumer, a callable returning consumers, or a GroupOffsets


class LagReporter:
    """The background task; make one with :func:`start_lag_reporter`."""

    def __init__(self, sources: Sequence[Source], interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
            raise ValueError(f"interval_s must be within {MIN_INTERVAL_S}-{MAX_INTERVAL_S} s, not {interval_s}")
        if not sources:
            raise ValueError("a lag reporter needs at least one source")
        self.sources = list(sources)
        self.interval_s = interval_s
        self.round_timeout_s = ROUND_TIMEOUT_S
        self._exported: set[Labels] = set()
        self._task: asyncio.Task[None] | None = None

    def _readers(self) -> list[tuple[str, Callable[[], Any]]]:
        readers: list[tuple[str, Callable[[], Any]]] = []
        for source in self.sources:
            if isinstance(source, GroupOffsets):
                readers.append((f"group {source.group}", source.read))
            elif hasattr(source, "assignment"):
                readers.append(("consumer", lambda c=source: consumer_offsets(c)))
            elif callable(source):
                for consumer in source() or ():
                    if consumer is not None:
                        readers.append(("consumer", lambda c=consumer: consumer_offsets(c)))
            else:
                raise TypeError(f"not a lag source: {source!r}")
        return readers

    async def refresh(self) -> dict[Labels, int]:
        """One round: read every source (each bounded by the round timeout), set the gauge, remove
        label sets no longer seen. A source that fails this round keeps its previous values."""
        rows: list[PartitionOffsets] = []
        failed = False
        for what, read in self._readers():
            try:
                rows.extend(await asyncio.wait_for(read(), timeout=self.round_timeout_s))
            except Exception as exc:  # broker away, rebalancing, stopping: next round
                failed = True
                log.debug("lag: %s skipped this round: %s", what, exc)
        samples = lag_samples(rows)
        for labels, value in samples.items():
            LAG.labels(*labels).set(value)
        if not failed:  # only forget what every source answered without
            for labels in self._exported - samples.keys():
                with contextlib.suppress(KeyError):
                    LAG.remove(*labels)
            self._exported = set(samples)
        else:
            self._exported |= set(samples)
        return samples

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval_s)

    def start(self) -> LagReporter:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="kafka-consumer-lag")
        return self

    async def stop(self) -> None:
        """Stop the task and remove this reporter's label sets."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for labels in self._exported:
            with contextlib.suppress(KeyError):
                LAG.remove(*labels)
        self._exported = set()


def start_lag_reporter(*sources: Source, interval_s: float = DEFAULT_INTERVAL_S) -> LagReporter:
    """Start exporting ``kafka_consumer_lag_records`` for ``sources`` every ``interval_s`` seconds
    (call from a running event loop). The first round runs at once."""
    return LagReporter(sources, interval_s).start()


async def stop_lag_reporter(reporter: LagReporter | None) -> None:
    """Stop a reporter (None: nothing to do) and remove the label sets it exported."""
    if reporter is not None:
        await reporter.stop()
