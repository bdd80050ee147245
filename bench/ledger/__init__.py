"""Ledger benchmark: ``python -m bench.ledger [--quick]`` (``make bench-ledger``).

Measures, on real infrastructure (embedded Tansu and PostgreSQL unless KAFKA_BOOTSTRAP_SERVERS /
DATABASE_URL are set):

1. a raw COPY baseline: entry-shaped rows into a keyed table, from this process;
1b. the single-writer floor (floor.py): the same pre-produced requests consumed and written into
   the ledger's real schema doing only the least any single-writer ledger must (entries, legs,
   balances, chain head; then again with outbox rows), pipelined, from this process: an upper
   bound for this design on this machine, printed beside the real path;
2. sustained transfers/s through the real path: transfer requests pre-produced to
   ``ledger.transfer-requests.v1``, then the ledger service (its FastStream batch consumer,
   idempotency lookups, floors, SHA-256 hash chain, one transaction per batch, outbox events and
   the relay publishing ``ledger.posted.v1``) consumes them; the rate is counted from the chain
   head over a window after warm-up. Two workloads: uniform over 10,000 accounts, and hot
   (every credit into the 7 regional funds);
3. as-of balance and statement-page latency (p50, p99) through the HTTP API (in process) on a
   ledger of 10 million journal rows (legs; 5 million entries), loaded with set-based SQL.

The last line is ``bench=ledger transfers_per_s=… hot_transfers_per_s=… copy_rows_per_s=… asof_p99_ms=…
 floor_transfers_per_s=…``.
"""
