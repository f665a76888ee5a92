-- Attachment bytes are stored once per tenant and content (a batch sending one file to many
-- stores it once); messages link to them by hash.
CREATE TABLE attachment_blobs (
    tenant_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    data BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, sha256)
);

CREATE TABLE message_attachments (
    message_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    tenant_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    filename TEXT NOT NULL,
    content_type TEXT NOT NULL,
    content_id TEXT,
    size BIGINT NOT NULL,
    PRIMARY KEY (message_id, position)
);

ALTER TABLE messages ADD COLUMN attachment_count BIGINT NOT NULL DEFAULT 0;
-- When a scheduled message is due (absent: send at once).
ALTER TABLE messages ADD COLUMN send_at BIGINT;
-- The template used, as JSON {"slug","version","locale"}.
ALTER TABLE messages ADD COLUMN template TEXT;
