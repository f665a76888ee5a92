//! Accepting a message: one transaction writes the message, its `queued` event, its delivery job
//! and (with an `Idempotency-Key`) the saved response, before the API answers 202.

use crate::Engine;
use courierx_domain::{
    Attachment, HeaderName, HeaderValue, JobId, Mailbox, MessageId, MessageStatus, Millis,
    Priority, ProjectId, TenantId, now_ms,
};
use courierx_store::StoreError;
use courierx_store::idempotency::NewIdempotency;
use courierx_store::messages::MessageRow;
use courierx_store::writer::{AcceptBatch, AcceptOutcome, NewAttachment, NewMessage};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

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
    pub attachments: Vec<Attachment>,
    /// Deliver no earlier than this (a `scheduled` message until then).
    pub send_at: Option<Millis>,
    /// The template the content was rendered from (`{"slug","version","locale"}`).
    pub template: Option<Value>,
    /// What recipients can unsubscribe from (declared in the project's settings).
    pub category: Option<courierx_domain::Category>,
    /// Claim order within the project.
    pub priority: Priority,
    /// Not sent by then: the message ends `expired` without calling a provider.
    pub expires_at: Option<Millis>,
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

    /// The rows for one accepted message and the item of the response that reports it.
    fn new_message(
        &self,
        tenant: TenantId,
        project: ProjectId,
        msg: ValidMessage,
        idem_key: Option<&str>,
        now: Millis,
    ) -> (NewMessage, Value) {
        let id = MessageId::new();
        let status = match msg.send_at {
            Some(at) if at > now => MessageStatus::Scheduled,
            _ => MessageStatus::Queued,
        };
        let mut body =
            json!({"id": id.to_string(), "status": status.as_str(), "created_at": rfc3339(now)});
        if let Some(at) = msg.send_at {
            body["send_at"] = rfc3339(at).into();
        }
        if let Some(at) = msg.expires_at {
            body["expires_at"] = rfc3339(at).into();
        }
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
        let attachments: Vec<NewAttachment> = msg
            .attachments
            .iter()
            .map(|a| NewAttachment {
                sha256: hex::encode(Sha256::digest(&a.data)),
                filename: a.filename.clone(),
                content_type: a.content_type.clone(),
                content_id: a.content_id.clone(),
                data: a.data.clone(),
            })
            .collect();
        let row = MessageRow {
            id: id.to_string(),
            tenant_id: tenant.to_string(),
            project_id: project.to_string(),
            channel: "email".into(),
            status: status.as_str().into(),
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
            idempotency_key: idem_key.map(str::to_string),
            provider_id: None,
            provider_message_id: None,
            attempts: 0,
            last_error: None,
            created_at: now,
            updated_at: now,
            sent_at: None,
            attachment_count: attachments.len() as i64,
            send_at: msg.send_at,
            template: msg.template.map(|t| t.to_string()),
            category: msg.category.map(|c| c.to_string()),
            priority: msg.priority.as_str().into(),
            expires_at: msg.expires_at,
        };
        let new = NewMessage {
            row,
            job_id: JobId::new().to_string(),
            run_at: msg.send_at.map_or(now, |at| at.max(now)),
            max_attempts: self.cfg.max_attempts,
            priority: msg.priority.rank(),
            attachments,
        };
        (new, body)
    }

    /// Writes messages (one transaction) under an optional idempotency key; a concurrent
    /// request that committed the same key first has its response replayed.
    async fn commit(
        &self,
        project: ProjectId,
        tenant: TenantId,
        messages: Vec<NewMessage>,
        body: Value,
        idem: Option<IdempotencyClaim>,
        now: Millis,
    ) -> Result<Accepted, AcceptError> {
        let count = messages.len() as u64;
        let batch = AcceptBatch {
            messages,
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
        if self.writer.accept(batch).await? == AcceptOutcome::DuplicateKey
            && let Some(claim) = &idem
        {
            return self
                .replay_or_conflict(project, claim)
                .await?
                .ok_or(AcceptError::Store(StoreError::NotFound));
        }
        self.wake.notify_one();
        metrics::counter!("courierx_messages_accepted_total").increment(count);
        Ok(Accepted {
            status: 202,
            body,
            replayed: false,
        })
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
        let (new, body) = self.new_message(
            tenant,
            project,
            msg,
            idem.as_ref().map(|c| c.key.as_str()),
            now,
        );
        self.commit(project, tenant, vec![new], body, idem, now)
            .await
    }

    /// Accepts the valid items of a batch in one transaction; invalid items (given as their
    /// error object) are reported in place. With a key, the whole batch is idempotent.
    pub async fn accept_batch(
        &self,
        tenant: TenantId,
        project: ProjectId,
        items: Vec<Result<ValidMessage, Value>>,
        idem: Option<IdempotencyClaim>,
    ) -> Result<Accepted, AcceptError> {
        if let Some(claim) = &idem
            && let Some(replay) = self.replay_or_conflict(project, claim).await?
        {
            return Ok(replay);
        }
        let now = now_ms();
        let mut messages = Vec::with_capacity(items.len());
        let mut data = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            match item {
                Ok(msg) => {
                    let (new, mut body) = self.new_message(tenant, project, msg, None, now);
                    messages.push(new);
                    body["index"] = index.into();
                    data.push(body);
                }
                Err(error) => data.push(json!({"index": index, "error": error})),
            }
        }
        // Even with nothing valid the key records the answer, so a retry replays it.
        let body = json!({"data": data});
        self.commit(project, tenant, messages, body, idem, now)
            .await
    }
}
