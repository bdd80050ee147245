-- Second-level appeal review: after an appeal is decided (rejected), the appellant's side may ask
-- once for an independent review; a different authorised person decides it (never the appellant,
-- the first-level decider or whoever asked for the review). An upheld review of a rejected appeal
-- moves the diverted amount fund -> provider (transfer appeal-review:<payment_id>, a namespace of
-- its own, so it can never be the same transfer as the appeal's appeal:<payment_id>).
ALTER TABLE appeals ADD COLUMN review_status text CHECK (review_status IN ('requested', 'upheld', 'rejected'));
ALTER TABLE appeals ADD COLUMN review_requested_by text;
ALTER TABLE appeals ADD COLUMN review_requested_at timestamptz;
ALTER TABLE appeals ADD COLUMN review_request_reason text CHECK (length(review_request_reason) BETWEEN 1 AND 2000);
ALTER TABLE appeals ADD COLUMN review_decided_by text;
ALTER TABLE appeals ADD COLUMN review_decided_at timestamptz;
ALTER TABLE appeals ADD COLUMN review_decision_reason text CHECK (length(review_decision_reason) BETWEEN 1 AND 2000);
ALTER TABLE appeals ADD COLUMN review_transfer_id text;
ALTER TABLE appeals ADD CONSTRAINT appeals_review_after_rejection
    CHECK (review_status IS NULL OR (status = 'rejected' AND review_requested_by IS NOT NULL AND review_requested_at IS NOT NULL
                                     AND review_request_reason IS NOT NULL));
ALTER TABLE appeals ADD CONSTRAINT appeals_review_decided
    CHECK ((review_status IN ('upheld', 'rejected')) = (review_decided_at IS NOT NULL AND review_decided_by IS NOT NULL
                                                       AND review_decision_reason IS NOT NULL));
ALTER TABLE appeals ADD CONSTRAINT appeals_review_upheld_moves_money
    CHECK (review_status IS DISTINCT FROM 'upheld' OR review_transfer_id IS NOT NULL);
-- Separation of duties, as for the first level (003_trust_boundary.sql): the reviewer is someone else.
ALTER TABLE appeals ADD CONSTRAINT appeals_reviewer_is_independent
    CHECK (review_decided_by IS NULL OR (review_decided_by <> appealed_by AND review_decided_by <> decided_by
                                         AND review_decided_by <> review_requested_by));

ALTER TABLE appeal_events DROP CONSTRAINT IF EXISTS appeal_events_step_check;
ALTER TABLE appeal_events ADD CONSTRAINT appeal_events_step_check
    CHECK (step IN ('appealed', 'upheld', 'rejected', 'review_requested', 'review_upheld', 'review_rejected'));
CREATE INDEX appeals_review_requested ON appeals (review_requested_at) WHERE review_status = 'requested';
