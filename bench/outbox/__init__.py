"""Outbox relay benchmark: ``python -m bench.outbox [--quick]``.

Measures ``OutboxRelay`` draining a pre-filled outbox on real infrastructure (embedded Tansu and
PostgreSQL unless KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL are set), with the producer the services
use (``shared.kafka.make_producer``) and the relay's default pass of 500 rows (fetch FOR UPDATE
SKIP LOCKED, publish, await the acks, delete, metrics).

Rows are realistic: ~450-byte ``ledger.posted.v1`` envelopes with their four event headers, a
unique key per row (a transfer id), one topic with the project's 8 partitions.

Two paths, in the same process, on the same broker and database, each on a freshly filled
outbox after a small warm-up drain:

- ``batched``: the relay as it is (whole record batches per partition, ``shared.partitioning``);
- ``per-row`` (the baseline): the relay's previous publish loop, kept here: one
  ``producer.send`` per row, aiokafka's partitioner, then all the futures awaited.

For each: events/s (rows published and deleted per second of wall time) and this process's CPU
per event (``time.process_time``: the relay and its drivers, not PostgreSQL or the broker).
Filling the outbox is not timed. The last line is ``bench=outbox events_per_s=…
baseline_events_per_s=… ratio=…``.
"""
