"""Consumer lag (shared/lag.py): the computation, and one refresh of the gauge from fake sources."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import REGISTRY

from shared.lag import (
    GroupOffsets,
    LagReporter,
    PartitionOffsets,
    lag_records,
    lag_samples,
    start_lag_reporter,
    stop_lag_reporter,
)


def gauge(group: str, topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value("kafka_consumer_lag_records",
                                     {"group": group, "topic": topic, "partition": str(partition)})


def test_lag_is_high_watermark_minus_committed() -> None:
    assert lag_records(high=120, committed=100) == 20
    assert lag_records(high=100, committed=100) == 0


def test_nothing_committed_counts_from_the_log_start() -> None:
    assert lag_records(high=120, committed=None, low=30) == 90  # auto_offset_reset=earliest starts at 30
    assert lag_records(high=120, committed=None) == 120  # log start unknown: from 0


def test_lag_never_negative_and_unknown_watermark_reports_nothing() -> None:
    assert lag_records(high=5, committed=9) == 0  # a commit seen before the watermark moved
    assert lag_records(high=None, committed=9) is None


def test_samples_label_by_group_topic_partition_and_keep_the_larger_of_two_reports() -> None:
    rows = [
        PartitionOffsets("payments", "ledger.posted.v1", 0, high=50, committed=40),
        PartitionOffsets("payments", "ledger.posted.v1", 0, high=50, committed=20),  # an older member, mid-rebalance
        PartitionOffsets("payments", "ledger.posted.v1", 1, high=None, committed=3),
        PartitionOffsets("funds", "ledger.posted.v1", 0, high=50, committed=None, low=0),
    ]
    assert lag_samples(rows) == {
        ("payments", "ledger.posted.v1", "0"): 30,
        ("funds", "ledger.posted.v1", "0"): 50,
    }


@dataclass
class FakeConsumer:
    """What the reporter asks of an aiokafka group member."""

    group: str
    high: dict[TopicPartition, int]
    committed_at: dict[TopicPartition, int | None]
    low: dict[TopicPartition, int] = field(default_factory=dict)
    assigned: set[TopicPartition] = field(default_factory=set)
    fail: bool = False
    fetched_high: dict[TopicPartition, int] = field(default_factory=dict)  # from its own fetch responses

    @property
    def _group_id(self) -> str:
        return self.group

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self.assigned)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.fetched_high.get(tp)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        if self.fail:
            raise OSError("broker away")
        return {tp: self.high[tp] for tp in tps}

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_at.get(tp)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.low.get(tp, 0) for tp in tps}


async def test_refresh_sets_the_gauge_and_forgets_revoked_partitions() -> None:
    t0, t1 = TopicPartition("lagtest.a.v1", 0), TopicPartition("lagtest.a.v1", 1)
    consumer = FakeConsumer("lag-g1", high={t0: 100, t1: 10}, committed_at={t0: 60, t1: None}, low={t1: 4},
                            assigned={t0, t1})
    reporter = LagReporter([lambda: [consumer, None]], interval_s=1)
    assert await reporter.refresh() == {("lag-g1", "lagtest.a.v1", "0"): 40, ("lag-g1", "lagtest.a.v1", "1"): 6}
    assert gauge("lag-g1", "lagtest.a.v1", 0) == 40 and gauge("lag-g1", "lagtest.a.v1", 1) == 6

    consumer.assigned = {t0}  # partition 1 moved to another instance
    consumer.committed_at[t0] = 100
    await reporter.refresh()
    assert gauge("lag-g1", "lagtest.a.v1", 0) == 0
    assert gauge("lag-g1", "lagtest.a.v1", 1) is None  # not left showing its old lag

    await reporter.stop()
    assert gauge("lag-g1", "lagtest.a.v1", 0) is None


async def test_a_fetch_responses_newer_high_watermark_wins_over_list_offsets() -> None:
    tp = TopicPartition("lagtest.g.v1", 0)  # the embedded broker's ListOffsets answers short of the end
    consumer = FakeConsumer("lag-g7", high={tp: 7}, committed_at={tp: 5}, assigned={tp}, fetched_high={tp: 306})
    reporter = LagReporter([consumer], interval_s=1)
    assert await reporter.refresh() == {("lag-g7", "lagtest.g.v1", "0"): 301}
    consumer.fetched_high[tp] = 2  # an older fetch: ListOffsets is newer
    assert await reporter.refresh() == {("lag-g7", "lagtest.g.v1", "0"): 2}
    await reporter.stop()


async def test_a_failing_source_keeps_its_last_values_and_the_others_still_update() -> None:
    ta, tb = TopicPartition("lagtest.b.v1", 0), TopicPartition("lagtest.c.v1", 0)
    bad = FakeConsumer("lag-g2", high={ta: 10}, committed_at={ta: 5}, assigned={ta})
    good = FakeConsumer("lag-g3", high={tb: 7}, committed_at={tb: 1}, assigned={tb})
    reporter = LagReporter([bad, good], interval_s=1)
    await reporter.refresh()
    bad.fail, good.committed_at[tb] = True, 7
    await reporter.refresh()
    assert gauge("lag-g2", "lagtest.b.v1", 0) == 5  # last known
    assert gauge("lag-g3", "lagtest.c.v1", 0) == 0
    await reporter.stop()


async def test_a_consumer_without_a_group_or_an_assignment_reports_nothing() -> None:
    tp = TopicPartition("lagtest.d.v1", 0)
    reporter = LagReporter([FakeConsumer("", high={tp: 3}, committed_at={}, assigned={tp}),
                            FakeConsumer("lag-g4", high={}, committed_at={})], interval_s=1)
    assert await reporter.refresh() == {}
    await reporter.stop()


@dataclass
class FakeAdmin:
    offsets: dict[TopicPartition, OffsetAndMetadata]
    asked: list[Any] = field(default_factory=list)

    async def list_consumer_group_offsets(self, group: str, partitions: list[TopicPartition] | None = None) -> Any:
        self.asked.append((group, partitions))
        return {tp: om for tp, om in self.offsets.items() if partitions is None or tp in partitions}


class FakeWatermarks:
    def __init__(self, partitions: dict[str, set[int]], high: dict[TopicPartition, int]) -> None:
        self.partitions, self.high = partitions, high

    async def topics(self) -> set[str]:
        return set(self.partitions)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions.get(topic)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.high[tp] for tp in tps}

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 2 for tp in tps}


async def test_a_group_watched_from_outside_covers_every_partition_of_its_topics() -> None:
    t0, t1 = TopicPartition("lagtest.e.v1", 0), TopicPartition("lagtest.e.v1", 1)
    admin = FakeAdmin({t0: OffsetAndMetadata(8, ""), t1: OffsetAndMetadata(-1, "")})
    source = GroupOffsets(admin, FakeWatermarks({"lagtest.e.v1": {0, 1}}, {t0: 10, t1: 12}), "lag-g5",
                          ["lagtest.e.v1", "lagtest.missing.v1"])
    reporter = LagReporter([source], interval_s=1)
    assert await reporter.refresh() == {("lag-g5", "lagtest.e.v1", "0"): 2, ("lag-g5", "lagtest.e.v1", "1"): 10}
    assert admin.asked == [("lag-g5", [t0, t1])]  # partitions named: the embedded broker needs it
    await reporter.stop()


async def test_start_runs_a_round_at_once_and_stop_ends_the_task() -> None:
    tp = TopicPartition("lagtest.f.v1", 0)
    reporter = start_lag_reporter(FakeConsumer("lag-g6", high={tp: 9}, committed_at={tp: 4}, assigned={tp}),
                                  interval_s=60)
    for _ in range(50):
        if gauge("lag-g6", "lagtest.f.v1", 0) is not None:
            break
        await asyncio.sleep(0.01)
    assert gauge("lag-g6", "lagtest.f.v1", 0) == 5
    task = reporter._task
    await stop_lag_reporter(reporter)
    assert task is not None and task.done() and gauge("lag-g6", "lagtest.f.v1", 0) is None
    await stop_lag_reporter(None)  # nothing to stop


def test_the_interval_and_the_sources_are_bounded() -> None:
    with pytest.raises(ValueError):
        LagReporter([object()], interval_s=0.1)
    with pytest.raises(ValueError):
        LagReporter([object()], interval_s=3600)
    with pytest.raises(ValueError):
        LagReporter([], interval_s=15)
