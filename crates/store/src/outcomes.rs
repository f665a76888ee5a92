//! Recording what a delivery attempt came to. Every write is fenced: the job row is changed
//! first, only while it still carries the fence its claim handed out, and the message and its
//! events are written only if it did. A worker whose lease ran out (and whose job another worker
//! may hold by now) therefore changes nothing; the caller counts such stale outcomes.
//! Jobs are locked before messages here, as in claims, so PostgreSQL transactions never wait on
//! each other in a cycle.

use crate::messages::{NewEvent, insert_event};
use crate::sandbox::SandboxRow;
use crate::{Result, Tx, on_tx};
use courierx_domain::Millis;
use std::collections::HashSet;

/// What happened to one delivery attempt.
#[derive(Debug, Clone)]
pub enum Outcome {
    Sent {
        job_id: String,
        provider_message_id: Option<String>,
        sandbox: Option<SandboxRow>,
    },
    Retry {
        job_id: String,
        run_at: Millis,
        error: String,
    },
    Failed {
        job_id: String,
        error: String,
    },
    /// Not tried (the provider's pacing has no slot soon): back on the queue for `run_at`,
    /// without counting as an attempt.
    Defer {
        job_id: String,
        run_at: Millis,
    },
    /// Every recipient is on the suppression list: nothing was sent, no provider was called.
    Suppressed {
        job_id: String,
    },
    /// The message reached its `expires_at` unsent: no provider was called.
    Expired {
        job_id: String,
    },
}

impl Outcome {
    pub fn job_id(&self) -> &str {
        match self {
            Outcome::Sent { job_id, .. }
            | Outcome::Retry { job_id, .. }
            | Outcome::Failed { job_id, .. }
            | Outcome::Defer { job_id, .. }
            | Outcome::Suppressed { job_id }
            | Outcome::Expired { job_id } => job_id,
        }
    }
}

/// A recipient left out of a send because it is suppressed.
#[derive(Debug, Clone)]
pub struct SuppressedRecipient {
    pub email: String,
    pub reason: String,
    /// '' when suppressed for all mail, else the category.
    pub scope: String,
}

#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub tenant_id: String,
    pub message_id: String,
    /// The provider of the try that decided the outcome.
    pub provider_id: Option<String>,
    pub attempt: i64,
    /// The fence the claim handed out: the outcome is written only while the job still has it.
    pub fence: i64,
    pub at: Millis,
    pub latency_ms: i64,
    /// Earlier tries of this attempt that failed over to the next provider.
    pub failovers: Vec<ProviderTry>,
    /// Recipients dropped by the suppression list (recorded once the outcome is final).
    pub suppressed: Vec<SuppressedRecipient>,
    pub outcome: Outcome,
}

/// One provider tried within an attempt that did not decide it (recorded as a `provider_try` event).
#[derive(Debug, Clone)]
pub struct ProviderTry {
    pub provider_id: String,
    /// `transient`, `provider_down`, `circuit_open` or `unusable`.
    pub outcome: &'static str,
    pub latency_ms: i64,
    pub error: String,
}

/// A successful send with nothing else to record (no failover tries, no suppressed
/// recipients, no sandbox copy): most outcomes of a delivery run.
pub(crate) fn is_plain_send(r: &AttemptRecord) -> bool {
    matches!(r.outcome, Outcome::Sent { sandbox: None, .. })
        && r.failovers.is_empty()
        && r.suppressed.is_empty()
}

/// The `sent` event's detail, however the send is recorded.
fn sent_detail(r: &AttemptRecord, provider_message_id: &Option<String>) -> serde_json::Value {
    serde_json::json!({"attempt": r.attempt, "latency_ms": r.latency_ms, "provider_message_id": provider_message_id})
}

