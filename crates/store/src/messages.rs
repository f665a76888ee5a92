//! Messages and their event timeline.

use crate::{Db, Result, Tx, on, on_tx};
use courierx_domain::{MessageId, Millis, ProjectId, TenantId};

/// A message as stored. Address lists, headers, tags and metadata are JSON text.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRow {
    pub id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub channel: String,
    pub status: String,
    pub from_addr: String,
    pub to_addrs: String,
    pub cc_addrs: String,
    pub bcc_addrs: String,
    pub reply_to: Option<String>,
    pub subject: String,
    pub html: Option<String>,
    pub text_body: Option<String>,
    pub headers: String,
    pub tags: String,
    pub metadata: String,
    pub idempotency_key: Option<String>,
    pub provider_id: Option<String>,
    pub provider_message_id: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub sent_at: Option<i64>,
    pub attachment_count: i64,
    pub send_at: Option<i64>,
    /// JSON `{"slug","version","locale"}` of the template the message was rendered from.
    pub template: Option<String>,
    pub category: Option<String>,
    /// `high`, `normal` or `low`.
    pub priority: String,
    /// Not sent by then: the message ends `expired`.
    pub expires_at: Option<i64>,
}

/// Everything a message's detail view shows, read together (see [`Db::message_detail`]).
#[derive(Debug, Clone)]
pub struct MessageDetailRows {
    pub message: MessageRow,
    pub attachments: Vec<AttachmentMeta>,
    pub events: Vec<EventRow>,
    pub recipients: Vec<crate::provider_events::RecipientRow>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub id: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub at: i64,
    pub provider_id: Option<String>,
    pub recipient: Option<String>,
    pub detail: String,
}

/// A summary row for listings (no bodies).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageSummaryRow {
    pub id: String,
    pub project_id: String,
    pub status: String,
    pub from_addr: String,
    pub to_addrs: String,
    pub subject: String,
    pub tags: String,
    pub provider_id: Option<String>,
    pub attempts: i64,
    pub created_at: i64,
    pub sent_at: Option<i64>,
}

pub(crate) const MESSAGE_COLS: &str = "id, tenant_id, project_id, channel, status, from_addr, to_addrs, cc_addrs, bcc_addrs, reply_to, subject, html, text_body, headers, tags, metadata, idempotency_key, provider_id, provider_message_id, attempts, last_error, created_at, updated_at, sent_at, attachment_count, send_at, template, category, priority, expires_at";

pub struct MessageFilter<'a> {
    pub project: Option<ProjectId>,
    pub status: Option<&'a str>,
    pub tag: Option<&'a str>,
    /// Only ids strictly older than this (the cursor).
    pub before: Option<MessageId>,
    pub limit: i64,
}

