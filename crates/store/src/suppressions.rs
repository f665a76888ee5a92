//! The suppression list: per project, addresses CourierX will not send to (for all mail, or for
//! one category after an unsubscribe). Every addition and release is written to an audit table.
//! Addresses are kept and matched lowercased: providers and mailbox hosts treat them so.

use crate::{Db, Result, Tx, on, on_tx};
use courierx_domain::{Millis, ProjectId, TenantId};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SuppressionRow {
    pub email: String,
    pub scope: String,
    pub reason: String,
    pub source_message_id: Option<String>,
    pub detail: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub email: String,
    pub scope: String,
    pub action: String,
    pub reason: String,
    pub actor: String,
    pub at: i64,
}

/// One suppression to add.
#[derive(Debug, Clone)]
pub struct NewSuppression {
    pub tenant_id: String,
    pub project_id: String,
    pub email: String,
    /// '' for all mail, else a category.
    pub scope: String,
    pub reason: String,
    pub source_message_id: Option<String>,
    pub detail: serde_json::Value,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    /// Who added it: `system`, `api_key:<id>`, `recipient` (an unsubscribe).
    pub actor: String,
}

const COLS: &str = "email, scope, reason, source_message_id, detail, created_at, expires_at";

/// Adds a suppression. An existing entry is replaced only when `replace` is set (a manual add
/// may change reason or expiry) or when it has expired; returns whether anything changed.
pub async fn add_suppression(tx: &mut Tx, s: &NewSuppression, replace: bool) -> Result<bool> {
    let n = on_tx!(tx, c => sqlx::query(
        "INSERT INTO suppressions (tenant_id, project_id, email, scope, reason, source_message_id, detail, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (project_id, email, scope) DO UPDATE SET reason = excluded.reason,
             source_message_id = excluded.source_message_id, detail = excluded.detail,
             created_at = excluded.created_at, expires_at = excluded.expires_at
         WHERE $10 OR (suppressions.expires_at IS NOT NULL AND suppressions.expires_at <= excluded.created_at)")
        .bind(&s.tenant_id).bind(&s.project_id).bind(s.email.to_lowercase()).bind(&s.scope).bind(&s.reason)
        .bind(&s.source_message_id).bind(crate::to_json(&s.detail)).bind(s.created_at).bind(s.expires_at)
        .bind(replace)
        .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    if n == 0 {
        return Ok(false);
    }
    audit(
        tx,
        &s.tenant_id,
        &s.project_id,
        &s.email.to_lowercase(),
        &s.scope,
        "added",
        &s.reason,
        &s.actor,
        s.created_at,
    )
    .await?;
    Ok(true)
}

/// A release of an address from the list.
#[derive(Debug, Clone)]
pub struct Release<'a> {
    pub tenant_id: &'a str,
    pub project_id: &'a str,
    pub email: &'a str,
    /// Only this scope; `None`: every entry of the address.
    pub scope: Option<&'a str>,
    pub reason: &'a str,
    pub actor: &'a str,
    pub at: Millis,
}

/// Removes suppressions and audits each removal; returns how many there were.
pub async fn release_suppression(tx: &mut Tx, r: &Release<'_>) -> Result<u64> {
    let email = r.email.to_lowercase();
    let scopes: Vec<String> = on_tx!(tx, c => sqlx::query_scalar::<_, String>(
        "DELETE FROM suppressions WHERE tenant_id = $1 AND project_id = $2 AND email = $3 AND ($4 IS NULL OR scope = $4)
         RETURNING scope")
        .bind(r.tenant_id).bind(r.project_id).bind(&email).bind(r.scope).fetch_all(&mut *c).await)?;
    for s in &scopes {
        audit(
            tx,
            r.tenant_id,
            r.project_id,
            &email,
            s,
            "released",
            r.reason,
            r.actor,
            r.at,
        )
        .await?;
    }
    Ok(scopes.len() as u64)
}

#[allow(clippy::too_many_arguments)]
async fn audit(
    tx: &mut Tx,
    tenant: &str,
    project: &str,
    email: &str,
    scope: &str,
    action: &str,
    reason: &str,
    actor: &str,
    at: Millis,
) -> Result<()> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO suppression_audit (id, tenant_id, project_id, email, scope, action, reason, actor, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .bind(crate::users::uuid_v7()).bind(tenant).bind(project).bind(email).bind(scope)
        .bind(action).bind(reason).bind(actor).bind(at)
        .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Filters for listing suppressions.
pub struct SuppressionFilter<'a> {
    pub reason: Option<&'a str>,
    pub email: Option<&'a str>,
    /// Only entries after this `(email, scope)` (the cursor).
    pub after: Option<(String, String)>,
    pub limit: i64,
    pub now: Millis,
}

impl Db {
    /// Active (unexpired) suppressions, ordered by email then scope.
    pub async fn list_suppressions(
        &self,
        tenant: TenantId,
        project: ProjectId,
        f: &SuppressionFilter<'_>,
    ) -> Result<Vec<SuppressionRow>> {
        let (after_email, after_scope) = f.after.clone().unzip();
        let email = f.email.map(str::to_lowercase);
        let sql = format!(
            "SELECT {COLS} FROM suppressions
             WHERE tenant_id = $1 AND project_id = $2 AND ($3 IS NULL OR reason = $3) AND ($4 IS NULL OR email = $4)
               AND (expires_at IS NULL OR expires_at > $5)
               AND ($6 IS NULL OR email > $6 OR (email = $6 AND scope > $7))
             ORDER BY email, scope LIMIT $8"
        );
        Ok(
            on!(self, p => sqlx::query_as::<_, SuppressionRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant.to_string()).bind(project.to_string()).bind(f.reason).bind(email).bind(f.now)
            .bind(after_email).bind(after_scope).bind(f.limit).fetch_all(p).await)?,
        )
    }

    /// Which of `emails` may not receive a message of `category` now: entries for all mail,
    /// and (for a categorised message) that category's unsubscribes.
    pub async fn suppressed_among(
        &self,
        tenant: &str,
        project: &str,
        emails: &[String],
        category: Option<&str>,
        now: Millis,
    ) -> Result<Vec<SuppressionRow>> {
        if emails.is_empty() {
            return Ok(Vec::new());
        }
        // A JSON array keeps this one statement on both backends whatever the recipient count.
        let lowered: Vec<String> = emails.iter().map(|e| e.to_lowercase()).collect();
        let list = crate::to_json(&lowered);
        let members = match self {
            Db::Sqlite(_) => "SELECT value FROM json_each($3)",
            Db::Postgres(_) => "SELECT jsonb_array_elements_text($3::jsonb)",
        };
        let sql = format!(
            "SELECT {COLS} FROM suppressions
             WHERE tenant_id = $1 AND project_id = $2 AND email IN ({members})
               AND (scope = '' OR scope = $4) AND (expires_at IS NULL OR expires_at > $5)
             ORDER BY email, scope"
        );
        Ok(
            on!(self, p => sqlx::query_as::<_, SuppressionRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant).bind(project).bind(list).bind(category.unwrap_or("")).bind(now)
            .fetch_all(p).await)?,
        )
    }

    /// The audit trail of one address in a project, oldest first.
    pub async fn audit_for(
        &self,
        tenant: TenantId,
        project: ProjectId,
        email: &str,
    ) -> Result<Vec<AuditRow>> {
        Ok(on!(self, p => sqlx::query_as::<_, AuditRow>(
            "SELECT email, scope, action, reason, actor, at FROM suppression_audit
             WHERE tenant_id = $1 AND project_id = $2 AND email = $3 ORDER BY at, id")
            .bind(tenant.to_string()).bind(project.to_string()).bind(email.to_lowercase()).fetch_all(p).await)?)
    }
}
