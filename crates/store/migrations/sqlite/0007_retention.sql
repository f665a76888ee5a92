-- Retention: indexes so housekeeping's batched purges walk an index instead of scanning, and row
-- counters so /metrics and /ready never count whole tables.

-- Terminal messages by age (the statuses match the purge query's text: SQLite's planner only
-- uses a partial index when the query repeats its WHERE terms).
CREATE INDEX messages_retention ON messages (updated_at)
    WHERE status IN ('sent', 'delivered', 'bounced', 'complained', 'failed', 'cancelled', 'suppressed', 'expired');
-- A purge never takes a message that still has a job; erasure and cancel look jobs up by message.
CREATE INDEX jobs_message ON jobs (message_id);
-- Leased jobs for /ready and /metrics use `jobs_leased` from 0006.
CREATE INDEX sandbox_messages_received ON sandbox_messages (received_at);
CREATE INDEX sandbox_messages_message ON sandbox_messages (message_id);
-- Whether a blob is still linked once a message's attachment rows go.
CREATE INDEX message_attachments_blob ON message_attachments (tenant_id, sha256);
CREATE INDEX provider_events_matched ON provider_events (received_at) WHERE message_id IS NOT NULL;
CREATE INDEX provider_events_message ON provider_events (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_at);
CREATE INDEX refresh_tokens_revoked ON refresh_tokens (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX webhook_nonces_received ON webhook_nonces (received_at);
CREATE INDEX login_failures_at ON login_failures (at);

-- `status:<status>` (messages by status) and `jobs` (queue depth), kept by triggers. SQLite has
-- one writer, so one row per key costs no contention; `row_count_deltas` stays empty here (it
-- exists so both backends read counters with one query text).
CREATE TABLE row_counts (
    key TEXT PRIMARY KEY,
    n BIGINT NOT NULL
);
CREATE TABLE row_count_deltas (
    key TEXT NOT NULL,
    n BIGINT NOT NULL
);
INSERT INTO row_counts (key, n) SELECT 'status:' || status, COUNT(*) FROM messages GROUP BY status;
INSERT INTO row_counts (key, n) SELECT 'jobs', COUNT(*) FROM jobs;

CREATE TRIGGER messages_count_insert AFTER INSERT ON messages BEGIN
    INSERT INTO row_counts (key, n) VALUES ('status:' || NEW.status, 1)
        ON CONFLICT (key) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER messages_count_status AFTER UPDATE OF status ON messages
    WHEN OLD.status IS NOT NEW.status BEGIN
    UPDATE row_counts SET n = n - 1 WHERE key = 'status:' || OLD.status;
    INSERT INTO row_counts (key, n) VALUES ('status:' || NEW.status, 1)
        ON CONFLICT (key) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER messages_count_delete AFTER DELETE ON messages BEGIN
    UPDATE row_counts SET n = n - 1 WHERE key = 'status:' || OLD.status;
END;
CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
    UPDATE row_counts SET n = n + 1 WHERE key = 'jobs';
END;
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
    UPDATE row_counts SET n = n - 1 WHERE key = 'jobs';
END;
