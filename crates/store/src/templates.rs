//! Email templates of a project: a row per template (identity, default locale, publication) and
//! immutable versions, each with one content row per locale. Every query is scoped by tenant
//! (versions and contents through their template, which callers load scoped first).

use crate::{Db, Result, StoreError, Tx, on, on_tx};
use courierx_domain::{Millis, ProjectId, TenantId};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TemplateRow {
    pub id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub name: String,
    pub slug: String,
    pub default_locale: String,
    /// `draft`, `published` or `archived`.
    pub state: String,
    pub published_version: Option<i64>,
    pub latest_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VersionRow {
    pub version: i64,
    pub layout: Option<String>,
    pub created_at: i64,
    /// The version's locales, comma-separated in locale order.
    pub locales: String,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ContentRow {
    pub locale: String,
    pub subject: String,
    pub html: Option<String>,
    pub mjml: Option<String>,
    pub text: Option<String>,
}

const COLS: &str = "id, tenant_id, project_id, name, slug, default_locale, state, published_version, latest_version, created_at, updated_at";

async fn insert_version(
    tx: &mut Tx,
    template_id: &str,
    version: i64,
    layout: Option<&str>,
    contents: &[ContentRow],
    now: Millis,
) -> Result<()> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO template_versions (template_id, version, layout, created_at) VALUES ($1, $2, $3, $4)")
        .bind(template_id).bind(version).bind(layout).bind(now)
        .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    for ct in contents {
        on_tx!(tx, c => sqlx::query(
            "INSERT INTO template_contents (template_id, version, locale, subject, html, mjml, text)
             VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(template_id).bind(version).bind(&ct.locale).bind(&ct.subject)
            .bind(&ct.html).bind(&ct.mjml).bind(&ct.text)
            .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    }
    Ok(())
}

impl Db {
    /// Creates a template with its version 1. A taken slug is `Conflict("slug_taken")`.
    pub async fn create_template(
        &self,
        t: &TemplateRow,
        layout: Option<&str>,
        contents: &[ContentRow],
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let inserted = on_tx!(&mut tx, c => sqlx::query(
            "INSERT INTO templates (id, tenant_id, project_id, name, slug, default_locale, state, published_version, latest_version, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
            .bind(&t.id).bind(&t.tenant_id).bind(&t.project_id).bind(&t.name).bind(&t.slug)
            .bind(&t.default_locale).bind(&t.state).bind(t.published_version).bind(t.latest_version)
            .bind(t.created_at).bind(t.updated_at)
            .execute(&mut *c).await.map(|r| r.rows_affected()));
        inserted.map_err(|e| StoreError::unique(e, "slug_taken"))?;
        insert_version(
            &mut tx,
            &t.id,
            t.latest_version,
            layout,
            contents,
            t.created_at,
        )
        .await?;
        tx.commit().await
    }

    /// Whether the project has a template with this slug (for deriving a free one).
    pub async fn template_slug_taken(
        &self,
        tenant: TenantId,
        project: ProjectId,
        slug: &str,
    ) -> Result<bool> {
        let n: i64 = on!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM templates WHERE tenant_id = $1 AND project_id = $2 AND slug = $3")
            .bind(tenant.to_string()).bind(project.to_string()).bind(slug).fetch_one(p).await)?;
        Ok(n > 0)
    }

    pub async fn list_templates(
        &self,
        tenant: TenantId,
        project: ProjectId,
    ) -> Result<Vec<TemplateRow>> {
        let sql = format!(
            "SELECT {COLS} FROM templates WHERE tenant_id = $1 AND project_id = $2 ORDER BY slug"
        );
        Ok(
            on!(self, p => sqlx::query_as::<_, TemplateRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant.to_string()).bind(project.to_string()).fetch_all(p).await)?,
        )
    }

    pub async fn get_template(
        &self,
        tenant: TenantId,
        project: ProjectId,
        slug: &str,
    ) -> Result<Option<TemplateRow>> {
        let sql = format!(
            "SELECT {COLS} FROM templates WHERE tenant_id = $1 AND project_id = $2 AND slug = $3"
        );
        Ok(
            on!(self, p => sqlx::query_as::<_, TemplateRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant.to_string()).bind(project.to_string()).bind(slug).fetch_optional(p).await)?,
        )
    }

    /// Versions of a template (loaded tenant-scoped by the caller), newest first.
    pub async fn list_template_versions(&self, template_id: &str) -> Result<Vec<VersionRow>> {
        Ok(on!(self, p => sqlx::query_as::<_, VersionRow>(
            "SELECT v.version, v.layout, v.created_at,
                    COALESCE((SELECT string_agg(c.locale, ',' ORDER BY c.locale) FROM template_contents c
                              WHERE c.template_id = v.template_id AND c.version = v.version), '') AS locales
             FROM template_versions v WHERE v.template_id = $1 ORDER BY v.version DESC")
            .bind(template_id).fetch_all(p).await)?)
    }

    /// One version's layout and content (every locale), or None when there is no such version.
    pub async fn get_template_version(
        &self,
        template_id: &str,
        version: i64,
    ) -> Result<Option<(Option<String>, Vec<ContentRow>)>> {
        let layout: Option<Option<String>> = on!(self, p => sqlx::query_scalar(
            "SELECT layout FROM template_versions WHERE template_id = $1 AND version = $2")
            .bind(template_id).bind(version).fetch_optional(p).await)?;
        let Some(layout) = layout else {
            return Ok(None);
        };
        let contents = on!(self, p => sqlx::query_as::<_, ContentRow>(
            "SELECT locale, subject, html, mjml, text FROM template_contents
             WHERE template_id = $1 AND version = $2 ORDER BY locale")
            .bind(template_id).bind(version).fetch_all(p).await)?;
        Ok(Some((layout, contents)))
    }

    /// Saves `t` (name, default locale, state, updated_at) with a new version `t.latest_version`.
    /// Another save that got there first is `Conflict("template_changed")`.
    pub async fn save_template_version(
        &self,
        t: &TemplateRow,
        layout: Option<&str>,
        contents: &[ContentRow],
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let n = on_tx!(&mut tx, c => sqlx::query(
            "UPDATE templates SET name = $1, default_locale = $2, state = $3, latest_version = $4, updated_at = $5
             WHERE tenant_id = $6 AND id = $7 AND latest_version = $8")
            .bind(&t.name).bind(&t.default_locale).bind(&t.state).bind(t.latest_version).bind(t.updated_at)
            .bind(&t.tenant_id).bind(&t.id).bind(t.latest_version - 1)
            .execute(&mut *c).await.map(|r| r.rows_affected()))?;
        if n != 1 {
            return Err(StoreError::Conflict("template_changed"));
        }
        insert_version(
            &mut tx,
            &t.id,
            t.latest_version,
            layout,
            contents,
            t.updated_at,
        )
        .await?;
        tx.commit().await
    }

    /// Updates a template's own fields (name, default locale, state, published version).
    pub async fn update_template(&self, t: &TemplateRow) -> Result<bool> {
        let n = on!(self, p => sqlx::query(
            "UPDATE templates SET name = $1, default_locale = $2, state = $3, published_version = $4, updated_at = $5
             WHERE tenant_id = $6 AND project_id = $7 AND id = $8")
            .bind(&t.name).bind(&t.default_locale).bind(&t.state).bind(t.published_version).bind(t.updated_at)
            .bind(&t.tenant_id).bind(&t.project_id).bind(&t.id)
            .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    pub async fn delete_template(
        &self,
        tenant: TenantId,
        project: ProjectId,
        id: &str,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let owned: i64 = on_tx!(&mut tx, c => sqlx::query_scalar(
            "SELECT COUNT(*) FROM templates WHERE tenant_id = $1 AND project_id = $2 AND id = $3")
            .bind(tenant.to_string()).bind(project.to_string()).bind(id).fetch_one(&mut *c).await)?;
        if owned == 0 {
            return Ok(false);
        }
        for sql in [
            "DELETE FROM template_contents WHERE template_id = $1",
            "DELETE FROM template_versions WHERE template_id = $1",
            "DELETE FROM templates WHERE id = $1",
        ] {
            on_tx!(&mut tx, c => sqlx::query(sql).bind(id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Slugs of the project's other templates whose latest or published version uses `slug` as
    /// their layout.
    pub async fn templates_using_layout(
        &self,
        tenant: TenantId,
        project: ProjectId,
        slug: &str,
    ) -> Result<Vec<String>> {
        Ok(on!(self, p => sqlx::query_scalar(
            "SELECT DISTINCT t.slug FROM templates t JOIN template_versions v ON v.template_id = t.id
               AND (v.version = t.latest_version OR v.version = t.published_version)
             WHERE t.tenant_id = $1 AND t.project_id = $2 AND v.layout = $3 AND t.slug <> $3 ORDER BY t.slug")
            .bind(tenant.to_string()).bind(project.to_string()).bind(slug).fetch_all(p).await)?)
    }
}
