-- PROM pairing, reporting indexes and append-only submissions (feedback service, second migration).

-- The pairing key of a PROM (procedure and pre_op/post_op timing), copied out of answers so the
-- lookups below use an index. NULL for FFT and the patient power question.
ALTER TABLE submissions ADD COLUMN procedure text;
ALTER TABLE submissions ADD COLUMN timing text;
CREATE INDEX submissions_prom ON submissions (patient_pseudonym, instrument, procedure, timing)
    WHERE procedure IS NOT NULL;
CREATE INDEX submissions_instrument_month ON submissions (instrument, authored_at);

-- A patient's first pre-operative and first post-operative PROM for one procedure and instrument.
-- health_gain = post_score - pre_score on the instrument's scale (Oxford total 0-48; EQ VAS 0-100).
CREATE TABLE prom_pairs (
    pre_submission_id  text        PRIMARY KEY REFERENCES submissions (submission_id),
    post_submission_id text        NOT NULL UNIQUE REFERENCES submissions (submission_id),
    patient_pseudonym  text        NOT NULL CHECK (patient_pseudonym ~ '^[0-9a-f]{64}$'),
    provider_code      text        NOT NULL,
    instrument         text        NOT NULL CHECK (instrument IN ('eq5d5l', 'ohs', 'oks')),
    procedure          text        NOT NULL,
    pre_score          integer     NOT NULL,
    post_score         integer     NOT NULL,
    health_gain        integer     NOT NULL CHECK (health_gain = post_score - pre_score),
    paired_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prom_pairs_report ON prom_pairs (procedure, provider_code, instrument);

-- One decision per episode and patient; later answers are new rows marked as amendments.
-- A stored submission is never overwritten.
CREATE FUNCTION submissions_no_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'submissions are append-only: send an amendment instead of changing %', OLD.submission_id;
END $$;
CREATE TRIGGER submissions_append_only BEFORE UPDATE ON submissions
    FOR EACH ROW EXECUTE FUNCTION submissions_no_update();
