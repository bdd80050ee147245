"""End-to-end benchmark, "one England day": ``python -m bench.e2e [--quick]`` (``make bench-e2e``).

Starts the whole system the way the end-to-end tests do (``devtools.stack.Stack``: embedded Tansu
Kafka and PostgreSQL unless KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL are set, the three services as
real processes; payments reads the benchmark's scheme from ``bench/e2e/schemes``), then:

1. latency phase: episodes offered at a fixed rate (default 1,000/s for 30 s), each a payment
   request and, for a third of them, a patient's feedback; p50 and p99 (overall and per channel)
   from submission (the Kafka send, or the moment its HTTP batch is handed to the client, at most
   ``--http-concurrency`` POSTs per endpoint, batches flushed every 100 ms) to ledger posting (the
   ``ledger.posted.v1`` answer to the episode's ``hold:<payment_id>`` transfer, read by this
   process; its timestamp is set by the ledger's outbox relay right after the batch commits). Its
   episodes are in an earlier month and are not settled;
2. throughput phase: the day (default 1,500,000 payment requests and 500,000 feedback
   submissions; workload in ``workload.py``) published as fast as the system takes it, with at most
   ``--max-in-flight`` episodes submitted and not yet in the ledger; sustained episodes/s = episodes /
   seconds from the first submission to the last hold posted;
3. the wait, if any, until payments has recorded every answer (settlement must see them all);
4. settlement of the day's month (``POST /v1/settlements/run``) until every release and diversion
   is posted in the ledger;
5. the books: every request accepted, every episode's pay and hold transfers and every release in
   the ledger (none rejected), every submission stored and with payments, no dead letters, the
   trial balance sums to zero, commissioners paid exactly what was requested, the funds hold
   exactly what settlement diverted, nothing of the day still held, the hash chain verifies
   (up to 100,000 episodes, or with ``--verify``). Any failure exits 1; missed targets do not.

Ingress is 80% Kafka (``payments.requested.v1``, ``feedback.submitted.v1``) and 20% HTTP batches
(``--http-share``). Progress lines every 5 s show the consumer lag of each service (from their
``/metrics``) and each process's CPU (from /proc; ``other`` is the rest of the machine, e.g. other
users' processes on the same cores); the figures include each service's peak
memory (VmHWM). The day's wall time is ingest + feedback wait + settlement; reduced runs also print
a linear extrapolation to the full day. The last line is
``bench=e2e episodes_per_s=… p99_ms=… day_minutes=… max_rss_mb=…``.
"""
