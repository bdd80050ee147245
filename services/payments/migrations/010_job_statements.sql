-- A settlement job shows the provisional statements its units wrote (scheme [review]): such a
-- unit moves no money, so it writes no report, and the job would otherwise show it as done with
-- nothing to see.
ALTER TABLE settlement_job_units ADD COLUMN statement_id text;
ALTER TABLE settlement_jobs ADD COLUMN provisional_statements integer NOT NULL DEFAULT 0
    CHECK (provisional_statements >= 0);
