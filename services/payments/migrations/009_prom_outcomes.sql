-- PROM pair completions, for schemes that weigh outcomes beside experience ([signals]).
--
-- The feedback service pairs each patient's pre- and post-operative PROM and sends the health
-- gain on the answer that completes the pair (feedback.received.v1). Payments keeps only what the
-- judgement needs: which trust (a site's answers count for its trust), which instrument, the gain
-- on the instrument's own scale, and when the post-operative answer was authored (pairs count in
-- that month). No pseudonym, no scores, no procedure: nothing here links back to a patient.
CREATE TABLE prom_outcomes (
    submission_id  text        PRIMARY KEY,
    provider_code  text        NOT NULL,
    instrument     text        NOT NULL CHECK (instrument IN ('eq5d5l', 'ohs', 'oks')),
    health_gain    integer     NOT NULL CHECK (health_gain BETWEEN -100 AND 100),
    authored_at    timestamptz NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prom_outcomes_by_time ON prom_outcomes (authored_at);
