-- Outbox rows the broker can never take (too large, an invalid topic, unreadable headers) are
-- moved here by the relay with the reason, so the rest of the outbox keeps flowing; an alert
-- fires while any row is here (deploy/prometheus/alerts.yml). An operator repairs and re-enqueues
-- a row, or drops it, by hand: nothing here is published.
CREATE TABLE IF NOT EXISTS outbox_quarantine (
    id              bigint      PRIMARY KEY,
    topic           text        NOT NULL,
    key             bytea,
    payload         bytea       NOT NULL,
    headers         jsonb       NOT NULL,
    created_at      timestamptz NOT NULL,
    quarantined_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    reason          text        NOT NULL
);
