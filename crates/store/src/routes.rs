//! Routing rules of a project. Conditions and targets are JSON the engine parses; every query is
//! scoped by tenant and project.

use crate::{Db, Result, on};
use courierx_domain::{ProjectId, RouteId, TenantId};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RouteRow {
    pub id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub name: String,
    pub priority: i64,
    pub conditions: String,
    pub targets: String,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLS: &str = "id, tenant_id, project_id, name, priority, conditions, targets, enabled, created_at, updated_at";

impl Db {
    pub async fn create_route(&self, r: &RouteRow) -> Result<()> {
        on!(self, p => sqlx::query(
            "INSERT INTO routes (id, tenant_id, project_id, name, priority, conditions, targets, enabled, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind(&r.id).bind(&r.tenant_id).bind(&r.project_id).bind(&r.name).bind(r.priority)
            .bind(&r.conditions).bind(&r.targets).bind(r.enabled).bind(r.created_at).bind(r.updated_at)
            .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The project's routes in evaluation order: lowest priority first, then oldest.
    pub async fn list_routes(&self, tenant: TenantId, project: ProjectId) -> Result<Vec<RouteRow>> {
        let sql = format!(
            "SELECT {COLS} FROM routes WHERE tenant_id = $1 AND project_id = $2 ORDER BY priority, created_at, id"
        );
        Ok(
            on!(self, p => sqlx::query_as::<_, RouteRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant.to_string()).bind(project.to_string()).fetch_all(p).await)?,
        )
    }

    pub async fn get_route(
        &self,
        tenant: TenantId,
        project: ProjectId,
        id: RouteId,
    ) -> Result<Option<RouteRow>> {
        let sql = format!(
            "SELECT {COLS} FROM routes WHERE tenant_id = $1 AND project_id = $2 AND id = $3"
        );
        Ok(
            on!(self, p => sqlx::query_as::<_, RouteRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant.to_string()).bind(project.to_string()).bind(id.to_string()).fetch_optional(p).await)?,
        )
    }

    pub async fn update_route(&self, r: &RouteRow) -> Result<bool> {
        let n = on!(self, p => sqlx::query(
            "UPDATE routes SET name = $1, priority = $2, conditions = $3, targets = $4, enabled = $5, updated_at = $6
             WHERE tenant_id = $7 AND project_id = $8 AND id = $9")
            .bind(&r.name).bind(r.priority).bind(&r.conditions).bind(&r.targets).bind(r.enabled)
            .bind(r.updated_at).bind(&r.tenant_id).bind(&r.project_id).bind(&r.id)
            .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    pub async fn delete_route(
        &self,
        tenant: TenantId,
        project: ProjectId,
        id: RouteId,
    ) -> Result<bool> {
        let n = on!(self, p => sqlx::query("DELETE FROM routes WHERE tenant_id = $1 AND project_id = $2 AND id = $3")
            .bind(tenant.to_string()).bind(project.to_string()).bind(id.to_string())
            .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }
}
