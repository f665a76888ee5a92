//! Resend: `POST /emails` with a Bearer key. Every send carries an `Idempotency-Key` (the
//! caller's, else the CourierX message id), so a retry after a lost answer cannot send twice.
//!
//! Event webhook (see `webhooks::resend`): set `webhook_signing_key` to the webhook's signing
//! secret from Resend's webhook page (`whsec_` followed by base64 of at least 24 bytes). Resend
//! signs every call with it (Svix); without it, webhook calls are refused.

use crate::http::{self, Answer};
use crate::{
    EmailProvider, HealthReport, OutboundEmail, ProviderKind, SendError, SendReceipt, parse_config,
};
use async_trait::async_trait;
use courierx_domain::{Mailbox, ValidationErrors};
use serde_json::{Map, Value, json};
use std::sync::Arc;

pub static KIND: ProviderKind = ProviderKind {
    name: "resend",
    secret_fields: &["api_key", "webhook_signing_key"],
    validate,
    build,
    delivers_externally: true,
    webhook: Some(crate::webhooks::resend::parse),
};

const DEFAULT_BASE: &str = "https://api.resend.com";
/// Resend's limit on `to`.
const MAX_TO: usize = 50;

fn validate(v: &Value) -> Result<Value, ValidationErrors> {
    http::validate_api_key_config(v, crate::webhooks::resend::check_key)
}

fn build(v: &Value) -> Result<Arc<dyn EmailProvider>, ValidationErrors> {
    let c: http::ApiKeyConfig = parse_config(&validate(v)?)?;
    Ok(Arc::new(Resend {
        client: http::client(c.timeout_ms)?,
        base: c.base_url.unwrap_or_else(|| DEFAULT_BASE.into()),
        api_key: c.api_key,
    }))
}

pub struct Resend {
    client: reqwest::Client,
    base: String,
    api_key: String,
}

fn formatted(list: &[Mailbox]) -> Value {
    list.iter().map(Mailbox::to_string).collect()
}

fn request_body(email: &OutboundEmail) -> Result<Value, SendError> {
    if email.to.len() > MAX_TO {
        return Err(SendError::Permanent(format!(
            "resend accepts at most {MAX_TO} To recipients, got {}",
            email.to.len()
        )));
    }
    if email.html.is_none() && email.text.is_none() {
        return Err(SendError::Permanent("message has no body".into()));
    }
    let mut body = json!({
        "from": email.from.to_string(),
        "to": formatted(&email.to),
        "subject": email.subject,
    });
    if !email.cc.is_empty() {
        body["cc"] = formatted(&email.cc);
    }
    if !email.bcc.is_empty() {
        body["bcc"] = formatted(&email.bcc);
    }
    if let Some(r) = &email.reply_to {
        body["reply_to"] = r.to_string().into();
    }
    if let Some(html) = &email.html {
        body["html"] = html.as_str().into();
    }
    if let Some(text) = &email.text {
        body["text"] = text.as_str().into();
    }
    if !email.headers.is_empty() {
        let headers: Map<String, Value> = email
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        body["headers"] = Value::Object(headers);
    }
    let tags = http::name_value_tags(&email.tags, &email.metadata);
    if !tags.is_empty() {
        body["tags"] = tags
            .into_iter()
            .map(|(name, value)| json!({ "name": name, "value": value }))
            .collect();
    }
    if !email.attachments.is_empty() {
        body["attachments"] = email
            .attachments
            .iter()
            .map(|a| {
                let mut o = json!({"filename": a.filename, "content": crate::base64_of(a), "content_type": a.content_type});
                if let Some(cid) = &a.content_id {
                    o["content_id"] = cid.as_str().into();
                }
                o
            })
            .collect();
    }
    Ok(body)
}

impl Resend {
    /// Reads `{"statusCode","name","message"}`; the error `name` decides where HTTP status
    /// alone would be wrong.
    fn error(&self, a: &Answer) -> SendError {
        let json = a.json();
        let name = json["name"].as_str().unwrap_or("");
        let message = json["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| a.snippet());
        let message = http::detail(&message, &[&self.api_key]);
        let text = if name.is_empty() {
            format!("resend {}: {message}", a.status.as_u16())
        } else {
            format!("resend {} {name}: {message}", a.status.as_u16())
        };
        match name {
            "concurrent_idempotent_requests" => SendError::Transient(text),
            // A 403 about this message's From domain or recipients: the key itself works.
            "invalid_idempotent_request"
            | "validation_error"
            | "invalid_from_address"
            | "invalid_to_address" => SendError::Permanent(text),
            _ => http::classify(a.status, text),
        }
    }
}

#[async_trait]
impl EmailProvider for Resend {
    async fn send(&self, email: &OutboundEmail) -> Result<SendReceipt, SendError> {
        let body = request_body(email)?;
        let key = email
            .idempotency_key
            .clone()
            .unwrap_or_else(|| email.message_id.to_string());
        let req = self
            .client
            .post(format!("{}/emails", self.base))
            .bearer_auth(&self.api_key)
            .header("Idempotency-Key", key)
            .json(&body);
        let a = http::exchange("resend", req).await?;
        if !a.status.is_success() {
            return Err(self.error(&a));
        }
        Ok(SendReceipt {
            provider_message_id: a.json()["id"].as_str().map(str::to_string),
            captured: None,
        })
    }

    /// `GET /domains` needs a full-access key; a sending-only key gets 401 `restricted_api_key`,
    /// which still proves the key is valid.
    async fn health(&self) -> HealthReport {
        let req = self
            .client
            .get(format!("{}/domains", self.base))
            .bearer_auth(&self.api_key);
        let (healthy, detail) = match http::exchange("resend", req).await {
            Err(e) => (false, e.to_string()),
            Ok(a) if a.status.is_success() => (true, "API key accepted".to_string()),
            Ok(a) if a.json()["name"] == "restricted_api_key" => {
                (true, "API key accepted (sending only)".to_string())
            }
            Ok(a) => (false, self.error(&a).to_string()),
        };
        HealthReport { healthy, detail }
    }
}
