-- Settlement as a job (services/payments/jobs.py): a run is recorded before it starts, worked
-- through unit by unit (one provider's held episodes under one scheme version), each unit's
-- settlement committed in the same transaction as the job's progress, so a crash or a restart
-- resumes at the next unit with nothing doubled and nothing lost.
CREATE TABLE settlement_jobs (
    job_id               uuid PRIMARY KEY,
    period               text        NOT NULL,
    provider_code        text,
    region_code          text,
    -- the providers the requester may act for when it asked (NULL: any): a job settles no more
    -- than its requester could have settled by hand
    allowed_providers    text[],
    trigger              text        NOT NULL CHECK (trigger IN ('api', 'scheduler')),
    requested_by         text        NOT NULL,
    requested_at         timestamptz NOT NULL,
    correlation_id       text        NOT NULL,
    state                text        NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    started_at           timestamptz,
    finished_at          timestamptz,
    -- the process working on it and when it last said so; a running job whose heartbeat is older
    -- than the lease is taken over by another process (or the same one after a restart)
    owner                text,
    heartbeat_at         timestamptz,
    attempts             int         NOT NULL DEFAULT 0,
    units_total          int,
    units_done           int         NOT NULL DEFAULT 0,
    units_failed         int         NOT NULL DEFAULT 0,
    reports              int         NOT NULL DEFAULT 0,
    episodes             bigint      NOT NULL DEFAULT 0,
    held_pence           bigint      NOT NULL DEFAULT 0,
    released_pence       bigint      NOT NULL DEFAULT 0,
    diverted_pence       bigint      NOT NULL DEFAULT 0,
    cancel_requested_by  text,
    cancel_requested_at  timestamptz,
    error                text,
    CHECK (released_pence + diverted_pence = held_pence),
    CHECK (units_done + units_failed <= coalesce(units_total, units_done + units_failed))
);
-- One active job per period and filter: asking again while it runs answers with the same job.
CREATE UNIQUE INDEX settlement_jobs_one_active ON settlement_jobs (period, coalesce(provider_code, ''), coalesce(region_code, ''))
    WHERE state IN ('queued', 'running');
CREATE INDEX settlement_jobs_claimable ON settlement_jobs (requested_at) WHERE state IN ('queued', 'running');
CREATE INDEX settlement_jobs_by_period ON settlement_jobs (period, requested_at);

CREATE TABLE settlement_job_units (
    job_id          uuid   NOT NULL REFERENCES settlement_jobs (job_id),
    provider_code   text   NOT NULL,
    scheme_id       text   NOT NULL,
    scheme_version  int    NOT NULL,
    state           text   NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
    settlement_id   text,  -- NULL when done with nothing left to settle (settled meanwhile)
    episodes        int,
    held_pence      bigint,
    released_pence  bigint,
    diverted_pence  bigint,
    error           text,
    done_at         timestamptz,
    PRIMARY KEY (job_id, provider_code, scheme_id, scheme_version)
);
