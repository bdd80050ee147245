"""shared.partitioning picks exactly the partitions aiokafka's DefaultPartitioner picks: the relay
publishes whole batches to partitions it chooses itself, and a different choice would reorder
a key's events for consumers."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.partitioning import murmur2, partition_for_key


@settings(max_examples=3000)
@given(st.binary(max_size=300))
def test_murmur2_equals_aiokafka_for_any_bytes(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


@given(st.binary(max_size=64), st.lists(st.integers(0, 1000), min_size=1, max_size=64, unique=True))
def test_partition_equals_default_partitioner(key: bytes, partition_ids: list[int]) -> None:
    partitions = sorted(partition_ids)
    assert partition_for_key(key, partitions) == DefaultPartitioner()(key, partitions, partitions)


def test_known_values() -> None:
    # Values from the Java client's own test (UtilsTest.testMurmur2), as signed 32-bit ints, so the
    # two Python implementations cannot be wrong together.
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829, b"abc": 479470107,
             b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971}
    for data, java_value in cases.items():
        assert murmur2(data) == java_value & 0xFFFFFFFF, data
