//! Provider configurations. Public settings are JSON; secrets are stored only as ciphertext.

use crate::{Db, Result, StoreError, on};
use courierx_domain::{Millis, ProviderId, TenantId};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProviderRow {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub config_public: String,
    pub secret_ciphertext: Option<String>,
    pub key_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// Type-independent delivery options as JSON (pacing, circuit breaker).
    pub options: String,
}

const COLS: &str = "id, tenant_id, name, type, config_public, secret_ciphertext, key_version, created_at, updated_at, options";

impl Db {
    pub async fn create_provider(&self, row: &ProviderRow) -> Result<()> {
        on!(self, p => sqlx::query(
            "INSERT INTO providers (id, tenant_id, name, type, config_public, secret_ciphertext, key_version, created_at, updated_at, options)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind(&row.id).bind(&row.tenant_id).bind(&row.name).bind(&row.kind).bind(&row.config_public)
            .bind(&row.secret_ciphertext).bind(row.key_version).bind(row.created_at).bind(row.updated_at).bind(&row.options)
            .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn list_providers(&self, tenant: TenantId) -> Result<Vec<ProviderRow>> {
        let sql = format!(
            "SELECT {COLS} FROM providers WHERE tenant_id = $1 AND deleted_at IS NULL ORDER BY id"
        );
        Ok(
            on!(self, p => sqlx::query_as::<_, ProviderRow>(sqlx::AssertSqlSafe(sql)).bind(tenant.to_string()).fetch_all(p).await)?,
        )
    }

    pub async fn get_provider(
        &self,
        tenant: TenantId,
        id: ProviderId,
    ) -> Result<Option<ProviderRow>> {
        let sql = format!(
            "SELECT {COLS} FROM providers WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL"
        );
        Ok(
            on!(self, p => sqlx::query_as::<_, ProviderRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant.to_string()).bind(id.to_string()).fetch_optional(p).await)?,
        )
    }

    /// A live provider by id alone: for its inbound webhook, where the signature (checked with
    /// the provider's own key) is what authenticates and the tenant comes from the row.
    pub async fn provider_by_id(&self, id: ProviderId) -> Result<Option<ProviderRow>> {
        let sql = format!("SELECT {COLS} FROM providers WHERE id = $1 AND deleted_at IS NULL");
        Ok(
            on!(self, p => sqlx::query_as::<_, ProviderRow>(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string()).fetch_optional(p).await)?,
        )
    }

    pub async fn update_provider(&self, row: &ProviderRow) -> Result<bool> {
        let n = on!(self, p => sqlx::query(
            "UPDATE providers SET name = $1, config_public = $2, secret_ciphertext = $3, key_version = $4, updated_at = $5, options = $6
             WHERE tenant_id = $7 AND id = $8 AND deleted_at IS NULL")
            .bind(&row.name).bind(&row.config_public).bind(&row.secret_ciphertext).bind(row.key_version)
            .bind(row.updated_at).bind(&row.options).bind(&row.tenant_id).bind(&row.id).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Deletes a provider unless a live project still sends through it by default (409).
    pub async fn delete_provider(
        &self,
        tenant: TenantId,
        id: ProviderId,
        now: Millis,
    ) -> Result<bool> {
        let used: i64 = on!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM projects WHERE tenant_id = $1 AND default_provider_id = $2 AND deleted_at IS NULL")
            .bind(tenant.to_string()).bind(id.to_string()).fetch_one(p).await)?;
        // Ids are UUIDs, so a substring match on the targets JSON cannot hit another id.
        let routed: i64 = on!(self, p => sqlx::query_scalar(
            "SELECT COUNT(*) FROM routes WHERE tenant_id = $1 AND targets LIKE $2")
            .bind(tenant.to_string()).bind(format!("%{id}%")).fetch_one(p).await)?;
        if used > 0 || routed > 0 {
            return Err(StoreError::Conflict("provider_in_use"));
        }
        let n = on!(self, p => sqlx::query("UPDATE providers SET deleted_at = $1 WHERE tenant_id = $2 AND id = $3 AND deleted_at IS NULL")
            .bind(now).bind(tenant.to_string()).bind(id.to_string()).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// The tenant's built-in sandbox provider (created at registration).
    pub async fn sandbox_provider(&self, tenant: TenantId) -> Result<Option<ProviderRow>> {
        let sql = format!(
            "SELECT {COLS} FROM providers WHERE tenant_id = $1 AND type = 'sandbox' AND deleted_at IS NULL ORDER BY id LIMIT 1"
        );
        Ok(
            on!(self, p => sqlx::query_as::<_, ProviderRow>(sqlx::AssertSqlSafe(sql)).bind(tenant.to_string()).fetch_optional(p).await)?,
        )
    }
}
