-- How each episode's at-risk part is held in the ledger (see domain.HoldModel). Recorded per
-- episode so a deployment can switch models without stranding money held the other way.
ALTER TABLE episodes ADD COLUMN hold_model text NOT NULL DEFAULT 'held_account'
    CHECK (hold_model IN ('held_account', 'two_phase'));

-- The ledger answers two-phase transfers with 'pending' and 'voided' as well.
ALTER TABLE ledger_transfers DROP CONSTRAINT IF EXISTS ledger_transfers_status_check;
ALTER TABLE ledger_transfers ADD CONSTRAINT ledger_transfers_status_check
    CHECK (status IN ('requested', 'posted', 'pending', 'voided', 'rejected'));

CREATE INDEX episodes_period_provider ON episodes (period, provider_code);
CREATE INDEX episodes_period_region ON episodes (period, region_code);

-- One appeal per episode against its diversion. Decided once, by a named person, with a reason.
CREATE TABLE appeals (
    appeal_id        text PRIMARY KEY,
    episode_id       text        NOT NULL UNIQUE REFERENCES episodes(episode_id),
    payment_id       text        NOT NULL,
    provider_code    text        NOT NULL,
    region_code      text        NOT NULL,
    period           text        NOT NULL,
    diverted_pence   bigint      NOT NULL CHECK (diverted_pence > 0),
    reason           text        NOT NULL,
    appealed_by      text        NOT NULL,
    appealed_at      timestamptz NOT NULL DEFAULT now(),
    deadline         timestamptz NOT NULL,
    status           text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'upheld', 'rejected')),
    decided_by       text,
    decided_at       timestamptz,
    decision_reason  text,
    transfer_id      text,
    CHECK ((status = 'open') = (decided_at IS NULL)),
    CHECK (status <> 'upheld' OR transfer_id IS NOT NULL)
);
CREATE INDEX appeals_period ON appeals (period, provider_code);

-- Every step of every appeal: who, when, what, why. Append-only.
CREATE TABLE appeal_events (
    id          bigserial PRIMARY KEY,
    appeal_id   text        NOT NULL REFERENCES appeals(appeal_id),
    step        text        NOT NULL CHECK (step IN ('appealed', 'upheld', 'rejected')),
    actor       text        NOT NULL,
    reason      text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX appeal_events_appeal ON appeal_events (appeal_id, id);
