-- Provisional, then final (scheme option [review], services/payments/review.py): a unit's
-- settlement statement (one provider's held episodes of a period under one scheme version),
-- written instead of moving money, then finalised by the same settlement code with the
-- reviewers' corrections applied. The statement id is the settlement id it becomes.
CREATE TABLE statements (
    statement_id      text        PRIMARY KEY,
    provider_code     text        NOT NULL,
    region_code       text        NOT NULL,
    period            text        NOT NULL CHECK (period ~ '^20[0-9]{2}-(0[1-9]|1[0-2])$'),
    scheme_id         text        NOT NULL,
    scheme_version    int         NOT NULL,
    status            text        NOT NULL CHECK (status IN ('provisional', 'final')),
    created_by        text        NOT NULL,
    created_at        timestamptz NOT NULL,
    window_closes_at  timestamptz NOT NULL CHECK (window_closes_at > created_at),
    -- the episodes it covers: finalising settles these (one arriving later is settled after, as late)
    episode_ids       text[]      NOT NULL,
    report            jsonb       NOT NULL,  -- the provisional report (review.report_document)
    accepted_by       text,
    accepted_at       timestamptz,
    finalised_by      text,
    finalised_at      timestamptz,
    settlement_id     text        REFERENCES settlements (settlement_id),
    final_report      jsonb,
    UNIQUE (provider_code, period, scheme_id, scheme_version),
    CHECK ((accepted_by IS NULL) = (accepted_at IS NULL)),
    CHECK ((status = 'final') = (settlement_id IS NOT NULL)),
    CHECK ((status = 'final') = (finalised_at IS NOT NULL AND finalised_by IS NOT NULL AND final_report IS NOT NULL))
);
CREATE INDEX statements_due ON statements (window_closes_at) WHERE status = 'provisional';
CREATE INDEX statements_period ON statements (period, provider_code);

-- Everything that happened to a statement, with who (a token's subject, or "scheduler"), what,
-- why and when. Append-only; at most one correction per episode of a statement.
CREATE TABLE statement_events (
    id            bigserial   PRIMARY KEY,
    statement_id  text        NOT NULL REFERENCES statements (statement_id),
    step          text        NOT NULL CHECK (step IN ('provisional', 'query', 'correction', 'accepted', 'finalised')),
    actor         text        NOT NULL,
    reason        text        CHECK (reason IS NULL OR length(reason) BETWEEN 1 AND 2000),
    episode_id    text,
    action        text        CHECK (action IS NULL OR action = 'exclude'),
    at            timestamptz NOT NULL,
    CHECK ((step = 'correction') = (action IS NOT NULL)),
    CHECK (step <> 'correction' OR (episode_id IS NOT NULL AND reason IS NOT NULL)),
    CHECK (step <> 'query' OR reason IS NOT NULL)
);
CREATE UNIQUE INDEX statement_events_one_correction ON statement_events (statement_id, episode_id) WHERE step = 'correction';
CREATE INDEX statement_events_by_statement ON statement_events (statement_id, id);

CREATE FUNCTION statement_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'statement events are append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER statement_events_append_only BEFORE UPDATE OR DELETE ON statement_events
    FOR EACH ROW EXECUTE FUNCTION statement_events_append_only();
CREATE TRIGGER statement_events_no_truncate BEFORE TRUNCATE ON statement_events
    FOR EACH STATEMENT EXECUTE FUNCTION statement_events_append_only();
