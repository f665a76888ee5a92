//! Retention purges. Each call deletes at most one small batch in its own short transaction, so
//! housekeeping never holds SQLite's write lock (or many PostgreSQL row locks) for long; callers
//! repeat until a call deletes nothing. Cutoffs are passed in (`now` minus a window), never read
//! from the clock, so tests can run a pass "in the future".

use crate::{Db, Result, Tx, on, on_tx};
use courierx_domain::Millis;

/// Statuses after which nothing more happens to a message but late provider reports. The text
/// repeats the predicate of the `messages_retention` index (SQLite only uses a partial index
/// when the query carries the same terms).
const TERMINAL: &str = "('sent', 'delivered', 'bounced', 'complained', 'failed', 'cancelled', 'suppressed', 'expired')";

/// What one message batch removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgedMessages {
    pub messages: u64,
    pub message_events: u64,
    pub attachment_blobs: u64,
}

/// Rows that expire on their own, each purged by age (see [`Db::purge_expired`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiring {
    /// Raw MIME the sandbox provider kept, by `received_at`.
    SandboxMessages,
    /// Provider events that found their message, by `received_at`.
    MatchedProviderEvents,
    /// Provider events that never found one, by `received_at`.
    UnmatchedProviderEvents,
    /// Refresh tokens past `expires_at`.
    ExpiredRefreshTokens,
    /// Refresh tokens revoked before the cutoff (used ones stay until they expire: presenting
    /// a used token again is how reuse is detected).
    RevokedRefreshTokens,
    /// Idempotency keys past `expires_at` (their TTL).
    IdempotencyKeys,
    /// Webhook replay tokens, by `received_at`.
    WebhookNonces,
    /// Failed logins, by `at`.
    LoginFailures,
}

impl Expiring {
    /// Table, time column and extra filter (ending in `AND`, or empty).
    fn spec(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::SandboxMessages => ("sandbox_messages", "received_at", ""),
            Self::MatchedProviderEvents => (
                "provider_events",
                "received_at",
                "message_id IS NOT NULL AND",
            ),
            Self::UnmatchedProviderEvents => {
                ("provider_events", "received_at", "message_id IS NULL AND")
            }
            Self::ExpiredRefreshTokens => ("refresh_tokens", "expires_at", ""),
            Self::RevokedRefreshTokens => {
                ("refresh_tokens", "revoked_at", "revoked_at IS NOT NULL AND")
            }
            Self::IdempotencyKeys => ("idempotency_keys", "expires_at", ""),
            Self::WebhookNonces => ("webhook_nonces", "received_at", ""),
            Self::LoginFailures => ("login_failures", "at", ""),
        }
    }
}

impl Db {
    /// Deletes up to `limit` terminal messages last changed before `updated_before`, with their
    /// events, attachment links, recipient states and sandbox copies, then the attachment blobs
    /// no message links any more. A message with a job is never taken.
    pub async fn purge_messages(
        &self,
        updated_before: Millis,
        limit: i64,
    ) -> Result<PurgedMessages> {
        let mut tx = self.begin().await?;
        // The outer terms re-check each row as it is deleted (PostgreSQL: a late provider event
        // may have moved it on since the subquery chose it).
        let sql = format!(
            "DELETE FROM messages WHERE id IN (
                SELECT id FROM messages WHERE status IN {TERMINAL} AND updated_at < $1
                  AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.message_id = messages.id)
                ORDER BY updated_at LIMIT $2)
             AND status IN {TERMINAL} AND updated_at < $1
             RETURNING id"
        );
        let ids: Vec<String> = on_tx!(&mut tx, c => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(updated_before).bind(limit).fetch_all(&mut *c).await)?;
        if ids.is_empty() {
            return Ok(PurgedMessages::default());
        }
        let message_events = delete_where_in(&mut tx, "message_events", "message_id", &ids).await?;
        delete_where_in(&mut tx, "message_recipients", "message_id", &ids).await?;
        delete_where_in(&mut tx, "sandbox_messages", "message_id", &ids).await?;
        let links = unlink_attachments(&mut tx, &ids).await?;
        let attachment_blobs = release_blobs(&mut tx, links).await?;
        tx.commit().await?;
        Ok(PurgedMessages {
            messages: ids.len() as u64,
            message_events,
            attachment_blobs,
        })
    }

    /// Deletes up to about `limit` rows of `what` older than `before` (rows sharing the batch's
    /// last timestamp go too).
    pub async fn purge_expired(&self, what: Expiring, before: Millis, limit: i64) -> Result<u64> {
        let (table, col, filter) = what.spec();
        // The batch is a prefix of the time index: everything up to the limit-th oldest time.
        let sql = format!(
            "DELETE FROM {table} WHERE {filter} {col} <= (
                SELECT MAX({col}) FROM (
                    SELECT {col} FROM {table} WHERE {filter} {col} < $1 ORDER BY {col} LIMIT $2) oldest)"
        );
        Ok(
            on!(self, p => sqlx::query(sqlx::AssertSqlSafe(sql)).bind(before).bind(limit)
            .execute(p).await.map(|r| r.rows_affected()))?,
        )
    }
}

/// `DELETE FROM {table} WHERE {col} IN (ids…)`.
pub(crate) async fn delete_where_in(
    tx: &mut Tx,
    table: &'static str,
    col: &'static str,
    ids: &[String],
) -> Result<u64> {
    Ok(on_tx!(tx, c => {
        let mut q = sqlx::QueryBuilder::new(format!("DELETE FROM {table} WHERE {col} IN ("));
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(id.clone());
        }
        q.push(")");
        q.build().execute(&mut *c).await.map(|r| r.rows_affected())
    })?)
}

/// Removes the messages' attachment links, returning the blobs they pointed at.
pub(crate) async fn unlink_attachments(
    tx: &mut Tx,
    ids: &[String],
) -> Result<Vec<(String, String)>> {
    Ok(on_tx!(tx, c => {
        let mut q = sqlx::QueryBuilder::new("DELETE FROM message_attachments WHERE message_id IN (");
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(id.clone());
        }
        q.push(") RETURNING tenant_id, sha256");
        q.build_query_as::<(String, String)>().fetch_all(&mut *c).await
    })?)
}

/// Deletes those of the blobs that no attachment row links any more. On PostgreSQL a writer
/// that linked the same content in a transaction still open at this moment is not seen; that
/// window (one accept transaction re-sending the exact bytes of a blob being released) is the
/// one a lock taken by the writer would close.
pub(crate) async fn release_blobs(tx: &mut Tx, mut blobs: Vec<(String, String)>) -> Result<u64> {
    blobs.sort();
    blobs.dedup();
    let mut deleted = 0;
    for (tenant, sha) in &blobs {
        deleted += on_tx!(tx, c => sqlx::query(
            "DELETE FROM attachment_blobs WHERE tenant_id = $1 AND sha256 = $2
               AND NOT EXISTS (SELECT 1 FROM message_attachments a WHERE a.tenant_id = $1 AND a.sha256 = $2)")
            .bind(tenant).bind(sha).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    }
    Ok(deleted)
}
