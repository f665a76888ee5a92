-- Retention: indexes so housekeeping's batched purges walk an index instead of scanning, and row
-- counters so /metrics and /ready never count whole tables.

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

-- `status:<status>` (messages by status) and `jobs` (queue depth). Many writer transactions run
-- at once here, and one counter row updated by each would serialise them (and deadlock when two
-- touch two keys in opposite orders). So triggers only append to `row_count_deltas` (no row is
-- shared, nothing waits); readers add the deltas to `row_counts`, and housekeeping folds them in
-- every few seconds.
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

-- Inserts and deletes come in multi-row statements (accept batches, purges): one delta row per
-- status and statement.
CREATE FUNCTION count_messages_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO row_count_deltas (key, n) SELECT 'status:' || status, COUNT(*) FROM new_rows GROUP BY status;
    RETURN NULL;
END $$;
CREATE FUNCTION count_messages_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO row_count_deltas (key, n) SELECT 'status:' || status, -COUNT(*) FROM old_rows GROUP BY status;
    RETURN NULL;
END $$;
-- Status changes come in multi-row statements too (a claim marks its jobs' messages `sending`,
-- a group of sends marks them `sent`): one delta row per status and statement. Transition
-- tables cannot go with a column list, so this runs after every UPDATE and counts only rows
-- whose status changed.
CREATE FUNCTION count_messages_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO row_count_deltas (key, n)
    SELECT k, SUM(d) FROM (
        SELECT 'status:' || o.status AS k, -1 AS d FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.status <> n.status
        UNION ALL
        SELECT 'status:' || n.status, 1 FROM old_rows o JOIN new_rows n ON n.id = o.id WHERE o.status <> n.status
    ) x GROUP BY k HAVING SUM(d) <> 0;
    RETURN NULL;
END $$;
CREATE FUNCTION count_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO row_count_deltas (key, n) SELECT 'jobs', COUNT(*) FROM new_rows HAVING COUNT(*) > 0;
    RETURN NULL;
END $$;
CREATE FUNCTION count_jobs_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO row_count_deltas (key, n) SELECT 'jobs', -COUNT(*) FROM old_rows HAVING COUNT(*) > 0;
    RETURN NULL;
END $$;

CREATE TRIGGER messages_count_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_messages_inserted();
CREATE TRIGGER messages_count_delete AFTER DELETE ON messages
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION count_messages_deleted();
CREATE TRIGGER messages_count_status AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_messages_status();
CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_jobs_inserted();
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION count_jobs_deleted();
