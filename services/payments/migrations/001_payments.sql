-- One row per care episode (one payment request each). The request's fingerprint makes
-- retries idempotent: same id + same fields = same result; different fields = conflict.
CREATE TABLE episodes (
    episode_id          text PRIMARY KEY,
    payment_id          text        NOT NULL UNIQUE,
    commissioner_code   text        NOT NULL,
    provider_code       text        NOT NULL,
    region_code         text        NOT NULL,
    service_type        text        NOT NULL,
    activity_date       date        NOT NULL,
    period              text        NOT NULL,
    amount_pence        bigint      NOT NULL CHECK (amount_pence > 0),
    at_risk_pence       bigint      NOT NULL CHECK (at_risk_pence >= 0 AND at_risk_pence <= amount_pence),
    scheme_id           text,
    scheme_version      int,
    request_fingerprint text        NOT NULL,
    request             jsonb       NOT NULL,
    requested_at        timestamptz NOT NULL DEFAULT now(),
    correlation_id      text,
    status              text        NOT NULL CHECK (status IN ('held', 'paid_in_full', 'settled')),
    settlement_id       text,
    released_pence      bigint,
    diverted_pence      bigint,
    decision            jsonb,
    CHECK (status <> 'settled' OR released_pence + diverted_pence = at_risk_pence)
);
CREATE INDEX episodes_unsettled ON episodes (provider_code, period) WHERE status = 'held';

-- Every answer about an episode, kept whatever its order or lateness: decisions are derived
-- from this table, never overwritten.
CREATE TABLE answers (
    submission_id        text PRIMARY KEY,
    episode_id           text        NOT NULL,
    provider_code        text        NOT NULL,
    instrument           text        NOT NULL CHECK (instrument IN ('fft', 'patient_power')),
    fft_answer           smallint    CHECK (fft_answer BETWEEN 1 AND 6),
    patient_choice       text        CHECK (patient_choice IN ('pay_in_full', 'hold_back', 'not_sure')),
    authored_at          timestamptz NOT NULL,
    received_at          timestamptz NOT NULL DEFAULT now(),
    amends_submission_id text
);
CREATE INDEX answers_episode ON answers (episode_id);

-- One settlement per provider, period and scheme version: the report finance teams read.
CREATE TABLE settlements (
    settlement_id       text PRIMARY KEY,
    provider_code       text        NOT NULL,
    region_code         text        NOT NULL,
    period              text        NOT NULL,
    scheme_id           text        NOT NULL,
    scheme_version      int         NOT NULL,
    run_at              timestamptz NOT NULL DEFAULT now(),
    run_by              text        NOT NULL,
    billed_pence        bigint      NOT NULL,
    held_pence          bigint      NOT NULL,
    released_pence      bigint      NOT NULL,
    diverted_pence      bigint      NOT NULL,
    responses           int         NOT NULL,
    episodes            int         NOT NULL,
    min_sample_applied  boolean     NOT NULL,
    cap_applied         boolean     NOT NULL,
    cap_pence           bigint      NOT NULL,
    CHECK (released_pence + diverted_pence = held_pence)
);

-- What payments asked the ledger to do, and what the ledger answered.
CREATE TABLE ledger_transfers (
    transfer_id   text PRIMARY KEY,
    episode_id    text        NOT NULL,
    kind          text        NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    status        text        NOT NULL DEFAULT 'requested' CHECK (status IN ('requested', 'posted', 'rejected')),
    entry_seq     bigint,
    reason        text
);
CREATE INDEX ledger_transfers_episode ON ledger_transfers (episode_id);
