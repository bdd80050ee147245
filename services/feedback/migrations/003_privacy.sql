-- NHS numbers written into free text are removed before the text is stored (domain.Submission);
-- how many were removed from each submission is kept, so the privacy report can count them.
ALTER TABLE submissions ADD COLUMN free_text_redactions smallint NOT NULL DEFAULT 0 CHECK (free_text_redactions >= 0);
