//! Projects and their API keys. Every query is scoped by tenant.

use crate::{Db, Result, StoreError, on};
use courierx_domain::{ApiKeyId, Millis, ProjectId, ProviderId, TenantId};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProjectRow {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub slug: String,
    pub default_provider_id: Option<String>,
    pub created_at: i64,
    /// JSON of the project's email settings (validated by the API).
    pub email_settings: String,
    pub updated_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub prefix: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

const PROJECT_COLS: &str =
    "id, tenant_id, name, slug, default_provider_id, created_at, email_settings, updated_at";

impl Db {
    /// Creates a project; a slug already used in the tenant gets a numeric suffix.
    pub async fn create_project(
        &self,
        tenant: TenantId,
        id: ProjectId,
        name: &str,
        slug: &str,
        default_provider: Option<ProviderId>,
        now: Millis,
    ) -> Result<ProjectRow> {
        let mut candidate = slug.to_string();
        for n in 2..1000 {
            let r = on!(self, p => sqlx::query(
                "INSERT INTO projects (id, tenant_id, name, slug, default_provider_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)")
                .bind(id.to_string()).bind(tenant.to_string()).bind(name).bind(&candidate)
                .bind(default_provider.map(|p| p.to_string())).bind(now).execute(p).await.map(|r| r.rows_affected()));
            match r.map_err(|e| StoreError::unique(e, "slug_taken")) {
                Ok(_) => {
                    return Ok(ProjectRow {
                        id: id.to_string(),
                        tenant_id: tenant.to_string(),
                        name: name.to_string(),
                        slug: candidate,
                        default_provider_id: default_provider.map(|p| p.to_string()),
                        created_at: now,
                        email_settings: "{}".into(),
                        updated_at: now,
                    });
                }
                Err(StoreError::Conflict(_)) => candidate = format!("{slug}-{n}"),
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict("slug_taken"))
    }

    pub async fn list_projects(&self, tenant: TenantId) -> Result<Vec<ProjectRow>> {
        let sql = format!(
            "SELECT {PROJECT_COLS} FROM projects WHERE tenant_id = $1 AND deleted_at IS NULL ORDER BY id"
        );
        Ok(
            on!(self, p => sqlx::query_as::<_, ProjectRow>(sqlx::AssertSqlSafe(sql)).bind(tenant.to_string()).fetch_all(p).await)?,
        )
    }

    pub async fn get_project(&self, tenant: TenantId, id: ProjectId) -> Result<Option<ProjectRow>> {
        let sql = format!(
            "SELECT {PROJECT_COLS} FROM projects WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL"
        );
        Ok(
            on!(self, p => sqlx::query_as::<_, ProjectRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant.to_string()).bind(id.to_string()).fetch_optional(p).await)?,
        )
    }

    pub async fn update_project(
        &self,
        tenant: TenantId,
        id: ProjectId,
        name: Option<&str>,
        default_provider: Option<Option<ProviderId>>,
        email_settings: Option<&str>,
        now: Millis,
    ) -> Result<Option<ProjectRow>> {
        let set_provider = default_provider.is_some();
        let provider = default_provider.flatten().map(|p| p.to_string());
        let n = on!(self, p => sqlx::query(
            "UPDATE projects SET name = COALESCE($1, name),
                default_provider_id = CASE WHEN $2 THEN $3 ELSE default_provider_id END,
                email_settings = COALESCE($4, email_settings), updated_at = $5
             WHERE tenant_id = $6 AND id = $7 AND deleted_at IS NULL")
            .bind(name).bind(set_provider).bind(provider).bind(email_settings).bind(now)
            .bind(tenant.to_string()).bind(id.to_string())
            .execute(p).await.map(|r| r.rows_affected()))?;
        if n == 0 {
            return Ok(None);
        }
        self.get_project(tenant, id).await
    }

    /// Soft-deletes a project (its messages stay for history) and revokes its keys.
    pub async fn delete_project(
        &self,
        tenant: TenantId,
        id: ProjectId,
        now: Millis,
    ) -> Result<bool> {
        let n = on!(self, p => sqlx::query("UPDATE projects SET deleted_at = $1 WHERE tenant_id = $2 AND id = $3 AND deleted_at IS NULL")
            .bind(now).bind(tenant.to_string()).bind(id.to_string()).execute(p).await.map(|r| r.rows_affected()))?;
        on!(self, p => sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE tenant_id = $2 AND project_id = $3 AND revoked_at IS NULL")
            .bind(now).bind(tenant.to_string()).bind(id.to_string()).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn create_api_key(
        &self,
        tenant: TenantId,
        project: ProjectId,
        id: ApiKeyId,
        name: &str,
        prefix: &str,
        key_hash: &str,
        expires_at: Option<Millis>,
        now: Millis,
    ) -> Result<ApiKeyRow> {
        on!(self, p => sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, project_id, name, prefix, key_hash, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(id.to_string()).bind(tenant.to_string()).bind(project.to_string()).bind(name).bind(prefix)
            .bind(key_hash).bind(now).bind(expires_at).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(ApiKeyRow {
            id: id.to_string(),
            project_id: project.to_string(),
            name: name.to_string(),
            prefix: prefix.to_string(),
            created_at: now,
            expires_at,
            last_used_at: None,
            revoked_at: None,
        })
    }

    pub async fn list_api_keys(
        &self,
        tenant: TenantId,
        project: ProjectId,
    ) -> Result<Vec<ApiKeyRow>> {
        Ok(on!(self, p => sqlx::query_as::<_, ApiKeyRow>(
            "SELECT id, project_id, name, prefix, created_at, expires_at, last_used_at, revoked_at
             FROM api_keys WHERE tenant_id = $1 AND project_id = $2 ORDER BY id")
            .bind(tenant.to_string()).bind(project.to_string()).fetch_all(p).await)?)
    }

    /// Revokes a key; false when no such key exists in this tenant's project.
    pub async fn revoke_api_key(
        &self,
        tenant: TenantId,
        project: ProjectId,
        id: ApiKeyId,
        now: Millis,
    ) -> Result<bool> {
        let n = on!(self, p => sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE tenant_id = $2 AND project_id = $3 AND id = $4")
            .bind(now).bind(tenant.to_string()).bind(project.to_string()).bind(id.to_string())
            .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }
}
