//! Accepting a message: one transaction writes the message, its `queued` event, its delivery job
//! and (with an `Idempotency-Key`) the saved response, before the API answers 202.

use crate::Engine;
use courierx_domain::{
    HeaderName, HeaderValue, JobId, Mailbox, MessageId, MessageStatus, ProjectId, TenantId, now_ms,
};
use courierx_store::StoreError;
use courierx_store::idempotency::NewIdempotency;
use courierx_store::messages::MessageRow;
use courierx_store::writer::{AcceptOutcome, NewMessage};
use serde_json::{Map, Value, json};

/// An email send request that passed validation at the edge.
#[derive(Debug, Clone)]
pub struct ValidMessage {
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub bcc: Vec<Mailbox>,
    pub reply_to: Option<Mailbox>,
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
}

/// An `Idempotency-Key` with the hash of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    pub key: String,
    pub request_hash: String,
}

/// The response to give: fresh, or the saved one replayed for a repeated key.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub status: u16,
    pub body: Value,
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyConflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn addrs(list: &[Mailbox]) -> String {
    Value::Array(list.iter().map(|m| Value::String(m.to_string())).collect()).to_string()
}

impl Engine {
    async fn replay_or_conflict(
        &self,
        project: ProjectId,
        claim: &IdempotencyClaim,
    ) -> Result<Option<Accepted>, AcceptError> {
        let Some(row) = self
            .db
            .get_idempotency(project, &claim.key, now_ms())
            .await?
        else {
            return Ok(None);
        };
        if row.request_hash != claim.request_hash {
            return Err(AcceptError::IdempotencyConflict);
        }
        Ok(Some(Accepted {
            status: row.response_status as u16,
            body: serde_json::from_str(&row.response_body).unwrap_or(Value::Null),
            replayed: true,
        }))
    }

    pub async fn accept_message(
        &self,
        tenant: TenantId,
        project: ProjectId,
        msg: ValidMessage,
        idem: Option<IdempotencyClaim>,
    ) -> Result<Accepted, AcceptError> {
        if let Some(claim) = &idem
            && let Some(replay) = self.replay_or_conflict(project, claim).await?
        {
            return Ok(replay);
        }
        let now = now_ms();
        let id = MessageId::new();
        let body = json!({"id": id.to_string(), "status": MessageStatus::Queued.as_str(), "created_at": rfc3339(now)});
        let headers: Map<String, Value> = msg
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    Value::String(v.as_str().to_string()),
                )
            })
            .collect();
        let row = MessageRow {
            id: id.to_string(),
            tenant_id: tenant.to_string(),
            project_id: project.to_string(),
            channel: "email".into(),
            status: MessageStatus::Queued.as_str().into(),
            from_addr: msg.from.to_string(),
            to_addrs: addrs(&msg.to),
            cc_addrs: addrs(&msg.cc),
            bcc_addrs: addrs(&msg.bcc),
            reply_to: msg.reply_to.as_ref().map(|m| m.to_string()),
            subject: msg.subject,
            html: msg.html,
            text_body: msg.text,
            headers: Value::Object(headers).to_string(),
            tags: Value::Array(msg.tags.into_iter().map(Value::String).collect()).to_string(),
            metadata: Value::Object(msg.metadata).to_string(),
            idempotency_key: idem.as_ref().map(|c| c.key.clone()),
            provider_id: None,
            provider_message_id: None,
            attempts: 0,
            last_error: None,
            created_at: now,
            updated_at: now,
            sent_at: None,
        };
        let new = NewMessage {
            row,
            job_id: JobId::new().to_string(),
            run_at: now,
            max_attempts: self.cfg.max_attempts,
            idempotency: idem.as_ref().map(|c| NewIdempotency {
                project_id: project.to_string(),
                key: c.key.clone(),
                tenant_id: tenant.to_string(),
                request_hash: c.request_hash.clone(),
                response_status: 202,
                response_body: body.to_string(),
                expires_at: now + self.cfg.idempotency_ttl_ms,
            }),
        };
        let outcome = self.writer.accept(vec![new]).await?;
        if outcome.first() == Some(&AcceptOutcome::DuplicateKey)
            && let Some(claim) = &idem
        {
            // A concurrent request with the same key committed first.
            return self
                .replay_or_conflict(project, claim)
                .await?
                .ok_or(AcceptError::Store(StoreError::NotFound));
        }
        self.wake.notify_one();
        metrics::counter!("courierx_messages_accepted_total").increment(1);
        Ok(Accepted {
            status: 202,
            body,
            replayed: false,
        })
    }
}
