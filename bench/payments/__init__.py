"""Payments consumer benchmark: ``python -m bench.payments [--quick]``.

Measures, on real infrastructure (embedded Tansu and PostgreSQL unless KAFKA_BOOTSTRAP_SERVERS /
DATABASE_URL are set), the payments service consuming a pre-produced backlog of
``payments.requested.v1`` (every payment in the trial: two ledger transfer requests each, the
two-phase model) and ``feedback.received.v1`` (one answer per three episodes, half of them
published before their payment) through the real path: the service's app in this process
(FastStream subscriber, the command handlers and the PostgreSQL store, one transaction per batch,
the outbox and its relay publishing the transfer requests). No ledger runs.

Two runs on fresh databases and topics, same workload:

- ``batched``: the service as it is (``PAYMENTS_BATCH_MAX_RECORDS``, default 500);
- ``per-event`` (the baseline): the subscriber the service had before batching, registered by
  the benchmark: one record per delivery, ``Runtime.handle_one`` calling the handlers with a
  batch of one, one transaction per event. It
  runs a tenth of the backlog (at most 6,000 payment requests) to the end (a short window would see one topic only: the consumer
  drains one topic's partitions before the other's).

Before those, the same two paths without a broker (``EpisodeEvents.handle_one`` per record vs
``EpisodeEvents.handle_batch`` per chunk, on records built in memory): the handlers' and the
store's share; and, for comparison, the design not taken: one transaction per chunk with a
savepoint per record around the handlers called with one record at a time.

The rate is events handled (``events_handled_total``) per second, from the moment the first
delivery reached the handler to the end of the last one handled in the window (the handler is
timed: the consumer starts while the app is still starting). The relay's rate is the transfer
requests it published, from that same first moment until it had published those of every
payment handled: the consumer may outrun the relay.

``--settlement`` runs only the settlement phase: a month of episodes (half two-phase, half held
in ``held:<ODS>``, one answer per three) accepted through the consumer's batch handler, no broker,
then one timed ``PaymentsHandlers.run_settlement``; it prints µs per episode and
``bench=payments-settlement us_per_episode=… episodes_per_s=…``. It has no in-process baseline.

The last line is ``bench=payments events_per_s=… baseline_events_per_s=… relay_per_s=…
handler_events_per_s=… handler_baseline_events_per_s=…``.
"""
