-- Events reported by providers' webhooks, stored once per provider event id. `message_id` stays
-- NULL until the message is known (an event can beat the send response); unmatched rows are
-- kept for 7 days.
CREATE TABLE provider_events (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    message_id TEXT,
    recipient TEXT,
    type TEXT NOT NULL,
    -- 'hard' or 'soft' for bounces (soft bounces are counted towards suppression).
    bounce_type TEXT,
    detail TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    UNIQUE (provider_id, event_id)
);
CREATE INDEX provider_events_unmatched ON provider_events (received_at) WHERE message_id IS NULL;
CREATE INDEX provider_events_recipient ON provider_events (tenant_id, recipient, type, occurred_at);

-- Per-recipient delivery state, written when the first event for that recipient arrives.
CREATE TABLE message_recipients (
    message_id TEXT NOT NULL,
    email TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (message_id, email)
);

-- Addresses not to send to, per project. `scope` is '' for all mail, else the category an
-- unsubscribe applies to.
CREATE TABLE suppressions (
    tenant_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    email TEXT NOT NULL,
    scope TEXT NOT NULL,
    reason TEXT NOT NULL,
    source_message_id TEXT,
    detail TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    PRIMARY KEY (project_id, email, scope)
);
CREATE INDEX suppressions_listing ON suppressions (tenant_id, project_id, email);

-- Who added or released which suppression, and why.
CREATE TABLE suppression_audit (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    email TEXT NOT NULL,
    scope TEXT NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX suppression_audit_email ON suppression_audit (tenant_id, project_id, email, at);

-- The sending category (e.g. `marketing`); non-transactional ones carry List-Unsubscribe.
ALTER TABLE messages ADD COLUMN category TEXT;

-- Single-use webhook tokens (Mailgun signs timestamp + token, not the body): a token seen
-- twice is a replay.
CREATE TABLE webhook_nonces (
    provider_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (provider_id, nonce)
);