/// Records plain sends (see [`is_plain_send`]) exactly as [`record_one`] would, with three
/// statements however many there are instead of three per send (each a hand-off to SQLite's
/// worker thread or a round trip to Postgres). The rows travel as one JSON array parameter.
/// Returns the jobs whose fence still held (the others' outcomes were stale and wrote nothing).
pub(crate) async fn record_plain_sends(
    tx: &mut Tx,
    recs: &[&AttemptRecord],
) -> Result<HashSet<String>> {
    let rows: Vec<serde_json::Value> = recs
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Sent {
                job_id,
                provider_message_id,
                ..
            } => Some(serde_json::json!({
                "id": r.message_id,
                "tenant_id": r.tenant_id,
                "job_id": job_id,
                "fence": r.fence,
                "provider_id": r.provider_id,
                "pmid": provider_message_id,
                "attempt": r.attempt,
                "at": r.at,
                "event_id": crate::users::uuid_v7(),
                "detail": crate::to_json(&sent_detail(r, provider_message_id)),
            })),
            _ => None,
        })
        .collect();
    let (delete, update, insert) = match tx {
        Tx::Sqlite(_) => (
            "DELETE FROM jobs WHERE id IN (SELECT value ->> '$.job_id' FROM json_each($1))
               AND (id || ':' || fence) IN (SELECT (value ->> '$.job_id') || ':' || (value ->> '$.fence') FROM json_each($1))
             RETURNING id",
            "UPDATE messages SET status = 'sent', provider_id = v.provider_id, provider_message_id = v.pmid,
                 attempts = v.attempt, sent_at = v.at, updated_at = v.at, last_error = NULL
             FROM (SELECT value ->> '$.id' AS id, value ->> '$.provider_id' AS provider_id, value ->> '$.pmid' AS pmid,
                          value ->> '$.attempt' AS attempt, value ->> '$.at' AS at FROM json_each($1)) AS v
             WHERE messages.id = v.id AND messages.status IN ('queued', 'sending')",
            "INSERT INTO message_events (id, tenant_id, message_id, type, at, provider_id, recipient, detail)
             SELECT value ->> '$.event_id', value ->> '$.tenant_id', value ->> '$.id', 'sent', value ->> '$.at',
                    value ->> '$.provider_id', NULL, value ->> '$.detail' FROM json_each($1)",
        ),
        Tx::Postgres(_) => (
            "DELETE FROM jobs j USING jsonb_to_recordset($1::jsonb) AS v(job_id text, fence bigint)
             WHERE j.id = v.job_id AND j.fence = v.fence RETURNING j.id",
            "UPDATE messages AS m SET status = 'sent', provider_id = v.provider_id, provider_message_id = v.pmid,
                 attempts = v.attempt, sent_at = v.at, updated_at = v.at, last_error = NULL
             FROM jsonb_to_recordset($1::jsonb) AS v(id text, provider_id text, pmid text, attempt bigint, at bigint)
             WHERE m.id = v.id AND m.status IN ('queued', 'sending')",
            "INSERT INTO message_events (id, tenant_id, message_id, type, at, provider_id, recipient, detail)
             SELECT v.event_id, v.tenant_id, v.id, 'sent', v.at, v.provider_id, NULL, v.detail
             FROM jsonb_to_recordset($1::jsonb) AS v(event_id text, tenant_id text, id text, at bigint, provider_id text, detail text)",
        ),
    };
    let json = crate::to_json(&rows);
    let held: HashSet<String> = on_tx!(tx, c => sqlx::query_scalar::<_, String>(delete).bind(&json).fetch_all(&mut *c).await)?
        .into_iter()
        .collect();
    if held.is_empty() {
        return Ok(held);
    }
    let json = if held.len() == rows.len() {
        json
    } else {
        let live: Vec<&serde_json::Value> = rows
            .iter()
            .filter(|r| r["job_id"].as_str().is_some_and(|j| held.contains(j)))
            .collect();
        crate::to_json(&live)
    };
    for sql in [update, insert] {
        on_tx!(tx, c => sqlx::query(sql).bind(&json).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    }
    Ok(held)
}

