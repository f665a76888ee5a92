//! What providers (and CourierX's own tracking) report after a message is sent: stored once per
//! provider event id, matched to the message by provider message id, and summarised per
//! recipient. The engine decides what an event means; this module only reads and writes.

use crate::{Db, Result, Tx, on, on_tx};
use courierx_domain::Millis;

/// A normalised event to store.
#[derive(Debug, Clone)]
pub struct NewProviderEvent {
    pub tenant_id: String,
    pub provider_id: String,
    pub event_id: String,
    pub provider_message_id: String,
    pub recipient: Option<String>,
    pub kind: &'static str,
    pub bounce_type: Option<&'static str>,
    pub detail: serde_json::Value,
    pub occurred_at: Millis,
    pub received_at: Millis,
}

/// A stored event, as the engine applies it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProviderEventRow {
    pub id: String,
    pub tenant_id: String,
    pub provider_id: String,
    pub provider_message_id: String,
    pub recipient: Option<String>,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub bounce_type: Option<String>,
    pub detail: String,
    pub occurred_at: i64,
}

/// The parts of a message an event needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventTarget {
    pub id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub status: String,
    pub category: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecipientRow {
    pub email: String,
    pub status: String,
    pub detail: String,
    pub updated_at: i64,
}

const EVENT_COLS: &str = "id, tenant_id, provider_id, provider_message_id, recipient, type, bounce_type, detail, occurred_at";

/// Stores an event unless the provider already reported it; `None` means a duplicate.
pub async fn insert_provider_event(tx: &mut Tx, e: &NewProviderEvent) -> Result<Option<String>> {
    let id = crate::users::uuid_v7();
    let n = on_tx!(tx, c => sqlx::query(
        "INSERT INTO provider_events (id, tenant_id, provider_id, event_id, provider_message_id, recipient, type, bounce_type, detail, occurred_at, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (provider_id, event_id) DO NOTHING")
        .bind(&id).bind(&e.tenant_id).bind(&e.provider_id).bind(&e.event_id).bind(&e.provider_message_id)
        .bind(&e.recipient).bind(e.kind).bind(e.bounce_type).bind(crate::to_json(&e.detail))
        .bind(e.occurred_at).bind(e.received_at)
        .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok((n == 1).then_some(id))
}

/// Records a single-use webhook token; false when it was already used (a replay).
pub async fn claim_nonce(tx: &mut Tx, provider_id: &str, nonce: &str, at: Millis) -> Result<bool> {
    let n = on_tx!(tx, c => sqlx::query(
        "INSERT INTO webhook_nonces (provider_id, nonce, received_at) VALUES ($1, $2, $3)
         ON CONFLICT (provider_id, nonce) DO NOTHING")
        .bind(provider_id).bind(nonce).bind(at).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// The tenant's message a provider accepted under `provider_message_id`.
pub async fn find_target(
    tx: &mut Tx,
    tenant: &str,
    provider_id: &str,
    provider_message_id: &str,
) -> Result<Option<EventTarget>> {
    Ok(on_tx!(tx, c => sqlx::query_as::<_, EventTarget>(
        "SELECT id, tenant_id, project_id, status, category FROM messages
         WHERE provider_message_id = $1 AND tenant_id = $2 AND provider_id = $3")
        .bind(provider_message_id).bind(tenant).bind(provider_id).fetch_optional(&mut *c).await)?)
}

/// A message by id for tracking events (the signed token names it; the tenant comes from it).
pub async fn find_target_by_id(tx: &mut Tx, message: &str) -> Result<Option<EventTarget>> {
    Ok(on_tx!(tx, c => sqlx::query_as::<_, EventTarget>(
        "SELECT id, tenant_id, project_id, status, category FROM messages WHERE id = $1")
        .bind(message).fetch_optional(&mut *c).await)?)
}

/// Claims a stored event for its message; false when it was already matched (another process
/// applied it first: on Postgres the second UPDATE waits for the first to commit, then finds
/// `message_id` set), so the caller must not apply it again.
pub async fn mark_matched(tx: &mut Tx, event_row: &str, message: &str) -> Result<bool> {
    let n = on_tx!(tx, c => sqlx::query(
        "UPDATE provider_events SET message_id = $1 WHERE id = $2 AND message_id IS NULL")
        .bind(message).bind(event_row).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

pub async fn recipient_status(tx: &mut Tx, message: &str, email: &str) -> Result<Option<String>> {
    Ok(on_tx!(tx, c => sqlx::query_scalar::<_, String>(
        "SELECT status FROM message_recipients WHERE message_id = $1 AND email = $2")
        .bind(message).bind(email).fetch_optional(&mut *c).await)?)
}

pub async fn set_recipient_status(
    tx: &mut Tx,
    tenant: &str,
    message: &str,
    email: &str,
    status: &str,
    detail: &serde_json::Value,
    at: Millis,
) -> Result<()> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO message_recipients (message_id, email, tenant_id, status, detail, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (message_id, email) DO UPDATE SET status = excluded.status, detail = excluded.detail, updated_at = excluded.updated_at")
        .bind(message).bind(email).bind(tenant).bind(status).bind(crate::to_json(detail)).bind(at)
        .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Moves a message from `from` to `to`; false when it was no longer in `from` (the caller
/// read it in the same transaction, so this only guards against a concurrent writer).
pub async fn set_message_status(
    tx: &mut Tx,
    message: &str,
    from: &str,
    to: &str,
    at: Millis,
) -> Result<bool> {
    let n = on_tx!(tx, c => sqlx::query(
        "UPDATE messages SET status = $1, updated_at = $2 WHERE id = $3 AND status = $4")
        .bind(to).bind(at).bind(message).bind(from).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Soft bounces of `email` in the project's messages since `since`.
pub async fn count_soft_bounces(
    tx: &mut Tx,
    tenant: &str,
    project: &str,
    email: &str,
    since: Millis,
) -> Result<i64> {
    Ok(on_tx!(tx, c => sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM provider_events e JOIN messages m ON m.id = e.message_id
         WHERE e.tenant_id = $1 AND e.recipient = $2 AND e.type = 'bounced' AND e.bounce_type = 'soft'
           AND e.occurred_at >= $3 AND m.project_id = $4")
        .bind(tenant).bind(email).bind(since).bind(project).fetch_one(&mut *c).await)?)
}

impl Db {
    /// Stored events (received at or after `since`) whose message has appeared since, oldest
    /// first.
    pub async fn matchable_events(
        &self,
        since: Millis,
        limit: i64,
    ) -> Result<Vec<ProviderEventRow>> {
        let sql = format!(
            "SELECT {} FROM provider_events e WHERE e.message_id IS NULL AND e.received_at >= $2 AND EXISTS (
                SELECT 1 FROM messages m WHERE m.provider_message_id = e.provider_message_id
                  AND m.tenant_id = e.tenant_id AND m.provider_id = e.provider_id)
             ORDER BY e.received_at LIMIT $1",
            EVENT_COLS
                .split(", ")
                .map(|c| format!("e.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(
            on!(self, p => sqlx::query_as::<_, ProviderEventRow>(sqlx::AssertSqlSafe(sql))
            .bind(limit).bind(since).fetch_all(p).await)?,
        )
    }
}
