-- The funds service's own database: improvement grants, their milestones and history, and the
-- feedback tallies their measures are charted from. Money itself lives in the ledger; these rows
-- record what was asked of it and what it answered.

CREATE TABLE IF NOT EXISTS grants (
    grant_id         text        PRIMARY KEY,
    region_code      text        NOT NULL,
    title            text        NOT NULL,
    aim              text        NOT NULL,
    measure          jsonb       NOT NULL,
    start_date       date        NOT NULL,
    end_date         date        NOT NULL CHECK (end_date >= start_date),
    amount_pence     bigint      NOT NULL CHECK (amount_pence > 0),
    providers        text[]      NOT NULL,
    status           text        NOT NULL CHECK (status IN ('proposed', 'withdrawn', 'refused', 'reserving', 'reserved',
                                                            'completed', 'cancelled')),
    proposed_by      text        NOT NULL,
    proposed_at      timestamptz NOT NULL,
    fingerprint      text        NOT NULL,
    decision         text        CHECK (decision IN ('approved', 'refused')),
    decided_by       text,
    decided_at       timestamptz,
    decision_reason  text,
    cancelled_by     text,
    cancelled_at     timestamptz,
    cancel_reason    text,
    correlation_id   text        NOT NULL,
    updated_at       timestamptz NOT NULL,
    -- Maker-checker, in the database too: nobody decides their own proposal.
    CONSTRAINT grants_checker_is_not_maker CHECK (decided_by IS NULL OR decided_by <> proposed_by),
    CONSTRAINT grants_decision_complete CHECK ((decision IS NULL) = (decided_by IS NULL) AND (decision IS NULL) = (decided_at IS NULL))
);
CREATE INDEX IF NOT EXISTS grants_region ON grants (region_code, grant_id);
CREATE INDEX IF NOT EXISTS grants_providers ON grants USING gin (providers);

CREATE TABLE IF NOT EXISTS milestones (
    grant_id              text        NOT NULL REFERENCES grants (grant_id),
    n                     int         NOT NULL CHECK (n BETWEEN 1 AND 12),
    title                 text        NOT NULL,
    provider_code         text        NOT NULL,
    amount_pence          bigint      NOT NULL CHECK (amount_pence > 0),
    due_date              date        NOT NULL,
    status                text        NOT NULL,
    reserve_requested     boolean     NOT NULL DEFAULT false,
    timeout_s             int         CHECK (timeout_s BETWEEN 1 AND 366 * 86400),
    reserve_status        text,
    reserve_reason        text,
    reserve_seq           bigint,
    expired               boolean     NOT NULL DEFAULT false,
    met_by                text,
    met_at                timestamptz,
    met_note              text,
    pay_status            text,
    pay_reason            text,
    pay_seq               bigint,
    release_why           text        CHECK (release_why IN ('cancelled', 'refused')),
    release_requested_at  timestamptz,
    release_status        text,
    release_reason        text,
    release_seq           bigint,
    PRIMARY KEY (grant_id, n),
    -- A milestone is either paid or released, never both asked for.
    CONSTRAINT milestones_pay_or_release CHECK (met_by IS NULL OR release_why IS NULL)
);

-- Every step of every grant, with its actor (a token's subject, or "ledger"): append-only.
CREATE TABLE IF NOT EXISTS grant_steps (
    id         bigserial   PRIMARY KEY,
    grant_id   text        NOT NULL REFERENCES grants (grant_id),
    at         timestamptz NOT NULL,
    step       text        NOT NULL,
    actor      text        NOT NULL,
    milestone  int,
    reason     text
);
CREATE INDEX IF NOT EXISTS grant_steps_grant ON grant_steps (grant_id, id);

CREATE OR REPLACE FUNCTION funds_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'grant_steps is append-only (% refused)', TG_OP;
END $$;
DROP TRIGGER IF EXISTS grant_steps_append_only ON grant_steps;
CREATE TRIGGER grant_steps_append_only BEFORE UPDATE OR DELETE ON grant_steps
    FOR EACH ROW EXECUTE FUNCTION funds_append_only();
DROP TRIGGER IF EXISTS grant_steps_no_truncate ON grant_steps;
CREATE TRIGGER grant_steps_no_truncate BEFORE TRUNCATE ON grant_steps
    FOR EACH STATEMENT EXECUTE FUNCTION funds_append_only();

-- Answers from the ledger nobody expected (services/funds/domain.py: discrepancies).
CREATE TABLE IF NOT EXISTS ledger_discrepancies (
    id           bigserial   PRIMARY KEY,
    transfer_id  text        NOT NULL,
    grant_id     text        NOT NULL,
    detail       text        NOT NULL,
    found_at     timestamptz NOT NULL
);

-- Feedback, as tallies (services/funds/tally.py). No pseudonym, episode id or free text.
CREATE TABLE IF NOT EXISTS fft_tallies (
    grain          text   NOT NULL CHECK (grain IN ('week', 'month')),
    period_start   date   NOT NULL,
    provider_code  text   NOT NULL,
    setting        text   NOT NULL,
    responses      bigint NOT NULL CHECK (responses >= 0),
    positive       bigint NOT NULL CHECK (positive >= 0 AND positive <= responses),
    negative       bigint NOT NULL CHECK (negative >= 0 AND negative <= responses),
    PRIMARY KEY (grain, provider_code, period_start, setting)
);

CREATE TABLE IF NOT EXISTS prom_tallies (
    grain          text   NOT NULL CHECK (grain IN ('week', 'month')),
    period_start   date   NOT NULL,
    provider_code  text   NOT NULL,
    instrument     text   NOT NULL,
    procedure      text   NOT NULL,
    scores         bigint NOT NULL CHECK (scores >= 0),
    score_sum      bigint NOT NULL,
    gains          bigint NOT NULL CHECK (gains >= 0),
    gain_sum       bigint NOT NULL,
    PRIMARY KEY (grain, provider_code, instrument, procedure, period_start)
);

-- One row per counted answer: what it added where, so a redelivery is not counted twice and an
-- amendment replaces (not adds to) the answer it amends. Nothing that identifies a patient.
CREATE TABLE IF NOT EXISTS counted_answers (
    submission_id  text    PRIMARY KEY,
    root_id        text    NOT NULL,
    current        boolean NOT NULL,
    kind           text    NOT NULL CHECK (kind IN ('fft', 'prom')),
    provider_code  text    NOT NULL,
    answered_on    date    NOT NULL,
    setting        text    NOT NULL,
    positive       smallint NOT NULL,
    negative       smallint NOT NULL,
    instrument     text,
    procedure      text,
    score          int,
    gain           int
);
CREATE UNIQUE INDEX IF NOT EXISTS counted_answers_current ON counted_answers (root_id) WHERE current;
