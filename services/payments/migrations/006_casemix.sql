-- Judging fairly (services/payments/judgement.py): the case-mix fields of a payment request, the
-- settlement report's judgement, and exemptions for extraordinary circumstances.

-- Optional, never identifying (shared/contracts.py PaymentRequested): NULL when not sent, as for
-- every episode before this migration. The checks are NOT VALID: they hold for every new row, and
-- the rows that exist are NULL, so there is nothing to scan a large table for.
ALTER TABLE episodes ADD COLUMN age_band text;
ALTER TABLE episodes ADD COLUMN imd_decile smallint;
ALTER TABLE episodes ADD CONSTRAINT episodes_age_band_known
    CHECK (age_band IN ('0-17', '18-44', '45-64', '65-74', '75+')) NOT VALID;
ALTER TABLE episodes ADD CONSTRAINT episodes_imd_decile_range CHECK (imd_decile BETWEEN 1 AND 10) NOT VALID;

-- What the judgement found and did, per settlement (domain.SettlementReport). Defaults are what a
-- scheme without the new rules reports, so the reports written before read the same. The *_pct
-- and casemix_factor columns are for display; the decisions were made on counts and fractions.
ALTER TABLE settlements ADD COLUMN exempted boolean NOT NULL DEFAULT false;
ALTER TABLE settlements ADD COLUMN exemption_reason text;
ALTER TABLE settlements ADD COLUMN gate_applied boolean NOT NULL DEFAULT false;
ALTER TABLE settlements ADD COLUMN gate_opened boolean;
ALTER TABLE settlements ADD COLUMN measured_responses int;
ALTER TABLE settlements ADD COLUMN measured_events int;
ALTER TABLE settlements ADD COLUMN benchmark_pct double precision;
ALTER TABLE settlements ADD COLUMN adjusted_expected_pct double precision;
ALTER TABLE settlements ADD COLUMN upper_limit_count int;
ALTER TABLE settlements ADD COLUMN casemix_factor double precision;
ALTER TABLE settlements ADD COLUMN credit_pence bigint NOT NULL DEFAULT 0;
ALTER TABLE settlements ADD COLUMN judgement_steps jsonb NOT NULL DEFAULT '[]';
ALTER TABLE settlements ADD CONSTRAINT settlements_exempted_diverts_nothing
    CHECK (NOT exempted OR diverted_pence = 0) NOT VALID;
ALTER TABLE settlements ADD CONSTRAINT settlements_closed_gate_diverts_nothing
    CHECK (gate_opened IS NOT FALSE OR diverted_pence = 0) NOT VALID;
ALTER TABLE settlements ADD CONSTRAINT settlements_credit_non_negative CHECK (credit_pence >= 0) NOT VALID;

-- A provider-period exempted by an authorised person (the token's subject) for extraordinary
-- circumstances, with the reason: nothing of it is diverted. One per provider-period, recorded
-- before the period settles, never changed or removed.
CREATE TABLE exemptions (
    provider_code  text        NOT NULL,
    period         text        NOT NULL CHECK (period ~ '^20[0-9]{2}-(0[1-9]|1[0-2])$'),
    reason         text        NOT NULL CHECK (length(reason) BETWEEN 1 AND 2000),
    exempted_by    text        NOT NULL,
    exempted_at    timestamptz NOT NULL,
    PRIMARY KEY (provider_code, period)
);

CREATE FUNCTION exemptions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'exemptions are append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER exemptions_append_only BEFORE UPDATE OR DELETE ON exemptions
    FOR EACH ROW EXECUTE FUNCTION exemptions_append_only();
CREATE TRIGGER exemptions_no_truncate BEFORE TRUNCATE ON exemptions
    FOR EACH STATEMENT EXECUTE FUNCTION exemptions_append_only();
