-- Reconciliation with the ledger: what payments expects the ledger to answer for each transfer it
-- asked for, when the answer came, and any discrepancy (the ledger refused it or recorded it
-- otherwise). See services/payments/reconcile.py.
ALTER TABLE ledger_transfers ADD COLUMN expected_status text
    CHECK (expected_status IN ('posted', 'pending', 'voided'));
ALTER TABLE ledger_transfers ADD COLUMN answered_at timestamptz;
ALTER TABLE ledger_transfers ADD COLUMN discrepancy text;
ALTER TABLE ledger_transfers ADD COLUMN discrepancy_at timestamptz;
-- Transfers requested before this migration: the status each kind of transfer is answered with.
UPDATE ledger_transfers t SET expected_status = CASE
        WHEN t.kind = 'payment_hold' AND e.hold_model = 'two_phase' THEN 'pending'
        WHEN t.kind = 'release' AND e.released_pence = 0 THEN 'voided'
        ELSE 'posted' END
  FROM episodes e WHERE e.episode_id = t.episode_id;
UPDATE ledger_transfers SET expected_status = 'posted' WHERE expected_status IS NULL;
ALTER TABLE ledger_transfers ALTER COLUMN expected_status SET NOT NULL;
CREATE INDEX ledger_transfers_discrepancies ON ledger_transfers (discrepancy_at) WHERE discrepancy IS NOT NULL;
CREATE INDEX ledger_transfers_unanswered ON ledger_transfers (requested_at) WHERE status = 'requested';

-- Who ran each settlement is the token's subject (it was a fixed "admin-api"); the column stays.
-- Appeals: the actor of every step is the token's subject; the decider is never the appellant.
ALTER TABLE appeals ADD CONSTRAINT appeals_decider_is_not_appellant
    CHECK (decided_by IS NULL OR decided_by <> appealed_by) NOT VALID;  -- new decisions; older rows stay as recorded
