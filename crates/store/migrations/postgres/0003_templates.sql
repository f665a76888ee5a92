-- Email templates per project. The row holds identity and publication state; content lives in
-- immutable versions (one per save), each holding one content row per locale.
CREATE TABLE templates (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    slug TEXT NOT NULL,
    default_locale TEXT NOT NULL,
    -- draft | published | archived
    state TEXT NOT NULL,
    published_version BIGINT,
    latest_version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX templates_project_slug ON templates (tenant_id, project_id, slug);

-- `layout` is the slug of the project template whose HTML wraps this version's.
CREATE TABLE template_versions (
    template_id TEXT NOT NULL REFERENCES templates(id),
    version BIGINT NOT NULL,
    layout TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (template_id, version)
);

-- `html` is the compiled output when `mjml` is set.
CREATE TABLE template_contents (
    template_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    locale TEXT NOT NULL,
    subject TEXT NOT NULL,
    html TEXT,
    mjml TEXT,
    text TEXT,
    PRIMARY KEY (template_id, version, locale),
    FOREIGN KEY (template_id, version) REFERENCES template_versions (template_id, version)
);