impl Db {
    pub async fn get_message(
        &self,
        tenant: TenantId,
        project: Option<ProjectId>,
        id: MessageId,
    ) -> Result<Option<MessageRow>> {
        let sql = format!(
            "SELECT {MESSAGE_COLS} FROM messages WHERE tenant_id = $1 AND id = $2 AND ($3 IS NULL OR project_id = $3)"
        );
        Ok(
            on!(self, p => sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant.to_string()).bind(id.to_string()).bind(project.map(|p| p.to_string())).fetch_optional(p).await)?,
        )
    }

    /// A message with its attachments, events and recipient states, read from one snapshot so a
    /// status and the event that set it are never seen apart.
    pub async fn message_detail(
        &self,
        tenant: TenantId,
        project: Option<ProjectId>,
        id: MessageId,
    ) -> Result<Option<MessageDetailRows>> {
        let mut tx = self.begin_snapshot().await?;
        let sql = format!(
            "SELECT {MESSAGE_COLS} FROM messages WHERE tenant_id = $1 AND id = $2 AND ($3 IS NULL OR project_id = $3)"
        );
        let Some(message) = on_tx!(&mut tx, c => sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant.to_string()).bind(id.to_string()).bind(project.map(|p| p.to_string()))
            .fetch_optional(&mut *c).await)?
        else {
            return Ok(None);
        };
        let attachments = if message.attachment_count > 0 {
            on_tx!(&mut tx, c => sqlx::query_as::<_, AttachmentMeta>(
                "SELECT position, filename, content_type, content_id, size FROM message_attachments
                 WHERE tenant_id = $1 AND message_id = $2 ORDER BY position")
                .bind(&message.tenant_id).bind(&message.id).fetch_all(&mut *c).await)?
        } else {
            Vec::new()
        };
        let events = on_tx!(&mut tx, c => sqlx::query_as::<_, EventRow>(
            "SELECT id, type, at, provider_id, recipient, detail FROM message_events
             WHERE tenant_id = $1 AND message_id = $2 ORDER BY at, id")
            .bind(&message.tenant_id).bind(&message.id).fetch_all(&mut *c).await)?;
        let recipients = on_tx!(&mut tx, c => sqlx::query_as::<_, crate::provider_events::RecipientRow>(
            "SELECT email, status, detail, updated_at FROM message_recipients
             WHERE tenant_id = $1 AND message_id = $2 ORDER BY email")
            .bind(&message.tenant_id).bind(&message.id).fetch_all(&mut *c).await)?;
        tx.commit().await?;
        Ok(Some(MessageDetailRows {
            message,
            attachments,
            events,
            recipients,
        }))
    }

    /// Loads a message for delivery (the worker already holds the job's lease).
    pub async fn load_message_for_delivery(&self, id: &str) -> Result<Option<MessageRow>> {
        let sql = format!("SELECT {MESSAGE_COLS} FROM messages WHERE id = $1");
        Ok(
            on!(self, p => sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(p).await)?,
        )
    }

    pub async fn list_messages(
        &self,
        tenant: TenantId,
        f: &MessageFilter<'_>,
    ) -> Result<Vec<MessageSummaryRow>> {
        // Tags are a JSON array of strings; match the quoted, JSON-escaped tag inside it.
        let tag_pattern = f.tag.map(|t| {
            let quoted = serde_json::to_string(t).unwrap_or_default();
            format!(
                "%{}%",
                quoted
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            )
        });
        Ok(on!(self, p => sqlx::query_as::<_, MessageSummaryRow>(
            "SELECT id, project_id, status, from_addr, to_addrs, subject, tags, provider_id, attempts, created_at, sent_at
             FROM messages
             WHERE tenant_id = $1 AND ($2 IS NULL OR project_id = $2) AND ($3 IS NULL OR status = $3)
               AND ($4 IS NULL OR tags LIKE $4 ESCAPE '\\') AND ($5 IS NULL OR id < $5)
             ORDER BY id DESC LIMIT $6")
            .bind(tenant.to_string()).bind(f.project.map(|p| p.to_string())).bind(f.status)
            .bind(&tag_pattern).bind(f.before.map(|b| b.to_string())).bind(f.limit)
            .fetch_all(p).await)?)
    }
}

/// An event to append to a message's timeline.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub tenant_id: String,
    pub message_id: String,
    pub kind: &'static str,
    pub at: Millis,
    pub provider_id: Option<String>,
    pub recipient: Option<String>,
    pub detail: serde_json::Value,
}

pub async fn insert_event(tx: &mut Tx, e: &NewEvent) -> Result<()> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO message_events (id, tenant_id, message_id, type, at, provider_id, recipient, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(crate::users::uuid_v7()).bind(&e.tenant_id).bind(&e.message_id).bind(e.kind).bind(e.at)
        .bind(&e.provider_id).bind(&e.recipient).bind(crate::to_json(&e.detail)).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// An attachment of a stored message, without its bytes.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttachmentMeta {
    pub position: i64,
    pub filename: String,
    pub content_type: String,
    pub content_id: Option<String>,
    pub size: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttachmentRow {
    pub filename: String,
    pub content_type: String,
    pub content_id: Option<String>,
    pub data: Vec<u8>,
}

impl Db {
    /// A message's attachments with their bytes, read for one delivery attempt.
    pub async fn attachments(&self, tenant: &str, message: &str) -> Result<Vec<AttachmentRow>> {
        Ok(on!(self, p => sqlx::query_as::<_, AttachmentRow>(
            "SELECT a.filename, a.content_type, a.content_id, b.data FROM message_attachments a
             JOIN attachment_blobs b ON b.tenant_id = a.tenant_id AND b.sha256 = a.sha256
             WHERE a.tenant_id = $1 AND a.message_id = $2 ORDER BY a.position")
            .bind(tenant).bind(message).fetch_all(p).await)?)
    }
}

/// Cancels a message that is not being sent: its job goes first (the order claims lock in, so
/// the two never deadlock on Postgres), and only while the message is still cancellable, since
/// the caller's transaction may be a group commit that must not be rolled back. False when it is
/// already sending or finished (or not this tenant's).
pub async fn cancel_message(
    tx: &mut Tx,
    tenant: TenantId,
    id: MessageId,
    now: Millis,
) -> Result<bool> {
    on_tx!(tx, c => sqlx::query(
        "DELETE FROM jobs WHERE tenant_id = $1 AND message_id = $2 AND (lease_until IS NULL OR lease_until < $3)
           AND EXISTS (SELECT 1 FROM messages WHERE tenant_id = $1 AND id = $2 AND status IN ('scheduled', 'queued'))")
        .bind(tenant.to_string()).bind(id.to_string()).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    let n = on_tx!(tx, c => sqlx::query(
        "UPDATE messages SET status = 'cancelled', updated_at = $1
         WHERE tenant_id = $2 AND id = $3 AND status IN ('scheduled', 'queued')")
        .bind(now).bind(tenant.to_string()).bind(id.to_string()).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    if n == 0 {
        return Ok(false);
    }
    insert_event(
        tx,
        &NewEvent {
            tenant_id: tenant.to_string(),
            message_id: id.to_string(),
            kind: courierx_domain::EventType::Cancelled.as_str(),
            at: now,
            provider_id: None,
            recipient: None,
            detail: serde_json::json!({}),
        },
    )
    .await?;
    Ok(true)
}

/// Serialises folding of repeat events per message on Postgres (concurrent hits of one pixel
/// would otherwise both see no earlier event, or both bump the same count). SQLite's writes all
/// come from the one writer, so they are serial already.
pub async fn lock_message_events(tx: &mut Tx, message: &str) -> Result<()> {
    if let Tx::Postgres(t) = tx {
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(EVENT_FOLD_LOCK)
            .bind(message)
            .execute(&mut **t)
            .await?;
    }
    Ok(())
}

/// The advisory lock class of [`lock_message_events`].
const EVENT_FOLD_LOCK: i32 = 0x0CE1;

/// The message's events of `kind` for `recipient` (`None` matches events without one) at or
/// after `since`, newest first.
pub async fn recent_events(
    tx: &mut Tx,
    tenant: &str,
    message: &str,
    kind: &str,
    recipient: Option<&str>,
    since: Millis,
) -> Result<Vec<EventRow>> {
    Ok(on_tx!(tx, c => sqlx::query_as::<_, EventRow>(
        "SELECT id, type, at, provider_id, recipient, detail FROM message_events
         WHERE tenant_id = $1 AND message_id = $2 AND type = $3 AND COALESCE(recipient, '') = COALESCE($4, '') AND at >= $5
         ORDER BY at DESC, id DESC LIMIT 100")
        .bind(tenant).bind(message).bind(kind).bind(recipient).bind(since).fetch_all(&mut *c).await)?)
}

pub async fn set_event_detail(
    tx: &mut Tx,
    tenant: &str,
    event: &str,
    detail: &serde_json::Value,
) -> Result<()> {
    on_tx!(tx, c => sqlx::query("UPDATE message_events SET detail = $1 WHERE tenant_id = $2 AND id = $3")
        .bind(crate::to_json(detail)).bind(tenant).bind(event).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}