/// Records one outcome; `false` when the job no longer carries the record's fence (nothing
/// was written).
pub(crate) async fn record_one(tx: &mut Tx, r: &AttemptRecord) -> Result<bool> {
    let job_id = r.outcome.job_id();
    let held = match &r.outcome {
        Outcome::Retry { run_at, .. } => on_tx!(tx, c => sqlx::query(
            "UPDATE jobs SET run_at = $1, lease_until = NULL, locked_by = NULL WHERE id = $2 AND fence = $3")
            .bind(run_at).bind(job_id).bind(r.fence).execute(&mut *c).await.map(|r| r.rows_affected()))?,
        Outcome::Defer { run_at, .. } => on_tx!(tx, c => sqlx::query(
            "UPDATE jobs SET run_at = $1, lease_until = NULL, locked_by = NULL, attempts = attempts - 1 WHERE id = $2 AND fence = $3")
            .bind(run_at).bind(job_id).bind(r.fence).execute(&mut *c).await.map(|r| r.rows_affected()))?,
        _ => on_tx!(tx, c => sqlx::query("DELETE FROM jobs WHERE id = $1 AND fence = $2")
            .bind(job_id).bind(r.fence).execute(&mut *c).await.map(|r| r.rows_affected()))?,
    };
    if held == 0 {
        return Ok(false);
    }
    let event = |kind: &'static str, detail: serde_json::Value| NewEvent {
        tenant_id: r.tenant_id.clone(),
        message_id: r.message_id.clone(),
        kind,
        at: r.at,
        provider_id: r.provider_id.clone(),
        recipient: None,
        detail,
    };
    for t in &r.failovers {
        insert_event(
            tx,
            &NewEvent {
                provider_id: Some(t.provider_id.clone()),
                ..event(
                    courierx_domain::EventType::ProviderTry.as_str(),
                    serde_json::json!({"attempt": r.attempt, "outcome": t.outcome, "latency_ms": t.latency_ms, "error": t.error}),
                )
            },
        )
        .await?;
    }
    if matches!(
        r.outcome,
        Outcome::Sent { .. } | Outcome::Failed { .. } | Outcome::Suppressed { .. }
    ) {
        for d in &r.suppressed {
            let detail = serde_json::json!({"reason": d.reason, "scope": d.scope});
            insert_event(
                tx,
                &NewEvent {
                    recipient: Some(d.email.clone()),
                    provider_id: None,
                    ..event(
                        courierx_domain::EventType::Suppressed.as_str(),
                        detail.clone(),
                    )
                },
            )
            .await?;
            crate::provider_events::set_recipient_status(
                tx,
                &r.tenant_id,
                &r.message_id,
                &d.email,
                "suppressed",
                &detail,
                r.at,
            )
            .await?;
        }
    }
    match &r.outcome {
        Outcome::Suppressed { .. } => {
            on_tx!(tx, c => sqlx::query(
                "UPDATE messages SET status = 'suppressed', attempts = $1, updated_at = $2
                 WHERE id = $3 AND status IN ('queued', 'sending')")
                .bind(r.attempt).bind(r.at).bind(&r.message_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
        }
        Outcome::Expired { .. } => {
            let n = on_tx!(tx, c => sqlx::query(
                "UPDATE messages SET status = 'expired', last_error = $1, updated_at = $2
                 WHERE id = $3 AND status IN ('scheduled', 'queued', 'sending')")
                .bind("not sent before its expires_at").bind(r.at).bind(&r.message_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            if n > 0 {
                insert_event(
                    tx,
                    &event(
                        courierx_domain::EventType::Expired.as_str(),
                        serde_json::json!({"attempts": r.attempt, "reason": "not sent before its expires_at; no provider was called"}),
                    ),
                )
                .await?;
            }
        }
        Outcome::Sent {
            provider_message_id,
            sandbox,
            ..
        } => {
            on_tx!(tx, c => sqlx::query(
                "UPDATE messages SET status = 'sent', provider_id = $1, provider_message_id = $2, attempts = $3, sent_at = $4,
                    updated_at = $4, last_error = NULL WHERE id = $5 AND status IN ('queued', 'sending')")
                .bind(&r.provider_id).bind(provider_message_id).bind(r.attempt).bind(r.at).bind(&r.message_id)
                .execute(&mut *c).await.map(|r| r.rows_affected()))?;
            insert_event(tx, &event("sent", sent_detail(r, provider_message_id))).await?;
            if let Some(s) = sandbox {
                crate::sandbox::insert(tx, s).await?;
            }
        }
        Outcome::Retry { run_at, error, .. } => {
            on_tx!(tx, c => sqlx::query(
                "UPDATE messages SET status = 'queued', provider_id = $1, attempts = $2, last_error = $3, updated_at = $4
                 WHERE id = $5 AND status IN ('queued', 'sending')")
                .bind(&r.provider_id).bind(r.attempt).bind(error).bind(r.at).bind(&r.message_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            insert_event(
                tx,
                &event(
                    "attempt_failed",
                    serde_json::json!({"attempt": r.attempt, "error": error, "latency_ms": r.latency_ms, "next_retry_at": run_at}),
                ),
            )
            .await?;
        }
        Outcome::Defer { .. } => {
            on_tx!(tx, c => sqlx::query(
                "UPDATE messages SET status = 'queued', updated_at = $1 WHERE id = $2 AND status = 'sending'")
                .bind(r.at).bind(&r.message_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
        }
        Outcome::Failed { error, .. } => {
            on_tx!(tx, c => sqlx::query(
                "UPDATE messages SET status = 'failed', provider_id = $1, attempts = $2, last_error = $3, updated_at = $4
                 WHERE id = $5 AND status IN ('scheduled', 'queued', 'sending')")
                .bind(&r.provider_id).bind(r.attempt).bind(error).bind(r.at).bind(&r.message_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            insert_event(tx, &event("failed", serde_json::json!({"attempt": r.attempt, "error": error, "latency_ms": r.latency_ms})))
                .await?;
        }
    }
    Ok(true)
}
