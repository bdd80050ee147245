-- Chart of accounts. Balances here are a cache of the sum of legs, updated in the same
-- transaction as the legs; `verify` recomputes them.
CREATE TABLE accounts (
    account_id     text PRIMARY KEY CHECK (account_id ~ '^(commissioner|provider|held|fund):[A-Z0-9]{3,5}$'),
    type           text        NOT NULL CHECK (type IN ('commissioner', 'provider', 'held', 'fund')),
    floor_pence    bigint,
    posted_pence   bigint      NOT NULL DEFAULT 0,
    currency       text        NOT NULL DEFAULT 'GBP' CHECK (currency = 'GBP'),
    metadata       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (floor_pence IS NULL OR posted_pence >= floor_pence)
);

-- One row per journal entry, hash-chained in seq order.
CREATE TABLE entries (
    seq          bigint PRIMARY KEY,
    transfer_id  text        NOT NULL UNIQUE,
    fingerprint  text        NOT NULL,
    cause        jsonb       NOT NULL,
    posted_at    timestamptz NOT NULL,
    prev_hash    text        NOT NULL,
    hash         text        NOT NULL
);
CREATE INDEX entries_posted_at ON entries (posted_at, seq);

CREATE TABLE legs (
    account_id    text        NOT NULL REFERENCES accounts(account_id),
    entry_seq     bigint      NOT NULL REFERENCES entries(seq),
    amount_pence  bigint      NOT NULL CHECK (amount_pence <> 0),
    posted_at     timestamptz NOT NULL,
    PRIMARY KEY (account_id, entry_seq)
);
CREATE INDEX legs_entry ON legs (entry_seq);
CREATE INDEX legs_account_time ON legs (account_id, posted_at, entry_seq) INCLUDE (amount_pence);

CREATE TABLE chain_head (
    id         int PRIMARY KEY CHECK (id = 1),
    seq        bigint      NOT NULL,
    hash       text        NOT NULL,
    posted_at  timestamptz
);
INSERT INTO chain_head VALUES (1, 0, repeat('0', 64), NULL);

-- Append-only, enforced by the database whoever connects: journal rows are never changed or
-- removed. Corrections are new entries that reverse old ones.
CREATE FUNCTION forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger journal is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
CREATE TRIGGER legs_append_only BEFORE UPDATE OR DELETE ON legs
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER legs_no_truncate BEFORE TRUNCATE ON legs
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
