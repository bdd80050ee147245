-- The EQ-5D-5L health states of each pair, so the PROM reports can give the index gain under the
-- configured value set (FEEDBACK_EQ5D_VALUE_SET_FILE) at report time: a new value set, or a new
-- version of one, re-values every pair already stored. Null for Oxford pairs and for pairs
-- stored before this migration.
ALTER TABLE prom_pairs ADD COLUMN pre_profile text CHECK (pre_profile ~ '^[1-5]{5}$');
ALTER TABLE prom_pairs ADD COLUMN post_profile text CHECK (post_profile ~ '^[1-5]{5}$');
