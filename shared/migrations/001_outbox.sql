-- Transactional outbox: events are written in the same transaction as the state change that
-- causes them and published afterwards by the relay (shared/outbox.py). At-least-once.
CREATE TABLE IF NOT EXISTS outbox (
    id            bigserial PRIMARY KEY,
    topic         text        NOT NULL,
    key           bytea,
    payload       bytea       NOT NULL,
    headers       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at  timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- One notification per inserting statement wakes the relay without polling delay.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
