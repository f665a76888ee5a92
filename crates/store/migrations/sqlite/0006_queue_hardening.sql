-- Queue hardening: fenced claims, fair lanes, priority and TTL.
--
-- `fence` grows by one on every claim and never goes back: an outcome is written only while
-- the job's fence is still the one its worker was handed, so a worker whose lease ran out
-- can no longer change the job, its message or its events.
ALTER TABLE jobs ADD COLUMN fence BIGINT NOT NULL DEFAULT 0;
-- 0 high, 1 normal, 2 low.
ALTER TABLE jobs ADD COLUMN priority BIGINT NOT NULL DEFAULT 1;
-- A job not claimed by then ends `expired` without calling a provider.
ALTER TABLE jobs ADD COLUMN expires_at BIGINT;
-- `tenant/project/priority`: claims take a few due jobs from every lane and interleave them,
-- so one tenant's (or project's) backlog cannot keep another's jobs waiting.
ALTER TABLE jobs ADD COLUMN lane TEXT NOT NULL DEFAULT '';
UPDATE jobs SET lane = tenant_id || '/' || COALESCE((SELECT m.project_id FROM messages m WHERE m.id = jobs.message_id), '') || '/1';
CREATE INDEX jobs_lane ON jobs (lane, run_at);
CREATE INDEX jobs_leased ON jobs (lease_until) WHERE lease_until IS NOT NULL;
CREATE INDEX jobs_expiring ON jobs (expires_at) WHERE expires_at IS NOT NULL;

ALTER TABLE messages ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal';
ALTER TABLE messages ADD COLUMN expires_at BIGINT;
