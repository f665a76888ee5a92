//! Idempotency keys: the saved response of the first request with a key, for 24 hours.

use crate::{Db, Result, Tx, on, on_tx};
use courierx_domain::{Millis, ProjectId};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IdempotencyRow {
    pub request_hash: String,
    pub response_status: i64,
    pub response_body: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewIdempotency {
    pub project_id: String,
    pub key: String,
    pub tenant_id: String,
    pub request_hash: String,
    pub response_status: i64,
    pub response_body: String,
    pub expires_at: Millis,
}

impl Db {
    pub async fn get_idempotency(
        &self,
        project: ProjectId,
        key: &str,
        now: Millis,
    ) -> Result<Option<IdempotencyRow>> {
        Ok(on!(self, p => sqlx::query_as::<_, IdempotencyRow>(
            "SELECT request_hash, response_status, response_body, expires_at FROM idempotency_keys
             WHERE project_id = $1 AND key = $2 AND expires_at > $3")
            .bind(project.to_string()).bind(key).bind(now).fetch_optional(p).await)?)
    }
}

pub async fn prune_idempotency(tx: &mut Tx, now: Millis) -> Result<u64> {
    Ok(
        on_tx!(tx, c => sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= $1").bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))?,
    )
}

/// Claims the key inside the caller's transaction; false when a live row already holds it.
pub(crate) async fn claim_key(tx: &mut Tx, k: &NewIdempotency, now: Millis) -> Result<bool> {
    on_tx!(tx, c => sqlx::query("DELETE FROM idempotency_keys WHERE project_id = $1 AND key = $2 AND expires_at <= $3")
        .bind(&k.project_id).bind(&k.key).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    let n = on_tx!(tx, c => sqlx::query(
        "INSERT INTO idempotency_keys (project_id, key, tenant_id, request_hash, response_status, response_body, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (project_id, key) DO NOTHING")
        .bind(&k.project_id).bind(&k.key).bind(&k.tenant_id).bind(&k.request_hash).bind(k.response_status)
        .bind(&k.response_body).bind(k.expires_at).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}
