//! What the sandbox provider "delivered": the full MIME, readable through the API.

use crate::{Db, Result, Tx, on, on_tx};
use courierx_domain::{ProjectId, TenantId};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SandboxRow {
    pub id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub message_id: String,
    pub raw: String,
    pub from_addr: String,
    pub to_addrs: String,
    pub subject: String,
    pub received_at: i64,
}

impl Db {
    pub async fn list_sandbox(
        &self,
        tenant: TenantId,
        project: ProjectId,
        limit: i64,
    ) -> Result<Vec<SandboxRow>> {
        Ok(on!(self, p => sqlx::query_as::<_, SandboxRow>(
            "SELECT id, tenant_id, project_id, message_id, raw, from_addr, to_addrs, subject, received_at FROM sandbox_messages
             WHERE tenant_id = $1 AND project_id = $2 ORDER BY id DESC LIMIT $3")
            .bind(tenant.to_string()).bind(project.to_string()).bind(limit).fetch_all(p).await)?)
    }
}

pub(crate) async fn insert(tx: &mut Tx, s: &SandboxRow) -> Result<()> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO sandbox_messages (id, tenant_id, project_id, message_id, raw, from_addr, to_addrs, subject, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .bind(&s.id).bind(&s.tenant_id).bind(&s.project_id).bind(&s.message_id).bind(&s.raw).bind(&s.from_addr)
        .bind(&s.to_addrs).bind(&s.subject).bind(s.received_at).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}
