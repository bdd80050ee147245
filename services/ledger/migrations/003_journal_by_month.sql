-- The journal for years: entries and legs partitioned by month of posted_at (native range
-- partitioning), searchable cause columns, accounting dates and closed periods.
--
-- A year of England is about 1.6 billion legs; partitions keep each month's indexes small, let
-- as-of and statement queries touch only the months they ask about, and let old months be moved
-- to cheaper storage without touching the chain. The hash chain, append-only triggers and
-- every as-of answer are unchanged: the same rows, in more tables.
--
-- A partitioned table's unique keys must contain the partition key, so the two things that are
-- unique across the whole journal live in `transfer_ids` (one row per entry, small): the
-- transfer id (idempotency) and `reverses` (an original is reversed once). `seq` is unique
-- there too, which makes the chain's gap-free numbering a database rule as before.

ALTER TABLE pending_transfers DROP CONSTRAINT pending_transfers_transfer_id_fkey;
ALTER TABLE entries RENAME TO entries_v2;
ALTER TABLE legs RENAME TO legs_v2;

CREATE TABLE transfer_ids (
    transfer_id  text PRIMARY KEY,
    seq          bigint      NOT NULL UNIQUE,
    posted_at    timestamptz NOT NULL,
    reverses     text UNIQUE
);

CREATE TABLE entries (
    seq              bigint      NOT NULL,
    transfer_id      text        NOT NULL,
    kind             text        NOT NULL CHECK (kind IN ('posted', 'pending', 'post_pending', 'void_pending', 'expire')),
    fingerprint      text        NOT NULL,
    request          text        NOT NULL,   -- canonical JSON of the client request, exactly as hashed
    pending_id       text,
    reverses         text,
    posted_at        timestamptz NOT NULL,
    expires_at       timestamptz,
    prev_hash        text        NOT NULL,
    hash             text        NOT NULL,
    correlation_id   text,
    causation_id     text,
    -- The day the entry counts in the books (UK date): the request's value_date, else the day it
    -- was posted. Derived from hashed fields, so not hashed itself.
    accounting_date  date        NOT NULL,
    -- The request's cause, spelled out for search (GET /v1/transfers) and reconciliation. Copies
    -- of fields inside `request` (which is what is hashed), never edited.
    cause_kind       text        NOT NULL,
    payment_id       text,
    episode_id       text,
    provider_code    text,
    period           text,
    grant_id         text,
    CONSTRAINT entries_pk PRIMARY KEY (seq, posted_at)
) PARTITION BY RANGE (posted_at);

CREATE TABLE legs (
    entry_seq                    bigint      NOT NULL,
    account_id                   text        NOT NULL,
    amount_pence                 bigint      NOT NULL,
    pending_pence                bigint      NOT NULL DEFAULT 0,
    balance_after_pence          bigint      NOT NULL,
    pending_debits_after_pence   bigint      NOT NULL CHECK (pending_debits_after_pence >= 0),
    pending_credits_after_pence  bigint      NOT NULL CHECK (pending_credits_after_pence >= 0),
    posted_at                    timestamptz NOT NULL,
    CONSTRAINT legs_pk PRIMARY KEY (entry_seq, account_id, posted_at),
    CHECK (amount_pence <> 0 OR pending_pence <> 0)
) PARTITION BY RANGE (posted_at);

-- Indexes on the partitioned parents; every partition gets its own copy.
CREATE INDEX entries_by_time ON entries (posted_at, seq);
CREATE INDEX entries_by_pending ON entries (pending_id) WHERE pending_id IS NOT NULL;
CREATE INDEX entries_by_payment ON entries (payment_id) WHERE payment_id IS NOT NULL;
CREATE INDEX entries_by_episode ON entries (episode_id) WHERE episode_id IS NOT NULL;
CREATE INDEX legs_by_account_time ON legs (account_id, posted_at, entry_seq)
    INCLUDE (amount_pence, pending_pence, balance_after_pence, pending_debits_after_pence, pending_credits_after_pence);

-- Append-only, as before: row triggers on a partitioned table apply to every partition;
-- TRUNCATE triggers are per table, so ledger_ensure_month adds one to each new partition.
CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
CREATE TRIGGER legs_append_only BEFORE UPDATE OR DELETE ON legs
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER legs_no_truncate BEFORE TRUNCATE ON legs
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
CREATE TRIGGER transfer_ids_append_only BEFORE UPDATE OR DELETE ON transfer_ids
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER transfer_ids_no_truncate BEFORE TRUNCATE ON transfer_ids
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

-- The month's partitions of entries and legs (UTC months: storage, not accounting), created
-- ahead by the writer. There is no default partition: a row for a month that has none fails
-- loudly instead of landing somewhere a later partition could not be created over.
CREATE FUNCTION ledger_ensure_month(month date) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    lo     date := date_trunc('month', month::timestamp)::date;
    hi     date := (date_trunc('month', month::timestamp) + interval '1 month')::date;
    suffix text := to_char(lo, '"y"YYYY"m"MM');
    t      text;
BEGIN
    FOREACH t IN ARRAY ARRAY['entries', 'legs'] LOOP
        IF to_regclass(t || '_' || suffix) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                           t || '_' || suffix, t, lo::text || ' 00:00:00+00', hi::text || ' 00:00:00+00');
            EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION forbid_change()',
                           t || '_' || suffix || '_no_truncate', t || '_' || suffix);
        END IF;
    END LOOP;
    UPDATE chain_head SET partitions_through = greatest(coalesce(partitions_through, lo), lo),
                          partitions_from = least(coalesce(partitions_from, lo), lo) WHERE id = 1;
