-- The relay now deletes rows once published (shared/outbox.py) and no longer purges rows marked
-- published; rows marked by an older relay are removed here once, so none stays forever.
DELETE FROM outbox WHERE published_at IS NOT NULL;
