-- Submissions as received, with the NHS number replaced by a keyed pseudonym. Free text stays
-- here and never travels in events.
CREATE TABLE submissions (
    submission_id        text PRIMARY KEY,
    episode_id           text        NOT NULL,
    provider_code        text        NOT NULL,
    patient_pseudonym    text        NOT NULL CHECK (patient_pseudonym ~ '^[0-9a-f]{64}$'),
    pseudonym_key_id     text        NOT NULL,
    instrument           text        NOT NULL,
    answers              jsonb       NOT NULL,
    scores               jsonb       NOT NULL,
    free_text            text,
    authored_at          timestamptz NOT NULL,
    received_at          timestamptz NOT NULL DEFAULT now(),
    channel              text        NOT NULL,
    content_hash         text        NOT NULL,
    amends_submission_id text,
    -- The first decision-bearing answer per episode and patient is the decision; the rest are amendments.
    is_amendment         boolean     NOT NULL DEFAULT false
);
CREATE INDEX submissions_episode ON submissions (episode_id, patient_pseudonym);
CREATE INDEX submissions_provider_month ON submissions (provider_code, authored_at);