END $$;

-- The chain head also carries the first and last months with partitions (so the writer knows,
-- without a query, when to create more), the last closed accounting period and the chain head at the moment
-- it closed (what its statement records; services/ledger/periods.py).
ALTER TABLE chain_head ADD COLUMN partitions_from date, ADD COLUMN partitions_through date, ADD COLUMN closed_through text,
    ADD COLUMN closed_at_seq bigint, ADD COLUMN closed_at_hash text, ADD COLUMN closed_at timestamptz,
    ADD COLUMN closed_by text;

-- Existing rows move over unchanged, in chain order.
SELECT ledger_ensure_month(m::date)
FROM generate_series(date_trunc('month', (coalesce((SELECT min(posted_at) FROM entries_v2), now()) AT TIME ZONE 'UTC')),
                     date_trunc('month', (greatest((SELECT max(posted_at) FROM entries_v2), now()) AT TIME ZONE 'UTC'))
                       + interval '2 months',
                     interval '1 month') AS m;

INSERT INTO transfer_ids (transfer_id, seq, posted_at, reverses)
SELECT transfer_id, seq, posted_at, reverses FROM entries_v2 ORDER BY seq;

INSERT INTO entries (seq, transfer_id, kind, fingerprint, request, pending_id, reverses, posted_at, expires_at, prev_hash,
                     hash, correlation_id, causation_id, accounting_date, cause_kind, payment_id, episode_id, provider_code,
                     period, grant_id)
SELECT seq, transfer_id, kind, fingerprint, request, pending_id, reverses, posted_at, expires_at, prev_hash, hash,
       correlation_id, causation_id,
       coalesce((request::jsonb ->> 'value_date')::date, (posted_at AT TIME ZONE 'Europe/London')::date),
       request::jsonb -> 'cause' ->> 'kind', request::jsonb -> 'cause' ->> 'payment_id',
       request::jsonb -> 'cause' ->> 'episode_id', request::jsonb -> 'cause' ->> 'provider_code',
       request::jsonb -> 'cause' ->> 'period', request::jsonb -> 'cause' ->> 'grant_id'
FROM entries_v2 ORDER BY seq;

INSERT INTO legs SELECT * FROM legs_v2 ORDER BY entry_seq, account_id;

DROP TABLE entries_v2;
DROP TABLE legs_v2;

ALTER TABLE pending_transfers ADD CONSTRAINT pending_transfers_transfer_id_fkey
    FOREIGN KEY (transfer_id) REFERENCES transfer_ids (transfer_id);

-- Closed accounting periods: one row per month, in order, each with the signed statement
-- written when it closed (exact bytes and signature), chained to the previous statement.
CREATE TABLE period_closes (
    period           text PRIMARY KEY CHECK (period ~ '^20[0-9]{2}-(0[1-9]|1[0-2])$'),
    closed_at        timestamptz NOT NULL,
    closed_by        text        NOT NULL,
    head_seq         bigint      NOT NULL,
    head_hash        text        NOT NULL,
    statement        bytea       NOT NULL,   -- the canonical JSON statement, exactly the bytes signed
    statement_sha256 text        NOT NULL,
    signature        bytea       NOT NULL,   -- Ed25519 over `statement`
    key_id           text        NOT NULL
);
CREATE TRIGGER period_closes_append_only BEFORE UPDATE OR DELETE ON period_closes
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER period_closes_no_truncate BEFORE TRUNCATE ON period_closes
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

-- Reconciliation of a commissioner's remittance file against the ledger: one run per import,
-- one line per payment id on either side. Runs are records of what was found, never edited.
CREATE TABLE remittance_runs (
    run_id          text PRIMARY KEY,
    commissioner    text        NOT NULL,
    period          text        NOT NULL,
    imported_at     timestamptz NOT NULL,
    imported_by     text        NOT NULL,
    file_name       text,
    file_sha256     text        NOT NULL,
    file_rows       int         NOT NULL,
    matched         int         NOT NULL,
    missing         int         NOT NULL,
    different       int         NOT NULL,
    unknown         int         NOT NULL,
    file_pence      bigint      NOT NULL,
    ledger_pence    bigint      NOT NULL,
    head_seq        bigint      NOT NULL   -- the journal as of this entry was compared
);
CREATE INDEX remittance_runs_by_commissioner ON remittance_runs (commissioner, period, imported_at);

CREATE TABLE remittance_lines (
    run_id            text   NOT NULL REFERENCES remittance_runs (run_id),
    payment_id        text   NOT NULL,
    status            text   NOT NULL CHECK (status IN ('matched', 'missing', 'different', 'unknown')),
    file_date         date,
    file_pence        bigint,
    ledger_pence      bigint,
    difference_pence  bigint NOT NULL,   -- file - ledger (a missing line: -ledger; an unknown one: file)
    provider_code     text,
    PRIMARY KEY (run_id, payment_id)
);
CREATE TRIGGER remittance_runs_append_only BEFORE UPDATE OR DELETE ON remittance_runs
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER remittance_lines_append_only BEFORE UPDATE OR DELETE ON remittance_lines
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
