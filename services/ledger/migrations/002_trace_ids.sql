-- Trace ids on every journal entry and kept refusal: the correlation id of the request that
-- caused it (carried HTTP -> Kafka headers -> payments -> ledger) and the event that delivered it,
-- so an auditor or an operator can follow one episode from the patient's answer to the pennies.
-- They are tracing metadata, not money: they are not part of the hash chain (a replay of the
-- same transfer with a new correlation id is still the same entry).
ALTER TABLE entries ADD COLUMN correlation_id text, ADD COLUMN causation_id text;
ALTER TABLE rejections ADD COLUMN correlation_id text, ADD COLUMN causation_id text;
