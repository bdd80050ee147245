-- The ledger's schema. See services/ledger/README.md (chart of accounts, representation) and
-- the docstring of services/ledger/domain.py (entry kinds, legs, hash chain).

-- Chart of accounts. Balances here are a cache of the journal, updated in the same transaction
-- as the legs; `verify` recomputes them. Available = posted - pending debits, never below floor.
CREATE TABLE accounts (
    account_id             text PRIMARY KEY CHECK (account_id ~ '^(commissioner|provider|held|fund):[A-Z0-9]{3,5}$'),
    type                   text        NOT NULL CHECK (type IN ('commissioner', 'provider', 'held', 'fund')),
    floor_pence            bigint,
    posted_pence           bigint      NOT NULL DEFAULT 0,
    pending_debits_pence   bigint      NOT NULL DEFAULT 0 CHECK (pending_debits_pence >= 0),
    pending_credits_pence  bigint      NOT NULL DEFAULT 0 CHECK (pending_credits_pence >= 0),
    currency               text        NOT NULL DEFAULT 'GBP' CHECK (currency = 'GBP'),
    metadata               jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at             timestamptz NOT NULL DEFAULT now(),
    CHECK (floor_pence IS NULL OR posted_pence - pending_debits_pence >= floor_pence)
);
CREATE INDEX accounts_type ON accounts (type, account_id);

-- One row per journal entry, hash-chained in seq order. posted_at never decreases along seq.
CREATE TABLE entries (
    seq          bigint PRIMARY KEY,
    transfer_id  text        NOT NULL UNIQUE,
    kind         text        NOT NULL CHECK (kind IN ('posted', 'pending', 'post_pending', 'void_pending', 'expire')),
    fingerprint  text        NOT NULL,
    request      text        NOT NULL,   -- canonical JSON of the client request (kind, legs, pending_id, timeout_s, reverses, cause), exactly as hashed
    pending_id   text,
    reverses     text,
    posted_at    timestamptz NOT NULL,
    expires_at   timestamptz,
    prev_hash    text        NOT NULL,
    hash         text        NOT NULL
);
CREATE INDEX entries_posted_at ON entries (posted_at, seq);
CREATE UNIQUE INDEX entries_one_reversal ON entries (reverses) WHERE reverses IS NOT NULL;
CREATE INDEX entries_pending_id ON entries (pending_id) WHERE pending_id IS NOT NULL;

-- Legs: amount_pence changes the posted balance, pending_pence the reservation (see domain.py).
-- The account's balances after the leg are stored, so as-of is one index lookup.
-- No foreign keys here, on purpose: legs are written only by the single chain writer, in the
-- same transaction as their entry and after their accounts exist, and a foreign-key check per
-- leg costs about a fifth of the write path. `verify` checks that every leg belongs to an entry
-- of the chain and every account's cached balance equals its legs.
CREATE TABLE legs (
    entry_seq                    bigint      NOT NULL,
    account_id                   text        NOT NULL,
    amount_pence                 bigint      NOT NULL,
    pending_pence                bigint      NOT NULL DEFAULT 0,
    balance_after_pence          bigint      NOT NULL,
    pending_debits_after_pence   bigint      NOT NULL CHECK (pending_debits_after_pence >= 0),
    pending_credits_after_pence  bigint      NOT NULL CHECK (pending_credits_after_pence >= 0),
    posted_at                    timestamptz NOT NULL,
    PRIMARY KEY (entry_seq, account_id),
    CHECK (amount_pence <> 0 OR pending_pence <> 0)
);
CREATE INDEX legs_account_time ON legs (account_id, posted_at, entry_seq)
    INCLUDE (amount_pence, pending_pence, balance_after_pence, pending_debits_after_pence, pending_credits_after_pence);

-- Decisions to refuse, kept so a retried or replayed request gets the same answer.
CREATE TABLE rejections (
    transfer_id  text PRIMARY KEY,
    fingerprint  text        NOT NULL,
    request      text        NOT NULL,
    reason       text        NOT NULL,
    rejected_at  timestamptz NOT NULL
);

-- State of two-phase transfers (derived from the journal; the only allowed change is
-- pending -> posted | voided | expired, once).
CREATE TABLE pending_transfers (
    transfer_id     text PRIMARY KEY REFERENCES entries(transfer_id),
    entry_seq       bigint      NOT NULL,
    legs            jsonb       NOT NULL,   -- [[account_id, signed amount], ...]
    expires_at      timestamptz,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'posted', 'voided', 'expired')),
    resolved_seq    bigint,
    correlation_id  text
);
CREATE INDEX pending_due ON pending_transfers (expires_at) WHERE status = 'pending' AND expires_at IS NOT NULL;

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
CREATE TRIGGER rejections_append_only BEFORE UPDATE OR DELETE ON rejections
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER rejections_no_truncate BEFORE TRUNCATE ON rejections
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

CREATE FUNCTION pending_resolve_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR OLD.status <> 'pending' OR NEW.status = 'pending'
       OR NEW.transfer_id <> OLD.transfer_id OR NEW.legs <> OLD.legs OR NEW.entry_seq <> OLD.entry_seq
       OR NEW.expires_at IS DISTINCT FROM OLD.expires_at THEN
        RAISE EXCEPTION 'a pending transfer can only be resolved once (% on %)', TG_OP, TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER pending_transfers_resolve_once BEFORE UPDATE OR DELETE ON pending_transfers
    FOR EACH ROW EXECUTE FUNCTION pending_resolve_once();
