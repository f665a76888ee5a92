-- Routing rules per project: conditions and provider targets are JSON validated by the API.
CREATE TABLE routes (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    priority BIGINT NOT NULL,
    conditions TEXT NOT NULL,
    targets TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX routes_project ON routes (tenant_id, project_id, priority);

-- Per-project email defaults and policy (default_from, reply_to, custom_headers, tags, allowed_from_domains).
ALTER TABLE projects ADD COLUMN email_settings TEXT NOT NULL DEFAULT '{}';
ALTER TABLE projects ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;

-- Delivery options that apply to any provider type (pacing, circuit breaker).
ALTER TABLE providers ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
