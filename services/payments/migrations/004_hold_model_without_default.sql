-- The hold model has one default, the setting's (PAYMENTS_LEDGER_HOLD_MODEL, domain.DEFAULT_HOLD_MODEL),
-- and every episode records the model it was accepted under. The column's default filled the rows
-- that existed when 002 added it; from now on an insert that names no model is a bug, refused.
ALTER TABLE episodes ALTER COLUMN hold_model DROP DEFAULT;
